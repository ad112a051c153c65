//! The accept loop of the local HTTP surface, written on `hyper` instead of
//! `axum::serve` because the broker needs what that helper lacks: a bound
//! on how long a request head may take, a bound on how long a connection
//! may sit idle, a cap on open connections below the process's file limit
//! (with the longest-idle connection closed to make room), and accept
//! errors that back off instead of spinning.
//!
//! Code map: [`serve`] runs the loop until the broker's shutdown signal;
//! [`raise_file_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one and
//! [`connections_max_for`] derives the cap from it; `Tracker` knows every
//! open connection and whether it is busy (a request, a stream or a
//! WebSocket in progress) or idle, and since when.
//!
//! Architecture invariant: a connection that serves a request, an event
//! stream or a WebSocket is never evicted; only idle ones (between
//! requests, or still sending a head) are.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::env::Env;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// How long a client has to send a complete request head, counted by hyper
/// from the moment the connection is ready for one (just opened, or the
/// previous response sent). Every client of this API is local and sends its
/// head in one write; ten seconds is generous for a loaded machine and cuts
/// a slowloris client that trickles bytes to hold a connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay open without a request in progress and
/// without sending a byte of the next one. Local clients reconnect in
/// microseconds, so keeping silent connections longer only spends file
/// descriptors; five seconds still lets a CLI command's few requests share
/// one connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often idle connections are looked for. A connection may thus live
/// up to `IDLE_TIMEOUT + IDLE_SWEEP_INTERVAL`; one scan of at most
/// [`CONNECTIONS_MAX`] entries a second costs nothing.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most connections served at once, before the file limit is considered.
/// The local API has a handful of clients (the CLI, dashboards' WebSockets,
/// scripts); a thousand leaves room for many terminals and browser tabs
/// while keeping the broker's file descriptors for its store, PTYs and
/// mesh socket.
pub const CONNECTIONS_MAX: usize = 1024;

/// The share of the process's file limit HTTP connections may take: one
/// connection in `FILE_LIMIT_DIVISOR` descriptors. The other half is for the
/// store, PTY sessions (several descriptors each), the mesh socket, the
/// file watcher, and the accepted sockets of a connection burst that are
/// not yet evicted.
pub const FILE_LIMIT_DIVISOR: u64 = 2;

/// Largest buffer hyper keeps per connection: request heads and bodies of
/// this API are small (bodies are capped at
/// [`super::REQUEST_BODY_BYTES_MAX`]), so a thousand connections cost at
/// most this much each.
const CONNECTION_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// The first pause after an accept error that is about the process (too
/// many open files, no buffers), not about one connection.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest pause between accept attempts while the errors go on: a
/// second keeps the broker responsive once descriptors are free again.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a shutdown waits for connections to finish their current
/// request before closing them: the broker stops its agents first, so
/// streams end; one that does not must not hold the shutdown.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two warnings about refused connections, so a
/// flood is logged, not echoed line by line.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

const _: () = assert!(IDLE_TIMEOUT.as_millis() < HEADER_READ_TIMEOUT.as_millis());
const _: () = assert!(ACCEPT_BACKOFF_MIN.as_millis() < ACCEPT_BACKOFF_MAX.as_millis());

/// Raises the soft `RLIMIT_NOFILE` to the hard limit where the system
/// allows it, and returns the soft limit in force afterwards (`None` when it
/// cannot be read). A broker with many terminals and connections needs more
/// than the common default of 1024 descriptors.
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(err) => tracing::debug!(cause = %err, soft, hard, "cannot raise the file limit"),
        }
    }
    Some(soft)
}

/// The connection cap for a process whose soft file limit is `file_limit`:
/// [`CONNECTIONS_MAX`], or a [`FILE_LIMIT_DIVISOR`]th of the limit when that
/// is lower, and never below one.
pub fn connections_max_for(file_limit: Option<u64>) -> usize {
    let share = file_limit
        .map(|limit| usize::try_from(limit / FILE_LIMIT_DIVISOR).unwrap_or(usize::MAX))
        .unwrap_or(CONNECTIONS_MAX);
    CONNECTIONS_MAX.min(share).max(1)
}

/// Serves `router` on `listener` until `shutdown` turns true (or its sender
/// is dropped), then lets connections finish their request for at most
/// [`SHUTDOWN_DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    connections_max: usize,
    mut shutdown: watch::Receiver<bool>,
    env: Env,
) {
    let tracker = Arc::new(Tracker::default());
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(IDLE_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = AcceptBackoff::new(env);
    let mut last_refusal_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            _ = sweep.tick() => tracker.close_idle(IDLE_TIMEOUT),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.reset();
                    if tracker.len() >= connections_max && !tracker.evict_longest_idle() {
                        // Every connection is busy: refuse this one rather
                        // than go past the cap; dropping it closes it.
                        let now = Instant::now();
                        if last_refusal_warning
                            .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARN_INTERVAL)
                        {
                            last_refusal_warning = Some(now);
                            tracing::warn!(
                                connections_max,
                                "http: every connection is busy; refusing new ones"
                            );
                        }
                        continue;
                    }
                    let slot = tracker.register();
                    connections.spawn(serve_connection(
                        stream,
                        router.clone(),
                        slot,
                        shutdown.clone(),
                    ));
                }
                Err(err) if is_connection_error(&err) => {
                    tracing::debug!(cause = %err, "http: a connection failed before it was accepted");
                }
                Err(err) => {
                    // Out of descriptors: closing the longest-idle
                    // connection gives one back before the next attempt.
                    tracker.evict_longest_idle();
                    let pause = backoff.next();
                    if backoff.is_first() {
                        tracing::warn!(cause = %err, "http: cannot accept connections; backing off");
                    } else {
                        tracing::debug!(cause = %err, pause_ms = pause.as_millis() as u64, "http: accept failed again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped(&mut shutdown) => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "http: connections still open after the shutdown drain; closing them"
        );
        connections.shutdown().await;
    }
}

/// Serves one connection until it ends, is evicted, or the broker stops.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let evicted = slot.evict.clone();
    let service = TrackedService {
        inner: TowerToHyperService::new(router),
        tracker: slot.tracker.clone(),
        id: slot.id,
    };
    let io = TokioIo::new(TrackedStream {
        stream,
        read_since_idle: slot.read_since_idle.clone(),
        _slot: slot,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(CONNECTION_BUFFER_BYTES_MAX);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(cause = %err, "http: connection ended with an error");
            }
        }
        // Dropping the connection closes its socket.
        _ = evicted.notified() => {}
        _ = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            if let Err(err) = connection.await {
                tracing::debug!(cause = %err, "http: connection ended with an error while draining");
            }
        }
    }
}

/// Resolves once the broker's shutdown signal is true or its sender is gone.
/// The guard `wait_for` returns is dropped here, so callers stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accept errors that concern one connection (the peer gave up while it
/// waited in the backlog): the next accept works at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Bounded, jittered exponential backoff for accept errors.
#[derive(Debug)]
struct AcceptBackoff {
    failures: u32,
    /// Where the jitter comes from.
    env: Env,
}

impl AcceptBackoff {
    fn new(env: Env) -> AcceptBackoff {
        AcceptBackoff { failures: 0, env }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn is_first(&self) -> bool {
        self.failures == 1
    }

    /// The next pause: doubled per failure up to [`ACCEPT_BACKOFF_MAX`],
    /// then drawn from its upper half so many brokers on one machine do
    /// not retry in step.
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let base = ACCEPT_BACKOFF_MIN
            .saturating_mul(1u32 << doublings)
            .min(ACCEPT_BACKOFF_MAX);
        let half = base / 2;
        half.mul_f64(1.0 + self.env.random_f64())
    }
}

/// Every open connection of the server (including those upgraded to a
/// WebSocket), behind one lock: the accept loop, the idle sweep and the
/// requests of every connection update it, each for a few instructions.
#[derive(Debug, Default)]
struct Tracker {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    connections: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Requests in progress (their response body not yet sent).
    in_flight: u32,
    /// Handed over to a WebSocket: busy until it closes.
    upgraded: bool,
    /// Already told to close.
    evicting: bool,
    /// Since when no request is in progress.
    idle_since: Instant,
    /// Whether the client sent bytes since it became idle (a head in
    /// progress is bounded by [`HEADER_READ_TIMEOUT`], not the idle one).
    read_since_idle: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && !self.upgraded && !self.evicting
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock leaves consistent counters, so
        // the table stays usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().connections.len()
    }

    fn register(self: &Arc<Self>) -> Slot {
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        let read_since_idle = Arc::new(AtomicBool::new(false));
        table.connections.insert(
            id,
            Entry {
                in_flight: 0,
                upgraded: false,
                evicting: false,
                idle_since: Instant::now(),
                read_since_idle: read_since_idle.clone(),
                evict: evict.clone(),
            },
        );
        Slot {
            tracker: self.clone(),
            id,
            evict,
            read_since_idle,
        }
    }

    /// Tells the connection idle the longest to close; false when none is
    /// idle. A linear scan: the table holds at most the cap's few thousand
    /// entries and this runs only when the cap is reached.
    fn evict_longest_idle(&self) -> bool {
        let mut table = self.lock();
        // The id breaks ties between equal instants: the older connection
        // goes first.
        let victim = table
            .connections
            .iter_mut()
            .filter(|(_, entry)| entry.is_idle())
            .min_by_key(|(id, entry)| (entry.idle_since, **id));
        match victim {
            Some((_, entry)) => {
                entry.evicting = true;
                entry.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Closes connections idle for longer than `timeout` that have not
    /// started sending a request.
    fn close_idle(&self, timeout: Duration) {
        let now = Instant::now();
        let mut table = self.lock();
        for entry in table.connections.values_mut() {
            if entry.is_idle()
                && now.duration_since(entry.idle_since) >= timeout
                && !entry.read_since_idle.load(Ordering::Relaxed)
            {
                entry.evicting = true;
                entry.evict.notify_one();
            }
        }
    }

    fn begin_request(self: &Arc<Self>, id: u64) -> RequestGuard {
        if let Some(entry) = self.lock().connections.get_mut(&id) {
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        RequestGuard {
            tracker: self.clone(),
            id,
        }
    }
}

/// A connection's place in the [`Tracker`]; dropping it (when the socket is
/// closed, which for a WebSocket is when the socket ends) removes the entry.
#[derive(Debug)]
struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    evict: Arc<Notify>,
    read_since_idle: Arc<AtomicBool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tracker.lock().connections.remove(&self.id);
    }
}

/// Marks a connection busy from a request's head until its response body
/// has been sent (or abandoned).
#[derive(Debug)]
struct RequestGuard {
    tracker: Arc<Tracker>,
    id: u64,
}

impl RequestGuard {
    fn mark_upgraded(&self) {
        if let Some(entry) = self.tracker.lock().connections.get_mut(&self.id) {
            entry.upgraded = true;
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.tracker.lock().connections.get_mut(&self.id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.in_flight == 0 {
                entry.idle_since = Instant::now();
                entry.read_since_idle.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// The TCP stream of one connection, carrying its [`Slot`] so that the
/// entry lives exactly as long as the socket, also after a WebSocket
/// upgrade moves the stream out of hyper.
#[derive(Debug)]
struct TrackedStream {
    stream: TcpStream,
    read_since_idle: Arc<AtomicBool>,
    _slot: Slot,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.read_since_idle.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The router as a hyper service that marks its connection busy for the
/// life of each request and its response body.
#[derive(Debug, Clone)]
struct TrackedService {
    inner: TowerToHyperService<Router>,
    tracker: Arc<Tracker>,
    id: u64,
}

type ServiceFuture = Pin<
    Box<
        dyn std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
            + Send,
    >,
>;

impl hyper::service::Service<hyper::Request<Incoming>> for TrackedService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.tracker.begin_request(self.id);
        let wants_upgrade = request.headers().contains_key(axum::http::header::UPGRADE);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if wants_upgrade && response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                guard.mark_upgraded();
            }
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its connection marked busy until it has been
/// sent, which for an event stream is until the stream ends.
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_share_of_the_file_limit() {
        assert_eq!(connections_max_for(None), CONNECTIONS_MAX);
        assert_eq!(connections_max_for(Some(1_000_000)), CONNECTIONS_MAX);
        assert_eq!(connections_max_for(Some(256)), 128);
        assert_eq!(connections_max_for(Some(1)), 1);
    }

    #[test]
    fn accept_backoff_is_bounded() {
        let mut backoff = AcceptBackoff::new(Env::system(None));
        for _ in 0..100 {
            let pause = backoff.next();
            assert!(pause <= ACCEPT_BACKOFF_MAX);
            assert!(pause >= ACCEPT_BACKOFF_MIN / 2);
        }
        backoff.reset();
        assert!(backoff.next() <= ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn only_idle_connections_are_evicted_longest_idle_first() {
        let tracker = Arc::new(Tracker::default());
        let busy = tracker.register();
        let _request = tracker.begin_request(busy.id);
        let older = tracker.register();
        let newer = tracker.register();
        // The newer one served a request since: it has been idle less long.
        drop(tracker.begin_request(newer.id));
        assert!(tracker.evict_longest_idle());
        let table = tracker.lock();
        assert!(table.connections[&older.id].evicting);
        assert!(!table.connections[&newer.id].evicting);
        assert!(!table.connections[&busy.id].evicting);
        drop(table);
        assert!(tracker.evict_longest_idle());
        assert!(!tracker.evict_longest_idle(), "the busy one stays");
    }

    #[test]
    fn the_idle_sweep_spares_busy_connections_and_heads_in_progress() {
        let tracker = Arc::new(Tracker::default());
        let silent = tracker.register();
        let busy = tracker.register();
        let _request = tracker.begin_request(busy.id);
        let sending_a_head = tracker.register();
        sending_a_head
            .read_since_idle
            .store(true, Ordering::Relaxed);
        tracker.close_idle(Duration::ZERO);
        let table = tracker.lock();
        assert!(table.connections[&silent.id].evicting);
        assert!(!table.connections[&busy.id].evicting);
        assert!(!table.connections[&sending_a_head.id].evicting);
    }
}
