//! Approvals: a person's yes or no on something an agent asked for.
//!
//! An approval is a registry record ([`ApprovalBody`]) written only by its
//! owner, the broker running the agent that asked; every member sees it
//! through sync and may send the owner an answer ([`ApprovalDecision`]).
//! This module holds the rules every broker applies the same way:
//!
//! - **One decision.** Only a pending approval changes, once: the owner
//!   commits the first answer it receives, and every later answer gets
//!   `ALREADY_DECIDED` naming who decided ([`decide`]).
//! - **The deadline denies.** An answer arriving at or after the deadline
//!   gets `APPROVAL_EXPIRED`, and the owner marks the approval `expired`
//!   ([`expire`]), which counts as a refusal.
//! - **Bounded fields.** Every text field has a limit, checked when a
//!   record or frame is read ([`check_body`], [`check_decision`]).
//!
//! Time comes in as an argument: nothing here reads a clock.

use crate::wire::{ApprovalBody, ApprovalDecision, ApprovalState};

/// Prefix of an approval id, so ids are recognisable in logs and commands.
pub const ID_PREFIX: &str = "apr_";

/// Hex digits after the prefix: 64 random bits, ample for ids that only
/// need to be unique among the approvals of one mesh.
pub const ID_HEX_LEN: usize = 16;

/// Longest action word (`work_order.cancel`, `tool.Bash`): a dotted name,
/// never free text.
pub const ACTION_BYTES_MAX: usize = 96;

/// Longest summary: enough for a command line or a question a person reads
/// in a notification, small enough that a mesh of pending approvals stays
/// a few kilobytes each.
pub const SUMMARY_BYTES_MAX: usize = 2048;

/// Longest note on a decision: a sentence or two for the agent.
pub const NOTE_BYTES_MAX: usize = 1024;

/// Longest name of who decided (`operator@laptop`, `rule:…`).
pub const ACTOR_BYTES_MAX: usize = 160;

/// Longest agent or invocation name carried (the grammar's own limit is
/// lower; this only bounds what a hostile record may carry).
pub const NAME_BYTES_MAX: usize = 256;

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// Someone decided first.
    #[error("approval {id} was already {state} by {by}")]
    AlreadyDecided {
        /// The approval.
        id: String,
        /// Its decision.
        state: ApprovalState,
        /// Who decided.
        by: String,
    },
    /// The deadline passed first.
    #[error("approval {id} expired before it was answered; it counts as denied")]
    Expired {
        /// The approval.
        id: String,
    },
}

impl DecideError {
    /// The stable code this error travels as.
    pub fn code(&self) -> &'static str {
        match self {
            DecideError::AlreadyDecided { .. } => "ALREADY_DECIDED",
            DecideError::Expired { .. } => "APPROVAL_EXPIRED",
        }
    }
}

/// Whether `id` is an approval id: the prefix, then [`ID_HEX_LEN`]
/// lower-case hex digits.
pub fn is_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|hex| {
        hex.len() == ID_HEX_LEN
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// The approval id for 64 random bits.
pub fn id_from(random: u64) -> String {
    format!("{ID_PREFIX}{random:016x}")
}

/// The approval after `decision` was taken at `now_unix_ms` by `by`, or why
/// it was not. An answer to an expired or overdue approval is refused; the
/// owner then records the expiry with [`expire`].
pub fn decide(
    id: &str,
    current: &ApprovalBody,
    decision: &ApprovalDecision,
    by: &str,
    now_unix_ms: u64,
) -> Result<ApprovalBody, DecideError> {
    match current.state {
        ApprovalState::Pending if now_unix_ms >= current.deadline_unix_ms => {
            Err(DecideError::Expired { id: id.to_owned() })
        }
        ApprovalState::Pending => {
            let mut next = current.clone();
            next.state = if decision.approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            };
            next.decided_by = Some(truncate(by, ACTOR_BYTES_MAX));
            next.decided_unix_ms = Some(now_unix_ms);
            next.note = truncate(&decision.note, NOTE_BYTES_MAX);
            Ok(next)
        }
        ApprovalState::Expired => Err(DecideError::Expired { id: id.to_owned() }),
        state @ (ApprovalState::Approved | ApprovalState::Denied) => {
            Err(DecideError::AlreadyDecided {
                id: id.to_owned(),
                state,
                by: current.decided_by.clone().unwrap_or_default(),
            })
        }
    }
}

/// The approval marked expired, when it is pending and its deadline has
/// passed at `now_unix_ms`; `None` otherwise.
pub fn expire(current: &ApprovalBody, now_unix_ms: u64) -> Option<ApprovalBody> {
    if current.state != ApprovalState::Pending || now_unix_ms < current.deadline_unix_ms {
        return None;
    }
    let mut next = current.clone();
    next.state = ApprovalState::Expired;
    next.decided_by = Some("deadline".to_owned());
    next.decided_unix_ms = Some(now_unix_ms);
    Some(next)
}

/// Checks every field of a body against its limit and the states' rules
/// (a pending approval names no decider; a decided one does).
pub fn check_body(body: &ApprovalBody) -> Result<(), String> {
    check("agent", &body.agent, NAME_BYTES_MAX)?;
    check("action", &body.action, ACTION_BYTES_MAX)?;
    if body.action.is_empty()
        || !body
            .action
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "action `{}` is not a dotted word",
            truncate(&body.action, 64)
        ));
    }
    check("summary", &body.summary, SUMMARY_BYTES_MAX)?;
    if let Some(invocation) = &body.invocation {
        check("invocation", invocation, NAME_BYTES_MAX)?;
    }
    if let Some(by) = &body.decided_by {
        check("decided_by", by, ACTOR_BYTES_MAX)?;
    }
    check("note", &body.note, NOTE_BYTES_MAX)?;
    let decided = body.decided_by.is_some() && body.decided_unix_ms.is_some();
    match (body.state, decided) {
        (ApprovalState::Pending, false) => Ok(()),
        (ApprovalState::Pending, true) => Err("a pending approval names a decider".into()),
        (_, true) => Ok(()),
        (state, false) => Err(format!("a {state} approval names no decider")),
    }
}

/// Checks an answer's fields against their limits.
pub fn check_decision(decision: &ApprovalDecision) -> Result<(), String> {
    if !is_id(&decision.id) {
        return Err(format!(
            "`{}` is not an approval id",
            truncate(&decision.id, 64)
        ));
    }
    check("actor", &decision.actor, ACTOR_BYTES_MAX)?;
    check("note", &decision.note, NOTE_BYTES_MAX)
}

fn check(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes; the limit is {max}",
            value.len()
        ));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> ApprovalBody {
        ApprovalBody {
            agent: "@fabric@devbox#main".into(),
            action: "work_order.cancel".into(),
            summary: "cancel wo_1".into(),
            invocation: None,
            created_unix_ms: 1_000,
            deadline_unix_ms: 2_000,
            state: ApprovalState::Pending,
            decided_by: None,
            decided_unix_ms: None,
            note: String::new(),
        }
    }

    fn answer(approve: bool) -> ApprovalDecision {
        ApprovalDecision {
            id: id_from(7),
            approve,
            actor: "operator".into(),
            note: "ok".into(),
            always: false,
        }
    }

    #[test]
    fn ids_have_one_shape() {
        assert!(is_id(&id_from(0)));
        assert!(is_id(&id_from(u64::MAX)));
        for bad in [
            "",
            "apr_",
            "apr_0123",
            "apr_0123456789ABCDEF",
            "xpr_0123456789abcdef",
            "apr_0123456789abcdef0",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_first_answer_wins_and_later_ones_name_it() {
        let decided = decide("a", &pending(), &answer(true), "operator@laptop", 1_500).unwrap();
        assert_eq!(decided.state, ApprovalState::Approved);
        assert_eq!(decided.decided_by.as_deref(), Some("operator@laptop"));
        check_body(&decided).unwrap();
        let err = decide("a", &decided, &answer(false), "operator@desk", 1_600).unwrap_err();
        assert_eq!(err.code(), "ALREADY_DECIDED");
        assert!(err.to_string().contains("operator@laptop"), "{err}");
    }

    #[test]
    fn the_deadline_denies() {
        let err = decide("a", &pending(), &answer(true), "operator@laptop", 2_000).unwrap_err();
        assert_eq!(err.code(), "APPROVAL_EXPIRED");
        assert!(expire(&pending(), 1_999).is_none());
        let expired = expire(&pending(), 2_000).unwrap();
        assert_eq!(expired.state, ApprovalState::Expired);
        check_body(&expired).unwrap();
        assert!(expire(&expired, 3_000).is_none());
        let err = decide("a", &expired, &answer(true), "operator@laptop", 1_500).unwrap_err();
        assert_eq!(err.code(), "APPROVAL_EXPIRED");
    }

    #[test]
    fn bodies_and_answers_are_bounded() {
        let mut body = pending();
        body.summary = "x".repeat(SUMMARY_BYTES_MAX + 1);
        assert!(check_body(&body).is_err());
        let mut body = pending();
        body.action = "rm -rf".into();
        assert!(check_body(&body).is_err());
        let mut body = pending();
        body.state = ApprovalState::Approved;
        assert!(check_body(&body).is_err());
        let mut decision = answer(true);
        decision.note = "é".repeat(NOTE_BYTES_MAX);
        assert!(check_decision(&decision).is_err());
        decision.note.clear();
        decision.id = "../etc".into();
        assert!(check_decision(&decision).is_err());
        assert_eq!(truncate("héllo", 2), "h");
    }
}
