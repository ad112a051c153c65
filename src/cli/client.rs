//! The CLI's client for its own broker's HTTP API, with the token read
//! from the home, so commands that need the running broker use it
//! transparently.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use crate::config::settings;
use crate::identity;

/// How long the CLI waits for its broker: every call is local, and the
/// slowest (a join, which reaches another machine) is bounded by the
/// transport's own timeouts well below this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a probe for a running broker may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

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

impl BrokerClient {
    /// A client for the broker of this home when it is running and answers.
    pub fn running(context: &Context) -> anyhow::Result<Option<BrokerClient>> {
        let Some(settings) = settings::load(&context.home.settings_path())? else {
            return Ok(None);
        };
        let addr = crate::daemon::broker_http_addr(&context.home, &settings.value)?;
        let base = format!("http://{addr}");
        let probe = ureq::AgentBuilder::new().timeout(PROBE_TIMEOUT).build();
        let answered = probe
            .get(&format!("{base}/health"))
            .call()
            .ok()
            .and_then(|response| response.into_json::<serde_json::Value>().ok())
            .is_some_and(|health| health["node"] == settings.value.node_name.as_str());
        if !answered {
            return Ok(None);
        }
        let token = identity::load_token(&context.home.token_path())?;
        Ok(Some(BrokerClient {
            base,
            token,
            agent: ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
        }))
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

    /// `GET path` as a stream (server-sent events), read line by line.
    pub fn stream(&self, path: &str) -> Result<Box<dyn std::io::Read + Send>, ClientError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(PROBE_TIMEOUT)
            .timeout_read(super::send::STREAM_READ_TIMEOUT)
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
