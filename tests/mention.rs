//! Agents mentioning each other through the broker, with real broker
//! processes and real PTY agents: a session the broker spawns sees its
//! instance name, the API's address and its own credential in its
//! environment; the credential works on the routes agents may use, gets
//! `FORBIDDEN_SCOPE` elsewhere, and stops working when the session ends;
//! what an agent sends is recorded as from it on both brokers, and a loop
//! between agents on two brokers is refused with `MENTION_LOOP`, leaving
//! nothing stuck; `scout mcp install` writes configs the real CLIs read.

mod common;

use std::path::{Path, PathBuf};

use common::{Node, wait_until};

/// A broker owning `@worker`, a bash loop that writes its `SCOUT_*`
/// variables to `env.txt` for every line it gets, then answers.
fn broker_with_env_worker() -> (Node, PathBuf) {
    let mut node = Node::setup("alpha", &[]);
    let out = node.sandbox.path().join("env.txt");
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do printf 'SCOUT_AGENT=%s\\nSCOUT_URL=%s\\nSCOUT_TOKEN=%s\\n' \"$SCOUT_AGENT\" \"$SCOUT_URL\" \"$SCOUT_TOKEN\" > {}.tmp; mv {}.tmp {}; echo \"done: $line\"; printf 'ready> '; done",
        out.display(),
        out.display(),
        out.display()
    );
    node.add_prompted_agent("worker", &["bash", "-c", &script]);
    node.start();
    (node, out)
}

fn read_vars(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    (vars.len() == 3).then_some(vars)
}

fn var(vars: &[(String, String)], name: &str) -> String {
    vars.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

/// The status and the error code of a request made with `token`.
fn call(node: &Node, method: &str, path: &str, token: &str) -> (u16, Option<String>) {
    let url = format!("{}{path}", node.broker().http_base());
    let request = ureq::request(method, &url).set("Authorization", &format!("Bearer {token}"));
    let response = if method == "GET" {
        request.call()
    } else {
        request.send_json(serde_json::json!({}))
    };
    match response {
        Ok(response) => (response.status(), None),
        Err(ureq::Error::Status(status, response)) => {
            let body: serde_json::Value = response.into_json().unwrap_or_default();
            (status, body["error"]["code"].as_str().map(str::to_owned))
        }
        Err(err) => panic!("{method} {url}: {err}"),
    }
}

#[test]
fn a_spawned_agent_gets_its_identity_and_a_scoped_credential() {
    let (node, out) = broker_with_env_worker();
    let run = node.run(&["send", "@worker", "who am i", "--wait", "--timeout", "60"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let vars = wait_until("the worker to write its variables", || read_vars(&out));
    assert_eq!(var(&vars, "SCOUT_AGENT"), "@worker@alpha#main");
    assert_eq!(var(&vars, "SCOUT_URL"), node.broker().http_base());
    let token = var(&vars, "SCOUT_TOKEN");
    assert!(token.starts_with("sat_"), "{token}");
    assert_ne!(token, node.sandbox.token());

    // Allowed: reads and mentions.
    for path in ["/v1/agents", "/v1/peers", "/v1/flights"] {
        assert_eq!(call(&node, "GET", path, &token).0, 200, "GET {path}");
    }
    // Refused with a typed 403: the operator's routes.
    for (method, path) in [
        ("GET", "/agents"),
        ("POST", "/agents"),
        ("GET", "/v1/usage"),
        ("POST", "/v1/mesh/invites"),
    ] {
        assert_eq!(
            call(&node, method, path, &token),
            (403, Some("FORBIDDEN_SCOPE".to_owned())),
            "{method} {path}"
        );
    }

    // Once the session ends, the credential is dead.
    let agents = node.get("/agents");
    let id = agents["agents"]
        .as_array()
        .and_then(|agents| agents.first())
        .and_then(|agent| agent["id"].as_str())
        .unwrap_or_else(|| panic!("no session in {agents}"))
        .to_owned();
    let url = format!("{}/agents/{id}", node.broker().http_base());
    ureq::delete(&url)
        .set("Authorization", &format!("Bearer {}", node.sandbox.token()))
        .call()
        .unwrap_or_else(|err| panic!("DELETE {url}: {err}"));
    wait_until("the credential to be revoked", || {
        (call(&node, "GET", "/v1/agents", &token).0 == 401).then_some(())
    });
}

/// `scout mcp install` for each CLI, in a sandbox whose HOME is the
/// sandbox: the files it writes parse back with the entry, the rest of a
/// file survives, a second install changes nothing, `--dry-run` writes
/// nothing, and `scout mcp doctor` finds the entries.
#[test]
fn mcp_install_writes_each_cli_config_and_doctor_finds_it() {
    let node = Node::setup("alpha", &[]);
    let home = node.sandbox.path().to_owned();
    let scout = std::fs::canonicalize(env!("CARGO_BIN_EXE_scout")).expect("binary");
    let install = |args: &[&str]| {
        let output = node
            .sandbox
            .scout()
            .env_remove("CODEX_HOME")
            .args(["--json", "mcp", "install"])
            .args(args)
            .output()
            .expect("run scout");
        let run = common::Run::from(output);
        assert_eq!(run.code, 0, "install {args:?}: {}", run.stderr);
        run.json()
    };

    // The dry run prints and writes nothing.
    let dry = install(&["claude", "--dry-run"]);
    assert!(dry["content"].as_str().unwrap().contains("mcpServers"));
    assert!(!home.join(".claude.json").exists());

    // Claude's user file keeps what was there.
    std::fs::write(home.join(".claude.json"), r#"{"numStartups": 3}"#).unwrap();
    assert_eq!(install(&["claude"])["changed"], true);
    assert_eq!(install(&["claude"])["changed"], false);
    let claude: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".claude.json")).unwrap()).unwrap();
    assert_eq!(claude["numStartups"], 3);
    let entry = &claude["mcpServers"]["scout"];
    assert_eq!(
        entry["command"].as_str().map(std::path::PathBuf::from),
        Some(scout.clone())
    );
    assert_eq!(entry["args"], serde_json::json!(["mcp"]));

    // Project scope writes the project's file in the current directory.
    install(&["claude", "--scope", "project"]);
    let project: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(
        project["mcpServers"]["scout"]["args"],
        serde_json::json!(["mcp"])
    );

    install(&["codex"]);
    let codex: toml::Table = std::fs::read_to_string(home.join(".codex/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        codex["mcp_servers"]["scout"]["command"]
            .as_str()
            .map(std::path::PathBuf::from),
        Some(scout.clone())
    );

    install(&["gemini"]);
    let gemini: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".gemini/settings.json")).unwrap())
            .unwrap();
    assert_eq!(
        gemini["mcpServers"]["scout"]["args"],
        serde_json::json!(["mcp"])
    );

    let doctor = node
        .sandbox
        .scout()
        .env_remove("CODEX_HOME")
        .args(["--json", "mcp", "doctor"])
        .output()
        .expect("doctor");
    let doctor = common::Run::from(doctor);
    assert_eq!(doctor.code, 0, "{}", doctor.stderr);
    let checks = doctor.json()["checks"].as_array().cloned().unwrap();
    // The project is the sandbox, which is HOME too, so every file exists.
    assert!(
        checks.iter().all(|check| check["state"] == "ok"),
        "{checks:?}"
    );
    assert_eq!(checks.len(), 6, "{checks:?}");

    // The real pinned claude reads the file it finds in HOME.
    let child = std::process::Command::new(common::agent_clis::agent_cli("claude"))
        .args(["mcp", "list"])
        .current_dir(&home)
        .env("HOME", &home)
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("claude");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = done_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| {
            // The child this test started, by its id.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("claude mcp list did not finish");
        })
        .expect("claude output");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("scout:") && listed.contains(&scout.display().to_string()),
        "stdout: {listed}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The flags the codex adapter passes to register the Scout MCP server are
/// what the pinned codex reads: `codex mcp list` shows the server, its
/// command and the variables it passes on.
#[test]
fn the_pinned_codex_reads_the_scout_mcp_overrides() {
    use scout::adapter::ScoutMcp;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ScoutMcp {
        command: "/opt/scout/bin/scout".to_owned(),
    };
    let output = std::process::Command::new(common::agent_clis::agent_cli("codex"))
        .args(server.codex_args())
        .args(["mcp", "list"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("CODEX_HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("codex mcp list");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let row = listed
        .lines()
        .find(|line| line.starts_with("scout "))
        .unwrap_or_else(|| panic!("no scout server in:\n{listed}"));
    for word in [
        "/opt/scout/bin/scout",
        "mcp",
        "SCOUT_AGENT",
        "SCOUT_URL",
        "SCOUT_TOKEN",
    ] {
        assert!(row.contains(word), "{word} missing from {row}");
    }
}

/// Adds `name` on `node`: a bash loop that, for every line it gets, sends
/// `message` to `target` through the local API with its own credential,
/// writes the answer's status and body to `<name>.log`, then answers.
fn add_mentioning_agent(node: &Node, name: &str, target: &str) -> PathBuf {
    let log = node.sandbox.path().join(format!("{name}.log"));
    let body =
        format!("{{\\\"target\\\":\\\"{target}\\\",\\\"message\\\":\\\"hello from {name}\\\"}}");
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do curl -s -o {log}.body -w '%{{http_code}}' -H \"Authorization: Bearer $SCOUT_TOKEN\" -H 'Content-Type: application/json' -d \"{body}\" \"$SCOUT_URL/v1/invocations\" > {log}.code; cat {log}.code {log}.body > {log}.tmp; mv {log}.tmp {log}; echo \"done: $line\"; printf 'ready> '; done",
        log = log.display(),
    );
    node.add_prompted_agent(name, &["bash", "-c", &script]);
    log
}

/// Every flight a node lists has ended.
fn all_flights_ended(node: &Node) -> bool {
    let flights = node.get("/v1/flights");
    let ended = |state: &serde_json::Value| {
        state.is_null()
            || ["completed", "failed", "cancelled"]
                .iter()
                .any(|end| state == end)
    };
    flights.as_array().is_some_and(|flights| {
        !flights.is_empty()
            && flights
                .iter()
                .all(|flight| ended(&flight["delivery"]) && ended(&flight["flight"]))
    })
}

/// `@pinger` on alpha, asked by a person, mentions `@ponger` on beta, which
/// mentions `@pinger` back: the second mention closes a loop and is refused
/// with `MENTION_LOOP` naming the chain, the first is recorded as from
/// `@pinger` on both brokers, and every flight ends.
#[test]
fn a_loop_across_two_brokers_is_refused_and_nothing_is_stuck() {
    let mut alpha = Node::setup("alpha", &[]);
    let mut beta = Node::setup("beta", &[]);
    let pinger_log = add_mentioning_agent(&alpha, "pinger", "@ponger");
    let ponger_log = add_mentioning_agent(&beta, "ponger", "@pinger");
    alpha.start();
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    wait_until("both brokers to see both agents", || {
        (alpha.instances().contains(&"@ponger@beta#main".to_owned())
            && beta.instances().contains(&"@pinger@alpha#main".to_owned()))
        .then_some(())
    });

    let run = alpha.run(&["send", "@pinger", "start", "--wait", "--timeout", "60"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let pinger_sent = wait_until("pinger's mention to be answered", || {
        std::fs::read_to_string(&pinger_log).ok()
    });
    assert!(pinger_sent.starts_with("202"), "{pinger_sent}");
    let body: serde_json::Value =
        serde_json::from_str(pinger_sent.trim_start_matches("202")).expect("submit json");
    let id = body["invocation_id"].as_str().expect("id").to_owned();

    // Ponger ran it, and its mention back was refused.
    let ponger_sent = wait_until("ponger's mention to be answered", || {
        std::fs::read_to_string(&ponger_log).ok()
    });
    assert!(ponger_sent.starts_with("409"), "{ponger_sent}");
    assert!(ponger_sent.contains("MENTION_LOOP"), "{ponger_sent}");
    assert!(
        ponger_sent.contains("@pinger@alpha#main → @ponger@beta#main"),
        "{ponger_sent}"
    );

    // Recorded as from pinger at the origin and at the owner.
    for node in [&alpha, &beta] {
        let status = wait_until("the invocation on both brokers", || {
            let url = format!("{}/v1/invocations/{id}", node.broker().http_base());
            ureq::get(&url)
                .set("Authorization", &format!("Bearer {}", node.sandbox.token()))
                .call()
                .ok()
                .and_then(|response| response.into_json::<serde_json::Value>().ok())
        });
        assert_eq!(
            status["invocation"]["from"], "@pinger@alpha#main",
            "{status}"
        );
        assert_eq!(
            status["invocation"]["chain"],
            serde_json::json!(["@pinger@alpha#main"]),
            "{status}"
        );
    }
    // Nothing stuck: every flight on both brokers ends.
    wait_until("every flight to end", || {
        (all_flights_ended(&alpha) && all_flights_ended(&beta)).then_some(())
    });
}

/// Writes `script` (Python) into the node's sandbox and adds it as agent
/// `name`, prompting `ready> ` between turns.
fn add_python_agent(node: &Node, name: &str, script: &str) {
    let path = node.sandbox.path().join(format!("{name}.py"));
    std::fs::write(&path, script).expect("agent script");
    node.add_prompted_agent(name, &["python3", "-u", path.to_str().expect("utf-8 path")]);
}

/// The HTTP helpers both agents use: their own credential, the local API.
const AGENT_HTTP: &str = r#"
import json, os, sys, urllib.request
def api(method, path, body=None):
    request = urllib.request.Request(
        os.environ["SCOUT_URL"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + os.environ["SCOUT_TOKEN"],
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
"#;

/// `@asker` on alpha sends `@replier` on beta a message (not an ask);
/// replier answers through a reply in that conversation, which reaches
/// asker as a new turn of the same conversation, from replier.
#[test]
fn a_reply_comes_back_as_a_new_turn_of_the_same_conversation() {
    let mut alpha = Node::setup("alpha", &[]);
    let mut beta = Node::setup("beta", &[]);
    let asker_log = alpha.sandbox.path().join("asker.log");
    let asker = format!(
        r#"{AGENT_HTTP}
log = open({log:?}, "a")
for line in iter(lambda: (print("ready> ", end="", flush=True), sys.stdin.readline())[1], ""):
    line = line.strip()
    if line == "start":
        status, body = api("POST", "/v1/invocations",
                           {{"target": "@replier", "message": "what is six times seven?"}})
        log.write("sent %s %s\n" % (status, body.get("conversation_id")))
    else:
        log.write("got %s\n" % line)
    log.flush()
    print("done: " + line)
"#,
        log = asker_log.display().to_string()
    );
    let replier = format!(
        r#"{AGENT_HTTP}
for line in iter(lambda: (print("ready> ", end="", flush=True), sys.stdin.readline())[1], ""):
    status, inbox = api("GET", "/v1/inbox?instance=" + urllib.parse.quote(os.environ["SCOUT_AGENT"]))
    newest = inbox[0]
    status, body = api("POST", "/v1/invocations", {{
        "target": newest["from"], "message": "reply 42",
        "conversation_id": newest["conversation_id"]}})
    print("replied %s" % status)
"#
    );
    let replier = replier.replace(
        "import json, os, sys, urllib.request",
        "import json, os, sys, urllib.parse, urllib.request",
    );
    add_python_agent(&alpha, "asker", &asker);
    add_python_agent(&beta, "replier", &replier);
    alpha.start();
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    wait_until("both brokers to see both agents", || {
        (alpha.instances().contains(&"@replier@beta#main".to_owned())
            && beta.instances().contains(&"@asker@alpha#main".to_owned()))
        .then_some(())
    });

    let run = alpha.run(&["send", "@asker", "start", "--wait", "--timeout", "60"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let log = wait_until("asker to get the reply", || {
        std::fs::read_to_string(&asker_log)
            .ok()
            .filter(|log| log.contains("got reply 42"))
    });
    let sent = log.lines().next().unwrap_or_default();
    assert!(sent.starts_with("sent 202 "), "{log}");
    let conversation = sent.trim_start_matches("sent 202 ").trim().to_owned();

    // The reply is an invocation on alpha from replier, in asker's
    // conversation.
    let flights = alpha.get("/v1/flights");
    let reply = flights
        .as_array()
        .expect("flights")
        .iter()
        .find_map(|flight| {
            let id = flight["invocation_id"].as_str()?;
            let status = alpha.get(&format!("/v1/invocations/{id}"));
            (status["invocation"]["from"] == "@replier@beta#main").then_some(status)
        })
        .expect("the reply's invocation on alpha");
    assert_eq!(
        reply["invocation"]["conversation_id"], conversation,
        "{reply}"
    );
}
