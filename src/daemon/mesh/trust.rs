//! The broker's answer to "may this key connect?", kept in step with the
//! replicated registry and read by the TLS verifiers inside every handshake.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use scout_mesh::registry::Registry;
use scout_mesh::transport::{Trust, TrustPolicy};
use scout_mesh::wire::NodeId;

/// A snapshot of membership, replaced whole whenever it changes.
#[derive(Debug, Default)]
pub struct MeshTrust {
    state: RwLock<TrustState>,
}

#[derive(Debug, Default, Clone)]
struct TrustState {
    /// Admitted, unrevoked keys.
    members: HashMap<[u8; 32], NodeId>,
    /// Revoked node ids (a revoked node's key maps to one of these).
    revoked: HashSet<NodeId>,
    /// Keys trusted before any admission is known: the inviter a joiner
    /// was given, until the first sync brings the admissions.
    pinned: HashSet<[u8; 32]>,
    /// Unix ms until which an unused invite exists.
    join_window_until_ms: u64,
    /// Whether unknown keys may present a tailnet join at any time
    /// (`discovery.tailscale.admit` is configured).
    tailnet_admit: bool,
}

impl MeshTrust {
    /// Recomputes the member keys from the registry.
    pub fn refresh(&self, registry: &Registry) {
        let members = registry
            .members()
            .iter()
            .filter_map(|id| {
                let key = registry.admitted_key(id)?;
                // An admission whose key does not hash to its node id is
                // ignored: node ids are derived from keys, never chosen.
                (NodeId::of_public_key(&key) == *id).then(|| (key, id.clone()))
            })
            .collect();
        let revoked = registry
            .records()
            .filter(|record| record.key.kind == scout_mesh::wire::RecordKind::Revocation)
            .filter_map(|record| NodeId::parse(&record.key.name).ok())
            .collect();
        if let Ok(mut state) = self.state.write() {
            state.members = members;
            state.revoked = revoked;
        }
    }

    /// Trusts `key` as the first peer of a mesh just joined.
    pub fn pin(&self, key: [u8; 32]) {
        if let Ok(mut state) = self.state.write() {
            state.pinned.insert(key);
        }
    }

    /// Opens (or extends) the window in which unknown keys may present an
    /// invite.
    pub fn set_join_window_until(&self, until_ms: u64) {
        if let Ok(mut state) = self.state.write() {
            state.join_window_until_ms = until_ms;
        }
    }

    /// Keeps the join window open for as long as the tailnet admit opt-in
    /// is on, so an unknown key can present a tailnet join.
    pub fn set_tailnet_admit(&self, on: bool) {
        if let Ok(mut state) = self.state.write() {
            state.tailnet_admit = on;
        }
    }

    /// The node id of a member key.
    pub fn member_id(&self, key: &[u8; 32]) -> Option<NodeId> {
        self.state.read().ok()?.members.get(key).cloned()
    }
}

impl TrustPolicy for MeshTrust {
    fn trust(&self, public_key: &[u8; 32]) -> Trust {
        let Ok(state) = self.state.read() else {
            return Trust::Unknown;
        };
        if state.revoked.contains(&NodeId::of_public_key(public_key)) {
            Trust::Revoked
        } else if state.members.contains_key(public_key) || state.pinned.contains(public_key) {
            Trust::Member
        } else {
            Trust::Unknown
        }
    }

    fn join_window_open(&self) -> bool {
        let now = crate::store::unix_ms_now();
        self.state
            .read()
            .map(|state| {
                state.tailnet_admit || u64::try_from(now).unwrap_or(0) <= state.join_window_until_ms
            })
            .unwrap_or(false)
    }
}
