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
use scout_mesh::wire::{
    ApprovalBody, ApprovalDecision, ApprovalState, ErrorCode, MeshFrame, NodeId, RecordBody,
    RecordKind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::BrokerState;
use super::notify::{Channels, Notice, Notifier};
use crate::env::Env;
use crate::pty::question::QuestionOutcome;
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

/// How long a question withdrawn by its terminal stays in the registry: it
/// was never answered by anyone in the mesh, and a program showing many
/// dialogs would otherwise fill every member's list for a day. The owner's
/// store keeps it for the audit like every approval.
pub const WITHDRAWN_QUESTION_RETENTION: Duration = Duration::from_secs(10 * 60);

/// How long approval `body` stays in the registry once decided.
fn retention_of(body: &ApprovalBody) -> u64 {
    let retention = if body.action == QUESTION_ACTION
        && body.decided_by.as_deref() == Some(QUESTION_WITHDRAWN_BY)
    {
        WITHDRAWN_QUESTION_RETENTION
    } else {
        DECIDED_RETENTION
    };
    u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)
}

/// The longest the deadline task sleeps without looking: new requests wake
/// it, so this only bounds how late a withdrawal of old records can be.
const DEADLINE_TICK_MAX: Duration = Duration::from_secs(60);

/// How long an answer waits for the owner's reply over the mesh.
pub const DECIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Approvals listed at most.
pub const LIST_MAX: usize = 500;

/// Pending approvals one agent may have at once: a person answers a few at
/// a time; an agent asking more is looping or flooding every member's
/// list and desktop, and gets `TOO_MANY_APPROVALS` until some are answered.
pub const PENDING_PER_AGENT_MAX: usize = 16;

/// How long past its deadline a member still shows another broker's
/// approval as pending: the owner marks it expired, but an owner that is
/// gone never does, and clocks differ by a little.
const REMOTE_EXPIRY_GRACE_MS: u64 = 5_000;

/// Longest `actor` a member may name for its operator.
const ACTOR_NAME_BYTES_MAX: usize = 64;

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
        /// The member's node id, resolved when the request was made (a
        /// name could be taken by another member before the approval).
        node: String,
        /// Why.
        reason: String,
    },
    /// `agent.stop`: end a terminal session of the local runtime.
    AgentStop {
        /// The session.
        id: String,
    },
    /// `checkpoint.restore`: write a checkpoint's files back.
    CheckpointRestore {
        /// The checkpoint (a flight or invocation id).
        id: String,
        /// Also remove files created since.
        clean: bool,
    },
    /// `workspace.remove`: remove a worktree a definition made on demand
    /// (its branch is kept).
    WorkspaceRemove {
        /// The instance, with the owner's node name.
        instance: String,
        /// Even with uncommitted changes or unmerged commits.
        force: bool,
    },
    /// `token.create` of an operator token by an agent. Nothing runs at
    /// the decision: the token is made when the agent that asked picks it
    /// up (`http::tokens::pick_up`), so its secret is never stored.
    TokenCreate {
        /// Its label.
        name: Option<String>,
        /// How long it works, in milliseconds; within
        /// `http::tokens::AGENT_OPERATOR_TTL_MAX_MS` when picked up, an hour
        /// when absent (approvals stored before the cap have none).
        ttl_ms: Option<u64>,
    },
}

/// What picking up an approved token finds.
#[derive(Debug)]
pub enum Pickup<T> {
    /// This call took it, and what was made with it in the same
    /// transaction.
    Claimed(T),
    /// It was picked up before.
    Taken,
    /// The approval is older than the pickup allows; no token is made.
    TooLate,
    /// The approval is not for a token.
    NotAToken,
}

impl Gate {
    /// The action word people and rules see.
    pub fn action(&self) -> &'static str {
        match self {
            Gate::WorkOrderCancel { .. } => "work_order.cancel",
            Gate::InvocationCancel { .. } => "invocation.cancel",
            Gate::MeshRevoke { .. } => "mesh.revoke",
            Gate::AgentStop { .. } => "agent.stop",
            Gate::CheckpointRestore { .. } => "checkpoint.restore",
            Gate::TokenCreate { .. } => Gate::TOKEN_CREATE,
            Gate::WorkspaceRemove { .. } => "workspace.remove",
        }
    }

    /// The action of [`Gate::TokenCreate`].
    pub const TOKEN_CREATE: &'static str = "token.create";

    /// Whether the action runs when its requester picks its result up,
    /// rather than on the owner at the decision.
    fn on_pickup(gate: Option<&serde_json::Value>) -> bool {
        gate.and_then(|gate| gate.get("kind"))
            .and_then(serde_json::Value::as_str)
            == Some("token_create")
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
            Gate::CheckpointRestore { id, clean: false } => {
                format!("restore checkpoint {id} (files created since are kept)")
            }
            Gate::CheckpointRestore { id, clean: true } => {
                format!("restore checkpoint {id} and remove files created since")
            }
            Gate::TokenCreate { name, ttl_ms } => {
                let mut summary =
                    "make an operator token (it may do everything the operator does".to_owned();
                match ttl_ms {
                    Some(ttl) => summary.push_str(&format!(", for {})", human_duration(*ttl))),
                    None => summary.push_str(", until revoked)"),
                }
                if let Some(name) = name {
                    summary.push_str(&format!(" named {name:?}"));
                }
                summary
            }
            Gate::WorkspaceRemove {
                instance,
                force: false,
            } => format!("remove the worktree of {instance} (refused if it holds unmerged work)"),
            Gate::WorkspaceRemove {
                instance,
                force: true,
            } => {
                format!("remove the worktree of {instance}, uncommitted and unmerged work included")
            }
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
    /// How long to wait for a person; the broker's default deadline when
    /// `None`.
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
    /// The agent has too many approvals pending.
    #[error(
        "{agent} already has {PENDING_PER_AGENT_MAX} approvals waiting for a person; wait for answers before asking more"
    )]
    TooMany {
        /// The agent.
        agent: String,
    },
    /// Several members publish an approval with this id.
    #[error(
        "approval {id} is published by several members ({owners}); answer it on the broker that runs its agent"
    )]
    Ambiguous {
        /// The approval.
        id: String,
        /// The members' names.
        owners: String,
    },
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
    /// `always` was asked of a terminal question: a standing rule would
    /// type the same answer into every later dialog that reads the same,
    /// whatever it is about.
    #[error(
        "approval {0} is a question on a terminal; it is answered one question at a time (`always` makes no standing rule for it)"
    )]
    AlwaysNotAllowed(String),
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
            ApprovalError::TooMany { .. } => "TOO_MANY_APPROVALS".to_owned(),
            ApprovalError::Ambiguous { .. } => "APPROVAL_AMBIGUOUS".to_owned(),
            ApprovalError::OwnerUnreachable { .. } => "OWNER_UNREACHABLE".to_owned(),
            ApprovalError::AlwaysNotAllowed(_) => "ALWAYS_NOT_ALLOWED".to_owned(),
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
    /// Approved gated actions to run, in order, by the deadline task
    /// ([`Approvals::run`], joined at shutdown): an answer is acknowledged
    /// once committed, without waiting for the action.
    to_apply: tokio::sync::mpsc::UnboundedSender<String>,
    to_apply_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// The deadline of requests that name none (`approvals.deadline_secs`
    /// of `settings.json`, else [`DEADLINE_DEFAULT`]).
    default_deadline: Duration,
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
        let (to_apply, to_apply_rx) = tokio::sync::mpsc::unbounded_channel();
        Approvals {
            store,
            mesh,
            env,
            node_id,
            node_name,
            notifier,
            changed: watch::channel(0).0,
            state: OnceLock::new(),
            to_apply,
            to_apply_rx: Mutex::new(Some(to_apply_rx)),
            default_deadline: DEADLINE_DEFAULT,
        }
    }

    /// These approvals with `deadline` for requests that name none (kept
    /// within [`DEADLINE_MAX`]).
    pub fn with_default_deadline(mut self, deadline: Duration) -> Approvals {
        self.default_deadline = deadline.min(DEADLINE_MAX);
        self
    }

    /// Lets approved gated actions reach the broker.
    pub fn attach(&self, state: &Arc<BrokerState>) {
        let _ = self.state.set(Arc::downgrade(state));
    }

    /// Asks for a decision: answered at once by a standing rule, else
    /// pending until a person answers or the deadline passes.
    pub async fn ask(&self, ask: Ask) -> Result<ApprovalView, ApprovalError> {
        // A person approves what they read: a summary is never cut.
        if ask.summary.len() > approval::SUMMARY_BYTES_MAX {
            return Err(ApprovalError::Invalid(format!(
                "the summary is {} bytes; at most {} (a person must be able to read all of what they approve)",
                ask.summary.len(),
                approval::SUMMARY_BYTES_MAX
            )));
        }
        let now = self.env.now_unix_ms();
        let deadline = ask
            .deadline
            .unwrap_or(self.default_deadline)
            .min(DEADLINE_MAX);
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
        let (row, rule) = self
            .store
            .write(move |transaction| {
                if ApprovalRow::pending_of(transaction, &new.agent)? >= PENDING_PER_AGENT_MAX {
                    return Ok(None);
                }
                let row = ApprovalRow::insert(transaction, &new)?;
                // A gated action always asks a person; a standing rule only
                // answers what the agent asks itself.
                let rule = match &new.gate {
                    Some(_) => None,
                    None => {
                        ApprovalRule::find(transaction, &new.agent, &new.action, &row.body.summary)?
                    }
                };
                let Some(rule) = rule else {
                    return Ok(Some((row, None)));
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
                Ok(Some((decided, Some(rule))))
            })
            .await?
            .ok_or_else(|| ApprovalError::TooMany {
                agent: ask.agent.clone(),
            })?;
        self.publish(&row);
        self.bump();
        if rule.is_none() {
            self.notifier.notify(
                self.notice(&row),
                Channels {
                    desktop: true,
                    webhooks: true,
                },
            );
        }
        Ok(self.view_of_row(&row, &self.node_names()))
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
            return Ok(self.view_of_row(&row, &self.node_names()));
        }
        let names = self.node_names();
        let owners: Vec<NodeId> = self
            .registry_approvals()
            .into_iter()
            .filter(|(_, name, _)| *name == decision.id)
            .map(|(origin, _, _)| origin)
            .collect();
        let owner = match owners.as_slice() {
            [] => return Err(ApprovalError::NotPending(decision.id)),
            [owner] => owner.clone(),
            several => {
                return Err(ApprovalError::Ambiguous {
                    id: decision.id,
                    owners: several
                        .iter()
                        .map(|node| name_in(&names, node))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        let owner_name = name_in(&names, &owner);
        let answer = tokio::time::timeout(
            DECIDE_TIMEOUT,
            self.mesh
                .request(&owner, &MeshFrame::ApprovalDecide(decision.clone())),
        )
        .await;
        match answer {
            Ok(Ok(MeshFrame::ApprovalDecided(body))) => {
                Ok(self.view_of(&decision.id, &owner, &body, None, &names))
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
        // The deciding broker names its own actor, kept to a plain word so
        // it cannot pose as a rule, the deadline or another node; the node
        // comes from the connection, never from the frame.
        let actor = plain_word(&decision.actor);
        let names = self.node_names();
        let by = format!("{actor}@{}", name_in(&names, from));
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
        if decision.always {
            // An approval's action never changes, so reading it before the
            // answer's transaction is as good as reading it inside.
            let key = decision.id.clone();
            let action = self
                .store
                .read(move |connection| ApprovalRow::get(connection, &key))?
                .map(|row| row.body.action);
            if !always_allowed(action.as_deref()) {
                return Err(ApprovalError::AlwaysNotAllowed(decision.id.clone()));
            }
        }
        let decision_owned = decision.clone();
        let by_owned = by.to_owned();
        let rule_id = format!("rule_{:016x}", self.env.random_u64());
        let outcome = self
            .store
            .write(move |transaction| {
                if decision_owned.always
                    && ApprovalRow::get(transaction, &decision_owned.id)?
                        .is_some_and(|row| row.gate.is_some())
                {
                    return Err(StoreError::InvalidRequest {
                        detail: "a gated action is answered one request at a time; `always` makes no standing rule for it".to_owned(),
                    });
                }
                let outcome = ApprovalRow::decide(transaction, &decision_owned, &by_owned, now)?;
                if let (Ok(row), true) = (&outcome, decision_owned.always) {
                    ApprovalRule::upsert(
                        transaction,
                        &ApprovalRule {
                            id: rule_id,
                            agent: row.body.agent.clone(),
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
            .await
            .map_err(|err| match err {
                StoreError::InvalidRequest { detail } => ApprovalError::Invalid(detail),
                other => ApprovalError::Store(other),
            })?;
        match outcome {
            (Ok(row), _) => {
                self.publish(&row);
                self.bump();
                self.after_decision(&row);
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

    /// Queues the gated action of an approved approval for the deadline
    /// task, which claims it in the store and runs it once.
    fn after_decision(&self, row: &ApprovalRow) {
        if row.body.state == ApprovalState::Approved
            && row.gate.is_some()
            && !Gate::on_pickup(row.gate.as_ref())
            && row.applied_at_ms.is_none()
        {
            let _ = self.to_apply.send(row.id.clone());
        }
    }

    /// Claims and runs the gated action of approval `id`.
    async fn apply_one(&self, id: String) {
        let Some(state) = self.state.get().and_then(Weak::upgrade) else {
            // Stopping: left unclaimed, so the next start runs it.
            return;
        };
        let now = self.env.now_unix_ms();
        let key = id.clone();
        let claimed = self
            .store
            .write(move |transaction| {
                if !ApprovalRow::claim(transaction, &key, now)? {
                    return Ok(None);
                }
                ApprovalRow::get(transaction, &key)
            })
            .await;
        let row = match claimed {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(approval = %id, cause = %err, "cannot claim an approved action");
                return;
            }
        };
        let outcome = match row.gate.map(serde_json::from_value::<Gate>) {
            Some(Ok(gate)) => match apply(&state, &gate).await {
                Ok(done) => done,
                Err(err) => format!("failed: {err}"),
            },
            Some(Err(err)) => format!("failed: the stored action is not readable: {err}"),
            None => return,
        };
        let now = self.env.now_unix_ms();
        let key = id.clone();
        let recorded = outcome.clone();
        if let Err(err) = self
            .store
            .write(move |transaction| ApprovalRow::mark_applied(transaction, &key, now, &recorded))
            .await
        {
            tracing::error!(approval = %id, cause = %err, "cannot record an approved action");
        }
        tracing::info!(approval = %id, %outcome, "approved action ran");
        self.bump();
    }

    /// Every approval the mesh shows (this broker's from its store, with
    /// outcomes; other members' from the registry, only while their owner
    /// is a member), newest first.
    pub fn list(&self) -> Result<Vec<ApprovalView>, ApprovalError> {
        let own = self
            .store
            .read(|connection| ApprovalRow::list(connection, LIST_MAX))?;
        let names = self.node_names();
        let mut views: BTreeMap<(std::cmp::Reverse<u64>, String, String), ApprovalView> =
            BTreeMap::new();
        for (origin, name, body) in self.registry_approvals() {
            if origin == self.node_id || !self.is_member(&origin) {
                continue;
            }
            let view = self.view_of(&name, &origin, &body, None, &names);
            views.insert(
                (
                    std::cmp::Reverse(body.created_unix_ms),
                    name,
                    origin.to_string(),
                ),
                view,
            );
        }
        for row in &own {
            views.insert(
                (
                    std::cmp::Reverse(row.body.created_unix_ms),
                    row.id.clone(),
                    self.node_id.to_string(),
                ),
                self.view_of_row(row, &names),
            );
        }
        Ok(views.into_values().take(LIST_MAX).collect())
    }

    /// One approval, from the store when owned here, else from the registry.
    pub fn get(&self, id: &str) -> Result<Option<ApprovalView>, ApprovalError> {
        let key = id.to_owned();
        let names = self.node_names();
        if let Some(row) = self
            .store
            .read(move |connection| ApprovalRow::get(connection, &key))?
        {
            return Ok(Some(self.view_of_row(&row, &names)));
        }
        Ok(self
            .registry_approvals()
            .into_iter()
            .find(|(origin, name, _)| name == id && self.is_member(origin))
            .map(|(origin, name, body)| self.view_of(&name, &origin, &body, None, &names)))
    }

    /// Waits until approval `id` (owned here) is settled or `timeout`
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
                // One picked up by its requester is settled at the decision.
                ApprovalState::Approved => {
                    row.gate.is_none()
                        || Gate::on_pickup(row.gate.as_ref())
                        || row.outcome.as_deref().is_some_and(|o| o != "running")
                }
                ApprovalState::Denied | ApprovalState::Expired => true,
            };
            if settled
                || tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .is_err()
            {
                return Ok(self.view_of_row(&row, &self.node_names()));
            }
        }
    }

    /// Claims the result of approved approval `id` (owned here) for its
    /// one pickup, `max_ms` at most after its decision, and runs `make`
    /// with its gate in the same transaction: the claim, what `make`
    /// writes and the outcome it names are committed together or not at
    /// all, so a failure in between never uses the approval up without
    /// its result. A pickup too late is recorded as such, so no later one
    /// succeeds either.
    pub async fn claim_pickup<T, F>(
        &self,
        id: &str,
        max_ms: u64,
        make: F,
    ) -> Result<Pickup<T>, ApprovalError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, Gate) -> Result<(T, String), StoreError>
            + Send
            + 'static,
    {
        let now = self.env.now_unix_ms();
        let key = id.to_owned();
        let pickup = self
            .store
            .write(move |transaction| {
                let Some(row) = ApprovalRow::get(transaction, &key)? else {
                    return Ok(Pickup::NotAToken);
                };
                if row.body.state != ApprovalState::Approved || !Gate::on_pickup(row.gate.as_ref())
                {
                    return Ok(Pickup::NotAToken);
                }
                let Some(Ok(gate)) = row.gate.clone().map(serde_json::from_value::<Gate>) else {
                    return Ok(Pickup::NotAToken);
                };
                if !ApprovalRow::claim(transaction, &key, now)? {
                    return Ok(Pickup::Taken);
                }
                let decided = row.body.decided_unix_ms.unwrap_or(now);
                if now > decided.saturating_add(max_ms) {
                    ApprovalRow::mark_applied(
                        transaction,
                        &key,
                        now,
                        "expired: not picked up in time; no token was made",
                    )?;
                    return Ok(Pickup::TooLate);
                }
                let (made, outcome) = make(transaction, gate)?;
                ApprovalRow::mark_applied(transaction, &key, now, &outcome)?;
                Ok(Pickup::Claimed(made))
            })
            .await?;
        self.bump();
        Ok(pickup)
    }

    /// Withdraws pending approval `id` owned here: expired, decided by
    /// `by` (`terminal`) with `note`. Whether it was still pending.
    pub async fn withdraw(&self, id: &str, by: &str, note: &str) -> Result<bool, ApprovalError> {
        let now = self.env.now_unix_ms();
        let (key, by, note) = (id.to_owned(), by.to_owned(), note.to_owned());
        let row = self
            .store
            .write(move |transaction| ApprovalRow::withdraw(transaction, &key, &by, &note, now))
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        tracing::info!(approval = %row.id, "approval withdrawn");
        self.publish(&row);
        self.bump();
        Ok(true)
    }

    /// A receiver that changes whenever this broker commits an approval
    /// change (the registry's change counter covers the rest of the mesh).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The standing rules of this broker.
    pub fn rules(&self) -> Result<Vec<ApprovalRule>, ApprovalError> {
        Ok(self.store.read(ApprovalRule::list)?)
    }

    /// Removes standing rule `id` as `actor`; whether it existed.
    pub async fn remove_rule(&self, id: &str, actor: &str) -> Result<bool, ApprovalError> {
        let now = self.env.now_unix_ms();
        let (id, actor) = (id.to_owned(), format!("{actor}@{}", self.node_name));
        Ok(self
            .store
            .write(move |transaction| ApprovalRule::remove(transaction, &id, &actor, now))
            .await?)
    }

    /// The deadline task: expires overdue approvals, runs approved gated
    /// actions one at a time, withdraws old decided approvals from the
    /// registry, tells this desktop about other members' new ones, and at
    /// start republishes what a crash may have left unpublished and runs
    /// approved actions that did not run.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(mut to_apply) = self
            .to_apply_rx
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        else {
            return;
        };
        self.recover();
        let mut changed = self.changed.subscribe();
        let mut registry_changed = self.mesh.subscribe_changes();
        // Remote approvals already pending at start were notified by the
        // run that saw them arrive.
        let mut seen: std::collections::HashSet<String> = self
            .registry_approvals()
            .into_iter()
            .map(|(_, name, _)| name)
            .collect();
        // The registry changes with every record of a large mesh: approvals
        // are scanned only when one of them changed.
        let mut approvals_looked_at = None;
        loop {
            let approvals_changed = self
                .mesh
                .with_registry(|registry| registry.changes_of(RecordKind::Approval));
            if approvals_looked_at != Some(approvals_changed) {
                approvals_looked_at = Some(approvals_changed);
                self.notify_new_remote(&mut seen);
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
            let sleep = tokio::time::sleep(next);
            tokio::pin!(sleep);
            let apply = loop {
                tokio::select! {
                    Some(id) = to_apply.recv() => break Some(id),
                    _ = &mut sleep => break None,
                    _ = changed.changed() => break None,
                    _ = registry_changed.changed() => {
                        let approvals_changed = self
                            .mesh
                            .with_registry(|registry| registry.changes_of(RecordKind::Approval));
                        if approvals_looked_at != Some(approvals_changed) {
                            break None;
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            };
            if let Some(id) = apply {
                self.apply_one(id).await;
            }
        }
    }

    /// Notifies each pending approval of another member not notified yet
    /// (`seen`), and forgets those no longer in the registry.
    fn notify_new_remote(&self, seen: &mut std::collections::HashSet<String>) {
        let mut names = None;
        let mut present = std::collections::HashSet::new();
        for (origin, name, body) in self.registry_approvals() {
            present.insert(name.clone());
            if origin != self.node_id
                && body.state == ApprovalState::Pending
                && self.is_member(&origin)
                && seen.insert(name.clone())
            {
                let names = names.get_or_insert_with(|| self.node_names());
                self.notify_remote(&self.view_of(&name, &origin, &body, None, names));
            }
        }
        seen.retain(|name| present.contains(name));
    }

    fn recover(&self) {
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
        for row in &rows {
            let recent = row
                .body
                .decided_unix_ms
                .is_none_or(|at| at.saturating_add(retention_of(&row.body)) > now);
            if recent && published.get(&row.id) != Some(&row.body) {
                self.publish(row);
            }
        }
        match self.store.read(ApprovalRow::unapplied) {
            Ok(unapplied) => {
                for row in unapplied {
                    self.after_decision(&row);
                }
            }
            Err(err) => tracing::error!(cause = %err, "cannot read approved actions at start"),
        }
    }

    fn withdraw_old(&self, now: u64) {
        let old: Vec<String> = self
            .registry_approvals()
            .into_iter()
            .filter(|(origin, _, body)| {
                *origin == self.node_id
                    && body
                        .decided_unix_ms
                        .is_some_and(|at| at.saturating_add(retention_of(body)) <= now)
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

    /// Every node's name by id, read once for a whole list.
    fn node_names(&self) -> HashMap<NodeId, String> {
        let mut names: HashMap<NodeId, String> = self.mesh.with_registry(|registry| {
            registry
                .nodes()
                .into_iter()
                .map(|node| (node.node_id.clone(), node.body.node_name.clone()))
                .collect()
        });
        names.insert(self.node_id.clone(), self.node_name.clone());
        names
    }

    fn is_member(&self, node: &NodeId) -> bool {
        self.mesh.with_registry(|registry| registry.is_member(node))
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

    fn view_of_row(&self, row: &ApprovalRow, names: &HashMap<NodeId, String>) -> ApprovalView {
        self.view_of(
            &row.id,
            &self.node_id,
            &row.body,
            row.outcome.clone(),
            names,
        )
    }

    fn view_of(
        &self,
        id: &str,
        owner: &NodeId,
        body: &ApprovalBody,
        outcome: Option<String>,
        names: &HashMap<NodeId, String>,
    ) -> ApprovalView {
        let local = *owner == self.node_id;
        // Another member's approval well past its deadline is expired
        // whether or not its owner is still there to say so.
        let overdue = !local
            && body.state == ApprovalState::Pending
            && self.env.now_unix_ms()
                >= body.deadline_unix_ms.saturating_add(REMOTE_EXPIRY_GRACE_MS);
        ApprovalView {
            id: id.to_owned(),
            node: name_in(names, owner),
            node_id: owner.to_string(),
            local,
            agent: body.agent.clone(),
            action: body.action.clone(),
            summary: body.summary.clone(),
            invocation: body.invocation.clone(),
            state: if overdue {
                ApprovalState::Expired
            } else {
                body.state
            },
            created_unix_ms: body.created_unix_ms,
            deadline_unix_ms: body.deadline_unix_ms,
            decided_by: if overdue {
                Some("deadline".to_owned())
            } else {
                body.decided_by.clone()
            },
            decided_unix_ms: body.decided_unix_ms,
            note: body.note.clone(),
            outcome,
        }
    }
}

/// `ms` for people: whole days, hours, minutes and seconds, largest first
/// (`1 h 30 min`), the parts that are zero left out.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "min"),
        (secs % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, unit)| format!("{count} {unit}"))
        .collect();
    if shown.is_empty() {
        format!("{ms} ms")
    } else {
        shown.join(" ")
    }
}

/// A node's name, or its id when the registry has no name for it.
fn name_in(names: &HashMap<NodeId, String>, node: &NodeId) -> String {
    names.get(node).cloned().unwrap_or_else(|| node.to_string())
}

/// `actor` as a plain word (letters, digits, `.`, `_`, `-`, `:` as in
/// `session:ID`), or `operator`: what a member names its answering person,
/// never a rule, the deadline or another node (no `@`).
fn plain_word(actor: &str) -> String {
    let word: String = actor
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        .take(ACTOR_NAME_BYTES_MAX)
        .collect();
    if word.is_empty() || word.starts_with("rule") || word == "deadline" {
        "operator".to_owned()
    } else {
        word
    }
}

/// Answers ACP agents' permission requests by asking a person: an approval
/// of the agent's broker that any member may answer, waited for while the
/// agent waits. Made before the approvals exist (the session runtime needs
/// it first) and attached once they do.
#[derive(Debug, Default)]
pub struct BrokerAsker {
    parts: OnceLock<(Weak<Approvals>, Arc<super::credentials::AgentCredentials>)>,
}

impl BrokerAsker {
    /// Asks through `approvals`, naming the invocation from `credentials`.
    pub fn attach(
        &self,
        approvals: &Arc<Approvals>,
        credentials: Arc<super::credentials::AgentCredentials>,
    ) {
        let _ = self.parts.set((Arc::downgrade(approvals), credentials));
    }
}

impl crate::pty::PermissionAsker for BrokerAsker {
    fn ask(
        &self,
        request: crate::pty::PermissionRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<bool>> + Send>> {
        let crate::pty::PermissionRequest {
            agent,
            action,
            summary,
        } = request;
        let parts = self
            .parts
            .get()
            .and_then(|(approvals, credentials)| Some((approvals.upgrade()?, credentials.clone())));
        Box::pin(async move {
            let (approvals, credentials) = parts?;
            let invocation = credentials.running_invocation(&agent);
            let asked = approvals
                .ask(Ask {
                    agent,
                    invocation,
                    action: action.to_owned(),
                    summary,
                    gate: None,
                    deadline: None,
                })
                .await;
            let mut view = match asked {
                Ok(view) => view,
                Err(err) => {
                    // Nobody can be asked (too many pending, a summary too
                    // long to show): refused, never allowed unseen.
                    tracing::warn!(cause = %err, "a permission request was refused unasked");
                    return Some(false);
                }
            };
            // A turn given up (cancelled, past its deadline, the session
            // stopping) drops this future: the request is withdrawn then,
            // rather than waiting for a person and holding one of the
            // agent's pending approvals until its deadline.
            let mut unanswered = WithdrawOnDrop {
                approvals: Some(approvals.clone()),
                id: view.id.clone(),
            };
            while view.state == ApprovalState::Pending {
                view = approvals.wait(&view.id, DEADLINE_MAX).await.ok()?;
            }
            unanswered.approvals = None;
            Some(view.state == ApprovalState::Approved)
        })
    }

    fn ask_question(
        &self,
        agent: String,
        question: String,
        gone: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = QuestionOutcome> + Send>> {
        let parts = self
            .parts
            .get()
            .and_then(|(approvals, credentials)| Some((approvals.upgrade()?, credentials.clone())));
        Box::pin(async move {
            let Some((approvals, credentials)) = parts else {
                return QuestionOutcome::Unasked;
            };
            let invocation = credentials.running_invocation(&agent);
            let asked = approvals
                .ask(Ask {
                    agent,
                    invocation,
                    action: QUESTION_ACTION.to_owned(),
                    summary: question,
                    gate: None,
                    deadline: None,
                })
                .await;
            match asked {
                Ok(view) => BrokerAsker::question_answer(&approvals, view, gone).await,
                Err(err) => {
                    // Nobody can be asked (too many pending): the question
                    // stays on the terminal for a person there.
                    tracing::warn!(cause = %err, "a terminal question was not asked");
                    QuestionOutcome::Unasked
                }
            }
        })
    }
}

impl BrokerAsker {
    /// Waits for the answer to question approval `view` while the question
    /// stays on screen; withdraws it once the question has been gone for
    /// [`crate::pty::question::QUESTION_GONE_GRACE`].
    async fn question_answer(
        approvals: &Approvals,
        mut view: ApprovalView,
        mut gone: watch::Receiver<bool>,
    ) -> QuestionOutcome {
        use crate::pty::question::QUESTION_GONE_GRACE;
        loop {
            match view.state {
                ApprovalState::Pending => {}
                ApprovalState::Approved => return QuestionOutcome::Answer(true),
                ApprovalState::Denied => return QuestionOutcome::Answer(false),
                // Withdrawn: the terminal was answered; nothing to type.
                ApprovalState::Expired
                    if view.decided_by.as_deref() == Some(QUESTION_WITHDRAWN_BY) =>
                {
                    return QuestionOutcome::Withdrawn;
                }
                // Unanswered by its deadline: it counts as denied.
                ApprovalState::Expired => return QuestionOutcome::Answer(false),
            }
            let still_shown = tokio::select! {
                waited = approvals.wait(&view.id, DEADLINE_MAX) => match waited {
                    Ok(waited) => {
                        view = waited;
                        continue;
                    }
                    Err(err) => {
                        // Nothing will be typed: nobody may approve it
                        // still, believing it would be.
                        tracing::warn!(approval = %view.id, cause = %err, "cannot wait for a question's answer");
                        false
                    }
                },
                changed = gone.changed() => match changed {
                    Ok(()) if !*gone.borrow_and_update() => true,
                    // A redraw may blank the question for a moment.
                    Ok(()) => matches!(
                        tokio::time::timeout(QUESTION_GONE_GRACE, gone.wait_for(|gone| !*gone)).await,
                        Ok(Ok(_))
                    ),
                    Err(_) => false,
                },
            };
            if !still_shown {
                if let Err(err) = approvals
                    .withdraw(
                        &view.id,
                        QUESTION_WITHDRAWN_BY,
                        "the question left the screen or was taken in the terminal",
                    )
                    .await
                {
                    tracing::warn!(approval = %view.id, cause = %err, "cannot withdraw a question");
                }
                return QuestionOutcome::Withdrawn;
            }
        }
    }
}

/// Whether `always` (a standing rule) may answer approvals of `action`: not
/// a terminal's question, whose text says nothing certain about what the
/// next dialog reading the same would do.
fn always_allowed(action: Option<&str>) -> bool {
    action != Some(QUESTION_ACTION)
}

/// Who withdrew a permission request whose turn ended before an answer.
pub const TURN_ENDED_WITHDRAWN_BY: &str = "turn";

/// Withdraws pending approval `id` when dropped while `approvals` is set:
/// the asking future was dropped before an answer.
struct WithdrawOnDrop {
    approvals: Option<Arc<Approvals>>,
    id: String,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some(approvals) = self.approvals.take() else {
            return;
        };
        // Drop cannot wait for the store: the withdrawal runs on its own.
        // Without a runtime (the broker shutting down) the deadline
        // expires the request instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            let note = "the turn that asked ended before an answer";
            if let Err(err) = approvals
                .withdraw(&id, TURN_ENDED_WITHDRAWN_BY, note)
                .await
            {
                tracing::warn!(approval = %id, cause = %err, "cannot withdraw a permission request");
            }
        });
    }
}

/// The action of an approval asking a terminal's question.
pub const QUESTION_ACTION: &str = "terminal.question";

/// Who withdrew a question's approval: the terminal, where it was answered.
pub const QUESTION_WITHDRAWN_BY: &str = "terminal";

/// Runs an approved gated action on this broker; what it did.
pub async fn apply(state: &Arc<BrokerState>, gate: &Gate) -> Result<String, String> {
    match gate {
        Gate::WorkOrderCancel { id } => super::work_orders::cancel(&state.router, id)
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
        Gate::CheckpointRestore { id, clean } => {
            use super::checkpoints;
            let row = checkpoints::get(&state.store, id).map_err(|err| err.to_string())?;
            // A restore rewrites files: its own checkpoint first, so the
            // restore can be undone like any other risky action.
            let before = format!("before-restore-{}", state.env.new_id());
            checkpoints::Checkpointer {
                store: state.store.clone(),
                env: state.env.clone(),
                node_id: state.node_id.clone(),
            }
            .before_action(
                &before,
                row.invocation_id.as_deref(),
                &row.instance,
                std::path::PathBuf::from(&row.workspace),
            )
            .await;
            let actor = format!("approved@{}", state.node_name);
            checkpoints::restore(&state.store, &state.env, id, *clean, &actor)
                .await
                .map(|(_, restored)| {
                    format!(
                        "checkpoint {id} restored: {} files written, {} removed (the state before is checkpoint {before})",
                        restored.files_restored, restored.files_removed
                    )
                })
                .map_err(|err| err.to_string())
        }
        // The same refusals as a person's request: approval lets the
        // removal run, it does not force it.
        Gate::WorkspaceRemove { instance, force } => {
            crate::http::workspaces::remove_now(state, instance, *force)
                .await
                .map(|removed| {
                    format!(
                        "removed the worktree of {} at {} (branch kept)",
                        removed.removed,
                        removed.path.display()
                    )
                })
                .map_err(|err| format!("{}: {}", err.code, err.message))
        }
        // Never queued (see `Approvals::after_decision`): the token is made
        // on pickup.
        Gate::TokenCreate { .. } => Err("the token is made when its agent picks it up".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_human_units() {
        assert_eq!(human_duration(3_600_000), "1 h");
        assert_eq!(human_duration(86_400_000), "1 d");
        assert_eq!(human_duration(5_400_000), "1 h 30 min");
        assert_eq!(human_duration(90_061_000), "1 d 1 h 1 min 1 s");
        assert_eq!(human_duration(500), "500 ms");
        let summary = Gate::TokenCreate {
            name: None,
            ttl_ms: Some(2 * 3_600_000),
        }
        .summary();
        assert!(summary.contains("for 2 h)"), "{summary}");
    }

    #[test]
    fn no_standing_rule_answers_a_terminal_question() {
        assert!(!always_allowed(Some(QUESTION_ACTION)));
        assert!(always_allowed(Some("tool.Bash")));
        assert!(always_allowed(None));
        assert_eq!(
            ApprovalError::AlwaysNotAllowed("apr_1".to_owned()).code(),
            "ALWAYS_NOT_ALLOWED"
        );
    }

    #[test]
    fn withdrawn_questions_leave_the_registry_sooner() {
        let body = |action: &str, by: &str| ApprovalBody {
            agent: "@a@n#main".to_owned(),
            action: action.to_owned(),
            summary: "Proceed? [y/N]".to_owned(),
            invocation: None,
            state: ApprovalState::Expired,
            created_unix_ms: 0,
            deadline_unix_ms: 1,
            decided_by: Some(by.to_owned()),
            decided_unix_ms: Some(1),
            note: String::new(),
        };
        let short = u64::try_from(WITHDRAWN_QUESTION_RETENTION.as_millis()).unwrap();
        let long = u64::try_from(DECIDED_RETENTION.as_millis()).unwrap();
        assert_eq!(
            retention_of(&body(QUESTION_ACTION, QUESTION_WITHDRAWN_BY)),
            short
        );
        assert_eq!(retention_of(&body(QUESTION_ACTION, "deadline")), long);
        assert_eq!(
            retention_of(&body("tool.Bash", QUESTION_WITHDRAWN_BY)),
            long
        );
    }
}
