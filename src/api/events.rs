//! Routing events: what `/v1/events/stream` and `/v1/invocations/{id}/stream`
//! send, one SSE event per [`RoutingEvent`], named by its [`EventKind`].
//!
//! The JSON is the same object it always was: `kind` and `state` are the
//! words of the design, `failure_reason` a failure reason word. Only the
//! Rust side is typed, and which state set `state` belongs to follows from
//! `kind` (`delivery` events carry delivery states, `flight` events flight
//! states), which is why deserializing goes through [`RoutingEventJson`].

use scout_mesh::lifecycle::{DeliveryState, FailureReason, FlightState, UnknownWord};
use scout_mesh::output::FlightOutput;
use scout_mesh::usage::{FailureCode, Usage};
use serde::{Deserialize, Serialize};

/// Which side of routing an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The origin's delivery moved (or ended).
    Delivery,
    /// The owner's flight moved (or ended).
    Flight,
    /// The owner's flight produced output.
    Output,
}

impl EventKind {
    /// The word this kind prints as, also the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivery => "delivery",
            EventKind::Flight => "flight",
            EventKind::Output => "output",
        }
    }
}

/// The new state an event reports: a delivery state for `delivery`
/// events, a flight state for `flight` events. Serialized as its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    /// A delivery state.
    Delivery(DeliveryState),
    /// A flight state.
    Flight(FlightState),
}

impl EventState {
    /// The state's word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Delivery(state) => state.as_str(),
            EventState::Flight(state) => state.as_str(),
        }
    }

    /// Whether the state ends its delivery or flight.
    pub fn is_terminal(self) -> bool {
        match self {
            EventState::Delivery(state) => state.is_terminal(),
            EventState::Flight(state) => state.is_terminal(),
        }
    }

    /// The delivery state, when this is one.
    pub fn delivery(self) -> Option<DeliveryState> {
        match self {
            EventState::Delivery(state) => Some(state),
            EventState::Flight(_) => None,
        }
    }

    /// Parses `word` in the state set of `kind`; `output` events carry no
    /// state, so any word is refused for them.
    pub fn parse(kind: EventKind, word: &str) -> Result<EventState, UnknownWord> {
        match kind {
            EventKind::Delivery => word.parse().map(EventState::Delivery),
            EventKind::Flight => word.parse().map(EventState::Flight),
            EventKind::Output => Err(UnknownWord {
                kind: "output event state",
                word: word.to_owned(),
                expected: "no state".to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for EventState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Something that happened to an invocation, for streams and `/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoutingEventJson")]
pub struct RoutingEvent {
    /// The invocation.
    pub invocation_id: String,
    /// Which side it comes from.
    pub kind: EventKind,
    /// The new state, when it changed.
    pub state: Option<EventState>,
    /// Output text, for `output` events and final results.
    pub output: Option<FlightOutput>,
    /// Why it failed, when it did.
    pub failure_reason: Option<FailureReason>,
    /// For a person.
    pub detail: Option<String>,
    /// Unix ms.
    pub timestamp_ms: u64,
    /// The failed turn's stable code (`AUTH_REQUIRED`), on a final event
    /// when the owner reported one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    /// What the flight used, on a final event when its agent reported it;
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A [`RoutingEvent`] as read from JSON, before its state word is parsed in
/// the set its kind names.
#[derive(Debug, Deserialize)]
pub struct RoutingEventJson {
    invocation_id: String,
    kind: EventKind,
    state: Option<String>,
    output: Option<FlightOutput>,
    failure_reason: Option<FailureReason>,
    detail: Option<String>,
    timestamp_ms: u64,
    #[serde(default)]
    failure_code: Option<FailureCode>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl TryFrom<RoutingEventJson> for RoutingEvent {
    type Error = UnknownWord;

    fn try_from(json: RoutingEventJson) -> Result<RoutingEvent, UnknownWord> {
        let state = match json.state {
            Some(word) => Some(EventState::parse(json.kind, &word)?),
            None => None,
        };
        Ok(RoutingEvent {
            invocation_id: json.invocation_id,
            kind: json.kind,
            state,
            output: json.output,
            failure_reason: json.failure_reason,
            detail: json.detail,
            timestamp_ms: json.timestamp_ms,
            failure_code: json.failure_code,
            usage: json.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of an event is the object it was before the types: the
    /// same fields in the same order, words for kind, state and reason.
    #[test]
    fn event_json_is_unchanged_and_round_trips() {
        let event = RoutingEvent {
            invocation_id: "inv-1".into(),
            kind: EventKind::Delivery,
            state: Some(EventState::Delivery(DeliveryState::Failed)),
            output: Some(FlightOutput::from_text("partial")),
            failure_reason: Some(FailureReason::PeerUnreachable),
            detail: Some("gone".into()),
            timestamp_ms: 7,
            failure_code: None,
            usage: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"invocation_id":"inv-1","kind":"delivery","state":"failed","output":"partial","failure_reason":"peer_unreachable","detail":"gone","timestamp_ms":7}"#
        );
        assert_eq!(serde_json::from_str::<RoutingEvent>(&json).unwrap(), event);

        let output = r#"{"invocation_id":"i","kind":"output","state":null,"output":"x","failure_reason":null,"detail":null,"timestamp_ms":1}"#;
        let event: RoutingEvent = serde_json::from_str(output).unwrap();
        assert_eq!(event.kind, EventKind::Output);
        assert_eq!(serde_json::to_string(&event).unwrap(), output);
    }

    /// A final event with a code and usage adds them at the end; events
    /// without them keep the JSON above.
    #[test]
    fn failure_codes_and_usage_are_added_only_when_known() {
        let event = RoutingEvent {
            invocation_id: "i".into(),
            kind: EventKind::Delivery,
            state: Some(EventState::Delivery(DeliveryState::Failed)),
            output: None,
            failure_reason: Some(FailureReason::HarnessError),
            detail: Some("Invalid API key".into()),
            timestamp_ms: 1,
            failure_code: Some(FailureCode::parse("AUTH_REQUIRED").unwrap()),
            usage: Some(Usage {
                input_tokens: 3,
                output_tokens: 2,
                cached_tokens: 1,
                cost_micro_usd: None,
            }),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.ends_with(
                r#""timestamp_ms":1,"failure_code":"AUTH_REQUIRED","usage":{"input_tokens":3,"output_tokens":2,"cached_tokens":1,"cost_micro_usd":null}}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RoutingEvent>(&json).unwrap(), event);
        let bad = json.replace("AUTH_REQUIRED", "auth required");
        assert!(serde_json::from_str::<RoutingEvent>(&bad).is_err());
    }

    #[test]
    fn state_words_are_read_in_the_set_of_their_kind() {
        let flight = r#"{"invocation_id":"i","kind":"flight","state":"waking","output":null,"failure_reason":null,"detail":null,"timestamp_ms":1}"#;
        let event: RoutingEvent = serde_json::from_str(flight).unwrap();
        assert_eq!(event.state, Some(EventState::Flight(FlightState::Waking)));
        // `waking` is a flight state, not a delivery state.
        let delivery = flight.replace("\"flight\"", "\"delivery\"");
        assert!(serde_json::from_str::<RoutingEvent>(&delivery).is_err());
    }
}
