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

use super::{HolderError, HolderSpec, SPEC_BYTES_MAX, SPEC_FILE, open_regular, read_bounded};

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
    /// Set for a turn typed into a held terminal (no program of its own:
    /// the session's holder keeps the output).
    #[serde(default)]
    pub terminal: Option<TerminalTurn>,
}

/// Where a routed terminal turn began in its session's output, so a
/// broker that restarts finds the turn's output in the holder's replay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TerminalTurn {
    /// How many bytes the program had written to its terminal when the
    /// turn began (the holder counts them: see `Welcome::output_bytes`).
    pub output_start: u64,
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
/// becomes a path. Routed turns and local ones hash apart (a prefix each),
/// so no invocation id a peer picks names a local turn's directory.
pub fn turn_key(record: &TurnRecord) -> String {
    match &record.invocation_id {
        Some(invocation_id) => invocation_key(invocation_id),
        None => hash_key(&["local", &record.session_id, &record.turn_id]),
    }
}

fn invocation_key(invocation_id: &str) -> String {
    hash_key(&["invocation", invocation_id])
}

/// The first 16 bytes of the SHA-256 of `parts`, each preceded by its
/// length, so no two lists of parts hash the same bytes.
fn hash_key(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Records a routed terminal turn (see [`TerminalTurn`]): a record left
/// by an earlier turn of the same invocation (one that paused at a
/// question) is replaced.
pub fn record_terminal(root: &Path, record: &TurnRecord) -> Result<PathBuf, HolderError> {
    if let Some(invocation_id) = record.invocation_id.as_deref()
        && let Some((dir, earlier)) = of_invocation(root, invocation_id)
        && earlier.terminal.is_some()
    {
        remove(&dir);
    }
    create(root, record)
}

/// Creates a turn's directory under `root` and writes its record.
pub fn create(root: &Path, record: &TurnRecord) -> Result<PathBuf, HolderError> {
    let dir = super::create_private_dir(root, &turn_key(record))?;
    let text =
        serde_json::to_vec_pretty(record).map_err(|err| HolderError::Start(err.to_string()))?;
    super::write_private(&dir.join(TURN_FILE), &text).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    Ok(dir)
}

/// The turn directory of `invocation_id` under `root` with its record,
/// when there is one and its record says it runs that invocation.
pub fn of_invocation(root: &Path, invocation_id: &str) -> Option<(PathBuf, TurnRecord)> {
    let dir = root.join(invocation_key(invocation_id));
    super::check_private_dir(&dir).ok()?;
    let record = read_record(&dir)?;
    (record.invocation_id.as_deref() == Some(invocation_id)).then_some((dir, record))
}

/// Reads a turn's record (bounded; `None` when missing or broken).
pub fn read_record(dir: &Path) -> Option<TurnRecord> {
    let text = read_bounded(&dir.join(TURN_FILE), SPEC_BYTES_MAX)?;
    serde_json::from_slice(&text).ok()
}

/// How long ago the program of the turn in `dir` ended, when it did.
pub fn ended_ago(dir: &Path) -> Option<Duration> {
    let modified = open_regular(&dir.join(EXIT_FILE))
        .and_then(|file| file.metadata())
        .and_then(|meta| meta.modified())
        .ok()?;
    modified.elapsed().ok()
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
    let Ok(file) = open_regular(&dir.join(LOCK_FILE)) else {
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
/// A terminal turn is held while its session's holder directory (under
/// `holders`) is there; the broker finds out whether the holder still
/// lives when it re-attaches.
pub fn held_invocations(root: &Path, holders: &Path) -> BTreeSet<String> {
    list(root)
        .into_iter()
        .filter(|(dir, record)| match record.terminal {
            Some(_) => super::check_private_dir(&holders.join(&record.session_id)).is_ok(),
            None => state(dir) != HeldState::Lost,
        })
        .filter_map(|(_, record)| record.invocation_id)
        .collect()
}

/// The routed terminal turns under `root`, by session id (one per
/// session: a session runs one turn at a time).
pub fn terminal_turns(root: &Path) -> std::collections::BTreeMap<String, TurnRecord> {
    list(root)
        .into_iter()
        .map(|(_, record)| record)
        .filter(|record| record.terminal.is_some() && record.invocation_id.is_some())
        .map(|record| (record.session_id.clone(), record))
        .collect()
}

/// Asks the holder of the turn in `dir` to stop its program (it watches
/// its spec: a spec that is gone means nobody wants the turn). The
/// holder kills the program it started itself; the broker never signals a
/// pid read from the directory, which the program can rewrite.
pub fn stop(dir: &Path) {
    if let Err(err) = std::fs::remove_file(dir.join(SPEC_FILE))
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), cause = %err, "cannot stop a held turn");
    }
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
        let mut file = open_regular(&dir.join(JOURNAL_FILE))?;
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
    // Once the program is reaped its pid may name another process: the
    // kill is a no-op from then on.
    let reaped = Arc::new(AtomicBool::new(false));
    let kill = {
        let reaped = reaped.clone();
        move || {
            if !reaped.load(Ordering::SeqCst) {
                crate::pty::process::signal_tree(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    };
    // Until the holder says it is ready, an error on the way out leaves
    // no program behind.
    let mut start_guard = KillOnDrop(Some(kill.clone()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(PID_FILE))
        .and_then(|mut file| file.write_all(pid.to_string().as_bytes()))
        .context("cannot record the program's pid")?;
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
        let kill = kill.clone();
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
        let kill = kill.clone();
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
    start_guard.0 = None;
    let status = child.wait();
    reaped.store(true, Ordering::SeqCst);
    let status = status.context("cannot wait for the program")?;
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

/// Runs its kill when dropped, unless it was taken.
struct KillOnDrop<F: Fn()>(Option<F>);

impl<F: Fn()> Drop for KillOnDrop<F> {
    fn drop(&mut self) {
        if let Some(kill) = self.0.take() {
            kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(invocation_id: Option<&str>, session_id: &str, turn_id: &str) -> TurnRecord {
        TurnRecord {
            invocation_id: invocation_id.map(str::to_owned),
            session_id: session_id.to_owned(),
            turn_id: turn_id.to_owned(),
            conversation: None,
            prompt: String::new(),
            program: "claude".to_owned(),
            resumed: false,
            terminal: None,
        }
    }

    #[test]
    fn keys_are_plain_names_whatever_the_id() {
        for id in ["../../etc", "a/b", "", ".hidden", "\0"] {
            let key = turn_key(&record(Some(id), "s", "t"));
            assert_eq!(key.len(), 32);
            assert!(key.chars().all(|ch| ch.is_ascii_hexdigit()), "{key}");
        }
        assert_ne!(
            turn_key(&record(Some("a"), "s", "t")),
            turn_key(&record(Some("b"), "s", "t"))
        );
    }

    #[test]
    fn no_invocation_id_names_a_local_turn() {
        // A peer picks invocation ids; the id that spells a local turn's
        // old name must not reach its directory.
        let local = record(None, "agent-1", "agent-1-turn-3");
        for id in ["agent-1/agent-1-turn-3", "agent-1\0agent-1-turn-3", "local"] {
            assert_ne!(turn_key(&record(Some(id), "x", "y")), turn_key(&local));
        }
        assert_ne!(
            turn_key(&record(None, "a\0b", "c")),
            turn_key(&record(None, "a", "b\0c"))
        );
    }

    #[test]
    fn a_record_of_another_invocation_is_not_its_turn() {
        let root = tempfile::tempdir().unwrap();
        let turns = root.path().join("turns");
        create(&turns, &record(Some("inv-1"), "s", "t")).unwrap();
        assert!(of_invocation(&turns, "inv-1").is_some());
        assert!(of_invocation(&turns, "inv-2").is_none());
        // A record rewritten to claim another invocation is not found
        // under either id.
        let dir = turns.join(invocation_key("inv-1"));
        std::fs::remove_file(dir.join(TURN_FILE)).unwrap();
        std::fs::write(
            dir.join(TURN_FILE),
            serde_json::to_vec(&record(Some("inv-9"), "s", "t")).unwrap(),
        )
        .unwrap();
        assert!(of_invocation(&turns, "inv-1").is_none());
        assert!(of_invocation(&turns, "inv-9").is_none());
    }

    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        let turns = root.path().join("turns");
        let dir = create(&turns, &record(Some("inv-1"), "s", "t")).unwrap();
        for name in [EXIT_FILE, LOCK_FILE, PID_FILE] {
            nix::unistd::mkfifo(&dir.join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        // Each look returns at once: a FIFO reads as nothing there.
        assert_eq!(state(&dir), HeldState::Lost);
        assert!(child_pid(&dir).is_none());
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
