//! `scout send`, `scout flights` and `scout conversations`: routing work to
//! agents anywhere in the mesh, and following it. They talk to this home's
//! running broker.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use scout_mesh::lifecycle::{DeliveryState, FailureReason, FlightState};
use scout_mesh::usage::{FailureCode, Usage};
use serde_json::json;

use super::client::{BrokerClient, ClientError};
use super::output::table;
use super::{Context, UsageError};
use crate::api::{
    ConversationView, EnqueueBody, EventKind, EventState, FlightRow, InvocationStatus,
    RoutingEvent, SubmitBody, Submitted, WorkOrderView,
};

/// Flags of `scout send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Who: `@fabric`, `@fabric@devbox`, `@fabric#main`, or a full instance name.
    pub target: String,
    /// What to ask.
    pub message: String,
    /// Stream the output and exit with the outcome (0 completed, 1 otherwise).
    #[arg(long)]
    pub wait: bool,
    /// How long the work may take, in seconds (default 600).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// `durable` (default), `must_ack`, `best_effort` or `ephemeral`.
    #[arg(long)]
    pub policy: Option<String>,
    /// `execute` (default), `consult`, `summarize`, `status` or `wake`.
    #[arg(long)]
    pub action: Option<String>,
    /// Continue a conversation.
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
}

fn running(context: &Context) -> anyhow::Result<BrokerClient> {
    BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })
}

pub(crate) fn api_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api {
            code,
            message,
            status,
        } if status == 400 || status == 413 => UsageError::new(code_static(&code), message).into(),
        ClientError::Api { code, message, .. } => anyhow::anyhow!("{code}: {message}"),
        other => other.into(),
    }
}

fn code_static(code: &str) -> &'static str {
    match code {
        "INVALID_NAME" => "INVALID_NAME",
        "INVALID_REQUEST" => "INVALID_REQUEST",
        "INVALID_JSON" => "INVALID_JSON",
        "BODY_TOO_LARGE" => "BODY_TOO_LARGE",
        _ => "INVALID_REQUEST",
    }
}

/// Runs `scout send`.
pub fn send(args: SendArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let client = running(context)?;
    let body = SubmitBody {
        target: args.target,
        message: args.message,
        action: args.action.as_deref().map(parse_word).transpose()?,
        policy: args.policy.as_deref().map(parse_word).transpose()?,
        timeout_ms: args.timeout.map(|timeout| timeout.saturating_mul(1000)),
        conversation_id: args.conversation,
    };
    let submitted: Submitted = client.post("/v1/invocations", &body).map_err(api_error)?;
    let id = submitted.invocation_id.clone();
    if !args.wait {
        context.printer.emit(&submitted, || {
            format!(
                "{id}\nsent to {} ({}); follow it with `scout flights {id}`\n",
                submitted.instance, submitted.reason
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if context.printer.is_json() {
        println!("{}", serde_json::to_string(&submitted)?);
    } else {
        eprintln!("{id} → {} ({})", submitted.instance, submitted.reason);
    }
    follow(&client, &id, context)
}

/// A word of one of the design's sets (`--policy`, `--action`), refused
/// here with the words it may be, as the API would refuse it.
fn parse_word<T>(word: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr<Err = scout_mesh::lifecycle::UnknownWord>,
{
    word.parse::<T>()
        .map_err(|err| UsageError::new("INVALID_REQUEST", err.to_string()).into())
}

/// Where a delivery stands, from a `status` or a `delivery` event.
struct Ending {
    state: DeliveryState,
    output: Option<String>,
    failure_reason: Option<FailureReason>,
    failure_code: Option<FailureCode>,
    detail: Option<String>,
}

/// Streams an invocation's events until it ends; the exit code follows the
/// outcome.
fn follow(client: &BrokerClient, id: &str, context: &Context) -> anyhow::Result<ExitCode> {
    let reader = client
        .stream(&format!("/v1/invocations/{id}/stream"))
        .map_err(api_error)?;
    // Live output is progress for a person watching; the answer itself goes
    // to stdout once, clean, so scripts can use it.
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !context.printer.is_json();
    // Output is the model's text: on a terminal it may not carry escape
    // sequences (cursor moves, titles, clipboard writes).
    let answer_to_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut live_plain = crate::pty::text::PlainText::new();
    let mut event_name = String::new();
    let mut stderr = std::io::stderr();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        if let Some(name) = line.strip_prefix("event:") {
            event_name = name.trim().to_owned();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        if context.printer.is_json() {
            println!("{}", json!({ "event": event_name, "data": event }));
        }
        let ending = match event_name.as_str() {
            "status" => {
                let Ok(status) = serde_json::from_value::<InvocationStatus>(event) else {
                    continue;
                };
                let Some(delivery) = status.delivery else {
                    continue;
                };
                Ending {
                    state: delivery.state,
                    output: delivery.result,
                    failure_reason: delivery.failure_reason,
                    failure_code: delivery.failure_code,
                    detail: delivery.failure_detail,
                }
            }
            "output" | "delivery" => {
                let Ok(event) = serde_json::from_value::<RoutingEvent>(event) else {
                    continue;
                };
                if event.kind == EventKind::Output {
                    if let Some(text) = &event.output
                        && live
                    {
                        let text = crate::pty::text::terminal_safe(&mut live_plain, text);
                        stderr.write_all(text.as_bytes())?;
                        stderr.flush()?;
                    }
                    continue;
                }
                let Some(state) = event.state.and_then(EventState::delivery) else {
                    continue;
                };
                Ending {
                    state,
                    output: event.output.map(String::from),
                    failure_reason: event.failure_reason,
                    failure_code: event.failure_code,
                    detail: event.detail,
                }
            }
            _ => continue,
        };
        match ending.state {
            DeliveryState::Completed => {
                if live {
                    eprintln!();
                }
                if !context.printer.is_json() {
                    let output = ending.output.unwrap_or_default();
                    let output = if answer_to_terminal {
                        crate::pty::text::terminal_safe_text(&output)
                    } else {
                        output
                    };
                    println!("{}", output.trim_end());
                }
                return Ok(ExitCode::SUCCESS);
            }
            DeliveryState::Failed | DeliveryState::Cancelled => {
                anyhow::bail!(
                    "{}",
                    failure_line(
                        ending.state,
                        ending.failure_reason,
                        ending.failure_code.as_ref(),
                        ending.detail.as_deref().unwrap_or("")
                    )
                );
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "the broker closed the stream before the invocation ended; `scout flights {id}` shows where it is"
    )
}

/// Flags of `scout flights`.
#[derive(Debug, Args)]
pub struct FlightsArgs {
    /// One invocation, in detail.
    pub id: Option<String>,
    /// Rows to list.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
}

/// Runs `scout flights`.
pub fn flights(args: FlightsArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let client = running(context)?;
    if let Some(id) = args.id {
        let status: InvocationStatus = client
            .get(&format!("/v1/invocations/{id}"))
            .map_err(api_error)?;
        context.printer.emit(&status, || render_status(&status))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<FlightRow> = client
        .get(&format!("/v1/flights?limit={}", args.limit))
        .map_err(api_error)?;
    context.printer.emit(&rows, || {
        let word = |word: Option<&str>| word.unwrap_or("-").to_owned();
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                vec![
                    row.invocation_id.clone(),
                    row.target.clone(),
                    word(row.instance.as_deref()),
                    word(row.delivery.map(DeliveryState::as_str)),
                    word(row.flight.map(FlightState::as_str)),
                    match (&row.failure_reason, &row.failure_code) {
                        (Some(reason), Some(code)) => format!("{reason} ({code})"),
                        (reason, _) => word(reason.map(FailureReason::as_str)),
                    },
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no invocations yet; try `scout send @agent \"…\"`\n".to_owned();
        }
        table(
            &[
                "INVOCATION",
                "TARGET",
                "INSTANCE",
                "DELIVERY",
                "FLIGHT",
                "REASON",
            ],
            &rows,
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How a failed or cancelled delivery reads for a person: `failed
/// (harness_error, AUTH_REQUIRED): <detail>` with the owner's code, or
/// `failed: timeout: <detail>` without one.
pub fn failure_line(
    state: DeliveryState,
    reason: Option<FailureReason>,
    code: Option<&FailureCode>,
    detail: &str,
) -> String {
    let reason = reason.map_or("failed", FailureReason::as_str);
    // The detail is the CLI's or a peer's words, printed for a person.
    let detail = crate::pty::text::terminal_safe_text(detail);
    match code {
        Some(code) => format!("{state} ({reason}, {code}): {detail}"),
        None => format!("{state}: {reason}: {detail}"),
    }
}

/// Tokens and cost on one line: `1200 in (1000 cached), 340 out, $0.0056`;
/// the cost is left out when the CLI did not report one.
pub fn usage_line(usage: &Usage) -> String {
    let cost = usage
        .cost_micro_usd
        .map(|micro| format!(", {}", dollars(micro)))
        .unwrap_or_default();
    format!(
        "{} in ({} cached), {} out{cost}",
        usage.input_tokens, usage.cached_tokens, usage.output_tokens
    )
}

/// Micro-USD as dollars with the digits that matter: four decimals, so a
/// cent's hundredth still shows.
pub fn dollars(micro_usd: u64) -> String {
    format!(
        "${}.{:04}",
        micro_usd / 1_000_000,
        (micro_usd % 1_000_000) / 100
    )
}

fn render_status(status: &InvocationStatus) -> String {
    let invocation = &status.invocation;
    let mut out = format!(
        "invocation {}\n  target   {}\n  action   {} ({})\n  message  {}\n",
        invocation.invocation_id,
        invocation.target,
        invocation.action,
        invocation.policy,
        invocation.body,
    );
    if let Some(delivery) = &status.delivery {
        out.push_str(&format!(
            "delivery {} to {}{}\n",
            delivery.state,
            delivery.target,
            delivery
                .resolve_reason
                .as_deref()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        ));
        if let Some(reason) = delivery.failure_reason {
            let code = delivery
                .failure_code
                .as_ref()
                .map(|code| format!(" ({code})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  failed   {reason}{code}: {}\n",
                delivery.failure_detail.as_deref().unwrap_or("")
            ));
        }
        if let Some(usage) = &delivery.usage {
            out.push_str(&format!("  usage    {}\n", usage_line(usage)));
        }
        for attempt in &delivery.attempts {
            out.push_str(&format!(
                "  attempt {} {}{}\n",
                attempt.attempt,
                attempt.outcome.as_deref().unwrap_or("running"),
                attempt
                    .failure_reason
                    .map(|reason| format!(
                        " ({reason}: {})",
                        attempt.failure_detail.as_deref().unwrap_or("")
                    ))
                    .unwrap_or_default()
            ));
        }
        if let Some(result) = &delivery.result {
            out.push_str(&format!("result\n{}\n", result.trim_end()));
        }
    }
    if let Some(flight) = &status.flight {
        out.push_str(&format!(
            "flight {} on {} ({})\n",
            flight.state,
            flight.instance.as_deref().unwrap_or("?"),
            flight.resolve_reason.as_deref().unwrap_or("?")
        ));
        if let Some(reason) = flight.failure_reason {
            let code = flight
                .failure_code
                .as_ref()
                .map(|code| format!(" ({code})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  failed   {reason}{code}: {}\n",
                flight.failure_detail.as_deref().unwrap_or("")
            ));
        }
        if let Some(usage) = &flight.usage {
            out.push_str(&format!("  usage    {}\n", usage_line(usage)));
        }
    }
    out
}

/// `scout conversations …`
#[derive(Debug, Subcommand)]
pub enum ConversationsCommand {
    /// Recent conversations.
    List,
    /// One conversation's messages.
    Show {
        /// The conversation id.
        id: String,
    },
}

/// Runs `scout conversations …`.
pub fn conversations(command: ConversationsCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let client = running(context)?;
    match command {
        ConversationsCommand::List => {
            let list: Vec<ConversationView> = client.get("/v1/conversations").map_err(api_error)?;
            context.printer.emit(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|row| {
                        vec![
                            row.conversation_id.clone(),
                            row.title.clone().unwrap_or_else(|| "-".to_owned()),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    return "no conversations yet\n".to_owned();
                }
                table(&["CONVERSATION", "TITLE"], &rows)
            })?;
        }
        ConversationsCommand::Show { id } => {
            let conversation: ConversationView = client
                .get(&format!("/v1/conversations/{id}"))
                .map_err(api_error)?;
            context.printer.emit(&conversation, || {
                let mut out = String::new();
                for message in &conversation.messages {
                    out.push_str(&format!(
                        "{}:\n{}\n\n",
                        message.author,
                        message.body.trim_end()
                    ));
                }
                if out.is_empty() {
                    out.push_str("no messages\n");
                }
                out
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `--wait` waits for the next event before giving up on a silent
/// broker (the stream sends a keep-alive every 15 s).
pub const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `scout work-orders …`
#[derive(Debug, Subcommand)]
pub enum WorkOrdersCommand {
    /// Queue work for an agent (`work_order.enqueue`).
    Enqueue(EnqueueArgs),
    /// Queue and dispatch at once (`agent.run_now`).
    RunNow(EnqueueArgs),
    /// List work orders (`work_order.list`).
    List {
        /// Only this state: queued, running, completed, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
    },
    /// Cancel a work order; a running one is stopped at its owner.
    Cancel {
        /// The work order id.
        id: String,
    },
}

/// Flags of `scout work-orders enqueue|run-now`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The agent (`@fabric`, or more precise).
    pub target: String,
    /// What to do.
    pub body: String,
    /// Not before this long from now: `30s`, `10m`, `2h` (enqueue only).
    #[arg(long, value_name = "DURATION")]
    pub r#in: Option<String>,
    /// How long it may take once dispatched, in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// Runs `scout work-orders …`.
pub fn work_orders(command: WorkOrdersCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let client = running(context)?;
    let order: WorkOrderView = match command {
        WorkOrdersCommand::Enqueue(args) => client
            .post("/v1/work-orders", &enqueue_body(&args, &context.env)?)
            .map_err(api_error)?,
        WorkOrdersCommand::RunNow(args) => client
            .post(
                "/v1/work-orders/run-now",
                &enqueue_body(&args, &context.env)?,
            )
            .map_err(api_error)?,
        WorkOrdersCommand::Cancel { id } => client
            .post(&format!("/v1/work-orders/{id}/cancel"), &json!({}))
            .map_err(api_error)?,
        WorkOrdersCommand::List { state } => {
            let path = match state {
                Some(state) => format!("/v1/work-orders?state={state}"),
                None => "/v1/work-orders".to_owned(),
            };
            let list: Vec<WorkOrderView> = client.get(&path).map_err(api_error)?;
            context.printer.emit(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|row| {
                        vec![
                            row.work_order_id.clone(),
                            row.target.clone(),
                            row.state.clone(),
                            row.invocation_id.clone().unwrap_or_else(|| "-".to_owned()),
                            row.body.clone(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    return "no work orders\n".to_owned();
                }
                table(
                    &["WORK ORDER", "TARGET", "STATE", "INVOCATION", "BODY"],
                    &rows,
                )
            })?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    context.printer.emit(&order, || {
        format!(
            "{} {} ({}){}\n",
            order.work_order_id,
            order.state,
            order.target,
            order
                .invocation_id
                .as_deref()
                .map(|id| format!("; invocation {id}"))
                .unwrap_or_default()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn enqueue_body(args: &EnqueueArgs, env: &crate::env::Env) -> anyhow::Result<EnqueueBody> {
    let not_before_ms = match &args.r#in {
        Some(delay) => {
            let delay = super::mesh::parse_duration(delay)?;
            let now = env.now_unix_ms();
            Some(now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)))
        }
        None => None,
    };
    Ok(EnqueueBody {
        target: args.target.clone(),
        body: args.body.clone(),
        not_before_ms,
        timeout_ms: args.timeout.map(|timeout| timeout.saturating_mul(1000)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_with_their_code_when_there_is_one() {
        let code = FailureCode::parse("AUTH_REQUIRED").unwrap();
        assert_eq!(
            failure_line(
                DeliveryState::Failed,
                Some(FailureReason::HarnessError),
                Some(&code),
                "Invalid API key · Please run /login"
            ),
            "failed (harness_error, AUTH_REQUIRED): Invalid API key · Please run /login"
        );
        assert_eq!(
            failure_line(
                DeliveryState::Failed,
                Some(FailureReason::Timeout),
                None,
                "late"
            ),
            "failed: timeout: late"
        );
    }

    #[test]
    fn usage_reads_as_tokens_and_dollars() {
        let usage = Usage {
            input_tokens: 1200,
            output_tokens: 340,
            cached_tokens: 1000,
            cost_micro_usd: Some(5_600),
        };
        assert_eq!(
            usage_line(&usage),
            "1200 in (1000 cached), 340 out, $0.0056"
        );
        let free = Usage {
            cost_micro_usd: None,
            ..usage
        };
        assert_eq!(usage_line(&free), "1200 in (1000 cached), 340 out");
        assert_eq!(dollars(12_345_678), "$12.3456");
        assert_eq!(dollars(0), "$0.0000");
    }
}
