//! Who may act on a flight over the mesh. Every member of a mesh can open a
//! stream to every other, so membership alone must not let one broker read,
//! cancel or finish another's work:
//!
//! - a `FlightQuery` or `Cancel` is answered only for the invocation's
//!   origin, as the owner recorded it when it accepted the invoke; anyone
//!   else gets `NOT_ORIGIN` and nothing changes (the owner's own operator
//!   still cancels through the local API, which never comes through here);
//! - a `FlightUpdate` is applied only when it comes from the owner the
//!   origin sent that invocation to. One for an unknown invocation, or from
//!   any other peer, is dropped without an event or a state change,
//!   counted, and logged at most once a minute per peer.
//!
//! The counters are what `GET /v1/mesh` shows as `flight_updates_dropped`
//! and `flight_requests_refused`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use scout_mesh::wire::{MeshFrame, NodeId};

use super::Router;
use crate::store::deliveries::Delivery;

/// A peer's refused flight requests and dropped updates are logged at most
/// once per this many milliseconds: a member that floods them must not
/// flood the log too, yet each offending peer still shows up within a
/// minute.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

/// Peers whose last log time is remembered at most. Only members can reach
/// this code, so the map stays far below this; the bound keeps it small
/// even if membership churns. When full, the map is cleared, which at worst
/// logs one extra line per peer.
pub const REFUSAL_LOG_PEERS_MAX: usize = 1024;

/// Counters of refused flight traffic, and the per-peer log limiter.
#[derive(Debug, Default)]
pub struct PeerRefusals {
    /// Flight updates dropped (unknown invocation, or not from its owner).
    updates_dropped: AtomicU64,
    /// Flight queries and cancels refused with `NOT_ORIGIN`.
    requests_refused: AtomicU64,
    /// Unix ms of the last log line per peer.
    last_logged_ms: Mutex<HashMap<NodeId, u64>>,
}

/// What the counters say, for `GET /v1/mesh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalCounts {
    /// Flight updates dropped.
    pub flight_updates_dropped: u64,
    /// Flight queries and cancels refused.
    pub flight_requests_refused: u64,
}

impl PeerRefusals {
    /// Counts one dropped flight update from `peer`; true when it should
    /// be logged.
    pub fn update_dropped(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.updates_dropped.fetch_add(1, Ordering::Relaxed);
        self.may_log(peer, now_ms)
    }

    /// Counts one refused query or cancel from `peer`; true when it should
    /// be logged.
    pub fn request_refused(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.requests_refused.fetch_add(1, Ordering::Relaxed);
        self.may_log(peer, now_ms)
    }

    /// The counts so far.
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            flight_updates_dropped: self.updates_dropped.load(Ordering::Relaxed),
            flight_requests_refused: self.requests_refused.load(Ordering::Relaxed),
        }
    }

    fn may_log(&self, peer: &NodeId, now_ms: u64) -> bool {
        let mut last = self
            .last_logged_ms
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(at) = last.get(peer)
            && now_ms.saturating_sub(*at) < REFUSAL_LOG_INTERVAL_MS
            // A clock that stepped back must not silence the peer forever.
            && now_ms >= *at
        {
            return false;
        }
        if last.len() >= REFUSAL_LOG_PEERS_MAX && !last.contains_key(peer) {
            last.clear();
        }
        last.insert(peer.clone(), now_ms);
        true
    }
}

/// What to do with a flight update that arrived over the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateVerdict {
    /// From the owner of a delivery in progress: apply it.
    Apply,
    /// From the owner of a delivery that already ended (a report that lost
    /// the race with a query): nothing to do, nothing suspicious.
    Late,
    /// Unknown invocation: drop and count.
    Unknown,
    /// Not from the invocation's owner: drop and count.
    NotOwner,
}

/// Judges a flight update for `invocation_id` from `from`.
pub fn judge_update(router: &Router, from: &NodeId, invocation_id: &str) -> UpdateVerdict {
    match super::origin::owner_of(router, invocation_id) {
        Some(owner) if owner == *from => UpdateVerdict::Apply,
        Some(_) => UpdateVerdict::NotOwner,
        None => {
            let id = invocation_id.to_owned();
            let deliveries = router
                .inner
                .store
                .read(move |connection| Delivery::list_for_invocation(connection, &id))
                .unwrap_or_default();
            if deliveries.is_empty() {
                UpdateVerdict::Unknown
            } else if deliveries
                .iter()
                .any(|delivery| delivery.owner_node.as_deref() == Some(from.as_str()))
            {
                UpdateVerdict::Late
            } else {
                UpdateVerdict::NotOwner
            }
        }
    }
}

/// Handles a `FlightUpdate` from a peer: applies it only when it comes
/// from the invocation's owner.
pub async fn flight_update_from(
    router: &Router,
    from: &NodeId,
    update: scout_mesh::wire::FlightUpdate,
) -> MeshFrame {
    let verdict = judge_update(router, from, &update.invocation_id);
    match verdict {
        UpdateVerdict::Apply => {
            super::origin::apply_update(router, update).await;
            MeshFrame::FlightAck(None)
        }
        UpdateVerdict::Late => MeshFrame::FlightAck(None),
        UpdateVerdict::Unknown | UpdateVerdict::NotOwner => {
            if router.inner.refusals.update_dropped(from, router.now_ms()) {
                tracing::warn!(
                    peer = %from,
                    invocation = %update.invocation_id,
                    verdict = ?verdict,
                    "dropped a flight update from a peer that is not the invocation's owner (logged once a minute per peer)"
                );
            }
            match verdict {
                UpdateVerdict::Unknown => MeshFrame::error(
                    "INVOCATION_NOT_FOUND",
                    "no delivery of that invocation here",
                ),
                _ => MeshFrame::error("NOT_OWNER", "only the owner of a flight reports on it"),
            }
        }
    }
}

/// The refusal to answer when `from` is not the origin of
/// `invocation_id` as this owner recorded it; `None` when it may go on.
/// An invocation this broker does not hold passes: there is nothing to
/// read or cancel, and the origin learns that the owner never got it.
pub fn origin_refusal(router: &Router, from: &NodeId, invocation_id: &str) -> Option<MeshFrame> {
    let invocation = match router.inner.store.get_invocation(invocation_id) {
        Ok(invocation) => invocation?,
        Err(err) => return Some(MeshFrame::error(err.code(), err.to_string())),
    };
    if invocation.origin_node == from.as_str() {
        return None;
    }
    if router.inner.refusals.request_refused(from, router.now_ms()) {
        tracing::warn!(
            peer = %from,
            invocation = %invocation_id,
            "refused a flight query or cancel from a peer that is not the invocation's origin (logged once a minute per peer)"
        );
    }
    Some(MeshFrame::error(
        "NOT_ORIGIN",
        "only the origin of an invocation may query or cancel its flight",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(byte: u8) -> NodeId {
        NodeId::of_public_key(&[byte; 32])
    }

    #[test]
    fn a_peer_is_logged_at_most_once_a_minute_and_every_drop_is_counted() {
        let refusals = PeerRefusals::default();
        let (a, b) = (peer(1), peer(2));
        assert!(refusals.update_dropped(&a, 1_000));
        assert!(!refusals.update_dropped(&a, 1_000 + REFUSAL_LOG_INTERVAL_MS - 1));
        assert!(!refusals.request_refused(&a, 2_000));
        // Another peer has its own minute.
        assert!(refusals.update_dropped(&b, 2_000));
        assert!(refusals.update_dropped(&a, 1_000 + REFUSAL_LOG_INTERVAL_MS));
        // A clock that steps back logs again instead of never.
        assert!(refusals.request_refused(&a, 10));
        assert_eq!(
            refusals.counts(),
            RefusalCounts {
                flight_updates_dropped: 4,
                flight_requests_refused: 2,
            }
        );
    }

    #[test]
    fn the_log_limiter_stays_bounded() {
        let refusals = PeerRefusals::default();
        for idx in 0..(REFUSAL_LOG_PEERS_MAX + 10) {
            let key: [u8; 32] = std::array::from_fn(|pos| (idx >> (8 * (pos % 4))) as u8);
            refusals.update_dropped(&NodeId::of_public_key(&key), 0);
        }
        let remembered = refusals
            .last_logged_ms
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len();
        assert!(remembered <= REFUSAL_LOG_PEERS_MAX, "{remembered}");
    }
}
