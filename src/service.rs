//! The broker as an OS user service: a systemd user unit on Linux, a launchd
//! agent on macOS. This module renders the unit or plist, installs and
//! removes it, and asks the service manager (`systemctl --user`,
//! `launchctl`) for its view. Both platforms' code is compiled everywhere,
//! so the macOS paths are type-checked and tested (as text) on Linux too;
//! only the running platform's manager is ever called.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::Context as _;
use serde::Serialize;

use crate::home::Home;

/// Seconds systemd waits before restarting a broker that failed: long enough
/// that a broker failing at start (a port taken, a bad setting) does not spin
/// and flood its log, short enough that a crash is a short outage.
pub const RESTART_SEC: u32 = 5;

/// Window and count of systemd's start limit: ten failed starts in five
/// minutes means the broker cannot start on its own (a bad setting), so
/// systemd stops retrying and `scout doctor` shows the last exit instead.
pub const START_LIMIT_INTERVAL_SEC: u32 = 300;
/// See [`START_LIMIT_INTERVAL_SEC`].
pub const START_LIMIT_BURST: u32 = 10;

/// Seconds the manager waits for a stopping broker before SIGKILL: the
/// broker closes its store and ends its sessions on SIGTERM, which takes
/// well under this even with many agents.
pub const STOP_TIMEOUT_SEC: u32 = 30;

/// launchd's minimum seconds between two starts of the agent (its
/// `ThrottleInterval`), the same pause as [`RESTART_SEC`].
pub const LAUNCHD_THROTTLE_SEC: u32 = RESTART_SEC;

/// The environment variable that names the platform whose service to manage
/// (`linux` or `macos`), so tests on Linux can drive the macOS paths that
/// only render and write files.
pub const PLATFORM_ENV: &str = "SCOUT_SERVICE_PLATFORM";

/// Which service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// A systemd user unit, driven with `systemctl --user`.
    Linux,
    /// A launchd agent, driven with `launchctl`.
    Macos,
}

impl Platform {
    /// The platform this binary runs on, unless [`PLATFORM_ENV`] names one.
    pub fn current() -> Platform {
        match std::env::var(PLATFORM_ENV).as_deref() {
            Ok("macos") => Platform::Macos,
            Ok("linux") => Platform::Linux,
            _ if cfg!(target_os = "macos") => Platform::Macos,
            _ => Platform::Linux,
        }
    }
}

/// A service problem the user must fix, with a stable code.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// `SERVICE_PATH_INVALID`, `SERVICE_MANAGER_FAILED`, `SERVICE_NOT_INSTALLED`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ServiceError {
    fn new(code: &'static str, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
        }
    }
}

/// Everything the unit or plist is made from.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which manager.
    pub platform: Platform,
    /// The absolute path of the `scout` binary the service runs.
    pub binary: PathBuf,
    /// The broker's home (its config directory).
    pub home: PathBuf,
    /// Where the broker's logs go.
    pub logs_dir: PathBuf,
    /// Whether the home is the platform default (then the service has the
    /// plain name `scout`).
    pub default_home: bool,
    /// `PATH` for the broker, so it finds the agent CLIs the user has
    /// (service managers start programs with a minimal `PATH`).
    pub path_env: Option<String>,
    /// The user's home directory (for `~/Library/LaunchAgents` and the
    /// systemd user directory's default).
    pub user_home: PathBuf,
    /// `$XDG_CONFIG_HOME`, when set.
    pub xdg_config_home: Option<PathBuf>,
}

impl Spec {
    /// The spec for this home, run by the current binary.
    pub fn for_home(home: &Home, platform: Platform) -> anyhow::Result<Spec> {
        let binary = std::env::current_exe().context("cannot find the scout binary's path")?;
        let default_home = matches!(Home::resolve(None), Ok(default) if default == *home)
            && std::env::var_os("SCOUT_HOME").is_none();
        let user_home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| ServiceError::new("SERVICE_PATH_INVALID", "HOME is not set"))?;
        Ok(Spec {
            platform,
            binary,
            home: home.config_dir.clone(),
            logs_dir: home.logs_dir(),
            default_home,
            path_env: std::env::var("PATH").ok(),
            user_home,
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute()),
        })
    }

    /// `scout` for the default home, else `scout-<dir>-<hash>`: the directory
    /// name for people, a hash of the full path so two homes that share a
    /// directory name get two services.
    pub fn name(&self) -> String {
        if self.default_home {
            return "scout".to_owned();
        }
        let base: String = self
            .home
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(NAME_DIR_CHARS_MAX)
            .collect();
        format!(
            "scout-{base}-{:08x}",
            fnv1a(self.home.as_os_str().as_encoded_bytes()) as u32
        )
    }

    /// The unit name (`scout.service`) or launchd label (`dev.scout.broker`).
    pub fn unit(&self) -> String {
        match self.platform {
            Platform::Linux => format!("{}.service", self.name()),
            Platform::Macos => match self.name().strip_prefix("scout") {
                Some(rest) => format!("dev.scout.broker{}", rest.replace('-', ".")),
                None => "dev.scout.broker".to_owned(),
            },
        }
    }

    /// Where the unit or plist file lives.
    pub fn file_path(&self) -> PathBuf {
        match self.platform {
            Platform::Linux => self
                .xdg_config_home
                .clone()
                .unwrap_or_else(|| self.user_home.join(".config"))
                .join("systemd/user")
                .join(self.unit()),
            Platform::Macos => self
                .user_home
                .join("Library/LaunchAgents")
                .join(format!("{}.plist", self.unit())),
        }
    }

    /// The file's text.
    pub fn render(&self) -> Result<String, ServiceError> {
        for path in [&self.binary, &self.home, &self.logs_dir] {
            let text = path.to_str().ok_or_else(|| {
                ServiceError::new(
                    "SERVICE_PATH_INVALID",
                    format!("{} is not valid UTF-8", path.display()),
                )
            })?;
            if text.contains(['\n', '\r', '\0']) {
                return Err(ServiceError::new(
                    "SERVICE_PATH_INVALID",
                    format!("{text:?} contains a line break"),
                ));
            }
        }
        Ok(match self.platform {
            Platform::Linux => self.systemd_unit(),
            Platform::Macos => self.launchd_plist(),
        })
    }

    fn systemd_unit(&self) -> String {
        let binary = systemd_quote(&self.binary.display().to_string());
        let home = systemd_quote(&self.home.display().to_string());
        let mut env = String::new();
        if let Some(path) = self
            .path_env
            .as_deref()
            .filter(|p| !p.contains(['\n', '\r']))
        {
            env = format!("Environment={}\n", systemd_quote(&format!("PATH={path}")));
        }
        format!(
            "# Installed by `scout setup` (or `scout service install`); `scout service uninstall` removes it.\n\
             [Unit]\n\
             Description=Scout broker ({home_plain})\n\
             StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}\n\
             StartLimitBurst={START_LIMIT_BURST}\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStart={binary} --home {home} up\n\
             {env}\
             Restart=on-failure\n\
             RestartSec={RESTART_SEC}\n\
             # Only the broker is stopped with the unit: agent session holders\n\
             # it started outlive it and are re-attached by the next broker.\n\
             KillMode=process\n\
             TimeoutStopSec={STOP_TIMEOUT_SEC}\n\
             \n\
             [Install]\n\
             WantedBy=default.target\n",
            home_plain = self.home.display().to_string().replace('%', "%%"),
        )
    }

    fn launchd_plist(&self) -> String {
        let mut args = String::new();
        for arg in [
            self.binary.display().to_string(),
            "--home".to_owned(),
            self.home.display().to_string(),
            "up".to_owned(),
        ] {
            args.push_str(&format!("    <string>{}</string>\n", xml_escape(&arg)));
        }
        let env = match &self.path_env {
            Some(path) => format!(
                "  <key>EnvironmentVariables</key>\n  <dict>\n    <key>PATH</key>\n    <string>{}</string>\n  </dict>\n",
                xml_escape(path)
            ),
            None => String::new(),
        };
        let out = xml_escape(&self.logs_dir.join("launchd.out.log").display().to_string());
        let err = xml_escape(&self.logs_dir.join("launchd.err.log").display().to_string());
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n\
             <dict>\n\
             \x20 <key>Label</key>\n\
             \x20 <string>{label}</string>\n\
             \x20 <key>ProgramArguments</key>\n\
             \x20 <array>\n\
             {args}\
             \x20 </array>\n\
             \x20 <key>WorkingDirectory</key>\n\
             \x20 <string>{home}</string>\n\
             {env}\
             \x20 <key>RunAtLoad</key>\n\
             \x20 <true/>\n\
             \x20 <key>KeepAlive</key>\n\
             \x20 <true/>\n\
             \x20 <key>ThrottleInterval</key>\n\
             \x20 <integer>{LAUNCHD_THROTTLE_SEC}</integer>\n\
             \x20 <key>AbandonProcessGroup</key>\n\
             \x20 <true/>\n\
             \x20 <key>StandardOutPath</key>\n\
             \x20 <string>{out}</string>\n\
             \x20 <key>StandardErrorPath</key>\n\
             \x20 <string>{err}</string>\n\
             </dict>\n\
             </plist>\n",
            label = xml_escape(&self.unit()),
            home = xml_escape(&self.home.display().to_string()),
        )
    }
}

/// Characters of the home's directory name kept in a service name; unit
/// names are limited to 255 bytes and people read them in `systemctl`.
const NAME_DIR_CHARS_MAX: usize = 32;

/// FNV-1a: a stable hash (unlike std's, which is seeded per process), so a
/// home's service name is the same on every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One word of a unit file line, double-quoted, with systemd's specifier
/// (`%`) and variable (`$`) characters escaped so a path means itself.
fn systemd_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Whether the service manager can be used from here.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Availability {
    /// It answers.
    Available,
    /// It does not; `reason` says why and `hint` what to do.
    Unavailable {
        /// What the manager said.
        reason: String,
        /// What to do instead.
        hint: String,
    },
}

/// The hint for a Linux machine without a user manager.
pub fn headless_hint(home_flag: &str) -> String {
    format!(
        "start a user manager that outlives your logins with `loginctl enable-linger $USER` \
         (then log in again and run `scout setup{home_flag}`), or run `scout{home_flag} up` \
         under your own supervisor"
    )
}

fn run_manager(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))
}

fn manager_failed(program: &str, args: &[&str], output: &Output) -> anyhow::Error {
    ServiceError::new(
        "SERVICE_MANAGER_FAILED",
        format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    )
    .into()
}

fn systemctl(args: &[&str]) -> anyhow::Result<Output> {
    let mut full = vec!["--user"];
    full.extend_from_slice(args);
    run_manager("systemctl", &full)
}

fn systemctl_ok(args: &[&str]) -> anyhow::Result<()> {
    let output = systemctl(args)?;
    if output.status.success() {
        Ok(())
    } else {
        let mut full = vec!["--user"];
        full.extend_from_slice(args);
        Err(manager_failed("systemctl", &full, &output))
    }
}

fn launchctl_ok(args: &[&str]) -> anyhow::Result<()> {
    let output = run_manager("launchctl", args)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(manager_failed("launchctl", args, &output))
    }
}

/// `gui/<uid>`: the launchd domain of the logged-in user (`id -u`, which
/// every Unix has, rather than a call into libc).
fn launchd_domain() -> String {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("gui/{uid}")
}

/// Asks whether the service manager answers.
pub fn availability(spec: &Spec, home_flag: &str) -> Availability {
    match spec.platform {
        // `show-environment` succeeds only when a user manager answers on
        // the bus; `is-system-running` prints "offline" without one, and
        // exits non-zero for a "degraded" manager that works.
        Platform::Linux => match systemctl(&["show-environment"]) {
            Err(err) => Availability::Unavailable {
                reason: format!("{err:#} (no systemd here)"),
                hint: headless_hint(home_flag),
            },
            Ok(output) if output.status.success() => Availability::Available,
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                Availability::Unavailable {
                    reason: format!(
                        "`systemctl --user` has no user manager to talk to ({})",
                        match stderr.trim() {
                            "" => "no answer",
                            said => said,
                        }
                    ),
                    hint: headless_hint(home_flag),
                }
            }
        },
        Platform::Macos => match run_manager("launchctl", &["print", &launchd_domain()]) {
            Ok(output) if output.status.success() => Availability::Available,
            Ok(output) => Availability::Unavailable {
                reason: format!(
                    "launchd has no GUI session for this user: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                hint: format!(
                    "log in to the Mac's desktop once, or run `scout{home_flag} up` under your own supervisor"
                ),
            },
            Err(err) => Availability::Unavailable {
                reason: format!("{err:#}"),
                hint: format!("run `scout{home_flag} up` under your own supervisor"),
            },
        },
    }
}

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Installed {
    /// The file was written for the first time and the service started.
    Created,
    /// The file changed (a new binary path, say); the service was restarted.
    Updated,
    /// The file was already right; the service was started if it was not running.
    Started,
    /// Nothing to do: the file was right and the service running.
    Unchanged,
}

/// Writes the unit or plist (when it differs), registers it with the
/// manager and starts the service. Call only when [`availability`] said
/// the manager answers: nothing is written before that is known.
pub fn install(spec: &Spec) -> anyhow::Result<Installed> {
    let text = spec.render()?;
    let path = spec.file_path();
    let existing = std::fs::read_to_string(&path).ok();
    let changed = existing.as_deref() != Some(text.as_str());
    if changed {
        let dir = path.parent().context("the service file has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir_all(&spec.logs_dir)
            .with_context(|| format!("cannot create {}", spec.logs_dir.display()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let result = register(spec, changed, existing.is_some());
    if result.is_err() && existing.is_none() {
        // Never half-installed: a unit the manager refused is removed again.
        let _ = std::fs::remove_file(&path);
        if spec.platform == Platform::Linux {
            let _ = systemctl(&["daemon-reload"]);
        }
    }
    result
}

fn register(spec: &Spec, changed: bool, existed: bool) -> anyhow::Result<Installed> {
    let unit = spec.unit();
    let active = is_active(spec);
    match spec.platform {
        Platform::Linux => {
            if changed {
                systemctl_ok(&["daemon-reload"])?;
            }
            systemctl_ok(&["enable", &unit])?;
            if changed && existed && active {
                systemctl_ok(&["restart", &unit])?;
            } else if !active {
                systemctl_ok(&["start", &unit])?;
            }
        }
        Platform::Macos => {
            let domain = launchd_domain();
            let path = spec.file_path().display().to_string();
            if changed && existed {
                let _ = run_manager("launchctl", &["bootout", &format!("{domain}/{unit}")]);
            }
            if changed || !active {
                let output = run_manager("launchctl", &["bootstrap", &domain, &path])?;
                // Bootstrapping a loaded agent fails; kickstart starts it.
                if !output.status.success() {
                    launchctl_ok(&["kickstart", &format!("{domain}/{unit}")])?;
                }
            }
        }
    }
    Ok(match (changed, existed, active) {
        (true, false, _) => Installed::Created,
        (true, true, _) => Installed::Updated,
        (false, _, false) => Installed::Started,
        (false, _, true) => Installed::Unchanged,
    })
}

/// Stops the service, unregisters it and removes its file. Returns whether
/// there was anything to remove.
pub fn uninstall(spec: &Spec) -> anyhow::Result<bool> {
    let path = spec.file_path();
    if !path.exists() {
        return Ok(false);
    }
    let unit = spec.unit();
    match spec.platform {
        Platform::Linux => {
            systemctl_ok(&["disable", "--now", &unit])?;
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            systemctl_ok(&["daemon-reload"])?;
        }
        Platform::Macos => {
            let _ = run_manager(
                "launchctl",
                &["bootout", &format!("{}/{unit}", launchd_domain())],
            );
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(true)
}

/// `start`, `stop` or `restart` the installed service.
pub fn control(spec: &Spec, verb: &str) -> anyhow::Result<()> {
    if !spec.file_path().exists() {
        return Err(ServiceError::new(
            "SERVICE_NOT_INSTALLED",
            format!(
                "{} is not installed; run `scout service install`",
                spec.unit()
            ),
        )
        .into());
    }
    let unit = spec.unit();
    match spec.platform {
        Platform::Linux => systemctl_ok(&[verb, &unit]),
        Platform::Macos => {
            let target = format!("{}/{unit}", launchd_domain());
            let path = spec.file_path().display().to_string();
            match verb {
                "stop" => launchctl_ok(&["bootout", &target]),
                "start" => launchctl_ok(&["bootstrap", &launchd_domain(), &path]),
                _ => launchctl_ok(&["kickstart", "-k", &target]),
            }
        }
    }
}

fn is_active(spec: &Spec) -> bool {
    manager_view(spec).is_ok_and(|view| view.active)
}

/// What the service manager says about the service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManagerView {
    /// Running (systemd `ActiveState=active`, launchd `state = running`).
    pub active: bool,
    /// The manager's own word for the state (`active`, `failed`, `running`, ...).
    pub state: String,
    /// The broker's PID, when running.
    pub pid: Option<u32>,
    /// The exit status of the last run that ended.
    pub last_exit_status: Option<i32>,
    /// When the last run ended, as the manager prints it.
    pub last_exit_time: Option<String>,
    /// Automatic restarts since the service was started.
    pub restarts: Option<u64>,
    /// Seconds since the current run started, when the manager says.
    pub running_for_secs: Option<u64>,
    /// Whether it starts at login (systemd `UnitFileState=enabled`).
    pub enabled: Option<bool>,
}

/// The systemd properties `status` reads.
pub const SYSTEMD_PROPERTIES: &str = "ActiveState,SubState,MainPID,ExecMainStatus,ExecMainExitTimestamp,ExecMainStartTimestampMonotonic,NRestarts,UnitFileState";

/// Asks the manager for its view of the service.
pub fn manager_view(spec: &Spec) -> anyhow::Result<ManagerView> {
    match spec.platform {
        Platform::Linux => {
            let output = systemctl(&["show", "-p", SYSTEMD_PROPERTIES, &spec.unit()])?;
            if !output.status.success() {
                let args = ["--user", "show", "-p", SYSTEMD_PROPERTIES, &spec.unit()];
                return Err(manager_failed("systemctl", &args, &output));
            }
            Ok(parse_systemd_show(
                &String::from_utf8_lossy(&output.stdout),
                monotonic_usec(),
            ))
        }
        Platform::Macos => {
            let output = run_manager(
                "launchctl",
                &["print", &format!("{}/{}", launchd_domain(), spec.unit())],
            )?;
            if !output.status.success() {
                return Ok(ManagerView {
                    state: "not loaded".to_owned(),
                    ..ManagerView::default()
                });
            }
            Ok(parse_launchctl_print(&String::from_utf8_lossy(
                &output.stdout,
            )))
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of systemd's `*Monotonic`
/// timestamps.
fn monotonic_usec() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u64::try_from(now.tv_nsec()).ok()?;
    Some(secs * 1_000_000 + nanos / 1_000)
}

/// Parses `systemctl show`'s `Key=value` lines.
pub fn parse_systemd_show(text: &str, now_monotonic_usec: Option<u64>) -> ManagerView {
    let props: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let state = props.get("ActiveState").copied().unwrap_or("unknown");
    let started = props
        .get("ExecMainStartTimestampMonotonic")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    ManagerView {
        active: state == "active",
        state: match props.get("SubState") {
            Some(sub) if !sub.is_empty() => format!("{state} ({sub})"),
            _ => state.to_owned(),
        },
        pid: props
            .get("MainPID")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|pid| *pid != 0),
        last_exit_status: props.get("ExecMainStatus").and_then(|v| v.parse().ok()),
        last_exit_time: props
            .get("ExecMainExitTimestamp")
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned()),
        restarts: props.get("NRestarts").and_then(|v| v.parse().ok()),
        running_for_secs: match (started, now_monotonic_usec) {
            (Some(start), Some(now)) if state == "active" => {
                Some(now.saturating_sub(start) / 1_000_000)
            }
            _ => None,
        },
        enabled: props.get("UnitFileState").map(|v| *v == "enabled"),
    }
}

/// Parses the few fields of `launchctl print gui/<uid>/<label>` it needs
/// (`state = running`, `pid = 123`, `last exit code = 0`, `runs = 2`).
pub fn parse_launchctl_print(text: &str) -> ManagerView {
    let mut view = ManagerView::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(" = ") else {
            continue;
        };
        match key {
            "state" if view.state.is_empty() => {
                view.state = value.to_owned();
                view.active = value == "running";
            }
            "pid" => view.pid = value.parse().ok(),
            "last exit code" => {
                view.last_exit_status = value.split(':').next().and_then(|v| v.trim().parse().ok())
            }
            // launchd counts runs; every run after the first is a restart.
            "runs" => view.restarts = value.parse::<u64>().ok().map(|runs| runs.saturating_sub(1)),
            _ => {}
        }
    }
    view
}

/// Whether the user manager outlives the user's logins (`loginctl`'s
/// `Linger`). `None` when loginctl does not answer.
pub fn linger() -> Option<bool> {
    let user = std::env::var("USER").ok()?;
    let output = run_manager("loginctl", &["show-user", &user, "-p", "Linger"]).ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().strip_prefix("Linger=").map(|v| v == "yes")
}

/// Reads the installed file, if any.
pub fn installed_text(spec: &Spec) -> Option<String> {
    std::fs::read_to_string(spec.file_path()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(platform: Platform) -> Spec {
        Spec {
            platform,
            binary: PathBuf::from("/opt/scout 1/bin/scout"),
            home: PathBuf::from("/home/u/work%s/home"),
            logs_dir: PathBuf::from("/home/u/work%s/home/logs"),
            default_home: false,
            path_env: Some("/usr/bin:/bin".to_owned()),
            user_home: PathBuf::from("/home/u"),
            xdg_config_home: None,
        }
    }

    #[test]
    fn unit_quotes_paths_and_escapes_specifiers() {
        let text = spec(Platform::Linux).render().unwrap();
        assert!(
            text.contains(
                "ExecStart=\"/opt/scout 1/bin/scout\" --home \"/home/u/work%%s/home\" up\n"
            )
        );
        assert!(text.contains("KillMode=process\n"));
    }

    #[test]
    fn names_are_stable_and_distinct_per_home() {
        let a = spec(Platform::Linux);
        let mut b = a.clone();
        b.home = PathBuf::from("/elsewhere/home");
        assert_eq!(a.name(), a.clone().name());
        assert_ne!(a.name(), b.name());
        assert!(a.file_path().starts_with("/home/u/.config/systemd/user"));
        let mac = spec(Platform::Macos);
        assert!(mac.unit().starts_with("dev.scout.broker.home."));
    }

    #[test]
    fn systemd_show_output_is_read() {
        let view = parse_systemd_show(
            "ActiveState=active\nSubState=running\nMainPID=42\nExecMainStatus=0\nExecMainExitTimestamp=\nExecMainStartTimestampMonotonic=1000000\nNRestarts=3\nUnitFileState=enabled\n",
            Some(61_000_000),
        );
        assert!(view.active);
        assert_eq!(view.pid, Some(42));
        assert_eq!(view.restarts, Some(3));
        assert_eq!(view.running_for_secs, Some(60));
        assert_eq!(view.last_exit_time, None);
    }

    #[test]
    fn launchctl_print_output_is_read() {
        let view = parse_launchctl_print(
            "gui/501/dev.scout.broker = {\n\tstate = running\n\tpid = 77\n\truns = 3\n\tlast exit code = 1: Operation not permitted\n}\n",
        );
        assert!(view.active);
        assert_eq!(view.pid, Some(77));
        assert_eq!(view.restarts, Some(2));
        assert_eq!(view.last_exit_status, Some(1));
    }
}
