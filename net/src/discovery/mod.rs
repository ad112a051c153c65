//! Discovery (IO shell of the crate): where other brokers might be
//! reached. Nothing here decides who is a member: an address found here
//! only says where to knock, and the handshake and the mesh's admissions
//! decide the rest.
//!
//! Code map:
//! - [`mdns`]: the `_scout._udp.local.` DNS-SD service: the TXT layout
//!   ([`mdns::Advert`]) and its checks, which heard addresses to dial, and
//!   the `mdns-sd` daemon that advertises and browses.
//! - [`tailscale`]: tailscaled's status and whois documents (pure
//!   parsing), the admit rule for tailnet identities, and the client that
//!   asks the LocalAPI socket or the `tailscale` CLI.
//! - [`http`]: the minimal HTTP/1.1 client the LocalAPI needs, with a pure
//!   response parser.

pub mod http;
pub mod mdns;
pub mod tailscale;
