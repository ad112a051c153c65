//! The test agent's structured modes print the event formats the adapters
//! parse (and building this test makes `cargo test --workspace` build the
//! binary the PTY tests run).

use std::io::Write;
use std::process::{Command, Stdio};

fn run(persona: &str, args: &[&str], stdin: &str, home: &std::path::Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scout-test-agent"))
        .args(args)
        .env("SCOUT_TEST_AGENT_PERSONA", persona)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the test agent");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn types(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            value["type"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn personas_speak_their_cli_formats() {
    let home = std::env::temp_dir().join(format!("scout-test-agent-{}", std::process::id()));
    for (dir, file) in [(".claude", ".credentials.json"), (".codex", "auth.json")] {
        std::fs::create_dir_all(home.join(dir)).unwrap();
        std::fs::write(home.join(dir).join(file), "{}").unwrap();
    }
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(home.join(".gemini/oauth_creds.json"), "{}").unwrap();

    let (code, out) = run(
        "claude",
        &["-p", "--output-format", "stream-json", "--verbose"],
        "hi",
        &home,
    );
    assert_eq!(code, 0);
    assert_eq!(
        types(&out),
        ["system", "assistant", "stream_event", "assistant", "result"]
    );
    assert!(out.contains("\"result\":\"you said: hi\""), "{out}");

    let (code, out) = run("codex", &["exec", "--json", "-"], "hi", &home);
    assert_eq!(code, 0);
    assert_eq!(
        types(&out).first().map(String::as_str),
        Some("thread.started")
    );
    assert_eq!(
        types(&out).last().map(String::as_str),
        Some("turn.completed")
    );

    let (code, out) = run(
        "gemini",
        &["--output-format", "stream-json", "--prompt=hi"],
        "",
        &home,
    );
    assert_eq!(code, 0);
    assert_eq!(types(&out).last().map(String::as_str), Some("result"));

    let _ = std::fs::remove_dir_all(&home);
}
