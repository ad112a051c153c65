//! Cases around the home and the CLI: an impostor on the broker's port, a
//! home owned by someone else or writable by everyone, malformed config
//! files, and hostile names given on the command line.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::Node;
use crate::http_cases::{Target, bad_names};
use crate::procs::{UpOutcome, refused_cleanly, run_scout, try_up};
use crate::tally::{Check, Tally, ensure};

/// How long the impostor waits for a request head before giving up on a
/// connection.
const IMPOSTOR_READ_BOUND: Duration = Duration::from_secs(5);

/// A plain HTTP server that answers every request like a broker's
/// `/health`, and records every request it receives.
struct Impostor {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impostor {
    fn start(health: Value) -> Impostor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the impostor");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let request = answer_like_a_broker(stream, &health);
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(request);
                }
            })
        };
        Impostor {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // One connection wakes the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_like_a_broker(mut stream: TcpStream, health: &Value) -> String {
    let _ = stream.set_read_timeout(Some(IMPOSTOR_READ_BOUND));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while !bytes.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
        if bytes.len() > 1024 * 1024 {
            break;
        }
    }
    let body = health.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    edit(&mut value);
    std::fs::write(path, serde_json::to_string_pretty(&value).expect("json")).expect("write");
}

/// An impostor on the port the home names: commands fail with
/// `BROKER_MISMATCH` and the token never leaves the machine's CLI.
pub fn impostor(tally: &Tally) {
    let node = Node::setup("victim", &[]);
    let home = node.sandbox.home();
    let token = node.sandbox.token();
    let node_id = scout::identity::load_node_key(&home.join("node.key"))
        .expect("node key")
        .node_id()
        .to_owned();
    // The impostor knows everything `/health` reveals about the real broker.
    let impostor = Impostor::start(json!({
        "status": "ok", "node": "victim", "nodeId": node_id,
        "version": env!("CARGO_PKG_VERSION"), "uptimeMs": 1000, "agents": 0,
    }));
    edit_json(&home.join("settings.json"), |settings| {
        settings["http_port"] = json!(impostor.port);
    });
    std::fs::write(
        home.join("broker.json"),
        json!({ "pid": std::process::id(), "http_addr": format!("127.0.0.1:{}", impostor.port) })
            .to_string(),
    )
    .expect("write broker.json");
    let commands: [&[&str]; 6] = [
        &["agents", "list"],
        &["send", "@shell", "hello"],
        &["peers"],
        &["mesh", "invite"],
        &["flights"],
        &["conversations", "list"],
    ];
    for args in commands {
        tally.case(format!("impostor: `scout {}`", args.join(" ")), || {
            let before = impostor.requests().len();
            let run = run_scout(&home, node.sandbox.path(), args)?;
            let leaked: Vec<String> = impostor.requests()[before..]
                .iter()
                .filter(|request| {
                    request.to_ascii_lowercase().contains("authorization")
                        || request.contains(&token)
                })
                .cloned()
                .collect();
            ensure(leaked.is_empty(), || {
                format!("the impostor received the token: {:?}", leaked.first())
            })?;
            ensure(
                run.code != 0 && run.stderr.contains("BROKER_MISMATCH"),
                || format!("exit {}: {}{}", run.code, run.stdout, run.stderr),
            )
        });
    }
    tally.case("impostor: `scout doctor` fails the broker check", || {
        let before = impostor.requests().len();
        let run = run_scout(&home, node.sandbox.path(), &["doctor"])?;
        let leaked = impostor.requests()[before..].iter().any(|request| {
            request.to_ascii_lowercase().contains("authorization") || request.contains(&token)
        });
        ensure(!leaked, || "the impostor received the token".to_owned())?;
        ensure(
            run.code == 1 && run.stdout.contains("BROKER_MISMATCH"),
            || format!("exit {}: {}{}", run.code, run.stdout, run.stderr),
        )
    });
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn chown_tree(path: &Path, uid: u32) -> Result<(), String> {
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .map_err(|err| format!("chown: {err}"))?;
    ensure(status.success(), || format!("chown exited {status}"))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just created is this process's user.
    let probe = std::env::temp_dir().join(format!("scout-hostile-uid-{}", std::process::id()));
    let uid = std::fs::write(&probe, b"")
        .and_then(|()| std::fs::metadata(&probe))
        .map(|meta| meta.uid())
        .unwrap_or(u32::MAX);
    let _ = std::fs::remove_file(&probe);
    uid == 0
}

fn refuses_unsafe_home(home: &Path, cwd: &Path) -> Check {
    match try_up(home, cwd)? {
        UpOutcome::Started(ready) => Err(format!("the broker started: {ready}")),
        UpOutcome::Exited(run) => ensure(
            run.code != 0 && run.stderr.contains("UNSAFE_HOME") && !run.stderr.contains("panicked"),
            || format!("exit {}: {}", run.code, run.stderr),
        ),
    }
}

/// Homes owned by another user or writable by others: `up` refuses with
/// `UNSAFE_HOME`, and `doctor` fails naming it.
pub fn unsafe_homes(tally: &Tally) {
    let base = Node::setup("unsafe", &[]);
    let cwd = base.sandbox.path().to_owned();
    let copy = |label: &str| -> PathBuf {
        let home = cwd.join(label);
        copy_dir(&base.sandbox.home(), &home).expect("copy the home");
        // Only the property under test may make the copy unsafe, whatever
        // the umask of the machine running the battery.
        set_mode(&home, 0o700).expect("chmod the copy");
        home
    };
    const NOBODY: u32 = 65_534;
    if is_root() {
        let home = copy("owned-by-nobody");
        tally.case("unsafe home: owned by another user, `scout up`", || {
            chown_tree(&home, NOBODY)?;
            refuses_unsafe_home(&home, &cwd)
        });
        tally.case("unsafe home: owned by another user, `scout doctor`", || {
            let run = run_scout(&home, &cwd, &["doctor"])?;
            ensure(
                run.code != 0 && format!("{}{}", run.stdout, run.stderr).contains("UNSAFE_HOME"),
                || format!("exit {}: {}{}", run.code, run.stdout, run.stderr),
            )
        });
        let home = copy("token-owned-by-nobody");
        tally.case(
            "unsafe home: its token owned by another user, `scout up`",
            || {
                chown_tree(&home.join("token"), NOBODY)?;
                refuses_unsafe_home(&home, &cwd)
            },
        );
    } else {
        let reason = "not running as root: cannot give a home to another user";
        println!("skipping the foreign-owner home cases: {reason}");
        tally.skip("unsafe home: owned by another user, `scout up`", reason);
        tally.skip("unsafe home: owned by another user, `scout doctor`", reason);
        tally.skip(
            "unsafe home: its token owned by another user, `scout up`",
            reason,
        );
    }
    let modes: [(&str, Option<&str>, u32); 4] = [
        ("mode 0777", None, 0o777),
        ("mode 0770 (group-writable)", None, 0o770),
        ("settings.json mode 0666", Some("settings.json"), 0o666),
        ("token mode 0666", Some("token"), 0o666),
    ];
    for (label, file, mode) in modes {
        let home = copy(&label.replace([' ', '(', ')', '.'], "-"));
        tally.case(format!("unsafe home: {label}, `scout up`"), || {
            let path = file.map_or_else(|| home.clone(), |file| home.join(file));
            set_mode(&path, mode).map_err(|err| err.to_string())?;
            refuses_unsafe_home(&home, &cwd)
        });
    }
    let home = copy("world-writable-doctor");
    tally.case("unsafe home: mode 0777, `scout doctor`", || {
        set_mode(&home, 0o777).map_err(|err| err.to_string())?;
        let run = run_scout(&home, &cwd, &["doctor"])?;
        ensure(
            run.code != 0 && format!("{}{}", run.stdout, run.stderr).contains("UNSAFE_HOME"),
            || format!("exit {}: {}{}", run.code, run.stdout, run.stderr),
        )
    });
}

/// Depth of nested arrays in a config value: beyond the parser's limit.
const CONFIG_DEPTH: usize = 10_000;

/// What to put where a config file should be.
enum Bad {
    Text(Vec<u8>),
    Directory,
}

fn bad_contents(valid: &str, field: &str, name_field: &str) -> Vec<(&'static str, Bad)> {
    let huge_name = "a".repeat(1024 * 1024);
    vec![
        (
            "truncated JSON",
            Bad::Text(valid.as_bytes()[..valid.len() / 2].to_vec()),
        ),
        ("an empty file", Bad::Text(Vec::new())),
        (
            "wrong types",
            Bad::Text(format!("{{\n  \"version\": \"one\",\n  \"{field}\": 5\n}}\n").into_bytes()),
        ),
        (
            "a huge number",
            Bad::Text(format!("{{\n  \"version\": 1e400,\n  \"{field}\": []\n}}\n").into_bytes()),
        ),
        (
            "a version from the far future",
            Bad::Text(b"{\n  \"version\": 18446744073709551616\n}\n".to_vec()),
        ),
        (
            "a 1 MB name",
            Bad::Text(
                format!(
                    "{{\n  \"version\": 1,\n  {name_field}\"{huge_name}\"{}\n}}\n",
                    if name_field.contains('[') { "}]" } else { "" }
                )
                .into_bytes(),
            ),
        ),
        (
            "10,000-deep nesting",
            Bad::Text(
                format!(
                    "{{\n  \"version\": 1,\n  \"{field}\": {}{}\n}}\n",
                    "[".repeat(CONFIG_DEPTH),
                    "]".repeat(CONFIG_DEPTH)
                )
                .into_bytes(),
            ),
        ),
        (
            "invalid UTF-8",
            Bad::Text(b"{\n  \"version\": 1,\n  \"note\": \"\xff\xfe\"\n}\n".to_vec()),
        ),
        ("a directory", Bad::Directory),
    ]
}

fn put(path: &Path, bad: &Bad) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)?;
    }
    match bad {
        Bad::Text(bytes) => std::fs::write(path, bytes),
        Bad::Directory => {
            if path.exists() {
                std::fs::remove_file(path)?;
            }
            std::fs::create_dir(path)
        }
    }
}

fn restore(path: &Path, text: &str) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    }
    std::fs::write(path, text).expect("restore a config file");
}

/// Each config file × malformed contents: exit 2 naming the file and line,
/// never a panic (a broken project manifest is a warning naming them, and
/// the other agents are still found).
pub fn configs(tally: &Tally) {
    let node = Node::setup("configs", &[]);
    let home = node.sandbox.home();
    let cwd = node.sandbox.path().to_owned();
    let workspace = cwd.join("ws");
    let repo = workspace.join("proj");
    std::fs::create_dir_all(repo.join(".openscout")).expect("repo");
    std::fs::write(
        repo.join(".openscout/project.json"),
        "{\n  \"version\": 1,\n  \"name\": \"proj\",\n  \"agents\": []\n}\n",
    )
    .expect("manifest");
    edit_json(&home.join("settings.json"), |settings| {
        settings["workspace_roots"] = json!([workspace]);
    });
    let files: [(&str, PathBuf, &[&str], &str, &str); 4] = [
        (
            "settings.json",
            home.join("settings.json"),
            &["agents", "list"],
            "seeds",
            "\"node_name\": ",
        ),
        (
            "relay-agents.json",
            home.join("relay-agents.json"),
            &["agents", "list"],
            "agents",
            "\"agents\": [{\"name\": ",
        ),
        (
            "mesh.json",
            home.join("mesh.json"),
            &["mesh", "invite"],
            "bootstrap",
            "\"mesh_id\": ",
        ),
        (
            ".openscout/project.json",
            repo.join(".openscout/project.json"),
            &["agents", "list"],
            "agents",
            "\"name\": ",
        ),
    ];
    for (label, path, command, field, name_field) in files {
        let valid = std::fs::read_to_string(&path).expect("valid file");
        let is_manifest = label.contains("project");
        for (content_label, bad) in bad_contents(&valid, field, name_field) {
            tally.case(format!("config: {label} with {content_label}"), || {
                put(&path, &bad).map_err(|err| format!("write: {err}"))?;
                let run = run_scout(&home, &cwd, command);
                restore(&path, &valid);
                let run = run?;
                let output = format!("{}{}", run.stdout, run.stderr);
                if output.contains("panicked") {
                    return Err(format!("panicked: {}", run.stderr));
                }
                let shown = path.display().to_string();
                let names_line = output.contains(&format!("{shown}:"))
                    && output
                        .split(&format!("{shown}:"))
                        .nth(1)
                        .is_some_and(|rest| rest.starts_with(|ch: char| ch.is_ascii_digit()));
                let needs_line = !matches!(bad, Bad::Directory);
                let names_it = output.contains(&shown) && (names_line || !needs_line);
                if is_manifest {
                    ensure((run.code == 0 || run.code == 2) && names_it, || {
                        format!("exit {}, expected a warning or exit 2 naming {shown} and its line: {output}", run.code)
                    })
                } else {
                    ensure(run.code == 2 && names_it, || {
                        format!("exit {}, expected 2 naming {shown} and its line: {output}", run.code)
                    })
                }
            });
        }
    }
}

/// The arguments of one command around a hostile value.
type ArgsOf = Box<dyn Fn(&str) -> Vec<String>>;

/// Hostile names given on the command line: a clean refusal (exit 1 or
/// 2 with an `error:` line), never a panic or a hang.
pub fn cli_names(tally: &Tally, target: &Target) {
    let home = target.node.sandbox.home();
    let cwd = target.node.sandbox.path().to_owned();
    // An argument cannot carry NUL; every other hostile value can.
    let values: Vec<(&str, String)> = bad_names()
        .into_iter()
        .filter(|(_, value)| !value.contains('\u{0}'))
        .collect();
    let commands: Vec<(&str, ArgsOf)> = vec![
        (
            "send to agent",
            Box::new(|v| vec!["send".into(), format!("@{v}"), "true".into()]),
        ),
        (
            "send to node",
            Box::new(|v| vec!["send".into(), format!("@shell@{v}"), "true".into()]),
        ),
        (
            "send to workspace",
            Box::new(|v| vec!["send".into(), format!("@shell#{v}"), "true".into()]),
        ),
        (
            "send in conversation",
            Box::new(|v| {
                vec![
                    "send".into(),
                    "@shell".into(),
                    "true".into(),
                    "--conversation".into(),
                    v.into(),
                ]
            }),
        ),
        (
            "agents add name",
            Box::new(|v| {
                vec![
                    "agents".into(),
                    "add".into(),
                    v.into(),
                    "--command".into(),
                    "bash".into(),
                ]
            }),
        ),
        (
            "agents add workspace",
            Box::new(|v| {
                vec![
                    "agents".into(),
                    "add".into(),
                    "hostile-ws".into(),
                    "--workspace".into(),
                    v.into(),
                    "--command".into(),
                    "bash".into(),
                ]
            }),
        ),
        (
            "agents remove",
            Box::new(|v| vec!["agents".into(), "remove".into(), v.into()]),
        ),
        (
            "resolve",
            Box::new(|v| vec!["resolve".into(), format!("@{v}")]),
        ),
        ("flights id", Box::new(|v| vec!["flights".into(), v.into()])),
        (
            "conversations show",
            Box::new(|v| vec!["conversations".into(), "show".into(), v.into()]),
        ),
        (
            "work-orders cancel",
            Box::new(|v| vec!["work-orders".into(), "cancel".into(), v.into()]),
        ),
        (
            "mesh revoke",
            Box::new(|v| vec!["mesh".into(), "revoke".into(), v.into()]),
        ),
    ];
    for (label, value) in &values {
        tally.case(format!("cli: setup --node-name with {label}"), || {
            let fresh = tempfile::tempdir().map_err(|err| err.to_string())?;
            let run = run_scout(
                &fresh.path().join("home"),
                fresh.path(),
                &[
                    "setup",
                    "--no-service",
                    "--node-name",
                    value,
                    "--http-port",
                    "0",
                    "--mesh-port",
                    "0",
                ],
            )?;
            refused_cleanly(&run)
        });
    }
    for (command, args_of) in &commands {
        for (label, value) in &values {
            let args = args_of(value);
            tally.case(format!("cli: {command} with {label}"), || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                refused_cleanly(&run_scout(&home, &cwd, &args)?)
            });
        }
    }
}
