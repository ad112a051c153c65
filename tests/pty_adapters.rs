//! The adapters against samples of what the real CLIs print: Claude Code's
//! `--output-format stream-json`, `codex exec --json` and Gemini CLI's
//! `--output-format stream-json` events, and their interactive screens
//! (ready, busy, a permission question, the login flow with its URL), fed
//! through the real screen model. The CLIs themselves are not installed
//! where the tests run; these samples follow their documented formats.

use scout::adapter::{
    Adapter, AdapterOptions, AgentEnv, AuthStatus, FailureKind, ScreenState, ScreenView,
    StructuredEvent, TurnStyle, TurnUsage, adapter_for,
};
use scout::pty::TermSize;
use scout::pty::screen::Screen;
use scout_mesh::lifecycle::Harness;

fn adapter(harness: Harness) -> Box<dyn Adapter> {
    adapter_for(harness, &AdapterOptions::default()).unwrap()
}

fn events(adapter: &dyn Adapter, jsonl: &str) -> Vec<StructuredEvent> {
    jsonl
        .lines()
        .flat_map(|line| adapter.parse_line(line))
        .collect()
}

/// Draws `screen` (lines separated by `\n`) on a 120x30 terminal and reads
/// it through `adapter`.
fn classify(adapter: &dyn Adapter, screen: &str) -> ScreenState {
    let mut model = Screen::new(
        TermSize {
            rows: 30,
            cols: 120,
        },
        100,
    );
    model.process(screen.replace('\n', "\r\n").as_bytes());
    let text = model.text();
    let cursor_line = model.cursor_line();
    adapter.classify(ScreenView {
        text: &text,
        cursor_line: &cursor_line,
    })
}

const CLAUDE_STREAM: &str = r#"{"type":"system","subtype":"init","cwd":"/home/me/project","session_id":"4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f","tools":["Task","Bash","Glob","Grep","Read","Edit","Write"],"mcp_servers":[],"model":"claude-sonnet-4-5-20250929","permissionMode":"default","apiKeySource":"none","uuid":"0b1c"}
{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"I'll list the files."},{"type":"tool_use","id":"toolu_01","name":"Bash","input":{"command":"ls -la","description":"List files"}}],"stop_reason":null,"usage":{"input_tokens":4,"output_tokens":60}},"parent_tool_use_id":null,"session_id":"4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f"}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01","type":"tool_result","content":"total 8\nREADME.md\nsrc","is_error":false}]},"parent_tool_use_id":null,"session_id":"4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f"}
{"type":"assistant","message":{"id":"msg_02","type":"message","role":"assistant","content":[{"type":"text","text":"The directory contains README.md and src/."}]},"parent_tool_use_id":null,"session_id":"4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f"}
{"type":"result","subtype":"success","is_error":false,"duration_ms":5123,"duration_api_ms":4800,"num_turns":3,"result":"The directory contains README.md and src/.","session_id":"4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f","total_cost_usd":0.0123,"usage":{"input_tokens":4,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":60},"permission_denials":[]}"#;

#[test]
fn claude_stream_json() {
    let claude = adapter(Harness::Claude);
    assert_eq!(claude.turn_style(), TurnStyle::Structured);
    assert_eq!(
        events(claude.as_ref(), CLAUDE_STREAM),
        vec![
            StructuredEvent::Session("4f6c2b9e-0d51-4c1e-9a57-1a2b3c4d5e6f".to_owned()),
            StructuredEvent::Message("I'll list the files.".to_owned()),
            StructuredEvent::Tool("Bash: ls -la".to_owned()),
            StructuredEvent::Message("The directory contains README.md and src/.".to_owned()),
            // `usage.input_tokens` excludes the cached part; Scout's count
            // includes it.
            StructuredEvent::Usage(TurnUsage {
                input_tokens: 2104,
                output_tokens: 60,
                cached_tokens: 2000,
                cost_micro_usd: Some(12_300),
            }),
            StructuredEvent::Completed {
                result: Some("The directory contains README.md and src/.".to_owned())
            },
        ]
    );
    let partial = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"The dir"}},"session_id":"s"}"#;
    assert_eq!(
        claude.parse_line(partial),
        vec![StructuredEvent::TextDelta("The dir".to_owned())]
    );
    let max_turns = r#"{"type":"result","subtype":"error_max_turns","is_error":true,"duration_ms":9000,"num_turns":10,"session_id":"s"}"#;
    assert_eq!(
        claude.parse_line(max_turns),
        vec![StructuredEvent::Failed {
            message: "error_max_turns".to_owned(),
            kind: FailureKind::Harness
        }]
    );
    let logged_out = r#"{"type":"result","subtype":"success","is_error":true,"duration_ms":120,"num_turns":1,"result":"Invalid API key · Please run /login","session_id":"s"}"#;
    assert_eq!(
        claude.parse_line(logged_out),
        vec![StructuredEvent::Failed {
            message: "Invalid API key · Please run /login".to_owned(),
            kind: FailureKind::AuthRequired
        }]
    );
    assert!(claude.parse_line("not json at all").is_empty());
    assert!(claude.parse_line(r#"{"type":"something_new"}"#).is_empty());

    let invocation = claude.invocation("-rf everything", Some("4f6c")).unwrap();
    assert_eq!(
        invocation.argv,
        [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-mode",
            "acceptEdits",
            "--resume",
            "4f6c"
        ]
    );
    // The prompt travels on stdin, so a leading dash is never a flag.
    assert_eq!(invocation.stdin.as_deref(), Some("-rf everything"));
}

const CODEX_JSONL: &str = r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Listing files**"}}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"README.md\nsrc\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":[{"path":"src/main.rs","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"The directory contains README.md and src."}}
{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}"#;

#[test]
fn codex_exec_json() {
    let codex = adapter(Harness::Codex);
    assert_eq!(
        events(codex.as_ref(), CODEX_JSONL),
        vec![
            StructuredEvent::Session("0199a213-81c0-7800-8aa1-bbab2a035a53".to_owned()),
            StructuredEvent::Tool("$ bash -lc ls".to_owned()),
            StructuredEvent::Tool("edit src/main.rs".to_owned()),
            StructuredEvent::Message("The directory contains README.md and src.".to_owned()),
            StructuredEvent::Usage(TurnUsage {
                input_tokens: 24763,
                output_tokens: 122,
                cached_tokens: 24448,
                cost_micro_usd: None,
            }),
            StructuredEvent::Completed { result: None },
        ]
    );
    let failing = r#"{"type":"error","message":"stream error: connection reset; retrying 1/5 in 200ms"}
{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: Missing bearer authentication"}}"#;
    assert_eq!(
        events(codex.as_ref(), failing),
        vec![
            StructuredEvent::Notice(
                "stream error: connection reset; retrying 1/5 in 200ms".to_owned()
            ),
            StructuredEvent::Failed {
                message: "unexpected status 401 Unauthorized: Missing bearer authentication"
                    .to_owned(),
                kind: FailureKind::AuthRequired
            },
        ]
    );
    let invocation = codex.invocation("fix it", Some("0199a213")).unwrap();
    assert_eq!(
        invocation.argv,
        [
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "resume",
            "0199a213",
            "-"
        ]
    );
    assert_eq!(invocation.stdin.as_deref(), Some("fix it"));
}

const GEMINI_JSONL: &str = r#"{"type":"init","timestamp":"2025-10-10T12:00:00.000Z","session_id":"c5a3f1e2","model":"gemini-2.5-pro"}
{"type":"message","timestamp":"2025-10-10T12:00:00.100Z","role":"user","content":"List the files"}
{"type":"tool_use","timestamp":"2025-10-10T12:00:01.000Z","tool_name":"run_shell_command","tool_id":"run_shell_command-1","parameters":{"command":"ls"}}
{"type":"tool_result","timestamp":"2025-10-10T12:00:01.200Z","tool_id":"run_shell_command-1","status":"success","output":"README.md\nsrc"}
{"type":"message","timestamp":"2025-10-10T12:00:02.000Z","role":"assistant","content":"The directory contains ","delta":true}
{"type":"message","timestamp":"2025-10-10T12:00:02.100Z","role":"assistant","content":"README.md and src.","delta":true}
{"type":"result","timestamp":"2025-10-10T12:00:02.200Z","status":"success","stats":{"total_tokens":250,"input_tokens":200,"output_tokens":50,"duration_ms":2200,"tool_calls":1}}"#;

#[test]
fn gemini_stream_json() {
    let gemini = adapter(Harness::Gemini);
    assert_eq!(
        events(gemini.as_ref(), GEMINI_JSONL),
        vec![
            StructuredEvent::Session("c5a3f1e2".to_owned()),
            StructuredEvent::Tool("run_shell_command: ls".to_owned()),
            StructuredEvent::TextDelta("The directory contains ".to_owned()),
            StructuredEvent::TextDelta("README.md and src.".to_owned()),
            StructuredEvent::Usage(TurnUsage {
                input_tokens: 200,
                output_tokens: 50,
                cached_tokens: 0,
                cost_micro_usd: None,
            }),
            StructuredEvent::Completed { result: None },
        ]
    );
    let failed = r#"{"type":"result","timestamp":"2025-10-10T12:00:00.500Z","status":"error","error":{"type":"FatalAuthenticationError","message":"API key not valid. Please pass a valid API key."},"stats":{"total_tokens":0}}"#;
    assert_eq!(
        gemini.parse_line(failed),
        vec![StructuredEvent::Failed {
            message: "API key not valid. Please pass a valid API key.".to_owned(),
            kind: FailureKind::AuthRequired
        }]
    );
    let invocation = gemini.invocation("-v please", Some("c5a3f1e2")).unwrap();
    assert_eq!(
        invocation.argv,
        [
            "gemini",
            "--skip-trust",
            "--approval-mode",
            "yolo",
            "--output-format",
            "stream-json",
            "--resume",
            "c5a3f1e2",
            "--prompt=-v please"
        ]
    );
}

const CLAUDE_READY: &str = "\
╭───────────────────────────────────────────────────╮
│ ✻ Welcome to Claude Code!                         │
│                                                   │
│   /help for help, /status for your current setup  │
│                                                   │
│   cwd: /home/me/project                           │
╰───────────────────────────────────────────────────╯

╭──────────────────────────────────────────────────────────╮
│ >                                                        │
╰──────────────────────────────────────────────────────────╯
  ? for shortcuts";

const CLAUDE_BUSY: &str = "\
> list the files

✻ Pondering… (3s · ↑ 120 tokens · esc to interrupt)

╭──────────────────────────────────────────────────────────╮
│ >                                                        │
╰──────────────────────────────────────────────────────────╯";

const CLAUDE_QUESTION: &str = "\
╭──────────────────────────────────────────────────────────╮
│ Bash command                                             │
│                                                          │
│   rm -rf build                                           │
│   Remove the build directory                             │
│                                                          │
│ Do you want to proceed?                                  │
│ ❯ 1. Yes                                                 │
│   2. Yes, and don't ask again for rm commands            │
│   3. No, and tell Claude what to do differently (esc)    │
╰──────────────────────────────────────────────────────────╯";

/// The login screen with the URL a terminal without a browser shows: long
/// enough to wrap on a 120-column terminal.
const CLAUDE_LOGIN: &str = "\
 Browser didn't open? Use the url below to sign in:

https://claude.ai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e&response_type=code&redirect_uri=https%3A%2F%2Fconsole.anthropic.com%2Foauth%2Fcode%2Fcallback&scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference&code_challenge=Zm9vYmFy&code_challenge_method=S256&state=c3RhdGU

 Paste code here if prompted > ";

#[test]
fn claude_screens() {
    let claude = adapter(Harness::Claude);
    assert_eq!(classify(claude.as_ref(), CLAUDE_READY), ScreenState::Ready);
    assert_eq!(classify(claude.as_ref(), CLAUDE_BUSY), ScreenState::Busy);
    assert_eq!(
        classify(claude.as_ref(), CLAUDE_QUESTION),
        ScreenState::Question("Do you want to proceed?".to_owned())
    );
    let url = CLAUDE_LOGIN.lines().nth(2).unwrap();
    assert!(url.len() > 120);
    assert_eq!(
        classify(claude.as_ref(), CLAUDE_LOGIN),
        ScreenState::LoginRequired {
            url: Some(url.to_owned())
        }
    );
    assert_eq!(
        classify(
            claude.as_ref(),
            " Select login method:\n\n ❯ 1. Claude account with subscription"
        ),
        ScreenState::LoginRequired { url: None }
    );
    assert_eq!(classify(claude.as_ref(), "Loading…"), ScreenState::Starting);
}

#[test]
fn codex_screens() {
    let codex = adapter(Harness::Codex);
    let ready = "\
>_ OpenAI Codex (v0.46.0)

 model:     gpt-5-codex   /model to change
 directory: ~/project

 To get started, describe a task or try one of these commands:

 /init - create an AGENTS.md file with instructions for Codex

▌ Ask Codex to do anything
 ⏎ send   ⌃J newline   ⌃T transcript   ⌃C quit";
    assert_eq!(classify(codex.as_ref(), ready), ScreenState::Ready);
    let busy = "• Working (12s • Esc to interrupt)\n\n▌ Ask Codex to do anything";
    assert_eq!(classify(codex.as_ref(), busy), ScreenState::Busy);
    let question = "\
 Would you like to run the following command?

 $ rm -rf build

 ▌ 1. Yes, proceed
   2. No, and tell Codex what to do differently";
    assert_eq!(
        classify(codex.as_ref(), question),
        ScreenState::Question("Would you like to run the following command?".to_owned())
    );
    // Codex 0.171's trust dialog, as the real TUI draws it.
    let trust = "\
  Folder access
  /home/me/project

  Trust this folder? Codex can read, edit, and run files here, subject to your permission settings. Folder settings
  can run code automatically, even without a model request. Continue only if you trust these files. Your trust
  decision will be saved.

› 1. Trust and continue
  2. Back to Agent Command Center

  enter continue · esc back";
    assert!(matches!(
        classify(codex.as_ref(), trust),
        ScreenState::Question(question) if question.starts_with("Trust this folder?")
    ));
    let login = "\
  Welcome to Codex, OpenAI's command-line coding agent

  Finish signing in via your browser

  If the link doesn't open automatically, open the following link to authenticate:

  https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkXaXp7hrann&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&state=abc";
    assert_eq!(
        classify(codex.as_ref(), login),
        ScreenState::LoginRequired {
            url: Some("https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkXaXp7hrann&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&state=abc".to_owned())
        }
    );
}

#[test]
fn gemini_screens() {
    let gemini = adapter(Harness::Gemini);
    let ready = "\
Tips for getting started:
1. Ask questions, edit files, or run commands.

╭──────────────────────────────────────────────────────────╮
│ >   Type your message or @path/to/file                   │
╰──────────────────────────────────────────────────────────╯
~/project          no sandbox          gemini-2.5-pro (100% context left)";
    assert_eq!(classify(gemini.as_ref(), ready), ScreenState::Ready);
    let busy = "⠏ Reading files (esc to cancel, 4s)\n\n│ >   Type your message or @path/to/file │";
    assert_eq!(classify(gemini.as_ref(), busy), ScreenState::Busy);
    let question = "\
╭──────────────────────────────────────────────╮
│ ?  Shell rm -rf build                        │
│                                              │
│ Allow execution of: 'rm'?                    │
│                                              │
│ ● 1. Yes, allow once                         │
│   3. No, suggest changes (esc)               │
╰──────────────────────────────────────────────╯";
    assert_eq!(
        classify(gemini.as_ref(), question),
        ScreenState::Question("Allow execution of: 'rm'?".to_owned())
    );
    let login = "\
Waiting for auth... (Press ESC or CTRL+C to cancel)

Please visit the following URL to authorize the application:

https://accounts.google.com/o/oauth2/v2/auth?redirect_uri=http%3A%2F%2Flocalhost%3A41917%2Foauth2callback&access_type=offline&scope=openid&state=abc&response_type=code&client_id=681255809395";
    match classify(gemini.as_ref(), login) {
        ScreenState::LoginRequired { url: Some(url) } => {
            assert!(
                url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
                "{url}"
            );
            assert!(url.ends_with("client_id=681255809395"), "{url}");
        }
        other => panic!("expected a login, got {other:?}"),
    }
}

#[test]
fn auth_status_comes_from_the_agents_environment() {
    let home = tempfile::tempdir().unwrap();
    let env = AgentEnv::new(&[
        ("HOME".to_owned(), home.path().display().to_string()),
        ("ANTHROPIC_API_KEY".to_owned(), String::new()),
        ("OPENAI_API_KEY".to_owned(), String::new()),
        ("CODEX_API_KEY".to_owned(), String::new()),
        ("GEMINI_API_KEY".to_owned(), String::new()),
        ("GOOGLE_API_KEY".to_owned(), String::new()),
        ("CODEX_HOME".to_owned(), String::new()),
        ("CLAUDE_CONFIG_DIR".to_owned(), String::new()),
    ]);
    // Empty overrides count as unset, so the broker's own keys do not leak
    // into this check.
    let claude = adapter(Harness::Claude);
    let codex = adapter(Harness::Codex);
    let gemini = adapter(Harness::Gemini);
    if std::env::var_os("ANTHROPIC_AUTH_TOKEN").is_none()
        && std::env::var_os("CLAUDE_CODE_OAUTH_TOKEN").is_none()
    {
        assert_eq!(claude.auth_status(&env), AuthStatus::LoggedOut);
    }
    assert_eq!(codex.auth_status(&env), AuthStatus::LoggedOut);
    std::fs::create_dir_all(home.path().join(".claude")).unwrap();
    std::fs::write(home.path().join(".claude/.credentials.json"), "{}").unwrap();
    std::fs::create_dir_all(home.path().join(".codex")).unwrap();
    std::fs::write(home.path().join(".codex/auth.json"), "{}").unwrap();
    std::fs::create_dir_all(home.path().join(".gemini")).unwrap();
    std::fs::write(home.path().join(".gemini/oauth_creds.json"), "{}").unwrap();
    assert_eq!(claude.auth_status(&env), AuthStatus::LoggedIn);
    assert_eq!(codex.auth_status(&env), AuthStatus::LoggedIn);
    assert_eq!(gemini.auth_status(&env), AuthStatus::LoggedIn);
    let with_key = AgentEnv::new(&[("OPENAI_API_KEY".to_owned(), "sk-test".to_owned())]);
    assert_eq!(codex.auth_status(&with_key), AuthStatus::LoggedIn);
    assert_eq!(
        adapter_for(
            Harness::Command,
            &AdapterOptions {
                command: Some(vec!["bash".to_owned()]),
                ..AdapterOptions::default()
            }
        )
        .unwrap()
        .auth_status(&env),
        AuthStatus::NotApplicable
    );
}

#[test]
fn preflight_finds_the_cli_its_version_and_login() {
    let dir = tempfile::tempdir().unwrap();
    let agent =
        std::path::Path::new(env!("CARGO_BIN_EXE_scout")).with_file_name("scout-test-agent");
    assert!(agent.is_file(), "run `cargo build -p scout-test-agent`");
    std::os::unix::fs::symlink(&agent, dir.path().join("gemini")).unwrap();
    let env = AgentEnv::new(&[
        ("PATH".to_owned(), dir.path().display().to_string()),
        ("HOME".to_owned(), dir.path().display().to_string()),
        ("GEMINI_API_KEY".to_owned(), "test-key".to_owned()),
    ]);
    let gemini = adapter(Harness::Gemini);
    let found = scout::adapter::preflight(gemini.as_ref(), &env);
    assert_eq!(found.path, Some(dir.path().join("gemini")));
    assert_eq!(
        found.version.as_deref(),
        Some("gemini 0.0.0-test (scout-test-agent)")
    );
    assert_eq!(found.auth, AuthStatus::LoggedIn);
    let missing = scout::adapter::preflight(adapter(Harness::Codex).as_ref(), &env);
    assert_eq!(missing.path, None);
}
