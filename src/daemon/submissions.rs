//! What a caller asks the router to run, and how it becomes a submission
//! the routing core takes: the checks (size, caller-supplied ids), where
//! the mention goes, the mention chain (a loop is refused before anything
//! is stored), and the ids and deadline minted here.

use scout_mesh::lifecycle::{DeliveryPolicy, InvocationAction};
use scout_mesh::names::AgentName;
use scout_mesh::routing::{Invocation, Submission};
use scout_mesh::wire::{INVOKE_BODY_BYTES_MAX, NodeId};

use crate::api::Submitted;
use crate::daemon::mesh::{Mesh, directory};
use crate::env::Env;

/// Default time an invocation may take when the caller gives no deadline.
pub const DEFAULT_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// What the caller asks to run.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// A mention: `@fabric`, `@fabric@devbox`, `@fabric#main`, a full name.
    pub target: String,
    /// The prompt.
    pub body: String,
    /// What is asked.
    pub action: InvocationAction,
    /// How hard to try.
    pub policy: DeliveryPolicy,
    /// Unix ms after which the work is no longer wanted.
    pub deadline_ms: Option<u64>,
    /// The conversation to add it to (a new one when absent).
    pub conversation_id: Option<String>,
    /// Who asked (for the conversation).
    pub author: String,
    /// The agent instance that sends it, when an agent does (through its
    /// credential); absent for a person.
    pub from: Option<String>,
    /// The causal chain of the invocation the sender is running, which
    /// this one extends (empty for a person or an agent between turns).
    pub parent_chain: Vec<String>,
    /// The sender of the invocation the agent is running, when this one is
    /// in the same conversation: mentioning it back is a reply, which goes
    /// back down the chain instead of closing a loop.
    pub reply_to: Option<String>,
}

/// Why routing refused a request.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The target is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] scout_mesh::names::NameError),
    /// Nothing matches the target.
    #[error(transparent)]
    NotFound(#[from] scout_mesh::resolve::ResolveError),
    /// The body is too large.
    #[error("the message is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such invocation.
    #[error("no invocation `{0}`")]
    UnknownInvocation(String),
    /// An id given by the caller (a conversation to continue) is not one
    /// this broker could have made.
    #[error("{0}")]
    InvalidId(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The broker is stopping.
    #[error("the broker is stopping")]
    Stopping,
    /// The mention would loop or chain too deep (`MENTION_LOOP`).
    #[error(transparent)]
    MentionLoop(#[from] scout_mesh::mention::MentionLoop),
}

impl RouteError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::InvalidName(err) => err.code(),
            RouteError::NotFound(err) => err.code(),
            RouteError::TooLarge { .. } => "BODY_TOO_LARGE",
            RouteError::UnknownInvocation(_) => "INVOCATION_NOT_FOUND",
            RouteError::InvalidId(_) => "INVALID_ID",
            RouteError::Store(err) => err.code(),
            RouteError::Stopping => "STOPPING",
            RouteError::MentionLoop(err) => err.code(),
        }
    }
}

/// Characters an id given by a caller may have at most: the ids brokers
/// mint are UUIDs (36 characters); room for other tools' ids, not for text.
pub const CALLER_ID_CHARS_MAX: usize = 128;

/// Checks an id a caller supplies (`conversation_id`): 1 to
/// [`CALLER_ID_CHARS_MAX`] of `A-Za-z0-9._:-`, not starting with `.`, so it
/// can never carry a path, a control character or a terminal escape into
/// the store, the logs or another broker.
pub fn check_caller_id(field: &str, id: &str) -> Result<(), RouteError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty()
        || id.len() > CALLER_ID_CHARS_MAX
        || id.starts_with('.')
        || !id.chars().all(allowed)
    {
        return Err(RouteError::InvalidId(format!(
            "`{field}` must be 1 to {CALLER_ID_CHARS_MAX} characters of A-Z, a-z, 0-9, `.`, `_`, `:` and `-`, not starting with `.`"
        )));
    }
    Ok(())
}

/// Checks `request`, resolves it on `mesh` and mints what the origin
/// `node_id` adds: the invocation as the core takes it, and the answer
/// the caller gets once it is committed.
pub fn prepare(
    mesh: &Mesh,
    env: &Env,
    node_id: &NodeId,
    invocation_id: String,
    request: SubmitRequest,
) -> Result<(Submission, Submitted), RouteError> {
    if request.body.len() > INVOKE_BODY_BYTES_MAX {
        return Err(RouteError::TooLarge {
            len: request.body.len(),
            max: INVOKE_BODY_BYTES_MAX,
        });
    }
    if let Some(conversation_id) = &request.conversation_id {
        check_caller_id("conversation_id", conversation_id)?;
    }
    let query = AgentName::parse_lenient(&request.target)?;
    let choice = directory::choose(mesh, node_id, &query, None)?;
    // Refused here, before anything is stored, so a loop leaves no
    // invocation behind; the owner checks the chain again.
    let chain = if request.reply_to.as_deref() == Some(choice.instance.as_str()) {
        scout_mesh::mention::reply(&request.parent_chain, &choice.instance)
    } else {
        scout_mesh::mention::extend(
            &request.parent_chain,
            request.from.as_deref(),
            &choice.instance,
            scout_mesh::mention::MENTION_DEPTH_MAX,
        )?
    };
    let now = env.now_unix_ms();
    let invocation = Invocation {
        invocation_id,
        action: request.action,
        body: request.body,
        conversation_id: Some(request.conversation_id.unwrap_or_else(|| env.new_id())),
        origin: node_id.clone(),
        target: query.to_string(),
        deadline_unix_ms: Some(
            request
                .deadline_ms
                .unwrap_or(now.saturating_add(DEFAULT_DEADLINE_MS)),
        ),
        policy: request.policy,
        created_unix_ms: now,
        from: request.from,
        chain,
    };
    let submitted = Submitted {
        invocation_id: invocation.invocation_id.clone(),
        delivery_id: env.new_id(),
        instance: choice.instance.clone(),
        reason: choice.reason.clone(),
        owner: choice.owner.to_string(),
        conversation_id: invocation.conversation_id.clone().unwrap_or_default(),
    };
    let submission = Submission {
        invocation,
        delivery_id: submitted.delivery_id.clone(),
        choice,
        logical: !query.is_fully_qualified(),
        author: request.author,
    };
    Ok((submission, submitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_plain_tokens() {
        for good in [
            "0192a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
            "conv_1",
            "a:b.c-d",
            "x",
        ] {
            assert!(check_caller_id("conversation_id", good).is_ok(), "{good}");
        }
        let long = "a".repeat(CALLER_ID_CHARS_MAX + 1);
        for bad in [
            "",
            " ",
            "../..",
            ".hidden",
            "a/b",
            "a\u{1b}[2J",
            "a\0b",
            "tab\t",
            long.as_str(),
        ] {
            let err = check_caller_id("conversation_id", bad).unwrap_err();
            assert_eq!(err.code(), "INVALID_ID", "{bad:?}");
        }
    }
}
