//! A program on a terminal held by a holder process (`crate::holder`):
//! the same surface as a program on a terminal of the broker's own
//! ([`PtyProcess`]: input queue, numbered output through the screen model,
//! resize, exit watch, pid, terminate), over the holder's socket.
//!
//! After a broker restart the screen model is rebuilt by replaying the
//! holder's bounded scrollback (raw output) into a fresh one; the replies
//! the replay would produce to old terminal queries are dropped, since the
//! program asked them long ago.
//!
//! When the connection ends without the holder reporting the exit, the
//! holder is gone: the program counts as ended with [`HOLDER_LOST`].

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use scout_mesh::lifecycle::Harness;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::process::{
    ExitInfo, INPUT_CHUNKS_MAX, OUTPUT_CHUNKS_MAX, OutputChunk, PtyProcess, READ_CHUNKS_MAX,
    SpawnError, SpawnSpec, Terminal,
};
use super::screen::{Screen, TermSize};
use crate::adapter::{AdapterOptions, ScoutMcp};
use crate::holder::wire::{self, ExitMessage, FrameKind};
use crate::holder::{self, HolderError, HolderSpec};

/// The "signal" of a program whose holder vanished without reporting its
/// exit: the session is lost and its turn fails with this message.
pub const HOLDER_LOST: &str = "holder lost";

/// The broker's end of a held terminal.
pub(super) struct HeldTerminal {
    writer: Arc<Mutex<UnixStream>>,
    /// The holder's process id.
    pub holder_pid: u32,
    /// When the holder started, Unix ms.
    pub started_at_ms: u64,
    /// Where in all the program has written the first byte this broker
    /// receives (its replay's) lies; `None` from an older holder.
    pub output_start: Option<u64>,
}

impl HeldTerminal {
    pub(super) fn resize(&self, size: TermSize) -> Result<(), String> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| "the terminal is unavailable".to_owned())?;
        wire::write_frame(
            &mut *writer,
            FrameKind::Resize,
            &wire::resize_payload(size.rows, size.cols),
        )
        .map_err(|err| format!("the holder is gone: {err}"))
    }
}

/// What a session was started with, kept in its holder's directory
/// (`session.json`) so a restarted broker can rebuild the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its harness.
    pub harness: Harness,
    /// Working directory.
    pub workdir: PathBuf,
    /// Environment overrides (the session marker included).
    pub env: Vec<(String, String)>,
    /// Broker variables not passed on.
    pub env_remove: Vec<String>,
    /// Terminal size at spawn.
    pub size: TermSize,
    /// The session marker.
    pub marker: String,
    /// When it was spawned, Unix ms.
    pub created_at_ms: u64,
    /// Program and arguments on the terminal.
    pub argv: Vec<String>,
    /// The adapter options.
    pub options: StoredOptions,
}

/// [`AdapterOptions`] as stored in a [`SessionRecord`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredOptions {
    /// See [`AdapterOptions::command`].
    pub command: Option<Vec<String>>,
    /// See [`AdapterOptions::ready_pattern`].
    pub ready_pattern: Option<String>,
    /// See [`AdapterOptions::prompt_pattern`].
    pub prompt_pattern: Option<String>,
    /// See [`AdapterOptions::question_pattern`].
    pub question_pattern: Option<String>,
    /// The scout binary of [`AdapterOptions::mcp`].
    pub mcp_command: Option<String>,
}

impl StoredOptions {
    /// The stored form of `options`.
    pub fn of(options: &AdapterOptions) -> StoredOptions {
        StoredOptions {
            command: options.command.clone(),
            ready_pattern: options.ready_pattern.clone(),
            prompt_pattern: options.prompt_pattern.clone(),
            question_pattern: options.question_pattern.clone(),
            mcp_command: options.mcp.as_ref().map(|mcp| mcp.command.clone()),
        }
    }

    /// The options again.
    pub fn options(&self) -> AdapterOptions {
        AdapterOptions {
            command: self.command.clone(),
            ready_pattern: self.ready_pattern.clone(),
            prompt_pattern: self.prompt_pattern.clone(),
            question_pattern: self.question_pattern.clone(),
            mcp: self.mcp_command.clone().map(|command| ScoutMcp { command }),
        }
    }
}

/// Where a session's holder lives and what to record for a restart.
#[derive(Debug, Clone)]
pub struct HolderPlacement {
    /// The holders' directory (`HOME/holders`).
    pub root: PathBuf,
    /// The held structured turns' directory (`HOME/turns`).
    pub turns: PathBuf,
    /// The adapter options, for the session record.
    pub options: StoredOptions,
    /// Set once the broker is shutting down and leaving its agents to their
    /// holders: a turn dropped then is carried on by the next broker, not
    /// stopped.
    pub detaching: Arc<std::sync::atomic::AtomicBool>,
}

/// What the scrollback replayed at attach is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// The output of a program started moments ago: its terminal queries
    /// are still waiting for answers.
    Fresh,
    /// What a program wrote before the broker restarted.
    Restarted,
}

impl PtyProcess {
    /// Starts `spec` under a new holder in `root/ID`, recording `record`
    /// there, and attaches to it.
    pub fn spawn_held(
        spec: &SpawnSpec,
        screen: Arc<Mutex<Screen>>,
        root: &Path,
        record: &SessionRecord,
    ) -> Result<(PtyProcess, mpsc::Receiver<OutputChunk>), SpawnError> {
        let failed = |err: HolderError| SpawnError::Exec {
            program: spec.argv.first().cloned().unwrap_or_default(),
            cause: format!("{} ({})", err, err.code()),
        };
        let text = serde_json::to_vec_pretty(record).map_err(|err| SpawnError::Exec {
            program: String::new(),
            cause: err.to_string(),
        })?;
        let dir = holder::create_dir(root, &record.id, &text).map_err(failed)?;
        let holder_spec = HolderSpec {
            argv: spec.argv.clone(),
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            env_remove: spec.env_remove.clone(),
            rows: spec.size.rows,
            cols: spec.size.cols,
            journal: false,
            stdin: None,
        };
        let attached = holder::start(&dir, &holder_spec)
            .and_then(|_| holder::attach(&dir))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
            })
            .map_err(failed)?;
        PtyProcess::from_attached(attached, screen, Replay::Fresh).map_err(SpawnError::Thread)
    }

    /// Attaches to the holder in `dir` (after a broker restart): the
    /// screen model is rebuilt from the holder's scrollback.
    pub fn attach_held(
        dir: &Path,
        screen: Arc<Mutex<Screen>>,
    ) -> Result<(PtyProcess, mpsc::Receiver<OutputChunk>), HolderError> {
        let attached = holder::attach(dir)?;
        PtyProcess::from_attached(attached, screen, Replay::Restarted)
            .map_err(|err| HolderError::Protocol(err.to_string()))
    }

    /// Where the first byte of output this process delivers lies in all
    /// the held program wrote (see [`HeldTerminal::output_start`]).
    pub fn output_start(&self) -> Option<u64> {
        match &self.terminal {
            Terminal::Held(held) => held.output_start,
            Terminal::Local(_) => None,
        }
    }

    /// The holder's pid and start time (Unix ms), for a held program.
    pub fn holder(&self) -> Option<(u32, u64)> {
        match &self.terminal {
            Terminal::Held(held) => Some((held.holder_pid, held.started_at_ms)),
            Terminal::Local(_) => None,
        }
    }

    fn from_attached(
        attached: holder::Attached,
        screen: Arc<Mutex<Screen>>,
        kind: Replay,
    ) -> Result<(PtyProcess, mpsc::Receiver<OutputChunk>), std::io::Error> {
        let holder::Attached {
            stream,
            welcome,
            replay,
        } = attached;
        let pid = welcome.child_pid;
        let output_start = welcome
            .output_bytes
            .and_then(|total| total.checked_sub(replay.len() as u64));
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let (input_tx, input_rx) = mpsc::channel::<Bytes>(INPUT_CHUNKS_MAX);
        let (output_tx, output_rx) = mpsc::channel::<OutputChunk>(OUTPUT_CHUNKS_MAX);
        let (exit_tx, exit_rx) = watch::channel(None);
        if !replay.is_empty() {
            let seq = {
                let mut model = screen.lock().map_err(|_| std::io::Error::other("screen"))?;
                let seq = model.process(&replay);
                let replies = model.take_replies();
                // A program that just started may be waiting for the answer
                // to a query it sent before the broker attached (a cursor
                // position, say); after a restart the answers are too late.
                if kind == Replay::Fresh && !replies.is_empty() {
                    let _ = input_tx.try_send(Bytes::from(replies));
                }
                seq
            };
            let _ = output_tx.try_send(OutputChunk {
                seq,
                bytes: Bytes::from(replay),
            });
        }
        let (read_tx, read_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_CHUNKS_MAX);
        {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name(format!("held-read-{pid}"))
                .spawn(move || read_frames(stream, &writer, &read_tx, &exit_tx))?;
        }
        let replies = input_tx.clone();
        std::thread::Builder::new()
            .name(format!("held-screen-{pid}"))
            .spawn(move || super::process::screen_loop(read_rx, screen, replies, output_tx))?;
        {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name(format!("held-write-{pid}"))
                .spawn(move || write_frames(&writer, input_rx))?;
        }
        Ok((
            PtyProcess {
                pid,
                terminal: Terminal::Held(HeldTerminal {
                    writer,
                    holder_pid: welcome.holder_pid,
                    started_at_ms: welcome.started_at_ms,
                    output_start,
                }),
                input: input_tx,
                exit: exit_rx,
            },
            output_rx,
        ))
    }
}

/// Reads the holder's frames: output on to the screen thread, the exit to
/// the watch (acknowledged once all output before it is queued), and a
/// connection that ends without an exit as [`HOLDER_LOST`].
fn read_frames(
    mut stream: UnixStream,
    writer: &Mutex<UnixStream>,
    reads: &std::sync::mpsc::SyncSender<Vec<u8>>,
    exit: &watch::Sender<Option<ExitInfo>>,
) {
    super::priority::lower_current_thread();
    loop {
        let frame = match wire::read_frame(&mut stream) {
            Ok(frame) => frame,
            Err(err) => {
                if exit.borrow().is_none() {
                    tracing::warn!(cause = %err, "the holder connection ended without an exit");
                    exit.send_replace(Some(ExitInfo {
                        code: 1,
                        signal: Some(HOLDER_LOST.to_owned()),
                    }));
                }
                return;
            }
        };
        match frame.kind {
            FrameKind::Output => {
                let sent = reads.send(frame.payload);
                if sent.is_err() {
                    return;
                }
            }
            FrameKind::Exit => {
                let Ok(message) = wire::parse::<ExitMessage>(&frame) else {
                    continue;
                };
                if let Ok(mut writer) = writer.lock() {
                    let _ = wire::write_frame(&mut *writer, FrameKind::AckExit, &[]);
                }
                exit.send_replace(Some(ExitInfo {
                    code: message.code,
                    signal: message.signal,
                }));
            }
            FrameKind::Error => {
                tracing::warn!(
                    error = %String::from_utf8_lossy(&frame.payload),
                    "the holder refused a frame"
                );
            }
            _ => {}
        }
    }
}

fn write_frames(writer: &Mutex<UnixStream>, mut input: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = input.blocking_recv() {
        let Ok(mut writer) = writer.lock() else {
            break;
        };
        if wire::write_frame(&mut *writer, FrameKind::Input, &bytes).is_err() {
            break;
        }
    }
}
