//! Agent credentials: the bearer token the broker gives each agent session
//! it spawns, so the agent can use the local API as itself.
//!
//! A credential is minted when the session starts, handed to the agent in
//! `SCOUT_TOKEN` (with `SCOUT_AGENT`, its instance name, and `SCOUT_URL`,
//! the API's address), and revoked when the session ends. Only a SHA-256
//! digest of the token is kept, in memory: a credential never outlives the
//! broker, whose restart ends every session anyway. The credential also
//! knows which invocation its session is running, so what the agent sends
//! extends that invocation's causal chain. A credential has the `agent`
//! scope; what that scope may call is `http::scope::ROUTE_CLASSES`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::env::Env;

/// Variable naming the agent's instance (`@fabric@laptop#main`).
pub const AGENT_VAR: &str = "SCOUT_AGENT";
/// Variable holding the local API's address (`http://127.0.0.1:<port>`).
pub const URL_VAR: &str = "SCOUT_URL";
/// Variable holding the agent's bearer credential.
pub const TOKEN_VAR: &str = "SCOUT_TOKEN";

/// Prefix of an agent token, so a leaked one is recognisable in logs and
/// cannot be mistaken for the operator token.
const TOKEN_PREFIX: &str = "sat_";

/// The agent behind a request made with an agent credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCaller {
    /// Its instance name.
    pub instance: String,
    /// The invocation its session is running, when one is.
    pub invocation: Option<String>,
}

/// The live agent credentials of this broker.
#[derive(Debug)]
pub struct AgentCredentials {
    url: String,
    by_digest: Mutex<HashMap<[u8; 32], AgentCaller>>,
    /// Where the Gemini CLI's defaults file naming the Scout MCP server is
    /// written (in the broker's state directory), when there is one.
    gemini_defaults: Option<PathBuf>,
}

/// The variable naming the Gemini CLI's system defaults file: the settings
/// with the lowest precedence, so the Scout server is added to the user's
/// own servers and overrides nothing the user set.
pub const GEMINI_DEFAULTS_VAR: &str = "GEMINI_CLI_SYSTEM_DEFAULTS_PATH";

impl AgentCredentials {
    /// No credentials yet; agents reach the API at `url`.
    pub fn new(url: String) -> AgentCredentials {
        AgentCredentials {
            url,
            by_digest: Mutex::new(HashMap::new()),
            gemini_defaults: None,
        }
    }

    /// Writes Gemini defaults files naming the Scout MCP server at `path`.
    pub fn with_gemini_defaults(mut self, path: PathBuf) -> AgentCredentials {
        self.gemini_defaults = Some(path);
        self
    }

    /// The variable pointing a Gemini CLI at a defaults file that registers
    /// the Scout MCP server run by `command`, written first. The file holds
    /// no secret: the server reads its identity from the environment the
    /// CLI passes on. `None` when there is no place for it or it cannot be
    /// written (the agent then runs without the server).
    pub fn gemini_env(&self, command: &str) -> Option<(String, String)> {
        let path = self.gemini_defaults.as_ref()?;
        let content = serde_json::json!({
            "mcpServers": { "scout": { "command": command, "args": ["mcp"] } }
        });
        let mut bytes = serde_json::to_vec_pretty(&content).ok()?;
        bytes.push(b'\n');
        if let Err(err) = crate::config::json_file::write_atomically(path, &bytes) {
            tracing::warn!(path = %path.display(), cause = %err, "cannot write the gemini defaults naming the scout MCP server");
            return None;
        }
        Some((GEMINI_DEFAULTS_VAR.to_owned(), path.display().to_string()))
    }

    /// Mints a credential for `instance`; returns the token and the
    /// variables to set in the agent's environment.
    pub fn mint(&self, instance: &str, env: &Env) -> (String, Vec<(String, String)>) {
        let secret: [u8; 32] = env.random();
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        self.lock().insert(
            digest(&token),
            AgentCaller {
                instance: instance.to_owned(),
                invocation: None,
            },
        );
        let vars = vec![
            (AGENT_VAR.to_owned(), instance.to_owned()),
            (URL_VAR.to_owned(), self.url.clone()),
            (TOKEN_VAR.to_owned(), token.clone()),
        ];
        (token, vars)
    }

    /// Takes back the credential of a session that outlived the last
    /// broker (its holder kept it; the token is in its environment), so
    /// the agent keeps speaking as `instance`. A string that is not an
    /// agent token is ignored.
    pub fn restore(&self, instance: &str, token: &str) -> bool {
        let well_formed = token.strip_prefix(TOKEN_PREFIX).is_some_and(|secret| {
            secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if well_formed {
            self.lock().insert(
                digest(token),
                AgentCaller {
                    instance: instance.to_owned(),
                    invocation: None,
                },
            );
        }
        well_formed
    }

    /// Revokes `token`; later requests with it are unauthorised.
    pub fn revoke(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    /// Records the invocation the session holding `token` runs (`None`
    /// once the turn ends).
    pub fn set_running(&self, token: &str, invocation: Option<String>) {
        if let Some(caller) = self.lock().get_mut(&digest(token)) {
            caller.invocation = invocation;
        }
    }

    /// The agent a presented token belongs to, if it is live.
    pub fn caller(&self, presented: &str) -> Option<AgentCaller> {
        if !presented.starts_with(TOKEN_PREFIX) {
            return None;
        }
        // The map is keyed by digest, so the lookup compares digests, not
        // the secret: its timing reveals nothing about a guessed token.
        self.lock().get(&digest(presented)).cloned()
    }

    /// The invocation the live session of `instance` is running, if any.
    pub fn running_invocation(&self, instance: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|caller| caller.instance == instance && caller.invocation.is_some())
            .and_then(|caller| caller.invocation.clone())
    }

    /// Live credentials.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], AgentCaller>> {
        self.by_digest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_found_until_revoked() {
        let credentials = AgentCredentials::new("http://127.0.0.1:1".into());
        let env = Env::system(None);
        let (token, vars) = credentials.mint("@a@n#main", &env);
        assert!(vars.contains(&(TOKEN_VAR.to_owned(), token.clone())));
        assert_eq!(credentials.caller(&token).unwrap().instance, "@a@n#main");
        credentials.set_running(&token, Some("inv-1".into()));
        assert_eq!(
            credentials.caller(&token).unwrap().invocation.as_deref(),
            Some("inv-1")
        );
        assert_eq!(credentials.caller("sat_00"), None);
        credentials.revoke(&token);
        assert_eq!(credentials.caller(&token), None);
        assert!(credentials.is_empty());
    }
}
