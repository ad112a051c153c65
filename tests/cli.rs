//! End-to-end tests of the `scout` binary in temporary homes: setup,
//! doctor, agents, resolve, config errors and the foreground broker.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{BrokerProcess, Sandbox, wait_until};

#[test]
fn setup_creates_the_home_then_changes_nothing() {
    let sandbox = Sandbox::new();
    let first = sandbox.setup("laptop");
    insta::assert_snapshot!("setup_first", sandbox.redact(&first.stdout));

    let second = sandbox.setup("laptop");
    insta::assert_snapshot!("setup_second", sandbox.redact(&second.stdout));

    let json = sandbox
        .run(&["--json", "setup", "--node-name", "laptop"])
        .json();
    assert_eq!(json["changed"], false);
    assert_eq!(json["node_name"], "laptop");

    let key_mode = fs::metadata(sandbox.home().join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let token_mode = fs::metadata(sandbox.home().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(token_mode & 0o777, 0o600);
}

#[test]
fn setup_rejects_a_bad_node_name_with_exit_code_2() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["setup", "--node-name", "My_Laptop"]);
    assert_eq!(run.code, 2);
    insta::assert_snapshot!(run.stderr);
}

#[test]
fn setup_keeps_unknown_fields_in_settings() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let path = sandbox.home().join("settings.json");
    let mut settings: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    settings["future_switch"] = serde_json::json!({"on": true});
    settings["discovery"]["lighthouse"] = serde_json::json!("keep me");
    fs::write(&path, serde_json::to_string_pretty(&settings).unwrap()).unwrap();

    let run = sandbox.run(&["setup", "--seed", "devbox:3101"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(after["future_switch"]["on"], true);
    assert_eq!(after["discovery"]["lighthouse"], "keep me");
    assert_eq!(after["seeds"], serde_json::json!(["devbox:3101"]));
}

#[test]
fn malformed_settings_name_the_file_line_and_field() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    fs::write(
        sandbox.home().join("settings.json"),
        "{\n  \"node_name\": \"laptop\",\n  \"http_port\": \"fast\"\n}\n",
    )
    .unwrap();
    let run = sandbox.run(&["agents", "list"]);
    assert_eq!(run.code, 2);
    insta::assert_snapshot!(sandbox.redact(&run.stderr));

    fs::write(
        sandbox.home().join("settings.json"),
        "{\n  \"node_name\": \"laptop\",\n",
    )
    .unwrap();
    let run = sandbox.run(&["agents", "list"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("settings.json:3:"), "{}", run.stderr);
}

#[test]
fn agents_add_list_remove() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let cwd = sandbox.path().display().to_string();
    let add = sandbox.run(&[
        "agents",
        "add",
        "shell",
        "--cwd",
        &cwd,
        "--workspace",
        "main",
        "--command",
        "bash",
        "-l",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    insta::assert_snapshot!("agents_add", sandbox.redact(&add.stdout));

    let add = sandbox.run(&[
        "agents",
        "add",
        "@py",
        "--cwd",
        &cwd,
        "--command",
        "python3",
        "-q",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);

    let list = sandbox.run(&["agents", "list"]);
    insta::assert_snapshot!("agents_list", sandbox.redact(&list.stdout));
    let json = sandbox.run(&["--json", "agents", "list"]);
    insta::assert_snapshot!("agents_list_json", sandbox.redact(&json.stdout));

    let again = sandbox.run(&["agents", "add", "shell", "--command", "sh"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    let bad = sandbox.run(&["agents", "add", "bad name", "--command", "sh"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("invalid name"), "{}", bad.stderr);

    let no_dir = sandbox.run(&[
        "agents",
        "add",
        "x",
        "--cwd",
        "/does/not/exist",
        "--command",
        "sh",
    ]);
    assert_eq!(no_dir.code, 2);
    assert!(
        no_dir.stderr.contains("not a directory"),
        "{}",
        no_dir.stderr
    );

    let removed = sandbox.run(&["agents", "remove", "shell"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let missing = sandbox.run(&["agents", "remove", "shell"]);
    assert_eq!(missing.code, 1);
    insta::assert_snapshot!("agents_remove_missing", missing.stderr);
}

#[test]
fn project_agents_are_found_under_workspace_roots() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path().join("code/fabric");
    fs::create_dir_all(repo.join(".git")).unwrap();
    fs::write(repo.join(".git/HEAD"), "ref: refs/heads/feature-x\n").unwrap();
    fs::write(repo.join("CLAUDE.md"), "# fabric\n").unwrap();
    let root = sandbox.path().join("code").display().to_string();
    let run = sandbox.run(&["setup", "--node-name", "laptop", "--workspace-root", &root]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = sandbox.run(&["--json", "agents", "list"]).json();
    assert_eq!(json["agents"][0]["name"], "@fabric@laptop#feature-x");
    assert_eq!(json["agents"][0]["harness"], "claude");
    assert_eq!(json["agents"][0]["source"]["kind"], "inferred");
}

#[test]
fn setup_in_a_repository_writes_its_manifest() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path().join("loom");
    fs::create_dir_all(repo.join(".git")).unwrap();
    fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::write(repo.join("AGENTS.md"), "# loom\n").unwrap();
    let output = sandbox
        .scout()
        .current_dir(&repo)
        .args(["setup", "--node-name", "devbox"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.join(".openscout/project.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["name"], "loom");
    let json = sandbox.run(&["--json", "agents", "list"]).json();
    assert_eq!(json["agents"][0]["name"], "@loom@devbox#main");
    assert_eq!(json["agents"][0]["harness"], "codex");
}

#[test]
fn resolve_explains_the_choice_or_lists_near_names() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let cwd = sandbox.path().display().to_string();
    for (name, workspace) in [("fabric", "main"), ("fabric-docs", "main")] {
        let add = sandbox.run(&[
            "agents",
            "add",
            name,
            "--cwd",
            &cwd,
            "--workspace",
            workspace,
            "--command",
            "bash",
        ]);
        assert_eq!(add.code, 0, "{}", add.stderr);
    }
    let run = sandbox.run(&["resolve", "@fabric"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    insta::assert_snapshot!("resolve_ok", run.stdout);

    let json = sandbox.run(&["--json", "resolve", "fabric#main"]).json();
    assert_eq!(json["chosen"], "@fabric@laptop#main");
    assert_eq!(json["reason"], "only_match");

    let typo = sandbox.run(&["resolve", "@fabirc"]);
    assert_eq!(typo.code, 1);
    insta::assert_snapshot!("resolve_typo", typo.stderr);

    let invalid = sandbox.run(&["resolve", "@fab#..x"]);
    assert_eq!(invalid.code, 2);
    assert!(invalid.stderr.contains("workspace"), "{}", invalid.stderr);
}

#[test]
fn doctor_reports_each_check() {
    let sandbox = Sandbox::new();
    let missing = sandbox.run(&["doctor"]);
    assert_eq!(missing.code, 1);
    insta::assert_snapshot!("doctor_no_home", sandbox.redact(&missing.stdout));

    sandbox.setup("laptop");
    let run = sandbox.run(&["--json", "doctor"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let json = run.json();
    let status = |name: &str| {
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .map(|check| check["status"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no check {name}"))
    };
    assert_eq!(status("settings"), "ok");
    assert_eq!(status("node-key"), "ok");
    assert_eq!(status("token"), "ok");
    assert_eq!(status("store"), "ok");
    assert_eq!(status("broker"), "warn");

    fs::set_permissions(
        sandbox.home().join("node.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = sandbox.run(&["doctor"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("fix: chmod 600"), "{}", run.stdout);
}

#[test]
fn doctor_fails_when_an_agent_program_is_missing() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let add = sandbox.run(&[
        "agents",
        "add",
        "ghost",
        "--command",
        "/nonexistent/agent-cli",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let run = sandbox.run(&["--json", "doctor"]);
    assert_eq!(run.code, 1);
    let json = run.json();
    let check = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "command:@ghost")
        .expect("command check");
    assert_eq!(check["status"], "fail");
}

#[test]
fn broker_serves_health_picks_up_agents_and_stops_cleanly() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let mut broker = BrokerProcess::start(&sandbox);
    assert_eq!(broker.ready["node_name"], "laptop");
    let base = broker.http_base();

    let health: serde_json::Value = ureq::get(&format!("{base}/health"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], "laptop");
    assert_eq!(health["nodeId"], broker.ready["node_id"]);

    match ureq::get(&format!("{base}/v1/agents")).call() {
        Err(ureq::Error::Status(401, response)) => {
            let body: serde_json::Value = response.into_json().unwrap();
            assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    match ureq::get(&format!("{base}/nope")).call() {
        Err(ureq::Error::Status(404, response)) => {
            let body: serde_json::Value = response.into_json().unwrap();
            assert_eq!(body["error"]["code"], "NOT_FOUND");
        }
        other => panic!("expected 404, got {other:?}"),
    }

    // A second broker on the same home refuses to start.
    let second = sandbox.run(&["up"]);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains("another broker is already running"),
        "{}",
        second.stderr
    );

    // An agent added while the broker runs shows up without a restart.
    let add = sandbox.run(&["agents", "add", "late", "--command", "bash"]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let auth = format!("Bearer {}", sandbox.token());
    wait_until("the new agent to appear", || {
        let list: serde_json::Value = ureq::get(&format!("{base}/v1/agents"))
            .set("Authorization", &auth)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        list["agents"]
            .as_array()?
            .iter()
            .any(|agent| agent["definition"] == "late")
            .then_some(())
    });

    let code = broker.stop_with(libc::SIGTERM);
    assert_eq!(code, 0);
    let log = broker.stderr();
    assert!(log.contains("store closed"), "{log}");

    // The store was closed cleanly: doctor finds it intact.
    let doctor = sandbox.run(&["--json", "doctor"]).json();
    let store = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .unwrap()
        .clone();
    assert_eq!(store["status"], "ok", "{store}");
}

#[test]
fn first_up_on_a_fresh_home_sets_it_up() {
    let sandbox = Sandbox::new();
    let mut command = sandbox.scout();
    // The local runtime's PORT variable overrides the settings' http_port.
    command.env("PORT", "0");
    let mut broker = BrokerProcess::start_command(command);
    assert!(sandbox.home().join("settings.json").exists());
    assert!(sandbox.home().join("node.key").exists());
    assert!(
        broker.ready["http_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(broker.stop_with(libc::SIGINT), 0);
    assert!(broker.stderr().contains("first run: set up a new home"));
}

#[test]
fn agents_do_not_inherit_the_brokers_ci_markers() {
    // A broker started from a CI job's shell must not tell the programs it
    // runs in terminals that they are in CI: ink-based TUIs such as gemini
    // then leave interactive mode and exit.
    let mut node = common::Node::setup("solo", &[]);
    node.add_bash_agent("shell");
    let mut command = node.sandbox.scout();
    command
        .env("CI", "true")
        .env("CONTINUOUS_INTEGRATION", "1")
        .env("CI_JOB_ID", "7");
    node.broker = Some(BrokerProcess::start_command(command));
    let run = node.run(&[
        "send",
        "@shell",
        "echo ci=${CI:-unset} ${CONTINUOUS_INTEGRATION:-unset} ${CI_JOB_ID:-unset}",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("ci=unset unset unset"),
        "{}",
        run.stdout
    );
}
