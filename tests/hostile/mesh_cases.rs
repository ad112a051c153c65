//! Cases against the mesh port and membership: random and truncated QUIC
//! datagrams, a TLS client with a foreign key, and hostile invites
//! (tampered byte by byte, truncated, expired, reused, redeemed twice at
//! once, garbage). After each attack a real member still gets answers.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use scout::daemon::mesh::connections::join_exchange;
use scout::daemon::mesh::trust::MeshTrust;
use scout::http::terminal_relay::TERMINAL_RELAYS_PER_VIEWER_MAX;
use scout_mesh::names::{Label, NamePart};
use scout_mesh::views::{SHUFFLE_IDS_MAX, ViewMessage};
use scout_mesh::wire::{
    Hello, Invite, MeshFrame, MeshId, NodeId, ORIGINS_MAX, PROTOCOL_VERSION, SyncMessage,
    decode_frame, encode_frame,
};
use scout_net::transport::endpoint::request;
use scout_net::transport::frame::{read_frame, write_frame};
use scout_net::transport::{MeshEndpoint, NodeKey, TransportConfig};
use serde_json::json;

use crate::common::{Node, WAIT_BOUND, wait_until};
use crate::procs::{run_bounded, run_scout};
use crate::raw_http::{RawRequest, send};
use crate::tally::{Check, Tally, ensure};

/// The seed of the random datagrams; printed, so a failure replays.
const DATAGRAM_SEED: u64 = 0x5c07_5eed;

/// Rounds of random datagrams, each followed by a member's request.
const RANDOM_DATAGRAM_ROUNDS: usize = 16;

/// Datagrams per round.
const DATAGRAMS_PER_ROUND: usize = 64;

/// Largest UDP payload sent: above the QUIC minimum of 1,200 and the usual
/// 1,500-byte MTU, below what loopback carries.
const DATAGRAM_BYTES_MAX: usize = 2_048;

/// Rounds of concurrent redemption of one invite.
const CONCURRENT_REDEMPTION_ROUNDS: usize = 5;

/// A keystroke frame length far over one terminal message (64 KiB).
const TERMINAL_FRAME_OVERSIZED: usize = 1024 * 1024;

/// How long one exchange with the broker may take in a case.
const EXCHANGE_BOUND: Duration = Duration::from_secs(30);

/// A client of the mesh with its own Ed25519 key.
pub struct Probe {
    endpoint: MeshEndpoint,
    key: NodeKey,
    name: String,
}

impl Probe {
    fn new(name: &str) -> Probe {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let key = NodeKey {
            pkcs8_der: ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing)
                .expect("pkcs8")
                .as_bytes()
                .to_vec(),
            public_key: signing.verifying_key().to_bytes(),
        };
        let endpoint = MeshEndpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            key.clone(),
            Arc::new(MeshTrust::new(scout::env::Env::system(None))),
            TransportConfig::default(),
        )
        .expect("bind a probe endpoint");
        Probe {
            endpoint,
            key,
            name: name.to_owned(),
        }
    }

    fn node_id(&self) -> NodeId {
        NodeId::of_public_key(&self.key.public_key)
    }

    /// Presents an invite; `Ok(mesh id)` when admitted.
    async fn join(&self, invite: &Invite) -> Result<MeshId, String> {
        let label = Label::parse(&self.name, NamePart::Node).map_err(|err| err.to_string())?;
        match tokio::time::timeout(
            EXCHANGE_BOUND,
            join_exchange(&self.endpoint, invite, &label, Vec::new()),
        )
        .await
        {
            Ok(Ok((connection, _, accepted))) => {
                connection.close(0u32.into(), b"done");
                Ok(accepted.mesh_id)
            }
            Ok(Err(err)) => Err(format!("{err:#}")),
            Err(_) => Err(format!("no answer within {EXCHANGE_BOUND:?}")),
        }
    }

    /// A fresh connection, a hello and a ping: what a member needs served.
    async fn ping(&self, broker: SocketAddr, broker_key: [u8; 32], mesh_id: MeshId) -> Check {
        let exchange = async {
            let connection = self.member_connection(broker, broker_key, mesh_id).await?;
            let answer = request(&connection, &MeshFrame::Ping { nonce: 7 }, EXCHANGE_BOUND)
                .await
                .map_err(|err| format!("ping: {err}"))?;
            connection.close(0u32.into(), b"done");
            ensure(answer == MeshFrame::Pong { nonce: 7 }, || {
                format!("ping answered {answer:?}")
            })
        };
        match tokio::time::timeout(EXCHANGE_BOUND, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the member got no answer within {EXCHANGE_BOUND:?}"
            )),
        }
    }
}

/// What became of a terminal relay the member opened.
enum Relay {
    /// Accepted: the owner's first frame (its `connected` text) was read.
    Open(quinn::SendStream, quinn::RecvStream),
    /// Refused with this error code.
    Refused(String),
}

impl Probe {
    /// A fresh connection and a hello, as a member.
    async fn member_connection(
        &self,
        broker: SocketAddr,
        broker_key: [u8; 32],
        mesh_id: MeshId,
    ) -> Result<quinn::Connection, String> {
        let connection = self
            .endpoint
            .connect(broker, Some(broker_key))
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let hello = MeshFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id(),
            node_name: self.name.clone(),
            mesh_id,
            addresses: Vec::new(),
        });
        match request(&connection, &hello, EXCHANGE_BOUND).await {
            Ok(MeshFrame::HelloAck(_)) => Ok(connection),
            other => Err(format!("hello answered {other:?}")),
        }
    }

    /// Opens a terminal relay of `instance` on `connection`.
    async fn open_relay(connection: &quinn::Connection, instance: &str) -> Result<Relay, String> {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|err| format!("open: {err}"))?;
        let open = MeshFrame::TerminalOpen {
            instance: instance.to_owned(),
        };
        write_frame(&mut send, &encode_frame(&open))
            .await
            .map_err(|err| format!("write: {err}"))?;
        let answer = read_frame(&mut recv)
            .await
            .map_err(|err| format!("read: {err}"))?;
        match decode_frame(&answer).map_err(|err| format!("decode: {err}"))? {
            MeshFrame::TerminalAccepted => {
                read_frame(&mut recv)
                    .await
                    .map_err(|err| format!("connected frame: {err}"))?;
                Ok(Relay::Open(send, recv))
            }
            MeshFrame::Error(error) => Ok(Relay::Refused(error.code.as_str().to_owned())),
            other => Err(format!("TerminalOpen answered {other:?}")),
        }
    }
}

/// Reads a relay until the owner ends it; an error when it still runs
/// after the bound.
async fn relay_ends(recv: &mut quinn::RecvStream) -> Check {
    let drained = async { while read_frame(recv).await.is_ok() {} };
    tokio::time::timeout(EXCHANGE_BOUND, drained)
        .await
        .map_err(|_| format!("the relay still ran after {EXCHANGE_BOUND:?}"))
}

/// The broker under attack and a member that checks it still serves.
struct Mesh {
    node: Node,
    http: SocketAddr,
    token: String,
    udp: SocketAddr,
    runtime: tokio::runtime::Runtime,
    member: Probe,
    broker_key: [u8; 32],
    mesh_id: MeshId,
}

impl Mesh {
    fn invite(&self, ttl_ms: u64) -> (String, u64) {
        let answer = send(
            self.http,
            &RawRequest::new("POST", "/v1/mesh/invites")
                .bearer(&self.token)
                .json(&json!({ "ttl_ms": ttl_ms })),
        )
        .expect("invite");
        let body = answer.json().expect("invite json");
        (
            body["code"].as_str().expect("code").to_owned(),
            body["expires_at_ms"].as_u64().expect("expiry"),
        )
    }

    /// A member connection, or a failed `case` and `None`.
    fn member_connects(&self, tally: &Tally, case: &str) -> Option<quinn::Connection> {
        let connection = self.runtime.block_on(self.member.member_connection(
            self.udp,
            self.broker_key,
            self.mesh_id,
        ));
        match connection {
            Ok(connection) => Some(connection),
            Err(err) => {
                tally.case(case, || Err(err.clone()));
                None
            }
        }
    }

    fn member_served(&self) -> Check {
        self.runtime
            .block_on(self.member.ping(self.udp, self.broker_key, self.mesh_id))
    }
}

/// Base32 (RFC 4648, lower case, no padding) of arbitrary bytes, so a
/// byte-level change can be written as an invite code.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut n_bits = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        n_bits += 8;
        while n_bits >= 5 {
            n_bits -= 5;
            out.push(ALPHABET[((buffer >> n_bits) & 31) as usize] as char);
        }
    }
    if n_bits > 0 {
        out.push(ALPHABET[((buffer << (5 - n_bits)) & 31) as usize] as char);
    }
    out
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Every mesh case, on one broker.
pub fn all(tally: &Tally) {
    let mut node = Node::setup("meshtarget", &[]);
    node.add_bash_agent("shell");
    node.start();
    // A relay serves a running session: the first turn starts it.
    let started = node.run(&["send", "@shell", "true", "--wait", "--timeout", "60"]);
    assert_eq!(started.code, 0, "{}", started.stderr);
    let http: SocketAddr = node.broker().ready["http_addr"]
        .as_str()
        .expect("http")
        .parse()
        .expect("addr");
    let udp: SocketAddr = node.mesh_addr().parse().expect("mesh addr");
    let token = node.sandbox.token();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let member = {
        let _guard = runtime.enter();
        Probe::new("member")
    };
    let mut mesh = Mesh {
        node,
        http,
        token,
        udp,
        runtime,
        member,
        broker_key: [0; 32],
        mesh_id: MeshId([0; 16]),
    };
    // An invite outstanding for the whole run keeps the join window open,
    // the most permissive state the handshake has.
    let (_window, _) = mesh.invite(600_000);
    reused(tally, &mut mesh);
    datagrams(tally, &mesh);
    foreign_key(tally, &mesh);
    tampered(tally, &mesh);
    truncated_and_garbage(tally, &mesh);
    expired(tally, &mesh);
    concurrent(tally, &mesh);
    terminal_relays(tally, &mesh);
    trees_and_views(tally, &mesh);
    tally.case("mesh: a member is served after every attack", || {
        mesh.member_served()
    });
    tally.case("mesh: /health answers after every attack", || {
        let answer = send(mesh.http, &RawRequest::new("GET", "/health"))?;
        ensure(answer.status == 200, || answer.summary())
    });
}

/// Terminal relays asked by a member: an oversized keystroke frame ends
/// its relay, and one member cannot hold more than its share of relays.
fn terminal_relays(tally: &Tally, mesh: &Mesh) {
    let instance = "@shell@meshtarget#main";
    let Some(connection) = mesh.member_connects(tally, "relay: the member connects") else {
        return;
    };
    tally.case(
        "relay: a keystroke frame over one message ends the relay",
        || {
            mesh.runtime.block_on(async {
                let Relay::Open(mut send, mut recv) =
                    Probe::open_relay(&connection, instance).await?
                else {
                    return Err("the first relay was refused".to_owned());
                };
                // A length prefix far over one terminal message, then a few
                // bytes: the owner must not wait for the rest.
                let len = u32::try_from(TERMINAL_FRAME_OVERSIZED).expect("u32");
                send.write_all(&len.to_be_bytes())
                    .await
                    .map_err(|err| format!("write: {err}"))?;
                send.write_all(&[1, b'x'])
                    .await
                    .map_err(|err| format!("write: {err}"))?;
                relay_ends(&mut recv).await
            })
        },
    );
    tally.case(
        "relay: past its share, a member's relay is TERMINAL_RELAYS_BUSY",
        || {
            mesh.runtime.block_on(async {
                let mut held = Vec::new();
                for _ in 0..=TERMINAL_RELAYS_PER_VIEWER_MAX {
                    match Probe::open_relay(&connection, instance).await? {
                        Relay::Open(send, recv) => held.push((send, recv)),
                        Relay::Refused(code) => {
                            return ensure(
                                code == "TERMINAL_RELAYS_BUSY"
                                    && held.len() == TERMINAL_RELAYS_PER_VIEWER_MAX,
                                || format!("refused {code} after {} relays", held.len()),
                            );
                        }
                    }
                }
                Err(format!("{} relays were all accepted", held.len()))
            })
        },
    );
    connection.close(0u32.into(), b"done");
}

/// `n` node ids no broker has.
fn made_up_ids(n: usize) -> Vec<NodeId> {
    (0..n as u64)
        .map(|k| {
            let mut key = [0xee; 32];
            key[..8].copy_from_slice(&k.to_le_bytes());
            NodeId::of_public_key(&key)
        })
        .collect()
}

/// A member's tree and view messages: lists over their limits are
/// `MALFORMED_FRAME`; announcements of origins nobody has, a graft for
/// every origin there could be, prunes, a summary that matches nothing and
/// view messages naming non-members are answered, and change nothing the
/// broker serves (the cases after this one check it still serves).
fn trees_and_views(tally: &Tally, mesh: &Mesh) {
    let Some(connection) = mesh.member_connects(tally, "trees: the member connects") else {
        return;
    };
    let ask = |frame: MeshFrame| {
        mesh.runtime
            .block_on(request(&connection, &frame, EXCHANGE_BOUND))
            .map_err(|err| format!("{}: {err}", frame.name()))
    };
    let refused = |frame: MeshFrame| match ask(frame)? {
        MeshFrame::Error(error) => ensure(error.code == "MALFORMED_FRAME", || {
            format!("refused with {}", error.code)
        }),
        other => Err(format!("answered {}", other.name())),
    };
    let clock = |ids: Vec<NodeId>| {
        let mut clock = crdts::VClock::new();
        for id in ids {
            clock.dots.insert(id, 1);
        }
        clock
    };
    tally.case(
        "trees: lists past the origin limit are MALFORMED_FRAME",
        || {
            let too_many = made_up_ids(ORIGINS_MAX + 1);
            refused(MeshFrame::Sync(SyncMessage::IHave {
                have: clock(too_many.clone()),
            }))?;
            refused(MeshFrame::Sync(SyncMessage::Graft {
                since: clock(too_many.clone()),
            }))?;
            refused(MeshFrame::Sync(SyncMessage::DigestPart {
                mask: u64::MAX,
                vv: clock(too_many.clone()),
            }))?;
            refused(MeshFrame::Sync(SyncMessage::Buckets {
                hashes: vec![0; scout_mesh::wire::VV_BUCKETS + 1],
            }))?;
            refused(MeshFrame::Sync(SyncMessage::Prune { origins: too_many }))
        },
    );
    tally.case(
        "trees: announcements, grafts and prunes of unknown origins are answered",
        || {
            let ids = made_up_ids(ORIGINS_MAX - 1);
            let mut since = clock(ids.clone());
            since.dots.insert(mesh.member.node_id(), 0);
            for frame in [
                SyncMessage::IHave {
                    have: clock(ids.clone()),
                },
                SyncMessage::Graft { since },
                SyncMessage::Prune { origins: ids },
                SyncMessage::Summary { hash: 0 },
                SyncMessage::Buckets {
                    hashes: vec![0; scout_mesh::wire::VV_BUCKETS],
                },
                SyncMessage::DigestPart {
                    mask: 1,
                    vv: clock(made_up_ids(3)),
                },
            ] {
                let name = frame.name();
                match ask(MeshFrame::Sync(frame))? {
                    MeshFrame::SyncAck => {}
                    MeshFrame::Error(error) => {
                        return Err(format!("{name} refused: {} {}", error.code, error.message));
                    }
                    other => return Err(format!("{name} answered {}", other.name())),
                }
            }
            Ok(())
        },
    );
    tally.case(
        "views: a shuffle past the id limit is MALFORMED_FRAME",
        || {
            refused(MeshFrame::View(ViewMessage::Shuffle {
                origin: mesh.member.node_id(),
                ttl: 6,
                ids: made_up_ids(SHUFFLE_IDS_MAX + 1),
            }))
        },
    );
    relays(tally, mesh, &ask);
    tally.case("views: messages naming non-members are answered", || {
        let strangers = made_up_ids(SHUFFLE_IDS_MAX);
        for frame in [
            ViewMessage::ForwardJoin {
                joiner: strangers[0].clone(),
                ttl: 6,
            },
            ViewMessage::Shuffle {
                origin: strangers[1].clone(),
                ttl: 6,
                ids: strangers.clone(),
            },
            ViewMessage::ShuffleReply { ids: strangers },
            ViewMessage::Neighbor {
                high_priority: true,
            },
            ViewMessage::Disconnect,
        ] {
            match ask(MeshFrame::View(frame))? {
                MeshFrame::ViewAck => {}
                other => return Err(format!("answered {}", other.name())),
            }
        }
        Ok(())
    });
    connection.close(0u32.into(), b"done");
}

/// Relayed frames: a forged envelope, someone else's envelope handed to a
/// relay, a relay to a non-member; and a signed relayed ping, answered
/// with a signed pong bound to its nonce.
fn relays(tally: &Tally, mesh: &Mesh, ask: &dyn Fn(MeshFrame) -> Result<MeshFrame, String>) {
    use scout_mesh::relay::{Exchange, Expect, Seal, seal};
    let member_key =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_der(
            &mesh.member.key.pkcs8_der,
        )
        .expect("the probe's key");
    let stranger_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let broker_id = NodeId::of_public_key(&mesh.broker_key);
    // Every probe envelope is sealed to the broker's key with one
    // ephemeral key: the answers open with this exchange.
    let exchange = Exchange::start(rand::random(), &mesh.broker_key).expect("the broker's key");
    let ping = |key: &ed25519_dalek::SigningKey, to: &NodeId, nonce: u64, sent_ms: u64| {
        let how = Seal {
            to,
            nonce,
            sent_ms,
            answer: false,
        };
        seal(key, how, &exchange, &MeshFrame::Ping { nonce }).expect("a ping is relayed")
    };
    let code_of = |frame: MeshFrame| match frame {
        MeshFrame::Error(error) => Ok(error.code.as_str().to_owned()),
        other => Err(format!("answered {}", other.name())),
    };
    tally.case(
        "relay: an envelope signed by another key is BAD_RELAY",
        || {
            let mut forged = ping(&stranger_key, &broker_id, 1, now_ms());
            forged.from = mesh.member.node_id();
            let code = code_of(ask(MeshFrame::Relayed(forged))?)?;
            ensure(code == "BAD_RELAY", || format!("refused with {code}"))
        },
    );
    tally.case(
        "relay: another sender's envelope handed to a relay is BAD_RELAY",
        || {
            let theirs = ping(&stranger_key, &broker_id, 2, now_ms());
            let code = code_of(ask(MeshFrame::Relay(theirs))?)?;
            ensure(code == "BAD_RELAY", || format!("refused with {code}"))
        },
    );
    tally.case(
        "relay: a relay to a non-member is RELAY_UNREACHABLE",
        || {
            let stranger = NodeId::of_public_key(&stranger_key.verifying_key().to_bytes());
            let envelope = ping(&member_key, &stranger, 3, now_ms());
            let code = code_of(ask(MeshFrame::Relay(envelope))?)?;
            ensure(code == "RELAY_UNREACHABLE", || {
                format!("refused with {code}")
            })
        },
    );
    tally.case(
        "relay: a signed relayed ping gets a signed pong, once",
        || {
            let sent_ms = now_ms();
            let envelope = ping(&member_key, &broker_id, 4, sent_ms);
            let MeshFrame::RelayAnswer(answer) = ask(MeshFrame::Relayed(envelope))? else {
                return Err("no relay answer".to_owned());
            };
            let me = mesh.member.node_id();
            let opened = scout_mesh::relay::open(
                &answer,
                Expect {
                    me: &me,
                    answer_to: Some((4, &broker_id)),
                    now_ms: now_ms(),
                    not_before_ms: 0,
                },
                &exchange,
            )
            .map_err(|err| err.to_string())?;
            ensure(opened == MeshFrame::Pong { nonce: 4 }, || {
                format!("answered {opened:?}")
            })?;
            // The same envelope again: the first answer, not a second run.
            let envelope = ping(&member_key, &broker_id, 4, sent_ms);
            match ask(MeshFrame::Relayed(envelope))? {
                MeshFrame::RelayAnswer(again) => {
                    ensure(again == answer, || "a replay got a new answer".to_owned())
                }
                other => Err(format!("a replay answered {}", other.name())),
            }
        },
    );
    tally.case(
        "relay: an ephemeral key of small order (a secret anyone knows) is BAD_RELAY",
        || {
            let mut weak = ping(&member_key, &broker_id, 6, now_ms());
            weak.ephemeral = [0; 32];
            let code = code_of(ask(MeshFrame::Relayed(weak))?)?;
            ensure(code == "BAD_RELAY", || format!("refused with {code}"))
        },
    );
    tally.case("relay: an envelope sealed long ago is BAD_RELAY", || {
        let stale = ping(
            &member_key,
            &broker_id,
            5,
            now_ms() - 2 * scout_mesh::relay::RELAY_WINDOW_MS,
        );
        let code = code_of(ask(MeshFrame::Relayed(stale))?)?;
        ensure(code == "BAD_RELAY", || format!("refused with {code}"))
    });
}

fn reused(tally: &Tally, mesh: &mut Mesh) {
    let (code, _) = mesh.invite(600_000);
    let invite = Invite::from_code(&code).expect("own invite");
    let joined = mesh.runtime.block_on(mesh.member.join(&invite));
    let mesh_id = joined.expect("the member joins with a fresh invite");
    mesh.mesh_id = mesh_id;
    mesh.broker_key = invite.inviter_key;
    tally.case("mesh: the member is served before any attack", || {
        mesh.member_served()
    });
    let _guard = mesh.runtime.enter();
    let second = Probe::new("reuser");
    tally.case("invite: reused by another key", || {
        match mesh.runtime.block_on(second.join(&invite)) {
            Ok(_) => Err("a used invite admitted a second key".to_owned()),
            Err(err) => ensure(err.contains("INVITE_USED"), || err),
        }
    });
    // A retry by the key that used the invite is accepted on purpose (its
    // first answer may have been lost), so only other keys are refused.
    let third = Probe::new("reuser-two");
    tally.case(
        "invite: reused by a third key after the first refusal",
        || match mesh.runtime.block_on(third.join(&invite)) {
            Ok(_) => Err("a used invite admitted a third key".to_owned()),
            Err(err) => ensure(err.contains("INVITE_USED"), || err),
        },
    );
}

fn datagrams(tally: &Tally, mesh: &Mesh) {
    println!("random datagrams: seed {DATAGRAM_SEED:#x}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(DATAGRAM_SEED);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for round in 0..RANDOM_DATAGRAM_ROUNDS {
        let mut batch = Vec::with_capacity(DATAGRAMS_PER_ROUND);
        for _ in 0..DATAGRAMS_PER_ROUND {
            let len = rng.gen_range(1..=DATAGRAM_BYTES_MAX);
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            // Half the rounds look like QUIC long headers (Initial, version
            // 1), so they get past the first byte of parsing.
            if round % 2 == 1 && len > 5 {
                bytes[0] = 0xc0 | (bytes[0] & 0x0f);
                bytes[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            batch.push(bytes);
        }
        tally.case(format!("datagram: random round {round}"), || {
            for bytes in &batch {
                socket
                    .send_to(bytes, mesh.udp)
                    .map_err(|err| format!("send: {err}"))?;
            }
            mesh.member_served()
        });
    }
    let initial = capture_initial(mesh);
    let Some(initial) = initial else {
        tally.case("datagram: capture a real QUIC initial", || {
            Err("no initial packet was captured".to_owned())
        });
        return;
    };
    let mut lengths: Vec<usize> = vec![1, 2, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64, 100];
    lengths.extend((128..initial.len()).step_by(128));
    lengths.push(initial.len() - 1);
    for len in lengths {
        let cut = initial[..len].to_vec();
        tally.case(
            format!("datagram: a QUIC initial truncated to {len} bytes"),
            || {
                socket
                    .send_to(&cut, mesh.udp)
                    .map_err(|err| format!("send: {err}"))?;
                mesh.member_served()
            },
        );
    }
    for idx in [0, 1, 5, 6, 14, 20, 30, 60, 200, 600, 1000] {
        if idx >= initial.len() {
            continue;
        }
        let mut flipped = initial.clone();
        flipped[idx] ^= 0xff;
        tally.case(
            format!("datagram: a QUIC initial with byte {idx} flipped"),
            || {
                for _ in 0..8 {
                    socket
                        .send_to(&flipped, mesh.udp)
                        .map_err(|err| format!("send: {err}"))?;
                }
                mesh.member_served()
            },
        );
    }
    tally.case("datagram: the same real initial replayed 200 times", || {
        for _ in 0..200 {
            socket
                .send_to(&initial, mesh.udp)
                .map_err(|err| format!("send: {err}"))?;
        }
        mesh.member_served()
    });
}

/// The first datagram a real mesh client sends (a QUIC Initial with its
/// TLS ClientHello), caught on a socket of our own.
fn capture_initial(mesh: &Mesh) -> Option<Vec<u8>> {
    mesh.runtime.block_on(async {
        let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
        let capture_addr = capture.local_addr().ok()?;
        let client = Probe::new("capture");
        let dial = tokio::spawn(async move {
            let _ = client.endpoint.connect(capture_addr, None).await;
        });
        let mut buffer = vec![0u8; 65_536];
        let received = tokio::time::timeout(EXCHANGE_BOUND, capture.recv_from(&mut buffer)).await;
        dial.abort();
        let (len, _) = received.ok()?.ok()?;
        buffer.truncate(len);
        Some(buffer)
    })
}

fn foreign_key(tally: &Tally, mesh: &Mesh) {
    let _guard = mesh.runtime.enter();
    let stranger = Probe::new("stranger");
    let refused = |frame: MeshFrame| -> Check {
        mesh.runtime.block_on(async {
            let connection = match tokio::time::timeout(
                EXCHANGE_BOUND,
                stranger.endpoint.connect(mesh.udp, Some(mesh.broker_key)),
            )
            .await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(_)) => return Ok(()),
                Err(_) => return Err("the handshake neither finished nor failed".to_owned()),
            };
            let answer = request(&connection, &frame, EXCHANGE_BOUND).await;
            connection.close(0u32.into(), b"done");
            match answer {
                Err(_) | Ok(MeshFrame::Error(_)) => Ok(()),
                Ok(other) => Err(format!("a foreign key was answered {other:?}")),
            }
        })?;
        mesh.member_served()
    };
    tally.case("foreign key: a ping", || {
        refused(MeshFrame::Ping { nonce: 1 })
    });
    tally.case("foreign key: a hello under its own id", || {
        refused(MeshFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: stranger.node_id(),
            node_name: "stranger".into(),
            mesh_id: mesh.mesh_id,
            addresses: Vec::new(),
        }))
    });
    tally.case("foreign key: a hello claiming the member's id", || {
        refused(MeshFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: mesh.member.node_id(),
            node_name: "member".into(),
            mesh_id: mesh.mesh_id,
            addresses: Vec::new(),
        }))
    });
    tally.case("foreign key: a join with a made-up invite", || {
        refused(MeshFrame::Join(scout_mesh::wire::JoinRequest {
            invite_id: [7; 8],
            secret: [7; 16],
            node_name: "stranger".into(),
            addresses: Vec::new(),
        }))
    });
    tally.case(
        "foreign key: the handshake without pinning, then a ping",
        || {
            mesh.runtime.block_on(async {
                match tokio::time::timeout(
                    EXCHANGE_BOUND,
                    stranger.endpoint.connect(mesh.udp, None),
                )
                .await
                {
                    Ok(Ok(connection)) => {
                        let answer =
                            request(&connection, &MeshFrame::Ping { nonce: 2 }, EXCHANGE_BOUND)
                                .await;
                        match answer {
                            Err(_) | Ok(MeshFrame::Error(_)) => Ok(()),
                            Ok(other) => Err(format!("a foreign key was answered {other:?}")),
                        }
                    }
                    Ok(Err(_)) => Ok(()),
                    Err(_) => Err("the handshake neither finished nor failed".to_owned()),
                }
            })?;
            mesh.member_served()
        },
    );
}

fn tampered(tally: &Tally, mesh: &Mesh) {
    let (code, _) = mesh.invite(600_000);
    let invite = Invite::from_code(&code).expect("own invite");
    let bytes = postcard::to_allocvec(&invite).expect("encode");
    let mut joins = Vec::new();
    for idx in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[idx] ^= 0x01;
        let tampered_code = format!("scout1-{}", base32(&flipped));
        match Invite::from_code(&tampered_code) {
            Err(_) => {
                tally.case(format!("invite: byte {idx} flipped (undecodable)"), || {
                    let answer = send(
                        mesh.http,
                        &RawRequest::new("POST", "/v1/mesh/join")
                            .bearer(&mesh.token)
                            .json(&json!({ "code": tampered_code })),
                    )?;
                    ensure(
                        answer.status == 400 && answer.code().as_deref() == Some("INVALID_INVITE"),
                        || format!("expected 400 INVALID_INVITE, got {}", answer.summary()),
                    )
                });
            }
            Ok(tampered) => {
                let authority_changed = tampered.secret != invite.secret
                    || tampered.invite_id != invite.invite_id
                    || tampered.inviter_key != invite.inviter_key;
                joins.push((idx, tampered, authority_changed));
            }
        }
    }
    let n_undecodable = bytes.len() - joins.len();
    let n_authority = joins.iter().filter(|(_, _, authority)| *authority).count();
    println!(
        "tampered invite: {} bytes, {n_undecodable} flips undecodable, {n_authority} change the secret, id or key, {} change a hint",
        bytes.len(),
        joins.len() - n_authority
    );
    // The tampered codes that still decode are presented at once, each by
    // its own key; those that changed the secret, the invite id or the
    // pinned key must all be refused.
    let outcomes: Vec<(usize, bool, Result<MeshId, String>)> = {
        let _guard = mesh.runtime.enter();
        let tasks: Vec<_> = joins
            .into_iter()
            .map(|(idx, tampered, authority_changed)| {
                let probe = Probe::new(&format!("tamper-{idx}"));
                let task = mesh
                    .runtime
                    .spawn(async move { probe.join(&tampered).await });
                (idx, authority_changed, task)
            })
            .collect();
        tasks
            .into_iter()
            .map(|(idx, authority_changed, task)| {
                let result = mesh
                    .runtime
                    .block_on(task)
                    .unwrap_or_else(|err| Err(format!("the join task failed: {err}")));
                (idx, authority_changed, result)
            })
            .collect()
    };
    for (idx, authority_changed, result) in outcomes {
        if authority_changed {
            tally.case(
                format!("invite: byte {idx} flipped (secret, id or key)"),
                || match result {
                    Ok(_) => Err("a tampered secret, invite id or key was admitted".to_owned()),
                    Err(_) => Ok(()),
                },
            );
        } else {
            // Addresses, expiry, inviter id and mesh id are hints for the
            // joiner; a change there may still reach the inviter, but never
            // lands the joiner in another mesh.
            tally.case(
                format!("invite: byte {idx} flipped (a hint)"),
                || match result {
                    Ok(mesh_id) if mesh_id != mesh.mesh_id => {
                        Err("a tampered code joined another mesh".to_owned())
                    }
                    _ => Ok(()),
                },
            );
        }
    }
    tally.case(
        "invite: a member is served after the tampered codes",
        || mesh.member_served(),
    );
}

fn truncated_and_garbage(tally: &Tally, mesh: &Mesh) {
    let (code, _) = mesh.invite(600_000);
    let join = |code: &str| -> Check {
        let answer = send(
            mesh.http,
            &RawRequest::new("POST", "/v1/mesh/join")
                .bearer(&mesh.token)
                .json(&json!({ "code": code })),
        )?;
        ensure(
            answer.status == 400 && answer.code().as_deref() == Some("INVALID_INVITE"),
            || format!("expected 400 INVALID_INVITE, got {}", answer.summary()),
        )
    };
    let mut lengths: Vec<usize> = (0..code.len()).step_by(9).collect();
    lengths.push(code.len() - 1);
    for len in lengths {
        let cut = code[..len].to_owned();
        tally.case(format!("invite: truncated to {len} characters"), || {
            join(&cut)
        });
    }
    let garbage: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("only the prefix", "scout1-".to_owned()),
        ("punctuation", "scout1-!!!!####".to_owned()),
        ("a word", "hello".to_owned()),
        (
            "10 KB after the prefix",
            format!("scout1-{}", "a".repeat(10 * 1024)),
        ),
        (
            "another version's prefix",
            code.replacen("scout1-", "scout2-", 1),
        ),
        ("a character appended", format!("{code}x")),
        (
            "a NUL inside",
            format!("{}\u{0}{}", &code[..20], &code[20..]),
        ),
        (
            "an emoji inside",
            format!("{}🦀{}", &code[..20], &code[20..]),
        ),
        ("an ESC sequence", format!("scout1-\u{1b}[2J{}", &code[7..])),
        (
            "digits 0, 1, 8 and 9 (not base32)",
            "scout1-0189018901890189".to_owned(),
        ),
    ];
    for (label, value) in &garbage {
        tally.case(format!("invite: garbage code ({label})"), || join(value));
    }
    // The command line prints the message of a usage error, not its code;
    // a garbage code is a usage error (exit 2).
    for (label, value) in garbage.iter().filter(|(_, value)| !value.contains('\u{0}')) {
        tally.case(
            format!("invite: `scout mesh join` with a garbage code ({label})"),
            || {
                let run = run_scout(
                    &mesh.node.sandbox.home(),
                    mesh.node.sandbox.path(),
                    &["mesh", "join", value],
                )?;
                ensure(
                    run.code == 2
                        && run.stderr.contains("error:")
                        && !run.stderr.contains("panicked"),
                    || format!("exit {}: {}", run.code, run.stderr),
                )
            },
        );
    }
}

fn expired(tally: &Tally, mesh: &Mesh) {
    let (longer, _) = mesh.invite(600_000);
    let (code, expires_at_ms) = mesh.invite(1);
    wait_until("the short invite to expire", || {
        (now_ms() > expires_at_ms + 1).then_some(())
    });
    let _guard = mesh.runtime.enter();
    // Invites are independent: one expiring must not close the door for
    // another that is still valid.
    let punctual = Probe::new("punctual");
    tally.case(
        "invite: a valid invite still works after a shorter one expired",
        || {
            let invite = Invite::from_code(&longer).map_err(|err| err.to_string())?;
            mesh.runtime.block_on(punctual.join(&invite)).map(|_| ())
        },
    );
    // A fresh invite keeps the join window open, so the expired one is
    // judged by its own expiry rather than refused in the handshake.
    let _reopen = mesh.invite(600_000);
    let invite = Invite::from_code(&code).expect("own invite");
    let probe = Probe::new("late");
    tally.case("invite: expired, presented over QUIC", || {
        match mesh.runtime.block_on(probe.join(&invite)) {
            Ok(_) => Err("an expired invite was accepted".to_owned()),
            Err(err) => ensure(err.contains("INVITE_EXPIRED"), || err),
        }
    });
    tally.case("invite: expired, with `scout mesh join`", || {
        let joiner = Node::setup("latecomer", &[]);
        let run = joiner.run(&["mesh", "join", &code]);
        ensure(
            run.code != 0 && run.stderr.contains("INVITE_EXPIRED"),
            || format!("exit {}: {}", run.code, run.stderr),
        )
    });
}

fn concurrent(tally: &Tally, mesh: &Mesh) {
    for round in 0..CONCURRENT_REDEMPTION_ROUNDS {
        let (code, _) = mesh.invite(600_000);
        let invite = Invite::from_code(&code).expect("own invite");
        tally.case(
            format!("invite: redeemed twice at once over QUIC (round {round})"),
            || {
                let _guard = mesh.runtime.enter();
                let first = Probe::new(&format!("race-{round}-a"));
                let second = Probe::new(&format!("race-{round}-b"));
                let (one, two) = mesh
                    .runtime
                    .block_on(async { tokio::join!(first.join(&invite), second.join(&invite)) });
                one_winner(&[one.map(|_| ()), two.map(|_| ())])
            },
        );
    }
    tally.case(
        "invite: redeemed twice at once with `scout mesh join`",
        || {
            let (code, _) = mesh.invite(600_000);
            let joiners = [Node::setup("racer-a", &[]), Node::setup("racer-b", &[])];
            let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
                let running: Vec<_> = joiners
                    .iter()
                    .map(|joiner| {
                        let mut command = joiner.sandbox.scout();
                        command.args(["mesh", "join", &code]);
                        scope.spawn(move || run_bounded(command, WAIT_BOUND))
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|thread| match thread.join() {
                        Ok(Ok(run)) if run.code == 0 => Ok(()),
                        Ok(Ok(run)) => Err(run.stderr),
                        Ok(Err(err)) => Err(err),
                        Err(_) => Err("the joining thread panicked".to_owned()),
                    })
                    .collect()
            });
            one_winner(&results)
        },
    );
}

/// Exactly one success, and every other attempt refused with `INVITE_USED`.
fn one_winner(results: &[Result<(), String>]) -> Check {
    let winners = results.iter().filter(|result| result.is_ok()).count();
    let used = results
        .iter()
        .filter(|result| {
            result
                .as_ref()
                .is_err_and(|err| err.contains("INVITE_USED"))
        })
        .count();
    ensure(winners == 1 && used == results.len() - 1, || {
        format!("{winners} succeeded, {used} got INVITE_USED: {results:?}")
    })
}
