//! `scout-test-agent`: a small program that behaves like a coding-agent CLI,
//! so Scout's PTY runtime and adapters are tested against real terminals
//! without the real CLIs. Not shipped.
//!
//! Interactive (on a terminal): asks the terminal for the cursor position
//! first and refuses to start without an answer (as full-screen CLIs do),
//! turns on bracketed paste, shows a prompt and answers lines typed or
//! pasted. Commands: `ask` (a permission question), `slow N` (N lines,
//! streamed), `flood N` (N KiB at once), `spawn-child` and
//! `spawn-child-and-exit` (a child that ignores SIGHUP and holds the
//! terminal), `query` (ask for the cursor again), `env NAME`, `pwd`,
//! `crash`, `exit`; anything else is echoed back as `you said: …`.
//! `--login` (or a persona without credentials) starts at a login screen
//! with a URL; typing `ok` there logs in.
//!
//! Personas: named `claude`, `codex` or `gemini` (by a link of that name, or
//! `SCOUT_TEST_AGENT_PERSONA`) it shows that CLI's screen markers, checks
//! that CLI's credential file, and answers that CLI's structured mode
//! (`-p --output-format stream-json`, `exec --json`, `--output-format
//! stream-json --prompt=…`) with events in that CLI's format.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// How long to wait for the terminal's answer to a cursor query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between lines of `slow N`.
const SLOW_LINE_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persona {
    Plain,
    Claude,
    Codex,
    Gemini,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let persona = persona(&args[0]);
    let rest = &args[1..];
    if rest.iter().any(|arg| arg == "--version") {
        println!("{} 0.0.0-test (scout-test-agent)", persona_word(persona));
        return ExitCode::SUCCESS;
    }
    match structured_mode(persona, rest) {
        Some(mode) => run_structured(persona, mode),
        None => run_interactive(persona, rest),
    }
}

fn persona(argv0: &str) -> Persona {
    let from_env = std::env::var("SCOUT_TEST_AGENT_PERSONA").ok();
    let name = from_env.unwrap_or_else(|| {
        std::path::Path::new(argv0)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("")
            .to_owned()
    });
    match name.as_str() {
        "claude" => Persona::Claude,
        "codex" => Persona::Codex,
        "gemini" => Persona::Gemini,
        _ => Persona::Plain,
    }
}

fn persona_word(persona: Persona) -> &'static str {
    match persona {
        Persona::Plain => "scout-test-agent",
        Persona::Claude => "claude",
        Persona::Codex => "codex",
        Persona::Gemini => "gemini",
    }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/".to_owned()))
}

/// The credential file the persona's CLI keeps (what logging in creates).
fn credentials(persona: Persona) -> Option<PathBuf> {
    match persona {
        Persona::Plain => None,
        Persona::Claude => Some(home().join(".claude").join(".credentials.json")),
        Persona::Codex => Some(home().join(".codex").join("auth.json")),
        Persona::Gemini => Some(home().join(".gemini").join("oauth_creds.json")),
    }
}

fn logged_in(persona: Persona) -> bool {
    credentials(persona).is_none_or(|path| path.is_file())
}

// ---------------------------------------------------------------------------
// Structured mode

#[derive(Debug)]
struct Structured {
    prompt: String,
    resume: Option<String>,
}

fn structured_mode(persona: Persona, args: &[String]) -> Option<Structured> {
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    let value_after = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|idx| args.get(idx + 1))
            .cloned()
    };
    match persona {
        Persona::Claude if has("-p") || has("--print") => Some(Structured {
            prompt: read_stdin(),
            resume: value_after("--resume"),
        }),
        Persona::Codex if args.first().is_some_and(|arg| arg == "exec") => Some(Structured {
            prompt: read_stdin(),
            resume: value_after("resume"),
        }),
        Persona::Gemini => args
            .iter()
            .find_map(|arg| arg.strip_prefix("--prompt="))
            .map(|prompt| Structured {
                prompt: prompt.to_owned(),
                resume: None,
            }),
        _ => None,
    }
}

fn read_stdin() -> String {
    let mut text = String::new();
    let _ = std::io::stdin().read_to_string(&mut text);
    text
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn run_structured(persona: Persona, run: Structured) -> ExitCode {
    let prompt = run.prompt.trim().to_owned();
    if !logged_in(persona) {
        match persona {
            Persona::Claude => emit(json!({
                "type": "result", "subtype": "success", "is_error": true,
                "result": "Invalid API key · Please run /login", "session_id": "none"
            })),
            Persona::Codex => eprintln!("Error: Not logged in. Run `codex login` first."),
            _ => eprintln!(
                "Please set an Auth method in your settings.json or specify the GEMINI_API_KEY environment variable"
            ),
        }
        return ExitCode::from(1);
    }
    let session_id = run
        .resume
        .clone()
        .unwrap_or_else(|| format!("test-session-{}", std::process::id()));
    let chunks: Vec<String> = if prompt == "hang" {
        std::thread::sleep(Duration::from_secs(600));
        Vec::new()
    } else if let Some(n_lines) = prompt.strip_prefix("slow ").and_then(|n| n.parse().ok()) {
        (1..=n_lines)
            .map(|idx: u32| format!("chunk {idx}\n"))
            .collect()
    } else if prompt == "session?" {
        vec![format!("session {session_id}")]
    } else {
        vec![reply_to(&prompt)]
    };
    let failed = prompt == "fail";
    match persona {
        Persona::Claude => {
            emit(
                json!({"type": "system", "subtype": "init", "session_id": session_id,
                "cwd": std::env::current_dir().unwrap_or_default(), "model": "test-model", "tools": ["Bash"]}),
            );
            if failed {
                emit(
                    json!({"type": "result", "subtype": "error_during_execution", "is_error": true,
                    "result": "the model refused", "session_id": session_id,
                    "total_cost_usd": CLAUDE_COST_USD, "usage": claude_usage()}),
                );
                return ExitCode::from(1);
            }
            emit(
                json!({"type": "assistant", "session_id": session_id, "message": {
                "id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "tool_use", "id": "tu_1", "name": "Bash", "input": {"command": "ls"}}]}}),
            );
            for chunk in &chunks {
                emit(
                    json!({"type": "stream_event", "session_id": session_id, "event": {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": chunk}}}),
                );
                pause_if_slow(&prompt);
            }
            let text: String = chunks.concat();
            emit(
                json!({"type": "assistant", "session_id": session_id, "message": {
                "id": "msg_2", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}]}}),
            );
            emit(
                json!({"type": "result", "subtype": "success", "is_error": false,
                "result": text, "session_id": session_id, "num_turns": 1, "duration_ms": 5,
                "total_cost_usd": CLAUDE_COST_USD, "usage": claude_usage()}),
            );
        }
        Persona::Codex => {
            emit(json!({"type": "thread.started", "thread_id": session_id}));
            emit(json!({"type": "turn.started"}));
            if failed {
                emit(json!({"type": "error", "message": "stream disconnected; retrying"}));
                emit(json!({"type": "turn.failed", "error": {"message": "the model refused"}}));
                return ExitCode::from(1);
            }
            emit(
                json!({"type": "item.started", "item": {"id": "item_0", "type": "command_execution",
                "command": "bash -lc ls", "aggregated_output": "", "status": "in_progress"}}),
            );
            emit(
                json!({"type": "item.completed", "item": {"id": "item_0", "type": "command_execution",
                "command": "bash -lc ls", "aggregated_output": "", "exit_code": 0, "status": "completed"}}),
            );
            emit(
                json!({"type": "item.completed", "item": {"id": "item_1", "type": "agent_message",
                "text": "Looking at the files."}}),
            );
            for _ in &chunks {
                pause_if_slow(&prompt);
            }
            emit(
                json!({"type": "item.completed", "item": {"id": "item_2", "type": "agent_message",
                "text": chunks.concat()}}),
            );
            emit(json!({"type": "turn.completed",
                "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 5}}));
        }
        Persona::Gemini | Persona::Plain => {
            emit(
                json!({"type": "init", "timestamp": "2025-01-01T00:00:00.000Z",
                "session_id": session_id, "model": "test-model"}),
            );
            emit(json!({"type": "message", "role": "user", "content": prompt}));
            if failed {
                emit(json!({"type": "result", "status": "error",
                    "error": {"type": "FatalError", "message": "the model refused"}}));
                return ExitCode::from(1);
            }
            emit(
                json!({"type": "tool_use", "tool_name": "run_shell_command", "tool_id": "t1",
                "parameters": {"command": "ls"}}),
            );
            emit(
                json!({"type": "tool_result", "tool_id": "t1", "status": "success", "output": ""}),
            );
            for chunk in &chunks {
                emit(
                    json!({"type": "message", "role": "assistant", "content": chunk, "delta": true}),
                );
                pause_if_slow(&prompt);
            }
            emit(json!({"type": "result", "status": "success",
                "stats": {"total_tokens": 15, "input_tokens": 10, "output_tokens": 5}}));
        }
    }
    ExitCode::SUCCESS
}

/// What a claude-style run says it cost, in US dollars (as
/// `total_cost_usd`): 4,200 micro-USD.
const CLAUDE_COST_USD: f64 = 0.0042;

/// The `usage` object of claude's result event: fresh input tokens, the
/// two kinds of cache tokens on their own, and output tokens.
fn claude_usage() -> serde_json::Value {
    json!({
        "input_tokens": 3,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 100,
        "output_tokens": 7,
        "service_tier": "standard"
    })
}

fn pause_if_slow(prompt: &str) {
    if prompt.starts_with("slow ") {
        std::thread::sleep(SLOW_LINE_PAUSE);
    }
}

fn reply_to(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 1 {
        format!("you said: {} ({} lines)", lines.join(" / "), lines.len())
    } else {
        format!("you said: {text}")
    }
}

// ---------------------------------------------------------------------------
// Interactive mode

struct Terminal {
    input: Vec<u8>,
    out: std::io::Stdout,
}

impl Terminal {
    fn write(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Reads more input, waiting at most `timeout` (forever when `None`).
    /// `false` at end of input or when the time ran out.
    fn fill(&mut self, timeout: Option<Duration>) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stdin = std::io::stdin();
        if let Some(timeout) = timeout {
            let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(n_ready) if n_ready > 0 => {}
                _ => return false,
            }
        }
        let mut buf = [0u8; 4096];
        match stdin.lock().read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n_read) => {
                self.input.extend_from_slice(&buf[..n_read]);
                true
            }
        }
    }

    /// Asks the terminal where the cursor is; `None` when it does not answer.
    fn query_cursor(&mut self) -> Option<(u32, u32)> {
        self.write("\x1b[6n");
        let deadline = Instant::now() + QUERY_TIMEOUT;
        loop {
            if let Some(start) = find(&self.input, b"\x1b[")
                && let Some(end) = self.input[start..].iter().position(|b| *b == b'R')
            {
                let reply =
                    String::from_utf8_lossy(&self.input[start + 2..start + end]).into_owned();
                self.input.drain(start..=start + end);
                let (row, col) = reply.split_once(';')?;
                return Some((row.parse().ok()?, col.parse().ok()?));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(Some(left)) {
                return None;
            }
        }
    }

    /// Reads one submitted line, with echo, backspace and bracketed paste.
    /// `None` at end of input (or Ctrl-D on an empty line).
    fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let mut pasting = false;
        loop {
            if self.input.is_empty() && !self.fill(None) {
                return None;
            }
            let bytes = std::mem::take(&mut self.input);
            let mut idx = 0;
            while idx < bytes.len() {
                let rest = &bytes[idx..];
                if rest.starts_with(b"\x1b[200~") {
                    pasting = true;
                    idx += 6;
                    continue;
                }
                if rest.starts_with(b"\x1b[201~") {
                    pasting = false;
                    idx += 6;
                    continue;
                }
                let byte = rest[0];
                idx += 1;
                match byte {
                    b'\r' | b'\n' if pasting => {
                        line.push('\n');
                        self.write("\r\n");
                    }
                    b'\r' | b'\n' => {
                        self.input = bytes[idx..].to_vec();
                        self.write("\r\n");
                        return Some(line);
                    }
                    0x7f | 0x08 => self.backspace(&mut line),
                    0x03 => {
                        line.clear();
                        self.write("^C\r\n");
                        self.input = bytes[idx..].to_vec();
                        return Some(String::new());
                    }
                    0x04 if line.is_empty() => return None,
                    // Some other sequence (arrow keys, ...): skip it.
                    0x1b => idx = skip_csi(&bytes, idx),
                    byte if byte >= 0x20 => {
                        // Keep UTF-8 sequences whole.
                        let len = utf8_len(byte);
                        let end = (idx - 1 + len).min(bytes.len());
                        let text = String::from_utf8_lossy(&bytes[idx - 1..end]).into_owned();
                        idx = end;
                        self.write(&text);
                        line.push_str(&text);
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Terminal {
    fn backspace(&mut self, line: &mut String) {
        if line.pop().is_some() {
            self.write("\x08 \x08");
        }
    }
}

/// The index after a CSI sequence whose `ESC` was just before `idx`.
fn skip_csi(bytes: &[u8], mut idx: usize) -> usize {
    if bytes.get(idx) != Some(&b'[') {
        return idx;
    }
    idx += 1;
    while idx < bytes.len() && !(0x40..=0x7e).contains(&bytes[idx]) {
        idx += 1;
    }
    idx + 1
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xf7 => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

struct Screens {
    ready: &'static str,
    prompt: &'static str,
    login: &'static str,
    url: &'static str,
}

fn screens(persona: Persona) -> Screens {
    match persona {
        Persona::Plain => Screens {
            ready: "scout test agent ready",
            prompt: "> ",
            login: "Login required. Open this URL in your browser to log in:",
            url: "https://auth.example.test/oauth/authorize?client=scout-test&code=T35T",
        },
        Persona::Claude => Screens {
            ready: "* Welcome to Claude Code (test)\r\n  /help for help\r\n  ? for shortcuts",
            prompt: "> ",
            login: "Select login method:\r\nBrowser didn't open? Use the url below to sign in:",
            url: "https://claude.ai/oauth/authorize?code=true&client_id=scout-test&state=T35T",
        },
        Persona::Codex => Screens {
            ready: "To get started, describe a task or try one of these commands",
            prompt: "> ",
            login: "Welcome to Codex\r\n> 1. Sign in with ChatGPT\r\n  2. Provide your own API key\r\nFinish signing in via your browser:",
            url: "https://auth.openai.com/oauth/authorize?client_id=scout-test&state=T35T",
        },
        Persona::Gemini => Screens {
            ready: "Type your message or @path/to/file",
            prompt: "> ",
            login: "How would you like to authenticate for this project?\r\n> 1. Login with Google\r\nWaiting for auth... open:",
            url: "https://accounts.google.com/o/oauth2/v2/auth?client_id=scout-test&state=T35T",
        },
    }
}

fn run_interactive(persona: Persona, args: &[String]) -> ExitCode {
    let stdin = std::io::stdin();
    let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
    }
    let mut term = Terminal {
        input: Vec::new(),
        out: std::io::stdout(),
    };
    let code = interact(&mut term, persona, args);
    if let Some(saved) = &saved {
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, saved);
    }
    code
}

fn interact(term: &mut Terminal, persona: Persona, args: &[String]) -> ExitCode {
    let screens = screens(persona);
    // Like a full-screen CLI: no drawing until the terminal says where the
    // cursor is.
    let Some((row, col)) = term.query_cursor() else {
        term.write("error: the terminal did not answer the cursor position query\r\n");
        return ExitCode::from(3);
    };
    term.write("\x1b[?2004h");
    term.write(&format!("cursor at {row};{col}\r\n"));
    let login = args.iter().any(|arg| arg == "--login") || !logged_in(persona);
    if login {
        term.write(&format!("{}\r\n{}\r\n", screens.login, screens.url));
        loop {
            term.write("Paste code here if prompted > ");
            let Some(code) = term.read_line() else {
                return ExitCode::SUCCESS;
            };
            if code.trim() == "ok" {
                if let Some(path) = credentials(persona) {
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = std::fs::write(&path, "{\"test\":true}\n");
                }
                // Like the real CLIs: the login screen is replaced.
                term.write("\x1b[2J\x1b[HLogin successful.\r\n");
                break;
            }
            term.write("That code did not work.\r\n");
        }
    }
    term.write(&format!("{}\r\n", screens.ready));
    loop {
        term.write(screens.prompt);
        let Some(line) = term.read_line() else {
            return ExitCode::SUCCESS;
        };
        let command = line.trim();
        let mut words = command.split_whitespace();
        match (words.next(), words.next()) {
            (None, _) => {}
            (Some("exit"), code) => {
                return ExitCode::from(code.and_then(|code| code.parse().ok()).unwrap_or(0));
            }
            (Some("crash"), _) => {
                term.write("crashing\r\n");
                return ExitCode::from(3);
            }
            (Some("ask"), _) => loop {
                term.write("Allow write to notes.txt? [y/n] ");
                let Some(answer) = term.read_line() else {
                    return ExitCode::SUCCESS;
                };
                match answer.trim() {
                    "y" | "yes" => {
                        term.write("Permission granted: wrote notes.txt\r\n");
                        break;
                    }
                    "n" | "no" => {
                        term.write("Permission denied\r\n");
                        break;
                    }
                    _ => {}
                }
            },
            (Some("slow"), count) => {
                let n_lines: u32 = count.and_then(|n| n.parse().ok()).unwrap_or(5);
                for idx in 1..=n_lines {
                    term.write(&format!("chunk {idx}\r\n"));
                    std::thread::sleep(SLOW_LINE_PAUSE);
                }
            }
            (Some("flood"), count) => {
                let n_kib: usize = count.and_then(|n| n.parse().ok()).unwrap_or(1024);
                let line = format!("{}\r\n", "x".repeat(1022));
                let block = line.repeat(64);
                for _ in 0..n_kib / 64 {
                    term.write(&block);
                }
                term.write("flood done\r\n");
            }
            (Some(mode @ ("spawn-child" | "spawn-child-and-exit")), _) => {
                // A background job that ignores hangups, like `nohup cmd &`,
                // holding the terminal open.
                let child = Command::new("sh")
                    .args(["-c", "trap '' HUP; exec sleep 600"])
                    .stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit())
                    .spawn();
                match child {
                    Ok(child) => {
                        term.write(&format!("child pid {}\r\n", child.id()));
                        if mode == "spawn-child-and-exit" {
                            return ExitCode::SUCCESS;
                        }
                    }
                    Err(err) => term.write(&format!("cannot spawn: {err}\r\n")),
                }
            }
            (Some("query"), _) => match term.query_cursor() {
                Some((row, col)) => term.write(&format!("cursor at {row};{col}\r\n")),
                None => term.write("no answer\r\n"),
            },
            (Some("env"), Some(name)) => {
                let value = std::env::var(name).unwrap_or_else(|_| "(unset)".to_owned());
                term.write(&format!("{name}={value}\r\n"));
            }
            (Some("pwd"), _) => {
                let dir = std::env::current_dir().unwrap_or_default();
                term.write(&format!("{}\r\n", dir.display()));
            }
            _ => {
                let reply = reply_to(&line);
                term.write(&format!("{}\r\n", reply.replace('\n', "\r\n")));
            }
        }
    }
}
