//! The MCP server's way to the local broker: the CLI's blocking HTTP
//! client ([`BrokerClient`]) run on tokio's blocking pool, and an
//! invocation's event stream read on a blocking thread and handed over
//! through a bounded channel.

use std::io::{BufRead, BufReader};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::error::{BROKER_UNREACHABLE, ToolError};
use crate::api::{InvocationStatus, RoutingEvent};
use crate::cli::client::BrokerClient;

/// Events of one followed invocation queued between the reading thread and
/// the tool call: the reader waits when the tool call lags, so a chatty
/// flight holds a thread, not memory.
const FOLLOW_QUEUE_MAX: usize = 64;

/// The broker, shared by every tool call.
#[derive(Debug, Clone)]
pub struct Broker {
    client: Arc<BrokerClient>,
}

/// What an invocation's stream says, in order.
#[derive(Debug)]
pub enum Followed {
    /// Everything known when the stream opened.
    Status(Box<InvocationStatus>),
    /// A delivery, flight or output event.
    Event(Box<RoutingEvent>),
    /// The stream ended or broke, with why.
    Closed(String),
}

impl Broker {
    /// A broker reached through `client`.
    pub fn new(client: BrokerClient) -> Broker {
        Broker {
            client: Arc::new(client),
        }
    }

    /// The broker's base URL.
    pub fn base(&self) -> &str {
        self.client.base()
    }

    /// `GET path`.
    pub async fn get<T>(&self, path: String) -> Result<T, ToolError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let client = self.client.clone();
        blocking(move || client.get::<T>(&path).map_err(ToolError::from)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B, T>(&self, path: String, body: B) -> Result<T, ToolError>
    where
        B: Serialize + Send + 'static,
        T: DeserializeOwned + Send + 'static,
    {
        let client = self.client.clone();
        blocking(move || client.post::<B, T>(&path, &body).map_err(ToolError::from)).await
    }

    /// Follows invocation `id`: its status, then its events until its
    /// delivery ends or the receiver is dropped.
    pub fn follow(&self, id: &str) -> mpsc::Receiver<Followed> {
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE_MAX);
        let client = self.client.clone();
        let path = format!("/v1/invocations/{id}/stream");
        tokio::task::spawn_blocking(move || {
            let why = match client.stream(&path) {
                Ok(reader) => read_stream(reader, &tx),
                Err(err) => ToolError::from(err).message,
            };
            let _ = tx.blocking_send(Followed::Closed(why));
        });
        rx
    }
}

/// Reads server-sent events until the stream ends or nobody listens;
/// returns why it stopped.
fn read_stream(reader: Box<dyn std::io::Read + Send>, tx: &mpsc::Sender<Followed>) -> String {
    let mut event_name = String::new();
    for line in BufReader::new(reader).lines() {
        let line = match line {
            Ok(line) => line,
            Err(err) => return format!("the event stream broke: {err}"),
        };
        if let Some(name) = line.strip_prefix("event:") {
            event_name = name.trim().to_owned();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let followed = match event_name.as_str() {
            "status" => serde_json::from_str(data.trim())
                .ok()
                .map(|status| Followed::Status(Box::new(status))),
            "delivery" | "flight" | "output" => serde_json::from_str(data.trim())
                .ok()
                .map(|event| Followed::Event(Box::new(event))),
            _ => None,
        };
        if let Some(followed) = followed
            && tx.blocking_send(followed).is_err()
        {
            return "nobody is waiting".to_owned();
        }
    }
    "the broker closed the event stream".to_owned()
}

/// Runs blocking HTTP on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, ToolError>
where
    F: FnOnce() -> Result<T, ToolError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            Err(ToolError::new(
                BROKER_UNREACHABLE,
                format!("the request to the broker did not finish: {err}"),
            ))
        })
}
