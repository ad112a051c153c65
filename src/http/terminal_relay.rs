//! A live terminal of an agent on another broker, through the mesh:
//! `GET /ws/mesh/agents/{instance}/terminal` (a WebSocket, the same framing
//! as `/ws/agents/{id}/terminal`: raw output text, JSON control messages,
//! keystrokes, `resize`) on the viewer's broker opens a QUIC stream to the
//! owner (`TerminalOpen`), and the owner serves it with the code that
//! serves its own terminal WebSocket, the relay's frames standing in for
//! the socket, so lag handling, redraws and the transcript view are the
//! owner's, unchanged.
//!
//! Each viewer has its own stream; nothing is buffered without bound:
//! QUIC's flow control holds the owner's writer when the viewer is slow,
//! the owner then skips to a fresh screen (`lagged`) as it does for any
//! slow client, and the agent never waits. The owner
//! serves only members (the mesh checks the peer on every stream), at most
//! [`TERMINAL_RELAYS_MAX`] relays at once and
//! [`TERMINAL_RELAYS_PER_VIEWER_MAX`] per viewer broker, and takes from a
//! viewer no frame larger than one terminal message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use quinn::{RecvStream, SendStream};
use scout_mesh::wire::{MeshFrame, NodeId, decode_frame, encode_frame, terminal_relay};
use scout_net::transport::frame::{read_frame, read_frame_body, read_frame_len, write_frame};

use super::error::{ApiError, PathId};
use super::runtime::{WS_MESSAGE_BYTES_MAX, WS_SEND_TIMEOUT, WsResult, serve_terminal, upgrade};
use crate::daemon::BrokerState;
use crate::pty::session::AgentStatus;

/// Terminal relays one owner serves at once: a handful of people watching
/// a handful of agents; each holds a stream and a subscription to the
/// agent's output.
pub const TERMINAL_RELAYS_MAX: usize = 32;

/// Relays one viewer broker may hold on this owner at once, so one member
/// cannot take every slot: several people at one machine, a few agents
/// each.
pub const TERMINAL_RELAYS_PER_VIEWER_MAX: usize = 8;

/// How long the owner may take to accept a relay: a stream's open and one
/// round trip, with room for a busy owner.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame a viewer may send: one WebSocket message of keystrokes or
/// a control frame, as the owner's own terminal WebSocket accepts, plus
/// the tag byte.
const VIEWER_FRAME_BYTES_MAX: usize = WS_MESSAGE_BYTES_MAX + 1;

/// The relays an owner serves now, in all and per viewer broker.
#[derive(Debug, Default)]
pub struct RelaySlots {
    by_viewer: Mutex<HashMap<NodeId, usize>>,
}

impl RelaySlots {
    /// Takes a slot for `viewer`, or says which limit is reached.
    fn take(self: &Arc<Self>, viewer: &NodeId) -> Result<RelaySlot, String> {
        let mut by_viewer = self.by_viewer.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = by_viewer.values().sum();
        if total >= TERMINAL_RELAYS_MAX {
            return Err(format!(
                "this broker serves {TERMINAL_RELAYS_MAX} terminal relays already"
            ));
        }
        let mine = by_viewer.entry(viewer.clone()).or_insert(0);
        if *mine >= TERMINAL_RELAYS_PER_VIEWER_MAX {
            return Err(format!(
                "your broker holds {TERMINAL_RELAYS_PER_VIEWER_MAX} terminal relays on this one already"
            ));
        }
        *mine += 1;
        Ok(RelaySlot {
            slots: self.clone(),
            viewer: viewer.clone(),
        })
    }
}

/// One relay's slot, given back when the relay ends.
struct RelaySlot {
    slots: Arc<RelaySlots>,
    viewer: NodeId,
}

impl Drop for RelaySlot {
    fn drop(&mut self) {
        let mut by_viewer = self
            .slots
            .by_viewer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_viewer.get_mut(&self.viewer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_viewer.remove(&self.viewer);
            }
        }
    }
}

/// The routes of this family (at the root, behind the token check).
pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new().route("/ws/mesh/agents/{instance}/terminal", get(remote_terminal))
}

/// The owner's refusal codes the viewer passes on as they are.
fn known_code(code: &str) -> &'static str {
    match code {
        "AGENT_NOT_RUNNING" => "AGENT_NOT_RUNNING",
        "AGENT_NOT_FOUND" => "AGENT_NOT_FOUND",
        "TERMINAL_RELAYS_BUSY" => "TERMINAL_RELAYS_BUSY",
        "TERMINAL_UNAVAILABLE" => "TERMINAL_UNAVAILABLE",
        "REVOKED_PEER" => "REVOKED_PEER",
        "UNKNOWN_PEER" => "UNKNOWN_PEER",
        _ => "TERMINAL_REFUSED",
    }
}

fn unreachable(owner: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "PEER_UNREACHABLE",
        format!("cannot reach the owner `{owner}` over the mesh: {detail}"),
    )
}

async fn remote_terminal(
    State(state): State<Arc<BrokerState>>,
    PathId(instance): PathId,
    ws: WsResult,
) -> Result<Response, ApiError> {
    let ws = upgrade(ws)?;
    let Some(view) = state
        .mesh
        .instances()
        .into_iter()
        .find(|view| view.name == instance)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "AGENT_NOT_FOUND",
            format!("no instance `{instance}` in the mesh's registry"),
        ));
    };
    if view.local {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "AGENT_LOCAL",
            format!("`{instance}` is this broker's: use /ws/agents/{{id}}/terminal"),
        ));
    }
    let owner = state
        .mesh
        .member_id(&view.owner)
        .map_err(|err| unreachable(&view.owner, err))?;
    let (mut send, mut recv, guard) = tokio::time::timeout(OPEN_TIMEOUT, async {
        let (mut send, mut recv, guard) = state.mesh.open_stream(&owner).await?;
        let open = MeshFrame::TerminalOpen {
            instance: instance.clone(),
        };
        write_frame(&mut send, &encode_frame(&open))
            .await
            .map_err(|err| err.to_string())?;
        let answer = read_frame(&mut recv).await.map_err(|err| err.to_string())?;
        let answer = decode_frame(&answer).map_err(|err| err.to_string())?;
        Ok::<_, String>((send, recv, answer, guard))
    })
    .await
    .map_err(|_| unreachable(&view.owner, "no answer in time"))?
    .map_err(|err| unreachable(&view.owner, err))
    .and_then(|(send, recv, answer, guard)| match answer {
        MeshFrame::TerminalAccepted => Ok((send, recv, guard)),
        MeshFrame::Error(error) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            known_code(error.code.as_str()),
            format!("the owner `{}` refused: {}", view.owner, error.message),
        )),
        other => Err(unreachable(
            &view.owner,
            format!("unexpected answer `{}`", other.name()),
        )),
    })?;
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        let to_owner = async {
            while let Some(Ok(message)) = stream.next().await {
                let (tag, bytes) = match message {
                    Message::Text(text) => (terminal_relay::TAG_TEXT, text.as_bytes().to_vec()),
                    Message::Binary(bytes) => (terminal_relay::TAG_BINARY, bytes.to_vec()),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if write_frame(&mut send, &tagged(tag, &bytes)).await.is_err() {
                    break;
                }
            }
            let _ = send.finish();
        };
        let to_viewer = async {
            while let Ok(body) = read_frame(&mut recv).await {
                let Some((&tag, bytes)) = body.split_first() else {
                    continue;
                };
                if tag != terminal_relay::TAG_TEXT {
                    continue;
                }
                let text = String::from_utf8_lossy(bytes).into_owned();
                let sent = tokio::time::timeout(
                    WS_SEND_TIMEOUT,
                    sink.send(Message::Text(Utf8Bytes::from(text))),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            let _ = sink.close().await;
        };
        // Whichever side ends first ends the relay.
        tokio::select! {
            () = to_owner => {}
            () = to_viewer => {}
        }
        // The connection to the owner was in use until here.
        drop(guard);
    }))
}

fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes.len() + 1);
    body.push(tag);
    body.extend_from_slice(bytes);
    body
}

async fn refuse(send: &mut SendStream, code: &'static str, message: String) {
    let _ = write_frame(send, &encode_frame(&MeshFrame::error(code, message))).await;
    let _ = send.finish();
}

/// The owner's side: serves `instance`'s terminal to the peer `viewer` on
/// the stream it opened, with the same code that serves a WebSocket
/// client ([`super::runtime::serve_terminal`]): the relay frames are its
/// sink and its source.
pub async fn serve_relay(
    state: Arc<BrokerState>,
    slots: Arc<RelaySlots>,
    viewer: NodeId,
    instance: String,
    mut send: SendStream,
    recv: RecvStream,
) {
    let _slot = match slots.take(&viewer) {
        Ok(slot) => slot,
        Err(message) => return refuse(&mut send, "TERMINAL_RELAYS_BUSY", message).await,
    };
    let session = state
        .runtime
        .list()
        .into_iter()
        .find(|agent| {
            agent.name == instance
                && !matches!(agent.status, AgentStatus::Stopped | AgentStatus::Error)
        })
        .and_then(|agent| state.runtime.session(&agent.id).ok());
    let Some(session) = session else {
        let message = format!(
            "{instance} has no running session on this broker yet; it starts with its first turn"
        );
        return refuse(&mut send, "AGENT_NOT_RUNNING", message).await;
    };
    // Attach before accepting, so nothing written after the viewer sees
    // "connected" is missed.
    let attachment = session.attach();
    if write_frame(&mut send, &encode_frame(&MeshFrame::TerminalAccepted))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(%viewer, %instance, "serving a terminal relay");
    serve_terminal(session, attachment, relay_sink(send), relay_source(recv)).await;
}

/// The owner's frames to the viewer as a sink of terminal messages: text
/// goes out tagged, a close finishes the stream.
fn relay_sink(send: SendStream) -> impl Sink<Message, Error = RelayGone> + Unpin {
    Box::pin(futures_util::sink::unfold(
        send,
        |mut send, message: Message| async move {
            match message {
                Message::Text(text) => {
                    write_frame(
                        &mut send,
                        &tagged(terminal_relay::TAG_TEXT, text.as_bytes()),
                    )
                    .await
                    .map_err(|_| RelayGone)?;
                }
                // A normal close finishes the stream; any other (the
                // viewer too slow, the agent gone wrong) resets it, so
                // the viewer does not take it for a clean end.
                Message::Close(Some(frame)) if frame.code != CLOSE_NORMAL => {
                    let _ = send.reset(RELAY_ABORTED);
                }
                Message::Close(_) => {
                    let _ = send.finish();
                }
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
            }
            Ok(send)
        },
    ))
}

/// The viewer's frames as a stream of terminal messages: keystrokes and
/// control frames, until the viewer finishes or the stream fails.
fn relay_source(recv: RecvStream) -> impl Stream<Item = Result<Message, RelayGone>> + Unpin {
    Box::pin(futures_util::stream::unfold(recv, |mut recv| async move {
        loop {
            // A frame larger than one terminal message ends the relay
            // before its body is read.
            let len = read_frame_len(&mut recv).await.ok()?;
            if len > VIEWER_FRAME_BYTES_MAX {
                let _ = recv.stop(RELAY_ABORTED);
                return None;
            }
            let body = read_frame_body(&mut recv, len).await.ok()?;
            let Some((&tag, bytes)) = body.split_first() else {
                continue;
            };
            let message = match tag {
                terminal_relay::TAG_TEXT => match std::str::from_utf8(bytes) {
                    Ok(text) => Message::Text(Utf8Bytes::from(text.to_owned())),
                    Err(_) => Message::Binary(bytes.to_vec().into()),
                },
                terminal_relay::TAG_BINARY => Message::Binary(bytes.to_vec().into()),
                _ => continue,
            };
            return Some((Ok(message), recv));
        }
    }))
}

/// The WebSocket close code of a normal end.
const CLOSE_NORMAL: u16 = 1000;

/// The QUIC error code a relay stream is reset or stopped with when it
/// does not end normally.
const RELAY_ABORTED: quinn::VarInt = quinn::VarInt::from_u32(1);

/// The viewer's stream failed: the relay ends.
#[derive(Debug)]
pub struct RelayGone;
