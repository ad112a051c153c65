//! One simulated host's broker: its home (settings, a node key derived
//! from the run seed, its agents file, its SQLite store), and the real
//! `scout` broker started on a simulated socket, clock and seed, crashed
//! and restarted on the same address with its store kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use rand::Rng;
use scout::api::EventKind;
use scout::config::mesh_file::{BootstrapPeer, MeshFile};
use scout::config::relay_agents::{ManualAgent, RelayAgents};
use scout::daemon::mesh::{Mesh, SocketOverride};
use scout::daemon::{Broker, BrokerOptions};
use scout::env::Env;
use scout::home::Home;
use scout::store::{StoreOptions, Synchronous};
use scout_mesh::lifecycle::Harness;
use scout_mesh::sync::SyncConfig;
use scout_mesh::wire::{MeshId, NodeId};
use scout_net::transport::TransportConfig;

use crate::agent::{ExecLog, SimExecutor, WorkTime};
use crate::clock::SimClock;
use crate::history::{EndLog, EndRecord, EndSide};
use crate::net::Network;
use crate::seeds;

/// The UDP port every simulated broker listens on (each host has its own
/// address, as machines do).
pub const MESH_PORT: u16 = 3101;

/// The workspace part of every simulated agent's instance name.
pub const WORKSPACE: &str = "main";

/// What every broker of a run is started with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The run seed.
    pub seed: u64,
    /// Sync tunables.
    pub sync: SyncConfig,
    /// Transport timeouts.
    pub transport: TransportConfig,
    /// Partial view sizes.
    pub views: scout_mesh::views::ViewSizes,
    /// How long the in-process agents work on an invocation.
    pub work: WorkTime,
    /// Where every node's agents log their executions.
    pub executions: ExecLog,
    /// Where every broker's announced ends of deliveries and flights go.
    pub ends: EndLog,
    /// The instant the network started (execution times count from it).
    pub start: tokio::time::Instant,
}

/// The address of host `idx`: `10.77.x.y:3101`, one host per address.
pub fn host_addr(idx: usize) -> std::net::SocketAddr {
    let idx = u16::try_from(idx).unwrap_or(u16::MAX);
    let [high, low] = idx.to_be_bytes();
    std::net::SocketAddr::from(([10, 77, high, low.wrapping_add(1)], MESH_PORT))
}

/// One simulated host and its broker.
#[derive(Debug)]
pub struct SimNode {
    /// Index in the scenario.
    pub idx: usize,
    /// Node name.
    pub name: String,
    /// Its home (config and store in one directory).
    pub home: Home,
    /// Its clock (kept across restarts).
    pub clock: Arc<SimClock>,
    /// The node id, derived from the seeded key.
    pub node_id: NodeId,
    /// The raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// The running broker, if up.
    pub broker: Option<Broker>,
    /// Times its broker was started.
    pub incarnations: u64,
    /// Its agents (`relay-agents.json`): name to version; the version is
    /// part of the working directory, so an update changes the record.
    pub agents: BTreeMap<String, u64>,
    /// The definition that makes worktrees on demand, when the scenario
    /// gives this node one, and its git repository.
    pub worktree_agent: Option<(String, PathBuf)>,
    /// Set by the executor when it made a worktree: the node reloads its
    /// agents, as the broker's config watch would.
    pub worktrees_changed: Arc<AtomicBool>,
    /// Cleared when the running incarnation crashes, which stops its
    /// agents.
    alive: Option<Arc<AtomicBool>>,
}

/// The worktrees on one node's disk, as git and the directory show them.
#[derive(Debug, Clone, Default)]
pub struct DiskWorktrees {
    /// The directory the definition's worktrees go in.
    pub dir: PathBuf,
    /// Every worktree git lists besides the repository's own checkout:
    /// its directory and branch.
    pub listed: Vec<(PathBuf, Option<String>)>,
    /// The entries of [`DiskWorktrees::dir`].
    pub entries: Vec<PathBuf>,
}

impl SimNode {
    /// Writes the home of host `idx` under `root`: settings, a node key
    /// derived from `seed`, an API token and an empty agents file.
    pub fn prepare(
        root: &Path,
        idx: usize,
        name: &str,
        seed: u64,
        clock: Arc<SimClock>,
    ) -> anyhow::Result<SimNode> {
        let home = Home::in_dir(root.join(name));
        std::fs::create_dir_all(&home.config_dir)
            .with_context(|| format!("cannot create {}", home.config_dir.display()))?;
        let settings = serde_json::json!({
            "node_name": name,
            "http_port": 0,
            "mesh_port": MESH_PORT,
            "discovery": { "mdns": false, "tailscale": { "enabled": false } },
        });
        std::fs::write(home.settings_path(), settings.to_string())
            .context("cannot write settings.json")?;
        let secret: [u8; 32] = seeds::rng(seed, "node-key", idx as u64).r#gen();
        let signing = SigningKey::from_bytes(&secret);
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| anyhow::anyhow!("cannot encode a node key: {err}"))?;
        write_secret(&home.node_key_path(), pem.as_bytes())?;
        write_secret(&home.token_path(), b"netsim\n")?;
        let node = SimNode {
            idx,
            name: name.to_owned(),
            home,
            clock,
            node_id: NodeId::of_public_key(&signing.verifying_key().to_bytes()),
            public_key: signing.verifying_key().to_bytes(),
            broker: None,
            incarnations: 0,
            agents: BTreeMap::new(),
            worktree_agent: None,
            worktrees_changed: Arc::new(AtomicBool::new(false)),
            alive: None,
        };
        node.write_agents()?;
        Ok(node)
    }

    /// Makes the node a member of `mesh_id` before its first start, with
    /// `bootstrap` (addresses and the keys to expect there) to dial first:
    /// the `mesh.json` a join leaves behind.
    pub fn enter_mesh(
        &self,
        mesh_id: &MeshId,
        bootstrap: &[(std::net::SocketAddr, [u8; 32])],
    ) -> anyhow::Result<()> {
        let file = MeshFile {
            mesh_id: mesh_id.to_string(),
            bootstrap: bootstrap
                .iter()
                .map(|(addr, key)| BootstrapPeer {
                    address: addr.to_string(),
                    public_key: key.iter().map(|byte| format!("{byte:02x}")).collect(),
                    pinned: true,
                })
                .collect(),
            ..MeshFile::default()
        };
        std::fs::write(self.home.mesh_path(), serde_json::to_string_pretty(&file)?)
            .context("cannot write mesh.json")
    }

    /// The broker's mesh, if the node is up.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.broker.as_ref().map(|broker| &broker.state().mesh)
    }

    /// Whether the broker runs.
    pub fn is_up(&self) -> bool {
        self.broker.is_some()
    }

    /// Starts the broker on a fresh socket of the host's address.
    pub async fn start(&mut self, net: &Network, config: &BrokerConfig) -> anyhow::Result<()> {
        anyhow::ensure!(self.broker.is_none(), "{} is running already", self.name);
        self.incarnations += 1;
        let socket = net.bind(self.idx);
        let alive = Arc::new(AtomicBool::new(true));
        let stream = self.idx as u64 * 1_000_000 + self.incarnations;
        let executor = SimExecutor::new(
            &self.name,
            self.incarnations,
            alive.clone(),
            seeds::rng(config.seed, "agent", stream),
            config.work,
            config.executions.clone(),
            config.start,
        )
        .signal_worktrees(self.worktrees_changed.clone());
        self.alive = Some(alive.clone());
        let options = BrokerOptions {
            mesh_socket: Some(SocketOverride {
                socket,
                runtime: Arc::new(quinn::TokioRuntime),
            }),
            // Row timestamps, ids and every random choice of the broker
            // follow the simulated clock and the seed, so orders that
            // depend on them repeat too.
            env: Some(Env::simulated(
                self.clock.clone(),
                seeds::derive(config.seed, "broker", stream),
            )),
            sync: Some(config.sync.clone()),
            transport: Some(config.transport.clone()),
            views: Some(config.views),
            serve_http: false,
            watch_config: false,
            store: StoreOptions {
                // Commits survive a crash of the process, which is what a
                // simulated crash is; an fsync per commit would only cost
                // wall time.
                synchronous: Synchronous::Normal,
                inline_writes: true,
                ..StoreOptions::default()
            },
            executor: Some(Arc::new(executor)),
        };
        let broker = Broker::start_with(&self.home, options)
            .await
            .with_context(|| format!("cannot start the broker of {}", self.name))?;
        self.listen_for_ends(&broker, config, alive);
        self.broker = Some(broker);
        Ok(())
    }

    /// Logs every end of a delivery (origin side) or a flight (owner side)
    /// the broker announces, until it stops or crashes.
    fn listen_for_ends(&self, broker: &Broker, config: &BrokerConfig, alive: Arc<AtomicBool>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut events = broker.state().router.subscribe();
        let log = config.ends.clone();
        let node = self.name.clone();
        let incarnation = self.incarnations;
        let start = config.start;
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        log.missed(missed);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if !alive.load(Ordering::SeqCst) {
                    return;
                }
                let side = match event.kind {
                    EventKind::Delivery => EndSide::Delivery,
                    EventKind::Flight => EndSide::Flight,
                    EventKind::Output => continue,
                };
                let Some(state) = event.state.filter(|state| state.is_terminal()) else {
                    continue;
                };
                let state = state.to_string();
                log.push(EndRecord {
                    invocation_id: event.invocation_id,
                    node: node.clone(),
                    incarnation,
                    side,
                    state,
                    at_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
        });
    }

    /// Crashes the node: mutes its socket first (nothing more leaves or
    /// arrives), then drops the broker, which aborts its tasks. Nothing is
    /// flushed or closed; what the store committed stays.
    pub fn crash(&mut self, net: &Network) {
        net.crash(self.idx);
        if let Some(alive) = self.alive.take() {
            alive.store(false, Ordering::SeqCst);
        }
        drop(self.broker.take());
    }

    /// Deletes the store (a lost disk); the node must be down.
    pub fn wipe_store(&self) -> anyhow::Result<()> {
        let store = self.home.store_path();
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", store.display()));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot delete {}", path.display()));
                }
            }
        }
        Ok(())
    }

    /// Stops the broker the way `scout up` does on Ctrl-C.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.alive = None;
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await?;
        }
        Ok(())
    }

    /// The instance name of agent `name` on this node.
    pub fn instance_name(&self, agent: &str) -> String {
        format!("@{agent}@{}#{WORKSPACE}", self.name)
    }

    /// Gives the node agent `definition`, which makes worktrees on demand,
    /// over a new git repository in its home (one commit on `main`).
    pub fn add_worktree_agent(&mut self, definition: &str) -> anyhow::Result<()> {
        let repo = self.home.config_dir.join("repo");
        std::fs::create_dir_all(&repo)
            .with_context(|| format!("cannot create {}", repo.display()))?;
        std::fs::write(
            repo.join("README"),
            format!("{definition} on {}\n", self.name),
        )
        .context("cannot write the repository's README")?;
        git(&repo, &["init", "-q", "-b", WORKSPACE])?;
        git(&repo, &["add", "README"])?;
        git(&repo, &["commit", "-q", "-m", "start"])?;
        self.worktree_agent = Some((definition.to_owned(), repo));
        self.write_agents()
    }

    /// Where the worktrees of the node's worktree agent go.
    pub fn worktrees_dir(&self) -> Option<PathBuf> {
        let (definition, _) = self.worktree_agent.as_ref()?;
        Some(
            scout::config::settings::Settings::default()
                .worktrees_root(&self.home)
                .join(definition),
        )
    }

    /// The instance name of the worktree agent's workspace `workspace`.
    pub fn workspace_instance(&self, workspace: &str) -> Option<String> {
        let (definition, _) = self.worktree_agent.as_ref()?;
        Some(format!("@{definition}@{}#{workspace}", self.name))
    }

    /// The worktrees on disk, read with git (not through the broker); `None`
    /// without a worktree agent.
    pub fn disk_worktrees(&self) -> Option<anyhow::Result<DiskWorktrees>> {
        let (_, repo) = self.worktree_agent.as_ref()?;
        let dir = self.worktrees_dir()?;
        Some((|| {
            let text = git_output(repo, &["worktree", "list", "--porcelain"])?;
            let mut listed: Vec<(PathBuf, Option<String>)> = Vec::new();
            for line in text.lines() {
                if let Some(path) = line.strip_prefix("worktree ") {
                    listed.push((PathBuf::from(path), None));
                } else if let Some(branch) = line.strip_prefix("branch refs/heads/")
                    && let Some(last) = listed.last_mut()
                {
                    last.1 = Some(branch.to_owned());
                }
            }
            let top = repo.canonicalize().unwrap_or_else(|_| repo.clone());
            listed.retain(|(path, _)| *path != top && path != repo);
            let mut entries = Vec::new();
            match std::fs::read_dir(&dir) {
                Ok(read) => {
                    for entry in read {
                        entries.push(entry.context("cannot read the worktrees dir")?.path());
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", dir.display()));
                }
            }
            entries.sort();
            Ok(DiskWorktrees {
                dir: dir.clone(),
                listed,
                entries,
            })
        })())
    }

    /// The working directory agent `name` has at `version`.
    pub fn agent_cwd(agent: &str, version: u64) -> PathBuf {
        PathBuf::from(format!("/srv/{agent}/v{version}"))
    }

    /// Writes `relay-agents.json` from [`SimNode::agents`].
    pub fn write_agents(&self) -> anyhow::Result<()> {
        let mut agents: Vec<ManualAgent> = self
            .agents
            .iter()
            .map(|(name, version)| ManualAgent {
                name: name.clone(),
                harness: Harness::Command,
                command: vec!["sh".to_owned()],
                cwd: Some(SimNode::agent_cwd(name, *version)),
                workspace: Some(WORKSPACE.to_owned()),
                prompt_pattern: None,
                worktrees: false,
                base_branch: None,
            })
            .collect();
        if let Some((definition, repo)) = &self.worktree_agent {
            agents.push(ManualAgent {
                name: definition.clone(),
                harness: Harness::Command,
                command: vec!["sh".to_owned()],
                cwd: Some(repo.clone()),
                workspace: Some(WORKSPACE.to_owned()),
                prompt_pattern: None,
                worktrees: true,
                base_branch: None,
            });
        }
        let relay = RelayAgents {
            agents,
            ..RelayAgents::default()
        };
        let text = serde_json::to_string_pretty(&relay)?;
        std::fs::write(self.home.relay_agents_path(), text)
            .context("cannot write relay-agents.json")
    }

    /// Makes the running broker pick up its agents file, as its file
    /// watcher would: the changed instances are published.
    pub fn reload_agents(&self) {
        if let Some(broker) = &self.broker {
            scout::daemon::watch::reload(broker.state());
        }
    }
}

/// Runs git in `dir` with a fixed identity (the machine's git config may
/// have none), failing with git's message.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    git_output(dir, args).map(|_| ())
}

fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=netsim",
            "-c",
            "user.email=netsim@example.invalid",
        ])
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
