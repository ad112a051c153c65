//! One program on a pseudo-terminal: spawn it, read its output on a
//! dedicated thread into a bounded channel, feed it through the screen
//! model on another (so terminal queries are answered even when nobody
//! watches) and on to the session task, write
//! its input from one thread, learn of its exit from `wait()`, and stop it
//! by signalling its whole process group and session, then reaping.
//!
//! Why `wait()` and not end-of-output: a child the program started can keep
//! the terminal open after the program itself is gone.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use tokio::sync::{mpsc, watch};

use super::screen::{Screen, TermSize};

/// Bytes read from the terminal at once. A PTY hands over at most a few
/// KiB per read anyway; 16 KiB lets a burst through in few reads.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Reads queued between the reader thread and the screen thread. Parsing
/// runs on its own thread so reading the terminal and parsing overlap; when
/// parsing falls behind, the reader waits and the program blocks on its
/// writes: the terminal itself is the backpressure.
pub const READ_CHUNKS_MAX: usize = 16;

/// Output chunks between the screen thread and the session task. The
/// screen thread merges reads already queued into chunks of up to
/// [`OUTPUT_CHUNK_BYTES_MAX`], so a flood costs few chunks downstream.
/// Together the two queues hold at most
/// `READ_CHUNKS_MAX * READ_CHUNK_BYTES + OUTPUT_CHUNKS_MAX * OUTPUT_CHUNK_BYTES_MAX`
/// (1.25 MiB) per session, and only while output floods.
pub const OUTPUT_CHUNKS_MAX: usize = 32;

/// See [`OUTPUT_CHUNKS_MAX`].
pub const OUTPUT_CHUNK_BYTES_MAX: usize = 32 * 1024;

const _: () = assert!(OUTPUT_CHUNK_BYTES_MAX >= READ_CHUNK_BYTES);

/// Input chunks queued for the writer thread. A program that stops reading
/// its input fills the terminal's buffer, then this queue, then its
/// writers wait: bounded, never dropped.
pub const INPUT_CHUNKS_MAX: usize = 32;

/// How often to look for surviving members of a stopped program's process
/// group (they have no exit signal to wait on).
const STOP_POLL: Duration = Duration::from_millis(10);

/// How long SIGKILLed processes may take to disappear before stop gives up
/// waiting (they cannot refuse; this only guards against a stuck kernel).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One chunk of program output, numbered in the order the screen model saw it.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    /// Sequence number (see [`Screen::seq`]).
    pub seq: u64,
    /// The bytes, as the program wrote them.
    pub bytes: Bytes,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program and arguments (never empty).
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables set on top of the broker's environment.
    pub env: Vec<(String, String)>,
    /// Variables of the broker's environment not passed on.
    pub env_remove: Vec<String>,
    /// Initial terminal size.
    pub size: TermSize,
}

/// Why a program could not be started on a terminal.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No pseudo-terminal could be opened (`SPAWN_FAILED`).
    #[error("cannot open a pseudo-terminal: {0}")]
    OpenPty(String),
    /// The program could not be executed (`SPAWN_FAILED`).
    #[error("cannot start `{program}`: {cause}")]
    Exec {
        /// The program.
        program: String,
        /// What the system said.
        cause: String,
    },
    /// A thread for the terminal could not be started (`SPAWN_FAILED`).
    #[error("cannot start a terminal thread: {0}")]
    Thread(std::io::Error),
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code (when it exited rather than being killed by a signal, the
    /// code is what it returned; 1 for a signal).
    pub code: u32,
    /// The signal that ended it, when one did.
    pub signal: Option<String>,
}

/// A running (or finished) program on a terminal.
pub struct PtyProcess {
    pub(super) pid: u32,
    pub(super) terminal: Terminal,
    pub(super) input: mpsc::Sender<Bytes>,
    pub(super) exit: watch::Receiver<Option<ExitInfo>>,
}

/// Where the terminal's master end is.
pub(super) enum Terminal {
    /// In this process.
    Local(Mutex<Box<dyn MasterPty + Send>>),
    /// In a holder process (see `pty::held`).
    Held(super::held::HeldTerminal),
}

impl std::fmt::Debug for PtyProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyProcess")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl PtyProcess {
    /// Starts `spec` on a new terminal. Output flows through `screen` (which
    /// answers terminal queries) and then into the returned channel.
    pub fn spawn(
        spec: &SpawnSpec,
        screen: Arc<Mutex<Screen>>,
    ) -> Result<(PtyProcess, mpsc::Receiver<OutputChunk>), SpawnError> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: spec.size.rows,
                cols: spec.size.cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|err| SpawnError::OpenPty(err.to_string()))?;
        let command = command_for(&spec.argv, &spec.cwd, &spec.env, &spec.env_remove);
        // The agent creates files in the user's repositories with the
        // user's own mask, not the broker's owner-only one.
        let mut child = crate::home::with_user_umask(|| pair.slave.spawn_command(command))
            .map_err(|err| SpawnError::Exec {
                program: program.clone(),
                cause: format!("{err:#}"),
            })?;
        // The parent keeps no slave end: once every process holding it is
        // gone, reads on the master end.
        drop(pair.slave);
        let pid = child.process_id().unwrap_or(0);

        let reader = pair
            .master
            .try_clone_reader()
            .map_err(|err| SpawnError::OpenPty(err.to_string()))?;
        let writer = pair
            .master
            .take_writer()
            .map_err(|err| SpawnError::OpenPty(err.to_string()))?;
        let (input_tx, input_rx) = mpsc::channel::<Bytes>(INPUT_CHUNKS_MAX);
        let (output_tx, output_rx) = mpsc::channel::<OutputChunk>(OUTPUT_CHUNKS_MAX);
        let (exit_tx, exit_rx) = watch::channel(None);

        let spawned = (|| {
            std::thread::Builder::new()
                .name(format!("pty-wait-{pid}"))
                .spawn(move || {
                    let info = match child.wait() {
                        Ok(status) => ExitInfo {
                            code: status.exit_code(),
                            signal: status.signal().map(str::to_owned),
                        },
                        Err(err) => ExitInfo {
                            code: 1,
                            signal: Some(format!("wait failed: {err}")),
                        },
                    };
                    exit_tx.send_replace(Some(info));
                })?;
            let replies = input_tx.clone();
            let (read_tx, read_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_CHUNKS_MAX);
            std::thread::Builder::new()
                .name(format!("pty-read-{pid}"))
                .spawn(move || read_loop(reader, read_tx))?;
            std::thread::Builder::new()
                .name(format!("pty-screen-{pid}"))
                .spawn(move || screen_loop(read_rx, screen, replies, output_tx))?;
            std::thread::Builder::new()
                .name(format!("pty-write-{pid}"))
                .spawn(move || write_loop(writer, input_rx))?;
            Ok::<_, std::io::Error>(())
        })();
        let process = PtyProcess {
            pid,
            terminal: Terminal::Local(Mutex::new(pair.master)),
            input: input_tx,
            exit: exit_rx,
        };
        if let Err(err) = spawned {
            signal_tree(pid, Signal::SIGKILL);
            return Err(SpawnError::Thread(err));
        }
        Ok((process, output_rx))
    }

    /// The program's process id (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The input queue: bytes sent here are written to the terminal in order.
    pub fn input(&self) -> &mpsc::Sender<Bytes> {
        &self.input
    }

    /// Tells the program its terminal has a new size.
    pub fn resize(&self, size: TermSize) -> Result<(), String> {
        let master = match &self.terminal {
            Terminal::Local(master) => master,
            Terminal::Held(held) => return held.resize(size),
        };
        let master = master
            .lock()
            .map_err(|_| "the terminal is unavailable".to_owned())?;
        master
            .resize(PtySize {
                rows: size.rows,
                cols: size.cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|err| err.to_string())
    }

    /// A receiver that turns `Some` once the program has exited and been reaped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    /// How the program ended, once it has.
    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Stops the program and everything it started in its terminal: SIGHUP
    /// (what closing a terminal sends; interactive shells ignore SIGTERM),
    /// SIGTERM and SIGCONT to the process group and session, then SIGKILL
    /// after `grace`. Returns once the program is reaped and no member of
    /// its group or session is left, or the kill wait ran out.
    pub async fn terminate(&self, grace: Duration) -> bool {
        for signal in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGCONT] {
            signal_tree(self.pid, signal);
        }
        if self.wait_gone(grace).await {
            return true;
        }
        tracing::debug!(
            pid = self.pid,
            "still running after the grace period; killing"
        );
        signal_tree(self.pid, Signal::SIGKILL);
        self.wait_gone(KILL_WAIT).await
    }

    async fn wait_gone(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut exit = self.exit.clone();
        loop {
            let leader_reaped = exit.borrow().is_some();
            if leader_reaped && !tree_alive(self.pid) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let step = STOP_POLL.min(deadline - now);
            if leader_reaped {
                tokio::time::sleep(step).await;
            } else {
                let _ = tokio::time::timeout(step, exit.wait_for(Option::is_some)).await;
            }
        }
    }
}

/// The command for `argv` on a terminal: the environment a program on a
/// terminal gets, whether the broker or a holder starts it.
pub(crate) fn command_for(
    argv: &[String],
    cwd: &std::path::Path,
    env: &[(String, String)],
    env_remove: &[String],
) -> CommandBuilder {
    let mut command = CommandBuilder::from_argv(argv.iter().map(Into::into).collect());
    command.cwd(cwd);
    for name in env_remove {
        command.env_remove(name);
    }
    // The program runs in a terminal, so it must not believe it runs in
    // a CI job: ink-based TUIs (gemini) leave interactive mode when they
    // see `CI`, `CONTINUOUS_INTEGRATION` or any `CI_*` variable, and a
    // broker started from such a shell would pass them on. A variable the
    // spawn request sets itself is still applied below.
    for (name, _) in std::env::vars_os() {
        if is_ci_marker(&name) {
            command.env_remove(name);
        }
    }
    command.env("TERM", "xterm-256color");
    command.env("COLORTERM", "truecolor");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn read_loop(mut reader: Box<dyn Read + Send>, reads: std::sync::mpsc::SyncSender<Vec<u8>>) {
    super::priority::lower_current_thread();
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n_read = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n_read) => n_read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: every process holding the terminal is gone.
            Err(_) => break,
        };
        if reads.send(buf[..n_read].to_vec()).is_err() {
            break;
        }
    }
}

/// Feeds the screen model (answering the terminal queries it finds), then
/// hands the output on, numbered; reads already queued are merged first.
pub(super) fn screen_loop(
    reads: std::sync::mpsc::Receiver<Vec<u8>>,
    screen: Arc<Mutex<Screen>>,
    replies: mpsc::Sender<Bytes>,
    output: mpsc::Sender<OutputChunk>,
) {
    super::priority::lower_current_thread();
    while let Ok(mut batch) = reads.recv() {
        while batch.len() < OUTPUT_CHUNK_BYTES_MAX {
            match reads.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let Ok(mut model) = screen.lock() else {
            break;
        };
        let seq = model.process(&batch);
        let answer = model.take_replies();
        drop(model);
        if !answer.is_empty() {
            // A full input queue means the program is not reading its input;
            // it will not read this answer either.
            let _ = replies.try_send(Bytes::from(answer));
        }
        let chunk = OutputChunk {
            seq,
            bytes: Bytes::from(batch),
        };
        if output.blocking_send(chunk).is_err() {
            break;
        }
    }
}

fn write_loop(mut writer: Box<dyn Write + Send>, mut input: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = input.blocking_recv() {
        if writer
            .write_all(&bytes)
            .and_then(|()| writer.flush())
            .is_err()
        {
            break;
        }
    }
}

/// Sends `signal` to the process group led by `leader`, to every process
/// in its session (an interactive shell puts each job in a group of its own,
/// all in the one session), and to their descendants in other sessions (a
/// tool that runs its shell on a terminal of its own starts a session).
pub fn signal_tree(leader: u32, signal: Signal) {
    let Ok(leader) = i32::try_from(leader) else {
        return;
    };
    if leader <= 1 {
        return;
    }
    // Found before any signal: once a parent dies its children move to
    // init, and nothing links them to the tree any more.
    let members = tree_members(leader);
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), signal);
    for pid in members {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Whether any live (not zombie) process is left in `leader`'s group or session.
pub fn tree_alive(leader: u32) -> bool {
    let Ok(leader) = i32::try_from(leader) else {
        return false;
    };
    if cfg!(target_os = "linux") {
        !tree_members(leader).is_empty()
    } else {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), None).is_ok()
    }
}

/// Live processes whose process group or session is `leader`, and their
/// live descendants (and `leader`'s) wherever they are, from `/proc` (empty
/// where there is no `/proc`; the group signal still reaches the group).
fn tree_members(leader: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    let mut others = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(stat) = read_stat(pid) else {
            continue;
        };
        if matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        if stat.pgrp == leader || stat.session == leader {
            members.push(pid);
        } else {
            others.push((pid, stat.ppid));
        }
    }
    // Descendants outside the group and session, one generation per pass.
    loop {
        let (children, rest): (Vec<_>, Vec<_>) = others
            .into_iter()
            .partition(|(_, ppid)| *ppid == leader || members.contains(ppid));
        others = rest;
        if children.is_empty() {
            return members;
        }
        members.extend(children.into_iter().map(|(pid, _)| pid));
    }
}

/// The fields of `/proc/PID/stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Session id.
    pub session: i32,
}

/// Reads `/proc/PID/stat`; `None` when the process is gone (or on systems
/// without `/proc`).
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Whether an environment variable tells programs they run in a CI job.
fn is_ci_marker(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name == "CI" || name == "CONTINUOUS_INTEGRATION" || name.starts_with("CI_")
}
