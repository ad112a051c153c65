//! Approvals this broker owns and the standing rules (`--always`) that
//! answer them. The decision rules themselves live in
//! `scout_mesh::approval`; this module makes them durable: a decision is
//! taken inside a write transaction, so of two answers racing on one
//! broker exactly one finds the approval pending, and the audit entry is
//! committed with it.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::approval::{self, DecideError};
use scout_mesh::wire::{ApprovalBody, ApprovalDecision, ApprovalState};

use super::audit::{AuditEntry, NewAuditEntry};
use super::{StoreError, list_limit};

/// One approval as the owner keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    /// Its id (`apr_…`).
    pub id: String,
    /// What every member sees.
    pub body: ApprovalBody,
    /// The gated action to run once approved, as JSON; `None` when the
    /// asking agent acts on the answer itself.
    pub gate: Option<serde_json::Value>,
    /// When the gated action ran.
    pub applied_at_ms: Option<i64>,
    /// What the gated action did, or why it failed.
    pub outcome: Option<String>,
}

/// A new approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApproval {
    /// Its id (`apr_…`).
    pub id: String,
    /// Who asked (an instance name).
    pub agent: String,
    /// What is asked for (`work_order.cancel`).
    pub action: String,
    /// What it is about, for people.
    pub summary: String,
    /// The invocation the agent was running.
    pub invocation: Option<String>,
    /// The gated action to run once approved.
    pub gate: Option<serde_json::Value>,
    /// Now, unix ms.
    pub created_ms: u64,
    /// When it counts as denied, unix ms.
    pub deadline_ms: u64,
}

/// A standing answer for one action and exact summary of one agent
/// instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Its id.
    pub id: String,
    /// The agent instance (`@fabric@devbox#main`) it applies to.
    pub agent: String,
    /// The action (`tool.Bash`).
    pub action: String,
    /// The exact summary (`git status`) it applies to.
    pub summary: String,
    /// Allow (`true`) or refuse.
    pub allow: bool,
    /// Who made it.
    pub created_by: String,
}

const COLUMNS: &str = "approval_id, agent, action, summary, invocation_id, gate_json, state, \
     created_at_ms, deadline_at_ms, decided_by, decided_at_ms, note, applied_at_ms, outcome";

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn state_word(state: ApprovalState) -> &'static str {
    state.as_str()
}

fn parse_state(id: &str, word: &str) -> Result<ApprovalState, StoreError> {
    match word {
        "pending" => Ok(ApprovalState::Pending),
        "approved" => Ok(ApprovalState::Approved),
        "denied" => Ok(ApprovalState::Denied),
        "expired" => Ok(ApprovalState::Expired),
        other => Err(StoreError::MalformedRow {
            table: "approvals",
            id: id.to_owned(),
            detail: format!("unknown state `{other}`"),
        }),
    }
}

impl ApprovalRow {
    /// Records a new pending approval, audited as asked by its agent.
    pub fn insert(
        transaction: &Transaction<'_>,
        new: &NewApproval,
    ) -> Result<ApprovalRow, StoreError> {
        let row = ApprovalRow {
            id: new.id.clone(),
            body: ApprovalBody {
                agent: new.agent.clone(),
                action: new.action.clone(),
                summary: new.summary.clone(),
                invocation: new.invocation.clone(),
                created_unix_ms: new.created_ms,
                deadline_unix_ms: new.deadline_ms,
                state: ApprovalState::Pending,
                decided_by: None,
                decided_unix_ms: None,
                note: String::new(),
            },
            gate: new.gate.clone(),
            applied_at_ms: None,
            outcome: None,
        };
        approval::check_body(&row.body).map_err(|detail| StoreError::InvalidRequest { detail })?;
        transaction
            .prepare_cached(&format!(
                "INSERT INTO approvals ({COLUMNS}) VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, NULL, NULL, '', NULL, NULL)"
            ))?
            .execute(params![
                row.id,
                row.body.agent,
                row.body.action,
                row.body.summary,
                row.body.invocation,
                row.gate.as_ref().map(ToString::to_string),
                ms(new.created_ms),
                ms(new.deadline_ms),
            ])?;
        AuditEntry::append(
            transaction,
            &NewAuditEntry {
                ts_ms: ms(new.created_ms),
                actor: row.body.agent.clone(),
                action: "approval_requested".to_owned(),
                subject: row.id.clone(),
                detail: serde_json::json!({
                    "action": row.body.action,
                    "summary": approval::truncate(&row.body.summary, 512),
                    "invocation": row.body.invocation,
                    "gated": row.gate.is_some(),
                }),
            },
        )?;
        Ok(row)
    }

    /// One approval.
    pub fn get(connection: &Connection, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE approval_id = ?1"
            ))?
            .query_row(params![id], |row| Ok(ApprovalRow::from_row(row)))
            .optional()?
            .transpose()
    }

    /// The newest approvals first.
    pub fn list(connection: &Connection, limit: usize) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM approvals ORDER BY created_at_ms DESC, approval_id LIMIT ?1"
        ))?;
        let rows = statement.query_map(params![list_limit(limit)], |row| {
            Ok(ApprovalRow::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    /// Approved gated actions that have not run yet (a restart came between
    /// the decision and the action).
    pub fn unapplied(connection: &Connection) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM approvals
             WHERE state = 'approved' AND gate_json IS NOT NULL AND applied_at_ms IS NULL"
        ))?;
        let rows = statement.query_map([], |row| Ok(ApprovalRow::from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    /// The earliest deadline of a pending approval.
    pub fn next_deadline(connection: &Connection) -> Result<Option<u64>, StoreError> {
        let next: Option<i64> = connection
            .prepare_cached("SELECT min(deadline_at_ms) FROM approvals WHERE state = 'pending'")?
            .query_row([], |row| row.get(0))?;
        Ok(next.map(unms))
    }

    /// Takes `decision` by `by` at `now_ms`: the approval as decided, or
    /// why the answer was refused (the outer error is the store's).
    /// An answer after the deadline also records the expiry.
    pub fn decide(
        transaction: &Transaction<'_>,
        decision: &ApprovalDecision,
        by: &str,
        now_ms: u64,
    ) -> Result<Result<ApprovalRow, DecideError>, StoreError> {
        let Some(current) = ApprovalRow::get(transaction, &decision.id)? else {
            return Err(StoreError::NotFound {
                kind: "approval",
                id: decision.id.clone(),
            });
        };
        match approval::decide(&decision.id, &current.body, decision, by, now_ms) {
            Ok(body) => {
                let row = ApprovalRow { body, ..current };
                row.save_decision(transaction)?;
                Ok(Ok(row))
            }
            Err(err @ DecideError::Expired { .. }) => {
                if let Some(body) = approval::expire(&current.body, now_ms) {
                    ApprovalRow { body, ..current }.save_decision(transaction)?;
                }
                Ok(Err(err))
            }
            Err(err) => Ok(Err(err)),
        }
    }

    /// Withdraws pending approval `id` (what it asked about went away): it
    /// becomes expired, decided by `by` with `note`. `None` when it is not
    /// pending (someone answered first).
    pub fn withdraw(
        transaction: &Transaction<'_>,
        id: &str,
        by: &str,
        note: &str,
        now_ms: u64,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let Some(current) = ApprovalRow::get(transaction, id)? else {
            return Ok(None);
        };
        if current.body.state != ApprovalState::Pending {
            return Ok(None);
        }
        let mut body = current.body.clone();
        body.state = ApprovalState::Expired;
        body.decided_by = Some(by.to_owned());
        body.decided_unix_ms = Some(now_ms);
        body.note = note.to_owned();
        let row = ApprovalRow { body, ..current };
        row.save_decision(transaction)?;
        Ok(Some(row))
    }

    /// Marks every pending approval whose deadline has passed as expired.
    pub fn expire_due(
        transaction: &Transaction<'_>,
        now_ms: u64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let due: Vec<ApprovalRow> = {
            let mut statement = transaction.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals
                 WHERE state = 'pending' AND deadline_at_ms <= ?1"
            ))?;
            let rows =
                statement.query_map(params![ms(now_ms)], |row| Ok(ApprovalRow::from_row(row)))?;
            rows.map(|row| row?).collect::<Result<_, _>>()?
        };
        let mut expired = Vec::with_capacity(due.len());
        for current in due {
            if let Some(body) = approval::expire(&current.body, now_ms) {
                let row = ApprovalRow { body, ..current };
                row.save_decision(transaction)?;
                expired.push(row);
            }
        }
        Ok(expired)
    }

    /// Pending approvals of `agent`.
    pub fn pending_of(connection: &Connection, agent: &str) -> Result<usize, StoreError> {
        let count: i64 = connection
            .prepare_cached(
                "SELECT count(*) FROM approvals WHERE state = 'pending' AND agent = ?1",
            )?
            .query_row(params![agent], |row| row.get(0))?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Claims the gated action of approved approval `id` for one run:
    /// whether this call got it (it had not run and nobody else claimed it).
    pub fn claim(transaction: &Transaction<'_>, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let claimed = transaction
            .prepare_cached(
                "UPDATE approvals SET applied_at_ms = ?2, outcome = 'running'
                 WHERE approval_id = ?1 AND state = 'approved' AND gate_json IS NOT NULL
                   AND applied_at_ms IS NULL",
            )?
            .execute(params![id, ms(now_ms)])?;
        Ok(claimed == 1)
    }

    /// Records what the claimed gated action did.
    pub fn mark_applied(
        transaction: &Transaction<'_>,
        id: &str,
        now_ms: u64,
        outcome: &str,
    ) -> Result<(), StoreError> {
        transaction
            .prepare_cached("UPDATE approvals SET outcome = ?2 WHERE approval_id = ?1")?
            .execute(params![id, outcome])?;
        AuditEntry::append(
            transaction,
            &NewAuditEntry {
                ts_ms: ms(now_ms),
                actor: "broker".to_owned(),
                action: "approved_action_ran".to_owned(),
                subject: id.to_owned(),
                detail: serde_json::json!({ "outcome": outcome }),
            },
        )?;
        Ok(())
    }

    fn save_decision(&self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        let changed = transaction
            .prepare_cached(
                "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at_ms = ?4, note = ?5
                 WHERE approval_id = ?1 AND state = 'pending'",
            )?
            .execute(params![
                self.id,
                state_word(self.body.state),
                self.body.decided_by,
                self.body.decided_unix_ms.map(ms),
                self.body.note,
            ])?;
        if changed != 1 {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "approval {} is no longer pending, so it cannot become {}",
                    self.id, self.body.state
                ),
            });
        }
        AuditEntry::append(
            transaction,
            &NewAuditEntry {
                ts_ms: self.body.decided_unix_ms.map_or(0, ms),
                actor: self.body.decided_by.clone().unwrap_or_default(),
                action: format!("approval_{}", self.body.state),
                subject: self.id.clone(),
                detail: serde_json::json!({
                    "agent": self.body.agent,
                    "action": self.body.action,
                    "note": self.body.note,
                }),
            },
        )?;
        Ok(())
    }

    fn from_row(row: &Row<'_>) -> Result<ApprovalRow, StoreError> {
        let id: String = row.get(0)?;
        let gate_json: Option<String> = row.get(5)?;
        let gate = gate_json
            .map(|text| {
                serde_json::from_str(&text).map_err(|err| StoreError::MalformedRow {
                    table: "approvals",
                    id: id.clone(),
                    detail: format!("gate is not JSON: {err}"),
                })
            })
            .transpose()?;
        let state: String = row.get(6)?;
        Ok(ApprovalRow {
            body: ApprovalBody {
                agent: row.get(1)?,
                action: row.get(2)?,
                summary: row.get(3)?,
                invocation: row.get(4)?,
                created_unix_ms: unms(row.get(7)?),
                deadline_unix_ms: unms(row.get(8)?),
                state: parse_state(&id, &state)?,
                decided_by: row.get(9)?,
                decided_unix_ms: row.get::<_, Option<i64>>(10)?.map(unms),
                note: row.get(11)?,
            },
            gate,
            applied_at_ms: row.get(12)?,
            outcome: row.get(13)?,
            id,
        })
    }
}

impl ApprovalRule {
    /// The rule answering `action` with `summary` for `agent`.
    pub fn find(
        connection: &Connection,
        agent: &str,
        action: &str,
        summary: &str,
    ) -> Result<Option<ApprovalRule>, StoreError> {
        connection
            .prepare_cached(
                "SELECT rule_id, agent, action, summary, allow, created_by
                 FROM approval_rules WHERE agent = ?1 AND action = ?2 AND summary = ?3",
            )?
            .query_row(params![agent, action, summary], |row| {
                Ok(ApprovalRule {
                    id: row.get(0)?,
                    agent: row.get(1)?,
                    action: row.get(2)?,
                    summary: row.get(3)?,
                    allow: row.get::<_, i64>(4)? == 1,
                    created_by: row.get(5)?,
                })
            })
            .optional()
            .map_err(StoreError::from)
    }

    /// Every rule.
    pub fn list(connection: &Connection) -> Result<Vec<ApprovalRule>, StoreError> {
        let mut statement = connection.prepare_cached(
            "SELECT rule_id, agent, action, summary, allow, created_by
             FROM approval_rules ORDER BY created_at_ms",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(ApprovalRule {
                id: row.get(0)?,
                agent: row.get(1)?,
                action: row.get(2)?,
                summary: row.get(3)?,
                allow: row.get::<_, i64>(4)? == 1,
                created_by: row.get(5)?,
            })
        })?;
        rows.map(|row| row.map_err(StoreError::from)).collect()
    }

    /// Removes rule `id`; whether it existed.
    pub fn remove(
        transaction: &Transaction<'_>,
        id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let removed = transaction
            .prepare_cached("DELETE FROM approval_rules WHERE rule_id = ?1")?
            .execute(params![id])?
            == 1;
        if removed {
            AuditEntry::append(
                transaction,
                &NewAuditEntry {
                    ts_ms: ms(now_ms),
                    actor: actor.to_owned(),
                    action: "approval_rule_removed".to_owned(),
                    subject: id.to_owned(),
                    detail: serde_json::json!({}),
                },
            )?;
        }
        Ok(removed)
    }

    /// Adds (or replaces) the rule for its agent, action and summary.
    pub fn upsert(
        transaction: &Transaction<'_>,
        rule: &ApprovalRule,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        transaction
            .prepare_cached(
                "INSERT INTO approval_rules
                     (rule_id, agent, action, summary, allow, created_by, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (agent, action, summary) DO UPDATE
                     SET allow = excluded.allow, created_by = excluded.created_by,
                         created_at_ms = excluded.created_at_ms",
            )?
            .execute(params![
                rule.id,
                rule.agent,
                rule.action,
                rule.summary,
                i64::from(rule.allow),
                rule.created_by,
                ms(now_ms),
            ])?;
        AuditEntry::append(
            transaction,
            &NewAuditEntry {
                ts_ms: ms(now_ms),
                actor: rule.created_by.clone(),
                action: "approval_rule_set".to_owned(),
                subject: rule.id.clone(),
                detail: serde_json::json!({
                    "agent": rule.agent,
                    "action": rule.action,
                    "summary": approval::truncate(&rule.summary, 512),
                    "allow": rule.allow,
                }),
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    fn new(id: &str, deadline_ms: u64) -> NewApproval {
        NewApproval {
            id: id.to_owned(),
            agent: "@fabric@devbox#main".into(),
            action: "work_order.cancel".into(),
            summary: "cancel wo_1".into(),
            invocation: None,
            gate: Some(serde_json::json!({"work_order_cancel": {"id": "wo_1"}})),
            created_ms: 1_000,
            deadline_ms,
        }
    }

    fn answer(id: &str, approve: bool) -> ApprovalDecision {
        ApprovalDecision {
            id: id.to_owned(),
            approve,
            actor: "operator".into(),
            note: String::new(),
            always: false,
        }
    }

    #[tokio::test]
    async fn one_decision_is_committed_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
        let id = approval::id_from(1);
        let inserted = {
            let new = new(&id, 5_000);
            store
                .write(move |tx| ApprovalRow::insert(tx, &new))
                .await
                .unwrap()
        };
        assert_eq!(inserted.body.state, ApprovalState::Pending);
        let (first, second) = {
            let id = id.clone();
            store
                .write(move |tx| {
                    let first = ApprovalRow::decide(tx, &answer(&id, true), "operator@a", 2_000)?;
                    let second = ApprovalRow::decide(tx, &answer(&id, false), "operator@b", 2_001)?;
                    Ok((first, second))
                })
                .await
                .unwrap()
        };
        assert_eq!(first.unwrap().body.state, ApprovalState::Approved);
        assert_eq!(second.unwrap_err().code(), "ALREADY_DECIDED");
        let unapplied = store.read(ApprovalRow::unapplied).unwrap();
        assert_eq!(unapplied.len(), 1);
        let id_claimed = approval::id_from(1);
        let claims = store
            .write(move |tx| {
                Ok((
                    ApprovalRow::claim(tx, &id_claimed, 3_000)?,
                    ApprovalRow::claim(tx, &id_claimed, 3_001)?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(claims, (true, false), "a gated action is claimed once");
        assert!(store.read(ApprovalRow::unapplied).unwrap().is_empty());
        let audit = store
            .read(|connection| AuditEntry::list_for_subject(connection, &approval::id_from(1), 10))
            .unwrap();
        let actions: Vec<&str> = audit.iter().map(|entry| entry.action.as_str()).collect();
        assert_eq!(actions, ["approval_requested", "approval_approved"]);
    }

    #[tokio::test]
    async fn overdue_approvals_expire_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path().join("scout.db"), StoreOptions::default()).unwrap();
        for n in 1..=2 {
            let new = new(&approval::id_from(n), 1_000 + n * 1_000);
            store
                .write(move |tx| ApprovalRow::insert(tx, &new))
                .await
                .unwrap();
        }
        assert_eq!(store.read(ApprovalRow::next_deadline).unwrap(), Some(2_000));
        let expired = store
            .write(|tx| ApprovalRow::expire_due(tx, 2_500))
            .await
            .unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].body.state, ApprovalState::Expired);
        let late = store
            .write(|tx| ApprovalRow::decide(tx, &answer(&approval::id_from(2), true), "op", 3_000))
            .await
            .unwrap();
        assert_eq!(late.unwrap_err().code(), "APPROVAL_EXPIRED");
        let row = store
            .read(|connection| ApprovalRow::get(connection, &approval::id_from(2)))
            .unwrap()
            .unwrap();
        assert_eq!(row.body.state, ApprovalState::Expired);
        assert_eq!(store.read(ApprovalRow::next_deadline).unwrap(), None);
    }
}
