//! Drives the replica: drains its outputs in order and runs its timers.
//!
//! Order matters: a `Persist` is committed before any later output is acted
//! on, so a change is durable before it is pushed to a peer.
//!
//! Membership follows the registry here: a persisted admission or
//! revocation, a member admitted or removed, and a catch-up with a peer
//! each refresh the trust snapshot, which closes the connections of peers
//! that are no longer members and drops settled pins.

use std::sync::Arc;
use std::time::Duration;

use crdts::VClock;
use quinn::VarInt;
use scout_mesh::sync::{MemberRemovedReason, Output, SyncEvent};
use scout_mesh::wire::{NodeId, RecordKind};
use scout_net::transport::close_code;
use tokio::sync::watch;

use super::Shared;
use crate::store;

/// Outputs handled per wake before yielding, so a burst never starves the
/// other tasks on the runtime.
const OUTPUTS_PER_WAKE_MAX: usize = 4096;

/// Records merged into one persisting transaction at most: large enough to
/// absorb a burst, small enough that one commit stays short.
const PERSIST_BATCH_RECORDS_MAX: usize = 4096;

/// Runs until shutdown; drains what is left first.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let deadline_ms = lock(&shared).poll_timeout();
        let sleep_for = deadline_ms
            .map(|at| Duration::from_millis(at.saturating_sub(shared.now_ms())))
            .unwrap_or(Duration::from_secs(3600));
        let stopping = tokio::select! {
            _ = shared.kick.notified() => false,
            _ = tokio::time::sleep(sleep_for) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stopping {
            drain(&shared).await;
            return;
        }
        let now = shared.now_ms();
        {
            // On every wake while a timer runs, due or not: the replica
            // brings in deadlines the clock's going back left too far
            // away (otherwise this loop would sleep as long as it moved).
            let mut replica = lock(&shared);
            if replica.poll_timeout().is_some() {
                replica.handle_timeout(now);
            }
        }
        drain(&shared).await;
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, scout_mesh::sync::Replica> {
    shared
        .replica
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

async fn drain(shared: &Arc<Shared>) {
    let mut handled = 0;
    while handled < OUTPUTS_PER_WAKE_MAX {
        // Consecutive persists become one transaction: a burst of local
        // changes (or a delta of many chunks) costs one commit, and nothing
        // after them is acted on before they are durable.
        let mut batch = Vec::new();
        let mut vv: Option<VClock<NodeId>> = None;
        let mut next = None;
        {
            let mut replica = lock(shared);
            while handled < OUTPUTS_PER_WAKE_MAX {
                match replica.poll_output() {
                    Some(Output::Persist { records, vv: after })
                        if batch.len() < PERSIST_BATCH_RECORDS_MAX =>
                    {
                        batch.extend(records);
                        // Each names the entries it changed: later ones win.
                        vv.get_or_insert_with(VClock::new).dots.extend(after.dots);
                        handled += 1;
                    }
                    other => {
                        next = other;
                        break;
                    }
                }
            }
        }
        if let Some(vv) = vv {
            handle(shared, Output::Persist { records: batch, vv }).await;
        }
        match next {
            Some(output) => {
                handled += 1;
                handle(shared, output).await;
            }
            None => return,
        }
    }
    // More left: come back after other tasks had a turn.
    shared.kick();
}

async fn handle(shared: &Arc<Shared>, output: Output) {
    match output {
        Output::Persist { records, vv } => {
            // The replica holds these records already: trust follows at
            // once rather than after the commit, so a revocation cuts the
            // peer off without waiting for the disk.
            if records.iter().any(|record| {
                matches!(
                    record.key.kind,
                    RecordKind::Admission | RecordKind::Revocation
                )
            }) {
                shared.refresh_trust(false);
            }
            let now_ms = shared.now_ms();
            let result = shared
                .store
                .write(move |tx| store::mesh::persist(tx, &records, &vv, now_ms))
                .await;
            if let Err(err) = result {
                tracing::error!(code = err.code(), cause = %err, "cannot persist registry records");
            }
        }
        Output::Forget { keys } => {
            tracing::debug!(collected = keys.len(), "collected tombstones");
            let result = shared
                .store
                .write(move |tx| store::mesh::forget(tx, &keys))
                .await;
            if let Err(err) = result {
                tracing::warn!(code = err.code(), cause = %err, "cannot forget collected tombstones");
            }
        }
        Output::Send { to, message } => {
            if let Some(sender) = shared.sender_of(&to)
                && sender
                    .try_send(scout_mesh::wire::MeshFrame::Sync(message))
                    .is_err()
            {
                tracing::debug!(peer = %to, "send queue full; anti-entropy will repair");
            }
        }
        Output::Event(event) => handle_event(shared, event),
    }
}

fn handle_event(shared: &Arc<Shared>, event: SyncEvent) {
    match event {
        SyncEvent::RecordRejected {
            source,
            origin,
            kind,
            name,
            error,
        } => {
            tracing::warn!(?source, %origin, %kind, %name, code = error.code(), cause = %error, "rejected a registry record");
        }
        SyncEvent::ClockSkew { from, skew } => {
            tracing::warn!(peer = %from, ahead_ms = skew.ahead_ms, "a peer's clock is ahead of ours");
        }
        SyncEvent::MemberAdmitted { node_id } => {
            shared.refresh_trust(false);
            tracing::info!(%node_id, "member admitted");
        }
        SyncEvent::MemberRemoved { node_id, reason } => {
            shared.refresh_trust(false);
            let (code, text): (u32, &[u8]) = match reason {
                MemberRemovedReason::Revoked => (close_code::REVOKED_PEER, b"revoked"),
                _ => (close_code::UNKNOWN_PEER, b"no longer a member"),
            };
            let peer = shared
                .peers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .remove(&node_id);
            if let Some(peer) = peer {
                peer.connection.close(VarInt::from_u32(code), text);
            }
            super::views::on_removed(shared, &node_id);
            tracing::warn!(%node_id, ?reason, "member removed; disconnected");
        }
        SyncEvent::PeerCaughtUp { peer } => {
            tracing::debug!(%peer, "caught up with peer");
            shared.refresh_trust(true);
            super::Mesh {
                shared: shared.clone(),
            }
            .finish_catching_up("caught up with a peer");
        }
        SyncEvent::MessageIgnored {
            from,
            message,
            reason,
        } => {
            tracing::debug!(peer = %from, message, ?reason, "sync message ignored");
        }
        SyncEvent::OwnSequenceRecovered {
            highest_seen,
            reissued,
        } => {
            tracing::warn!(
                highest_seen,
                reissued,
                "peers hold newer records of ours (lost store?); reissued"
            );
        }
    }
}
