//! The sync core alone, at the scale QUIC brokers in one process cannot
//! reach: 1,000 [`Replica`]s (the same state machine the brokers run)
//! exchanging messages over a simulated network of latencies, split in two
//! halves while every node writes, then healed. No QUIC, no store: this
//! measures the protocol (anti-entropy rounds, simulated time and bytes
//! until every replica holds every record).
//!
//! Each node keeps connections to a few random peers plus its ring
//! neighbours (a replica syncs with at most [`PEERS_MAX`] peers; pushes are
//! not forwarded, so records cross the mesh by anti-entropy deltas, which
//! carry every origin's records). With `views`, the connections are the
//! brokers' active views instead ([`scout_mesh::views`], built by running
//! the views protocol: every node joins through a random earlier one, then
//! shuffles), and the replicas run with `partial_view`: a new record is
//! pushed on along the views, and anti-entropy asks one random peer a
//! round.
//!
//! Before the partition, one node writes one record and the run times its
//! arrival at every replica (propagation p50, p99, max).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use scout_mesh::lifecycle::{EndpointState, Harness};
use scout_mesh::names::{Label, NamePart};
use scout_mesh::sync::{Output, PEERS_MAX, Replica, ReplicaIdentity, SigningKey, SyncConfig};
use scout_mesh::views::{MayJoin, ViewMessage, ViewOutput, Views};
use scout_mesh::wire::{InstanceBody, NodeId, RecordBody, SyncMessage};
use serde::Serialize;

use crate::seeds;
use crate::timeline::Timeline;

/// Nodes in one pure run at most.
pub const PURE_NODES_MAX: usize = 10_000;

/// How many (node, writer) pairs a pure run has when its writers are not
/// asked for: every node writes up to 1,000 nodes, and past that the
/// writers are `PURE_WRITER_PAIRS / nodes` nodes spread evenly (500 of
/// 2,000, 100 of 10,000). Every replica holds every writer's records, so
/// the simulator's memory grows as nodes × writers: 10,000 nodes that all
/// wrote would be 10,000 copies of 30,000 records, far more than this
/// machine holds. At that scale the run shows what does not depend on the
/// data: that nodes which do not write cost the others nothing that grows
/// with N (connections, digests, view upkeep).
pub const PURE_WRITER_PAIRS: usize = 1_000_000;

/// How the pure run is shaped.
#[derive(Debug, Clone)]
pub struct PureOptions {
    /// Replicas.
    pub nodes: usize,
    /// Random peers each node dials (ring neighbours come on top).
    pub random_peers: usize,
    /// The seed.
    pub seed: u64,
    /// Records each node writes while partitioned.
    pub writes_per_node: usize,
    /// How long the halves stay apart, in simulated milliseconds.
    pub partition_ms: u64,
    /// One-way latency range in milliseconds.
    pub latency_ms: (u64, u64),
    /// Longest simulated time to wait for convergence after the heal.
    pub converge_within_ms: u64,
    /// Connect each node to its active view only, and forward pushes.
    pub views: bool,
    /// Nodes that write (spread evenly; node 0 always does); `None`: see
    /// [`PURE_WRITER_PAIRS`].
    pub writers: Option<usize>,
}

impl Default for PureOptions {
    fn default() -> PureOptions {
        PureOptions {
            nodes: 1000,
            random_peers: 4,
            seed: 1,
            writes_per_node: 2,
            partition_ms: 10_000,
            latency_ms: (2, 40),
            converge_within_ms: 600_000,
            views: false,
            writers: None,
        }
    }
}

/// What the pure run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PureReport {
    /// Replicas.
    pub nodes: usize,
    /// Mean connections per node.
    pub mean_degree: f64,
    /// Largest number of connections of one node.
    pub max_degree: usize,
    /// Nodes that wrote.
    pub writers: usize,
    /// Live records every replica must end with.
    pub records: usize,
    /// Whether the connections were the brokers' active views.
    pub views: bool,
    /// Simulated ms from one write until half of the replicas held it.
    pub propagation_p50_ms: Option<u64>,
    /// ... until 99% of them held it.
    pub propagation_p99_ms: Option<u64>,
    /// ... until all of them held it.
    pub propagation_max_ms: Option<u64>,
    /// Simulated ms from the heal until every replica held every record.
    pub converged_after_ms: Option<u64>,
    /// Anti-entropy rounds run between the heal and convergence: the most
    /// any one node ran, and the mean.
    pub rounds_max: u32,
    /// See `rounds_max`.
    pub rounds_mean: f64,
    /// Sync messages sent after the heal.
    pub messages_after_heal: u64,
    /// Bytes of sync messages sent after the heal, per node.
    pub bytes_per_node_after_heal: f64,
    /// Bytes of sync messages sent over the whole run, per node.
    pub bytes_per_node_total: f64,
    /// Whether every replica ended with the same state digest.
    pub identical_digests: bool,
    /// Wall seconds.
    pub wall_s: f64,
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: SyncMessage,
    },
    Timer {
        node: usize,
        at_ms: u64,
    },
}

struct World {
    replicas: Vec<Replica>,
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    up: BTreeSet<(usize, usize)>,
    queue: Timeline<Event>,
    timers: Vec<Option<u64>>,
    now_us: u64,
    latency_ms: (u64, u64),
    rng: rand::rngs::StdRng,
    messages: u64,
    bytes: u64,
    /// Anti-entropy rounds each node ran since counting started.
    rounds: Vec<u32>,
    counting_rounds: bool,
    /// The nodes that write, in order.
    writers: Vec<usize>,
}

impl World {
    fn push(&mut self, at_us: u64, event: Event) {
        self.queue.push(at_us, event);
    }

    /// Acts on a replica's outputs and re-arms its timer.
    fn drain(&mut self, node: usize) {
        while let Some(output) = self.replicas[node].poll_output() {
            if let Output::Send { to, message } = output {
                let Some(&to) = self.index.get(&to) else {
                    continue;
                };
                if !self.up.contains(&(node, to)) {
                    continue;
                }
                self.messages += 1;
                self.bytes += scout_mesh::wire::encode(&message).len() as u64;
                let latency_ms = self.rng.gen_range(self.latency_ms.0..=self.latency_ms.1);
                let at_us = self.now_us + latency_ms * 1000;
                self.push(
                    at_us,
                    Event::Deliver {
                        from: node,
                        to,
                        message,
                    },
                );
            }
        }
        let next = self.replicas[node].poll_timeout();
        if next != self.timers[node]
            && let Some(at_ms) = next
        {
            self.timers[node] = next;
            self.push(at_ms * 1000, Event::Timer { node, at_ms });
        }
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// Runs events up to `until_us`.
    fn run_until(&mut self, until_us: u64) {
        while let Some((at, event)) = self.queue.pop_until(until_us) {
            self.now_us = self.now_us.max(at);
            let now_ms = self.now_ms();
            match event {
                Event::Deliver { from, to, message } => {
                    if !self.up.contains(&(from, to)) {
                        continue;
                    }
                    let from_id = self.ids[from].clone();
                    self.replicas[to].handle_message(now_ms, from_id, message);
                    self.drain(to);
                }
                Event::Timer { node, at_ms } => {
                    if self.timers[node] != Some(at_ms) {
                        continue;
                    }
                    self.timers[node] = None;
                    if self.counting_rounds {
                        self.rounds[node] += 1;
                    }
                    self.replicas[node].handle_timeout(now_ms);
                    self.drain(node);
                }
            }
        }
        self.now_us = self.now_us.max(until_us);
    }

    fn connect(&mut self, a: usize, b: usize) {
        let now_ms = self.now_ms();
        self.up.insert((a, b));
        self.up.insert((b, a));
        let (id_a, id_b) = (self.ids[a].clone(), self.ids[b].clone());
        let _ = self.replicas[a].handle_connected(now_ms, id_b);
        let _ = self.replicas[b].handle_connected(now_ms, id_a);
        self.drain(a);
        self.drain(b);
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        self.up.remove(&(a, b));
        self.up.remove(&(b, a));
        let (id_a, id_b) = (self.ids[a].clone(), self.ids[b].clone());
        self.replicas[a].handle_disconnected(&id_b);
        self.replicas[b].handle_disconnected(&id_a);
        self.drain(a);
        self.drain(b);
    }

    fn write(&mut self, node: usize, idx: usize) {
        let now_ms = self.now_ms();
        let name = format!("@w{idx}@{}#main", self.replicas[node].self_name().as_str());
        let body = RecordBody::Instance(InstanceBody {
            harness: Harness::Command,
            workspace: "main".to_owned(),
            cwd: format!("/srv/w{idx}"),
            endpoint_state: EndpointState::Idle,
            active_flights: 0,
            worktrees: false,
        });
        if let Err(err) = self.replicas[node].put(now_ms, &name, body) {
            tracing::error!(%name, cause = %err, "pure write refused");
        }
        self.drain(node);
    }
}

/// Index of the record written to time propagation (no other write uses
/// it).
const PROPAGATION_WRITE_IDX: usize = 999_999;

/// Longest simulated time a propagation is followed, in microseconds.
const PROPAGATION_WITHIN_US: u64 = 30_000_000;

/// Node 0 writes one record; returns the simulated ms until half, 99% and
/// all of the replicas held it (`None` if some never did in time).
fn measure_propagation(world: &mut World) -> Option<(u64, u64, u64)> {
    let start_us = world.now_us;
    world.write(0, PROPAGATION_WRITE_IDX);
    let writer = world.ids[0].clone();
    let seq = world.replicas[0].next_seq() - 1;
    let n_nodes = world.replicas.len();
    let mut arrived_ms: Vec<u64> = Vec::with_capacity(n_nodes);
    let mut waiting: Vec<usize> = (1..n_nodes).collect();
    arrived_ms.push(0);
    let step_us = 5_000;
    while !waiting.is_empty() && world.now_us < start_us + PROPAGATION_WITHIN_US {
        world.run_until(world.now_us + step_us);
        let now_ms = (world.now_us - start_us) / 1000;
        waiting.retain(|&node| {
            let has = world.replicas[node].vv().get(&writer) >= seq;
            if has {
                arrived_ms.push(now_ms);
            }
            !has
        });
    }
    if !waiting.is_empty() {
        return None;
    }
    arrived_ms.sort_unstable();
    let at = |fraction: f64| {
        arrived_ms[((n_nodes as f64 * fraction).ceil() as usize).clamp(1, n_nodes) - 1]
    };
    Some((at(0.5), at(0.99), arrived_ms[n_nodes - 1]))
}

/// A ring plus random peers, never more than a replica syncs with.
fn ring_and_random_edges(n_nodes: usize, options: &PureOptions) -> BTreeSet<(usize, usize)> {
    let mut topology_rng = seeds::rng(options.seed, "pure-topology", 0);
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut degree = vec![0usize; n_nodes];
    let mut add = |a: usize, b: usize, edges: &mut BTreeSet<(usize, usize)>| {
        let pair = (a.min(b), a.max(b));
        if a != b && !edges.contains(&pair) && degree[a] < PEERS_MAX && degree[b] < PEERS_MAX {
            edges.insert(pair);
            degree[a] += 1;
            degree[b] += 1;
        }
    };
    for node in 0..n_nodes {
        add(node, (node + 1) % n_nodes, &mut edges);
        for _ in 0..options.random_peers {
            let peer = topology_rng.gen_range(0..n_nodes);
            add(node, peer, &mut edges);
        }
    }
    edges
}

/// Shuffle rounds run after the joins, so views mix before the run.
const VIEW_SHUFFLE_ROUNDS: u64 = 5;

/// The brokers' active views, by running the views protocol: each node
/// joins through a random earlier one, messages delivered in order, then
/// a few shuffle rounds. Every pair is in both nodes' active views.
fn view_edges(n_nodes: usize, seed: u64) -> BTreeSet<(usize, usize)> {
    let mut rng = seeds::rng(seed, "pure-views", 0);
    let mut views: Vec<Views<usize>> = (0..n_nodes)
        .map(|idx| {
            let may_join: MayJoin<usize> = Box::new(move |peer: &usize| *peer < n_nodes);
            Views::new(idx, seeds::derive(seed, "pure-view", idx as u64), may_join)
        })
        .collect();
    let mut queue: std::collections::VecDeque<(usize, usize, ViewMessage<usize>)> =
        std::collections::VecDeque::new();
    let drain =
        |views: &mut Vec<Views<usize>>, queue: &mut std::collections::VecDeque<_>, idx: usize| {
            while let Some(output) = views[idx].poll_output() {
                if let ViewOutput::Send { to, message } = output {
                    queue.push_back((idx, to, message));
                }
            }
        };
    let settle = |views: &mut Vec<Views<usize>>,
                  queue: &mut std::collections::VecDeque<(usize, usize, ViewMessage<usize>)>,
                  now_ms: u64| {
        while let Some((from, to, message)) = queue.pop_front() {
            views[to].handle_message(now_ms, from, message);
            while let Some(output) = views[to].poll_output() {
                if let ViewOutput::Send { to: next, message } = output {
                    queue.push_back((to, next, message));
                }
            }
        }
    };
    for idx in 1..n_nodes {
        let contact = rng.gen_range(0..idx);
        views[idx].join(0, contact);
        drain(&mut views, &mut queue, idx);
        settle(&mut views, &mut queue, 0);
    }
    for round in 1..=VIEW_SHUFFLE_ROUNDS {
        let now_ms = round * 2 * scout_mesh::views::SHUFFLE_INTERVAL_MS;
        for idx in 0..n_nodes {
            views[idx].handle_timeout(now_ms);
            drain(&mut views, &mut queue, idx);
        }
        settle(&mut views, &mut queue, now_ms);
    }
    let mut edges = BTreeSet::new();
    for (idx, view) in views.iter().enumerate() {
        for &peer in view.active() {
            if views[peer].active().contains(&idx) {
                edges.insert((idx.min(peer), idx.max(peer)));
            }
        }
    }
    edges
}

/// The writing nodes: `asked` of them (default: see
/// [`PURE_WRITER_PAIRS`]), spread evenly, node 0 first.
fn writers(n_nodes: usize, asked: Option<usize>) -> Vec<usize> {
    let count = asked
        .unwrap_or(PURE_WRITER_PAIRS / n_nodes.max(1))
        .clamp(1, n_nodes);
    (0..count).map(|idx| idx * n_nodes / count).collect()
}

/// Runs the pure scenario: connect, write, partition into halves while
/// every node writes, heal, and measure until every replica has every
/// record.
pub fn run(options: &PureOptions) -> PureReport {
    let wall = std::time::Instant::now();
    let n_nodes = options.nodes.clamp(2, PURE_NODES_MAX);
    let sync = SyncConfig {
        partial_view: options.views,
        ..SyncConfig::default()
    };
    let mut ids = Vec::with_capacity(n_nodes);
    let mut replicas = Vec::with_capacity(n_nodes);
    for idx in 0..n_nodes {
        // A seeded key per node: its records are signed like a broker's.
        let mut secret = [0u8; 32];
        secret[..8]
            .copy_from_slice(&seeds::derive(options.seed, "pure-node", idx as u64).to_le_bytes());
        secret[8..16].copy_from_slice(&(idx as u64).to_le_bytes());
        let signing_key = SigningKey::from_bytes(&secret);
        let id = NodeId::of_public_key(&signing_key.verifying_key().to_bytes());
        let name = Label::parse(&format!("p{idx}"), NamePart::Node).expect("a valid label");
        let config = SyncConfig {
            seed: seeds::derive(options.seed, "pure-sync", idx as u64),
            ..sync.clone()
        };
        // The first node founds the mesh; the pure scenario writes no
        // admissions, so every replica syncs with every peer.
        let founder = ids.first().cloned().unwrap_or_else(|| id.clone());
        let identity = ReplicaIdentity {
            signing_key,
            node_name: name,
            founder,
        };
        replicas.push(Replica::new(identity, config));
        ids.push(id);
    }
    let index = ids
        .iter()
        .cloned()
        .enumerate()
        .map(|(idx, id)| (id, idx))
        .collect();
    let mut world = World {
        replicas,
        ids,
        index,
        up: BTreeSet::new(),
        queue: Timeline::default(),
        timers: vec![None; n_nodes],
        now_us: 0,
        latency_ms: options.latency_ms,
        rng: seeds::rng(options.seed, "pure-latency", 0),
        messages: 0,
        bytes: 0,
        rounds: vec![0; n_nodes],
        counting_rounds: false,
        writers: writers(n_nodes, options.writers),
    };
    let edges = if options.views {
        view_edges(n_nodes, options.seed)
    } else {
        ring_and_random_edges(n_nodes, options)
    };
    let mut degree = vec![0usize; n_nodes];
    for &(a, b) in &edges {
        degree[a] += 1;
        degree[b] += 1;
    }
    let max_degree = degree.iter().copied().max().unwrap_or(0);
    let mean_degree = 2.0 * edges.len() as f64 / n_nodes as f64;
    for &(a, b) in &edges {
        world.connect(a, b);
    }
    for idx in 0..world.writers.len() {
        world.write(world.writers[idx], 0);
    }
    // Long enough for every replica to hold every first record.
    world.run_until(8_000_000);
    let propagation = measure_propagation(&mut world);

    // Partition: every connection between the halves drops.
    let half = n_nodes / 2;
    let crossing: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(a, b)| (a < half) != (b < half))
        .collect();
    for &(a, b) in &crossing {
        world.disconnect(a, b);
    }
    let partition_start_us = world.now_us;
    let writes_end_us = partition_start_us + options.partition_ms * 1000 / 2;
    for write_idx in 1..=options.writes_per_node {
        let at_us = partition_start_us
            + (writes_end_us - partition_start_us) * write_idx as u64
                / options.writes_per_node.max(1) as u64;
        world.run_until(at_us);
        for idx in 0..world.writers.len() {
            world.write(world.writers[idx], write_idx);
        }
    }
    world.run_until(partition_start_us + options.partition_ms * 1000);

    // Heal.
    let heal_us = world.now_us;
    let (messages_before, bytes_before) = (world.messages, world.bytes);
    world.counting_rounds = true;
    for &(a, b) in &crossing {
        world.connect(a, b);
    }
    // What every replica must reach: each writer's last sequence number.
    let target: Vec<(NodeId, u64)> = world
        .writers
        .iter()
        .map(|&node| (world.ids[node].clone(), world.replicas[node].next_seq() - 1))
        .collect();
    let caught_up = |replica: &Replica| target.iter().all(|(id, seq)| replica.vv().get(id) >= *seq);
    let mut behind: Vec<usize> = (0..n_nodes).collect();
    let step_us = 50_000;
    let deadline_us = heal_us + options.converge_within_ms * 1000;
    let mut converged_at_us = None;
    while world.now_us < deadline_us {
        world.run_until(world.now_us + step_us);
        behind.retain(|&node| !caught_up(&world.replicas[node]));
        if behind.is_empty() {
            converged_at_us = Some(world.now_us);
            world.counting_rounds = false;
            break;
        }
    }
    let digests: BTreeSet<u64> = world.replicas.iter().map(Replica::state_digest).collect();
    let records = world.replicas[0]
        .registry()
        .records()
        .filter(|record| record.body.is_some())
        .count();
    let converged_after_ms = converged_at_us.map(|at| (at - heal_us) / 1000);
    PureReport {
        nodes: n_nodes,
        mean_degree,
        max_degree,
        writers: world.writers.len(),
        records,
        views: options.views,
        propagation_p50_ms: propagation.map(|(p50, _, _)| p50),
        propagation_p99_ms: propagation.map(|(_, p99, _)| p99),
        propagation_max_ms: propagation.map(|(_, _, max)| max),
        converged_after_ms,
        rounds_max: world.rounds.iter().copied().max().unwrap_or(0),
        rounds_mean: world.rounds.iter().map(|n| f64::from(*n)).sum::<f64>() / n_nodes as f64,
        messages_after_heal: world.messages - messages_before,
        bytes_per_node_after_heal: (world.bytes - bytes_before) as f64 / n_nodes as f64,
        bytes_per_node_total: world.bytes as f64 / n_nodes as f64,
        identical_digests: digests.len() == 1,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

impl PureReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        format!(
            "pure sync core{}: {} replicas ({} writing), {:.1} connections each (max {}), {} live records\n  \
             one write reached half the replicas in {}, 99% in {}, all in {} (simulated)\n  \
             converged {} after the heal{}\n  \
             {} sync messages after the heal; {:.0} bytes per node after the heal, {:.0} bytes per node in all\n  \
             identical state digests: {}; {:.1} s wall\n",
            if self.views { " with views" } else { "" },
            self.nodes,
            self.writers,
            self.mean_degree,
            self.max_degree,
            self.records,
            ms_or_never(self.propagation_p50_ms),
            ms_or_never(self.propagation_p99_ms),
            ms_or_never(self.propagation_max_ms),
            self.converged_after_ms
                .map_or("never".to_owned(), |ms| format!(
                    "{:.1} s (simulated)",
                    ms as f64 / 1000.0
                )),
            if self.converged_after_ms.is_some() {
                format!(
                    " in {} anti-entropy rounds at most per node ({:.1} on average)",
                    self.rounds_max, self.rounds_mean
                )
            } else {
                String::new()
            },
            self.messages_after_heal,
            self.bytes_per_node_after_heal,
            self.bytes_per_node_total,
            self.identical_digests,
            self.wall_s
        )
    }
}

fn ms_or_never(ms: Option<u64>) -> String {
    ms.map_or("never".to_owned(), |ms| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pure_mesh_on_views_stays_within_its_bound_and_converges() {
        let report = run(&PureOptions {
            nodes: 60,
            partition_ms: 10_000,
            views: true,
            ..PureOptions::default()
        });
        assert!(
            report.max_degree <= scout_mesh::views::ACTIVE_VIEW_MAX,
            "{report:?}"
        );
        assert!(report.propagation_max_ms.is_some(), "{report:?}");
        assert!(report.converged_after_ms.is_some(), "{report:?}");
        assert!(report.identical_digests, "{report:?}");
        assert_eq!(report.records, 60 * 3 + 1);
    }

    #[test]
    fn writers_are_every_node_up_to_a_thousand_then_spread_out() {
        assert_eq!(writers(1_000, None).len(), 1_000);
        let spread = writers(10_000, None);
        assert_eq!(spread.len(), PURE_WRITER_PAIRS / 10_000);
        assert_eq!(spread[0], 0, "node 0 writes: the propagation write");
        assert!(spread.windows(2).all(|pair| pair[1] - pair[0] == 100));
        assert_eq!(writers(10, Some(30)).len(), 10);
        assert_eq!(writers(10, Some(0)), vec![0]);
    }

    #[test]
    fn a_small_pure_mesh_converges_after_a_heal() {
        let report = run(&PureOptions {
            nodes: 40,
            partition_ms: 10_000,
            ..PureOptions::default()
        });
        assert!(report.converged_after_ms.is_some(), "{report:?}");
        assert!(report.identical_digests, "{report:?}");
        assert_eq!(report.records, 40 * 3 + 1);
    }
}
