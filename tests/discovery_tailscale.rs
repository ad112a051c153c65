//! The Tailscale source against a stand-in tailscaled: a real HTTP server
//! on a unix socket serving the shared status fixture and variants of it,
//! and a `tailscale` stand-in on PATH printing them. The client is checked
//! in-process; brokers run as real processes (their tailnet peers point at
//! loopback, so no packet leaves the machine): peers feed the address book
//! and leave it when they go offline, bad input is reported and skipped,
//! two brokers admitted by their tailnet identity form one mesh, and
//! `scout doctor` explains what it found.

mod common;
mod discovery_support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{BrokerProcess, Node, wait_until};
use discovery_support::{
    FakeTailscaled, cli_stand_in, edit_settings, fixture, fixture_bytes, free_udp_port, only_peers,
    whois_of, with_peer_at,
};
use scout::daemon::discovery::tailscale::tailnet_addresses;
use scout_net::discovery::http::get_unix;
use scout_net::discovery::tailscale::{BackendState, TailscaleClient, Via};
use serde_json::{Value, json};

fn client(socket: PathBuf, cli: PathBuf) -> TailscaleClient {
    TailscaleClient {
        socket,
        cli,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn the_fixture_over_the_local_api_feeds_online_peers() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTailscaled::start(&dir.path().join("tailscaled.sock"), &fixture());
    // The untouched bytes of the shared fixture, as tailscaled would send them.
    fake.set_status_bytes(&fixture_bytes());
    let client = client(fake.socket.clone(), dir.path().join("no-cli"));
    let (status, via) = client.status().await.unwrap();
    assert_eq!(via, Via::LocalApi);
    assert_eq!(status.backend_state, BackendState::Running);
    assert_eq!(status.peers.len(), 3);

    let addresses = tailnet_addresses(&status, &[], 3101, false);
    let shown: Vec<(String, &str)> = addresses
        .iter()
        .map(|(addr, id)| (addr.to_string(), id.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("100.66.5.5:3101".to_owned(), "nPh0ne11CNTRL"),
            ("100.88.12.34:3101".to_owned(), "nDeskT0p11CNTRL"),
        ],
        "online peers only, keyed by stable id; ci-runner is offline"
    );
    let tagged = tailnet_addresses(&status, &["tag:mesh-broker".into()], 3101, true);
    assert_eq!(tagged.len(), 2, "devbox's IPv4 and IPv6 address");
    assert!(tagged.values().all(|id| id == "nDeskT0p11CNTRL"));

    // The stand-in holds to tailscaled's guards, which the client passes.
    let wrong_host = get_unix(
        &fake.socket,
        "localhost",
        "/localapi/v0/status",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(wrong_host.status, 403);
    assert_eq!(fake.requests(), (1, 1));
}

#[tokio::test]
async fn bad_status_documents_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTailscaled::start(&dir.path().join("tailscaled.sock"), &fixture());
    let client = client(fake.socket.clone(), dir.path().join("no-cli"));

    let mut tailnet_of_one = fixture();
    tailnet_of_one["Peer"] = Value::Null;
    fake.set_status(&tailnet_of_one);
    let (status, _) = client.status().await.unwrap();
    assert!(status.peers.is_empty());

    let mut needs_login = fixture();
    needs_login["BackendState"] = json!("NeedsLogin");
    needs_login["AuthURL"] = json!("https://login.example/a/1234");
    fake.set_status(&needs_login);
    let (status, _) = client.status().await.unwrap();
    assert_eq!(status.backend_state, BackendState::NeedsLogin);
    assert!(tailnet_addresses(&status, &[], 3101, false).is_empty());

    let mut odd = fixture();
    odd["SomethingNew"] = json!({"nested": [1, 2]});
    odd.as_object_mut().unwrap().remove("User");
    for peer in odd["Peer"].as_object_mut().unwrap().values_mut() {
        peer.as_object_mut().unwrap().remove("Tags");
        peer["Capabilities2"] = json!(true);
    }
    odd["Peer"]["nodekey:broken"] = json!({"HostName": "no id at all"});
    fake.set_status(&odd);
    let (status, _) = client.status().await.unwrap();
    assert_eq!(status.peers.len(), 3);
    assert_eq!(status.n_skipped, 1, "{:?}", status.skipped);

    fake.set_status_bytes(b"<html>tailscaled is upgrading</html>");
    let err = client.status().await.unwrap_err();
    assert_eq!(err.code(), "TAILSCALE_BAD_RESPONSE");
}

#[tokio::test]
async fn a_refusing_socket_falls_back_to_the_cli_and_a_missing_one_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on any more: connect is refused.
    let socket = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let err = client(socket.clone(), dir.path().join("no-cli"))
        .status()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TAILSCALE_SOCKET_REFUSED", "{err}");

    let stand_in = cli_stand_in(&dir.path().join("bin"), &fixture(), None);
    let (status, via) = client(socket, stand_in.clone()).status().await.unwrap();
    assert_eq!(via, Via::Cli);
    assert_eq!(status.peers.len(), 3);
    let err = client(dir.path().join("no.sock"), stand_in)
        .whois("100.88.12.34:41641".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TAILSCALE_UNKNOWN_ADDRESS", "{err}");

    let err = client(dir.path().join("missing.sock"), dir.path().join("no-cli"))
        .status()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TAILSCALE_NOT_FOUND");
}

/// A node set up for the Tailscale source only, on `socket`.
fn tailnet_node(name: &str, socket: &std::path::Path, edit: impl FnOnce(&mut Value)) -> Node {
    let node = Node::setup(name, &[]);
    edit_settings(&node.sandbox.home(), |settings| {
        settings["discovery"]["tailscale"]["socket"] = json!(socket);
        settings["discovery"]["tailscale"]["poll_interval_ms"] = json!(200);
        edit(settings);
    });
    node
}

fn start_with_tailscale(node: &mut Node, path_dir: Option<&std::path::Path>) {
    let mut command = node.sandbox.scout();
    command.env("SCOUT_DISCOVERY", "tailscale");
    if let Some(dir) = path_dir {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", dir.display()));
    }
    node.broker = Some(BrokerProcess::start_command(command));
}

/// The book's addresses (with sources) as `scout peers` serves them.
fn book(node: &Node) -> Vec<(String, Vec<String>)> {
    node.get("/v1/peers")["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let sources = entry["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|source| source.as_str().unwrap().to_owned())
                .collect();
            (entry["addr"].as_str().unwrap().to_owned(), sources)
        })
        .collect()
}

fn has_tailscale_address(node: &Node, addr: &str) -> bool {
    book(node)
        .iter()
        .any(|(known, sources)| known == addr && sources.iter().any(|s| s == "tailscale"))
}

#[test]
fn tailnet_peers_feed_the_book_and_leave_it_when_they_go_offline() {
    let dir = tempfile::tempdir().unwrap();
    // devbox's broker "lives" at a loopback address with nothing on it.
    let devbox_port = free_udp_port();
    let online = with_peer_at(fixture(), "devbox", "127.0.0.2", true);
    let fake = FakeTailscaled::start(
        &dir.path().join("tailscaled.sock"),
        &only_peers(online.clone(), &["devbox", "ci-runner"]),
    );
    let mut node = tailnet_node("laptop", &fake.socket, |settings| {
        settings["discovery"]["tailscale"]["mesh_port"] = json!(devbox_port);
        settings["discovery"]["tailscale"]["tags"] = json!(["tag:mesh-broker"]);
    });
    start_with_tailscale(&mut node, None);
    let devbox = format!("127.0.0.2:{devbox_port}");
    wait_until("devbox in the address book", || {
        has_tailscale_address(&node, &devbox).then_some(())
    });
    assert!(
        !book(&node)
            .iter()
            .any(|(addr, _)| addr.starts_with("100.77.1.9")),
        "ci-runner is offline"
    );

    fake.set_status(&only_peers(
        with_peer_at(online.clone(), "devbox", "127.0.0.2", false),
        &["devbox", "ci-runner"],
    ));
    wait_until("devbox to leave the address book", || {
        (!has_tailscale_address(&node, &devbox)).then_some(())
    });

    // tailscaled logged out: reported, nothing fed, the broker keeps serving.
    let mut needs_login = online;
    needs_login["BackendState"] = json!("NeedsLogin");
    fake.set_status(&needs_login);
    wait_until("the backend state to be logged", || {
        node.broker()
            .stderr_line_matching("tailscale backend is NeedsLogin")
            .map(|_| ())
    });
    assert_eq!(node.get("/health")["status"], "ok");
}

#[test]
fn the_cli_stand_in_on_path_is_used_when_there_is_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let status = with_peer_at(fixture(), "devbox", "127.0.0.3", true);
    cli_stand_in(&dir.path().join("bin"), &status, None);
    let mut node = tailnet_node("laptop", &dir.path().join("no-such.sock"), |settings| {
        settings["discovery"]["tailscale"]["mesh_port"] = json!(port);
    });
    start_with_tailscale(&mut node, Some(&dir.path().join("bin")));
    let devbox = format!("127.0.0.3:{port}");
    wait_until("devbox from the CLI in the address book", || {
        has_tailscale_address(&node, &devbox).then_some(())
    });
}

#[test]
fn doctor_explains_each_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut needs_login = fixture();
    needs_login["BackendState"] = json!("NeedsLogin");
    let fake = FakeTailscaled::start(&dir.path().join("tailscaled.sock"), &needs_login);
    let node = tailnet_node("laptop", &fake.socket, |settings| {
        // Fails to resolve without asking any DNS server (an empty label).
        settings["seeds"] = json!(["127.0.0.1:3101", "unresolvable..invalid:3101"]);
        settings["discovery"]["tailscale"]["admit"]["tags"] = json!(["tag:mesh-broker"]);
    });
    let doctor = |discovery: &str| {
        let run = node
            .sandbox
            .scout()
            .env("SCOUT_DISCOVERY", discovery)
            .args(["--json", "doctor"])
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&run.stdout).unwrap();
        move |name: &str| -> (String, String, String) {
            let check = json["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|check| check["name"] == name)
                .unwrap_or_else(|| panic!("no check {name}: {json}"))
                .clone();
            (
                check["status"].as_str().unwrap().to_owned(),
                check["message"].as_str().unwrap().to_owned(),
                check["hint"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let check = doctor("tailscale");
    let (status, message, hint) = check("tailscale");
    assert_eq!(status, "warn");
    assert!(message.contains("BackendState: NeedsLogin"), "{message}");
    assert!(hint.contains("tailscale up"), "{hint}");
    let (status, message, hint) = check("seeds");
    assert_eq!(status, "warn");
    assert!(message.contains("unresolvable..invalid:3101"), "{message}");
    assert!(message.contains("127.0.0.1:3101 →"), "{message}");
    assert!(!hint.is_empty());
    let (status, message, _) = check("mdns");
    assert_eq!(status, "ok");
    assert!(message.contains("off"), "{message}");
    assert_eq!(check("tailscale-admit").0, "ok");

    fake.set_status(&fixture());
    let (status, message, _) = doctor("tailscale")("tailscale");
    assert_eq!(status, "ok");
    assert!(message.contains("3 peers seen, 2 online"), "{message}");

    drop(fake);
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("tailscaled.sock")).unwrap());
    let (status, message, hint) = doctor("tailscale")("tailscale");
    assert_eq!(status, "warn");
    assert!(message.contains("refused"), "{message}");
    assert!(hint.contains("start tailscaled"), "{hint}");
}

/// Two brokers on one tailnet, each alone in the mesh it founded, with the
/// admit opt-in for `tag:mesh-broker`: one admits the other by its tailnet
/// identity, they form one mesh, connect and share agents. A third, whose
/// tailnet identity is untagged, is refused and stays outside.
#[test]
fn brokers_admitted_by_tailnet_identity_form_one_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha_port, beta_port, gamma_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    // Each broker's tailscaled lists the other at loopback, tagged.
    let tagged_peer = |host: &str| {
        only_peers(
            with_peer_at(fixture(), "devbox", "127.0.0.1", true),
            &["devbox"],
        )
        .to_string()
        .replace("\"devbox\"", &format!("\"{host}\""))
    };
    let alpha_status: Value = serde_json::from_str(&tagged_peer("beta-box")).unwrap();
    let beta_status: Value = serde_json::from_str(&tagged_peer("alpha-box")).unwrap();
    let alpha_tailscaled = FakeTailscaled::start(&dir.path().join("alpha.sock"), &alpha_status);
    let beta_tailscaled = FakeTailscaled::start(&dir.path().join("beta.sock"), &beta_status);
    alpha_tailscaled.set_whois(
        loopback,
        whois_of("nBeta", "beta-box", &["tag:mesh-broker"], "tagged-devices"),
    );
    beta_tailscaled.set_whois(
        loopback,
        whois_of(
            "nAlpha",
            "alpha-box",
            &["tag:mesh-broker"],
            "tagged-devices",
        ),
    );
    let admit = |settings: &mut Value, own: u16, peer: u16| {
        settings["mesh_port"] = json!(own);
        settings["discovery"]["tailscale"]["mesh_port"] = json!(peer);
        settings["discovery"]["tailscale"]["admit"]["tags"] = json!(["tag:mesh-broker"]);
    };
    let mut alpha = tailnet_node("alpha", &alpha_tailscaled.socket, |s| {
        admit(s, alpha_port, beta_port)
    });
    let mut beta = tailnet_node("beta", &beta_tailscaled.socket, |s| {
        admit(s, beta_port, alpha_port)
    });
    start_with_tailscale(&mut alpha, None);
    start_with_tailscale(&mut beta, None);
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        wait_until(&format!("{} to connect to {peer}", node.name), || {
            (node.peers_in("connected") == [peer]).then_some(())
        });
    }
    let mesh_id = |node: &Node| node.get("/v1/mesh")["mesh_id"].as_str().unwrap().to_owned();
    assert_eq!(mesh_id(&alpha), mesh_id(&beta));
    let admitted = "admitted a broker by its tailnet identity";
    assert!(
        alpha.broker().stderr_line_matching(admitted).is_some()
            || beta.broker().stderr_line_matching(admitted).is_some(),
        "one admitted the other by tailnet identity"
    );

    beta.add_bash_agent("fabric");
    alpha.wait_for_instance("@fabric@beta#main");

    // gamma is on the tailnet too, but its node is untagged: whoever it
    // asks refuses it, and it stays alone.
    let gamma_status: Value = serde_json::from_str(&tagged_peer("alpha-box")).unwrap();
    let gamma_tailscaled = FakeTailscaled::start(&dir.path().join("gamma.sock"), &gamma_status);
    gamma_tailscaled.set_whois(
        loopback,
        whois_of(
            "nAlpha",
            "alpha-box",
            &["tag:mesh-broker"],
            "tagged-devices",
        ),
    );
    alpha_tailscaled.set_whois_any(whois_of("nGamma", "gamma-box", &[], "mallory@example.com"));
    alpha_tailscaled.set_whois(
        loopback,
        whois_of("nGamma", "gamma-box", &[], "mallory@example.com"),
    );
    let mut gamma = tailnet_node("gamma", &gamma_tailscaled.socket, |s| {
        admit(s, gamma_port, alpha_port)
    });
    start_with_tailscale(&mut gamma, None);
    wait_until("alpha to refuse gamma's tailnet join", || {
        alpha
            .broker()
            .stderr_line_matching("TAILNET_NOT_ADMITTED")
            .map(|_| ())
    });
    assert!(gamma.peers_in("connected").is_empty());
    assert_ne!(mesh_id(&gamma), mesh_id(&alpha));
    assert_eq!(alpha.peers_in("connected"), ["beta"]);
}
