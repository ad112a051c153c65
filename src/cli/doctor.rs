//! `scout doctor`: named checks of everything a broker needs, each ok / warn
//! / fail with a fix hint. Exits 1 when any check fails.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use scout_mesh::lifecycle::Harness;
use serde::Serialize;

use super::Context;
use crate::config::discover::{self, LocalAgent};
use crate::config::relay_agents::{self, RelayAgents};
use crate::config::settings::{self, Settings};
use crate::identity;
use crate::store::Store;

/// Flags of `scout doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Broken; the hint says how to fix it.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One named check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name (`settings`, `node-key`, `store`, `broker`, `cli:claude`, ...).
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// How to fix it, when not ok.
    pub hint: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = Some(hint.into());
        self
    }
}

#[derive(Debug, Serialize)]
struct DoctorReport {
    ok: bool,
    checks: Vec<Check>,
}

/// Runs `scout doctor`.
pub fn run(_args: DoctorArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let checks = checks(context);
    let report = DoctorReport {
        ok: checks.iter().all(|check| check.status != Status::Fail),
        checks,
    };
    context.printer.emit(&report, || render(&report.checks))?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn checks(context: &Context) -> Vec<Check> {
    let home = &context.home;
    let setup_hint = format!("run `scout setup{}`", super::setup::home_flag(context));
    let mut checks = Vec::new();

    if home.config_dir.is_dir() {
        checks.push(Check::new(
            "home",
            Status::Ok,
            if home.config_dir == home.state_dir {
                home.config_dir.display().to_string()
            } else {
                format!(
                    "{} (config), {} (state)",
                    home.config_dir.display(),
                    home.state_dir.display()
                )
            },
        ));
    } else {
        checks.push(
            Check::new(
                "home",
                Status::Fail,
                format!("{} does not exist", home.config_dir.display()),
            )
            .hint(setup_hint.clone()),
        );
        return checks;
    }
    checks.push(match crate::home::check_safe(home) {
        Ok(()) => Check::new(
            "home-owner",
            Status::Ok,
            "owned by this user, writable by nobody else",
        ),
        Err(unsafe_home) => Check::new(
            "home-owner",
            Status::Fail,
            format!(
                "{}: {} {}; the broker refuses to start",
                unsafe_home.code(),
                unsafe_home.path.display(),
                unsafe_home.problem
            ),
        )
        .hint(unsafe_home.fix),
    });

    let settings = match settings::load(&home.settings_path()) {
        Ok(Some(file)) => {
            checks.push(Check::new(
                "settings",
                Status::Ok,
                home.settings_path().display().to_string(),
            ));
            Some(file.value)
        }
        Ok(None) => {
            checks.push(
                Check::new(
                    "settings",
                    Status::Fail,
                    format!("{} is missing", home.settings_path().display()),
                )
                .hint(setup_hint.clone()),
            );
            None
        }
        Err(err) => {
            checks
                .push(Check::new("settings", Status::Fail, err.to_string()).hint(
                    "fix the field named above, or move the file away and run `scout setup`",
                ));
            None
        }
    };

    let relay = match relay_agents::load(&home.relay_agents_path()) {
        Ok(file) => {
            checks.push(Check::new(
                "relay-agents",
                Status::Ok,
                format!(
                    "{} ({} manual agents)",
                    home.relay_agents_path().display(),
                    file.value.agents.len()
                ),
            ));
            file.value
        }
        Err(err) => {
            checks.push(
                Check::new("relay-agents", Status::Fail, err.to_string())
                    .hint("fix the field named above"),
            );
            RelayAgents::default()
        }
    };

    checks.push(secret_file_check(
        "node-key",
        &home.node_key_path(),
        &setup_hint,
        |path| {
            identity::load_node_key(path).map(|identity| format!("node id {}", identity.node_id()))
        },
    ));
    checks.push(secret_file_check(
        "token",
        &home.token_path(),
        &setup_hint,
        |path| identity::load_token(path).map(|_| "present".to_owned()),
    ));
    checks.push(store_check(&home.store_path(), &setup_hint));

    if let Some(settings) = &settings {
        checks.push(broker_check(settings, context));
        checks.extend(service_checks(context));
        checks.extend(mesh_checks(settings, context));
        checks.extend(discovery_checks(settings, context));
        let discovered = discover::discover(home, settings, &relay);
        checks.push(agents_check(discovered.agents.len(), &discovered.warnings));
        checks.extend(trust_check(home, &discovered.agents));
        checks.extend(cli_checks(&discovered.agents));
    }
    checks
}

/// Seconds in which a service restart still counts as recent: a broker that
/// restarted within the last hour is worth a look at its log.
const RECENT_RESTART_SECS: u64 = 3600;

/// The service checks: installed and matching this binary and home, active,
/// last exit, restarts, linger (Linux) and the keychain (macOS).
fn service_checks(context: &Context) -> Vec<Check> {
    use crate::service::{self, Availability, Platform};
    if super::service::no_service_from_env() {
        return vec![Check::new(
            "service",
            Status::Ok,
            "not used (SCOUT_NO_SERVICE is set): the broker runs under another supervisor",
        )];
    }
    let home_flag = super::setup::home_flag(context);
    let spec = match super::service::spec(context, Platform::current()) {
        Ok(spec) => spec,
        Err(err) => return vec![Check::new("service", Status::Warn, format!("{err:#}"))],
    };
    let mut checks = Vec::new();
    if spec.platform == Platform::Macos {
        checks.push(
            Check::new(
                "service-keychain",
                Status::Warn,
                "a launchd agent cannot reach the login keychain, where some agent CLIs keep their login",
            )
            .hint(format!(
                "give the service its API key instead: `plutil -insert EnvironmentVariables.ANTHROPIC_API_KEY -string <key> {}` \
                 (or OPENAI_API_KEY, GEMINI_API_KEY), then `scout service restart{home_flag}`",
                spec.file_path().display()
            )),
        );
    }
    let install_hint = format!("run `scout service install{home_flag}`");
    let Some(installed) = service::installed_text(&spec) else {
        let check = match service::availability(&spec, &home_flag) {
            Availability::Available => Check::new(
                "service",
                Status::Warn,
                format!(
                    "{} is not installed: the broker stops with the terminal that runs it",
                    spec.unit()
                ),
            )
            .hint(install_hint),
            Availability::Unavailable { reason, hint } => {
                Check::new("service", Status::Warn, format!("not installed: {reason}")).hint(hint)
            }
        };
        checks.push(check);
        return checks;
    };
    let wanted = spec.render().unwrap_or_default();
    if command_of(&installed) == command_of(&wanted) {
        checks.push(Check::new(
            "service",
            Status::Ok,
            format!(
                "{} installed, runs {} for this home",
                spec.file_path().display(),
                spec.binary.display()
            ),
        ));
    } else {
        checks.push(
            Check::new(
                "service",
                Status::Fail,
                format!(
                    "{} runs another binary or home than {} --home {}",
                    spec.file_path().display(),
                    spec.binary.display(),
                    spec.home.display()
                ),
            )
            .hint(format!("{install_hint} to rewrite it")),
        );
    }
    let view = match service::manager_view(&spec) {
        Ok(view) => view,
        Err(err) => {
            checks.push(
                Check::new(
                    "service-active",
                    Status::Warn,
                    format!("cannot ask the service manager: {err:#}"),
                )
                .hint(service::headless_hint(&home_flag)),
            );
            return checks;
        }
    };
    checks.push(if view.active {
        Check::new(
            "service-active",
            Status::Ok,
            format!("{}{}", view.state, view.pid.map(|pid| format!(", pid {pid}")).unwrap_or_default()),
        )
    } else {
        Check::new("service-active", Status::Fail, format!("not running ({})", view.state))
            .hint(format!("`scout service logs{home_flag}` shows why; start it with `scout service start{home_flag}`"))
    });
    checks.push(match view.last_exit_status {
        Some(status) if status != 0 => Check::new(
            "service-last-exit",
            Status::Warn,
            format!(
                "the last run exited with status {status}{}",
                view.last_exit_time
                    .as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            ),
        )
        .hint(format!("`scout service logs{home_flag}` shows why")),
        Some(status) => Check::new("service-last-exit", Status::Ok, format!("status {status}")),
        None => Check::new("service-last-exit", Status::Ok, "no run has ended yet"),
    });
    let restarts = view.restarts.unwrap_or(0);
    let recent = view
        .running_for_secs
        .is_some_and(|secs| secs < RECENT_RESTART_SECS);
    checks.push(if restarts > 0 && recent {
        Check::new(
            "service-restarts",
            Status::Warn,
            format!("{restarts} automatic restarts, the latest in the last hour"),
        )
        .hint(format!(
            "the broker keeps failing: `scout service logs{home_flag}` shows why"
        ))
    } else {
        Check::new(
            "service-restarts",
            Status::Ok,
            format!("{restarts} automatic restarts, none in the last hour"),
        )
    });
    if spec.platform == Platform::Linux {
        checks.push(match service::linger() {
            Some(true) => Check::new(
                "service-linger",
                Status::Ok,
                "the user manager outlives logouts",
            ),
            Some(false) => Check::new(
                "service-linger",
                Status::Warn,
                "lingering is off: the broker stops when you log out",
            )
            .hint("`loginctl enable-linger $USER`"),
            None => Check::new(
                "service-linger",
                Status::Warn,
                "cannot ask loginctl whether lingering is on",
            )
            .hint("`loginctl enable-linger $USER` keeps the broker running after logout"),
        });
    }
    checks
}

/// The command a unit or plist runs: the `ExecStart=` line, or the
/// `ProgramArguments` array. Other edits (an API key added to the
/// environment) do not make the service differ from what scout installs.
fn command_of(text: &str) -> Option<String> {
    if let Some(line) = text.lines().find(|line| line.starts_with("ExecStart=")) {
        return Some(line.to_owned());
    }
    let start = text.find("<key>ProgramArguments</key>")?;
    let end = start + text[start..].find("</array>")?;
    Some(text[start..end].to_owned())
}

fn secret_file_check(
    name: &str,
    path: &Path,
    setup_hint: &str,
    load: impl FnOnce(&Path) -> anyhow::Result<String>,
) -> Check {
    if !path.exists() {
        return Check::new(name, Status::Fail, format!("{} is missing", path.display()))
            .hint(setup_hint.to_owned());
    }
    let mode = match identity::file_mode(path) {
        Ok(mode) => mode,
        Err(err) => return Check::new(name, Status::Fail, format!("{err:#}")),
    };
    if identity::is_too_open(mode) {
        return Check::new(
            name,
            Status::Fail,
            format!("{} is readable by others (mode {mode:o})", path.display()),
        )
        .hint(format!("chmod 600 {}", path.display()));
    }
    match load(path) {
        Ok(detail) => Check::new(
            name,
            Status::Ok,
            format!("{} (mode {mode:o}, {detail})", path.display()),
        ),
        Err(err) => Check::new(name, Status::Fail, format!("{err:#}"))
            .hint("move the file away and run `scout setup` to create a new one (peers will see a new node)"),
    }
}

fn store_check(path: &Path, setup_hint: &str) -> Check {
    if !path.exists() {
        return Check::new(
            "store",
            Status::Fail,
            format!("{} is missing", path.display()),
        )
        .hint(setup_hint.to_owned());
    }
    let report = Store::open_read_only(path).and_then(|store| store.integrity_check());
    match report {
        Ok(report) if report.ok => Check::new(
            "store",
            Status::Ok,
            format!(
                "{} (schema {}, integrity ok)",
                path.display(),
                report.schema_version
            ),
        ),
        Ok(report) => Check::new(
            "store",
            Status::Fail,
            format!(
                "{}: integrity check failed: {}",
                path.display(),
                report.problems.join("; ")
            ),
        )
        .hint("stop the broker and keep a copy of the file; peers resync the registry into a fresh store"),
        Err(err) => Check::new("store", Status::Fail, err.to_string())
            .hint("stop the broker and keep a copy of the file before anything else"),
    }
}

fn broker_check(settings: &Settings, context: &Context) -> Check {
    let addr = match crate::daemon::broker_http_addr(&context.home, settings) {
        Ok(addr) => addr,
        Err(err) => {
            return Check::new("broker", Status::Fail, err.to_string())
                .hint("unset PORT or fix it");
        }
    };
    let url = format!("http://{addr}");
    let up_hint = format!(
        "start it with `scout up{}`",
        super::setup::home_flag(context)
    );
    // The same proof the CLI asks before it sends the token: a broker that
    // answers but cannot prove it holds this home's token is not ours.
    match super::client::BrokerClient::running(context) {
        Ok(Some(_)) => Check::new(
            "broker",
            Status::Ok,
            format!(
                "running at {url} (node {}, proved it holds this home's token)",
                settings.node_name
            ),
        ),
        Ok(None) => Check::new("broker", Status::Warn, format!("not running ({url})")).hint(up_hint),
        Err(err) => match err.downcast_ref::<super::client::BrokerMismatch>() {
            Some(mismatch) => Check::new("broker", Status::Fail, mismatch.to_string()).hint(
                "another program answers on this home's http_port; stop it, or give each home its own http_port",
            ),
            None => Check::new("broker", Status::Warn, format!("cannot ask the broker at {url}: {err:#}")),
        },
    }
}

fn mesh_checks(settings: &Settings, context: &Context) -> Vec<Check> {
    let mut checks = Vec::new();
    match crate::daemon::mesh::load_mesh_file(&context.home) {
        Ok(Some(file)) => checks.push(Check::new(
            "mesh",
            Status::Ok,
            format!("member of mesh {}", file.value.mesh_id),
        )),
        Ok(None) => {
            checks.push(
                Check::new("mesh", Status::Warn, "this broker has no mesh yet")
                    .hint("run `scout setup` (founds a mesh) or `scout mesh join CODE`"),
            );
            return checks;
        }
        Err(err) => {
            checks.push(
                Check::new("mesh", Status::Fail, format!("{err:#}"))
                    .hint("fix the field named above, or join again with `scout mesh join CODE`"),
            );
            return checks;
        }
    }
    let client = match super::client::BrokerClient::running(context) {
        Ok(Some(client)) => client,
        _ => {
            checks.push(mesh_port_free_check(settings.mesh_port));
            return checks;
        }
    };
    match client.get::<serde_json::Value>("/v1/mesh") {
        Ok(mesh) => {
            let announced: Vec<&str> = mesh["announced"]
                .as_array()
                .map(|list| list.iter().filter_map(|addr| addr.as_str()).collect())
                .unwrap_or_default();
            checks.push(Check::new(
                "mesh-port",
                Status::Ok,
                format!("listening; announced as {}", announced.join(", ")),
            ));
        }
        Err(err) => checks.push(Check::new("mesh-port", Status::Fail, err.to_string())),
    }
    match client.get::<serde_json::Value>("/v1/peers") {
        Ok(live) => {
            let peers = live["peers"].as_array().cloned().unwrap_or_default();
            let name = |peer: &serde_json::Value| peer["name"].as_str().unwrap_or("?").to_owned();
            let unreachable: Vec<String> = peers
                .iter()
                .filter(|peer| peer["state"] == "unreachable")
                .map(|peer| {
                    let error = peer["addresses"]
                        .as_array()
                        .and_then(|addrs| addrs.iter().find_map(|addr| addr["last_error"].as_str()))
                        .map(|error| format!(" ({error})"))
                        .unwrap_or_default();
                    format!("{}{error}", name(peer))
                })
                .collect();
            let connected = peers
                .iter()
                .filter(|peer| peer["state"] == "connected")
                .count();
            let live_members = peers
                .iter()
                .filter(|peer| peer["state"] != "revoked")
                .count();
            let check = if live_members == 0 {
                Check::new("peers", Status::Ok, "no other members yet")
            } else if unreachable.is_empty() {
                Check::new(
                    "peers",
                    Status::Ok,
                    format!("{connected} of {live_members} connected"),
                )
            } else {
                Check::new(
                    "peers",
                    Status::Warn,
                    format!(
                        "{connected} of {live_members} connected; unreachable: {}",
                        unreachable.join(", ")
                    ),
                )
                .hint("check that those machines run `scout up` and that UDP to their mesh port is allowed; `scout peers` shows every address tried")
            };
            checks.push(check);
        }
        Err(err) => checks.push(Check::new("peers", Status::Fail, err.to_string())),
    }
    checks
}

/// Each discovery source (seeds, mDNS, Tailscale) and the running broker's
/// address book.
fn discovery_checks(settings: &Settings, context: &Context) -> Vec<Check> {
    use crate::daemon::discovery::diagnose::{self, Level};
    use crate::daemon::mesh::address_book::AddressView;
    let book: Option<Vec<AddressView>> = match super::client::BrokerClient::running(context) {
        Ok(Some(client)) => client
            .get::<serde_json::Value>("/v1/peers")
            .ok()
            .and_then(|peers| serde_json::from_value(peers["addresses"].clone()).ok()),
        _ => None,
    };
    let seeds = crate::daemon::seeds(settings);
    diagnose::diagnose(settings, &seeds, book.as_deref())
        .into_iter()
        .map(|report| {
            let status = match report.level {
                Level::Ok => Status::Ok,
                Level::Warn => Status::Warn,
                Level::Fail => Status::Fail,
            };
            let check = Check::new(report.name, status, report.message);
            match report.hint {
                Some(hint) => check.hint(hint),
                None => check,
            }
        })
        .collect()
}

/// Whether the configured mesh port can be bound (broker not running).
fn mesh_port_free_check(port: u16) -> Check {
    if port == 0 {
        return Check::new("mesh-port", Status::Ok, "picked at start (mesh_port is 0)");
    }
    match std::net::UdpSocket::bind(("0.0.0.0", port)) {
        Ok(_) => Check::new(
            "mesh-port",
            Status::Ok,
            format!("udp {port} is free for the broker"),
        ),
        Err(err) => Check::new(
            "mesh-port",
            Status::Fail,
            format!("udp {port} cannot be bound: {err}"),
        )
        .hint("another program (or broker) uses it; set mesh_port in settings.json"),
    }
}

fn agents_check(n_agents: usize, warnings: &[String]) -> Check {
    if warnings.is_empty() {
        Check::new("agents", Status::Ok, format!("{n_agents} found"))
    } else {
        Check::new(
            "agents",
            Status::Warn,
            format!("{n_agents} found; {}", warnings.join("; ")),
        )
        .hint("fix the files named above")
    }
}

/// Agents whose project manifest is not trusted: they will not start.
fn trust_check(home: &crate::home::Home, agents: &[LocalAgent]) -> Option<Check> {
    let refused: Vec<(&LocalAgent, crate::config::trust::Untrusted)> = agents
        .iter()
        .filter_map(|agent| Some((agent, crate::config::trust::check(home, agent).err()?)))
        .collect();
    let needing = agents.iter().filter(|a| a.needs_trust.is_some()).count();
    if refused.is_empty() {
        return (needing > 0).then(|| {
            Check::new(
                "manifests",
                Status::Ok,
                format!("{needing} project agents with their own command, all trusted"),
            )
        });
    }
    let names: Vec<String> = refused
        .iter()
        .map(|(agent, _)| format!("@{}", agent.definition))
        .collect();
    let manifests: std::collections::BTreeSet<String> = refused
        .iter()
        .filter_map(|(agent, _)| agent.needs_trust.as_ref())
        .map(|digest| digest.path.display().to_string())
        .collect();
    Some(
        Check::new(
            "manifests",
            Status::Warn,
            format!("{} will not start: {}", names.join(", "), refused[0].1),
        )
        .hint(format!(
            "review each manifest, then `scout agents trust PATH` ({})",
            manifests.into_iter().collect::<Vec<_>>().join(", ")
        )),
    )
}

fn cli_checks(agents: &[LocalAgent]) -> Vec<Check> {
    use crate::adapter::{self, AdapterOptions, AgentEnv, AuthStatus};
    let mut checks = Vec::new();
    let env = AgentEnv::default();
    for harness in [Harness::Claude, Harness::Codex, Harness::Gemini] {
        let Ok(adapter) = adapter::adapter_for(harness, &AdapterOptions::default()) else {
            continue;
        };
        let program = adapter.program().to_owned();
        let users: Vec<String> = agents
            .iter()
            .filter(|agent| agent.harness == harness)
            .map(|agent| format!("@{}", agent.definition))
            .collect();
        let name = format!("cli:{program}");
        let found = adapter::preflight(adapter.as_ref(), &env);
        let Some(path) = &found.path else {
            if users.is_empty() {
                checks.push(Check::new(
                    name,
                    Status::Ok,
                    "not installed (no agent uses it)",
                ));
            } else {
                checks.push(
                    Check::new(
                        name,
                        Status::Fail,
                        format!("`{program}` is not on PATH; used by {}", users.join(", ")),
                    )
                    .hint(install_hint(harness)),
                );
            }
            continue;
        };
        let version = found.version.as_deref().unwrap_or("version unknown");
        let found_at = format!("{} ({version})", path.display());
        checks.push(match found.auth {
            AuthStatus::LoggedIn => Check::new(name, Status::Ok, format!("{found_at}, logged in")),
            AuthStatus::Unknown | AuthStatus::NotApplicable => {
                Check::new(name, Status::Ok, format!("{found_at}, login not checked"))
            }
            AuthStatus::LoggedOut => Check::new(
                name,
                Status::Warn,
                format!("{found_at}, not logged in (AUTH_REQUIRED)"),
            )
            .hint(adapter.login_hint()),
        });
    }
    for agent in agents
        .iter()
        .filter(|agent| matches!(agent.harness, Harness::Command | Harness::Acp))
    {
        // An `acp` command given as one line runs as its first word.
        let program = match agent.harness {
            Harness::Acp => {
                let adapter = crate::adapter::acp::AcpAdapter::new(agent.command.clone());
                crate::adapter::Adapter::program(&adapter).to_owned()
            }
            _ => agent.command.first().cloned().unwrap_or_default(),
        };
        if program.is_empty() {
            continue;
        }
        let path_var = std::env::var_os("PATH");
        if crate::adapter::find_program(&program, path_var.as_deref()).is_none() {
            checks.push(
                Check::new(
                    format!("command:@{}", agent.definition),
                    Status::Fail,
                    format!("`{program}` is not on PATH"),
                )
                .hint("install it, or fix the agent's command with `scout agents remove` and `scout agents add`"),
            );
        }
    }
    checks
}

fn install_hint(harness: Harness) -> &'static str {
    match harness {
        Harness::Claude => "npm install -g @anthropic-ai/claude-code, then `claude` to log in",
        Harness::Codex => "npm install -g @openai/codex, then `codex login`",
        Harness::Gemini => "npm install -g @google/gemini-cli, then `gemini` to log in",
        Harness::Command | Harness::Acp => "install the program",
    }
}

fn render(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|check| check.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            check.status.word(),
            check.name,
            check.message
        ));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("{:<4}  {:<width$}  fix: {hint}\n", "", ""));
        }
    }
    let n_fail = checks.iter().filter(|c| c.status == Status::Fail).count();
    let n_warn = checks.iter().filter(|c| c.status == Status::Warn).count();
    out.push_str(&format!(
        "{} checks: {} ok, {n_warn} warn, {n_fail} fail\n",
        checks.len(),
        checks.len() - n_fail - n_warn
    ));
    out
}
