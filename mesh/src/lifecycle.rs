//! The vocabulary of work: flight, delivery and endpoint states, invocation
//! actions, delivery policies and failure reasons, with the legal transitions
//! of the flight and delivery state machines.
//!
//! Every state set here is printed and parsed as the lower-case snake_case
//! word of the design (`peer_acked`, `best_effort`), which is also what the
//! store keeps in its columns and what the API returns. An illegal transition
//! is a value (`IllegalTransition`), never a silent write: the store checks
//! `can_transition_to` inside the same transaction that writes the new state.

use std::fmt;
use std::str::FromStr;

/// A word that is not one of a state set's members.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{word}` (expected one of: {expected})")]
pub struct UnknownWord {
    /// Which set was being parsed (`flight state`, `delivery policy`, ...).
    pub kind: &'static str,
    /// The word that did not parse.
    pub word: String,
    /// The members of the set, comma separated.
    pub expected: String,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {kind} transition from `{from}` to `{to}`")]
pub struct IllegalTransition {
    /// `flight` or `delivery`.
    pub kind: &'static str,
    /// The current state.
    pub from: &'static str,
    /// The state that was asked for.
    pub to: &'static str,
}

/// Declares a fieldless enum whose members print and parse as fixed words.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word this member prints as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(word: &str) -> Result<Self, UnknownWord> {
                match word {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownWord {
                        kind: $kind,
                        word: word.to_owned(),
                        expected: [$($word,)+].join(", "),
                    }),
                }
            }
        }
    };
}

word_enum!(
    /// The lifecycle of one piece of work on its owner.
    FlightState, "flight state", {
        /// Accepted, waiting for its turn.
        Queued => "queued",
        /// The endpoint is asleep and its harness is being started.
        Waking => "waking",
        /// The agent is working on it.
        Running => "running",
        /// The agent asked a question and waits for an answer.
        Waiting => "waiting",
        /// Finished with a result.
        Completed => "completed",
        /// Ended without a result; a failure reason says why.
        Failed => "failed",
        /// Stopped on request.
        Cancelled => "cancelled",
    }
);

impl FlightState {
    /// Whether no further transition can leave this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            FlightState::Completed | FlightState::Failed | FlightState::Cancelled
        )
    }

    /// Whether the flight may move from `self` to `to`.
    pub fn can_transition_to(self, to: FlightState) -> bool {
        use FlightState::*;
        match self {
            Queued => matches!(to, Waking | Running | Failed | Cancelled),
            // A wake interrupted by a restart goes back to the queue: the
            // invocation never reached the agent, so running it later is safe.
            Waking => matches!(to, Queued | Running | Failed | Cancelled),
            Running => matches!(to, Waiting | Completed | Failed | Cancelled),
            Waiting => matches!(to, Running | Completed | Failed | Cancelled),
            Completed | Failed | Cancelled => false,
        }
    }

    /// `Ok(to)` when the transition is legal, the typed error otherwise.
    pub fn transition(self, to: FlightState) -> Result<FlightState, IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                kind: "flight",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

word_enum!(
    /// How a message or invocation was routed, as seen by its origin.
    DeliveryState, "delivery state", {
        /// Committed at the origin, not yet acknowledged by the owner.
        Accepted => "accepted",
        /// The owner committed it and said so.
        PeerAcked => "peer_acked",
        /// The owner reports the flight running.
        Running => "running",
        /// Finished at the owner with a result.
        Completed => "completed",
        /// The owner cannot be reached now; it will be retried.
        Deferred => "deferred",
        /// Ended without a result; a failure reason says why.
        Failed => "failed",
        /// Stopped on request.
        Cancelled => "cancelled",
    }
);

impl DeliveryState {
    /// Whether no further transition can leave this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeliveryState::Completed | DeliveryState::Failed | DeliveryState::Cancelled
        )
    }

    /// Whether the delivery may move from `self` to `to`.
    ///
    /// Updates from the owner can overtake each other on the network, so a
    /// delivery may skip forward (`accepted` straight to `completed`) but never
    /// moves backwards or out of a terminal state.
    pub fn can_transition_to(self, to: DeliveryState) -> bool {
        use DeliveryState::*;
        match self {
            Accepted => matches!(
                to,
                PeerAcked | Running | Completed | Deferred | Failed | Cancelled
            ),
            Deferred => matches!(
                to,
                Accepted | PeerAcked | Running | Completed | Failed | Cancelled
            ),
            PeerAcked => matches!(to, Running | Completed | Failed | Cancelled),
            Running => matches!(to, Completed | Failed | Cancelled),
            Completed | Failed | Cancelled => false,
        }
    }

    /// `Ok(to)` when the transition is legal, the typed error otherwise.
    pub fn transition(self, to: DeliveryState) -> Result<DeliveryState, IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                kind: "delivery",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

word_enum!(
    /// What a requested piece of work asks the agent to do.
    InvocationAction, "invocation action", {
        /// Ask for an opinion or an answer; no side effects expected.
        Consult => "consult",
        /// Do the work (edit, run, commit).
        Execute => "execute",
        /// Summarise a conversation or a piece of work.
        Summarize => "summarize",
        /// Report the agent's state.
        Status => "status",
        /// Start the agent's harness without giving it work.
        Wake => "wake",
    }
);

word_enum!(
    /// How hard the mesh tries to deliver an invocation.
    DeliveryPolicy, "delivery policy", {
        /// One try; a failure is reported, not retried. Neither broker
        /// waits for its disk before passing it on or acknowledging it.
        BestEffort => "best_effort",
        /// Retried until the owner acknowledges it or the deadline passes.
        MustAck => "must_ack",
        /// Committed on both sides before every acknowledgement; survives
        /// crashes of either broker.
        Durable => "durable",
        /// Like `best_effort`, and an origin that restarts ends it as lost
        /// instead of resuming it, by design.
        Ephemeral => "ephemeral",
    }
);

impl DeliveryPolicy {
    /// Whether each broker commits the invocation before it passes it on
    /// or acknowledges it (`durable`, `must_ack`). The others are recorded
    /// too, but nobody waits for the disk, so a crash may lose them.
    pub fn waits_for_disk(self) -> bool {
        matches!(self, DeliveryPolicy::Durable | DeliveryPolicy::MustAck)
    }
}

word_enum!(
    /// How an agent instance can be reached right now.
    EndpointState, "endpoint state", {
        /// Known, never started.
        Registered => "registered",
        /// Its harness is being started.
        Waking => "waking",
        /// Running and ready for work.
        Idle => "idle",
        /// Running and busy with a flight.
        Working => "working",
        /// Its broker cannot be reached.
        Unreachable => "unreachable",
        /// Its harness failed to start or crashed.
        Failed => "failed",
        /// Stopped on purpose.
        Stopped => "stopped",
    }
);

word_enum!(
    /// Why a delivery or flight ended without a result.
    FailureReason, "failure reason", {
        /// The owner's broker could not be reached before the deadline.
        PeerUnreachable => "peer_unreachable",
        /// The owner's broker refused the invocation.
        PeerRejected => "peer_rejected",
        /// The target agent is not running and could not be woken.
        AgentOffline => "agent_offline",
        /// The deadline passed.
        Timeout => "timeout",
        /// The harness failed, crashed, or was interrupted by a restart.
        HarnessError => "harness_error",
        /// The origin could not route it (no such agent, bad request).
        Dispatch => "dispatch",
        /// Stopped on request.
        Cancelled => "cancelled",
    }
);

word_enum!(
    /// The agent CLI an endpoint runs. Durable work semantics are the same
    /// for all of them; only startup, readiness and completion detection differ.
    Harness, "harness", {
        /// Claude Code (`claude`).
        Claude => "claude",
        /// OpenAI Codex CLI (`codex`).
        Codex => "codex",
        /// Gemini CLI (`gemini`).
        Gemini => "gemini",
        /// Any other program, with optional ready and prompt patterns.
        Command => "command",
        /// Any agent that speaks the Agent Client Protocol (JSON-RPC over
        /// its standard input and output), such as `gemini --acp`.
        Acp => "acp",
    }
);

impl Harness {
    /// The program a harness runs when no command is configured; `None` for
    /// `command` and `acp`, which always need one.
    pub fn default_program(self) -> Option<&'static str> {
        match self {
            Harness::Claude => Some("claude"),
            Harness::Codex => Some("codex"),
            Harness::Gemini => Some("gemini"),
            Harness::Command | Harness::Acp => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for state in FlightState::ALL {
            assert_eq!(state.as_str().parse::<FlightState>(), Ok(*state));
        }
        for state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(*state));
        }
        for policy in DeliveryPolicy::ALL {
            assert_eq!(policy.as_str().parse::<DeliveryPolicy>(), Ok(*policy));
        }
        let err = "sleeping".parse::<FlightState>().unwrap_err();
        assert!(err.to_string().contains("queued, waking"), "{err}");
    }

    #[test]
    fn terminal_states_have_no_exit() {
        for from in FlightState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in FlightState::ALL {
                assert!(!from.can_transition_to(*to), "{from} -> {to}");
            }
        }
        for from in DeliveryState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in DeliveryState::ALL {
                assert!(!from.can_transition_to(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn flight_never_returns_to_queued_after_running() {
        use FlightState::*;
        assert!(Queued.transition(Running).is_ok());
        assert!(Running.transition(Waiting).is_ok());
        assert!(Waiting.transition(Running).is_ok());
        let err = Running.transition(Queued).unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal flight transition from `running` to `queued`"
        );
        assert!(Completed.transition(Running).is_err());
    }

    #[test]
    fn delivery_may_skip_forward_but_not_back() {
        use DeliveryState::*;
        assert!(Accepted.transition(Completed).is_ok());
        assert!(Deferred.transition(PeerAcked).is_ok());
        assert!(PeerAcked.transition(Accepted).is_err());
        assert!(Running.transition(Deferred).is_err());
    }
}
