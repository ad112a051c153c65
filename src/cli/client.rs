//! The CLI's client for its own broker's HTTP API, with the token read
//! from the home, so commands that need the running broker use it
//! transparently.
//!
//! Before the token leaves the CLI, whatever listens on the broker's port
//! must prove it holds that token ([`crate::http::hello`]): a fresh random
//! challenge goes out, an HMAC of it keyed with the token must come back.
//! Nothing listening means no broker runs (`Ok(None)`); anything else that
//! cannot prove it is [`BrokerMismatch`], and the token is never sent.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use crate::config::settings;
use crate::http::hello::{self, CHALLENGE_BYTES, HELLO_PATH, Hello};
use crate::identity;

/// How long the CLI waits for its broker: every call is local, and the
/// slowest (a join, which reaches another machine) is bounded by the
/// transport's own timeouts well below this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a probe for a running broker may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Most characters of a foreign answer quoted in an error: enough to
/// recognise it, not enough to flood the terminal.
const FOREIGN_QUOTE_CHARS_MAX: usize = 80;

/// Most bytes of a foreign error answer read to find its error code: the
/// broker's errors are far smaller, and a foreign server may send anything.
const FOREIGN_BODY_BYTES_MAX: u64 = 4096;

/// A client for the broker of this home.
#[derive(Debug)]
pub struct BrokerClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// An error answered by the broker, or a failure to reach it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// The broker could not be reached or answered something unreadable.
    #[error("cannot reach the broker at {base}: {detail}")]
    Transport {
        /// The base URL.
        base: String,
        /// Why.
        detail: String,
    },
}

/// Something listens on this home's broker port but could not prove it is
/// this home's broker; the CLI did not send it the token.
#[derive(Debug, thiserror::Error)]
#[error(
    "BROKER_MISMATCH: {addr} is not this home's broker: it {found}; the API token was not sent (stop whatever listens there, or give this home another http_port in settings.json)"
)]
pub struct BrokerMismatch {
    /// Where the broker was expected.
    pub addr: SocketAddr,
    /// What answered there instead.
    pub found: String,
}

impl BrokerMismatch {
    /// The stable error code.
    pub const CODE: &'static str = "BROKER_MISMATCH";
}

impl BrokerClient {
    /// A client for the broker of this home when it is running and has
    /// proved it holds the home's token; `Ok(None)` when nothing listens on
    /// its port; [`BrokerMismatch`] when something else does.
    pub fn running(context: &Context) -> anyhow::Result<Option<BrokerClient>> {
        let Some(settings) = settings::load(&context.home.settings_path())? else {
            return Ok(None);
        };
        let addr = crate::daemon::broker_http_addr(&context.home, &settings.value)?;
        let base = format!("http://{addr}");
        // One agent for the probe and the requests: its pool keeps the
        // proven connection for the requests that follow. It never follows
        // a redirect, which could carry the token elsewhere.
        let agent = ureq::AgentBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .redirects(0)
            .build();
        let challenge: [u8; CHALLENGE_BYTES] = context.env.random();
        let url = format!("{base}{HELLO_PATH}?challenge={}", hex::encode(challenge));
        let mismatch = |found: String| BrokerMismatch { addr, found };
        let response = match agent.get(&url).timeout(PROBE_TIMEOUT).call() {
            Ok(response) => response,
            Err(ureq::Error::Transport(transport))
                if transport.kind() == ureq::ErrorKind::ConnectionFailed =>
            {
                return Ok(None);
            }
            Err(ureq::Error::Transport(transport)) => {
                return Err(mismatch(describe_transport(&transport)).into());
            }
            Err(ureq::Error::Status(status, response)) => {
                return Err(mismatch(describe_status(status, response)).into());
            }
        };
        if response.status() != 200 {
            return Err(mismatch(describe_status(response.status(), response)).into());
        }
        let hello: Hello = match response.into_json() {
            Ok(hello) => hello,
            Err(_) => {
                return Err(mismatch(
                    "answered HTTP 200 with something that is not a scout hello".to_owned(),
                )
                .into());
            }
        };
        let token = identity::load_token(&context.home.token_path())?;
        if !hello::verify(&token, &challenge, addr.port(), &hello.proof) {
            return Err(mismatch(format!(
                "answered as node `{}` (id {}, pid {}) without proof that it holds this home's token",
                quote(&hello.node),
                quote(&hello.node_id),
                hello.pid
            ))
            .into());
        }
        Ok(Some(BrokerClient { base, token, agent }))
    }

    /// A client for a broker given by its address and a token, as Scout
    /// sets them (`SCOUT_URL`, `SCOUT_TOKEN`) in the environment of the
    /// agents it runs. There is no hello proof: the broker that spawned the
    /// agent chose both, and the token may be scoped to that one agent.
    pub fn with_token(base: String, token: String) -> BrokerClient {
        let agent = ureq::AgentBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .redirects(0)
            .build();
        BrokerClient { base, token, agent }
    }

    /// The broker's base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        self.finish(request.call())
    }

    /// `POST path` with a JSON body.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let request = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        self.finish(request.send_json(body))
    }

    /// The `ws://` URL of `path` on the broker and the `Authorization`
    /// header value that goes with it, for a WebSocket client.
    pub fn websocket(&self, path: &str) -> (String, String) {
        let base = self.base.replacen("http://", "ws://", 1);
        (format!("{base}{path}"), format!("Bearer {}", self.token))
    }

    /// `GET path` as a stream (server-sent events), read line by line.
    pub fn stream(&self, path: &str) -> Result<Box<dyn std::io::Read + Send>, ClientError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(PROBE_TIMEOUT)
            .timeout_read(super::send::STREAM_READ_TIMEOUT)
            .redirects(0)
            .build();
        let response = agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "text/event-stream")
            .call();
        match response {
            Ok(response) => Ok(Box::new(response.into_reader())),
            Err(err) => self
                .finish::<serde_json::Value>(Err(err))
                .map(|_| -> Box<dyn std::io::Read + Send> { Box::new(std::io::empty()) }),
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            base: self.base.clone(),
            detail,
        };
        match result {
            Ok(response) => response
                .into_json::<T>()
                .map_err(|err| transport(err.to_string())),
            Err(ureq::Error::Status(status, response)) => {
                let body: serde_json::Value = response.into_json().unwrap_or_default();
                Err(ClientError::Api {
                    status,
                    code: body["error"]["code"]
                        .as_str()
                        .unwrap_or("UNKNOWN")
                        .to_owned(),
                    message: body["error"]["message"]
                        .as_str()
                        .unwrap_or("the broker answered an error without a message")
                        .to_owned(),
                })
            }
            Err(err) => Err(transport(err.to_string())),
        }
    }
}

/// What a transport failure says about the thing on the port.
fn describe_transport(transport: &ureq::Transport) -> String {
    match transport.kind() {
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => {
            "answered something that is not HTTP".to_owned()
        }
        ureq::ErrorKind::Io => format!(
            "accepted the connection but gave no HTTP answer within {} ms ({})",
            PROBE_TIMEOUT.as_millis(),
            quote(&transport.to_string())
        ),
        _ => format!("could not be asked ({})", quote(&transport.to_string())),
    }
}

/// What an HTTP answer other than a hello says about the thing on the port.
fn describe_status(status: u16, response: ureq::Response) -> String {
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(response.into_reader(), FOREIGN_BODY_BYTES_MAX),
        &mut body,
    );
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value["error"]["code"].as_str().map(str::to_owned));
    match code {
        Some(code) => format!("answered HTTP {status} ({})", quote(&code)),
        None => format!("answered HTTP {status}"),
    }
}

/// Foreign text made safe to print: control characters replaced and the
/// length bounded.
fn quote(text: &str) -> String {
    let mut quoted: String = text
        .chars()
        .take(FOREIGN_QUOTE_CHARS_MAX)
        .map(|ch| if ch.is_control() { '?' } else { ch })
        .collect();
    if text.chars().count() > FOREIGN_QUOTE_CHARS_MAX {
        quoted.push('…');
    }
    quoted
}
