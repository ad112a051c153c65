//! Held structured turns: a holder that runs one structured CLI turn
//! (`claude -p`, `gemini --output-format stream-json`, `codex exec
//! --json`) on pipes and journals what it writes, so a turn that is running
//! when the broker stops finishes anyway, and the broker that starts again
//! reads the whole event stream from the journal and reports the turn's
//! end once.
//!
//! A turn's directory is `HOME/state/turns/KEY/` (owner-only, like a
//! session holder's), KEY a hash of the invocation id, and holds:
//! - `spec.json`: what to run ([`HolderSpec`] with `journal` set);
//! - `turn.json`: the broker's record of the turn ([`TurnRecord`]);
//! - `journal`: the program's standard output, byte for byte, appended as
//!   it arrives (at most [`JOURNAL_BYTES_MAX`]);
//! - `pid`: the program's process id (it leads its own process group);
//! - `stderr`: the last [`STDERR_TAIL_BYTES`] of its standard error,
//!   written when it ends;
//! - `exit.json`: how it ended ([`TurnExit`]), written last (renamed into
//!   place), so a reader that sees it has the whole journal;
//! - `lock`: locked by the holder for as long as it lives, so a reader
//!   tells a holder that is still working from one that was killed.
//!
//! The broker removes the directory when the flight's end is committed
//! (or, for a turn no flight waits for, when the turn ends). A holder
//! whose directory is removed while its program runs stops the program:
//! that is how a turn that nobody wants any more is ended.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::{HolderError, HolderSpec, SPEC_BYTES_MAX, SPEC_FILE};

/// The broker's record of a held turn.
pub const TURN_FILE: &str = "turn.json";
/// The program's standard output.
pub const JOURNAL_FILE: &str = "journal";
/// The program's process id.
pub const PID_FILE: &str = "pid";
/// The tail of the program's standard error.
pub const STDERR_FILE: &str = "stderr";
/// How the program ended; its presence means the journal is complete.
pub const EXIT_FILE: &str = "exit.json";
/// Locked by the holder while it lives.
pub const LOCK_FILE: &str = "lock";

/// Most bytes journalled for one turn. A structured CLI writes one JSON
/// line per event, tool results included; a long turn writes a few
/// megabytes. A program past 256 MiB is broken or hostile: it is stopped,
/// and the turn fails, rather than fill the disk.
pub const JOURNAL_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Bytes of standard error kept (the end of it: that is where a CLI says
/// why it stopped).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How often a reader that reached the end of the journal looks again. An
/// agent's events are seconds apart; 20 ms adds nothing a person notices
/// and costs a read of a local file.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);

/// How often a reader at the end of the journal checks that the holder
/// still lives (one lock attempt on a local file).
const LIVENESS_EVERY: u32 = 25;

/// How often the holder looks whether its directory was removed.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long the holder waits, after the program ended, for the last of
/// its output and standard error (a process it left behind may keep the
/// pipes open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Bytes read from the program at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What the broker records about a held turn (`turn.json`), enough to
/// carry the turn on after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TurnRecord {
    /// The invocation the turn runs, when routing started it: its flight
    /// waits for the end, and the directory stays until that end is
    /// committed.
    pub invocation_id: Option<String>,
    /// The session (agent) it runs in.
    pub session_id: String,
    /// The turn's id in that session.
    pub turn_id: String,
    /// The conversation it belongs to.
    pub conversation: Option<String>,
    /// The prompt (for the transcript).
    pub prompt: String,
    /// The program (for messages).
    pub program: String,
    /// Whether the turn continued a CLI session (a refused resume forgets it).
    #[serde(default)]
    pub resumed: bool,
}

/// How a held program ended (`exit.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TurnExit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It wrote more than [`JOURNAL_BYTES_MAX`] and was stopped.
    #[serde(default)]
    pub journal_full: bool,
}

impl fmt::Display for TurnExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status: {code}"),
            (None, Some(signal)) => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map(|signal| signal.as_str())
                    .unwrap_or("?");
                write!(f, "signal: {signal} ({name})")
            }
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// The directory name of a turn: a hash, so an id from the network never
/// becomes a path.
pub fn turn_key(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Creates a turn's directory under `root` and writes its record.
pub fn create(root: &Path, record: &TurnRecord) -> Result<PathBuf, HolderError> {
    let id = record
        .invocation_id
        .clone()
        .unwrap_or_else(|| format!("{}/{}", record.session_id, record.turn_id));
    let dir = super::create_private_dir(root, &turn_key(&id))?;
    let text =
        serde_json::to_vec_pretty(record).map_err(|err| HolderError::Start(err.to_string()))?;
    super::write_private(&dir.join(TURN_FILE), &text).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    Ok(dir)
}

/// The turn directory of `invocation_id` under `root`, when there is one.
pub fn dir_of(root: &Path, invocation_id: &str) -> Option<PathBuf> {
    let dir = root.join(turn_key(invocation_id));
    super::check_private_dir(&dir).ok().map(|()| dir)
}

/// Reads a turn's record (bounded; `None` when missing or broken).
pub fn read_record(dir: &Path) -> Option<TurnRecord> {
    let text = read_bounded(&dir.join(TURN_FILE), SPEC_BYTES_MAX)?;
    serde_json::from_slice(&text).ok()
}

/// How a held turn stands, as its files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldState {
    /// The holder lives and the program has not ended.
    Running,
    /// The program ended; the journal is complete.
    Exited(TurnExit),
    /// The holder is gone without recording an end (it was killed).
    Lost,
}

/// How the turn in `dir` stands.
pub fn state(dir: &Path) -> HeldState {
    if let Some(exit) = read_exit(dir) {
        return HeldState::Exited(exit);
    }
    if holder_alive(dir) {
        return HeldState::Running;
    }
    // The holder may have written its end and gone between the two looks.
    match read_exit(dir) {
        Some(exit) => HeldState::Exited(exit),
        None => HeldState::Lost,
    }
}

fn read_exit(dir: &Path) -> Option<TurnExit> {
    let text = read_bounded(&dir.join(EXIT_FILE), 4096)?;
    serde_json::from_slice(&text).ok()
}

/// Whether a holder holds the directory's lock.
fn holder_alive(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // Taking the lock proves nobody holds it; it is released on drop.
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The program's process id, as the holder recorded it.
pub fn child_pid(dir: &Path) -> Option<u32> {
    let text = read_bounded(&dir.join(PID_FILE), 32)?;
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}

/// The tail of the program's standard error (empty until it ended).
pub fn stderr_tail(dir: &Path) -> String {
    read_bounded(&dir.join(STDERR_FILE), STDERR_TAIL_BYTES * 2)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn read_bounded(path: &Path, bytes_max: usize) -> Option<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut bytes = Vec::new();
    file.take(bytes_max as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() <= bytes_max).then_some(bytes)
}

/// The held turns under `root`: each directory with its record. A
/// directory without a readable record is removed (a broken one cannot be
/// carried on).
pub fn list(root: &Path) -> Vec<(PathBuf, TurnRecord)> {
    let mut turns = Vec::new();
    for (_, dir) in super::list(root) {
        match read_record(&dir) {
            Some(record) => turns.push((dir, record)),
            None => {
                tracing::warn!(dir = %dir.display(), "a held turn without a readable record; removed");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    turns
}

/// The invocations whose turns a holder still runs or finished without
/// the broker taking the end: their flights are carried on after a
/// restart instead of failed as interrupted. A turn whose holder was
/// killed is not among them: its flight fails.
pub fn held_invocations(root: &Path) -> BTreeSet<String> {
    list(root)
        .into_iter()
        .filter(|(dir, _)| state(dir) != HeldState::Lost)
        .filter_map(|(_, record)| record.invocation_id)
        .collect()
}

/// Removes a turn's directory; its holder, if the program still runs,
/// stops it.
pub fn remove(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), cause = %err, "cannot remove a held turn");
    }
}

/// The journal of a held turn, read as it grows: an [`AsyncRead`] that
/// waits at the end of the file until more is written, and ends once the
/// program has ended and everything it wrote was read. A holder killed
/// before the end makes it fail with [`std::io::ErrorKind::BrokenPipe`].
#[derive(Debug)]
pub struct JournalReader {
    dir: PathBuf,
    file: File,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    empty_reads: u32,
    ended: bool,
}

impl JournalReader {
    /// Opens the journal in `dir` from its start.
    pub fn open(dir: &Path) -> std::io::Result<JournalReader> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(JOURNAL_FILE))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(JournalReader {
            dir: dir.to_path_buf(),
            file,
            wait: None,
            empty_reads: 0,
            ended: false,
        })
    }
}

impl AsyncRead for JournalReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = this.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.wait = None;
            }
            // A read of a local file does not block for long.
            let n_read = this.file.read(buf.initialize_unfilled())?;
            if n_read > 0 {
                buf.advance(n_read);
                this.empty_reads = 0;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            // At the end: an ended program's journal is complete once its
            // end is recorded, but bytes may have landed between the read
            // and the look, so read once more before saying EOF.
            if read_exit(&this.dir).is_some() {
                this.ended = true;
                continue;
            }
            this.empty_reads += 1;
            if this.empty_reads.is_multiple_of(LIVENESS_EVERY)
                && state(&this.dir) == HeldState::Lost
            {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "holder lost",
                )));
            }
            this.wait = Some(Box::pin(tokio::time::sleep(FOLLOW_INTERVAL)));
        }
    }
}

/// Runs the program of a journalled spec (the holder process, after it
/// left the broker's session): see the module documentation for the files.
pub fn serve(dir: &Path, spec: &HolderSpec) -> anyhow::Result<ExitCode> {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK_FILE))
        .context("cannot open the lock file")?;
    lock.try_lock()
        .map_err(|_| anyhow::anyhow!("another holder runs this turn"))?;
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(JOURNAL_FILE))
        .context("cannot create the journal")?;
    let mut command = Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for name in &spec.env_remove {
        command.env_remove(name);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let mut child = crate::home::with_user_umask(|| command.spawn())
        .with_context(|| format!("cannot start `{}`", spec.argv[0]))?;
    let pid = child.id();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(PID_FILE))
        .and_then(|mut file| file.write_all(pid.to_string().as_bytes()))
        .context("cannot record the program's pid")?;
    let kill = move || {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    if let (Some(text), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        std::thread::Builder::new()
            .name("holder-stdin".to_owned())
            .spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            })?;
    }
    let (stderr_tx, stderr_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::Builder::new()
            .name("holder-stderr".to_owned())
            .spawn(move || {
                let mut tail = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n_read @ 1..) = stderr.read(&mut buf) {
                    tail.extend_from_slice(&buf[..n_read]);
                    if tail.len() > STDERR_TAIL_BYTES {
                        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                    }
                }
                let _ = stderr_tx.send(tail);
            })?;
    }
    let done = Arc::new(AtomicBool::new(false));
    {
        // A removed directory means nobody wants the turn any more.
        let done = done.clone();
        let spec_path = dir.join(SPEC_FILE);
        std::thread::Builder::new()
            .name("holder-watch".to_owned())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if !spec_path.exists() {
                        kill();
                        return;
                    }
                    std::thread::sleep(WATCH_INTERVAL);
                }
            })?;
    }
    let full = Arc::new(AtomicBool::new(false));
    let (copied_tx, copied_rx) = std::sync::mpsc::sync_channel::<()>(1);
    if let Some(mut stdout) = child.stdout.take() {
        let full = full.clone();
        std::thread::Builder::new()
            .name("holder-journal".to_owned())
            .spawn(move || {
                let mut buf = vec![0u8; READ_CHUNK_BYTES];
                let mut written: u64 = 0;
                while let Ok(n_read @ 1..) = stdout.read(&mut buf) {
                    written += n_read as u64;
                    if written > JOURNAL_BYTES_MAX {
                        full.store(true, Ordering::SeqCst);
                        kill();
                        break;
                    }
                    if journal.write_all(&buf[..n_read]).is_err() {
                        kill();
                        break;
                    }
                }
                let _ = copied_tx.send(());
            })?;
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready {pid}").and_then(|()| stdout.flush());
    let status = child.wait().context("cannot wait for the program")?;
    // Everything the program wrote comes before its end.
    let _ = copied_rx.recv_timeout(DRAIN_AFTER_EXIT);
    let tail = stderr_rx.recv_timeout(DRAIN_AFTER_EXIT).unwrap_or_default();
    done.store(true, Ordering::SeqCst);
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(STDERR_FILE))
        .and_then(|mut file| file.write_all(&tail));
    let exit = TurnExit {
        code: status.code(),
        signal: status.signal(),
        journal_full: full.load(Ordering::SeqCst),
    };
    let partial = dir.join(".exit.json.partial");
    let _ = std::fs::remove_file(&partial);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(&serde_json::to_vec(&exit).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&partial, dir.join(EXIT_FILE)))
        .context("cannot record the program's end")?;
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_names_whatever_the_id() {
        for id in ["../../etc", "a/b", "", ".hidden", "\0"] {
            let key = turn_key(id);
            assert_eq!(key.len(), 32);
            assert!(key.chars().all(|ch| ch.is_ascii_hexdigit()), "{key}");
        }
        assert_ne!(turn_key("a"), turn_key("b"));
    }

    #[test]
    fn an_exit_reads_as_the_standard_library_says_it() {
        let exited = TurnExit {
            code: Some(3),
            signal: None,
            journal_full: false,
        };
        assert_eq!(exited.to_string(), "exit status: 3");
        let killed = TurnExit {
            code: None,
            signal: Some(9),
            journal_full: false,
        };
        assert_eq!(killed.to_string(), "signal: 9 (SIGKILL)");
    }
}
