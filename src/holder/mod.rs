//! Holders: small processes that hold an agent's program on its terminal
//! for the broker, so agent sessions outlive a broker restart.
//!
//! Code map:
//! - [`wire`]: the holder protocol (length-prefixed frames, a version in
//!   the hello, typed errors).
//! - [`serve`]: the holder process itself (`scout holder --dir DIR`),
//!   plain threads and `poll`.
//! - this file: the broker's side: the holders' directory (owner-only, no
//!   symlinks), starting a holder (in its own session, so a broker that
//!   dies or restarts leaves it running) and attaching to one.
//!
//! Each holder has a directory `HOME/holders/SESSION_ID/` with its spec
//! (`spec.json`, what to run), the broker's session metadata
//! (`session.json`, what the broker needs to rebuild the session after a
//! restart), its socket (`holder.sock`) and its log (`holder.log`).
//!
//! Architecture invariant: a holder runs no async runtime and knows
//! nothing of sessions, turns or the mesh: it holds a program, keeps a
//! bounded scrollback and serves one broker.

pub mod journal;
pub mod serve;
pub mod wire;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use wire::{ErrorMessage, FrameKind, HOLDER_PROTOCOL_VERSION, Hello, Welcome};

/// The spec file in a holder's directory.
pub const SPEC_FILE: &str = "spec.json";
/// The broker's session metadata in a holder's directory.
pub const SESSION_FILE: &str = "session.json";
/// The holder's socket in its directory.
pub const SOCKET_FILE: &str = "holder.sock";
/// The holder's log (its standard error).
pub const LOG_FILE: &str = "holder.log";

/// The holder's own binary, installed beside `scout`.
pub const HOLDER_BINARY: &str = "scout-holder";

/// Largest spec or session file: a command line, 64 variables and some
/// patterns fit in a few KiB; 1 MiB is a broken or hostile file.
pub const SPEC_BYTES_MAX: usize = 1024 * 1024;

/// How long a new holder has to open its socket and start its program.
/// Starting a program is a fork and an exec; 10 s covers a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a holder that did not start in time gets to stop its program
/// before it is killed: three of its looks at its spec.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// How long the broker waits for a holder's `Welcome` and replay.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest socket path a unix socket address holds (`sun_path`, less its
/// terminating zero, on Linux and macOS alike).
const SOCKET_PATH_BYTES_MAX: usize = 103;

/// What a holder runs (`spec.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderSpec {
    /// Program and arguments (never empty).
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables set on top of the holder's environment.
    pub env: Vec<(String, String)>,
    /// Variables of the holder's environment not passed on.
    pub env_remove: Vec<String>,
    /// Initial rows.
    pub rows: u16,
    /// Initial columns.
    pub cols: u16,
    /// Run the program on pipes instead of a terminal and journal its
    /// standard output to files (a structured turn, see [`journal`]).
    #[serde(default)]
    pub journal: bool,
    /// Text written to the program's standard input, which then closes
    /// (journalled runs only; `None` gives it no input).
    #[serde(default)]
    pub stdin: Option<String>,
}

/// Why a holder could not be started or attached.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// No holder listens in the directory: it is gone (`HOLDER_GONE`).
    #[error("no holder listens at {0}")]
    Gone(PathBuf),
    /// The holder speaks another protocol version (`HOLDER_VERSION_UNSUPPORTED`).
    #[error("the holder at {dir} speaks another protocol version: {message}")]
    VersionUnsupported {
        /// Its directory.
        dir: PathBuf,
        /// What it said.
        message: String,
    },
    /// The holder refused with another code.
    #[error("the holder refused ({code}): {message}")]
    Refused {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The holder's answer made no sense (`HOLDER_PROTOCOL`).
    #[error("the holder's answer is not valid: {0}")]
    Protocol(String),
    /// The directory is not safe to use (`HOLDER_DIR_UNSAFE`).
    #[error("{0}")]
    UnsafeDir(String),
    /// The holder could not be started (`HOLDER_START_FAILED`).
    #[error("cannot start a holder: {0}")]
    Start(String),
}

impl HolderError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            HolderError::Gone(_) => "HOLDER_GONE",
            HolderError::VersionUnsupported { .. } => "HOLDER_VERSION_UNSUPPORTED",
            HolderError::Refused { .. } => "HOLDER_REFUSED",
            HolderError::Protocol(_) => "HOLDER_PROTOCOL",
            HolderError::UnsafeDir(_) => "HOLDER_DIR_UNSAFE",
            HolderError::Start(_) => "HOLDER_START_FAILED",
        }
    }
}

/// A connection to a holder after a good hello.
#[derive(Debug)]
pub struct Attached {
    /// The connection; next come `Output` and `Exit` frames.
    pub stream: UnixStream,
    /// The holder's hello.
    pub welcome: Welcome,
    /// Its scrollback, to replay into a fresh screen model.
    pub replay: Vec<u8>,
}

/// Makes sure `root` is an owner-only directory of this user and not a
/// symlink (creating it 0700 if missing), so no other local user can
/// reach, replace or redirect a holder's socket.
pub fn ensure_root(root: &Path) -> Result<(), HolderError> {
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(|err| {
            HolderError::UnsafeDir(format!("cannot create {}: {err}", parent.display()))
        })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(HolderError::UnsafeDir(format!(
                "cannot create {}: {err}",
                root.display()
            )));
        }
    }
    check_private_dir(root)
}

fn check_private_dir(dir: &Path) -> Result<(), HolderError> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|err| HolderError::UnsafeDir(format!("cannot read {}: {err}", dir.display())))?;
    if !meta.file_type().is_dir() {
        return Err(HolderError::UnsafeDir(format!(
            "{} is not a directory (a symlink is refused)",
            dir.display()
        )));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(HolderError::UnsafeDir(format!(
            "{} must be owned by this user with mode 0700",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates a session's holder directory under `root` (which must not
/// exist yet) and writes `session` into it (0600).
pub fn create_dir(root: &Path, id: &str, session: &[u8]) -> Result<PathBuf, HolderError> {
    let dir = create_private_dir(root, id)?;
    let socket = dir.join(SOCKET_FILE);
    if socket.as_os_str().len() > SOCKET_PATH_BYTES_MAX {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(HolderError::UnsafeDir(format!(
            "the socket path {} is longer than {SOCKET_PATH_BYTES_MAX} bytes",
            socket.display()
        )));
    }
    write_private(&dir.join(SESSION_FILE), session)?;
    Ok(dir)
}

/// Creates `root/id` (0700; `root` made safe first). The name must be a
/// plain file name, and the directory must not exist yet, so nothing
/// placed there beforehand is reused.
fn create_private_dir(root: &Path, id: &str) -> Result<PathBuf, HolderError> {
    ensure_root(root)?;
    if id.is_empty() || id.contains(['/', '\0']) || id.starts_with('.') {
        return Err(HolderError::UnsafeDir(format!(
            "`{id}` is not a holder directory name"
        )));
    }
    let dir = root.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|err| HolderError::UnsafeDir(format!("cannot create {}: {err}", dir.display())))?;
    Ok(dir)
}

/// Opens a file of a holder's directory for reading, refusing a symlink
/// and anything but a regular file: a FIFO or a device placed there (by
/// the held program, which runs as this user) would otherwise block the
/// reader, or a device be read forever. Non-blocking while it opens, so
/// even the open of a FIFO returns at once.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Reads at most `bytes_max` bytes of a regular file of a holder's
/// directory (see [`open_regular`]); `None` when it is missing, not a
/// regular file, or longer.
pub fn read_bounded(path: &Path, bytes_max: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path)
        .ok()?
        .take(bytes_max as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() <= bytes_max).then_some(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HolderError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|err| HolderError::UnsafeDir(format!("cannot write {}: {err}", path.display())))
}

/// Starts a holder for `spec` in `dir` (made by [`create_dir`]) and waits
/// (bounded) until it listens. The holder starts a session of its own
/// before it says it is ready, so signals to the broker's process group
/// or session never reach it.
/// Returns the holder's pid.
pub fn start(dir: &Path, spec: &HolderSpec) -> Result<u32, HolderError> {
    let text = serde_json::to_vec(spec).map_err(|err| HolderError::Start(err.to_string()))?;
    write_private(&dir.join(SPEC_FILE), &text)?;
    let exe = std::env::current_exe().map_err(|err| HolderError::Start(err.to_string()))?;
    // The small holder binary installed beside this one, when it is there
    // (a few MB less per session than this whole binary); the hidden
    // `scout holder` otherwise.
    let small = exe.with_file_name(HOLDER_BINARY);
    let (exe, subcommand) = if small.is_file() {
        (small, None)
    } else {
        (exe, Some("holder"))
    };
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(LOG_FILE))
        .map_err(|err| HolderError::Start(err.to_string()))?;
    let mut command = Command::new(exe);
    command.args(subcommand);
    command
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = crate::home::with_user_umask(|| command.spawn())
        .map_err(|err| HolderError::Start(err.to_string()))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<String>(1);
    let _ = std::thread::Builder::new()
        .name(format!("holder-start-{pid}"))
        .spawn(move || {
            let mut line = String::new();
            if let Some(stdout) = stdout {
                let _ = BufReader::new(stdout).read_line(&mut line);
            }
            let _ = ready_tx.send(line);
        });
    // The broker reaps the holder it started; after a restart the holder
    // belongs to init, which does.
    let _ = std::thread::Builder::new()
        .name(format!("holder-reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.starts_with("ready ") => Ok(pid),
        Ok(_) => {
            let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
            Err(HolderError::Start(log.trim().chars().take(2000).collect()))
        }
        Err(_) => {
            // A holder that got as far as starting its program stops it
            // when its spec is gone (it looks every 100 ms); then the
            // holder itself is killed.
            let _ = std::fs::remove_file(dir.join(SPEC_FILE));
            std::thread::sleep(STOP_WAIT);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(HolderError::Start(
                "the holder did not start in time".to_owned(),
            ))
        }
    }
}

/// Connects to the holder in `dir`, says hello and reads its welcome and
/// scrollback.
pub fn attach(dir: &Path) -> Result<Attached, HolderError> {
    check_private_dir(dir)?;
    let socket = dir.join(SOCKET_FILE);
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(_) => return Err(HolderError::Gone(dir.to_path_buf())),
    };
    let protocol = |err: std::io::Error| HolderError::Protocol(err.to_string());
    stream
        .set_read_timeout(Some(ATTACH_TIMEOUT))
        .map_err(protocol)?;
    wire::write_json(
        &mut stream,
        FrameKind::Hello,
        &Hello {
            version: HOLDER_PROTOCOL_VERSION,
        },
    )
    .map_err(|_| HolderError::Gone(dir.to_path_buf()))?;
    let first = read_or_gone(&mut stream, dir)?;
    let welcome: Welcome = match first.kind {
        FrameKind::Welcome => {
            wire::parse(&first).map_err(|err| HolderError::Protocol(err.to_string()))?
        }
        FrameKind::Error => return Err(refusal(&first, dir)),
        kind => {
            return Err(HolderError::Protocol(format!(
                "expected a welcome, got {kind:?}"
            )));
        }
    };
    if welcome.version != HOLDER_PROTOCOL_VERSION {
        return Err(HolderError::VersionUnsupported {
            dir: dir.to_path_buf(),
            message: format!(
                "the holder speaks version {}, this broker {HOLDER_PROTOCOL_VERSION}",
                welcome.version
            ),
        });
    }
    let replay = read_or_gone(&mut stream, dir)?;
    if replay.kind != FrameKind::Replay {
        return Err(HolderError::Protocol(format!(
            "expected a replay, got {:?}",
            replay.kind
        )));
    }
    stream.set_read_timeout(None).map_err(protocol)?;
    Ok(Attached {
        stream,
        welcome,
        replay: replay.payload,
    })
}

fn read_or_gone(stream: &mut UnixStream, dir: &Path) -> Result<wire::Frame, HolderError> {
    wire::read_frame(stream).map_err(|err| match err {
        wire::WireError::Closed | wire::WireError::Io(_) => HolderError::Gone(dir.to_path_buf()),
        err => HolderError::Protocol(err.to_string()),
    })
}

fn refusal(frame: &wire::Frame, dir: &Path) -> HolderError {
    let Ok(error) = wire::parse::<ErrorMessage>(frame) else {
        return HolderError::Protocol("an unreadable refusal".to_owned());
    };
    if error.code == "HOLDER_VERSION_UNSUPPORTED" {
        HolderError::VersionUnsupported {
            dir: dir.to_path_buf(),
            message: error.message,
        }
    } else {
        HolderError::Refused {
            code: error.code,
            message: error.message,
        }
    }
}

/// The holder directories under `root`, by session id.
pub fn list(root: &Path) -> Vec<(String, PathBuf)> {
    if check_private_dir(root).is_err() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            entry
                .file_type()
                .ok()?
                .is_dir()
                .then(|| (name, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}
