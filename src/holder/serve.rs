//! The holder process (`scout holder --dir DIR`): holds one program on a
//! pseudo-terminal for the broker, so the program outlives a broker
//! restart.
//!
//! Plain threads and `poll`, no async runtime, to stay small: one thread
//! reads the terminal into the bounded scrollback and on to the attached
//! broker, one waits for the program's exit, one serves the attached
//! connection, and the main thread accepts connections and decides when
//! the holder is done. Every write to a connection happens under the one
//! state lock, so frames never interleave and a re-attaching broker gets
//! the replay and then the live output with nothing lost or repeated.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use portable_pty::{MasterPty, PtySize, native_pty_system};

use super::wire::{
    self, ErrorMessage, ExitMessage, FrameKind, HOLDER_PROTOCOL_VERSION, Hello,
    SCROLLBACK_BYTES_MAX, Welcome, WireError,
};
use super::{HolderSpec, SOCKET_FILE, SPEC_BYTES_MAX, SPEC_FILE};

/// How often the main thread looks at its directory and its exit
/// conditions while no connection comes in.
const TICK: Duration = Duration::from_millis(250);

/// How long a holder whose program has ended waits for a broker to take
/// the exit before it goes anyway: a day covers a broker that is down over
/// a night; after that nobody is coming back for the result.
pub const LINGER_AFTER_EXIT: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the exit waits for the terminal's last output to be read. A
/// program's own output is there at once; a process it left behind may
/// keep the terminal open forever, so the wait is bounded.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Connections served at once. One is the broker; the others are only
/// tolerated long enough to be refused or to replace it after a restart.
const CONNECTIONS_MAX: usize = 4;

/// How long a new connection has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from the terminal at once (as the broker's own reader).
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Everything the threads share, under one lock.
struct Shared {
    scrollback: VecDeque<u8>,
    /// Bytes the program has written in all (the scrollback is their end).
    output_bytes: u64,
    /// The attached broker: its connection number and a writer.
    client: Option<(u64, UnixStream)>,
    exit: Option<(ExitMessage, Instant)>,
    acked: bool,
}

struct Holder {
    shared: Mutex<Shared>,
    writer: Mutex<Box<dyn Write + Send>>,
    master: Mutex<Box<dyn MasterPty + Send>>,
    welcome: Welcome,
    connections: AtomicUsize,
}

impl Holder {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Runs the holder for the program described in `dir/spec.json`. Prints
/// `ready PID` on standard output once the socket listens and the program
/// runs, so the broker knows when to connect.
pub fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    // Leave the broker's process group and session: a signal to the
    // broker's group (a terminal's ^C, a service manager) must not reach
    // the held program.
    nix::unistd::setsid().context("cannot start a session of its own")?;
    // Whoever started this holder, it only serves from a directory no
    // other user can reach.
    super::check_private_dir(dir)?;
    let spec_path = dir.join(SPEC_FILE);
    let spec = read_spec(&spec_path)?;
    if spec.journal {
        return super::journal::serve(dir, &spec);
    }
    let socket_path = dir.join(SOCKET_FILE);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("cannot listen on {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .context("cannot make the socket owner-only")?;
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: spec.rows,
            cols: spec.cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|err| anyhow::anyhow!("cannot open a pseudo-terminal: {err}"))?;
    let command =
        crate::pty::process::command_for(&spec.argv, &spec.cwd, &spec.env, &spec.env_remove);
    let mut child = crate::home::with_user_umask(|| pair.slave.spawn_command(command))
        .map_err(|err| anyhow::anyhow!("cannot start `{}`: {err:#}", spec.argv.join(" ")))?;
    drop(pair.slave);
    let child_pid = child.process_id().unwrap_or(0);
    let reader = pair
        .master
        .try_clone_reader()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let holder = Arc::new(Holder {
        shared: Mutex::new(Shared {
            scrollback: VecDeque::new(),
            output_bytes: 0,
            client: None,
            exit: None,
            acked: false,
        }),
        writer: Mutex::new(writer),
        master: Mutex::new(pair.master),
        welcome: Welcome {
            version: HOLDER_PROTOCOL_VERSION,
            holder_pid: std::process::id(),
            child_pid,
            started_at_ms: unix_ms(),
            output_bytes: None,
        },
        connections: AtomicUsize::new(0),
    });
    let (read_done_tx, read_done_rx) = std::sync::mpsc::sync_channel::<()>(1);
    {
        let holder = holder.clone();
        std::thread::Builder::new()
            .name("holder-read".to_owned())
            .spawn(move || {
                read_loop(&holder, reader);
                let _ = read_done_tx.send(());
            })?;
    }
    {
        let holder = holder.clone();
        std::thread::Builder::new()
            .name("holder-wait".to_owned())
            .spawn(move || {
                let exit = match child.wait() {
                    Ok(status) => ExitMessage {
                        code: status.exit_code(),
                        signal: status.signal().map(str::to_owned),
                    },
                    Err(err) => ExitMessage {
                        code: 1,
                        signal: Some(format!("wait failed: {err}")),
                    },
                };
                // The output the program wrote before it ended comes first.
                let _ = read_done_rx.recv_timeout(DRAIN_AFTER_EXIT);
                let mut shared = holder.lock();
                shared.exit = Some((exit.clone(), Instant::now()));
                send_to_client(
                    &mut shared,
                    FrameKind::Exit,
                    &serde_json::to_vec(&exit).unwrap_or_default(),
                );
            })?;
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready {child_pid}").and_then(|()| stdout.flush());
    accept_loop(&holder, &listener, &spec_path, child_pid);
    let _ = std::fs::remove_file(&socket_path);
    Ok(ExitCode::SUCCESS)
}

fn read_spec(path: &Path) -> anyhow::Result<HolderSpec> {
    let mut text = Vec::new();
    super::open_regular(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(SPEC_BYTES_MAX as u64 + 1)
        .read_to_end(&mut text)?;
    anyhow::ensure!(
        text.len() <= SPEC_BYTES_MAX,
        "the spec is over {SPEC_BYTES_MAX} bytes"
    );
    let spec: HolderSpec = serde_json::from_slice(&text).context("the spec is not valid")?;
    anyhow::ensure!(!spec.argv.is_empty(), "the spec has no program");
    Ok(spec)
}

/// Accepts connections until the holder is done: the program ended and
/// its exit was taken (or nobody took it within [`LINGER_AFTER_EXIT`]), or
/// its directory is gone (the home was removed: stop the program too).
fn accept_loop(holder: &Arc<Holder>, listener: &UnixListener, spec_path: &Path, child_pid: u32) {
    let mut n_connections: u64 = 0;
    loop {
        {
            let shared = holder.lock();
            if let Some((_, at)) = &shared.exit
                && (shared.acked || at.elapsed() > LINGER_AFTER_EXIT)
            {
                if let Some(dir) = spec_path.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return;
            }
        }
        if !spec_path.exists() {
            // A program that ended was reaped: its pid may be another's.
            if holder.lock().exit.is_none() {
                crate::pty::process::signal_tree(child_pid, nix::sys::signal::Signal::SIGHUP);
                crate::pty::process::signal_tree(child_pid, nix::sys::signal::Signal::SIGKILL);
            }
            return;
        }
        let ready = {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            let timeout =
                PollTimeout::try_from(TICK.as_millis() as i32).unwrap_or(PollTimeout::NONE);
            matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
        };
        if !ready {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if !same_user(&stream) {
            continue;
        }
        if holder.connections.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            holder.connections.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = refuse(&mut stream, "HOLDER_BUSY", "too many connections");
            continue;
        }
        n_connections += 1;
        let number = n_connections;
        let holder = holder.clone();
        let spawned = std::thread::Builder::new()
            .name("holder-conn".to_owned())
            .spawn({
                let holder = holder.clone();
                move || {
                    serve_connection(&holder, stream, number);
                    holder.connections.fetch_sub(1, Ordering::SeqCst);
                }
            });
        if spawned.is_err() {
            holder.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether the peer runs as this user (`SO_PEERCRED`). The directory is
/// owner-only already; this refuses a peer that got a descriptor anyway.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn same_user(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials)
        .is_ok_and(|cred| cred.uid() == nix::unistd::geteuid().as_raw())
}

/// Whether the peer runs as this user (`getpeereid`, on macOS and the
/// BSDs).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn same_user(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: the descriptor is a connected unix socket we own for the
    // call, and both pointers are to live locals.
    let found = unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) } == 0;
    found && uid == nix::unistd::geteuid().as_raw()
}

fn refuse(stream: &mut UnixStream, code: &str, message: &str) -> std::io::Result<()> {
    wire::write_json(
        stream,
        FrameKind::Error,
        &ErrorMessage {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    )
}

/// One connection: the hello, then the broker's frames until it goes. A
/// bad frame is answered with a typed error and ends this connection only.
fn serve_connection(holder: &Holder, mut stream: UnixStream, number: u64) {
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let hello = match wire::read_frame(&mut stream) {
        Ok(frame) if frame.kind == FrameKind::Hello => wire::parse::<Hello>(&frame),
        Ok(frame) => Err(WireError::Bad(format!(
            "expected a hello, got {:?}",
            frame.kind
        ))),
        Err(err) => Err(err),
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(err) => {
            let _ = refuse(&mut stream, err.code(), &err.to_string());
            return;
        }
    };
    if hello.version != HOLDER_PROTOCOL_VERSION {
        let _ = refuse(
            &mut stream,
            "HOLDER_VERSION_UNSUPPORTED",
            &format!(
                "this holder speaks version {HOLDER_PROTOCOL_VERSION}, not {}",
                hello.version
            ),
        );
        return;
    }
    let _ = stream.set_read_timeout(None);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    {
        // Under the lock: the replay and the live output meet exactly.
        let mut shared = holder.lock();
        let (front, back) = shared.scrollback.as_slices();
        let mut replay = Vec::with_capacity(front.len() + back.len());
        replay.extend_from_slice(front);
        replay.extend_from_slice(back);
        let welcome = Welcome {
            output_bytes: Some(shared.output_bytes),
            ..holder.welcome.clone()
        };
        let sent = wire::write_json(&mut writer, FrameKind::Welcome, &welcome)
            .and_then(|()| wire::write_frame(&mut writer, FrameKind::Replay, &replay))
            .and_then(|()| match &shared.exit {
                Some((exit, _)) => wire::write_json(&mut writer, FrameKind::Exit, exit),
                None => Ok(()),
            });
        if sent.is_err() {
            return;
        }
        // A newer attach replaces the older: after a restart, the old
        // broker's connection is dead anyway.
        shared.client = Some((number, writer));
    }
    loop {
        let frame = match wire::read_frame(&mut stream) {
            Ok(frame) => frame,
            Err(WireError::Closed | WireError::Io(_)) => break,
            Err(err) => {
                let mut shared = holder.lock();
                if let Some((current, client)) = shared.client.as_mut()
                    && *current == number
                {
                    let _ = refuse(client, err.code(), &err.to_string());
                }
                break;
            }
        };
        match frame.kind {
            FrameKind::Input => {
                let mut writer = holder
                    .writer
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                let _ = writer
                    .write_all(&frame.payload)
                    .and_then(|()| writer.flush());
            }
            FrameKind::Resize => {
                if let Ok((rows, cols)) = wire::parse_resize(&frame) {
                    let master = holder
                        .master
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner());
                    let _ = master.resize(PtySize {
                        rows,
                        cols,
                        pixel_width: 0,
                        pixel_height: 0,
                    });
                }
            }
            FrameKind::AckExit => {
                let mut shared = holder.lock();
                if shared.exit.is_some() {
                    shared.acked = true;
                }
            }
            _ => {}
        }
    }
    let mut shared = holder.lock();
    if shared
        .client
        .as_ref()
        .is_some_and(|(current, _)| *current == number)
    {
        shared.client = None;
    }
}

/// Reads the terminal into the scrollback and on to the attached broker.
/// Writing to the broker under the lock is the backpressure: a broker that
/// falls behind slows the program, as a terminal does.
fn read_loop(holder: &Holder, mut reader: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n_read = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n_read) => n_read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let bytes = &buf[..n_read];
        let mut shared = holder.lock();
        shared.scrollback.extend(bytes);
        shared.output_bytes += n_read as u64;
        let excess = shared.scrollback.len().saturating_sub(SCROLLBACK_BYTES_MAX);
        shared.scrollback.drain(..excess);
        send_to_client(&mut shared, FrameKind::Output, bytes);
    }
}

fn send_to_client(shared: &mut Shared, kind: FrameKind, payload: &[u8]) {
    if let Some((_, client)) = shared.client.as_mut()
        && wire::write_frame(client, kind, payload).is_err()
    {
        shared.client = None;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
