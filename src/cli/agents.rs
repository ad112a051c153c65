//! `scout agents list|add|remove|trust|untrust`: the agents of this
//! machine. Adding and removing edit `relay-agents.json`; a running broker
//! notices the change within a second, no restart needed. Trusting records
//! a project manifest (path and SHA-256) in `trusted-manifests.json`, after
//! which the commands it declares may run; the broker reads that file each
//! time it starts such an agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use scout_mesh::lifecycle::Harness;
use scout_mesh::names::{Label, NamePart, Workspace};
use serde::Serialize;

use super::client::BrokerClient;
use super::output::table;
use super::{Context, UsageError};
use crate::config::discover::{self, AgentSource, AgentView};
use crate::config::relay_agents::{self, ManualAgent, check_command};
use crate::config::settings;
use crate::config::trust;
use crate::daemon::mesh::InstanceView;

/// `scout agents …`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List this machine's agents.
    List,
    /// Add an agent by hand (to relay-agents.json).
    Add(AddArgs),
    /// Remove an agent added by hand.
    Remove(RemoveArgs),
    /// Trust a project manifest's commands, as the file is now (a change
    /// needs trust again).
    Trust(TrustArgs),
    /// Withdraw trust from a project manifest.
    Untrust(TrustArgs),
}

/// Flags of `scout agents trust` and `scout agents untrust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The manifest (`.openscout/project.json`) or the project directory
    /// holding it.
    pub path: PathBuf,
}

/// Flags of `scout agents add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The definition name (`fabric` or `@fabric`).
    pub name: String,
    /// The CLI it runs (default: `command` when --command is given).
    #[arg(long, value_name = "HARNESS")]
    pub harness: Option<Harness>,
    /// Working directory (default: your home directory).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Workspace part of the instance name (default: the git branch of --cwd).
    #[arg(long, value_name = "WORKSPACE")]
    pub workspace: Option<String>,
    /// `command` agents: a regular expression matching the program's prompt
    /// line, which ends a turn (default: a quiet spell ends it).
    #[arg(long, value_name = "REGEX")]
    pub prompt_pattern: Option<String>,
    /// Make a git worktree (on branch WORKSPACE) when a mention names a
    /// workspace this agent has no instance in (`@NAME#WORKSPACE`).
    #[arg(long)]
    pub worktrees: bool,
    /// The branch new worktree branches start from (default: the
    /// repository's default branch).
    #[arg(long, value_name = "BRANCH", requires = "worktrees")]
    pub base_branch: Option<String>,
    /// Program and arguments; put it last, everything after it is the command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `scout agents remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The definition name of a manual agent.
    pub name: String,
}

/// Runs `scout agents …`.
pub fn run(command: AgentsCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        AgentsCommand::List => list(context),
        AgentsCommand::Add(args) => add(args, context),
        AgentsCommand::Remove(args) => remove(args, context),
        AgentsCommand::Trust(args) => trust(args, context),
        AgentsCommand::Untrust(args) => untrust(args, context),
    }
}

#[derive(Debug, Serialize)]
struct AgentList {
    /// This machine's agents, from its config files.
    agents: Vec<AgentView>,
    /// Every instance in the mesh (this machine's included) as the broker
    /// (or, when it is not running, the store) knows them.
    instances: Vec<InstanceView>,
    /// Whether `instances` comes from the running broker.
    broker_running: bool,
    warnings: Vec<String>,
    /// This machine's agents that will not start until their manifest is
    /// trusted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    untrusted: Vec<UntrustedAgent>,
    /// The running broker's agent sessions: each program's PID and the
    /// holder process that keeps it across broker restarts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sessions: Vec<SessionRow>,
}

/// One agent session of the running broker, as `GET /agents` shows it.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRow {
    id: String,
    name: String,
    status: String,
    pid: u32,
    #[serde(default)]
    holder: Option<SessionHolder>,
}

/// A session's holder process.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionHolder {
    pid: u32,
    uptime_secs: u64,
}

/// The sessions list of `GET /agents`.
#[derive(Debug, serde::Deserialize)]
struct SessionList {
    agents: Vec<SessionRow>,
}

/// An agent whose manifest is not trusted, and how to trust it.
#[derive(Debug, Serialize)]
struct UntrustedAgent {
    /// The instance name.
    name: String,
    /// `not_trusted` or `changed` (or `trust_file` when that is unreadable).
    why: &'static str,
    /// The manifest.
    manifest: PathBuf,
    /// The full refusal, with its code.
    message: String,
    /// The command that trusts it.
    fix: String,
}

fn list(context: &Context) -> anyhow::Result<ExitCode> {
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let relay = relay_agents::load(&context.home.relay_agents_path())?.value;
    let node = Label::parse(&settings.node_name, NamePart::Node)?;
    let discovered = discover::discover(&context.home, &settings, &relay);
    let agents: Vec<AgentView> = discovered
        .agents
        .iter()
        .map(|agent| agent.view(&node))
        .collect();
    let untrusted = untrusted_agents(context, &discovered.agents, &node);
    let (mut instances, broker_running, sessions) = match BrokerClient::running(context)? {
        Some(client) => {
            let live: crate::api::AgentList = client
                .get("/v1/agents")
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            let sessions: SessionList = client
                .get("/agents")
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            (live.instances, true, sessions.agents)
        }
        None => (
            stored_instances(context, &node).unwrap_or_default(),
            false,
            Vec::new(),
        ),
    };
    // Local agents the broker has not published yet (it is not running, or
    // has not noticed a change) are shown from the config files.
    let own_id = crate::identity::load_node_key(&context.home.node_key_path())
        .map(|key| key.node_id().to_owned())
        .unwrap_or_default();
    for agent in &agents {
        if !instances
            .iter()
            .any(|instance: &InstanceView| instance.name == agent.name)
        {
            instances.push(InstanceView {
                name: agent.name.clone(),
                owner: own_id.clone(),
                local: true,
                harness: agent.harness.to_string(),
                state: "registered".into(),
                active_flights: 0,
                cwd: agent.cwd.display().to_string(),
                worktrees: false,
            });
        }
    }
    instances.sort_by(|a, b| (!a.local, &a.name).cmp(&(!b.local, &b.name)));
    let report = AgentList {
        agents,
        instances,
        broker_running,
        warnings: discovered.warnings,
        untrusted,
        sessions,
    };
    context.printer.emit(&report, || {
        if report.instances.is_empty() && report.sessions.is_empty() {
            let mut out =
                "no agents; add one with `scout agents add NAME --command CMD...`\n".to_owned();
            for warning in &report.warnings {
                out.push_str(&format!("warning: {warning}\n"));
            }
            return out;
        }
        let rows: Vec<Vec<String>> = report
            .instances
            .iter()
            .map(|instance| {
                vec![
                    instance.name.clone(),
                    instance.harness.clone(),
                    instance.state.clone(),
                    if instance.local {
                        "this node".to_owned()
                    } else {
                        instance.owner.chars().take(12).collect()
                    },
                    instance.cwd.clone(),
                ]
            })
            .collect();
        let mut out = if rows.is_empty() {
            String::new()
        } else {
            table(&["NAME", "HARNESS", "STATE", "OWNER", "CWD"], &rows)
        };
        if !report.sessions.is_empty() {
            let rows: Vec<Vec<String>> = report
                .sessions
                .iter()
                .map(|session| {
                    let (holder, uptime) = match &session.holder {
                        Some(holder) => (holder.pid.to_string(), uptime(holder.uptime_secs)),
                        None => ("-".to_owned(), "-".to_owned()),
                    };
                    vec![
                        session.id.clone(),
                        session.name.clone(),
                        session.status.clone(),
                        session.pid.to_string(),
                        holder,
                        uptime,
                    ]
                })
                .collect();
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&table(
                &["SESSION", "NAME", "STATUS", "PID", "HOLDER", "UP"],
                &rows,
            ));
        }
        for agent in &report.untrusted {
            out.push_str(&format!(
                "untrusted: {} will not start: {}\n",
                agent.name, agent.message
            ));
        }
        for warning in &report.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A holder's uptime for a person: `42s`, `17m`, `5h12m`, `3d4h`.
fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The local agents whose manifest is not trusted.
fn untrusted_agents(
    context: &Context,
    agents: &[discover::LocalAgent],
    node: &Label,
) -> Vec<UntrustedAgent> {
    agents
        .iter()
        .filter_map(|agent| {
            let refused = trust::check(&context.home, agent).err()?;
            let manifest = agent
                .needs_trust
                .as_ref()
                .map(|digest| digest.path.clone())
                .unwrap_or_default();
            Some(UntrustedAgent {
                name: agent.instance_name(node).to_string(),
                why: refused.why(),
                fix: format!(
                    "scout agents trust {}{}",
                    manifest.display(),
                    super::setup::home_flag(context)
                ),
                manifest,
                message: refused.to_string(),
            })
        })
        .collect()
}

/// The mesh's instances from the store, for when no broker runs.
fn stored_instances(context: &Context, node: &Label) -> anyhow::Result<Vec<InstanceView>> {
    let home = &context.home;
    let key = crate::identity::load_node_key(&home.node_key_path())?;
    let identity = key.mesh_identity(node.clone());
    let store = crate::store::Store::open_read_only(home.store_path())?;
    let replica = crate::daemon::mesh::offline::stored_replica(home, &identity, &store)?;
    Ok(crate::daemon::mesh::instance_views(
        replica.registry(),
        &identity.node_id,
        None,
    ))
}

#[derive(Debug, Serialize)]
struct Added {
    added: ManualAgent,
    path: PathBuf,
}

fn add(args: AddArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let name = definition_arg(&args.name)?;
    let harness = match (args.harness, args.command.is_empty()) {
        (Some(harness), _) => harness,
        (None, false) => Harness::Command,
        (None, true) => {
            return Err(UsageError::new(
                "MISSING_COMMAND",
                "give the program to run with --command CMD... (or a harness with --harness claude|codex|gemini)",
            )
            .into());
        }
    };
    check_command(harness, &args.command)
        .map_err(|message| UsageError::new("INVALID_COMMAND", message))?;
    let cwd = match &args.cwd {
        Some(cwd) => {
            let cwd = std::path::absolute(cwd)
                .with_context(|| format!("cannot make {} absolute", cwd.display()))?;
            if !cwd.is_dir() {
                return Err(UsageError::new(
                    "INVALID_PATH",
                    format!("--cwd {} is not a directory", cwd.display()),
                )
                .into());
            }
            Some(cwd)
        }
        None => None,
    };
    if let Some(workspace) = &args.workspace {
        Workspace::parse(workspace)?;
    }
    if let Some(pattern) = &args.prompt_pattern
        && let Err(err) = regex::Regex::new(pattern)
    {
        return Err(UsageError::new(
            "INVALID_PATTERN",
            format!("--prompt-pattern is not a regular expression: {err}"),
        )
        .into());
    }

    let path = context.home.relay_agents_path();
    settings::load_required(&context.home.settings_path())?;
    let mut relay = relay_agents::load(&path)?;
    if relay
        .value
        .agents
        .iter()
        .any(|agent| agent.name.eq_ignore_ascii_case(name.as_str()))
    {
        anyhow::bail!(
            "agent `@{name}` already exists in {}; remove it first with `scout agents remove {name}`",
            path.display()
        );
    }
    let agent = ManualAgent {
        name: name.as_str().to_owned(),
        harness,
        command: args.command,
        cwd,
        workspace: args.workspace,
        prompt_pattern: args.prompt_pattern,
        worktrees: args.worktrees,
        base_branch: args.base_branch,
    };
    relay.value.agents.push(agent.clone());
    relay.save()?;
    let report = Added { added: agent, path };
    context.printer.emit(&report, || {
        let command = discover::command_or_default(report.added.harness, &report.added.command);
        format!(
            "added @{} ({}: {}) to {}\na running broker picks it up within a second\n",
            report.added.name,
            report.added.harness,
            command.join(" "),
            report.path.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Removed {
    removed: String,
    path: PathBuf,
}

fn remove(args: RemoveArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let name = definition_arg(&args.name)?;
    let path = context.home.relay_agents_path();
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let mut relay = relay_agents::load(&path)?;
    let before = relay.value.agents.len();
    relay
        .value
        .agents
        .retain(|agent| !agent.name.eq_ignore_ascii_case(name.as_str()));
    if relay.value.agents.len() == before {
        let discovered = discover::discover(&context.home, &settings, &relay.value);
        if let Some(agent) = discovered
            .agents
            .iter()
            .find(|agent| agent.definition == name)
        {
            let origin = match &agent.source {
                AgentSource::Project { manifest } => {
                    format!("the project manifest {}", manifest.display())
                }
                AgentSource::Inferred { marker } => {
                    format!("the {marker} marker in {}", agent.cwd.display())
                }
                AgentSource::Manual => path.display().to_string(),
            };
            anyhow::bail!("agent `@{name}` is not a manual agent: it comes from {origin}");
        }
        let known: Vec<String> = relay
            .value
            .agents
            .iter()
            .map(|agent| format!("@{}", agent.name))
            .collect();
        if known.is_empty() {
            anyhow::bail!("no manual agent `@{name}`; there are no manual agents");
        }
        anyhow::bail!(
            "no manual agent `@{name}`; manual agents: {}",
            known.join(", ")
        );
    }
    relay.save()?;
    let report = Removed {
        removed: format!("@{name}"),
        path,
    };
    context.printer.emit(&report, || {
        format!(
            "removed {} from {}\n",
            report.removed,
            report.path.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Trusted {
    trusted: PathBuf,
    sha256: String,
    /// The agents of this machine that the manifest declares.
    agents: Vec<String>,
}

fn trust(args: TrustArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let record = trust::trust(&context.home, &args.path, context.env.now_unix_ms_i64())?;
    let node = Label::parse(&settings.node_name, NamePart::Node)?;
    let relay = relay_agents::load(&context.home.relay_agents_path())?.value;
    let declared_by_it = |agent: &&discover::LocalAgent| match &agent.source {
        AgentSource::Project { manifest } => {
            std::fs::canonicalize(manifest).is_ok_and(|path| path == record.path)
        }
        AgentSource::Manual | AgentSource::Inferred { .. } => false,
    };
    let agents = discover::discover(&context.home, &settings, &relay)
        .agents
        .iter()
        .filter(declared_by_it)
        .map(|agent| {
            let command = agent.command.join(" ");
            format!("{} ({command})", agent.instance_name(&node))
        })
        .collect();
    let report = Trusted {
        trusted: record.path,
        sha256: record.sha256,
        agents,
    };
    context.printer.emit(&report, || {
        let mut out = format!(
            "trusted {} (sha256 {})\n",
            report.trusted.display(),
            report.sha256
        );
        if report.agents.is_empty() {
            out.push_str("it declares no agent under this machine's workspace roots\n");
        }
        for agent in &report.agents {
            out.push_str(&format!("may run: {agent}\n"));
        }
        out.push_str("a change to the file needs `scout agents trust` again\n");
        out
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Untrusted {
    untrusted: PathBuf,
}

fn untrust(args: TrustArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let Some(record) = trust::untrust(&context.home, &args.path)? else {
        anyhow::bail!(
            "{} is not trusted; `scout agents list` shows the manifests that need trust",
            trust::manifest_of(&args.path).display()
        );
    };
    let report = Untrusted {
        untrusted: record.path,
    };
    context.printer.emit(&report, || {
        format!(
            "untrusted {}; its commands will not start\n",
            report.untrusted.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A definition name as typed: `fabric` or `@fabric`.
fn definition_arg(input: &str) -> anyhow::Result<Label> {
    let bare = input.strip_prefix('@').unwrap_or(input);
    Ok(Label::parse(bare, NamePart::Definition)?)
}
