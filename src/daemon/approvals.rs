//! Approvals across the mesh: an agent asks on the broker that runs it, a
//! person answers from any member.
//!
//! The owner of an approval is the broker where it was asked (the one
//! running the agent, or the one that took an agent's gated request). It
//! keeps the authoritative row in its store (`store::approvals`) and
//! mirrors it into the replicated registry as an approval record, so every
//! member lists it and sees its decision through ordinary sync. An answer
//! given on another member travels to the owner as an `ApprovalDecide`
//! frame; the owner commits the first answer in one store transaction and
//! every later one gets `ALREADY_DECIDED` naming who decided
//! (`scout_mesh::approval` holds the rules). A pending approval past its
//! deadline is marked `expired` by the owner's deadline task.
//!
//! A gated action (cancel a work order, revoke a member, …) asked for by an
//! agent is stored with the approval as a [`Gate`] and runs once, on the
//! owner, after it is approved ([`apply`]); `applied_at_ms` records that it
//! ran, and a restart between decision and action runs it then.
//!
//! Standing rules (`--always`) answer future requests of the same agent
//! definition, action and summary on the owner without asking.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use scout_mesh::approval::{self, DecideError};
use scout_mesh::names::AgentName;
use scout_mesh::wire::{
    ApprovalBody, ApprovalDecision, ApprovalState, ErrorCode, MeshFrame, NodeId, RecordBody,
    RecordKind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::BrokerState;
use super::notify::{Channels, Notice, Notifier};
use crate::env::Env;
use crate::store::approvals::{ApprovalRow, ApprovalRule, NewApproval};
use crate::store::{Store, StoreError};

/// How long an approval waits for a person when the request names no
/// deadline: long enough to come back from a meeting, short enough that a
/// forgotten request does not hold an agent for a day.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(30 * 60);

/// The longest deadline a request may ask for.
pub const DEADLINE_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a decided approval stays in the registry (every member lists
/// it) before the owner withdraws it; the owner's store keeps it for the
/// audit.
pub const DECIDED_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest the deadline task sleeps without looking: new requests wake
/// it, so this only bounds how late a withdrawal of old records can be.
const DEADLINE_TICK_MAX: Duration = Duration::from_secs(60);

/// How long an answer waits for the owner's reply over the mesh.
pub const DECIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Approvals listed at most.
pub const LIST_MAX: usize = 500;

/// An action that needs a person, kept with its approval and run on the
/// owner once approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gate {
    /// `work_order.cancel`.
    WorkOrderCancel {
        /// The work order.
        id: String,
    },
    /// `invocation.cancel` of work the agent did not send.
    InvocationCancel {
        /// The invocation.
        id: String,
    },
    /// `mesh.revoke`.
    MeshRevoke {
        /// The member (name or id).
        node: String,
        /// Why.
        reason: String,
    },
    /// `agent.stop`: end a terminal session of the local runtime.
    AgentStop {
        /// The session.
        id: String,
    },
}

impl Gate {
    /// The action word people and rules see.
    pub fn action(&self) -> &'static str {
        match self {
            Gate::WorkOrderCancel { .. } => "work_order.cancel",
            Gate::InvocationCancel { .. } => "invocation.cancel",
            Gate::MeshRevoke { .. } => "mesh.revoke",
            Gate::AgentStop { .. } => "agent.stop",
        }
    }

    /// What it would do, for people.
    pub fn summary(&self) -> String {
        match self {
            Gate::WorkOrderCancel { id } => format!("cancel work order {id}"),
            Gate::InvocationCancel { id } => format!("cancel invocation {id}"),
            Gate::MeshRevoke { node, reason } if reason.is_empty() => {
                format!("revoke member {node}")
            }
            Gate::MeshRevoke { node, reason } => format!("revoke member {node}: {reason}"),
            Gate::AgentStop { id } => format!("stop agent session {id}"),
        }
    }
}

/// A request for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The asking instance.
    pub agent: String,
    /// The invocation it is running.
    pub invocation: Option<String>,
    /// What it asks for (`tool.Bash`).
    pub action: String,
    /// What about.
    pub summary: String,
    /// What runs once approved.
    pub gate: Option<Gate>,
    /// How long to wait for a person; [`DEADLINE_DEFAULT`] when `None`.
    pub deadline: Option<Duration>,
}

/// Why an approval operation failed; each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Someone decided first.
    #[error("{0}")]
    Decided(DecideError),
    /// No approval with this id is pending anywhere this broker knows.
    #[error("approval {0} is not pending here or on any member this broker knows")]
    NotPending(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The owner could not be asked.
    #[error("the owner of approval {id} ({owner}) could not be reached: {detail}")]
    OwnerUnreachable {
        /// The approval.
        id: String,
        /// Its owner's name.
        owner: String,
        /// What happened.
        detail: String,
    },
    /// The owner refused for another reason.
    #[error("{code}: {message}")]
    Refused {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApprovalError {
    /// The stable code.
    pub fn code(&self) -> String {
        match self {
            ApprovalError::Decided(err) => err.code().to_owned(),
            ApprovalError::NotPending(_) => "APPROVAL_NOT_PENDING".to_owned(),
            ApprovalError::Invalid(_) => "INVALID_REQUEST".to_owned(),
            ApprovalError::OwnerUnreachable { .. } => "OWNER_UNREACHABLE".to_owned(),
            ApprovalError::Refused { code, .. } => code.clone(),
            ApprovalError::Store(err) => err.code().to_owned(),
        }
    }
}

/// One approval as a member lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Its id.
    pub id: String,
    /// The owner's node name.
    pub node: String,
    /// The owner's node id.
    pub node_id: String,
    /// Whether this broker owns it.
    pub local: bool,
    /// Who asked.
    pub agent: String,
    /// What for.
    pub action: String,
    /// What about.
    pub summary: String,
    /// The invocation it waits in.
    pub invocation: Option<String>,
    /// Where it stands.
    pub state: ApprovalState,
    /// When it was asked.
    pub created_unix_ms: u64,
    /// When it counts as denied.
    pub deadline_unix_ms: u64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_unix_ms: Option<u64>,
    /// The decider's note.
    pub note: String,
    /// What the approved action did, on its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The approvals of one broker.
#[derive(Debug)]
pub struct Approvals {
    store: Store,
    mesh: super::mesh::Mesh,
    env: Env,
    node_id: NodeId,
    node_name: String,
    notifier: Notifier,
    /// Bumped on every change this broker commits, so waiters and the
    /// deadline task look again.
    changed: watch::Sender<u64>,
    /// The broker, for running gated actions; set once it exists.
    state: OnceLock<Weak<BrokerState>>,
    /// One lock per approval being answered here, so the action of an
    /// approval runs once even when two answers race in this process.
    applying: Mutex<HashMap<String, ()>>,
}

impl Approvals {
    /// The approvals of the broker `node_id` named `node_name`.
    pub fn new(
        store: Store,
        mesh: super::mesh::Mesh,
        env: Env,
        node_id: NodeId,
        node_name: String,
        notifier: Notifier,
    ) -> Approvals {
        Approvals {
            store,
            mesh,
            env,
            node_id,
            node_name,
            notifier,
            changed: watch::channel(0).0,
            state: OnceLock::new(),
            applying: Mutex::new(HashMap::new()),
        }
    }

    /// Lets approved gated actions reach the broker.
    pub fn attach(&self, state: &Arc<BrokerState>) {
        let _ = self.state.set(Arc::downgrade(state));
    }

    /// Asks for a decision: answered at once by a standing rule, else
    /// pending until a person answers or the deadline passes.
    pub async fn ask(&self, ask: Ask) -> Result<ApprovalView, ApprovalError> {
        let now = self.env.now_unix_ms();
        let deadline = ask.deadline.unwrap_or(DEADLINE_DEFAULT).min(DEADLINE_MAX);
        let id = approval::id_from(self.env.random_u64());
        let gate = ask
            .gate
            .as_ref()
            .map(|gate| {
                serde_json::to_value(gate).map_err(|err| ApprovalError::Invalid(err.to_string()))
            })
            .transpose()?;
        let new = NewApproval {
            id: id.clone(),
            agent: ask.agent.clone(),
            action: ask.action.clone(),
            summary: ask.summary.clone(),
            invocation: ask.invocation.clone(),
            gate,
            created_ms: now,
            deadline_ms: now
                .saturating_add(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
        };
        let definition = definition_of(&ask.agent);
        let (row, rule) = self
            .store
            .write(move |transaction| {
                let row = ApprovalRow::insert(transaction, &new)?;
                let rule = match &definition {
                    Some(definition) => {
                        ApprovalRule::find(transaction, definition, &new.action, &row.body.summary)?
                    }
                    None => None,
                };
                let Some(rule) = rule else {
                    return Ok((row, None));
                };
                let decision = ApprovalDecision {
                    id: row.id.clone(),
                    approve: rule.allow,
                    actor: format!("rule:{}", rule.id),
                    note: format!("standing rule set by {}", rule.created_by),
                    always: false,
                };
                let decided = ApprovalRow::decide(transaction, &decision, &decision.actor, now)?
                    .map_err(|err| StoreError::InvalidRequest {
                        detail: err.to_string(),
                    })?;
                Ok((decided, Some(rule)))
            })
            .await?;
        self.publish(&row);
        self.bump();
        if rule.is_some() {
            self.after_decision(&row).await;
        } else {
            self.notifier.notify(
                self.notice(&row),
                Channels {
                    desktop: true,
                    webhooks: true,
                },
            );
        }
        Ok(self.view_of_row(&row))
    }

    /// Answers approval `decision.id` as `actor` of this broker: on this
    /// broker when it owns it, else on its owner over the mesh.
    pub async fn decide(&self, decision: ApprovalDecision) -> Result<ApprovalView, ApprovalError> {
        approval::check_decision(&decision).map_err(ApprovalError::Invalid)?;
        let id = decision.id.clone();
        let owned = self
            .store
            .read(move |connection| ApprovalRow::get(connection, &id))?
            .is_some();
        if owned {
            let by = format!("{}@{}", decision.actor, self.node_name);
            let row = self.decide_here(&decision, &by).await?;
            return Ok(self.view_of_row(&row));
        }
        let Some(owner) = self.owner_of(&decision.id) else {
            return Err(ApprovalError::NotPending(decision.id));
        };
        let owner_name = self.node_name_of(&owner);
        let answer = tokio::time::timeout(
            DECIDE_TIMEOUT,
            self.mesh
                .request(&owner, &MeshFrame::ApprovalDecide(decision.clone())),
        )
        .await;
        match answer {
            Ok(Ok(MeshFrame::ApprovalDecided(body))) => {
                Ok(self.view_of(&decision.id, &owner, &body, None))
            }
            Ok(Ok(MeshFrame::Error(error))) => Err(match error.code {
                ErrorCode::ApprovalNotPending => ApprovalError::NotPending(decision.id),
                code => ApprovalError::Refused {
                    code: code.to_string(),
                    message: error.message,
                },
            }),
            Ok(Ok(other)) => Err(ApprovalError::OwnerUnreachable {
                id: decision.id,
                owner: owner_name,
                detail: format!("it answered `{}`", other.name()),
            }),
            Ok(Err(detail)) => Err(ApprovalError::OwnerUnreachable {
                id: decision.id,
                owner: owner_name,
                detail,
            }),
            Err(_) => Err(ApprovalError::OwnerUnreachable {
                id: decision.id,
                owner: owner_name,
                detail: format!("no answer within {} s", DECIDE_TIMEOUT.as_secs()),
            }),
        }
    }

    /// Answers a member's `ApprovalDecide` frame.
    pub async fn handle_peer_decision(
        &self,
        from: &NodeId,
        decision: ApprovalDecision,
    ) -> MeshFrame {
        let id = decision.id.clone();
        let owned = match self
            .store
            .read(move |connection| ApprovalRow::get(connection, &id))
        {
            Ok(row) => row.is_some(),
            Err(err) => return MeshFrame::error(err.code(), err.to_string()),
        };
        if !owned {
            return MeshFrame::error(
                ErrorCode::ApprovalNotPending,
                format!("approval {} is not owned by this broker", decision.id),
            );
        }
        // The deciding broker names its own actor; its node name comes from
        // the registry, never from the frame.
        let by = format!(
            "{}@{}",
            approval::truncate(&decision.actor, 64),
            self.node_name_of(from)
        );
        match self.decide_here(&decision, &by).await {
            Ok(row) => MeshFrame::ApprovalDecided(row.body),
            Err(err) => MeshFrame::error(err.code().as_str(), err.to_string()),
        }
    }

    async fn decide_here(
        &self,
        decision: &ApprovalDecision,
        by: &str,
    ) -> Result<ApprovalRow, ApprovalError> {
        let now = self.env.now_unix_ms();
        let decision_owned = decision.clone();
        let by_owned = by.to_owned();
        let outcome = self
            .store
            .write(move |transaction| {
                let outcome = ApprovalRow::decide(transaction, &decision_owned, &by_owned, now)?;
                if let (Ok(row), true) = (&outcome, decision_owned.always)
                    && let Some(definition) = definition_of(&row.body.agent)
                {
                    ApprovalRule::upsert(
                        transaction,
                        &ApprovalRule {
                            id: format!("rule_{:016x}", now ^ row.id.len() as u64),
                            definition,
                            action: row.body.action.clone(),
                            summary: row.body.summary.clone(),
                            allow: decision_owned.approve,
                            created_by: by_owned.clone(),
                        },
                        now,
                    )?;
                }
                // An expiry found by this answer is committed with it.
                let current = ApprovalRow::get(transaction, &decision_owned.id)?;
                Ok((outcome, current))
            })
            .await?;
        match outcome {
            (Ok(row), _) => {
                self.publish(&row);
                self.bump();
                self.after_decision(&row).await;
                Ok(row)
            }
            (Err(err), current) => {
                if let (DecideError::Expired { .. }, Some(row)) = (&err, current) {
                    self.publish(&row);
                    self.bump();
                }
                Err(ApprovalError::Decided(err))
            }
        }
    }

    /// Runs the gated action of an approved approval, once.
    async fn after_decision(&self, row: &ApprovalRow) {
        if row.body.state != ApprovalState::Approved || row.applied_at_ms.is_some() {
            return;
        }
        let Some(gate) = row.gate.clone() else {
            return;
        };
        {
            let mut applying = self
                .applying
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if applying.insert(row.id.clone(), ()).is_some() {
                return;
            }
        }
        let outcome = match (
            serde_json::from_value::<Gate>(gate),
            self.state.get().and_then(Weak::upgrade),
        ) {
            (Ok(gate), Some(state)) => match apply(&state, &gate).await {
                Ok(done) => done,
                Err(err) => format!("failed: {err}"),
            },
            (Err(err), _) => format!("failed: the stored action is not readable: {err}"),
            (_, None) => "failed: the broker is stopping".to_owned(),
        };
        let id = row.id.clone();
        let now = self.env.now_unix_ms();
        let recorded = outcome.clone();
        if let Err(err) = self
            .store
            .write(move |transaction| ApprovalRow::mark_applied(transaction, &id, now, &recorded))
            .await
        {
            tracing::error!(approval = %row.id, cause = %err, "cannot record an approved action");
        }
        tracing::info!(approval = %row.id, %outcome, "approved action ran");
        self.applying
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&row.id);
        self.bump();
    }

    /// Every approval the mesh shows (this broker's from its store, with
    /// outcomes), newest first.
    pub fn list(&self) -> Result<Vec<ApprovalView>, ApprovalError> {
        let own: HashMap<String, ApprovalRow> = self
            .store
            .read(|connection| ApprovalRow::list(connection, LIST_MAX))?
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        let mut views: BTreeMap<(std::cmp::Reverse<u64>, String), ApprovalView> = BTreeMap::new();
        for (origin, name, body) in self.registry_approvals() {
            if origin == self.node_id {
                continue;
            }
            let view = self.view_of(&name, &origin, &body, None);
            views.insert((std::cmp::Reverse(body.created_unix_ms), name), view);
        }
        for row in own.values() {
            views.insert(
                (std::cmp::Reverse(row.body.created_unix_ms), row.id.clone()),
                self.view_of_row(row),
            );
        }
        Ok(views.into_values().take(LIST_MAX).collect())
    }

    /// One approval, from the store when owned here, else from the registry.
    pub fn get(&self, id: &str) -> Result<Option<ApprovalView>, ApprovalError> {
        let key = id.to_owned();
        if let Some(row) = self
            .store
            .read(move |connection| ApprovalRow::get(connection, &key))?
        {
            return Ok(Some(self.view_of_row(&row)));
        }
        Ok(self
            .registry_approvals()
            .into_iter()
            .find(|(_, name, _)| name == id)
            .map(|(origin, name, body)| self.view_of(&name, &origin, &body, None)))
    }

    /// Waits until approval `id` (owned here) is decided or `timeout`
    /// passes; the approval as it then is.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<ApprovalView, ApprovalError> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let key = id.to_owned();
            let Some(row) = self
                .store
                .read(move |connection| ApprovalRow::get(connection, &key))?
            else {
                return Err(ApprovalError::NotPending(id.to_owned()));
            };
            let settled = match row.body.state {
                ApprovalState::Pending => false,
                // An approved gated action is settled once it ran.
                ApprovalState::Approved => row.gate.is_none() || row.applied_at_ms.is_some(),
                ApprovalState::Denied | ApprovalState::Expired => true,
            };
            if settled {
                return Ok(self.view_of_row(&row));
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Ok(self.view_of_row(&row));
            }
        }
    }

    /// A receiver that changes whenever this broker commits an approval
    /// change (the registry's change counter covers the rest of the mesh).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The deadline task: expires overdue approvals, withdraws old decided
    /// ones from the registry, and at start republishes what a crash may
    /// have left unpublished and runs approved actions that did not run.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        self.recover().await;
        let mut changed = self.changed.subscribe();
        let mut registry_changed = self.mesh.subscribe_changes();
        // Remote approvals already pending at start were notified by the
        // run that saw them arrive.
        let mut seen: std::collections::HashSet<String> = self
            .registry_approvals()
            .into_iter()
            .map(|(_, name, _)| name)
            .collect();
        loop {
            for (origin, name, body) in self.registry_approvals() {
                if origin != self.node_id
                    && body.state == ApprovalState::Pending
                    && seen.insert(name.clone())
                {
                    self.notify_remote(&self.view_of(&name, &origin, &body, None));
                }
            }
            let now = self.env.now_unix_ms();
            match self
                .store
                .write(move |transaction| ApprovalRow::expire_due(transaction, now))
                .await
            {
                Ok(expired) => {
                    for row in &expired {
                        tracing::info!(approval = %row.id, "approval expired unanswered");
                        self.publish(row);
                    }
                    if !expired.is_empty() {
                        self.bump();
                    }
                }
                Err(err) => tracing::error!(cause = %err, "cannot expire approvals"),
            }
            self.withdraw_old(now);
            let next = self
                .store
                .read(ApprovalRow::next_deadline)
                .ok()
                .flatten()
                .map(|at| Duration::from_millis(at.saturating_sub(now)))
                .unwrap_or(DEADLINE_TICK_MAX)
                .min(DEADLINE_TICK_MAX);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = changed.changed() => {}
                _ = registry_changed.changed() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn recover(&self) {
        let rows = match self
            .store
            .read(|connection| ApprovalRow::list(connection, LIST_MAX))
        {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(cause = %err, "cannot read approvals at start");
                return;
            }
        };
        let published: HashMap<String, ApprovalBody> = self
            .registry_approvals()
            .into_iter()
            .filter(|(origin, _, _)| *origin == self.node_id)
            .map(|(_, name, body)| (name, body))
            .collect();
        let now = self.env.now_unix_ms();
        let retention = u64::try_from(DECIDED_RETENTION.as_millis()).unwrap_or(u64::MAX);
        for row in &rows {
            let recent = row
                .body
                .decided_unix_ms
                .is_none_or(|at| at.saturating_add(retention) > now);
            if recent && published.get(&row.id) != Some(&row.body) {
                self.publish(row);
            }
        }
        if let Ok(unapplied) = self.store.read(ApprovalRow::unapplied) {
            for row in unapplied {
                self.after_decision(&row).await;
            }
        }
    }

    fn withdraw_old(&self, now: u64) {
        let retention = u64::try_from(DECIDED_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let old: Vec<String> = self
            .registry_approvals()
            .into_iter()
            .filter(|(origin, _, body)| {
                *origin == self.node_id
                    && body
                        .decided_unix_ms
                        .is_some_and(|at| at.saturating_add(retention) <= now)
            })
            .map(|(_, name, _)| name)
            .collect();
        if old.is_empty() {
            return;
        }
        let shared = self.mesh.shared();
        let now_ms = shared.now_ms();
        shared.with_replica(|replica| {
            for name in &old {
                if let Err(err) = replica.delete(now_ms, RecordKind::Approval, name) {
                    tracing::warn!(approval = %name, cause = %err, "cannot withdraw an approval");
                }
            }
        });
    }

    fn publish(&self, row: &ApprovalRow) {
        let shared = self.mesh.shared();
        let now = shared.now_ms();
        let body = RecordBody::Approval(row.body.clone());
        if let Err(err) = shared.with_replica(|replica| replica.put(now, &row.id, body)) {
            tracing::error!(approval = %row.id, cause = %err, "cannot publish an approval");
        }
    }

    fn bump(&self) {
        self.changed
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn registry_approvals(&self) -> Vec<(NodeId, String, ApprovalBody)> {
        self.mesh.with_registry(|registry| {
            registry
                .records()
                .filter(|record| record.key.kind == RecordKind::Approval)
                .filter_map(|record| match &record.body {
                    Some(RecordBody::Approval(body)) => Some((
                        record.key.origin.clone(),
                        record.key.name.clone(),
                        body.clone(),
                    )),
                    _ => None,
                })
                .collect()
        })
    }

    fn owner_of(&self, id: &str) -> Option<NodeId> {
        self.registry_approvals()
            .into_iter()
            .find(|(_, name, _)| name == id)
            .map(|(origin, _, _)| origin)
    }

    fn node_name_of(&self, node: &NodeId) -> String {
        if *node == self.node_id {
            return self.node_name.clone();
        }
        self.mesh.with_registry(|registry| {
            registry
                .node(node)
                .map_or_else(|| node.to_string(), |body| body.node_name.clone())
        })
    }

    fn notice(&self, row: &ApprovalRow) -> Notice {
        Notice {
            id: row.id.clone(),
            agent: row.body.agent.clone(),
            action: row.body.action.clone(),
            summary: row.body.summary.clone(),
            node: self.node_name.clone(),
            answer: format!("scout approve {}", row.id),
        }
    }

    /// Tells this machine's desktop about an approval another member owns
    /// (its owner called the webhooks).
    pub fn notify_remote(&self, view: &ApprovalView) {
        self.notifier.notify(
            Notice {
                id: view.id.clone(),
                agent: view.agent.clone(),
                action: view.action.clone(),
                summary: view.summary.clone(),
                node: view.node.clone(),
                answer: format!("scout approve {}", view.id),
            },
            Channels {
                desktop: true,
                webhooks: false,
            },
        );
    }

    fn view_of_row(&self, row: &ApprovalRow) -> ApprovalView {
        self.view_of(&row.id, &self.node_id, &row.body, row.outcome.clone())
    }

    fn view_of(
        &self,
        id: &str,
        owner: &NodeId,
        body: &ApprovalBody,
        outcome: Option<String>,
    ) -> ApprovalView {
        ApprovalView {
            id: id.to_owned(),
            node: self.node_name_of(owner),
            node_id: owner.to_string(),
            local: *owner == self.node_id,
            agent: body.agent.clone(),
            action: body.action.clone(),
            summary: body.summary.clone(),
            invocation: body.invocation.clone(),
            state: body.state,
            created_unix_ms: body.created_unix_ms,
            deadline_unix_ms: body.deadline_unix_ms,
            decided_by: body.decided_by.clone(),
            decided_unix_ms: body.decided_unix_ms,
            note: body.note.clone(),
            outcome,
        }
    }
}

/// The definition label of an instance name (`fabric` of
/// `@fabric@devbox#main`), which standing rules are keyed by.
fn definition_of(agent: &str) -> Option<String> {
    AgentName::parse(agent)
        .ok()
        .map(|name| name.definition().as_str().to_owned())
}

/// Runs an approved gated action on this broker; what it did.
pub async fn apply(state: &Arc<BrokerState>, gate: &Gate) -> Result<String, String> {
    match gate {
        Gate::WorkOrderCancel { id } => super::routing::work_orders::cancel(&state.router, id)
            .await
            .map(|order| format!("work order {id} is {}", order.state))
            .map_err(|err| err.to_string()),
        Gate::InvocationCancel { id } => state
            .router
            .cancel(id)
            .await
            .map(|()| format!("invocation {id} cancelled"))
            .map_err(|err| err.to_string()),
        Gate::MeshRevoke { node, reason } => state
            .mesh
            .revoke(node, reason)
            .map(|revoked| format!("member {revoked} revoked"))
            .map_err(|err| format!("{err:#}")),
        Gate::AgentStop { id } => state
            .runtime
            .stop(id)
            .await
            .map(|_| format!("agent session {id} stopped"))
            .map_err(|err| err.to_string()),
    }
}
