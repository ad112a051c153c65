//! `/v1/invocations…`, `/v1/flights` and `/v1/conversations…`: submitting
//! work, its status, and the conversations it is recorded in.

use scout_mesh::lifecycle::{
    DeliveryPolicy, DeliveryState, FailureReason, FlightState, InvocationAction,
};
use scout_mesh::output::FlightOutput;
use scout_mesh::usage::{FailureCode, Usage};
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/invocations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// `@fabric`, `@fabric@devbox`, `@fabric#main`, or a full instance name.
    pub target: String,
    /// The prompt.
    pub message: String,
    /// `consult`, `execute` (default), `summarize`, `status`, `wake`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<InvocationAction>,
    /// `durable` (default), `must_ack`, `best_effort`, `ephemeral`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DeliveryPolicy>,
    /// How long the work may take, from now, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// An existing conversation to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// The answer to `POST /v1/invocations`: what was committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The invocation id, the handle for everything after.
    pub invocation_id: String,
    /// The delivery at this broker.
    pub delivery_id: String,
    /// The instance chosen.
    pub instance: String,
    /// Why that instance.
    pub reason: String,
    /// The owner's node id.
    pub owner: String,
    /// The conversation.
    pub conversation_id: String,
}

/// The answer to `POST /v1/invocations/{id}/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cancelled {
    /// The invocation cancelled.
    pub cancelled: String,
}

/// `GET /v1/invocations/{id}`: everything one broker knows about an
/// invocation; also the first (`status`) event of its stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationStatus {
    /// The request.
    pub invocation: InvocationView,
    /// How it was routed from here, when it originated here.
    pub delivery: Option<DeliveryView>,
    /// Its flight here, when this broker owns it.
    pub flight: Option<FlightView>,
    /// The approval its agent waits for, anywhere in the mesh, while it
    /// waits (a flight here then shows `waiting`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// An invocation as shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationView {
    /// Id.
    pub invocation_id: String,
    /// What is asked.
    pub action: InvocationAction,
    /// The prompt.
    pub body: String,
    /// The mention.
    pub target: String,
    /// The origin's node id.
    pub origin: String,
    /// Conversation.
    pub conversation_id: Option<String>,
    /// How hard the mesh tries.
    pub policy: DeliveryPolicy,
    /// Deadline, unix ms.
    pub deadline_ms: Option<i64>,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// The agent instance that sent it; absent when a person did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The instances whose mentions led to it, oldest first; absent when
    /// none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

/// A delivery as shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryView {
    /// Where the delivery is.
    pub state: DeliveryState,
    /// The instance it went to.
    pub target: String,
    /// The owner's node id.
    pub owner: Option<String>,
    /// Why that instance was chosen.
    pub resolve_reason: Option<String>,
    /// Why it failed, when it did.
    pub failure_reason: Option<FailureReason>,
    /// For a person.
    pub failure_detail: Option<String>,
    /// Attempts so far, each with its outcome.
    pub attempts: Vec<AttemptView>,
    /// The answer, once completed (from the conversation).
    pub result: Option<String>,
    /// The failed turn's stable code (`AUTH_REQUIRED`), as the owner
    /// reported it; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    /// What the flight used, as the owner reported it with the result;
    /// absent when its agent reported nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    /// Number, from 1.
    pub attempt: i64,
    /// Started, unix ms.
    pub started_at_ms: i64,
    /// `succeeded`, `failed`, or none while running.
    pub outcome: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<FailureReason>,
    /// For a person.
    pub failure_detail: Option<String>,
}

/// A flight as shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlightView {
    /// Where the flight is.
    pub state: FlightState,
    /// The instance.
    pub instance: Option<String>,
    /// Why that instance.
    pub resolve_reason: Option<String>,
    /// Output so far (its tail, see [`FlightOutput`]).
    pub output: FlightOutput,
    /// The result, once finished.
    pub result: Option<FlightOutput>,
    /// Why it failed, when it did.
    pub failure_reason: Option<FailureReason>,
    /// For a person.
    pub failure_detail: Option<String>,
    /// The failed turn's stable code (`AUTH_REQUIRED`); absent when there
    /// is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    /// Tokens and cost of the turn, when its agent reported them; absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One row of `GET /v1/flights`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlightRow {
    /// The invocation.
    pub invocation_id: String,
    /// The mention.
    pub target: String,
    /// The origin node id.
    pub origin: String,
    /// The delivery state here (when it originated here).
    pub delivery: Option<DeliveryState>,
    /// The instance it went to.
    pub instance: Option<String>,
    /// The flight state here (when this broker owns it).
    pub flight: Option<FlightState>,
    /// Failure reason, when it failed.
    pub failure_reason: Option<FailureReason>,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// The failed turn's stable code, when known; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    /// What the flight used, when its agent reported it; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The approval its agent waits for, while it waits (the flight then
    /// shows `waiting`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A conversation with its messages (`GET /v1/conversations…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationView {
    /// Id.
    pub conversation_id: String,
    /// Title.
    pub title: Option<String>,
    /// Last change, unix ms.
    pub updated_at_ms: i64,
    /// Messages, oldest first (empty in lists).
    pub messages: Vec<MessageView>,
}

/// A message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// Order in the conversation.
    pub seq: i64,
    /// Who wrote it.
    pub author: String,
    /// What.
    pub body: String,
    /// The invocation it belongs to.
    pub invocation_id: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status body keeps the JSON the README documents: the same keys,
    /// in the same order, with words for states, actions and reasons.
    #[test]
    fn status_json_keeps_its_shape() {
        let status = InvocationStatus {
            invocation: InvocationView {
                invocation_id: "i".into(),
                action: InvocationAction::Execute,
                body: "b".into(),
                target: "@fabric".into(),
                origin: "n".into(),
                conversation_id: None,
                policy: DeliveryPolicy::Durable,
                deadline_ms: None,
                created_at_ms: 1,
                from: None,
                chain: Vec::new(),
            },
            delivery: Some(DeliveryView {
                state: DeliveryState::PeerAcked,
                target: "@fabric@devbox#main".into(),
                owner: None,
                resolve_reason: None,
                failure_reason: Some(FailureReason::Timeout),
                failure_detail: None,
                attempts: vec![AttemptView {
                    attempt: 1,
                    started_at_ms: 2,
                    outcome: None,
                    failure_reason: None,
                    failure_detail: None,
                }],
                result: None,
                failure_code: None,
                usage: None,
            }),
            flight: Some(FlightView {
                state: FlightState::Running,
                instance: None,
                resolve_reason: None,
                output: FlightOutput::from_text("so far"),
                result: None,
                failure_reason: None,
                failure_detail: None,
                failure_code: None,
                usage: None,
            }),
            waiting_for: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"invocation":{"invocation_id":"i","action":"execute","body":"b","#,
                r#""target":"@fabric","origin":"n","conversation_id":null,"policy":"durable","#,
                r#""deadline_ms":null,"created_at_ms":1},"delivery":{"state":"peer_acked","#,
                r#""target":"@fabric@devbox#main","owner":null,"resolve_reason":null,"#,
                r#""failure_reason":"timeout","failure_detail":null,"attempts":[{"attempt":1,"#,
                r#""started_at_ms":2,"outcome":null,"failure_reason":null,"failure_detail":null}],"#,
                r#""result":null},"flight":{"state":"running","instance":null,"#,
                r#""resolve_reason":null,"output":"so far","result":null,"failure_reason":null,"#,
                r#""failure_detail":null}}"#
            )
        );
        let back: InvocationStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    /// A submit body sends only the fields given, as the CLI always did,
    /// and the handler refuses fields it does not know.
    #[test]
    fn submit_body_omits_absent_fields_and_refuses_unknown_ones() {
        let body = SubmitBody {
            target: "@fabric".into(),
            message: "hi".into(),
            action: None,
            policy: Some(DeliveryPolicy::MustAck),
            timeout_ms: None,
            conversation_id: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"target":"@fabric","message":"hi","policy":"must_ack"}"#
        );
        let unknown = r#"{"target":"@fabric","message":"hi","priority":1}"#;
        assert!(serde_json::from_str::<SubmitBody>(unknown).is_err());
    }
}
