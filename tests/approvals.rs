//! Human gates and approvals across a mesh of three real brokers: an agent
//! on `gamma` (with the credential its broker gave it) asks to cancel a
//! work order and gets `202` with an approval; the approval is listed on
//! every member; a person approves it on `alpha` and the owner cancels the
//! order once; a denial leaves the order alone; two answers sent at once
//! from two brokers make exactly one decision, the other gets
//! `ALREADY_DECIDED` naming who decided; an unanswered approval expires
//! and later answers get `APPROVAL_EXPIRED`; the owner's webhook receives
//! the pending request; and the audit log records who asked and who
//! decided.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use common::{Node, wait_until};
use serde_json::{Value, json};

/// Three brokers: `gamma` runs `@worker` (a bash loop that writes its
/// `SCOUT_TOKEN` to a file) and calls `webhook` for its approvals;
/// `alpha` and `beta` joined through it.
struct Mesh {
    alpha: Node,
    beta: Node,
    gamma: Node,
    token: String,
    /// Where alpha's stand-in `notify-send` writes each notification.
    desktop: PathBuf,
}

fn three_brokers(webhook: &str) -> Mesh {
    let mut gamma = Node::setup("gamma", &[]);
    let out = gamma.sandbox.path().join("token.txt");
    let script = format!(
        "printf 'ready> '; while IFS= read -r line; do printf '%s' \"$SCOUT_TOKEN\" > {out}.tmp; mv {out}.tmp {out}; echo \"done: $line\"; printf 'ready> '; done",
        out = out.display()
    );
    gamma.add_prompted_agent("worker", &["bash", "-c", &script]);
    set_webhook(&gamma.sandbox.home(), webhook);
    gamma.start();
    let mut alpha = Node::setup("alpha", &[]);
    let mut beta = Node::setup("beta", &[]);
    // Alpha shows desktop notifications, through a stand-in `notify-send`
    // on its PATH (the real one needs a desktop session) that appends its
    // arguments to a file.
    let desktop = alpha.sandbox.path().join("desktop.txt");
    let bin = alpha.sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stub = bin.join("notify-send");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> {}\n",
            desktop.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let settings = alpha.sandbox.home().join("settings.json");
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    value["notifications"] = json!({ "desktop": true });
    std::fs::write(&settings, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    for node in [&mut alpha, &mut beta] {
        let joined = node.run(&["mesh", "join", &gamma.invite()]);
        assert_eq!(joined.code, 0, "{}", joined.stderr);
    }
    let mut command = alpha.sandbox.scout();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    command.env("PATH", path);
    alpha.broker = Some(common::BrokerProcess::start_command(command));
    beta.start();
    wait_until("every broker to see the other two connected", || {
        (alpha.peers_in("connected") == ["beta", "gamma"]
            && beta.peers_in("connected") == ["alpha", "gamma"]
            && gamma.peers_in("connected") == ["alpha", "beta"])
        .then_some(())
    });
    let run = gamma.run(&["send", "@worker", "hello", "--wait", "--timeout", "60"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let token = wait_until("the worker to write its credential", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|token| token.starts_with("sat_"))
    });
    Mesh {
        alpha,
        beta,
        gamma,
        token,
        desktop,
    }
}

fn set_webhook(home: &Path, url: &str) {
    let path = home.join("settings.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("settings")).expect("json");
    settings["notifications"] = json!({
        "webhooks": [{ "url": url, "format": "json" }]
    });
    std::fs::write(&path, serde_json::to_string_pretty(&settings).unwrap()).expect("write");
}

/// A real HTTP server on loopback that hands every request body it gets
/// to the returned channel and answers `200`.
fn webhook_server() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (url, rx)
}

/// `method path` on `node` with `token` and `body`: status and JSON.
fn call(node: &Node, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    node.api(method, path, token, (method != "GET").then_some(body))
}

fn queue_order(node: &Node) -> String {
    let run = node.run(&[
        "--json",
        "work-orders",
        "enqueue",
        "@worker",
        "later",
        "--in",
        "1h",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()["work_order_id"]
        .as_str()
        .expect("work order id")
        .to_owned()
}

fn order_state(node: &Node, id: &str) -> String {
    node.get(&format!("/v1/work-orders/{id}"))["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The agent asks to cancel work order `order`: the approval's id.
fn agent_cancels(mesh: &Mesh, order: &str) -> String {
    let (status, body) = call(
        &mesh.gamma,
        "POST",
        &format!("/v1/work-orders/{order}/cancel"),
        &mesh.token,
        json!({}),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "approval_required", "{body}");
    assert_eq!(body["approval"]["action"], "work_order.cancel", "{body}");
    assert_eq!(body["approval"]["agent"], "@worker@gamma#main", "{body}");
    body["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned()
}

fn approval_on(node: &Node, id: &str) -> Option<Value> {
    let list = node.get("/v1/approvals");
    list["approvals"]
        .as_array()?
        .iter()
        .find(|approval| approval["id"] == id)
        .cloned()
}

fn wait_state(node: &Node, id: &str, state: &str) -> Value {
    wait_until(&format!("{id} {state} on {}", node.name), || {
        approval_on(node, id).filter(|approval| approval["state"] == state)
    })
}

#[test]
fn an_agent_asks_and_a_person_answers_from_another_broker() {
    let (webhook, hooks) = webhook_server();
    let mesh = three_brokers(&webhook);

    // Approved on alpha: the owner cancels the order, once.
    let order = queue_order(&mesh.gamma);
    let id = agent_cancels(&mesh, &order);
    assert_eq!(order_state(&mesh.gamma, &order), "queued");
    for node in [&mesh.alpha, &mesh.beta, &mesh.gamma] {
        let pending = wait_state(node, &id, "pending");
        assert_eq!(pending["node"], "gamma", "{pending}");
    }
    let listed = mesh.alpha.run(&["approvals"]);
    assert!(listed.stdout.contains(&id), "{}", listed.stdout);
    // Alpha opted in to desktop notifications: it showed gamma's request,
    // with the command that answers it.
    let shown = wait_until("the desktop notification on alpha", || {
        std::fs::read_to_string(&mesh.desktop)
            .ok()
            .filter(|text| text.contains(&format!("scout approve {id}")))
    });
    assert!(
        shown.contains("@worker@gamma#main asks: work_order.cancel"),
        "{shown}"
    );
    let approved = mesh
        .alpha
        .run(&["--json", "approve", &id, "--note", "fine"]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    assert_eq!(approved.json()["state"], "approved");
    assert_eq!(approved.json()["decided_by"], "operator@alpha");
    wait_until("the order cancelled on its owner", || {
        (order_state(&mesh.gamma, &order) == "cancelled").then_some(())
    });
    let decided = wait_state(&mesh.beta, &id, "approved");
    assert_eq!(decided["decided_by"], "operator@alpha", "{decided}");
    assert_eq!(decided["note"], "fine", "{decided}");
    let again = mesh.beta.run(&["deny", &id]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("ALREADY_DECIDED"), "{}", again.stderr);
    assert!(again.stderr.contains("operator@alpha"), "{}", again.stderr);

    // The webhook got the pending request with the command that answers it.
    let hook: Value = serde_json::from_str(
        &hooks
            .recv_timeout(common::WAIT_BOUND)
            .expect("a webhook call"),
    )
    .expect("json body");
    assert_eq!(hook["id"], id.as_str(), "{hook}");
    assert_eq!(hook["agent"], "@worker@gamma#main", "{hook}");
    assert_eq!(hook["answer"], format!("scout approve {id}"), "{hook}");

    // Denied on beta: nothing happens to the order.
    let kept = queue_order(&mesh.gamma);
    let refused = agent_cancels(&mesh, &kept);
    wait_state(&mesh.beta, &refused, "pending");
    let denied = mesh
        .beta
        .run(&["--json", "deny", &refused, "--note", "keep it"]);
    assert_eq!(denied.code, 0, "{}", denied.stderr);
    assert_eq!(denied.json()["state"], "denied");
    wait_state(&mesh.gamma, &refused, "denied");
    assert_eq!(order_state(&mesh.gamma, &kept), "queued");

    // Two people answer at once from two brokers: one decision.
    let raced = queue_order(&mesh.gamma);
    let contested = agent_cancels(&mesh, &raced);
    wait_state(&mesh.alpha, &contested, "pending");
    wait_state(&mesh.beta, &contested, "pending");
    // Both processes start before either is waited for.
    let children: Vec<std::process::Child> = [(&mesh.alpha, "approve"), (&mesh.beta, "deny")]
        .into_iter()
        .map(|(node, verb)| {
            node.sandbox
                .scout()
                .args([verb, contested.as_str()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn scout")
        })
        .collect();
    let answers: Vec<(i32, String)> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("wait scout");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
        .collect();
    let winners = answers.iter().filter(|(code, _)| *code == 0).count();
    assert_eq!(winners, 1, "{answers:?}");
    let loser = answers.iter().find(|(code, _)| *code != 0).unwrap();
    assert!(loser.1.contains("ALREADY_DECIDED"), "{answers:?}");
    let settled = wait_until("the decision everywhere", || {
        let on_gamma = approval_on(&mesh.gamma, &contested)?;
        (on_gamma["state"] != "pending").then_some(on_gamma)
    });
    for node in [&mesh.alpha, &mesh.beta] {
        wait_state(node, &contested, settled["state"].as_str().unwrap());
    }
    let expected_order = if settled["state"] == "approved" {
        "cancelled"
    } else {
        "queued"
    };
    wait_until("the order to follow the decision", || {
        (order_state(&mesh.gamma, &raced) == expected_order).then_some(())
    });

    // Nobody answers: the deadline denies, and a late answer is refused.
    let (status, asked) = call(
        &mesh.gamma,
        "POST",
        "/v1/approvals",
        &mesh.token,
        json!({ "action": "question", "summary": "may I push?", "deadline_secs": 1 }),
    );
    assert_eq!(status, 201, "{asked}");
    let late = asked["id"].as_str().unwrap().to_owned();
    let expired = wait_state(&mesh.alpha, &late, "expired");
    assert_eq!(expired["decided_by"], "deadline", "{expired}");
    let answer = mesh.alpha.run(&["approve", &late]);
    assert_eq!(answer.code, 1);
    assert!(
        answer.stderr.contains("APPROVAL_EXPIRED"),
        "{}",
        answer.stderr
    );

    // An agent may ask but never answer, nor cancel without asking.
    let (status, body) = call(
        &mesh.gamma,
        "POST",
        &format!("/v1/approvals/{contested}/approve"),
        &mesh.token,
        json!({}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "FORBIDDEN_SCOPE", "{body}");
    // An unknown approval is not pending anywhere.
    let unknown = mesh.alpha.run(&["approve", "apr_0123456789abcdef"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("APPROVAL_NOT_PENDING"),
        "{}",
        unknown.stderr
    );

    // The owner's audit log holds who asked and who decided.
    drop(mesh.alpha);
    drop(mesh.beta);
    let mut gamma = mesh.gamma;
    gamma.broker.take();
    let audit = common::store::audit_actions(&gamma.sandbox.home(), &id);
    assert_eq!(
        audit,
        [
            (
                "@worker@gamma#main".to_owned(),
                "approval_requested".to_owned()
            ),
            ("operator@alpha".to_owned(), "approval_approved".to_owned()),
            ("broker".to_owned(), "approved_action_ran".to_owned()),
        ]
    );
}

/// Standing rules answer what an agent asks again, never a gated action;
/// an agent sees only its own approvals and cannot flood the mesh.
#[test]
fn standing_rules_answer_repeats_and_agents_stay_in_their_lane() {
    let (webhook, _hooks) = webhook_server();
    let mesh = three_brokers(&webhook);
    let ask = |summary: &str| {
        call(
            &mesh.gamma,
            "POST",
            "/v1/approvals",
            &mesh.token,
            json!({ "action": "tool.Bash", "summary": summary }),
        )
    };

    // `--always` on beta: the same request is answered without asking.
    let (status, first) = ask("git status");
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    wait_state(&mesh.beta, &id, "pending");
    let always = mesh.beta.run(&["approve", &id, "--always"]);
    assert_eq!(always.code, 0, "{}", always.stderr);
    let (_, again) = ask("git status");
    assert_eq!(again["state"], "approved", "{again}");
    assert!(
        again["decided_by"].as_str().unwrap().starts_with("rule:"),
        "{again}"
    );
    let (_, other) = ask("git push --force");
    assert_eq!(
        other["state"], "pending",
        "a rule covers its exact summary only"
    );
    let rules = mesh.gamma.run(&["--json", "approvals", "rules"]);
    assert_eq!(rules.code, 0, "{}", rules.stderr);
    let rule = rules.json()["rules"][0].clone();
    assert_eq!(rule["agent"], "@worker@gamma#main", "{rule}");
    let forget = mesh
        .gamma
        .run(&["approvals", "forget", rule["id"].as_str().unwrap()]);
    assert_eq!(forget.code, 0, "{}", forget.stderr);
    let (_, after) = ask("git status");
    assert_eq!(after["state"], "pending", "{after}");

    // A gated action is answered one request at a time.
    let order = queue_order(&mesh.gamma);
    let gated = agent_cancels(&mesh, &order);
    wait_state(&mesh.alpha, &gated, "pending");
    let refused = mesh.alpha.run(&["approve", &gated, "--always"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("INVALID_REQUEST"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        approval_on(&mesh.gamma, &gated).unwrap()["state"],
        "pending"
    );

    // The agent lists only its own approvals; the operator lists all.
    let (status, asked) = call(
        &mesh.gamma,
        "POST",
        "/v1/approvals",
        &mesh.gamma.sandbox.token(),
        json!({ "agent": "@other@gamma#main", "action": "question", "summary": "secret" }),
    );
    assert_eq!(status, 201, "{asked}");
    let (_, listed) = call(&mesh.gamma, "GET", "/v1/approvals", &mesh.token, json!({}));
    let agents: Vec<&str> = listed["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|approval| approval["agent"].as_str().unwrap())
        .collect();
    assert!(
        !agents.is_empty() && agents.iter().all(|agent| *agent == "@worker@gamma#main"),
        "{agents:?}"
    );
    let (status, _) = call(
        &mesh.gamma,
        "GET",
        &format!("/v1/approvals/{}", asked["id"].as_str().unwrap()),
        &mesh.token,
        json!({}),
    );
    assert_eq!(status, 404);

    // No more than a person can answer.
    let mut last = (0, Value::Null);
    for n in 0..20 {
        last = ask(&format!("request {n}"));
        if last.0 != 201 {
            break;
        }
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert_eq!(last.1["error"]["code"], "TOO_MANY_APPROVALS", "{}", last.1);
}
