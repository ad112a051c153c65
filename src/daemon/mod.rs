//! The broker daemon: wires the store, the configuration, the agents and the
//! HTTP surface together, and stops them all on one shutdown signal.
//!
//! Code map: [`Broker`] starts and stops everything; [`BrokerState`] is what
//! request handlers and background tasks share; [`mesh`] is the broker's
//! side of the mesh (sync, connections, membership); [`discovery`] feeds
//! its address book from mDNS and Tailscale; [`watch`] reloads agents
//! when their files change, so `scout agents add` needs no restart;
//! [`checkpoints`] takes git checkpoints of agent worktrees before
//! `execute` work and serves their list, diff and restore. [`routing`] is
//! the driver of the pure routing core; beside it, [`submissions`] turns a
//! caller's request into what the core takes, [`runs`] is this machine's
//! side of routed work (admission, starting it), [`executor`] is the
//! seam to what runs routed work (PTY sessions), [`work_orders`] queues
//! work and dispatches it through the router, [`flight_views`] is what
//! `scout flights` shows and [`usage`] totals usage across the mesh.

pub mod approvals;
pub mod checkpoints;
pub mod credentials;
pub mod discovery;
pub mod executor;
pub mod flight_views;
pub mod mesh;
pub mod notify;
pub mod routing;
pub mod runs;
pub mod submissions;
pub mod tokens;
pub mod usage;
pub mod watch;
pub mod work_orders;

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use scout_mesh::names::{Label, NamePart};
use serde::Serialize;
use tokio::sync::watch as signal;
use tokio::task::JoinSet;

use crate::config::discover::{self, LocalAgent};
use crate::config::{relay_agents, settings};
use crate::env::Env;
use crate::home::Home;
use crate::identity;
use crate::store::{Store, StoreOptions};

/// What request handlers and background tasks share.
#[derive(Debug)]
pub struct BrokerState {
    /// The broker's home.
    pub home: Home,
    /// This node's name.
    pub node_name: Label,
    /// This node's id.
    pub node_id: String,
    /// The bearer token of the local API.
    pub token: String,
    /// The credentials of the agent sessions this broker spawned.
    pub credentials: Arc<credentials::AgentCredentials>,
    /// The live tokens made with `scout tokens create`.
    pub tokens: Arc<tokens::ScopedTokens>,
    /// The durable store.
    pub store: Store,
    /// This machine's agents, replaced whole on every reload.
    pub agents: Arc<RwLock<Vec<LocalAgent>>>,
    /// The mesh.
    pub mesh: mesh::Mesh,
    /// The agents running on terminals (the local runtime).
    pub runtime: Arc<crate::pty::SessionManager>,
    /// Routing of invocations and work orders.
    pub router: routing::Router,
    /// Approvals this broker owns and answers to the mesh's.
    pub approvals: Arc<approvals::Approvals>,
    /// Time, randomness and ids for everything in this broker; its
    /// monotonic clock started with the broker.
    pub env: Env,
}

/// What the broker prints once it is ready.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    /// Node name.
    pub node_name: String,
    /// Node id.
    pub node_id: String,
    /// Where the HTTP surface listens (port 0: it serves none).
    pub http_addr: SocketAddr,
    /// Where the mesh listens (UDP).
    pub mesh_addr: Option<SocketAddr>,
    /// The addresses announced to peers.
    pub mesh_addresses: Vec<String>,
    /// The mesh this broker belongs to.
    pub mesh_id: String,
    /// The store file.
    pub store_path: PathBuf,
    /// Local agents found at start.
    pub agents: usize,
    /// Flights the store reconciled at open (interrupted by the last stop).
    pub reconciled_flights: usize,
}

impl ReadyInfo {
    /// The one human ready line.
    pub fn line(&self) -> String {
        format!(
            "scout ready: node {} (id {}) http http://{} mesh udp {} agents {} store {}",
            self.node_name,
            self.node_id,
            self.http_addr,
            self.mesh_addresses.join(","),
            self.agents,
            self.store_path.display()
        )
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    state: Arc<BrokerState>,
    info: ReadyInfo,
    shutdown: signal::Sender<bool>,
    tasks: JoinSet<()>,
    /// The store runs its writes inline: close it on this thread too.
    inline_store: bool,
    /// Held for the broker's lifetime: the advisory lock on the home.
    _lock: File,
}

/// What an embedding (tests, netsim) may substitute when starting a broker.
/// The default is what `scout up` runs.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Run the mesh on this socket instead of binding `mesh_port`.
    pub mesh_socket: Option<mesh::SocketOverride>,
    /// Time, randomness and ids for the whole broker: mesh, store,
    /// routing, HTTP and the PTY runtime (default: [`Env::system`] with
    /// the operating system's randomness). netsim passes an
    /// [`Env::simulated`] over its clock and seed. The store runs on this
    /// environment whatever `store.env` says.
    pub env: Option<Env>,
    /// Sync tunables (default: the production intervals).
    pub sync: Option<scout_mesh::sync::SyncConfig>,
    /// Transport timeouts (default: the production ones).
    pub transport: Option<scout_net::transport::TransportConfig>,
    /// Partial view sizes (default: [`scout_mesh::views::ViewSizes::default`]).
    pub views: Option<scout_mesh::views::ViewSizes>,
    /// Bind and serve the HTTP surface (default true). Without it the
    /// broker writes no `broker.json` and announces HTTP port 0; netsim's
    /// brokers are driven in-process and need no listener.
    pub serve_http: bool,
    /// Reload agents when their files change and rescan workspace roots
    /// (default true). netsim reloads explicitly, at scripted times.
    pub watch_config: bool,
    /// How the store is opened (default: [`StoreOptions::default`]). With
    /// `inline_writes` the store is also opened and closed, and agents are
    /// discovered, on the calling thread: netsim's brokers then do nothing
    /// off their one thread, so the interleaving of their tasks (and the
    /// partial views' random choices that follow it) repeats with the seed
    /// however busy the machine is.
    pub store: StoreOptions,
    /// What runs invocations on this broker's agents (default: PTY
    /// sessions); netsim runs in-process agents.
    pub executor: Option<Arc<dyn executor::Executor>>,
}

impl Default for BrokerOptions {
    fn default() -> BrokerOptions {
        BrokerOptions {
            mesh_socket: None,
            env: None,
            sync: None,
            transport: None,
            views: None,
            serve_http: true,
            watch_config: true,
            store: StoreOptions::default(),
            executor: None,
        }
    }
}

impl Broker {
    /// Loads the home, opens the store, finds the agents and starts serving.
    pub async fn start(home: &Home) -> anyhow::Result<Broker> {
        crate::home::secure(home)?;
        Broker::start_with(home, BrokerOptions::default()).await
    }

    /// [`Broker::start`] with substitutes for the socket, environment and
    /// tunables.
    pub async fn start_with(home: &Home, options: BrokerOptions) -> anyhow::Result<Broker> {
        let env = options.env.clone().unwrap_or_else(|| Env::system(None));
        // Taken before the files are read, so an edit made while the broker
        // starts is seen by the watcher's first look, never missed.
        let config_seen = watch::ConfigSnapshot::take(home);
        let settings = settings::load_required(&home.settings_path())?.value;
        let relay = relay_agents::load(&home.relay_agents_path())?.value;
        if !home.node_key_path().exists() {
            anyhow::bail!(
                "no node key at {}; run `scout setup` first (with the same --home)",
                home.node_key_path().display()
            );
        }
        let asker = Arc::new(approvals::BrokerAsker::default());
        let runtime_config = crate::pty::RuntimeConfig {
            broker_env: env.clone(),
            permissions: Some(asker.clone()),
            holders_dir: Some(home.holders_dir()),
            ..crate::pty::RuntimeConfig::from_env()?
        };
        let identity = identity::load_node_key(&home.node_key_path())?;
        let token = identity::load_token(&home.token_path())?;
        let node_name = Label::parse(&settings.node_name, NamePart::Node)?;
        let lock = lock_home(home)?;

        let store_path = home.store_path();
        let (store, reconciled) = {
            let path = store_path.clone();
            let turns = home.turns_dir();
            let holders = home.holders_dir();
            let env_for_store = env.clone();
            let store_options = options.store.clone();
            // Flights whose turns outlived the last broker are carried on,
            // not failed as interrupted.
            let open = move || {
                Store::open(
                    &path,
                    StoreOptions {
                        env: env_for_store,
                        held_invocations: crate::holder::journal::held_invocations(
                            &turns, &holders,
                        ),
                        ..store_options
                    },
                )
            };
            if options.store.inline_writes {
                open()
            } else {
                tokio::task::spawn_blocking(open)
                    .await
                    .context("the store opener stopped")?
            }
            .with_context(|| format!("cannot open the store {}", store_path.display()))?
        };
        let reconciled_flights = reconciled.total();
        if reconciled_flights > 0 {
            tracing::warn!(
                flights = reconciled_flights,
                "reconciled flights left unfinished by the last stop"
            );
        }
        sweep_held_turns(&home.turns_dir(), &store);

        // Discovery walks directories and asks git about worktrees: off the
        // async workers, unless the broker keeps everything on its thread.
        let discovered = if options.store.inline_writes {
            discover::discover(home, &settings, &relay)
        } else {
            let (home, settings, relay) = (home.clone(), settings.clone(), relay.clone());
            tokio::task::spawn_blocking(move || discover::discover(&home, &settings, &relay))
                .await
                .context("agent discovery stopped")?
        };
        for warning in &discovered.warnings {
            tracing::warn!(%warning, "agent discovery");
        }
        let listener = if options.serve_http {
            Some(crate::http::bind(http_port(&settings)?).await?)
        } else {
            None
        };
        // Raised before anything opens many descriptors; the HTTP cap is a
        // share of what the process may hold.
        let http_connections_max = if listener.is_some() {
            crate::http::serve::connections_max_for(crate::http::serve::raise_file_limit())
        } else {
            0
        };
        let http_addr = match &listener {
            Some(listener) => listener.local_addr()?,
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        if listener.is_some() {
            write_runtime_file(home, http_addr, &env)?;
        }
        let (shutdown, shutdown_rx) = signal::channel(false);
        let mut tasks = JoinSet::new();
        let mut mesh_config = mesh::MeshConfig::new(
            std::net::SocketAddr::from(([0, 0, 0, 0], settings.mesh_port)),
            seeds(&settings),
            http_addr.port(),
            env.clone(),
        );
        mesh_config.socket = options.mesh_socket;
        if let Some(sync) = options.sync {
            mesh_config.sync = sync;
        }
        if let Some(transport) = options.transport {
            mesh_config.transport = transport;
        }
        if let Some(views) = options.views {
            mesh_config.views = views;
        }
        if env.replay_seed().is_some() {
            // A replayed run draws the sync and QUIC seeds from the
            // environment too, so its anti-entropy jitter and connection
            // ids repeat; otherwise the QUIC endpoint keeps drawing from
            // the operating system, as it does without an environment.
            mesh_config.sync.seed = env.random_u64();
            mesh_config.transport.rng_seed = Some(env.random());
        }
        let mesh = mesh::Mesh::start(
            home,
            identity.mesh_identity(node_name.clone()),
            store.clone(),
            mesh_config,
            discovered.agents.clone(),
            shutdown_rx.clone(),
            &mut tasks,
        )
        .await?;

        let scoped_tokens = Arc::new(tokens::ScopedTokens::from_rows(
            store
                .read(crate::store::tokens::live)
                .context("cannot read the api tokens")?,
        ));
        let agents = Arc::new(RwLock::new(discovered.agents));
        let runtime = Arc::new(crate::pty::SessionManager::new(runtime_config));
        // Sessions whose holders kept them through a restart come back
        // before routing starts, so a flight finds its agent again.
        let n_adopted = runtime.adopt_holders().await;
        if n_adopted > 0 {
            tracing::info!(
                sessions = n_adopted,
                "re-attached agent sessions kept by their holders"
            );
        }
        let credentials = Arc::new(
            credentials::AgentCredentials::new(format!("http://127.0.0.1:{}", http_addr.port()))
                .with_gemini_defaults(home.state_dir.join("gemini-mcp-defaults.json")),
        );
        let executor: Arc<dyn executor::Executor> = match options.executor {
            Some(executor) => executor,
            None => Arc::new(executor::PtyExecutor::new(
                runtime.clone(),
                Some((credentials.clone(), env.clone())),
            )),
        };
        let router = routing::Router::start(
            routing::RouterParts {
                store: store.clone(),
                mesh: mesh.clone(),
                node_id: scout_mesh::wire::NodeId::of_public_key(&identity.public_key()),
                runs: runs::LocalRuns {
                    node_name: node_name.clone(),
                    home: home.clone(),
                    agents: agents.clone(),
                    executor,
                    checkpointer: checkpoints::Checkpointer {
                        store: store.clone(),
                        env: env.clone(),
                        node_id: scout_mesh::wire::NodeId::of_public_key(&identity.public_key())
                            .to_string(),
                    },
                },
                env: env.clone(),
            },
            shutdown_rx.clone(),
            &mut tasks,
        )
        .await?;
        // Before anything else can dispatch or cancel a work order.
        work_orders::recover(&router).await;
        tasks.spawn(work_orders::run(router.clone(), shutdown_rx.clone()));
        let notifier = notify::Notifier::start(
            settings.notifications.clone(),
            shutdown_rx.clone(),
            &mut tasks,
        );
        let approvals = Arc::new(
            approvals::Approvals::new(
                store.clone(),
                mesh.clone(),
                env.clone(),
                scout_mesh::wire::NodeId::of_public_key(&identity.public_key()),
                node_name.as_str().to_owned(),
                notifier,
            )
            .with_default_deadline(settings.approvals.deadline()),
        );
        {
            let router = router.clone();
            let approvals = approvals.clone();
            mesh.set_request_hook(Arc::new(move |from, frame| {
                let router = router.clone();
                let approvals = approvals.clone();
                Box::pin(async move {
                    match frame {
                        scout_mesh::wire::MeshFrame::ApprovalDecide(decision) => {
                            approvals.handle_peer_decision(&from, decision).await
                        }
                        frame => router.handle_peer_request(from, frame).await,
                    }
                })
            }));
        }
        let state = Arc::new(BrokerState {
            home: home.clone(),
            node_name: node_name.clone(),
            node_id: identity.node_id().to_owned(),
            token,
            credentials,
            tokens: scoped_tokens,
            store,
            agents,
            mesh: mesh.clone(),
            runtime,
            router,
            approvals: approvals.clone(),
            env: env.clone(),
        });
        approvals.attach(&state);
        asker.attach(&approvals, state.credentials.clone());
        tasks.spawn(approvals.clone().run(shutdown_rx.clone()));
        if listener.is_some() {
            let state = state.clone();
            let slots = Arc::new(crate::http::terminal_relay::RelaySlots::default());
            mesh.set_terminal_hook(Arc::new(move |viewer, instance, send, recv| {
                Box::pin(crate::http::terminal_relay::serve_relay(
                    state.clone(),
                    slots.clone(),
                    viewer,
                    instance,
                    send,
                    recv,
                ))
            }));
        }
        let info = ReadyInfo {
            node_name: node_name.as_str().to_owned(),
            node_id: state.node_id.clone(),
            http_addr,
            mesh_addr: mesh.local_addr(),
            mesh_addresses: mesh.announced().iter().map(ToString::to_string).collect(),
            mesh_id: mesh.mesh_id().to_string(),
            store_path,
            agents: state.agents.read().map(|agents| agents.len()).unwrap_or(0),
            reconciled_flights,
        };

        if let Some(listener) = listener {
            let router = crate::http::router(state.clone(), http_addr.port());
            // Either a shutdown or a dropped sender ends the server.
            tasks.spawn(crate::http::serve::serve(
                listener,
                router,
                http_connections_max,
                shutdown_rx.clone(),
                env.clone(),
            ));
        }
        if options.watch_config {
            tasks.spawn(watch::run(state.clone(), config_seen, shutdown_rx));
        }

        Ok(Broker {
            state,
            info,
            shutdown,
            tasks,
            inline_store: options.store.inline_writes,
            _lock: lock,
        })
    }

    /// What to print once ready.
    pub fn info(&self) -> &ReadyInfo {
        &self.info
    }

    /// The shared state (for tests and in-process embedding).
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Stops every task at a safe point, then closes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Agents first: those held by holders are left running for the
        // next broker (a restart or an upgrade loses no session and no
        // turn); the others' process groups are killed and reaped. The
        // streams that follow them end, so the HTTP server can drain.
        self.state.runtime.detach().await;
        let _ = self.shutdown.send(true);
        self.state.mesh.close().await;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(cause = %err, "a broker task failed");
            }
        }
        let _ = std::fs::remove_file(self.state.home.runtime_path());
        let store = self.state.store.clone();
        drop(self.state);
        if self.inline_store {
            return store.close().context("cannot close the store");
        }
        tokio::task::spawn_blocking(move || store.close())
            .await
            .context("the store closer stopped")?
            .context("cannot close the store")?;
        Ok(())
    }
}

/// How long a held turn's journal is kept after its program ended when
/// no broker took it: a broker that was away a week finds the turn failed
/// (its journal gone) rather than a disk that filled with old journals.
const HELD_TURN_KEPT_AFTER_END: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 60 * 60);

/// Removes the held turns no flight waits for any more (their holders stop
/// what still runs): turns whose flight ended (the end was committed just
/// before a crash), whose flight failed because their holder was lost,
/// and turns no flight ever waited for (asked through the local API,
/// which does not outlive the broker).
fn sweep_held_turns(turns: &std::path::Path, store: &Store) {
    for (dir, record) in crate::holder::journal::list(turns) {
        if crate::holder::journal::ended_ago(&dir).is_some_and(|ago| ago > HELD_TURN_KEPT_AFTER_END)
        {
            tracing::warn!(turn = %record.turn_id, "a held turn that ended long ago and was never taken; removed");
            crate::holder::journal::remove(&dir);
            continue;
        }
        let waited_for = record.invocation_id.as_deref().is_some_and(|id| {
            store
                .read(|connection| {
                    crate::store::flights::Flight::get_for_invocation(connection, id)
                })
                .ok()
                .flatten()
                .is_some_and(|flight| !flight.state.is_terminal())
        });
        if !waited_for {
            tracing::info!(turn = %record.turn_id, "a held turn nobody waits for; removed");
            crate::holder::journal::remove(&dir);
        }
    }
}

/// Where a running broker listens, as written to `broker.json` (mode
/// 0600). Where it points is only a hint: the CLI still makes whatever
/// answers there prove it holds the home's token (`GET /v1/hello`) before
/// it sends the token.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RuntimeFile {
    /// The broker's process id.
    pub pid: u32,
    /// Its HTTP address.
    pub http_addr: SocketAddr,
    /// Random per start (hex), so two starts of a broker on the same
    /// address and pid are told apart. Empty in files of older brokers.
    #[serde(default)]
    pub instance: String,
}

/// Random bytes of [`RuntimeFile::instance`].
const INSTANCE_NONCE_BYTES: usize = 16;

fn write_runtime_file(home: &Home, http_addr: SocketAddr, env: &Env) -> anyhow::Result<()> {
    let runtime = RuntimeFile {
        pid: std::process::id(),
        http_addr,
        instance: hex::encode(env.random::<[u8; INSTANCE_NONCE_BYTES]>()),
    };
    let text = serde_json::to_string_pretty(&runtime)?;
    write_private_atomically(&home.runtime_path(), text.as_bytes())
        .with_context(|| format!("cannot write {}", home.runtime_path().display()))
}

/// Writes `bytes` to `path` through a temporary file created with mode
/// 0600 and renamed over it, so the file is never readable by others, not
/// even for a moment, and a reader never sees half of it.
fn write_private_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp_path = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp_path);
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp_path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp_path, path)
}

/// The HTTP address of this home's broker: from `broker.json` when a broker
/// wrote one, else the configured port. The caller still probes it: the file
/// of a broker that was killed stays behind.
pub fn broker_http_addr(home: &Home, settings: &settings::Settings) -> anyhow::Result<SocketAddr> {
    if let Ok(text) = std::fs::read_to_string(home.runtime_path())
        && let Ok(runtime) = serde_json::from_str::<RuntimeFile>(&text)
    {
        return Ok(runtime.http_addr);
    }
    Ok(SocketAddr::from(([127, 0, 0, 1], http_port(settings)?)))
}

/// Seeds from settings plus `SCOUT_SEEDS` (comma or space separated).
pub fn seeds(settings: &settings::Settings) -> Vec<String> {
    let mut seeds = settings.seeds.clone();
    if let Ok(extra) = std::env::var("SCOUT_SEEDS") {
        for seed in extra
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match settings::parse_seed(seed) {
                Ok(_) if !seeds.iter().any(|known| known == seed) => seeds.push(seed.to_owned()),
                Ok(_) => {}
                Err(message) => tracing::warn!(%seed, "SCOUT_SEEDS: {message}; skipped"),
            }
        }
    }
    seeds
}

/// The HTTP port: the local runtime's `PORT` variable when set, else the
/// settings' `http_port`.
pub fn http_port(settings: &settings::Settings) -> anyhow::Result<u16> {
    match std::env::var("PORT") {
        Ok(port) => port
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("PORT `{port}` is not a port number (0-65535)")),
        Err(_) => Ok(settings.http_port),
    }
}

/// Takes the home's advisory lock, so a second broker on the same home
/// fails at once instead of fighting over the store and ports.
///
/// A broker restarted inside the same process (an embedding: tests,
/// netsim) may find the lock of the one it replaced still held for a
/// moment: a process spawned on another thread holds a copy of every open
/// descriptor between its fork and its exec, the lock's too. When the
/// holder is this very process, the lock is tried again for up to
/// [`OWN_LOCK_WAIT`]; another process's lock fails at once.
fn lock_home(home: &Home) -> anyhow::Result<File> {
    let started = std::time::Instant::now();
    loop {
        if let Some(file) = try_lock_home(home)? {
            return Ok(file);
        }
        let holder = std::fs::read_to_string(home.lock_path()).unwrap_or_default();
        let own = holder.trim() == std::process::id().to_string();
        if !own || started.elapsed() >= OWN_LOCK_WAIT {
            anyhow::bail!(
                "another broker is already running with home {} (pid {})",
                home.config_dir.display(),
                holder.trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How long a broker waits for a home lock its own process holds (see
/// [`lock_home`]): far longer than a fork takes to reach its exec.
const OWN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the home's advisory lock if nobody holds it: `Ok(None)` means a
/// broker runs on this home. CLI commands that change mesh state hold it
/// while they work on the store directly.
pub fn try_lock_home(home: &Home) -> anyhow::Result<Option<File>> {
    std::fs::create_dir_all(&home.state_dir)
        .with_context(|| format!("cannot create {}", home.state_dir.display()))?;
    let path = home.lock_path();
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(Some(file))
}
