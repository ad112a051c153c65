//! Routing decisions at the origin of an invocation, as a plain state
//! machine: when to send (and send again) an invocation to its owner, when
//! to wait, to ask the owner where the flight is, to defer, to give up, and
//! whether the work may go to another instance instead.
//!
//! Exactly-once execution rests on two rules this module keeps: the origin
//! reuses one invocation id for every attempt, and work goes to another
//! instance only when no attempt ever left this broker (or the owner said
//! no to the only one that did), so two owners never both hold the same
//! invocation. The owner's side is a unique key in its store: it never
//! executes an id twice.
//!
//! "No attempt ever left" must be a fact, not a lack of memory. The origin
//! records an attempt only once its outcome is known (the invoke never
//! waits for the origin's disk), so a plan rebuilt from the store after a
//! restart cannot tell whether an invoke was on its way when the broker
//! stopped: [`DeliveryPlan::recovered`] assumes one was, and such a plan
//! never moves the work elsewhere.

use crate::lifecycle::{DeliveryPolicy, DeliveryState, FailureReason, FlightState};

/// First retry delay after an attempt that got no acknowledgement.
pub const RETRY_BACKOFF_MS_MIN: u64 = 100;

/// Longest retry delay: a returning owner is found within this.
pub const RETRY_BACKOFF_MS_MAX: u64 = 5_000;

/// How often the origin asks the owner about a flight it acknowledged but
/// has not reported finished: covers a lost update or result.
pub const QUERY_INTERVAL_MS: u64 = 2_000;

/// How long a logical mention may wait for an unreachable owner before it
/// is sent to another instance (when the policy allows).
pub const REROUTE_AFTER_MS: u64 = 3_000;

const _: () = assert!(RETRY_BACKOFF_MS_MIN < RETRY_BACKOFF_MS_MAX);

/// The delivery state a flight state means at the origin.
pub fn delivery_state_of(flight: FlightState) -> DeliveryState {
    match flight {
        FlightState::Queued | FlightState::Waking => DeliveryState::PeerAcked,
        FlightState::Running | FlightState::Waiting => DeliveryState::Running,
        FlightState::Completed => DeliveryState::Completed,
        FlightState::Failed => DeliveryState::Failed,
        FlightState::Cancelled => DeliveryState::Cancelled,
    }
}

/// What the origin should do now for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send (or send again) the invocation to the owner.
    SendInvoke,
    /// Ask the owner where the flight is.
    Query,
    /// Nothing until `next_action_at_ms`.
    Wait,
    /// The owner is not reachable; the delivery waits (state `deferred`).
    Defer,
    /// Give up with a reason.
    Fail {
        /// Why.
        reason: FailureReason,
        /// For a person.
        detail: String,
    },
}

/// The origin's plan for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPlan {
    /// The delivery state.
    pub state: DeliveryState,
    /// Invokes sent so far.
    pub attempts: u32,
    /// When to act next (unix ms).
    pub next_action_at_ms: u64,
    /// When the work stops being wanted.
    pub deadline_ms: Option<u64>,
    /// How hard to try.
    pub policy: DeliveryPolicy,
    /// Whether an invoke ever left this broker: if so, the owner may hold
    /// it, and it must never go elsewhere.
    pub ever_sent: bool,
    /// When the delivery was first deferred (for rerouting).
    pub deferred_since_ms: Option<u64>,
    /// Whether the owner refused it (nothing was committed there).
    pub rejected: bool,
    /// Whether this plan saw every invoke of the delivery leave. False for
    /// a plan rebuilt after a restart: an invoke in flight when the broker
    /// stopped left no record, so neither "never sent" nor "refused the
    /// only invoke" can be proven, and the work stays with its owner.
    pub sends_known: bool,
}

impl DeliveryPlan {
    /// A new delivery, to be sent at once.
    pub fn new(now_ms: u64, deadline_ms: Option<u64>, policy: DeliveryPolicy) -> DeliveryPlan {
        DeliveryPlan {
            state: DeliveryState::Accepted,
            attempts: 0,
            next_action_at_ms: now_ms,
            deadline_ms,
            policy,
            ever_sent: false,
            deferred_since_ms: None,
            rejected: false,
            sends_known: true,
        }
    }

    /// The plan of a delivery rebuilt from the store after a restart, in
    /// its stored `state` with `recorded_attempts` attempt rows. An invoke
    /// may have left before the restart without a row (rows are written
    /// once an attempt's outcome is known), and it may have been committed
    /// by the owner: the plan counts it as sent, so the work is never
    /// moved to another instance.
    pub fn recovered(
        now_ms: u64,
        deadline_ms: Option<u64>,
        policy: DeliveryPolicy,
        state: DeliveryState,
        recorded_attempts: u32,
    ) -> DeliveryPlan {
        DeliveryPlan {
            state,
            attempts: recorded_attempts,
            ever_sent: true,
            sends_known: false,
            ..DeliveryPlan::new(now_ms, deadline_ms, policy)
        }
    }

    /// One try only: `best_effort` and `ephemeral`.
    fn single_try(&self) -> bool {
        matches!(
            self.policy,
            DeliveryPolicy::BestEffort | DeliveryPolicy::Ephemeral
        )
    }

    /// Decides what to do at `now_ms`. `jitter` in 0..1 spreads retries.
    pub fn step(&mut self, now_ms: u64, owner_connected: bool, jitter: f64) -> Step {
        if self.state.is_terminal() {
            return Step::Wait;
        }
        if let Some(deadline) = self.deadline_ms
            && now_ms >= deadline
        {
            let detail = match self.state {
                DeliveryState::Accepted | DeliveryState::Deferred if !self.ever_sent => {
                    "the deadline passed before the owner could be reached"
                }
                DeliveryState::Accepted | DeliveryState::Deferred => {
                    "the deadline passed before the owner acknowledged the invocation"
                }
                _ => "the deadline passed before the flight finished",
            };
            return self.fail(FailureReason::Timeout, detail);
        }
        if now_ms < self.next_action_at_ms {
            return Step::Wait;
        }
        match self.state {
            DeliveryState::Accepted | DeliveryState::Deferred => {
                if !owner_connected {
                    if self.single_try() {
                        return self.fail(
                            FailureReason::PeerUnreachable,
                            "the owner is not connected and the policy allows one try",
                        );
                    }
                    self.state = DeliveryState::Deferred;
                    self.deferred_since_ms.get_or_insert(now_ms);
                    self.next_action_at_ms = now_ms + backoff_ms(self.attempts.max(1), jitter);
                    return Step::Defer;
                }
                if self.single_try() && self.attempts >= 1 {
                    return self.fail(
                        FailureReason::PeerUnreachable,
                        "the owner did not acknowledge the one try the policy allows",
                    );
                }
                self.attempts += 1;
                self.ever_sent = true;
                self.next_action_at_ms = now_ms + backoff_ms(self.attempts, jitter);
                Step::SendInvoke
            }
            DeliveryState::PeerAcked | DeliveryState::Running => {
                self.next_action_at_ms = now_ms + QUERY_INTERVAL_MS;
                if owner_connected {
                    Step::Query
                } else {
                    Step::Wait
                }
            }
            DeliveryState::Completed | DeliveryState::Failed | DeliveryState::Cancelled => {
                Step::Wait
            }
        }
    }

    fn fail(&mut self, reason: FailureReason, detail: &str) -> Step {
        self.state = DeliveryState::Failed;
        Step::Fail {
            reason,
            detail: detail.to_owned(),
        }
    }

    /// The owner reported the flight in `flight` state (an ack, an update or
    /// a query answer). Returns the new delivery state when it moved.
    pub fn on_flight(&mut self, now_ms: u64, flight: FlightState) -> Option<DeliveryState> {
        let next = delivery_state_of(flight);
        if self.state == next || !self.state.can_transition_to(next) {
            return None;
        }
        self.state = next;
        self.deferred_since_ms = None;
        self.next_action_at_ms = now_ms + QUERY_INTERVAL_MS;
        Some(next)
    }

    /// Sending failed before the owner answered. The invoke may have reached
    /// it (`ever_sent` stays true); the plan retries after its backoff.
    pub fn on_send_failed(&mut self, now_ms: u64, jitter: f64) {
        if self.state == DeliveryState::Accepted {
            self.state = DeliveryState::Deferred;
            self.deferred_since_ms.get_or_insert(now_ms);
        }
        self.next_action_at_ms = now_ms + backoff_ms(self.attempts.max(1), jitter);
    }

    /// The owner refused the invocation (unknown instance, agent offline):
    /// nothing was committed there.
    pub fn on_rejected(&mut self, reason: FailureReason) {
        let _ = reason;
        self.state = DeliveryState::Failed;
        // A refusal proves the owner holds nothing only when no earlier
        // invoke could have reached it: an earlier invoke may have been
        // committed there with its acknowledgement lost, or be committed
        // after this answer (it may still be on its way). A plan rebuilt
        // after a restart does not know what left before it.
        self.rejected = self.sends_known && self.attempts <= 1;
    }

    /// Whether the work may go to another instance: the mention named a
    /// definition (not one instance), the policy retries, and no invoke ever
    /// left this broker, or the owner refused the only one that did. Either
    /// way no owner holds it, so it cannot run twice. A plan rebuilt after a
    /// restart knows neither, so it never reroutes.
    pub fn may_reroute(&self, now_ms: u64, logical_mention: bool) -> bool {
        if !logical_mention || self.single_try() {
            return false;
        }
        if !self.sends_known {
            return false;
        }
        if self.rejected {
            return true;
        }
        !self.ever_sent
            && self.state == DeliveryState::Deferred
            && self
                .deferred_since_ms
                .is_some_and(|since| now_ms >= since.saturating_add(REROUTE_AFTER_MS))
    }
}

/// Exponential backoff with ±25% jitter between the bounds.
pub fn backoff_ms(attempt: u32, jitter: f64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(16);
    let base = RETRY_BACKOFF_MS_MIN
        .saturating_mul(1 << exponent)
        .min(RETRY_BACKOFF_MS_MAX);
    let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
    ((base as f64 * factor) as u64).clamp(RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_at_once_then_retries_with_backoff() {
        let mut plan = DeliveryPlan::new(0, None, DeliveryPolicy::Durable);
        assert_eq!(plan.step(0, true, 0.5), Step::SendInvoke);
        assert_eq!(plan.step(10, true, 0.5), Step::Wait);
        assert_eq!(plan.step(RETRY_BACKOFF_MS_MIN, true, 0.5), Step::SendInvoke);
        assert_eq!(plan.attempts, 2);
        assert!(plan.ever_sent);
    }

    #[test]
    fn an_unreachable_owner_defers_until_the_deadline() {
        let mut plan = DeliveryPlan::new(0, Some(10_000), DeliveryPolicy::MustAck);
        assert_eq!(plan.step(0, false, 0.5), Step::Defer);
        assert_eq!(plan.state, DeliveryState::Deferred);
        assert!(matches!(
            plan.step(10_000, false, 0.5),
            Step::Fail {
                reason: FailureReason::Timeout,
                ..
            }
        ));
    }

    #[test]
    fn best_effort_tries_once() {
        let mut plan = DeliveryPlan::new(0, None, DeliveryPolicy::BestEffort);
        assert!(matches!(
            plan.step(0, false, 0.5),
            Step::Fail {
                reason: FailureReason::PeerUnreachable,
                ..
            }
        ));
    }

    #[test]
    fn acked_flights_are_queried_and_follow_the_owner() {
        let mut plan = DeliveryPlan::new(0, None, DeliveryPolicy::Durable);
        plan.step(0, true, 0.5);
        assert_eq!(
            plan.on_flight(1, FlightState::Queued),
            Some(DeliveryState::PeerAcked)
        );
        assert_eq!(
            plan.on_flight(2, FlightState::Running),
            Some(DeliveryState::Running)
        );
        assert_eq!(
            plan.on_flight(3, FlightState::Queued),
            None,
            "never backwards"
        );
        assert_eq!(plan.step(3 + QUERY_INTERVAL_MS, true, 0.5), Step::Query);
        assert_eq!(
            plan.on_flight(4, FlightState::Completed),
            Some(DeliveryState::Completed)
        );
        assert_eq!(plan.step(u64::MAX, true, 0.5), Step::Wait);
    }

    #[test]
    fn reroute_only_when_nothing_left_this_broker() {
        let mut plan = DeliveryPlan::new(0, None, DeliveryPolicy::Durable);
        assert_eq!(plan.step(0, false, 0.5), Step::Defer);
        assert!(!plan.may_reroute(100, true), "not deferred long enough");
        assert!(plan.may_reroute(REROUTE_AFTER_MS, true));
        assert!(
            !plan.may_reroute(REROUTE_AFTER_MS, false),
            "an exact instance stays"
        );
        let mut sent = DeliveryPlan::new(0, None, DeliveryPolicy::Durable);
        sent.step(0, true, 0.5);
        sent.on_send_failed(1, 0.5);
        assert!(
            !sent.may_reroute(REROUTE_AFTER_MS * 10, true),
            "the owner may hold it"
        );
        sent.on_rejected(FailureReason::AgentOffline);
        assert!(
            sent.may_reroute(REROUTE_AFTER_MS * 10, true),
            "the owner refused it"
        );
    }

    #[test]
    fn a_plan_rebuilt_after_a_restart_never_reroutes() {
        // The origin sent an invoke, the owner committed it, and the origin
        // stopped before it recorded the attempt: the store shows an
        // accepted delivery without attempts.
        let mut plan =
            DeliveryPlan::recovered(0, None, DeliveryPolicy::Durable, DeliveryState::Accepted, 0);
        assert!(plan.ever_sent, "an invoke may have left before the restart");
        assert_eq!(plan.step(0, false, 0.5), Step::Defer);
        assert!(
            !plan.may_reroute(REROUTE_AFTER_MS * 10, true),
            "the owner may hold it"
        );
        assert_eq!(
            plan.step(REROUTE_AFTER_MS * 10, true, 0.5),
            Step::SendInvoke
        );
        assert_eq!(plan.attempts, 1);
        plan.on_rejected(FailureReason::AgentOffline);
        assert!(
            !plan.may_reroute(REROUTE_AFTER_MS * 10, true),
            "a refusal of the first invoke since the restart proves nothing about the one before"
        );
    }
}
