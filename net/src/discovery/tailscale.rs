//! tailscaled as a discovery source: which tailnet peers exist, whether
//! they are online, their Tailscale IPs, tags and owners (from
//! `GET /localapi/v0/status`), and who is behind an address (from
//! `GET /localapi/v0/whois`). The LocalAPI is asked over tailscaled's unix
//! socket; when there is no socket, or it refuses, the `tailscale` CLI is
//! asked instead (`tailscale status --json`, `tailscale whois --json`),
//! which prints the same documents.
//!
//! Parsing is pure and tolerant: unknown fields are ignored, missing ones
//! take defaults, `Peer: null` is a tailnet of one, and a peer entry that
//! does not parse is skipped and reported while the others are kept.
//! Peers are keyed by their stable `ID`, never by the node key the `Peer`
//! map is keyed by (that changes when keys rotate).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::http::{self, HttpError};

/// The `Host` the LocalAPI expects: it refuses other values, its guard
/// against a browser being talked into calling it.
pub const LOCAL_API_HOST: &str = "local-tailscaled.sock";

/// The status route.
pub const STATUS_PATH: &str = "/localapi/v0/status";

/// The whois route (`?addr=ip:port`).
pub const WHOIS_PATH: &str = "/localapi/v0/whois";

/// One LocalAPI or CLI call's deadline. tailscaled answers from memory; a
/// call that takes longer is stuck and must not hold up a poll round.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Peers taken from one status at most. Each peer brings one or two
/// addresses into a book of bounded size; a larger tailnet is filtered
/// with `discovery.tailscale.tags`.
pub const TAILNET_PEERS_MAX: usize = 512;

/// Reasons kept for skipped peer entries at most (for doctor and logs).
pub const SKIPPED_REASONS_MAX: usize = 16;

/// The invite id a joiner sends instead of a one-time invite when it asks
/// to be admitted by its tailnet identity (`discovery.tailscale.admit`).
/// Real invite ids are random; this one spells what it is.
pub const TAILNET_JOIN_INVITE_ID: [u8; 8] = *b"tailnet!";

/// The LocalAPI socket on this platform when none is configured: the
/// open-source tailscaled's path on macOS, the packaged path elsewhere.
pub fn default_socket_path() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/var/run/tailscaled.socket")
    } else {
        PathBuf::from("/var/run/tailscale/tailscaled.sock")
    }
}

/// Why tailscaled could not be asked, or what it said was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailscaleError {
    /// Neither the LocalAPI socket nor the CLI is there.
    #[error("TAILSCALE_NOT_FOUND: no tailscaled socket at {socket} and no `{cli}` on PATH")]
    NotFound {
        /// The socket path tried.
        socket: String,
        /// The CLI tried.
        cli: String,
    },
    /// The socket exists but nothing accepts on it (tailscaled stopped).
    #[error("TAILSCALE_SOCKET_REFUSED: {0}")]
    SocketRefused(String),
    /// The LocalAPI answered with an error status.
    #[error("TAILSCALE_HTTP_ERROR: {route} answered {status}: {message}")]
    Http {
        /// The route asked.
        route: String,
        /// The HTTP status.
        status: u16,
        /// The first line of the body.
        message: String,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("TAILSCALE_TIMEOUT: {0}")]
    Timeout(String),
    /// The answer is not the JSON document expected.
    #[error("TAILSCALE_BAD_RESPONSE: {0}")]
    BadResponse(String),
    /// The CLI ran but failed.
    #[error("TAILSCALE_CLI_FAILED: {0}")]
    Cli(String),
    /// whois knows nobody at that address: not a tailnet peer.
    #[error("TAILSCALE_UNKNOWN_ADDRESS: no tailnet node at {0}")]
    UnknownAddress(String),
}

impl TailscaleError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TailscaleError::NotFound { .. } => "TAILSCALE_NOT_FOUND",
            TailscaleError::SocketRefused(_) => "TAILSCALE_SOCKET_REFUSED",
            TailscaleError::Http { .. } => "TAILSCALE_HTTP_ERROR",
            TailscaleError::Timeout(_) => "TAILSCALE_TIMEOUT",
            TailscaleError::BadResponse(_) => "TAILSCALE_BAD_RESPONSE",
            TailscaleError::Cli(_) => "TAILSCALE_CLI_FAILED",
            TailscaleError::UnknownAddress(_) => "TAILSCALE_UNKNOWN_ADDRESS",
        }
    }
}

/// tailscaled's backend state (`BackendState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    /// Connected to the tailnet.
    Running,
    /// Logged out: `tailscale up` logs in.
    NeedsLogin,
    /// Waiting for an admin to approve this machine.
    NeedsMachineAuth,
    /// Stopped by the user (`tailscale down`).
    Stopped,
    /// Starting up.
    Starting,
    /// tailscaled has no state yet.
    NoState,
    /// A state this scout does not know.
    Other(String),
}

impl BackendState {
    fn parse(text: &str) -> BackendState {
        match text {
            "Running" => BackendState::Running,
            "NeedsLogin" => BackendState::NeedsLogin,
            "NeedsMachineAuth" => BackendState::NeedsMachineAuth,
            "Stopped" => BackendState::Stopped,
            "Starting" => BackendState::Starting,
            "NoState" | "" => BackendState::NoState,
            other => BackendState::Other(other.to_owned()),
        }
    }

    /// The name tailscaled uses.
    pub fn as_str(&self) -> &str {
        match self {
            BackendState::Running => "Running",
            BackendState::NeedsLogin => "NeedsLogin",
            BackendState::NeedsMachineAuth => "NeedsMachineAuth",
            BackendState::Stopped => "Stopped",
            BackendState::Starting => "Starting",
            BackendState::NoState => "NoState",
            BackendState::Other(other) => other,
        }
    }

    /// What a person should do to get to `Running`, if anything.
    pub fn fix_hint(&self) -> Option<&'static str> {
        match self {
            BackendState::Running => None,
            BackendState::NeedsLogin => Some("run `tailscale up` and log in"),
            BackendState::NeedsMachineAuth => {
                Some("approve this machine in the tailnet's admin console")
            }
            BackendState::Stopped => Some("run `tailscale up`"),
            BackendState::Starting | BackendState::NoState => {
                Some("wait for tailscaled to start, or run `tailscale up`")
            }
            BackendState::Other(_) => Some("run `tailscale status` to see what tailscaled wants"),
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tailnet node as a status or whois describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetPeer {
    /// The stable node id (`ID`), kept across key rotations.
    pub stable_id: String,
    /// The machine's host name (may hold spaces and quotes).
    pub host_name: String,
    /// The MagicDNS name (`devbox.tail1234.ts.net.`).
    pub dns_name: String,
    /// The operating system tailscaled reports.
    pub os: String,
    /// The owner's login name; `None` for a tagged node or an unknown user.
    pub login_name: Option<String>,
    /// ACL tags (`tag:mesh-broker`).
    pub tags: Vec<String>,
    /// Its Tailscale IPs.
    pub ips: Vec<IpAddr>,
    /// Whether the coordination server sees it online.
    pub online: bool,
}

/// What tailscaled's status says, as far as discovery cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetStatus {
    /// The backend state.
    pub backend_state: BackendState,
    /// tailscaled's version.
    pub version: String,
    /// The login URL while the backend needs a login.
    pub auth_url: Option<String>,
    /// The tailnet's name.
    pub tailnet_name: Option<String>,
    /// This machine.
    pub self_node: Option<TailnetPeer>,
    /// Every parsed peer, sorted by stable id, at most [`TAILNET_PEERS_MAX`].
    pub peers: Vec<TailnetPeer>,
    /// Why some peer entries were skipped (at most [`SKIPPED_REASONS_MAX`]).
    pub skipped: Vec<String>,
    /// How many peer entries were skipped in all.
    pub n_skipped: usize,
}

impl TailnetStatus {
    /// The peers worth dialing: online, with an IP, carrying one of `tags`
    /// (any peer when `tags` is empty).
    pub fn candidates<'a>(&'a self, tags: &'a [String]) -> impl Iterator<Item = &'a TailnetPeer> {
        self.peers.iter().filter(move |peer| {
            peer.online
                && !peer.ips.is_empty()
                && (tags.is_empty() || peer.tags.iter().any(|tag| tags.contains(tag)))
        })
    }

    /// The peer owning `ip`, if any.
    pub fn peer_at(&self, ip: IpAddr) -> Option<&TailnetPeer> {
        self.peers.iter().find(|peer| peer.ips.contains(&ip))
    }
}

/// The tailnet identities admitted without an invite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmitRule {
    /// Tags; a tagged node matches when it carries one.
    pub tags: Vec<String>,
    /// Login names; an untagged node matches when its owner is one.
    pub users: Vec<String>,
}

impl AdmitRule {
    /// Whether the opt-in is on at all.
    pub fn is_enabled(&self) -> bool {
        !self.tags.is_empty() || !self.users.is_empty()
    }

    /// Whether `node` is admitted. A tagged node is owned by its tags, not
    /// by the person who tagged it, so only the tag list can admit it.
    pub fn admits(&self, node: &TailnetPeer) -> bool {
        if !node.tags.is_empty() {
            return node.tags.iter().any(|tag| self.tags.contains(tag));
        }
        node.login_name.as_ref().is_some_and(|login| {
            self.users
                .iter()
                .any(|user| user.eq_ignore_ascii_case(login))
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawStatus {
    version: String,
    backend_state: String,
    #[serde(rename = "AuthURL")]
    auth_url: String,
    #[serde(rename = "Self")]
    self_node: Option<serde_json::Value>,
    peer: Option<BTreeMap<String, serde_json::Value>>,
    user: Option<BTreeMap<String, RawUser>>,
    current_tailnet: Option<RawTailnet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawTailnet {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawUser {
    login_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPeer {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    host_name: String,
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(rename = "OS", default)]
    os: String,
    #[serde(rename = "UserID", default)]
    user_id: Option<i64>,
    #[serde(rename = "TailscaleIPs", default)]
    tailscale_ips: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    online: bool,
}

/// Parses a status document (`/localapi/v0/status`, `tailscale status --json`).
pub fn parse_status(json: &[u8]) -> Result<TailnetStatus, TailscaleError> {
    let raw: RawStatus = serde_json::from_slice(json)
        .map_err(|err| TailscaleError::BadResponse(format!("status is not a status: {err}")))?;
    let users: BTreeMap<i64, String> = raw
        .user
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, user)| Some((id.parse().ok()?, user.login_name)))
        .filter(|(_, login)| !login.is_empty())
        .collect();
    let mut skipped = Vec::new();
    let mut n_skipped = 0;
    let mut skip = |reason: String| {
        n_skipped += 1;
        if skipped.len() < SKIPPED_REASONS_MAX {
            skipped.push(reason);
        }
    };
    let self_node = raw
        .self_node
        .and_then(|value| peer_of(value, &users, &mut skip, "Self"));
    let mut peers: Vec<TailnetPeer> = raw
        .peer
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(node_key, value)| peer_of(value, &users, &mut skip, &node_key))
        .collect();
    peers.sort_by(|a, b| a.stable_id.cmp(&b.stable_id));
    peers.dedup_by(|a, b| a.stable_id == b.stable_id);
    if peers.len() > TAILNET_PEERS_MAX {
        let extra = peers.len() - TAILNET_PEERS_MAX;
        skip(format!(
            "{extra} peers beyond the first {TAILNET_PEERS_MAX}; filter with discovery.tailscale.tags"
        ));
        peers.truncate(TAILNET_PEERS_MAX);
    }
    Ok(TailnetStatus {
        backend_state: BackendState::parse(&raw.backend_state),
        version: raw.version,
        auth_url: Some(raw.auth_url).filter(|url| !url.is_empty()),
        tailnet_name: raw
            .current_tailnet
            .map(|tailnet| tailnet.name)
            .filter(|name| !name.is_empty()),
        self_node,
        peers,
        skipped,
        n_skipped,
    })
}

fn peer_of(
    value: serde_json::Value,
    users: &BTreeMap<i64, String>,
    skip: &mut impl FnMut(String),
    label: &str,
) -> Option<TailnetPeer> {
    let raw: RawPeer = match serde_json::from_value(value) {
        Ok(raw) => raw,
        Err(err) => {
            skip(format!("peer {label}: {err}"));
            return None;
        }
    };
    if raw.id.is_empty() {
        skip(format!("peer {label}: empty ID"));
        return None;
    }
    let mut ips = Vec::new();
    for text in raw.tailscale_ips.unwrap_or_default() {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => ips.push(ip),
            _ => {
                skip(format!("peer {}: bad Tailscale IP `{text}`", raw.id));
            }
        }
    }
    let tags = raw.tags.unwrap_or_default();
    let login_name = if tags.is_empty() {
        raw.user_id.and_then(|id| users.get(&id).cloned())
    } else {
        None
    };
    Some(TailnetPeer {
        stable_id: raw.id,
        host_name: raw.host_name,
        dns_name: raw.dns_name,
        os: raw.os,
        login_name,
        tags,
        ips,
        online: raw.online,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawWhoIs {
    node: Option<RawWhoIsNode>,
    user_profile: Option<RawUser>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawWhoIsNode {
    #[serde(rename = "StableID")]
    stable_id: String,
    name: String,
    #[serde(rename = "ComputedName")]
    computed_name: String,
    tags: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    online: Option<bool>,
    hostinfo: Option<RawHostinfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RawHostinfo {
    hostname: String,
    #[serde(rename = "OS")]
    os: String,
}

/// Parses a whois answer (`apitype.WhoIsResponse`: `Node`, `UserProfile`).
pub fn parse_whois(json: &[u8]) -> Result<TailnetPeer, TailscaleError> {
    let raw: RawWhoIs = serde_json::from_slice(json)
        .map_err(|err| TailscaleError::BadResponse(format!("whois is not a whois: {err}")))?;
    let node = raw
        .node
        .ok_or_else(|| TailscaleError::BadResponse("whois has no Node".into()))?;
    if node.stable_id.is_empty() {
        return Err(TailscaleError::BadResponse(
            "whois node has no StableID".into(),
        ));
    }
    let tags = node.tags.unwrap_or_default();
    let login_name = raw
        .user_profile
        .map(|user| user.login_name)
        .filter(|login| !login.is_empty() && tags.is_empty());
    let hostinfo = node.hostinfo.unwrap_or_default();
    let ips = node
        .addresses
        .unwrap_or_default()
        .iter()
        .filter_map(|prefix| prefix.split('/').next()?.parse().ok())
        .collect();
    Ok(TailnetPeer {
        stable_id: node.stable_id,
        host_name: if hostinfo.hostname.is_empty() {
            node.computed_name
        } else {
            hostinfo.hostname
        },
        dns_name: node.name,
        os: hostinfo.os,
        login_name,
        tags,
        ips,
        online: node.online.unwrap_or(true),
    })
}

/// How the last answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// tailscaled's LocalAPI socket.
    LocalApi,
    /// The `tailscale` CLI.
    Cli,
}

impl Via {
    /// For people.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::LocalApi => "LocalAPI socket",
            Via::Cli => "tailscale CLI",
        }
    }
}

/// Asks tailscaled, over its socket or through its CLI.
#[derive(Debug, Clone)]
pub struct TailscaleClient {
    /// The LocalAPI socket.
    pub socket: PathBuf,
    /// The CLI: a path, or a name looked up on `PATH`.
    pub cli: PathBuf,
    /// One call's deadline.
    pub timeout: Duration,
}

impl TailscaleClient {
    /// A client for `socket` (the platform default when `None`) with the
    /// CLI found as `tailscale` on `PATH`.
    pub fn new(socket: Option<PathBuf>) -> TailscaleClient {
        TailscaleClient {
            socket: socket.unwrap_or_else(default_socket_path),
            cli: PathBuf::from("tailscale"),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The peer list.
    pub async fn status(&self) -> Result<(TailnetStatus, Via), TailscaleError> {
        let (json, via) = self
            .ask(STATUS_PATH.to_owned(), &["status", "--json"])
            .await?;
        Ok((parse_status(&json)?, via))
    }

    /// Who is at `addr` (an address a connection came from).
    pub async fn whois(&self, addr: SocketAddr) -> Result<TailnetPeer, TailscaleError> {
        let query = format!("{WHOIS_PATH}?addr={addr}");
        let ip = addr.ip().to_string();
        let (json, _) = self.ask(query, &["whois", "--json", &ip]).await?;
        parse_whois(&json)
    }

    /// The socket first; the CLI when the socket is missing or refuses.
    async fn ask(
        &self,
        route: String,
        cli_args: &[&str],
    ) -> Result<(Vec<u8>, Via), TailscaleError> {
        let socket_error = if self.socket.exists() {
            match http::get_unix(&self.socket, LOCAL_API_HOST, &route, self.timeout).await {
                Ok(response) if response.status == 200 => {
                    return Ok((response.body, Via::LocalApi));
                }
                Ok(response) if response.status == 404 && route.starts_with(WHOIS_PATH) => {
                    return Err(TailscaleError::UnknownAddress(
                        route.rsplit('=').next().unwrap_or_default().to_owned(),
                    ));
                }
                Ok(response) => {
                    let message = String::from_utf8_lossy(&response.body)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    return Err(TailscaleError::Http {
                        route: route.split('?').next().unwrap_or_default().to_owned(),
                        status: response.status,
                        message,
                    });
                }
                Err(HttpError::Connect { path, cause }) => {
                    TailscaleError::SocketRefused(format!("{path}: {cause}"))
                }
                Err(HttpError::Io { path, cause }) => {
                    TailscaleError::SocketRefused(format!("{path}: {cause}"))
                }
                Err(HttpError::Timeout { path, timeout_ms }) => {
                    return Err(TailscaleError::Timeout(format!(
                        "{path} did not answer within {timeout_ms} ms"
                    )));
                }
                Err(HttpError::Malformed(message)) => {
                    return Err(TailscaleError::BadResponse(message));
                }
            }
        } else {
            TailscaleError::NotFound {
                socket: self.socket.display().to_string(),
                cli: self.cli.display().to_string(),
            }
        };
        let Some(program) = find_program(&self.cli) else {
            return Err(socket_error);
        };
        let json = run_cli(&program, cli_args, self.timeout).await?;
        Ok((json, Via::Cli))
    }
}

/// Runs the CLI with a deadline; its stdout is the document.
async fn run_cli(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<u8>, TailscaleError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|err| TailscaleError::Cli(format!("{}: {err}", program.display())))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Err(TailscaleError::Cli(format!("{}: {err}", program.display())));
        }
        Err(_) => {
            return Err(TailscaleError::Timeout(format!(
                "`{} {}` did not finish within {} ms",
                program.display(),
                args.join(" "),
                timeout.as_millis()
            )));
        }
    };
    if output.stdout.len() > http::RESPONSE_BYTES_MAX {
        return Err(TailscaleError::BadResponse(format!(
            "`{}` printed more than {} bytes",
            program.display(),
            http::RESPONSE_BYTES_MAX
        )));
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default().trim().to_owned();
        if args.first() == Some(&"whois") && output.stdout.is_empty() {
            return Err(TailscaleError::UnknownAddress(format!(
                "{} ({first})",
                args.last().unwrap_or(&"")
            )));
        }
        return Err(TailscaleError::Cli(format!(
            "`{} {}` exited with {}: {first}",
            program.display(),
            args.join(" "),
            output.status
        )));
    }
    Ok(output.stdout)
}

/// Finds a program as a shell would: a path with a `/` as is, else the first
/// executable of that name on `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_owned());
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/tailscale/status.json");
        std::fs::read(&path).unwrap_or_else(|err| {
            panic!(
                "the shared fixture {} is needed beside the repository: {err}",
                path.display()
            )
        })
    }

    #[test]
    fn the_fixture_parses_with_peers_keyed_by_stable_id() {
        let status = parse_status(&fixture()).unwrap();
        assert_eq!(status.backend_state, BackendState::Running);
        assert_eq!(status.tailnet_name.as_deref(), Some("alice@example.com"));
        let ids: Vec<&str> = status
            .peers
            .iter()
            .map(|peer| peer.stable_id.as_str())
            .collect();
        assert_eq!(ids, ["nCiRunr11CNTRL", "nDeskT0p11CNTRL", "nPh0ne11CNTRL"]);
        let devbox = &status.peers[1];
        assert_eq!(devbox.host_name, "devbox");
        assert_eq!(devbox.tags, ["tag:mesh-broker"]);
        assert_eq!(devbox.login_name, None, "tagged nodes have no owner");
        assert_eq!(
            devbox.ips,
            [
                "100.88.12.34".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0::9001:c22".parse().unwrap()
            ]
        );
        let phone = &status.peers[2];
        assert_eq!(phone.host_name, "Alice's iPhone");
        assert_eq!(phone.login_name.as_deref(), Some("tagged-devices"));
        assert_eq!(status.self_node.as_ref().unwrap().host_name, "laptop");
        assert_eq!(status.n_skipped, 0);
    }

    #[test]
    fn candidates_are_online_and_match_the_tag_filter() {
        let status = parse_status(&fixture()).unwrap();
        let all: Vec<&str> = status
            .candidates(&[])
            .map(|peer| peer.host_name.as_str())
            .collect();
        assert_eq!(all, ["devbox", "Alice's iPhone"], "ci-runner is offline");
        let tags = vec!["tag:mesh-broker".to_owned()];
        let tagged: Vec<&str> = status
            .candidates(&tags)
            .map(|peer| peer.host_name.as_str())
            .collect();
        assert_eq!(tagged, ["devbox"]);
    }

    #[test]
    fn a_tailnet_of_one_has_a_null_peer_map() {
        let json = br#"{"BackendState":"Running","Peer":null,"Self":{"ID":"n1","Online":true}}"#;
        let status = parse_status(json).unwrap();
        assert!(status.peers.is_empty());
    }

    #[test]
    fn unknown_and_missing_fields_are_tolerated() {
        let json = br#"{"BackendState":"Running","Brand":{"New":1},"Peer":{
            "nodekey:a":{"ID":"nA","TailscaleIPs":["100.64.0.1"],"Online":true,"Future":[1,2]},
            "nodekey:b":{"ID":"nB"}}}"#;
        let status = parse_status(json).unwrap();
        assert_eq!(status.peers.len(), 2);
        assert_eq!(status.peers[1].ips, Vec::<IpAddr>::new());
        assert!(!status.peers[1].online);
        assert_eq!(status.candidates(&[]).count(), 1);
    }

    #[test]
    fn bad_peer_entries_are_skipped_and_reported() {
        let json = br#"{"BackendState":"Running","Peer":{
            "nodekey:a":{"ID":"nA","TailscaleIPs":["100.64.0.1","not-an-ip"],"Online":true},
            "nodekey:b":{"HostName":"no id"},
            "nodekey:c":{"ID":"nC","Online":"yes"},
            "nodekey:d":[1,2,3]}}"#;
        let status = parse_status(json).unwrap();
        assert_eq!(status.peers.len(), 1);
        assert_eq!(status.peers[0].ips.len(), 1);
        assert_eq!(status.n_skipped, 4, "{:?}", status.skipped);
    }

    #[test]
    fn a_backend_that_needs_login_says_so() {
        let json =
            br#"{"BackendState":"NeedsLogin","AuthURL":"https://login.example/a/b","Peer":null}"#;
        let status = parse_status(json).unwrap();
        assert_eq!(status.backend_state, BackendState::NeedsLogin);
        assert!(
            status
                .backend_state
                .fix_hint()
                .unwrap()
                .contains("tailscale up")
        );
        assert_eq!(
            status.auth_url.as_deref(),
            Some("https://login.example/a/b")
        );
    }

    #[test]
    fn documents_that_are_not_statuses_are_errors() {
        for json in [&b"not json"[..], b"[1,2]", b"{\"Peer\": 5}", b""] {
            let err = parse_status(json).unwrap_err();
            assert_eq!(err.code(), "TAILSCALE_BAD_RESPONSE");
        }
    }

    #[test]
    fn whois_gives_tags_or_the_owner() {
        let tagged = br#"{"Node":{"ID":5,"StableID":"nDeskT0p11CNTRL","Name":"devbox.tail1234.ts.net.",
            "Tags":["tag:mesh-broker"],"Addresses":["100.88.12.34/32"],"Hostinfo":{"Hostname":"devbox","OS":"linux"}},
            "UserProfile":{"ID":1,"LoginName":"tagged-devices"},"CapMap":{}}"#;
        let node = parse_whois(tagged).unwrap();
        assert_eq!(node.stable_id, "nDeskT0p11CNTRL");
        assert_eq!(node.tags, ["tag:mesh-broker"]);
        assert_eq!(node.login_name, None);
        assert_eq!(node.ips, ["100.88.12.34".parse::<IpAddr>().unwrap()]);
        let owned = br#"{"Node":{"StableID":"nL4p","Name":"laptop."},"UserProfile":{"LoginName":"alice@example.com"}}"#;
        let node = parse_whois(owned).unwrap();
        assert_eq!(node.login_name.as_deref(), Some("alice@example.com"));
        assert!(parse_whois(br#"{"UserProfile":{}}"#).is_err());
        assert!(parse_whois(b"<html>").is_err());
    }

    #[test]
    fn admit_rules_match_tags_for_tagged_nodes_and_owners_otherwise() {
        let rule = AdmitRule {
            tags: vec!["tag:mesh-broker".into()],
            users: vec!["Alice@Example.com".into()],
        };
        let node = |tags: &[&str], login: Option<&str>| TailnetPeer {
            stable_id: "n".into(),
            host_name: String::new(),
            dns_name: String::new(),
            os: String::new(),
            login_name: login.map(str::to_owned),
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            ips: Vec::new(),
            online: true,
        };
        assert!(rule.admits(&node(&["tag:mesh-broker"], None)));
        assert!(!rule.admits(&node(&["tag:other"], Some("alice@example.com"))));
        assert!(rule.admits(&node(&[], Some("alice@example.com"))));
        assert!(!rule.admits(&node(&[], Some("mallory@example.com"))));
        assert!(!rule.admits(&node(&[], None)));
        assert!(!AdmitRule::default().is_enabled());
        assert!(!AdmitRule::default().admits(&node(&[], Some("alice@example.com"))));
    }
}
