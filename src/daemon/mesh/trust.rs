//! The broker's answer to "may this key connect?", kept in step with the
//! replicated registry and read by the TLS verifiers inside every handshake,
//! by the hello, and by every request a connected peer sends.
//!
//! Revocation always wins: a revoked key is refused before any pin or
//! admission is looked at. A pin (the inviter a joiner was given) only
//! bridges the time until the first sync brings the admissions; once the
//! registry says who the members are, the pin is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use scout_mesh::registry::Registry;
use scout_mesh::wire::{NodeId, RecordBody, RecordKind};
use scout_net::transport::{Trust, TrustPolicy};

use crate::env::Env;

/// A snapshot of membership, replaced whole whenever it changes.
#[derive(Debug)]
pub struct MeshTrust {
    state: RwLock<TrustState>,
    /// The clock the join window is judged by.
    env: Env,
}

impl MeshTrust {
    /// An empty snapshot whose join window runs on `env`'s wall clock.
    pub fn new(env: Env) -> MeshTrust {
        MeshTrust {
            state: RwLock::default(),
            env,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct TrustState {
    /// Admitted, unrevoked keys.
    members: HashMap<[u8; 32], NodeId>,
    /// Their node ids: the views ask whether a node is a member for every
    /// message, which must not cost a pass over a thousand members.
    member_nodes: HashSet<NodeId>,
    /// Revoked node ids (a revoked node's key maps to one of these).
    revoked: HashSet<NodeId>,
    /// Keys trusted before any admission is known: the inviter a joiner
    /// was given, until the first sync brings the admissions.
    pinned: HashSet<[u8; 32]>,
    /// Unix ms until which an unused invite exists.
    join_window_until_ms: u64,
    /// Bumped whenever the members may have changed.
    members_version: u64,
    /// The registry's [`Registry::trust_changes`] at the last
    /// [`MeshTrust::refresh_and_settle`] (`None` after a plain refresh,
    /// which may have been of another registry).
    settled_version: Option<u64>,
    /// Whether unknown keys may present a tailnet join at any time
    /// (`discovery.tailscale.admit` is configured).
    tailnet_admit: bool,
}

impl TrustState {
    fn set_members(&mut self, members: HashMap<[u8; 32], NodeId>) {
        self.member_nodes = members.values().cloned().collect();
        self.members = members;
    }
}

/// What the registry says about membership, reduced to what the pins and
/// the verdicts need.
#[derive(Debug, Default)]
struct RegistryFacts {
    members: HashMap<[u8; 32], NodeId>,
    revoked: HashSet<NodeId>,
    /// Keys named by any live admission (a member or not).
    admitted_keys: HashSet<[u8; 32]>,
    has_admissions: bool,
}

impl RegistryFacts {
    /// The facts of `registry`; `known` are the members of the last look,
    /// whose keys were checked then.
    fn of(registry: &Registry, known: &HashMap<[u8; 32], NodeId>) -> RegistryFacts {
        let members = registry
            .members()
            .iter()
            .filter_map(|id| {
                let key = registry.admitted_key(id)?;
                // An admission whose key does not hash to its node id is
                // ignored: node ids are derived from keys, never chosen.
                let derived = known.get(&key) == Some(id) || NodeId::of_public_key(&key) == *id;
                derived.then(|| (key, id.clone()))
            })
            .collect();
        let mut revoked = HashSet::new();
        let mut admitted_keys = HashSet::new();
        for record in registry.trust_records() {
            match (&record.key.kind, &record.body) {
                (RecordKind::Revocation, _) => {
                    if let Ok(id) = NodeId::parse(&record.key.name) {
                        revoked.insert(id);
                    }
                }
                (RecordKind::Admission, Some(RecordBody::Admission(admission))) => {
                    admitted_keys.insert(admission.public_key);
                }
                _ => {}
            }
        }
        RegistryFacts {
            members,
            revoked,
            admitted_keys,
            has_admissions: registry.has_admissions(),
        }
    }
}

/// The pins the registry has made unnecessary: a pinned key that an
/// admission names (the registry vouches for it now, or refuses it), one
/// that is revoked (revocation wins anyway), and, once this broker caught
/// up with a peer while the registry holds admissions, every pin (the
/// registry is the whole truth from then on).
fn settled_pins(
    pinned: &HashSet<[u8; 32]>,
    facts: &RegistryFacts,
    caught_up: bool,
) -> Vec<[u8; 32]> {
    let mut settled: Vec<[u8; 32]> = pinned
        .iter()
        .filter(|key| {
            (caught_up && facts.has_admissions)
                || facts.admitted_keys.contains(*key)
                || facts.revoked.contains(&NodeId::of_public_key(key))
        })
        .copied()
        .collect();
    settled.sort_unstable();
    settled
}

/// The verdict on a key: revocation first, then admissions, then pins.
fn verdict(state: &TrustState, public_key: &[u8; 32]) -> Trust {
    if state.revoked.contains(&NodeId::of_public_key(public_key)) {
        Trust::Revoked
    } else if state.members.contains_key(public_key) || state.pinned.contains(public_key) {
        Trust::Member
    } else {
        Trust::Unknown
    }
}

impl MeshTrust {
    /// Recomputes the member and revoked keys from the registry. Pins are
    /// left alone: [`MeshTrust::refresh_and_settle`] drops them, together
    /// with the address book's and `mesh.json`'s.
    pub fn refresh(&self, registry: &Registry) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        // Always recomputed: the registry may be a new one (a switch of
        // mesh), whose count of changes says nothing about the last.
        let facts = RegistryFacts::of(registry, &state.members);
        state.set_members(facts.members);
        state.revoked = facts.revoked;
        state.members_version += 1;
        state.settled_version = None;
    }

    /// A number that changes whenever the members may have: a reader that
    /// keeps a copy of them refreshes it only then.
    pub fn members_version(&self) -> u64 {
        self.state
            .read()
            .map(|state| state.members_version)
            .unwrap_or_default()
    }

    /// Recomputes like [`MeshTrust::refresh`] and drops the pins the
    /// registry settled (see `settled_pins`); `caught_up` says this broker
    /// has just caught up with a peer. Returns the keys unpinned, which the
    /// caller also stops pinning in the address book and `mesh.json`.
    pub fn refresh_and_settle(&self, registry: &Registry, caught_up: bool) -> Vec<[u8; 32]> {
        let Ok(mut state) = self.state.write() else {
            return Vec::new();
        };
        // Admissions and revocations unchanged since the last settling:
        // nothing to recompute, and no pin settles unless this broker has
        // just caught up. A joiner's catch-up reports every member it
        // learns (a thousand in a large mesh); each look would be
        // O(members).
        let version = registry.trust_changes();
        if state.settled_version == Some(version) && (!caught_up || state.pinned.is_empty()) {
            return Vec::new();
        }
        let facts = RegistryFacts::of(registry, &state.members);
        state.settled_version = Some(version);
        let unpinned = settled_pins(&state.pinned, &facts, caught_up);
        for key in &unpinned {
            state.pinned.remove(key);
        }
        state.set_members(facts.members);
        state.revoked = facts.revoked;
        state.members_version += 1;
        unpinned
    }

    /// Trusts `key` as the first peer of a mesh just joined, until the
    /// registry settles the pin (see [`MeshTrust::refresh`]).
    pub fn pin(&self, key: [u8; 32]) {
        if let Ok(mut state) = self.state.write() {
            state.pinned.insert(key);
            // The registry may settle it already: the next look settles.
            state.settled_version = None;
        }
    }

    /// Whether `key` is pinned.
    pub fn is_pinned(&self, key: &[u8; 32]) -> bool {
        self.state
            .read()
            .map(|state| state.pinned.contains(key))
            .unwrap_or(false)
    }

    /// Sets the end of the window in which unknown keys may present an
    /// invite, recomputed from the store's unused invites (it may shrink
    /// when an invite is used).
    pub fn set_join_window_until(&self, until_ms: u64) {
        if let Ok(mut state) = self.state.write() {
            state.join_window_until_ms = until_ms;
        }
    }

    /// Extends the join window for a new invite. A new invite never
    /// shortens the window of an older, longer one still unused.
    pub fn extend_join_window_until(&self, until_ms: u64) {
        if let Ok(mut state) = self.state.write() {
            state.join_window_until_ms = state.join_window_until_ms.max(until_ms);
        }
    }

    /// Whether unknown keys may finish a handshake at `now_ms`.
    pub fn join_window_open_at(&self, now_ms: u64) -> bool {
        self.state
            .read()
            .map(|state| state.tailnet_admit || now_ms <= state.join_window_until_ms)
            .unwrap_or(false)
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

    /// Every member's node id, in order (so that random picks among them
    /// repeat with the seed).
    pub fn member_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .state
            .read()
            .map(|state| state.members.values().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Whether `node_id` may enter this broker's views: a member, or the
    /// pinned inviter of a join whose admissions have not synced yet.
    pub fn admits_node(&self, node_id: &NodeId) -> bool {
        let Ok(state) = self.state.read() else {
            return false;
        };
        if state.revoked.contains(node_id) {
            return false;
        }
        state.member_nodes.contains(node_id)
            || state
                .pinned
                .iter()
                .any(|key| NodeId::of_public_key(key) == *node_id)
    }

    /// Whether `node_id` is an admitted, unrevoked member.
    pub fn is_member(&self, node_id: &NodeId) -> bool {
        self.state
            .read()
            .map(|state| state.member_nodes.contains(node_id))
            .unwrap_or(false)
    }

    /// The member key of `node_id`, if it is an admitted, unrevoked member
    /// (what a relayed request is encrypted to).
    pub fn key_of(&self, node_id: &NodeId) -> Option<[u8; 32]> {
        let state = self.state.read().ok()?;
        if !state.member_nodes.contains(node_id) {
            return None;
        }
        state
            .members
            .iter()
            .find_map(|(key, id)| (id == node_id).then_some(*key))
    }

    /// Whether `node_id` is revoked.
    pub fn is_revoked(&self, node_id: &NodeId) -> bool {
        self.state
            .read()
            .map(|state| state.revoked.contains(node_id))
            .unwrap_or(false)
    }

    /// Every revoked node id, for the dialer (it never dials them).
    pub fn revoked(&self) -> HashSet<NodeId> {
        self.state
            .read()
            .map(|state| state.revoked.clone())
            .unwrap_or_default()
    }
}

impl TrustPolicy for MeshTrust {
    fn trust(&self, public_key: &[u8; 32]) -> Trust {
        // A poisoned lock means a writer panicked mid-update: refuse rather
        // than guess.
        match self.state.read() {
            Ok(state) => verdict(&state, public_key),
            Err(_) => Trust::Unknown,
        }
    }

    fn join_window_open(&self) -> bool {
        self.join_window_open_at(self.env.now_unix_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn revocation_wins_over_a_pin_and_an_admission() {
        let mut state = TrustState::default();
        state.pinned.insert(key(1));
        state.set_members([(key(2), NodeId::of_public_key(&key(2)))].into());
        assert_eq!(verdict(&state, &key(1)), Trust::Member);
        assert_eq!(verdict(&state, &key(2)), Trust::Member);
        assert_eq!(verdict(&state, &key(3)), Trust::Unknown);
        state.revoked.insert(NodeId::of_public_key(&key(1)));
        state.revoked.insert(NodeId::of_public_key(&key(2)));
        assert_eq!(verdict(&state, &key(1)), Trust::Revoked);
        assert_eq!(verdict(&state, &key(2)), Trust::Revoked);
    }

    #[test]
    fn pins_are_settled_by_an_admission_a_revocation_or_a_catch_up() {
        let pinned: HashSet<[u8; 32]> = [key(1), key(2), key(3)].into();
        let mut facts = RegistryFacts::default();
        assert!(settled_pins(&pinned, &facts, false).is_empty());
        // Caught up with a peer that had no admissions: nothing to go by.
        assert!(settled_pins(&pinned, &facts, true).is_empty());
        facts.admitted_keys.insert(key(1));
        facts.has_admissions = true;
        facts.revoked.insert(NodeId::of_public_key(&key(2)));
        assert_eq!(settled_pins(&pinned, &facts, false), vec![key(1), key(2)]);
        assert_eq!(
            settled_pins(&pinned, &facts, true),
            vec![key(1), key(2), key(3)]
        );
    }

    #[test]
    fn a_new_invite_never_shortens_the_join_window() {
        let trust = MeshTrust::new(Env::system(None));
        trust.extend_join_window_until(10_000);
        trust.extend_join_window_until(2_000);
        assert!(trust.join_window_open_at(9_000));
        assert!(!trust.join_window_open_at(10_001));
        // Recomputed from the store after an invite was used: may shrink.
        trust.set_join_window_until(2_000);
        assert!(!trust.join_window_open_at(9_000));
    }
}
