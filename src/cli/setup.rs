//! `scout setup`: create (or complete) a broker's home. Idempotent: a second
//! run with the same flags changes nothing and says so.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::{Context, UsageError};
use crate::config::discover::{self, infer_harness};
use crate::config::json_file::{JsonFile, Saved};
use crate::config::project::{self, ProjectManifest};
use crate::config::relay_agents;
use crate::config::settings::{self, Settings};
use crate::home::HOME_DIR_MODE;
use crate::identity::{self, Created};
use crate::store::{Store, StoreOptions};

/// Flags of `scout setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// This broker's node name (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// A broker to dial at start, as HOST:PORT (repeatable).
    #[arg(long = "seed", value_name = "HOST:PORT")]
    pub seeds: Vec<String>,
    /// Port of the local HTTP surface (default 3100; 0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// UDP port of the mesh (default 3101; 0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub mesh_port: Option<u16>,
    /// A directory to scan for projects (repeatable).
    #[arg(long = "workspace-root", value_name = "DIR")]
    pub workspace_roots: Vec<PathBuf>,
    /// Do not install the OS service (a systemd user unit or launchd
    /// agent); the output says how to run the broker. `SCOUT_NO_SERVICE=true`
    /// does the same.
    #[arg(long)]
    pub no_service: bool,
    /// Join a mesh with a code from `scout mesh invite` on a member.
    #[arg(long, value_name = "CODE")]
    pub join: Option<String>,
}

/// One file setup looked after.
#[derive(Debug, Serialize)]
struct FileChange {
    path: PathBuf,
    change: &'static str,
}

/// What setup did.
#[derive(Debug, Serialize)]
pub struct SetupReport {
    config_dir: PathBuf,
    state_dir: PathBuf,
    node_name: String,
    node_id: String,
    http_port: u16,
    mesh_port: u16,
    changed: bool,
    files: Vec<FileChange>,
    agents_found: usize,
    warnings: Vec<String>,
    token_path: PathBuf,
    next: String,
    joined_mesh: Option<String>,
    service: Option<super::service::InstallReport>,
}

/// Runs `scout setup`.
pub fn run(args: SetupArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let mut report = apply(&args, context)?;
    if !args.no_service && !super::service::no_service_from_env() {
        // After the home is complete, so the service's first start finds
        // everything it needs.
        let service = super::service::install(context)?;
        report.changed |= service.changed();
        if service.outcome != "unavailable" {
            report.next = format!("scout service status{}", home_flag(context));
        }
        report.service = Some(service);
    }
    context.printer.emit(&report, || render(&report))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs setup with default flags for `scout up` on a home that has none yet,
/// and returns the human summary of what it created.
pub fn first_run(context: &Context) -> anyhow::Result<String> {
    let args = SetupArgs {
        node_name: None,
        seeds: Vec::new(),
        http_port: None,
        mesh_port: None,
        workspace_roots: Vec::new(),
        no_service: true,
        join: None,
    };
    let summary = render(&apply(&args, context)?);
    // The broker is starting already; the "next" hint is for `setup` alone.
    Ok(summary
        .lines()
        .filter(|line| !line.starts_with("next "))
        .map(|line| format!("{line}\n"))
        .collect())
}

fn apply(args: &SetupArgs, context: &Context) -> anyhow::Result<SetupReport> {
    let home = &context.home;
    let mut files = Vec::new();
    for dir in [&home.config_dir, &home.state_dir] {
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(HOME_DIR_MODE))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
            files.push(FileChange {
                path: dir.clone(),
                change: "created",
            });
        }
    }

    let mut settings_file = match settings::load(&home.settings_path())? {
        Some(file) => file,
        None => JsonFile::new(&home.settings_path(), Settings::default()),
    };
    apply_flags(&mut settings_file.value, args)?;
    let current_repo = current_repository();
    if let Some(repo) = &current_repo
        && !settings_file.value.workspace_roots.contains(repo)
    {
        settings_file.value.workspace_roots.push(repo.clone());
    }
    let path = settings_file.path.clone();
    settings::validate(&settings_file.value, &path, &settings_file.text)
        .map_err(|err| UsageError::new(err.code(), err.to_string()))?;
    files.push(saved(&path, settings_file.save()?));

    let mut relay_file = relay_agents::load(&home.relay_agents_path())?;
    files.push(saved(&home.relay_agents_path(), relay_file.save()?));

    if let Some(repo) = &current_repo
        && let Some(change) = create_manifest_if_needed(repo)?
    {
        files.push(change);
    }

    let (identity, key_created) = identity::load_or_create_node_key(&home.node_key_path())?;
    files.push(created(&home.node_key_path(), key_created));
    let (_token, token_created) = identity::load_or_create_token(&home.token_path())?;
    files.push(created(&home.token_path(), token_created));

    let store_existed = home.store_path().exists();
    let mesh_existed = home.mesh_path().exists();
    let store_options = StoreOptions {
        env: context.env.clone(),
        // Turns a holder runs on while the broker is down stay running.
        held_invocations: crate::holder::journal::held_invocations(
            &home.turns_dir(),
            &home.holders_dir(),
        ),
        ..StoreOptions::default()
    };
    let (store, _reconciled) = Store::open(home.store_path(), store_options)
        .with_context(|| format!("cannot open the store {}", home.store_path().display()))?;
    // A broker running on this home founded its mesh already; otherwise
    // found one now, under the home lock, with this node as first member.
    if !mesh_existed && let Some(_lock) = crate::daemon::try_lock_home(home)? {
        let node_name = scout_mesh::names::Label::parse(
            &settings_file.value.node_name,
            scout_mesh::names::NamePart::Node,
        )?;
        let mesh_identity = identity.mesh_identity(node_name);
        let now = context.env.now_unix_ms();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(crate::daemon::mesh::offline::ensure_mesh(
                home,
                &mesh_identity,
                &store,
                now,
            ))?;
    }
    store
        .close()
        .with_context(|| format!("cannot close the store {}", home.store_path().display()))?;
    files.push(FileChange {
        path: home.store_path(),
        change: if store_existed {
            "unchanged"
        } else {
            "created"
        },
    });
    if !mesh_existed && home.mesh_path().exists() {
        files.push(FileChange {
            path: home.mesh_path(),
            change: "created",
        });
    }
    let joined = match &args.join {
        Some(code) => Some(super::mesh::join(code, context)?.mesh_id),
        None => None,
    };

    let settings = settings_file.value;
    let discovered = discover::discover(&context.home, &settings, &relay_file.value);
    let changed = files.iter().any(|file| file.change != "unchanged");
    let report = SetupReport {
        config_dir: home.config_dir.clone(),
        state_dir: home.state_dir.clone(),
        node_name: settings.node_name.clone(),
        node_id: identity.node_id().to_owned(),
        http_port: settings.http_port,
        mesh_port: settings.mesh_port,
        changed,
        files,
        agents_found: discovered.agents.len(),
        warnings: discovered.warnings,
        token_path: home.token_path(),
        next: format!("scout up{}", home_flag(context)),
        joined_mesh: joined,
        service: None,
    };
    Ok(report)
}

fn apply_flags(settings: &mut Settings, args: &SetupArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.node_name {
        let label = scout_mesh::names::Label::parse(name, scout_mesh::names::NamePart::Node)?;
        settings.node_name = label.as_str().to_owned();
    }
    for seed in &args.seeds {
        settings::parse_seed(seed).map_err(|message| UsageError::new("INVALID_SEED", message))?;
        if !settings.seeds.contains(seed) {
            settings.seeds.push(seed.clone());
        }
    }
    if let Some(port) = args.http_port {
        settings.http_port = port;
    }
    if let Some(port) = args.mesh_port {
        settings.mesh_port = port;
    }
    for root in &args.workspace_roots {
        let root = std::path::absolute(root)
            .with_context(|| format!("cannot make {} absolute", root.display()))?;
        if !root.is_dir() {
            return Err(UsageError::new(
                "INVALID_PATH",
                format!("workspace root {} is not a directory", root.display()),
            )
            .into());
        }
        if !settings.workspace_roots.contains(&root) {
            settings.workspace_roots.push(root);
        }
    }
    Ok(())
}

/// The git repository the current directory is in, if any.
fn current_repository() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|dir| dir.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Writes `.openscout/project.json` for a repository that has agent markers
/// but no manifest yet; a repository without markers is left untouched.
fn create_manifest_if_needed(repo: &Path) -> anyhow::Result<Option<FileChange>> {
    let path = project::manifest_path(repo);
    if path.exists() || infer_harness(repo).is_none() {
        return Ok(None);
    }
    let Some(name) = discover::definition_from_dir_name(repo) else {
        return Ok(None);
    };
    let manifest = ProjectManifest {
        name: name.as_str().to_owned(),
        ..ProjectManifest::default()
    };
    let change = JsonFile::new(&path, manifest).save()?;
    Ok(Some(saved(&path, change)))
}

fn saved(path: &Path, change: Saved) -> FileChange {
    FileChange {
        path: path.to_owned(),
        change: match change {
            Saved::Created => "created",
            Saved::Updated => "updated",
            Saved::Unchanged => "unchanged",
        },
    }
}

fn created(path: &Path, created: Created) -> FileChange {
    FileChange {
        path: path.to_owned(),
        change: match created {
            Created::New => "created",
            Created::Existing => "unchanged",
        },
    }
}

/// ` --home DIR` when the home was chosen explicitly, so the printed next
/// step works when pasted.
pub fn home_flag(context: &Context) -> String {
    let home = &context.home;
    if home.config_dir == home.state_dir && std::env::var_os("SCOUT_HOME").is_none() {
        match crate::home::Home::resolve(None) {
            Ok(default) if default == *home => String::new(),
            _ => format!(" --home {}", home.config_dir.display()),
        }
    } else {
        String::new()
    }
}

fn render(report: &SetupReport) -> String {
    let mut out = String::new();
    if report.changed {
        for file in report
            .files
            .iter()
            .filter(|file| file.change != "unchanged")
        {
            out.push_str(&format!("{:<9} {}\n", file.change, file.path.display()));
        }
    } else {
        out.push_str(&format!(
            "nothing changed: {} is already set up\n",
            report.config_dir.display()
        ));
    }
    out.push_str(&format!(
        "node      {} (id {})\n",
        report.node_name, report.node_id
    ));
    out.push_str(&format!(
        "ports     http 127.0.0.1:{}, mesh udp {}\n",
        report.http_port, report.mesh_port
    ));
    out.push_str(&format!("agents    {} found\n", report.agents_found));
    if let Some(mesh_id) = &report.joined_mesh {
        out.push_str(&format!(
            "mesh      joined {mesh_id}; the broker syncs when it starts\n"
        ));
    }
    for warning in &report.warnings {
        out.push_str(&format!("warning   {warning}\n"));
    }
    out.push_str(&format!(
        "token     {} (send it as `Authorization: Bearer <token>`)\n",
        report.token_path.display()
    ));
    match &report.service {
        Some(service) if service.outcome != "unavailable" => {
            out.push_str(&service.render());
            out.push_str(&format!(
                "next      the broker runs as a service: {}\n",
                report.next
            ));
        }
        Some(service) => {
            out.push_str(&service.render());
            out.push_str(&format!(
                "next      run the broker in the foreground: {}\n",
                report.next
            ));
        }
        None => out.push_str(&format!(
            "next      run the broker in the foreground: {}\n",
            report.next
        )),
    }
    out
}
