//! `scout service`: install, remove, start, stop and inspect the broker's OS
//! user service (see [`crate::service`]), print the unit or plist it would
//! install, and read the broker's log file.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Context, UsageError};
use crate::service::{self, Availability, Installed, ManagerView, Platform, Spec};

/// Lines `scout service logs` prints before following: a screen's worth.
const LOG_TAIL_LINES: usize = 50;

/// How often `logs --follow` looks for new lines: quick enough to feel
/// live, rare enough to cost nothing.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The environment variable that, set to anything but an empty or false
/// value (`0`, `false`, `no`, `off`), means "this home runs without the OS
/// service": `scout setup` acts as with `--no-service` and `scout doctor`
/// does not ask for the service.
pub const NO_SERVICE_ENV: &str = "SCOUT_NO_SERVICE";

/// Whether [`NO_SERVICE_ENV`] is set to a true value.
pub fn no_service_from_env() -> bool {
    std::env::var(NO_SERVICE_ENV).is_ok_and(|value| {
        !matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// The subcommands of `scout service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit (or plist) and start the broker as a service.
    Install,
    /// Stop the service and remove its unit (or plist).
    Uninstall,
    /// Start the installed service.
    Start,
    /// Stop the installed service.
    Stop,
    /// Restart the installed service.
    Restart,
    /// The service manager's view next to the broker's own health.
    Status,
    /// Print the broker's log file.
    Logs(LogsArgs),
    /// Print the unit or plist `install` would write.
    Print(PrintArgs),
}

/// Flags of `scout service logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as the broker writes them.
    #[arg(long, short)]
    pub follow: bool,
}

/// Flags of `scout service print`.
#[derive(Debug, Args)]
pub struct PrintArgs {
    /// Print for this platform instead of the one scout runs on.
    #[arg(long, value_enum)]
    pub platform: Option<Platform>,
}

/// The spec of this home's service on `platform`.
pub fn spec(context: &Context, platform: Platform) -> anyhow::Result<Spec> {
    Spec::for_home(&context.home, platform)
}

/// What `install` (and `scout setup`) did about the service.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// `created`, `updated`, `started`, `unchanged`, `unavailable` or `skipped`.
    pub outcome: &'static str,
    /// The unit or launchd label.
    pub unit: String,
    /// The unit or plist file.
    pub path: std::path::PathBuf,
    /// Why nothing was installed, when the manager is unavailable.
    pub reason: Option<String>,
    /// What to do then.
    pub hint: Option<String>,
}

impl InstallReport {
    /// Whether anything on disk or in the manager changed.
    pub fn changed(&self) -> bool {
        matches!(self.outcome, "created" | "updated" | "started")
    }

    /// Human lines.
    pub fn render(&self) -> String {
        match self.outcome {
            "unavailable" => format!(
                "service   not installed: {}\n          {}\n",
                self.reason.as_deref().unwrap_or(""),
                self.hint.as_deref().unwrap_or("")
            ),
            "unchanged" => format!(
                "service   {} is installed and running; nothing changed ({})\n",
                self.unit,
                self.path.display()
            ),
            outcome => format!(
                "service   {outcome} {} ({}); see `scout service status`\n",
                self.unit,
                self.path.display()
            ),
        }
    }
}

/// Installs and starts the service when the manager answers; otherwise
/// installs nothing and says why.
pub fn install(context: &Context) -> anyhow::Result<InstallReport> {
    let spec = spec(context, Platform::current())?;
    let mut report = InstallReport {
        outcome: "unavailable",
        unit: spec.unit(),
        path: spec.file_path(),
        reason: None,
        hint: None,
    };
    match service::availability(&spec, &super::setup::home_flag(context)) {
        Availability::Unavailable { reason, hint } => {
            report.reason = Some(reason);
            report.hint = Some(hint);
        }
        Availability::Available => {
            report.outcome = match service::install(&spec)? {
                Installed::Created => "created",
                Installed::Updated => "updated",
                Installed::Started => "started",
                Installed::Unchanged => "unchanged",
            };
        }
    }
    Ok(report)
}

#[derive(Debug, Serialize)]
struct StatusReport {
    unit: String,
    path: std::path::PathBuf,
    installed: bool,
    manager: Option<ManagerView>,
    manager_error: Option<String>,
    broker: BrokerHealth,
}

#[derive(Debug, Serialize)]
struct BrokerHealth {
    url: Option<String>,
    healthy: bool,
    detail: String,
}

/// Runs `scout service ...`.
pub fn run(command: ServiceCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let platform = Platform::current();
    match command {
        ServiceCommand::Print(args) => {
            let spec = spec(context, args.platform.unwrap_or(platform))?;
            print!("{}", spec.render()?);
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Install => {
            let report = install(context)?;
            context.printer.emit(&report, || report.render())?;
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Uninstall => {
            let spec = spec(context, platform)?;
            let removed = service::uninstall(&spec)?;
            let message = if removed {
                format!("removed {} ({})", spec.unit(), spec.file_path().display())
            } else {
                format!("nothing to remove: {} is not installed", spec.unit())
            };
            context.printer.emit(
                &serde_json::json!({"removed": removed, "unit": spec.unit()}),
                || format!("{message}\n"),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Start | ServiceCommand::Stop | ServiceCommand::Restart => {
            let verb = match command {
                ServiceCommand::Start => "start",
                ServiceCommand::Stop => "stop",
                _ => "restart",
            };
            let spec = spec(context, platform)?;
            service::control(&spec, verb)?;
            context.printer.emit(
                &serde_json::json!({"unit": spec.unit(), "done": verb}),
                || format!("{verb}: {}\n", spec.unit()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Status => {
            let spec = spec(context, platform)?;
            let installed = spec.file_path().exists();
            let (manager, manager_error) = if installed {
                match service::manager_view(&spec) {
                    Ok(view) => (Some(view), None),
                    Err(err) => (None, Some(format!("{err:#}"))),
                }
            } else {
                (None, None)
            };
            let report = StatusReport {
                unit: spec.unit(),
                path: spec.file_path(),
                installed,
                manager,
                manager_error,
                broker: broker_health(context),
            };
            context.printer.emit(&report, || render_status(&report))?;
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Logs(args) => logs(context, args.follow),
    }
}

fn broker_health(context: &Context) -> BrokerHealth {
    let addr = crate::config::settings::load(&context.home.settings_path())
        .ok()
        .flatten()
        .and_then(|file| crate::daemon::broker_http_addr(&context.home, &file.value).ok());
    let Some(addr) = addr else {
        return BrokerHealth {
            url: None,
            healthy: false,
            detail: "no settings: run `scout setup`".to_owned(),
        };
    };
    let url = format!("http://{addr}/health");
    let (healthy, detail) = match super::client::BrokerClient::running(context) {
        Ok(Some(_)) => (true, "answers /health".to_owned()),
        Ok(None) => (false, "not answering".to_owned()),
        Err(err) => (false, format!("{err:#}")),
    };
    BrokerHealth {
        url: Some(url),
        healthy,
        detail,
    }
}

fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    if !report.installed {
        out.push_str(&format!(
            "service   {} is not installed ({}); install it with `scout service install`\n",
            report.unit,
            report.path.display()
        ));
    } else if let Some(view) = &report.manager {
        out.push_str(&format!(
            "service   {} ({})\n",
            report.unit,
            report.path.display()
        ));
        out.push_str(&format!("state     {}\n", view.state));
        if let Some(pid) = view.pid {
            out.push_str(&format!("pid       {pid}\n"));
        }
        if let Some(secs) = view.running_for_secs {
            out.push_str(&format!("running   {secs} s\n"));
        }
        match (view.last_exit_status, &view.last_exit_time) {
            (Some(status), Some(time)) => {
                out.push_str(&format!("last exit status {status} at {time}\n"))
            }
            (Some(status), None) => out.push_str(&format!("last exit status {status}\n")),
            _ => {}
        }
        if let Some(restarts) = view.restarts {
            out.push_str(&format!("restarts  {restarts}\n"));
        }
    } else if let Some(err) = &report.manager_error {
        out.push_str(&format!("service   {}: {err}\n", report.unit));
    }
    out.push_str(&format!(
        "broker    {}{}\n",
        report.broker.detail,
        report
            .broker
            .url
            .as_deref()
            .map(|url| format!(" ({url})"))
            .unwrap_or_default()
    ));
    out
}

fn logs(context: &Context, follow: bool) -> anyhow::Result<ExitCode> {
    let path = context.home.logs_dir().join(crate::logging::LOG_FILE_NAME);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !follow => {
            return Err(UsageError::new(
                "LOGS_NOT_FOUND",
                format!(
                    "{} does not exist yet: the broker has not run on this home",
                    path.display()
                ),
            )
            .into());
        }
        Err(err) => {
            return Err(anyhow::Error::new(err).context(format!("cannot open {}", path.display())));
        }
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut stdout = std::io::stdout().lock();
    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut offset = file.stream_position()?;
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let len = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        if len < offset {
            // Rotated: the new file starts from the beginning.
            file = std::fs::File::open(&path)?;
            offset = 0;
        }
        buf.clear();
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut buf)?;
        offset += buf.len() as u64;
        stdout.write_all(&buf)?;
        stdout.flush()?;
    }
}
