//! The recorded history of a run: every operation the workload made (when,
//! where, what, how it ended, when every live replica had it), every fault,
//! and the replicas' state sampled over time. The checks and the report
//! read only this and a final read of every node's store.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::scenario::OpKind;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A registry write: accepted (committed on its node) and seen by every
    /// live replica. An invocation: completed.
    Ok,
    /// Refused (`detail` says why: `node_down`, an invalid record, no such
    /// agent), or an invocation that ended failed or cancelled with a
    /// recorded reason.
    Failed,
    /// Accepted, but by the end not seen by every live replica (a write)
    /// or not ended (an invocation).
    Unknown,
}

/// One operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpRecord {
    /// Sequence number in the run.
    pub id: u64,
    /// Simulated milliseconds after the scenario's start.
    pub at_ms: u64,
    /// The node it ran on.
    pub node: String,
    /// What it did.
    pub kind: OpKind,
    /// The agent, definition or target.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The change made, or why it failed.
    pub detail: String,
    /// The sequence number of the record it wrote.
    pub counter: Option<u64>,
    /// How long until every live replica held the record (or a newer
    /// one); for an invocation, until its origin recorded its end.
    pub replicated_after_ms: Option<u64>,
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultMark {
    /// Simulated milliseconds after the scenario's start.
    pub at_ms: u64,
    /// What it was.
    pub label: String,
    /// Whether it restored something (heal, restart, reset, release).
    pub healing: bool,
}

/// One node's state at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeSample {
    /// Live (non-tombstone) records in its registry.
    pub records: usize,
    /// Its registry's state digest.
    pub digest: u64,
}

/// Every replica's state at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Simulated milliseconds after the scenario's start.
    pub t_ms: u64,
    /// Per node; `None` while it is down.
    pub nodes: Vec<Option<NodeSample>>,
    /// Distinct states among the live replicas (1: converged).
    pub distinct_states: usize,
    /// Whether any link was blocked.
    pub partitioned: bool,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `samples_ms`.
    pub fn of(mut samples_ms: Vec<f64>) -> Latency {
        if samples_ms.is_empty() {
            return Latency::default();
        }
        samples_ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let idx = ((samples_ms.len() - 1) as f64 * p).round() as usize;
            samples_ms[idx.min(samples_ms.len() - 1)]
        };
        Latency {
            count: samples_ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: samples_ms[samples_ms.len() - 1],
        }
    }
}

/// Which side of routing announced an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndSide {
    /// The origin recorded the result of its delivery.
    Delivery,
    /// An owner recorded the end of its flight.
    Flight,
}

/// An end of an invocation a broker announced on its event stream.
#[derive(Debug, Clone, Serialize)]
pub struct EndRecord {
    /// The invocation.
    pub invocation_id: String,
    /// The node that announced it.
    pub node: String,
    /// Which start of that node's broker.
    pub incarnation: u64,
    /// Origin or owner.
    pub side: EndSide,
    /// The terminal state word (`completed`, `failed`, `cancelled`).
    pub state: String,
    /// Simulated ms after the network started.
    pub at_ms: u64,
}

/// The ends every broker of a run announced, and how many events a
/// listener missed (a broadcast that overflowed), which makes a missing
/// end no evidence.
#[derive(Debug, Clone, Default)]
pub struct EndLog {
    inner: Arc<Mutex<(Vec<EndRecord>, u64)>>,
}

impl EndLog {
    /// Adds one end.
    pub fn push(&self, record: EndRecord) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push(record);
    }

    /// Counts events a listener missed.
    pub fn missed(&self, n: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.1 = inner.1.saturating_add(n);
    }

    /// Every end so far, and the events missed.
    pub fn records(&self) -> (Vec<EndRecord>, u64) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.0.clone(), inner.1)
    }
}
