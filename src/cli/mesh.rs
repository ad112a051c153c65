//! `scout mesh invite|join|revoke` and `scout peers`.
//!
//! One rule for where a change happens: when the broker of this home runs,
//! the command asks it over the local API; when it does not, the command
//! takes the home lock and makes the same change on the store itself.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use scout_mesh::names::{Label, NamePart};
use scout_mesh::pairing::ShortCode;
use scout_mesh::wire::{Invite, MeshId};
use serde::{Deserialize, Serialize};

use super::client::{BrokerClient, ClientError};
use super::output::table;
use super::{Context, UsageError};
use crate::config::settings;
use crate::daemon::mesh::pairing::IssuedShortCode;
use crate::daemon::mesh::{self, IssuedCode, MeshIdentity, PeerView};
use crate::identity;
use crate::store::{Store, StoreOptions};

/// `scout mesh …`
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Print a one-time, expiring code another broker joins with.
    Invite(InviteArgs),
    /// Join the mesh of an invite code (leaving the current one).
    Join(JoinArgs),
    /// Revoke a member: it is refused everywhere from now on.
    Revoke(RevokeArgs),
}

/// Flags of `scout mesh invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// How long the code is valid: `30s`, `10m`, `2h`, `7d` (a short code
    /// lives at most an hour).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub ttl: String,
    /// Print a short code to read aloud (`ABCD-2345`) instead of a long one:
    /// it carries no address, so the joiner finds this broker on the LAN or
    /// the tailnet (or with `--peer`); it is valid once, and a wrong attempt
    /// burns it. Needs the running broker, which answers the exchange.
    #[arg(long)]
    pub short: bool,
}

/// Flags of `scout mesh join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The code printed by `scout mesh invite` on a member: a long
    /// `scout1-…` code, or a short one like `ABCD-2345`.
    pub code: String,
    /// For a short code: where the inviter listens (`HOST:PORT`), when
    /// mDNS and the tailnet cannot find it. Repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
}

/// Flags of `scout mesh revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The member's node name or node id.
    pub node: String,
    /// Why (kept in the revocation record).
    #[arg(long, default_value = "revoked by an operator")]
    pub reason: String,
}

/// Runs `scout mesh …`.
pub fn run(command: MeshCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        MeshCommand::Invite(args) => invite(args, context),
        MeshCommand::Join(args) => {
            let joined = join_with(&args.code, &args.peers, context)?;
            context.printer.emit(&joined, || {
                format!(
                    "joined mesh {}\n{}\n",
                    joined.mesh_id,
                    if joined.via_broker {
                        "the broker is syncing with its new peers now"
                    } else {
                        "start the broker (`scout up`) to sync with the mesh"
                    }
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Revoke(args) => revoke(args, context),
    }
}

/// Parses `30s`, `10m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, UsageError> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|ch: char| !ch.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number.parse().map_err(|_| {
        UsageError::new(
            "INVALID_DURATION",
            format!("`{text}` is not a duration like 30s, 10m, 2h or 7d"),
        )
    })?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(UsageError::new(
                "INVALID_DURATION",
                format!("`{text}` has an unknown unit; use s, m, h or d"),
            ));
        }
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
}

/// Everything an offline mesh change needs.
struct Offline {
    identity: MeshIdentity,
    store: Store,
    _lock: std::fs::File,
}

fn offline(context: &Context, lock: std::fs::File) -> anyhow::Result<Offline> {
    let home = &context.home;
    let settings = settings::load_required(&home.settings_path())?.value;
    let node_name = Label::parse(&settings.node_name, NamePart::Node)?;
    let key = identity::load_node_key(&home.node_key_path())?;
    let options = StoreOptions {
        env: context.env.clone(),
        // Turns a holder runs on while the broker is down stay running.
        held_invocations: crate::holder::journal::held_invocations(
            &home.turns_dir(),
            &home.holders_dir(),
        ),
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(home.store_path(), options)
        .with_context(|| format!("cannot open the store {}", home.store_path().display()))?;
    Ok(Offline {
        identity: key.mesh_identity(node_name),
        store,
        _lock: lock,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn api_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api { code, message, .. } => anyhow::anyhow!("{code}: {message}"),
        other => other.into(),
    }
}

fn invite(args: InviteArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let ttl = parse_duration(&args.ttl)?;
    if args.short {
        return invite_short(ttl, context);
    }
    let issued: IssuedCode = match BrokerClient::running(context)? {
        Some(client) => client
            .post(
                "/v1/mesh/invites",
                &serde_json::json!({ "ttl_ms": u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX) }),
            )
            .map_err(api_error)?,
        None => {
            let Some(lock) = crate::daemon::try_lock_home(&context.home)? else {
                anyhow::bail!("the broker of this home is starting or not answering; try again");
            };
            let offline = offline(context, lock)?;
            let settings = settings::load_required(&context.home.settings_path())?.value;
            let mesh_file = mesh::load_mesh_file(&context.home)?
                .context("this broker has no mesh yet; run `scout up` once (or `scout setup`)")?;
            let mesh_id = MeshId::parse(&mesh_file.value.mesh_id)?;
            let bind = std::net::SocketAddr::from(([0, 0, 0, 0], settings.mesh_port));
            let addresses = mesh::announce_addresses(bind).iter().map(ToString::to_string).collect();
            let now = context.env.now_unix_ms();
            let issued = runtime()?.block_on(mesh::offline::invite(&offline.identity, &offline.store, mesh_id, addresses, ttl, now))?;
            offline.store.close()?;
            issued
        }
    };
    context.printer.emit(&issued, || {
        let minutes = issued
            .expires_at_ms
            .saturating_sub(context.env.now_unix_ms())
            / 60_000;
        format!(
            "{}\n\nvalid once, for about {minutes} min; on the joining machine run:\n  scout mesh join {}\n(or `scout setup --join {}` on a fresh machine)\n",
            issued.code, issued.code, issued.code
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn invite_short(ttl: Duration, context: &Context) -> anyhow::Result<ExitCode> {
    let Some(client) = BrokerClient::running(context)? else {
        return Err(UsageError::new(
            "BROKER_NOT_RUNNING",
            "BROKER_NOT_RUNNING: a short code is answered by the running broker; start it with `scout up`, or use the long code of `scout mesh invite`",
        )
        .into());
    };
    let issued: IssuedShortCode = client
        .post(
            "/v1/mesh/invites",
            &serde_json::json!({
                "ttl_ms": u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                "short": true,
            }),
        )
        .map_err(api_error)?;
    context.printer.emit(&issued, || {
        let minutes = issued
            .expires_at_ms
            .saturating_sub(context.env.now_unix_ms())
            .div_ceil(60_000);
        format!(
            "{}\n\nvalid once, for about {minutes} min, while this broker runs; a wrong attempt burns it.\non the joining machine (same LAN or tailnet) run:\n  scout mesh join {}\n(add `--peer HOST:PORT` when discovery cannot find this broker)\n",
            issued.code, issued.code
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What a join did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Joined {
    /// The mesh joined.
    pub mesh_id: String,
    /// Whether the running broker did it (and is syncing already).
    #[serde(default)]
    pub via_broker: bool,
}

/// Joins with a code: through the running broker, or offline.
pub fn join(code: &str, context: &Context) -> anyhow::Result<Joined> {
    join_with(code, &[], context)
}

/// Joins with a long or a short code (told apart by their shape); `peers`
/// are where a short code's inviter listens, when given.
pub fn join_with(code: &str, peers: &[String], context: &Context) -> anyhow::Result<Joined> {
    if ShortCode::looks_like(code) {
        return join_short(code, peers, context);
    }
    let invite = Invite::from_code(code).map_err(|err| UsageError::new("INVALID_INVITE", err.0))?;
    if let Some(client) = BrokerClient::running(context)? {
        let mut joined: Joined = client
            .post("/v1/mesh/join", &serde_json::json!({ "code": code }))
            .map_err(api_error)?;
        joined.via_broker = true;
        return Ok(joined);
    }
    let Some(lock) = crate::daemon::try_lock_home(&context.home)? else {
        anyhow::bail!("the broker of this home is starting or not answering; try again");
    };
    let offline = offline(context, lock)?;
    let now = context.env.now_unix_ms();
    let mesh_id = runtime()?.block_on(mesh::offline::join(
        &context.home,
        &offline.identity,
        &offline.store,
        &invite,
        now,
    ))?;
    offline.store.close()?;
    Ok(Joined {
        mesh_id: mesh_id.to_string(),
        via_broker: false,
    })
}

fn join_short(code: &str, peers: &[String], context: &Context) -> anyhow::Result<Joined> {
    let short = ShortCode::parse(code)
        .map_err(|err| UsageError::new("INVALID_SHORT_CODE", err.to_string()))?;
    if let Some(client) = BrokerClient::running(context)? {
        let mut joined: Joined = client
            .post(
                "/v1/mesh/join",
                &serde_json::json!({ "code": short.display(), "peers": peers }),
            )
            .map_err(api_error)?;
        joined.via_broker = true;
        return Ok(joined);
    }
    let Some(lock) = crate::daemon::try_lock_home(&context.home)? else {
        anyhow::bail!("the broker of this home is starting or not answering; try again");
    };
    let offline = offline(context, lock)?;
    let now = context.env.now_unix_ms();
    let mesh_id = runtime()?
        .block_on(mesh::pairing::join_offline(
            &context.home,
            &offline.identity,
            &offline.store,
            &short,
            peers,
            now,
        ))
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    offline.store.close()?;
    Ok(Joined {
        mesh_id: mesh_id.to_string(),
        via_broker: false,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Revoked {
    revoked: String,
}

fn revoke(args: RevokeArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let revoked: Revoked = match BrokerClient::running(context)? {
        Some(client) => client
            .post(
                "/v1/mesh/revoke",
                &serde_json::json!({ "node": args.node, "reason": args.reason }),
            )
            .map_err(api_error)?,
        None => {
            let Some(lock) = crate::daemon::try_lock_home(&context.home)? else {
                anyhow::bail!("the broker of this home is starting or not answering; try again");
            };
            let offline = offline(context, lock)?;
            let now = context.env.now_unix_ms();
            let id = runtime()?.block_on(mesh::offline::revoke(
                &context.home,
                &offline.identity,
                &offline.store,
                &args.node,
                &args.reason,
                now,
            ))?;
            let entry = crate::store::audit::NewAuditEntry {
                ts_ms: i64::try_from(now).unwrap_or(i64::MAX),
                actor: "operator".to_owned(),
                action: "mesh_revoke".to_owned(),
                subject: id.to_string(),
                detail: serde_json::json!({ "reason": args.reason, "offline": true }),
            };
            runtime()?.block_on(offline.store.append_audit(entry))?;
            offline.store.close()?;
            Revoked {
                revoked: id.to_string(),
            }
        }
    };
    context.printer.emit(&revoked, || {
        format!(
            "revoked {}; every broker refuses it once the revocation reaches it\n",
            revoked.revoked
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Flags of `scout peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {}

#[derive(Debug, Serialize, Deserialize)]
struct PeersReport {
    node_id: String,
    node_name: String,
    mesh_id: String,
    broker_running: bool,
    peers: Vec<PeerView>,
}

/// Runs `scout peers`.
pub fn peers(_args: PeersArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let report = match BrokerClient::running(context)? {
        Some(client) => {
            let live: crate::api::Peers = client.get("/v1/peers").map_err(api_error)?;
            PeersReport {
                node_id: live.node_id,
                node_name: live.node_name,
                mesh_id: live.mesh_id,
                broker_running: true,
                peers: live.peers,
            }
        }
        None => offline_peers(context)?,
    };
    context
        .printer
        .emit(&report, || render_peers(&report, context.env.now_unix_ms()))?;
    Ok(ExitCode::SUCCESS)
}

/// Members as the store knows them, for when no broker runs.
fn offline_peers(context: &Context) -> anyhow::Result<PeersReport> {
    let home = &context.home;
    let settings = settings::load_required(&home.settings_path())?.value;
    let key = identity::load_node_key(&home.node_key_path())?;
    let node_name = Label::parse(&settings.node_name, NamePart::Node)?;
    let identity = key.mesh_identity(node_name);
    let mesh_id = mesh::load_mesh_file(home)?
        .map(|file| file.value.mesh_id)
        .unwrap_or_default();
    let store = Store::open_read_only(home.store_path())
        .with_context(|| format!("cannot read the store {}", home.store_path().display()))?;
    let replica = mesh::offline::stored_replica(home, &identity, &store)?;
    let peers = mesh::peer_views(
        replica.registry(),
        &identity.node_id,
        &Default::default(),
        None,
    );
    Ok(PeersReport {
        node_id: identity.node_id.to_string(),
        node_name: identity.node_name.as_str().to_owned(),
        mesh_id,
        broker_running: false,
        peers,
    })
}

fn render_peers(report: &PeersReport, now: u64) -> String {
    let mut out = format!(
        "node {} ({}) in mesh {}{}\n",
        report.node_name,
        short(&report.node_id),
        short(&report.mesh_id),
        if report.broker_running {
            ""
        } else {
            " (broker not running: states are from the store)"
        }
    );
    if report.peers.is_empty() {
        out.push_str("no other members yet; invite one with `scout mesh invite`\n");
        return out;
    }
    let rows: Vec<Vec<String>> = report
        .peers
        .iter()
        .map(|peer| {
            let addresses: Vec<String> = peer
                .addresses
                .iter()
                .map(|addr| {
                    let sources: Vec<String> = addr
                        .sources
                        .iter()
                        .map(|source| format!("{source:?}").to_lowercase())
                        .collect();
                    format!("{} ({})", addr.addr, sources.join("+"))
                })
                .collect();
            vec![
                peer.name.clone(),
                short(&peer.node_id),
                if peer.status.is_empty() {
                    mesh::peer_status(&peer.state).to_owned()
                } else {
                    peer.status.clone()
                },
                peer.last_heartbeat_ms
                    .map(|seen| ago(now.saturating_sub(seen)))
                    .unwrap_or_else(|| "never".into()),
                peer.state.to_owned(),
                peer.rtt_ms
                    .map(|rtt| format!("{rtt:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                peer.last_seen_ms
                    .map(|seen| ago(now.saturating_sub(seen)))
                    .unwrap_or_else(|| "never".into()),
                peer_addresses(peer, &addresses),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "NODE ID",
            "STATUS",
            "LAST HEARTBEAT",
            "CONNECTION",
            "RTT",
            "LAST SEEN",
            "ADDRESSES",
        ],
        &rows,
    ));
    out
}

/// The ADDRESSES cell: the addresses, and for a member none of them
/// reaches, the members it is reached through.
fn peer_addresses(peer: &PeerView, addresses: &[String]) -> String {
    let mut cell = if addresses.is_empty() {
        "-".to_owned()
    } else {
        addresses.join(", ")
    };
    if peer.state == "unreachable" && !peer.relays.is_empty() {
        cell.push_str(&format!("; through {}", peer.relays.join(", ")));
    }
    cell
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn ago(ms: u64) -> String {
    match ms / 1000 {
        0 => "just now".into(),
        secs @ 1..=59 => format!("{secs}s ago"),
        secs @ 60..=3599 => format!("{}m ago", secs / 60),
        secs @ 3600..=86_399 => format!("{}h ago", secs / 3600),
        secs => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_member_shows_the_members_it_is_reached_through() {
        let mut peer = PeerView {
            node_id: "0123456789abcdef0123456789abcdef".into(),
            name: "devbox".into(),
            state: "unreachable".into(),
            addresses: Vec::new(),
            last_seen_ms: None,
            rtt_ms: None,
            connected_since_ms: None,
            status: "offline".into(),
            last_heartbeat_ms: None,
            relays: vec!["laptop".into(), "nas".into()],
        };
        let addresses = vec!["192.0.2.7:4433 (learned)".to_owned()];
        assert_eq!(
            peer_addresses(&peer, &addresses),
            "192.0.2.7:4433 (learned); through laptop, nas"
        );
        peer.state = "idle".into();
        assert_eq!(
            peer_addresses(&peer, &addresses),
            "192.0.2.7:4433 (learned)"
        );
        assert_eq!(peer_addresses(&peer, &[]), "-");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
