//! `scout attach @agent`: the agent's terminal in this one, through the
//! local broker's terminal WebSocket (`/ws/agents/{id}/terminal`).
//!
//! The name resolves as `scout send` resolves it (an exact runtime agent id
//! or name first, then the mesh's instances); an instance owned by another
//! broker is refused with `AGENT_REMOTE` and the owner's node, since attach
//! works on the owner's machine only. The terminal goes raw; keys and
//! resizes (SIGWINCH) are forwarded, output is printed, and
//! [`DETACH_KEY_NAME`] detaches. `--follow` watches without sending keys
//! (the default while the agent is busy, e.g. with a routed turn, whose
//! transcript the broker shows); Ctrl-C detaches too while watching. `--take` holds the agent for the person
//! (its CLI resumed on the conversation's CLI session, routed turns
//! waiting) and detaching hands it back; `--release` hands back a hold
//! left behind.
//!
//! Every exit path restores the terminal: the raw mode is a guard dropped
//! on return or unwind, and SIGTERM, SIGHUP, SIGINT and SIGQUIT are taken
//! by a thread of their own (they are blocked elsewhere), which ends the
//! session the same way a detach does.

use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};
use scout_mesh::lifecycle::EndpointState;
use scout_mesh::names::AgentName;
use scout_mesh::resolve::{self, Candidate};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use super::Context;
use super::client::BrokerClient;
use super::client::ClientError;
use crate::api::AgentList;

/// The key that detaches: Ctrl-] (as telnet), which no agent CLI uses.
pub const DETACH_KEY: u8 = 0x1d;

/// How [`DETACH_KEY`] is written for people.
pub const DETACH_KEY_NAME: &str = "Ctrl-]";

/// Ctrl-C, which also detaches while watching (keys go nowhere then, and
/// it is the key a person tries first to leave a program).
const WATCH_DETACH_KEY: u8 = 0x03;

/// How long one read of the WebSocket waits before the loop looks at keys,
/// resizes and signals again: short enough that typing feels immediate.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Key reads and signals queued for the loop. The reader waits when the
/// loop is behind, so a paste is slowed down, never dropped or buffered
/// without bound.
const INPUT_QUEUE_MAX: usize = 64;

/// Bytes read from the keyboard at once.
const KEY_READ_BYTES: usize = 4096;

/// What the user's terminal gets on the way out: the modes an agent's CLI
/// may have turned on through this terminal (alternate screen, bracketed
/// paste, mouse reporting, hidden cursor, colours) turned off again.
const TERMINAL_RESTORE: &str =
    "\x1b[?1049l\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[0m\x1b[?25h\r\n";

/// Flags of `scout attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The agent: `@fabric`, `@fabric@devbox#main`, or a runtime agent id or
    /// name (`agent-…`).
    pub target: String,
    /// Watch only: keys are not sent (the default while the agent is busy).
    #[arg(long, conflicts_with_all = ["take", "release"])]
    pub follow: bool,
    /// Hold the agent: its CLI is resumed on the conversation's CLI session
    /// and routed turns wait until you detach.
    #[arg(long, conflicts_with = "release")]
    pub take: bool,
    /// With `--take`: the Scout conversation to take over (default: the
    /// agent's most recent one).
    #[arg(long, value_name = "ID", requires = "take")]
    pub conversation: Option<String>,
    /// Hand back a hold (`--take`) left behind, without attaching.
    #[arg(long)]
    pub release: bool,
}

/// Why an agent cannot be attached here.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The agent is this broker's, but its session has not started.
    #[error(
        "AGENT_NOT_RUNNING: {instance} has no running session on this broker yet; it starts with its first turn (`scout send {instance} \"…\"`), then attach again"
    )]
    NotRunning {
        /// The instance.
        instance: String,
    },
    /// The agent lives on another broker.
    #[error(
        "AGENT_REMOTE: {instance} is owned by node `{node}`; attach works on the owner's machine: run `scout --home <its home> attach {instance}` there"
    )]
    Remote {
        /// The instance.
        instance: String,
        /// The node that owns it.
        node: String,
    },
}

impl AttachError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AttachError::NotRunning { .. } => "AGENT_NOT_RUNNING",
            AttachError::Remote { .. } => "AGENT_REMOTE",
        }
    }
}

/// One runtime agent, as `GET /agents` shows it (the fields used here).
#[derive(Debug, Deserialize)]
struct RuntimeAgent {
    id: String,
    name: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct RuntimeAgents {
    agents: Vec<RuntimeAgent>,
}

/// Runs `scout attach`.
pub fn run(args: AttachArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let client = running(context)?;
    let agent = find_session(&client, &args.target)?;
    if args.release {
        let released: serde_json::Value = client
            .post(&format!("/agents/{}/release", agent.id), &json!({}))
            .map_err(api_error)?;
        context.printer.emit(&released, || {
            format!(
                "released {} ({}); routed turns continue\n",
                agent.name, agent.id
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.take {
        let by = std::env::var("USER").unwrap_or_else(|_| "a person".to_owned());
        let taken: serde_json::Value = client
            .post(
                &format!("/agents/{}/take", agent.id),
                &json!({ "by": format!("{by} (scout attach)"), "conversation": args.conversation }),
            )
            .map_err(api_error)?;
        let resumed = taken["held"]["cliSession"].as_str().map_or_else(
            || "its CLI as it runs (no CLI session to resume)".to_owned(),
            |id| format!("CLI session {id}"),
        );
        eprintln!(
            "holding {} ({}) on {resumed}; routed turns wait until you detach with {DETACH_KEY_NAME}",
            agent.name, agent.id
        );
        let attached = attach(&client, &agent, Mode::Interactive);
        let released = client
            .post::<_, serde_json::Value>(&format!("/agents/{}/release", agent.id), &json!({}));
        let code = attached?;
        match released {
            Ok(_) => eprintln!("released {}; routed turns continue", agent.name),
            // The agent stopped while held (its CLI exited): a stopped
            // session holds nothing, so there is nothing to hand back.
            Err(ClientError::Api { code, .. })
                if code == "AGENT_NOT_HELD" || code == "AGENT_NOT_FOUND" =>
            {
                eprintln!("{} is no longer held", agent.name);
            }
            Err(err) => return Err(api_error(err)),
        }
        return Ok(code);
    }
    let mode = if args.follow || agent.status == "busy" {
        Mode::Follow
    } else {
        Mode::Interactive
    };
    attach(&client, &agent, mode)
}

fn running(context: &Context) -> anyhow::Result<BrokerClient> {
    BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })
}

fn api_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api { code, message, .. } => anyhow::anyhow!("{code}: {message}"),
        other => other.into(),
    }
}

/// The running session of `target`: a runtime agent id or name, else the
/// instance the mesh resolves the name to, which must be this broker's.
fn find_session(client: &BrokerClient, target: &str) -> anyhow::Result<RuntimeAgent> {
    let runtime: RuntimeAgents = client.get("/agents").map_err(api_error)?;
    let running = |agent: &RuntimeAgent| !matches!(agent.status.as_str(), "stopped" | "error");
    let mut agents: Vec<RuntimeAgent> = runtime.agents.into_iter().filter(running).collect();
    if let Some(idx) = agents
        .iter()
        .position(|agent| agent.id == target || agent.name == target)
    {
        return Ok(agents.swap_remove(idx));
    }
    let query = AgentName::parse_lenient(target)?;
    let list: AgentList = client.get("/v1/agents").map_err(api_error)?;
    let candidates: Vec<Candidate> = list
        .instances
        .iter()
        .filter_map(|instance| {
            Some(Candidate {
                name: AgentName::parse(&instance.name).ok()?,
                is_local: instance.local,
                state: instance.state.parse().unwrap_or(EndpointState::Registered),
                active_flights: instance.active_flights,
                // Attaching needs a running instance, never a new one.
                worktrees: false,
            })
        })
        .collect();
    let resolution = resolve::resolve(&query, &candidates)?;
    let instance = resolution.chosen.to_string();
    let chosen = candidates
        .iter()
        .find(|candidate| candidate.name == resolution.chosen);
    if chosen.is_some_and(|candidate| !candidate.is_local) {
        let node = resolution
            .chosen
            .node()
            .map_or_else(|| "?".to_owned(), ToString::to_string);
        return Err(AttachError::Remote { instance, node }.into());
    }
    match agents.iter().position(|agent| agent.name == instance) {
        Some(idx) => Ok(agents.swap_remove(idx)),
        None => Err(AttachError::NotRunning { instance }.into()),
    }
}

/// Whether keys go to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Interactive,
    Follow,
}

/// What the loop hears from the keyboard and signal threads.
#[derive(Debug)]
enum Input {
    Keys(Vec<u8>),
    Detach,
    Resized,
    Signalled(Signal),
}

/// How an attach ended.
#[derive(Debug)]
enum Ending {
    Detached,
    Signalled(Signal),
    AgentExited,
    Closed,
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn attach(client: &BrokerClient, agent: &RuntimeAgent, mode: Mode) -> anyhow::Result<ExitCode> {
    let (url, authorization) = client.websocket(&format!("/ws/agents/{}/terminal", agent.id));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", authorization.parse()?);
    let (mut socket, _) = tungstenite::connect(request)
        .map_err(|err| anyhow::anyhow!("cannot open the agent's terminal: {err}"))?;
    if let MaybeTlsStream::Plain(stream) = socket.get_mut() {
        stream.set_read_timeout(Some(POLL_INTERVAL))?;
    }
    let how = if mode == Mode::Follow {
        format!("watching, keys are not sent; detach with {DETACH_KEY_NAME} or Ctrl-C")
    } else {
        format!("detach with {DETACH_KEY_NAME}")
    };
    eprintln!("attached to {} ({}), {how}", agent.name, agent.id);
    // The agent's screen is drawn over this terminal's: push what it shows
    // (the lines above included) up into its scrollback first.
    if let Some((_, rows)) = terminal_size() {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all("\n".repeat(usize::from(rows)).as_bytes());
        let _ = stdout.flush();
    }
    // Signals go to the signal thread only; every thread started from here
    // on inherits the mask.
    let signals = handled_signals();
    signals.thread_block()?;
    let (inputs_tx, inputs) = sync_channel(INPUT_QUEUE_MAX);
    spawn_signal_thread(signals, inputs_tx.clone())?;
    let raw = RawMode::enter()?;
    spawn_key_thread(inputs_tx, mode)?;
    let ending = pump(&mut socket, &inputs, mode);
    drop(raw);
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(TERMINAL_RESTORE.as_bytes());
    let _ = stdout.flush();
    let _ = socket.close(None);
    match ending? {
        Ending::Detached => eprintln!("detached from {}", agent.name),
        Ending::Signalled(signal) => eprintln!("detached from {} ({signal})", agent.name),
        Ending::AgentExited => eprintln!("{} stopped", agent.name),
        Ending::Closed => eprintln!("the broker closed the terminal of {}", agent.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves bytes both ways until a detach, a signal or the end of the agent.
fn pump(socket: &mut Socket, inputs: &Receiver<Input>, mode: Mode) -> anyhow::Result<Ending> {
    let mut stdout = std::io::stdout();
    if mode == Mode::Interactive {
        send_size(socket)?;
    }
    loop {
        while let Ok(input) = inputs.try_recv() {
            match input {
                Input::Detach => return Ok(Ending::Detached),
                Input::Signalled(signal) => return Ok(Ending::Signalled(signal)),
                Input::Keys(keys) if mode == Mode::Interactive => {
                    socket.send(Message::Binary(keys.into()))?;
                }
                Input::Resized if mode == Mode::Interactive => send_size(socket)?,
                Input::Keys(_) | Input::Resized => {}
            }
        }
        let message = match socket.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(Ending::Closed);
            }
            Err(err) => return Err(anyhow::anyhow!("the agent's terminal failed: {err}")),
        };
        match message {
            Message::Text(text) => match control_type(&text).as_deref() {
                Some("exit") => return Ok(Ending::AgentExited),
                Some(_) => {}
                None => {
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                }
            },
            Message::Binary(bytes) => {
                stdout.write_all(&bytes)?;
                stdout.flush()?;
            }
            Message::Close(_) => return Ok(Ending::Closed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// The `type` of one of the broker's JSON control frames (`connected`,
/// `lagged`, `exit`), or `None` for terminal output.
fn control_type(text: &str) -> Option<String> {
    if !text.starts_with("{\"type\":") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let kind = value["type"].as_str()?;
    matches!(kind, "connected" | "lagged" | "exit").then(|| kind.to_owned())
}

fn send_size(socket: &mut Socket) -> anyhow::Result<()> {
    if let Some((cols, rows)) = terminal_size() {
        let resize = json!({ "type": "resize", "cols": cols, "rows": rows });
        socket.send(Message::Text(resize.to_string().into()))?;
    }
    Ok(())
}

/// The user's terminal size (columns, rows), when stdout is a terminal.
#[allow(unsafe_code)]
fn terminal_size() -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct passed, which
    // lives for the whole call; the descriptor is this process's stdout.
    let done = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (done == 0 && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

fn handled_signals() -> SigSet {
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGWINCH,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ] {
        signals.add(signal);
    }
    signals
}

fn spawn_signal_thread(signals: SigSet, inputs: SyncSender<Input>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("attach-signals".to_owned())
        .spawn(move || {
            while let Ok(signal) = signals.wait() {
                let input = if signal == Signal::SIGWINCH {
                    Input::Resized
                } else {
                    Input::Signalled(signal)
                };
                match inputs.try_send(input) {
                    // A resize behind a full queue is covered by the next.
                    Ok(()) | Err(TrySendError::Full(Input::Resized)) => {}
                    Err(TrySendError::Full(input)) => {
                        if inputs.send(input).is_err() {
                            return;
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        })?;
    Ok(())
}

/// Reads keys; everything before [`DETACH_KEY`] (or, while watching,
/// [`WATCH_DETACH_KEY`]) is sent, the key itself detaches. The end of input
/// stops reading (a watcher without a keyboard keeps watching).
fn spawn_key_thread(inputs: SyncSender<Input>, mode: Mode) -> std::io::Result<()> {
    let is_detach =
        move |key: u8| key == DETACH_KEY || (mode == Mode::Follow && key == WATCH_DETACH_KEY);
    std::thread::Builder::new()
        .name("attach-keys".to_owned())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; KEY_READ_BYTES];
            loop {
                let n_read = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n_read) => n_read,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let keys = &buf[..n_read];
                let (before, detach) = match keys.iter().position(|key| is_detach(*key)) {
                    Some(idx) => (&keys[..idx], true),
                    None => (keys, false),
                };
                if !before.is_empty() && inputs.send(Input::Keys(before.to_vec())).is_err() {
                    return;
                }
                if detach {
                    let _ = inputs.send(Input::Detach);
                    return;
                }
            }
        })?;
    Ok(())
}

/// The terminal in raw mode while this lives; restored when dropped.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode { saved: None });
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved: Some(saved) })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSAFLUSH, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_are_told_from_output() {
        assert_eq!(
            control_type(r#"{"type":"exit","agentId":"a"}"#).as_deref(),
            Some("exit")
        );
        assert_eq!(
            control_type(r#"{"type":"connected"}"#).as_deref(),
            Some("connected")
        );
        assert_eq!(control_type(r#"{"type":"mine"}"#), None);
        assert_eq!(control_type("hello {\"type\":\"exit\"}"), None);
    }
}
