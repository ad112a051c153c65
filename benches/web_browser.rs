//! The web view measured in a real browser (Debian's headless Chromium
//! over the DevTools protocol), with two real brokers on loopback and a
//! real bash agent on beta:
//!
//! - `scout open` to first paint of the agents page: from starting `scout
//!   open --print` on alpha, through the login URL in the browser, until
//!   the agents table with beta's agent is painted (the wall clock in the
//!   page's `requestAnimationFrame` after the row appears, noted by a
//!   script that runs before the page's own);
//! - keystroke to echo from the browser's WebSocket: the page opens the
//!   remote terminal (`/ws/mesh/agents/{instance}/terminal` on alpha,
//!   relayed over QUIC to beta), types `a` and times its echo with
//!   `performance.now()`; side by side with the same keystroke on beta's
//!   own page through its own terminal WebSocket.
//!
//! ```sh
//! cargo bench --bench web_browser
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use common::Node;
use common::chromium::Browser;

/// Logins timed for first paint.
const LOGINS: usize = 10;

/// Timed keystrokes per path (after 20 untimed).
const KEYSTROKES: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let (alpha, beta) = tokio::task::spawn_blocking(common::viewer_and_shell_owner)
        .await
        .unwrap();
    let mut browser = Browser::launch().await;
    browser
        .command(
            "Page.addScriptToEvaluateOnNewDocument",
            serde_json::json!({ "source": PAINT_PROBE }),
        )
        .await;

    let mut paints = Vec::new();
    for _ in 0..LOGINS {
        paints.push(open_to_first_paint(&mut browser, &alpha).await);
    }
    println!("first paint, each login in order (ms): {paints:.1?}");
    paints.sort_by(f64::total_cmp);

    // The owner's own page needs a login on beta too (its cookie is named
    // after beta's port, so both sessions live in one browser).
    let beta_open = beta.run(&["--json", "open", "--print"]);
    assert_eq!(beta_open.code, 0, "{}", beta_open.stderr);
    browser
        .navigate(beta_open.json()["url"].as_str().expect("url"))
        .await;
    let id = beta.get("/agents")["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|agent| agent["name"] == "@shell@beta#main")
        .expect("beta's session")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let mut remote = Vec::new();
    let mut local = Vec::new();
    // Blocks alternate, so machine load hits both paths alike.
    for _ in 0..2 {
        browser
            .navigate(&format!("{}/#/mesh", alpha.broker().http_base()))
            .await;
        remote.extend(
            keystrokes(
                &mut browser,
                "/ws/mesh/agents/%40shell%40beta%23main/terminal",
            )
            .await,
        );
        browser
            .navigate(&format!("{}/#/mesh", beta.broker().http_base()))
            .await;
        local.extend(keystrokes(&mut browser, &format!("/ws/agents/{id}/terminal")).await);
    }
    remote.sort_by(f64::total_cmp);
    local.sort_by(f64::total_cmp);
    println!("in headless Chromium, two brokers on loopback");
    println!(
        "`scout open` to first paint of the agents page, {LOGINS} logins: p50 {:.1} ms, max {:.1} ms",
        at(&paints, 50.0),
        at(&paints, 100.0)
    );
    println!(
        "keystroke to echo from the browser's WebSocket, {} samples per path:",
        remote.len()
    );
    println!(
        "  remote (alpha -> QUIC -> beta):  p50 {:>7.3} ms  p99 {:>7.3} ms",
        at(&remote, 50.0),
        at(&remote, 99.0)
    );
    println!(
        "  owner's own page (beta):         p50 {:>7.3} ms  p99 {:>7.3} ms",
        at(&local, 50.0),
        at(&local, 99.0)
    );
}

/// Milliseconds from starting `scout open --print` to the agents page
/// painted with beta's agent in it. The page itself notes the paint (a
/// script installed before any document runs records the wall clock in
/// the animation frame after the row appears), so the DevTools round trips
/// that follow do not count.
async fn open_to_first_paint(browser: &mut Browser, alpha: &Node) -> f64 {
    // A blank page first, so nothing of the last login is on screen.
    browser.navigate("about:blank").await;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        * 1000.0;
    let open = alpha.run(&["--json", "open", "--print"]);
    assert_eq!(open.code, 0, "{}", open.stderr);
    let url = open.json()["url"].as_str().expect("url").to_owned();
    browser
        .command("Page.navigate", serde_json::json!({ "url": url }))
        .await;
    let painted = browser
        .wait_until(
            "the agents page painted with beta's agent",
            "window.__scoutPainted",
        )
        .await;
    painted.as_f64().expect("a time") - start
}

/// Installed before every document: records when beta's agent row is
/// first painted, as `window.__scoutPainted` (unix ms).
const PAINT_PROBE: &str = r#"
new MutationObserver((_, observer) => {
  if (document.querySelector('tr[data-instance="@shell@beta#main"]')) {
    observer.disconnect();
    requestAnimationFrame(() => { window.__scoutPainted = Date.now(); });
  }
}).observe(document, { childList: true, subtree: true });
"#;

/// Opens the terminal WebSocket at `path` from the current page and times
/// `a` to its echo, in the page, with `performance.now()`.
async fn keystrokes(browser: &mut Browser, path: &str) -> Vec<f64> {
    let script = format!(
        r#"(async () => {{
  const ws = new WebSocket(`ws://${{location.host}}{path}`);
  let buffer = '';
  let waiter = null;
  ws.onmessage = (event) => {{
    if (typeof event.data !== 'string') return;
    buffer += event.data;
    if (waiter && waiter.test(buffer)) {{ const w = waiter; waiter = null; w.resolve(); }}
  }};
  await new Promise((resolve, reject) => {{ ws.onopen = resolve; ws.onerror = reject; }});
  const until = (test) => new Promise((resolve) => {{
    if (test(buffer)) return resolve();
    waiter = {{ test, resolve }};
  }});
  await until((b) => b.includes('connected'));
  ws.send('\u0015');
  const samples = [];
  for (let i = 0; i < 20 + {KEYSTROKES}; i++) {{
    buffer = '';
    const start = performance.now();
    ws.send('a');
    await until((b) => b.includes('a'));
    const elapsed = performance.now() - start;
    buffer = '';
    ws.send('\u007f');
    await until((b) => b.includes('\u0008'));
    if (i >= 20) samples.push(elapsed);
  }}
  ws.close();
  return samples;
}})()"#
    );
    let value = browser.eval(&script).await;
    value
        .as_array()
        .expect("samples")
        .iter()
        .map(|sample| sample.as_f64().expect("a number"))
        .collect()
}

fn at(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
