//! `ask` and `invocation`: waiting for an invocation to end, from its event
//! stream, with its output and state changes sent as MCP progress
//! notifications when the client asked for them (a progress token).

use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;
use scout_mesh::lifecycle::{DeliveryState, FailureReason, FlightState};
use serde_json::{Value, json};

use super::broker::{Broker, Followed};
use super::error::{BROKER_UNREACHABLE, INVOCATION_FAILED, ToolError, WAIT_TIMEOUT};
use super::server::{McpServer, query_escape, timeout_ms};
use super::tools::{AskArgs, InvocationArgs};
use crate::api::{EventKind, InvocationStatus, SubmitBody, Submitted};

/// Waiting goes on this long past the invocation's own deadline, so the
/// broker's `timeout` failure (with its detail) arrives before the wait
/// gives up on its own.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// Most characters of output in one progress message: enough to follow
/// the work, small enough that a flood of output stays a trickle.
const PROGRESS_MESSAGE_CHARS_MAX: usize = 2000;

/// Where the progress of one tool call goes.
#[derive(Debug)]
pub struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    count: u32,
}

impl Progress {
    /// Progress to `peer` under `token`; nothing is sent without a token.
    pub fn new(peer: Peer<RoleServer>, token: Option<ProgressToken>) -> Progress {
        Progress {
            peer,
            token,
            count: 0,
        }
    }

    /// Sends one progress notification. A client that went away is not an
    /// error of the call: the answer is still returned.
    pub async fn report(&mut self, message: &str) {
        let Some(token) = &self.token else {
            return;
        };
        self.count += 1;
        let message: String = message.chars().take(PROGRESS_MESSAGE_CHARS_MAX).collect();
        let param = ProgressNotificationParam::new(token.clone(), f64::from(self.count))
            .with_message(message);
        if let Err(err) = self.peer.notify_progress(param).await {
            tracing::debug!(cause = %err, "progress notification not sent");
        }
    }
}

/// How an invocation ended.
#[derive(Debug)]
struct Ending {
    state: String,
    completed: bool,
    answer: Option<String>,
    failure_reason: Option<FailureReason>,
    failure_code: Option<String>,
    detail: Option<String>,
}

/// `ask`: submit, then wait for the answer.
pub async fn ask(
    server: &McpServer,
    args: AskArgs,
    mut progress: Progress,
) -> Result<Value, ToolError> {
    let timeout_ms = timeout_ms("ask", args.timeout_s)?;
    let body = SubmitBody {
        target: args.target,
        message: args.message,
        action: None,
        policy: None,
        timeout_ms: Some(timeout_ms),
        conversation_id: args.conversation_id,
    };
    let submitted: Submitted = server
        .broker
        .post("/v1/invocations".to_owned(), body)
        .await?;
    progress
        .report(&format!(
            "sent to {} ({})",
            submitted.instance, submitted.reason
        ))
        .await;
    let bound = Duration::from_millis(timeout_ms) + WAIT_GRACE;
    let ending = wait(
        &server.broker,
        &submitted.invocation_id,
        bound,
        &mut progress,
    )
    .await?;
    let answer = ending_answer(&server.broker, &submitted.invocation_id, &ending).await;
    if !ending.completed {
        return Err(failure(&submitted.invocation_id, ending));
    }
    Ok(json!({
        "answer": answer.unwrap_or_default(),
        "state": ending.state,
        "invocation_id": submitted.invocation_id,
        "instance": submitted.instance,
        "conversation_id": submitted.conversation_id,
    }))
}

/// `invocation`: its status now, or once it ended.
pub async fn invocation(
    server: &McpServer,
    args: InvocationArgs,
    mut progress: Progress,
) -> Result<Value, ToolError> {
    let id = args.invocation_id;
    if args.wait {
        let bound = Duration::from_millis(timeout_ms("invocation", args.timeout_s)?) + WAIT_GRACE;
        wait(&server.broker, &id, bound, &mut progress).await?;
    }
    let status: InvocationStatus = server
        .broker
        .get(format!("/v1/invocations/{}", query_escape(&id)))
        .await?;
    Ok(summary(&status))
}

/// One invocation's state, answer and attempts, as the tools show it.
fn summary(status: &InvocationStatus) -> Value {
    let state = status
        .delivery
        .as_ref()
        .map(|delivery| delivery.state.as_str())
        .or(status.flight.as_ref().map(|flight| flight.state.as_str()));
    let answer = status
        .delivery
        .as_ref()
        .and_then(|delivery| delivery.result.clone())
        .or(status.flight.as_ref().and_then(|flight| {
            flight
                .result
                .as_ref()
                .map(|result| result.as_str().to_owned())
        }));
    json!({
        "invocation_id": status.invocation.invocation_id,
        "state": state,
        "answer": answer,
        "output": status.flight.as_ref().map(|flight| flight.output.as_str()),
        "target": status.invocation.target,
        "conversation_id": status.invocation.conversation_id,
        "delivery": status.delivery,
        "flight": status.flight,
    })
}

/// Follows invocation `id` until it ends or `bound` passes.
async fn wait(
    broker: &Broker,
    id: &str,
    bound: Duration,
    progress: &mut Progress,
) -> Result<Ending, ToolError> {
    let mut events = broker.follow(&query_escape(id));
    let deadline = tokio::time::Instant::now() + bound;
    // An invocation that did not originate here has no delivery here: its
    // end is its flight's (this broker owns it).
    let mut by_flight = false;
    loop {
        let next = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(next)) => next,
            Ok(None) => return Err(stream_lost(id, "the event stream ended")),
            Err(_) => {
                return Err(ToolError::new(
                    WAIT_TIMEOUT,
                    format!("stopped waiting after {} s; the invocation goes on, check it with `invocation`", bound.as_secs()),
                )
                .with("invocation_id", id));
            }
        };
        match next {
            Followed::Closed(why) => return Err(stream_lost(id, &why)),
            Followed::Status(status) => {
                if let Some(delivery) = &status.delivery {
                    if delivery.state.is_terminal() {
                        return Ok(Ending {
                            state: delivery.state.as_str().to_owned(),
                            completed: delivery.state == DeliveryState::Completed,
                            answer: delivery.result.clone(),
                            failure_reason: delivery.failure_reason,
                            failure_code: delivery.failure_code.as_ref().map(ToString::to_string),
                            detail: delivery.failure_detail.clone(),
                        });
                    }
                } else if let Some(flight) = &status.flight {
                    by_flight = true;
                    if flight.state.is_terminal() {
                        return Ok(Ending {
                            state: flight.state.as_str().to_owned(),
                            completed: flight.state == FlightState::Completed,
                            answer: flight
                                .result
                                .as_ref()
                                .map(|result| result.as_str().to_owned()),
                            failure_reason: flight.failure_reason,
                            failure_code: flight.failure_code.as_ref().map(ToString::to_string),
                            detail: flight.failure_detail.clone(),
                        });
                    }
                }
            }
            Followed::Event(event) => {
                let Some(state) = event.state else {
                    if event.kind == EventKind::Output
                        && let Some(output) = &event.output
                    {
                        progress.report(output.as_str()).await;
                    }
                    continue;
                };
                let ends = state.is_terminal()
                    && (event.kind == EventKind::Delivery
                        || (by_flight && event.kind == EventKind::Flight));
                if !ends {
                    progress
                        .report(&format!("{}: {state}", event.kind.as_str()))
                        .await;
                    continue;
                }
                return Ok(Ending {
                    state: state.as_str().to_owned(),
                    completed: state.as_str() == DeliveryState::Completed.as_str(),
                    answer: event.output.map(|output| output.into_string()),
                    failure_reason: event.failure_reason,
                    failure_code: event.failure_code.as_ref().map(ToString::to_string),
                    detail: event.detail,
                });
            }
        }
    }
}

/// The answer of a completed invocation: from its ending, or from its
/// status when the ending event did not carry it.
async fn ending_answer(broker: &Broker, id: &str, ending: &Ending) -> Option<String> {
    if !ending.completed || ending.answer.is_some() {
        return ending.answer.clone();
    }
    let status: InvocationStatus = broker
        .get(format!("/v1/invocations/{}", query_escape(id)))
        .await
        .ok()?;
    summary(&status)["answer"].as_str().map(str::to_owned)
}

fn failure(id: &str, ending: Ending) -> ToolError {
    let reason = ending
        .failure_reason
        .map(|reason| reason.as_str().to_owned());
    let detail = ending.detail.unwrap_or_default();
    let message = format!(
        "the invocation ended {}{}: {detail}",
        ending.state,
        reason
            .as_deref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default()
    );
    ToolError::new(
        ending
            .failure_code
            .unwrap_or_else(|| INVOCATION_FAILED.to_owned()),
        message,
    )
    .with("invocation_id", id)
    .with("state", ending.state)
    .with("failure_reason", reason)
}

fn stream_lost(id: &str, why: &str) -> ToolError {
    ToolError::new(
        BROKER_UNREACHABLE,
        format!("{why} before the invocation ended; check it with `invocation`"),
    )
    .with("invocation_id", id)
}
