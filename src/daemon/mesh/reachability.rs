//! Which members routing may count on: those with a live connection and
//! the members that may be dialed, followed as connections come and go.
//!
//! The dialable members are a set as large as the mesh, so it is copied
//! only when its version moved, at most once per
//! [`DIALABLE_LOOK_INTERVAL_MS`] unless asked (while a large mesh forms it
//! moves with every member that joins, and a copy every tick on every
//! broker was a tenth of a simulated thousand brokers' time). Between
//! those reads only the peers whose connection came or went are looked at,
//! not a new union as large as the mesh.

use std::collections::BTreeSet;

use scout_mesh::wire::NodeId;

use super::Mesh;

/// What a look reads from the mesh ([`Mesh`] in the broker).
pub trait Members {
    /// Peers with a live connection.
    fn connected(&self) -> Vec<NodeId>;
    /// Bumped whenever [`Members::dialable_members`] may have changed.
    fn dialable_version(&self) -> u64;
    /// Members that may be dialed now.
    fn dialable_members(&self) -> BTreeSet<NodeId>;
    /// Whether `peer` may be dialed now.
    fn is_dialable(&self, peer: &NodeId) -> bool;
}

impl Members for Mesh {
    fn connected(&self) -> Vec<NodeId> {
        Mesh::connected(self)
    }
    fn dialable_version(&self) -> u64 {
        Mesh::dialable_version(self)
    }
    fn dialable_members(&self) -> BTreeSet<NodeId> {
        Mesh::dialable_members(self)
    }
    fn is_dialable(&self, peer: &NodeId) -> bool {
        Mesh::is_dialable(self, peer)
    }
}

/// The dialable members are read at most once per this interval; a look
/// with `dialable_now` (a submit to an owner not known reachable) reads
/// them at once. A connection that came or went is seen at every look
/// (a lost one with the peer's dialability asked afresh).
pub const DIALABLE_LOOK_INTERVAL_MS: u64 = 1_000;

/// The peers that became reachable and those that stopped being so since
/// the last look.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Newly reachable.
    pub came: Vec<NodeId>,
    /// No longer reachable.
    pub gone: Vec<NodeId>,
}

/// Reachable members at the last look.
#[derive(Debug, Default)]
pub struct Reachability {
    /// Connected or dialable at the last look.
    reachable: BTreeSet<NodeId>,
    /// Of those, the ones with a live connection.
    live: BTreeSet<NodeId>,
    /// The dialable members at the last read, with their version.
    dialable: Option<(u64, BTreeSet<NodeId>)>,
    /// When they were read (monotonic ms).
    dialable_read_ms: Option<u64>,
}

impl Reachability {
    /// Whether `peer` was reachable at the last look.
    pub fn contains(&self, peer: &NodeId) -> bool {
        self.reachable.contains(peer)
    }

    /// Looks at the mesh at monotonic `now_ms` and says what changed.
    pub fn look(&mut self, mesh: &impl Members, now_ms: u64, dialable_now: bool) -> Changes {
        let due = dialable_now
            || self
                .dialable_read_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= DIALABLE_LOOK_INTERVAL_MS);
        let version = mesh.dialable_version();
        let dialable_moved = due
            && self
                .dialable
                .as_ref()
                .is_none_or(|(seen, _)| *seen != version);
        if dialable_moved {
            self.dialable = Some((version, mesh.dialable_members()));
            self.dialable_read_ms = Some(now_ms);
        }
        let live: BTreeSet<NodeId> = mesh.connected().into_iter().collect();
        if dialable_moved {
            let mut reachable = live.clone();
            if let Some((_, dialable)) = &self.dialable {
                reachable.extend(dialable.iter().cloned());
            }
            self.live = live;
            return self.replace(reachable);
        }
        if live == self.live {
            return Changes::default();
        }
        // A peer whose connection was lost is asked about afresh: its
        // addresses are marked failed now, which the set read up to an
        // interval ago does not show.
        let changed: Vec<NodeId> = live.symmetric_difference(&self.live).cloned().collect();
        let (came, gone): (Vec<NodeId>, Vec<NodeId>) = changed
            .into_iter()
            .filter(|peer| {
                let reachable = live.contains(peer) || mesh.is_dialable(peer);
                reachable != self.reachable.contains(peer)
            })
            .partition(|peer| live.contains(peer));
        self.live = live;
        for peer in &gone {
            self.reachable.remove(peer);
        }
        self.reachable.extend(came.iter().cloned());
        Changes { came, gone }
    }

    fn replace(&mut self, reachable: BTreeSet<NodeId>) -> Changes {
        let changes = Changes {
            came: reachable.difference(&self.reachable).cloned().collect(),
            gone: self.reachable.difference(&reachable).cloned().collect(),
        };
        self.reachable = reachable;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Fake {
        connected: RefCell<BTreeSet<NodeId>>,
        dialable: RefCell<(u64, BTreeSet<NodeId>)>,
    }

    impl Members for Fake {
        fn connected(&self) -> Vec<NodeId> {
            self.connected.borrow().iter().cloned().collect()
        }
        fn dialable_version(&self) -> u64 {
            self.dialable.borrow().0
        }
        fn dialable_members(&self) -> BTreeSet<NodeId> {
            self.dialable.borrow().1.clone()
        }
        fn is_dialable(&self, peer: &NodeId) -> bool {
            self.dialable.borrow().1.contains(peer)
        }
    }

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; scout_mesh::wire::NODE_ID_BYTES])
    }

    fn set_dialable(fake: &Fake, peers: &[u8]) {
        let mut dialable = fake.dialable.borrow_mut();
        dialable.0 += 1;
        dialable.1 = peers.iter().map(|n| node(*n)).collect();
    }

    #[test]
    fn connections_are_seen_at_once_and_dialable_members_once_an_interval() {
        let fake = Fake::default();
        let mut reach = Reachability::default();
        set_dialable(&fake, &[1, 2]);
        let first = reach.look(&fake, 0, false);
        let mut came = first.came.clone();
        came.sort();
        let mut want = vec![node(1), node(2)];
        want.sort();
        assert_eq!(came, want);
        assert!(first.gone.is_empty());

        // A new connection is seen at the next look, within the interval.
        fake.connected.borrow_mut().insert(node(3));
        let next = reach.look(&fake, 10, false);
        assert_eq!(
            next,
            Changes {
                came: vec![node(3)],
                gone: vec![]
            }
        );
        assert!(reach.contains(&node(3)));

        // A dialable member that left is not read again within the interval...
        set_dialable(&fake, &[1]);
        assert_eq!(reach.look(&fake, 20, false), Changes::default());
        assert!(reach.contains(&node(2)));
        // ...unless asked, or once the interval passed.
        assert_eq!(
            reach.look(&fake, 30, true),
            Changes {
                came: vec![],
                gone: vec![node(2)]
            }
        );
        set_dialable(&fake, &[1, 4]);
        assert_eq!(reach.look(&fake, 40, false), Changes::default());
        assert_eq!(
            reach.look(&fake, 30 + DIALABLE_LOOK_INTERVAL_MS, false),
            Changes {
                came: vec![node(4)],
                gone: vec![]
            }
        );
    }

    #[test]
    fn a_lost_connection_is_asked_about_afresh() {
        let fake = Fake::default();
        let mut reach = Reachability::default();
        set_dialable(&fake, &[1]);
        fake.connected.borrow_mut().extend([node(1), node(2)]);
        reach.look(&fake, 0, false);
        assert!(reach.contains(&node(1)) && reach.contains(&node(2)));
        // Both connections drop; 1 may still be dialed (as of the last
        // read), 2 may not: only 2 is gone.
        fake.connected.borrow_mut().clear();
        assert_eq!(
            reach.look(&fake, 10, false),
            Changes {
                came: vec![],
                gone: vec![node(2)]
            }
        );
        // Now 1's addresses failed too: asked afresh when its connection
        // is lost, so a later loss is not hidden by the cached set.
        fake.connected.borrow_mut().insert(node(1));
        assert_eq!(reach.look(&fake, 20, false), Changes::default());
        set_dialable(&fake, &[]);
        fake.connected.borrow_mut().clear();
        assert_eq!(
            reach.look(&fake, 30, false),
            Changes {
                came: vec![],
                gone: vec![node(1)]
            }
        );
    }
}
