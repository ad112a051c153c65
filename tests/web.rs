//! The web view end to end, in a real browser: two real brokers on
//! loopback form a mesh; beta owns `@shell@beta#main`, a bash agent.
//! Headless Chromium (Debian's package), driven over the DevTools
//! protocol, logs in to alpha with the URL `scout open --print` prints,
//! lists beta's agent on alpha's Agents page, opens its terminal (relayed
//! through the mesh), types `echo hi` into xterm and reads `hi` back from
//! the xterm screen buffer. Every page renders without console errors;
//! screenshots are saved under `target/web-screenshots`. A plain HTTP
//! client checks that a foreign Origin and a foreign Host are refused.

mod common;

use std::path::PathBuf;

use common::chromium::Browser;
use common::{Node, wait_until};
use serde_json::Value;

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The text lines of the page's xterm screen buffer.
const XTERM_LINES: &str = "(() => { const b = window.scoutTerminal?.buffer.active; if (!b) return null; const lines = []; for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); return lines; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_types_into_a_remote_agents_terminal() {
    let (alpha, _beta) = tokio::task::spawn_blocking(common::viewer_and_shell_owner)
        .await
        .unwrap();
    let base = alpha.broker().http_base();
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();

    let open = alpha.run(&["--json", "open", "--print"]);
    assert_eq!(open.code, 0, "scout open: {}", open.stderr);
    let url = open.json()["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/login?code=")),
        "{url}"
    );

    let mut browser = Browser::launch().await;
    browser.navigate(&url).await;
    // Redirected to the page, logged in by an HttpOnly, SameSite=Strict
    // cookie named after the port.
    let cookies = browser
        .command(
            "Network.getCookies",
            serde_json::json!({ "urls": [base.clone()] }),
        )
        .await;
    let cookie = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cookie| cookie["name"] == format!("scout_session_{port}"))
        .cloned()
        .unwrap_or_else(|| panic!("no session cookie in {cookies}"));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(browser.eval("document.cookie").await, Value::from(""));
    // The code worked once.
    let again = ureq::get(&url).call();
    assert!(
        matches!(again, Err(ureq::Error::Status(401, _))),
        "a used code is refused"
    );

    // The Agents page lists beta's agent, owned by beta.
    browser.navigate(&format!("{base}/#/agents")).await;
    browser
        .wait_until(
            "beta's agent on alpha's Agents page",
            "document.querySelector('tr[data-instance=\"@shell@beta#main\"]')?.textContent.includes('beta')",
        )
        .await;
    browser.screenshot(&screenshots().join("agents.png")).await;
    // The filter hides what does not match and shows it again.
    browser
        .eval("(() => { const f = document.getElementById('agents-filter'); f.value = 'no-such-agent'; f.dispatchEvent(new Event('input')); return true; })()")
        .await;
    browser
        .wait_until(
            "the filter to hide the agent",
            "!document.querySelector('tr[data-instance=\"@shell@beta#main\"]')",
        )
        .await;
    browser
        .eval("(() => { const f = document.getElementById('agents-filter'); f.value = 'beta'; f.dispatchEvent(new Event('input')); return true; })()")
        .await;
    browser
        .wait_until(
            "the filter to show the agent",
            "document.querySelector('tr[data-instance=\"@shell@beta#main\"]')",
        )
        .await;

    browser.navigate(&format!("{base}/#/mesh")).await;
    browser
        .wait_until(
            "the mesh page to list beta",
            "document.getElementById('members')?.textContent.includes('beta')",
        )
        .await;
    browser.screenshot(&screenshots().join("mesh.png")).await;

    browser.navigate(&format!("{base}/#/flights")).await;
    browser
        .wait_until(
            "the flights page to list the first turn",
            "document.querySelector('#flights table')",
        )
        .await;
    browser.screenshot(&screenshots().join("flights.png")).await;

    browser.navigate(&format!("{base}/#/work-orders")).await;
    browser
        .wait_until("the work orders page", "document.getElementById('work-orders')?.textContent.length > 0 && !document.getElementById('work-orders').textContent.includes('Loading')")
        .await;
    browser
        .screenshot(&screenshots().join("work-orders.png"))
        .await;

    // Open the agent from the list, as a person clicks it.
    browser.navigate(&format!("{base}/#/agents")).await;
    browser
        .wait_until(
            "the agent row",
            "document.querySelector('tr[data-instance=\"@shell@beta#main\"]')",
        )
        .await;
    browser
        .eval("document.querySelector('tr[data-instance=\"@shell@beta#main\"]').click(), true")
        .await;
    browser
        .wait_until(
            "the relayed terminal to connect",
            "document.getElementById('terminal-status')?.dataset.state === 'open' && window.scoutTerminal",
        )
        .await;
    // Type into xterm: its input element has the focus; keys go as a
    // person's do.
    browser
        .eval("document.querySelector('.xterm-helper-textarea').focus(), true")
        .await;
    browser
        .command("Input.insertText", serde_json::json!({ "text": "echo hi" }))
        .await;
    for kind in ["keyDown", "keyUp"] {
        browser
            .command(
                "Input.dispatchKeyEvent",
                serde_json::json!({
                    "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                    "text": if kind == "keyDown" { "\r" } else { "" },
                }),
            )
            .await;
    }
    let lines = browser
        .wait_until(
            "`hi` on its own line of the xterm screen",
            &format!("(() => {{ const l = {XTERM_LINES}; return l && l.some((line) => line.trim() === 'hi') ? l : null; }})()"),
        )
        .await;
    assert!(
        lines
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line.as_str().unwrap_or("").contains("echo hi")),
        "{lines}"
    );
    // The agent's flights list the first turn.
    browser
        .wait_until(
            "the agent's flights",
            "document.querySelector('#agent-flights table')?.textContent.includes('@shell@beta#main')",
        )
        .await;
    browser
        .screenshot(&screenshots().join("agent-terminal.png"))
        .await;

    let errors = browser.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // Outside the browser: a cross-origin request and a wrong Host are
    // refused with their typed errors, even with the cookie.
    let cookie_header = format!("scout_session_{port}={}", cookie["value"].as_str().unwrap());
    let foreign = ureq::post(&format!("{base}/v1/invocations"))
        .set("Cookie", &cookie_header)
        .set("Origin", "http://evil.example")
        .send_json(serde_json::json!({ "target": "@shell@beta", "message": "id" }));
    match foreign {
        Err(ureq::Error::Status(403, response)) => {
            let body: Value = response.into_json().unwrap();
            assert_eq!(body["error"]["code"], "FORBIDDEN_ORIGIN", "{body}");
        }
        other => panic!("a foreign Origin was not refused: {other:?}"),
    }
    let no_origin = ureq::post(&format!("{base}/v1/invocations"))
        .set("Cookie", &cookie_header)
        .send_json(serde_json::json!({ "target": "@shell@beta", "message": "id" }));
    match no_origin {
        Err(ureq::Error::Status(403, response)) => {
            let body: Value = response.into_json().unwrap();
            assert_eq!(body["error"]["code"], "ORIGIN_REQUIRED", "{body}");
        }
        other => panic!("a cookie request without Origin was not refused: {other:?}"),
    }
    let rebound = ureq::get(&format!("{base}/v1/peers"))
        .set("Cookie", &cookie_header)
        .set("Host", &format!("attacker.example:{port}"))
        .call();
    match rebound {
        Err(ureq::Error::Status(403, response)) => {
            let body: Value = response.into_json().unwrap();
            assert_eq!(body["error"]["code"], "FORBIDDEN_HOST", "{body}");
        }
        other => panic!("a foreign Host was not refused: {other:?}"),
    }

    // Sessions are listed and revocable; a revoked cookie is refused.
    let list = alpha.run(&["--json", "open", "--list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let sessions = list.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["id"].as_str().unwrap();
    let revoke = alpha.run(&["open", "--revoke", id]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    let after = ureq::get(&format!("{base}/v1/peers"))
        .set("Cookie", &cookie_header)
        .call();
    assert!(
        matches!(after, Err(ureq::Error::Status(401, _))),
        "a revoked session is refused"
    );
}

/// A WebSocket to `path` on `node`'s broker with its token.
fn terminal_socket(
    node: &Node,
    path: &str,
) -> Result<
    tokio_tungstenite::tungstenite::WebSocket<
        tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let base = node.broker().http_base().replacen("http://", "ws://", 1);
    let mut request = format!("{base}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", node.sandbox.token()).parse().unwrap(),
    );
    tokio_tungstenite::tungstenite::connect(request).map(|(socket, _)| socket)
}

/// The typed error of a refused WebSocket handshake.
fn refusal_code(error: tokio_tungstenite::tungstenite::Error) -> String {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .unwrap_or_default();
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
        other => panic!("not an HTTP refusal: {other}"),
    }
}

#[test]
fn remote_terminals_serve_several_viewers_and_refuse_with_typed_errors() {
    use tokio_tungstenite::tungstenite::Message;
    let (alpha, beta) = common::viewer_and_shell_owner();
    // An agent of beta's whose session never started.
    beta.add_bash_agent("idle");
    alpha.wait_for_instance("@idle@beta#main");
    let not_running = terminal_socket(&alpha, "/ws/mesh/agents/%40idle%40beta%23main/terminal");
    assert_eq!(
        refusal_code(not_running.expect_err("refused")),
        "AGENT_NOT_RUNNING"
    );
    let unknown = terminal_socket(&alpha, "/ws/mesh/agents/%40nobody%40beta%23main/terminal");
    assert_eq!(
        refusal_code(unknown.expect_err("refused")),
        "AGENT_NOT_FOUND"
    );

    // Two viewers of one remote terminal: what one types, both see.
    let path = "/ws/mesh/agents/%40shell%40beta%23main/terminal";
    let mut first = terminal_socket(&alpha, path).expect("first viewer");
    let mut second = terminal_socket(&alpha, path).expect("second viewer");
    for socket in [&mut first, &mut second] {
        if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(stream) =
            socket.get_mut()
        {
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
        }
    }
    first
        .send(Message::text(r#"{"type":"resize","cols":100,"rows":30}"#))
        .unwrap();
    first.send(Message::text("echo two''viewers\r")).unwrap();
    for socket in [&mut first, &mut second] {
        let mut seen = String::new();
        while !seen.contains("twoviewers") {
            match socket.read().expect("terminal output") {
                Message::Text(text) => seen.push_str(text.as_str()),
                Message::Close(_) => panic!("closed before the output: {seen}"),
                _ => {}
            }
        }
    }
    // The resize reached the owner's session.
    wait_until("the resize to apply on beta", || {
        let agents = beta.get("/agents");
        agents["agents"]
            .as_array()?
            .iter()
            .any(|agent| agent["name"] == "@shell@beta#main" && agent["cols"] == 100)
            .then_some(())
    });
}

/// The Approvals page: an approval asked on beta shows up on alpha's page
/// live (no reload), with its whole summary; approving it there with a note
/// decides it on its owner, beta, and it moves to the decided list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_a_request_from_another_broker_in_the_browser() {
    let (alpha, beta) = tokio::task::spawn_blocking(common::viewer_and_shell_owner)
        .await
        .unwrap();
    let base = alpha.broker().http_base();
    let open = alpha.run(&["--json", "open", "--print"]);
    assert_eq!(open.code, 0, "scout open: {}", open.stderr);
    let url = open.json()["url"].as_str().expect("url").to_owned();
    let mut browser = Browser::launch().await;
    browser.navigate(&url).await;
    browser.navigate(&format!("{base}/#/approvals")).await;
    browser
        .wait_until(
            "the empty approvals page",
            "document.getElementById('approvals-pending')?.textContent.includes('Nothing waits')",
        )
        .await;

    // Asked on beta, on behalf of its agent.
    let beta_base = beta.broker().http_base();
    let asked: Value = ureq::post(&format!("{beta_base}/v1/approvals"))
        .set("Authorization", &format!("Bearer {}", beta.sandbox.token()))
        .send_json(serde_json::json!({
            "agent": "@shell@beta#main",
            "action": "tool.Bash",
            "summary": "git push origin main\n# and a second line"
        }))
        .expect("ask")
        .into_json()
        .unwrap();
    let id = asked["id"].as_str().unwrap().to_owned();
    let row = format!("#approvals-pending tr[data-approval=\"{id}\"]");
    browser
        .wait_until(
            "the request on alpha's page, live",
            &format!("document.querySelector('{row}')?.textContent.includes('and a second line')"),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('approvals-count').textContent")
            .await,
        Value::from("1")
    );
    browser
        .screenshot(&screenshots().join("approvals.png"))
        .await;
    browser
        .eval(&format!(
            "(() => {{ const r = document.querySelector('{row}'); r.querySelector('input').value = 'ship it'; r.querySelector('button.approve').click(); return true; }})()"
        ))
        .await;
    browser
        .wait_until(
            "the request in the decided list",
            &format!("document.querySelector('#approvals-decided tr[data-approval=\"{id}\"]')?.textContent.includes('approved')"),
        )
        .await;
    let on_owner = wait_until("the decision on beta", || {
        let view = beta.get(&format!("/v1/approvals/{id}"));
        (view["state"] == "approved").then_some(view)
    });
    assert_eq!(on_owner["note"], "ship it", "{on_owner}");
    assert!(
        on_owner["decided_by"].as_str().unwrap().ends_with("@alpha"),
        "{on_owner}"
    );
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
}
