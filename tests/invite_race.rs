//! A single-use invite is used once, even when two joins race for it: on a
//! real store file, two threads that both read the invite as unused and
//! then redeem it get exactly one winner, round after round, through the
//! store's writer and through two independent SQLite connections.

use std::sync::{Arc, Barrier};
use std::thread;

use rusqlite::{Connection, TransactionBehavior};
use scout::store::mesh::{Redemption, get_invite, insert_invite, redeem_invite};
use scout::store::{Store, StoreOptions};
use scout_mesh::membership::{IssuedInvite, JoinRefused};
use scout_mesh::wire::NodeId;

/// Rounds of each race: enough for the two threads to interleave in every
/// order the scheduler produces, few enough to stay well under a second.
const ROUNDS: u32 = 300;

/// An expiry far in the future (unix ms), so only the race decides.
const EXPIRES_AT_MS: u64 = 4_000_000_000_000;

/// A time before that expiry.
const NOW_MS: u64 = 1_700_000_000_000;

fn invite(round: u32) -> IssuedInvite {
    let mut invite_id = [0u8; 8];
    invite_id[..4].copy_from_slice(&round.to_be_bytes());
    IssuedInvite {
        invite_id,
        secret_hash: [7; 32],
        expires_at_ms: EXPIRES_AT_MS,
        used_by: None,
    }
}

fn joiner(byte: u8) -> NodeId {
    NodeId::of_public_key(&[byte; 32])
}

/// Counts outcomes: (redeemed, refused as used, anything else).
fn tally(outcomes: &[Redemption]) -> (usize, usize, usize) {
    let redeemed = outcomes
        .iter()
        .filter(|o| **o == Redemption::Redeemed)
        .count();
    let used = outcomes
        .iter()
        .filter(|o| **o == Redemption::Refused(JoinRefused::Used))
        .count();
    (redeemed, used, outcomes.len() - redeemed - used)
}

#[test]
fn two_joins_racing_through_the_store_admit_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let issued = invite(round);
        store
            .write_blocking(move |tx| insert_invite(tx, &issued, NOW_MS))
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|byte| {
                let store = store.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let invite_id = invite(round).invite_id;
                    barrier.wait();
                    // What the old code decided on: both see it unused.
                    let before = store.read(|c| get_invite(c, &invite_id)).unwrap();
                    assert!(before.is_some());
                    let joiner = joiner(byte);
                    store
                        .write_blocking(move |tx| redeem_invite(tx, &invite_id, &joiner, NOW_MS))
                        .unwrap()
                })
            })
            .collect();
        let round_outcomes: Vec<Redemption> =
            racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(tally(&round_outcomes), (1, 1, 0), "round {round}");
        outcomes.extend(round_outcomes);
    }
    assert_eq!(
        tally(&outcomes),
        (ROUNDS as usize, ROUNDS as usize, 0),
        "every round has exactly one winner"
    );
    store.close().unwrap();
}

#[test]
fn two_joins_racing_on_separate_connections_admit_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scout.db");
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    for round in 0..ROUNDS {
        let issued = invite(round);
        store
            .write_blocking(move |tx| insert_invite(tx, &issued, NOW_MS))
            .unwrap();
    }
    store.close().unwrap();

    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|byte| {
                let path = path.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let mut connection = Connection::open(&path).unwrap();
                    connection
                        .busy_timeout(std::time::Duration::from_secs(10))
                        .unwrap();
                    let invite_id = invite(round).invite_id;
                    barrier.wait();
                    let tx = connection
                        .transaction_with_behavior(TransactionBehavior::Deferred)
                        .unwrap();
                    let outcome = redeem_invite(&tx, &invite_id, &joiner(byte), NOW_MS).unwrap();
                    tx.commit().unwrap();
                    outcome
                })
            })
            .collect();
        let round_outcomes: Vec<Redemption> =
            racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(tally(&round_outcomes), (1, 1, 0), "round {round}");
        outcomes.extend(round_outcomes);
    }
    assert_eq!(tally(&outcomes), (ROUNDS as usize, ROUNDS as usize, 0));
}

#[test]
fn the_winner_may_retry_and_an_expired_invite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
    let issued = invite(1);
    let invite_id = issued.invite_id;
    store
        .write_blocking(move |tx| insert_invite(tx, &issued, NOW_MS))
        .unwrap();
    let redeem = |byte: u8, now_ms: u64| {
        store
            .write_blocking(move |tx| redeem_invite(tx, &invite_id, &joiner(byte), now_ms))
            .unwrap()
    };
    assert_eq!(redeem(1, NOW_MS), Redemption::Redeemed);
    assert_eq!(redeem(1, NOW_MS), Redemption::RedeemedBefore);
    assert_eq!(redeem(2, NOW_MS), Redemption::Refused(JoinRefused::Used));

    let late = invite(2);
    let late_id = late.invite_id;
    store
        .write_blocking(move |tx| insert_invite(tx, &late, NOW_MS))
        .unwrap();
    let expired = store
        .write_blocking(move |tx| redeem_invite(tx, &late_id, &joiner(3), EXPIRES_AT_MS + 1))
        .unwrap();
    assert_eq!(expired, Redemption::Refused(JoinRefused::Expired));
    let unknown = store
        .write_blocking(|tx| redeem_invite(tx, &[9; 8], &joiner(3), NOW_MS))
        .unwrap();
    assert_eq!(unknown, Redemption::Refused(JoinRefused::Unknown));
    store.close().unwrap();
}
