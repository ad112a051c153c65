//! Finds and runs the `nats-server` that the routing benchmark compares
//! Scout with: a core NATS cluster for request-reply, and JetStream on a
//! file store that syncs every write, on one server or a cluster of three.
//!
//! The binary comes from `benches/install-nats-server.sh` (a pinned
//! release in the build directory) or from `SCOUT_BENCH_NATS_SERVER`. Each
//! server gets a configuration generated into a temporary directory, with
//! ports chosen free at run time, and every process is killed when the
//! [`Servers`] guard is dropped, on error paths too.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The script that installs the server the figures are measured with.
pub const INSTALL_SCRIPT: &str = "benches/install-nats-server.sh";

/// Names another `nats-server` binary than the installed one.
pub const BINARY_ENV: &str = "SCOUT_BENCH_NATS_SERVER";

/// Where the install script leaves the binary, relative to the build
/// directory (`target/` unless `CARGO_TARGET_DIR` says otherwise).
const INSTALLED_PATH: &str = "bench-tools/nats-server";

/// JetStream's `sync_interval: always` (an fsync after every write, the
/// durability Scout's `synchronous=FULL` commits give) arrived in 2.10.
const MIN_VERSION: (u32, u32) = (2, 10);

/// How long servers get to listen, to form a cluster and to elect their
/// JetStream leaders: a few seconds on a loaded 2-core machine, so 30 s
/// only fires when something is really wrong.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a server's log an error quotes: enough for the reason a
/// server refused its configuration or stopped.
const LOG_TAIL_BYTES: usize = 2_000;

/// The cluster name every generated configuration uses.
const CLUSTER_NAME: &str = "scout-bench";

/// A `nats-server` binary known to be recent enough.
#[derive(Clone, Debug)]
pub struct Binary {
    pub path: PathBuf,
    /// As `nats-server --version` prints it, e.g. `2.15.1`.
    pub version: String,
}

/// Finds the binary: `SCOUT_BENCH_NATS_SERVER`, else the install script's
/// output in the build directory the benchmark runs from. Missing or too
/// old is an error that says how to install the right one.
pub fn locate() -> Result<Binary, String> {
    let path = match std::env::var_os(BINARY_ENV).filter(|value| !value.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => installed().ok_or_else(|| {
            format!(
                "no nats-server for the side-by-side figures: run `{INSTALL_SCRIPT}` \
                 (installs nats-server into the build directory), or set {BINARY_ENV} \
                 to a nats-server {}.{} or newer",
                MIN_VERSION.0, MIN_VERSION.1
            )
        })?,
    };
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|err| {
            format!(
                "cannot run {} --version ({err}): run `{INSTALL_SCRIPT}`, or set {BINARY_ENV} \
                 to a nats-server {}.{} or newer",
                path.display(),
                MIN_VERSION.0,
                MIN_VERSION.1
            )
        })?;
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let version = parse_version(&printed);
    match version {
        Some((major, minor, _)) if (major, minor) >= MIN_VERSION => Ok(Binary {
            path,
            version: printed
                .rsplit_once('v')
                .map_or(printed.as_str(), |(_, v)| v)
                .to_owned(),
        }),
        _ => Err(format!(
            "{} is {:?}, but JetStream's `sync_interval: always` needs nats-server {}.{} \
             or newer: run `{INSTALL_SCRIPT}`, or set {BINARY_ENV} to a newer one",
            path.display(),
            printed,
            MIN_VERSION.0,
            MIN_VERSION.1
        )),
    }
}

/// The install script's binary in the build directory this benchmark runs
/// from: the executable lives at `<target>/<profile>/deps/`, so one of its
/// ancestors is the build directory, whatever `CARGO_TARGET_DIR` was.
fn installed() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(INSTALLED_PATH))
        .find(|candidate| candidate.exists())
}

/// `nats-server: v2.15.1` → (2, 15, 1).
fn parse_version(printed: &str) -> Option<(u32, u32, u32)> {
    let (_, version) = printed.rsplit_once('v')?;
    let mut parts = version.split(['.', '-', '+']).map(str::parse::<u32>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().and_then(Result::ok).unwrap_or(0),
    ))
}

/// Which servers to start.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// How many servers; more than one forms a cluster over routes on
    /// loopback.
    pub servers: usize,
    /// JetStream on a file store that syncs after every write.
    pub jetstream: bool,
}

/// Running servers, killed when dropped.
pub struct Servers {
    children: Vec<Child>,
    /// `127.0.0.1:port` for clients, by server.
    addrs: Vec<String>,
    /// `127.0.0.1:port` of the HTTP monitoring endpoint, by server.
    monitors: Vec<String>,
    /// Server names (`s0`, `s1`, ...), as JetStream reports leaders.
    names: Vec<String>,
    /// Configurations, logs and JetStream stores; removed after the
    /// processes are killed (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

/// A quoted string in nats-server's configuration syntax.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Servers {
    /// Generates a configuration per server and starts them; they may
    /// still be starting when this returns (see [`Servers::connect`]).
    pub fn start(binary: &Binary, layout: Layout) -> Result<Servers, String> {
        let dir = tempfile::Builder::new()
            .prefix("scout-bench-nats-")
            .tempdir()
            .map_err(|err| format!("temporary directory: {err}"))?;
        let mut client_ports = Vec::new();
        let mut route_ports = Vec::new();
        let mut monitor_ports = Vec::new();
        for _ in 0..layout.servers {
            client_ports.push(free_port()?);
            route_ports.push(free_port()?);
            monitor_ports.push(free_port()?);
        }
        let mut servers = Servers {
            children: Vec::new(),
            addrs: client_ports
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect(),
            monitors: monitor_ports
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect(),
            names: (0..layout.servers).map(|n| format!("s{n}")).collect(),
            dir,
        };
        for n in 0..layout.servers {
            let name = &servers.names[n];
            let mut config = String::new();
            let _ = writeln!(config, "server_name: {name}");
            let _ = writeln!(config, "listen: \"127.0.0.1:{}\"", client_ports[n]);
            let _ = writeln!(config, "http: \"127.0.0.1:{}\"", monitor_ports[n]);
            if layout.jetstream {
                let store = servers.dir.path().join(format!("{name}-store"));
                let _ = writeln!(config, "jetstream {{");
                let _ = writeln!(config, "  store_dir: {}", quoted(&store));
                let _ = writeln!(config, "  sync_interval: always");
                let _ = writeln!(config, "}}");
            }
            if layout.servers > 1 {
                let routes: Vec<String> = (0..layout.servers)
                    .filter(|other| *other != n)
                    .map(|other| format!("\"nats://127.0.0.1:{}\"", route_ports[other]))
                    .collect();
                let _ = writeln!(config, "cluster {{");
                let _ = writeln!(config, "  name: {CLUSTER_NAME}");
                let _ = writeln!(config, "  listen: \"127.0.0.1:{}\"", route_ports[n]);
                let _ = writeln!(config, "  routes: [{}]", routes.join(", "));
                let _ = writeln!(config, "}}");
            }
            let config_path = servers.dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_path, config)
                .map_err(|err| format!("{}: {err}", config_path.display()))?;
            let log = std::fs::File::create(servers.log_path(n))
                .map_err(|err| format!("server log: {err}"))?;
            let log_err = log.try_clone().map_err(|err| err.to_string())?;
            let child = Command::new(&binary.path)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|err| format!("cannot start {}: {err}", binary.path.display()))?;
            servers.children.push(child);
        }
        Ok(servers)
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.names[n]))
    }

    /// The end of server `n`'s log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read(self.log_path(n)).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(LOG_TAIL_BYTES)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// Server names, as JetStream names stream leaders.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether server `n` says it syncs every JetStream write (`/varz`):
    /// proof that the generated configuration took effect, since a server
    /// that ignored it would sync every two minutes and look faster.
    pub fn syncs_always(&self, n: usize) -> Result<bool, String> {
        use std::io::{Read, Write};
        let addr = &self.monitors[n];
        let failed = |err: std::io::Error| format!("{addr}/varz: {err}");
        let mut stream = std::net::TcpStream::connect(addr).map_err(failed)?;
        stream
            .set_read_timeout(Some(READY_TIMEOUT))
            .map_err(failed)?;
        stream
            .write_all(b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(failed)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(failed)?;
        let response = String::from_utf8_lossy(&response);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or_else(|| format!("{addr}/varz: no body"))?;
        let varz: serde_json::Value =
            serde_json::from_str(body).map_err(|err| format!("{addr}/varz: {err}"))?;
        Ok(varz["jetstream"]["config"]["sync_always"] == serde_json::Value::Bool(true))
    }

    /// Connects to server `n`, waiting (bounded) while it starts; an error
    /// if it exits or never listens, quoting its log.
    pub async fn connect(&mut self, n: usize) -> Result<async_nats::Client, String> {
        let addr = self.addrs[n].clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.children[n].try_wait() {
                return Err(format!(
                    "nats-server {} exited ({status}):\n{}",
                    self.names[n],
                    self.log_tail(n)
                ));
            }
            match async_nats::connect(&addr).await {
                Ok(client) => return Ok(client),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!(
                        "nats-server {} at {addr}: {err}\n{}",
                        self.names[n],
                        self.log_tail(n)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
