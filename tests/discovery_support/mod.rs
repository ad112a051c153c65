//! Shared by the discovery tests and benchmark: a stand-in for tailscaled's
//! LocalAPI (a real HTTP server on a unix socket, answering `status` and
//! `whois` the way tailscaled does: it wants `Host: local-tailscaled.sock`,
//! refuses requests that carry `Origin`, and streams the status chunked),
//! the shared status fixture and variants of it, and network namespaces
//! that clean up after themselves.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// The shared fixture, as parsed JSON.
pub fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tailscale/status.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "the shared fixture {} is needed beside the repository: {err}",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// The fixture's bytes, untouched.
pub fn fixture_bytes() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tailscale/status.json");
    std::fs::read(path).expect("fixture")
}

/// A variant of the fixture whose peer `host_name` lives at `ip` (and only
/// there), online or not. Tests point peers at loopback so that no packet
/// leaves the machine.
pub fn with_peer_at(mut status: Value, host_name: &str, ip: &str, online: bool) -> Value {
    for peer in status["Peer"].as_object_mut().expect("peers").values_mut() {
        if peer["HostName"] == host_name {
            peer["TailscaleIPs"] = json!([ip]);
            peer["Online"] = json!(online);
        }
    }
    status
}

/// A variant with only the peers named.
pub fn only_peers(mut status: Value, host_names: &[&str]) -> Value {
    status["Peer"]
        .as_object_mut()
        .expect("peers")
        .retain(|_, peer| host_names.iter().any(|name| peer["HostName"] == *name));
    status
}

/// A whois answer (`apitype.WhoIsResponse`) for a node.
pub fn whois_of(stable_id: &str, host_name: &str, tags: &[&str], login: &str) -> Value {
    json!({
        "Node": {
            "ID": 1,
            "StableID": stable_id,
            "Name": format!("{host_name}.tail1234.ts.net."),
            "User": 2,
            "Key": "nodekey:00",
            "Addresses": ["100.64.0.9/32"],
            "Hostinfo": {"Hostname": host_name, "OS": "linux"},
            "Tags": tags,
            "Online": true,
            "CapMap": {}
        },
        "UserProfile": {"ID": 2, "LoginName": login, "DisplayName": login},
        "CapMap": {}
    })
}

#[derive(Default)]
struct FakeState {
    status: Vec<u8>,
    whois: HashMap<IpAddr, Value>,
    whois_any: Option<Value>,
    requests: usize,
    refused: usize,
}

/// A stand-in tailscaled serving its LocalAPI on a unix socket.
pub struct FakeTailscaled {
    pub socket: PathBuf,
    state: Arc<Mutex<FakeState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeTailscaled {
    /// Serves `status` on a new socket at `socket`.
    pub fn start(socket: &Path, status: &Value) -> FakeTailscaled {
        let state = Arc::new(Mutex::new(FakeState {
            status: serde_json::to_vec_pretty(status).expect("json"),
            ..FakeState::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = socket.to_owned();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).expect("bind the socket");
                ready_tx.send(()).expect("ready");
                let router = axum::Router::new()
                    .route("/localapi/v0/status", get(status_route))
                    .route("/localapi/v0/whois", get(whois_route))
                    .with_state(served);
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready_rx.recv().expect("fake tailscaled started");
        FakeTailscaled {
            socket: socket.to_owned(),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Serves another status from now on.
    pub fn set_status(&self, status: &Value) {
        self.state.lock().expect("state").status = serde_json::to_vec_pretty(status).expect("json");
    }

    /// Serves raw bytes as the status (malformed documents).
    pub fn set_status_bytes(&self, bytes: &[u8]) {
        self.state.lock().expect("state").status = bytes.to_vec();
    }

    /// Answers whois for `ip` with `answer`.
    pub fn set_whois(&self, ip: IpAddr, answer: Value) {
        self.state.lock().expect("state").whois.insert(ip, answer);
    }

    /// Answers whois for any address with `answer`.
    pub fn set_whois_any(&self, answer: Value) {
        self.state.lock().expect("state").whois_any = Some(answer);
    }

    /// Requests answered so far, and requests refused (bad Host, Origin).
    pub fn requests(&self) -> (usize, usize) {
        let state = self.state.lock().expect("state");
        (state.requests, state.refused)
    }
}

impl Drop for FakeTailscaled {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

type Shared = Arc<Mutex<FakeState>>;

/// tailscaled's own guard: the LocalAPI answers only its own Host and
/// never a browser (a request with `Origin`).
fn refuse(headers: &HeaderMap, state: &Shared) -> Option<Response> {
    let host_ok = headers
        .get("host")
        .is_some_and(|host| host == "local-tailscaled.sock");
    if !host_ok || headers.contains_key("origin") {
        state.lock().expect("state").refused += 1;
        return Some((StatusCode::FORBIDDEN, "invalid request\n").into_response());
    }
    state.lock().expect("state").requests += 1;
    None
}

async fn status_route(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&headers, &state) {
        return refused;
    }
    let body = state.lock().expect("state").status.clone();
    // Streamed in two parts, so the answer is chunked like Go's.
    let half = body.len() / 2;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(body[..half].to_vec()), Ok(body[half..].to_vec())];
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::iter(parts)))
        .expect("response")
}

async fn whois_route(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refuse(&headers, &state) {
        return refused;
    }
    let addr = query.get("addr").cloned().unwrap_or_default();
    let ip: Option<IpAddr> = addr
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.ip())
        .ok()
        .or_else(|| addr.parse().ok());
    let state = state.lock().expect("state");
    let answer = ip
        .and_then(|ip| state.whois.get(&ip).cloned())
        .or_else(|| state.whois_any.clone());
    match answer {
        Some(answer) => axum::Json(answer).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no match for IP:port {addr}\n"),
        )
            .into_response(),
    }
}

/// A `tailscale` stand-in in `dir`: a shell script that prints `status`
/// for `status --json` and `whois` for `whois --json IP`.
pub fn cli_stand_in(dir: &Path, status: &Value, whois: Option<&Value>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).expect("dir");
    let status_path = dir.join("status.json");
    std::fs::write(
        &status_path,
        serde_json::to_vec_pretty(status).expect("json"),
    )
    .expect("write");
    let whois_path = dir.join("whois.json");
    if let Some(whois) = whois {
        std::fs::write(&whois_path, serde_json::to_vec(whois).expect("json")).expect("write");
    }
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  status) cat '{}' ;;\n  whois) if [ -f '{}' ]; then cat '{}'; else echo 'no match' >&2; exit 1; fi ;;\n  *) echo \"unknown command $1\" >&2; exit 2 ;;\nesac\n",
        status_path.display(),
        whois_path.display(),
        whois_path.display()
    );
    let program = dir.join("tailscale");
    std::fs::write(&program, script).expect("write script");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    program
}

/// A UDP port free right now on every address.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Rewrites a home's settings.json with `edit`.
pub fn edit_settings(home: &Path, edit: impl FnOnce(&mut Value)) {
    let path = home.join("settings.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("settings")).expect("json");
    edit(&mut settings);
    std::fs::write(&path, serde_json::to_vec_pretty(&settings).expect("json")).expect("write");
}

/// Why network namespaces cannot be made here, if they cannot.
pub fn namespaces_unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("not root: creating network namespaces needs CAP_SYS_ADMIN".into());
    }
    let probe = format!("scout-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(err) => Some(format!("`ip` from iproute2 is not runnable: {err}")),
        Ok(output) if !output.status.success() => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
    }
}

fn nix_is_root() -> bool {
    // The effective uid, read from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Network namespaces joined by a bridge in a hub namespace of their own,
/// so nothing of the host's network is touched. Removed on drop, failure
/// included (deleting a namespace deletes its interfaces).
pub struct Lan {
    pub hub: String,
    pub hosts: Vec<String>,
}

impl Lan {
    /// `n_hosts` namespaces named `{prefix}-{pid}-{idx}` on one bridge, each
    /// with loopback up and `10.231.0.{idx+1}/24` on its `lan0`.
    pub fn new(prefix: &str, n_hosts: usize) -> Lan {
        let pid = std::process::id();
        let hub = format!("{prefix}-{pid}-hub");
        let hosts: Vec<String> = (0..n_hosts)
            .map(|idx| format!("{prefix}-{pid}-{idx}"))
            .collect();
        let lan = Lan {
            hub: hub.clone(),
            hosts: hosts.clone(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        for (idx, host) in hosts.iter().enumerate() {
            ip(&["netns", "add", host]);
            let port = format!("p{idx}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "lan0", "netns",
                host,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &port, "up"]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
            ip(&["-n", host, "link", "set", "lan0", "up"]);
            lan.set_address(idx, &Lan::address(idx, 0));
        }
        lan
    }

    /// The IPv4 address of host `idx` in addressing round `round`.
    pub fn address(idx: usize, round: usize) -> String {
        format!("10.231.0.{}", 1 + idx + 10 * round)
    }

    /// Replaces host `idx`'s LAN address.
    pub fn set_address(&self, idx: usize, address: &str) {
        ip(&[
            "-n",
            &self.hosts[idx],
            "addr",
            "flush",
            "dev",
            "lan0",
            "scope",
            "global",
        ]);
        ip(&[
            "-n",
            &self.hosts[idx],
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "lan0",
        ]);
    }

    /// A command run inside host `idx`'s namespace.
    pub fn command(&self, idx: usize, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[idx]])
            .arg(program);
        command
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", host]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .output();
    }
}

/// A broker home inside a namespace of a [`Lan`], run with mDNS discovery
/// only.
pub struct NsBroker {
    /// The namespace's index in the LAN.
    pub idx: usize,
    /// The broker's home.
    pub home: PathBuf,
    /// Its working directory (and HOME).
    pub dir: PathBuf,
    /// The running broker, once started.
    pub broker: Option<crate::common::BrokerProcess>,
}

impl NsBroker {
    /// `scout setup` of a broker named `name` in namespace `idx` (mesh port
    /// 3101 in every namespace), under `root`.
    pub fn setup(lan: &Lan, root: &Path, idx: usize, name: &str) -> NsBroker {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let node = NsBroker {
            idx,
            home: dir.join("home"),
            dir,
            broker: None,
        };
        let run = node.run(
            lan,
            &[
                "setup",
                "--no-service",
                "--node-name",
                name,
                "--http-port",
                "0",
                "--mesh-port",
                "3101",
            ],
        );
        assert_eq!(run.0, 0, "setup {name}: {}", run.2);
        node
    }

    /// A `scout` command of this home, run inside its namespace.
    pub fn command(&self, lan: &Lan) -> Command {
        let mut command = lan.command(self.idx, Path::new(env!("CARGO_BIN_EXE_scout")));
        command
            .arg("--home")
            .arg(&self.home)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env_remove("SCOUT_HOME")
            .env_remove("SCOUT_SEEDS")
            .env_remove("PORT")
            .env_remove("RUST_LOG")
            .env("SCOUT_DISCOVERY", "mdns")
            .env("LOG_LEVEL", "info")
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs `scout args…`: exit code, stdout, stderr.
    pub fn run(&self, lan: &Lan, args: &[&str]) -> (i32, String, String) {
        let output = self.command(lan).args(args).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `scout --json args…`, which must succeed, and parses its output.
    pub fn json(&self, lan: &Lan, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = self.run(lan, &full);
        assert_eq!(code, 0, "scout {}: {stderr}", args.join(" "));
        serde_json::from_str(&stdout).unwrap()
    }

    /// Starts the broker.
    pub fn start(&mut self, lan: &Lan) {
        self.broker = Some(crate::common::BrokerProcess::start_command(
            self.command(lan),
        ));
    }

    /// Stops the broker with SIGTERM; it must exit cleanly.
    pub fn stop(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            assert_eq!(broker.stop_with(15), 0, "{}", broker.stderr());
        }
    }

    /// The running broker.
    pub fn broker(&self) -> &crate::common::BrokerProcess {
        self.broker.as_ref().expect("running")
    }
}
