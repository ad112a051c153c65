//! Brokers on a LAN find each other with mDNS / DNS-SD (RFC 6762, 6763).
//! Each broker advertises `_scout._udp.local.`: the SRV record carries the
//! mesh port, A/AAAA records its interface addresses, and the TXT record
//! says who it claims to be (see [`Advert`]), so `avahi-browse -r
//! _scout._udp` or `dns-sd -B _scout._udp` show it too.
//!
//! What a TXT record says is a claim, not a proof: it only decides which
//! addresses are worth dialing. The TLS handshake on the node key and the
//! mesh's admissions decide who is a member.
//!
//! [`Advert`], [`parse_txt`], [`judge`] and [`dial_addresses`] are pure;
//! [`Mdns`] and [`Browser`] wrap the `mdns-sd` daemon (its own thread).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use scout_mesh::wire::{MeshId, NodeId};

/// The DNS-SD service type of a broker's mesh endpoint (QUIC over UDP).
pub const SERVICE_TYPE: &str = "_scout._udp.local.";

/// `txtvers`: the TXT layout this scout writes and reads.
pub const TXT_VERSION: &str = "1";

/// TXT key: the layout version.
pub const TXT_KEY_VERSION: &str = "txtvers";
/// TXT key: the node id (32 hex characters).
pub const TXT_KEY_NODE_ID: &str = "id";
/// TXT key: the node name.
pub const TXT_KEY_NODE_NAME: &str = "name";
/// TXT key: the mesh id (32 hex characters).
pub const TXT_KEY_MESH_ID: &str = "mesh";
/// TXT key: the mesh protocol version.
pub const TXT_KEY_PROTOCOL: &str = "proto";
/// TXT key: the Ed25519 public key (64 hex characters) the node id derives from.
pub const TXT_KEY_PUBLIC_KEY: &str = "pk";

/// Addresses taken from one advert at most: a machine has a handful of
/// interfaces; more is noise or an attack on the address book.
pub const ADDRESSES_PER_ADVERT_MAX: usize = 16;

/// Adverts remembered at most by a browser: a LAN with more brokers than
/// this is not the home or office LAN mDNS is for.
pub const SIGHTINGS_MAX: usize = 256;

/// Longest node name carried in TXT (a DNS label).
const NODE_NAME_LEN_MAX: usize = 63;

/// What a broker says about itself in its TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Node id, derived from `public_key`.
    pub node_id: NodeId,
    /// Node name.
    pub node_name: String,
    /// The mesh it belongs to.
    pub mesh_id: MeshId,
    /// The mesh protocol version it speaks.
    pub protocol_version: u16,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
}

/// Why a TXT record is not a usable advert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// A key is missing.
    #[error("BAD_TXT: missing `{0}`")]
    Missing(&'static str),
    /// A value is not what the key holds.
    #[error("BAD_TXT: `{key}` is not valid: {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A TXT layout this scout cannot read.
    #[error("BAD_TXT: txtvers `{0}` is not supported (this scout reads {TXT_VERSION})")]
    UnsupportedVersion(String),
    /// The node id does not derive from the key: someone else's key.
    #[error("FOREIGN_KEY: the advertised key does not belong to node {0}")]
    ForeignKey(String),
}

impl AdvertError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdvertError::ForeignKey(_) => "FOREIGN_KEY",
            _ => "BAD_TXT",
        }
    }
}

impl Advert {
    /// The TXT properties, in a stable order.
    pub fn txt_properties(&self) -> Vec<(&'static str, String)> {
        vec![
            (TXT_KEY_VERSION, TXT_VERSION.to_owned()),
            (TXT_KEY_NODE_ID, self.node_id.to_string()),
            (TXT_KEY_NODE_NAME, self.node_name.clone()),
            (TXT_KEY_MESH_ID, self.mesh_id.to_string()),
            (TXT_KEY_PROTOCOL, self.protocol_version.to_string()),
            (TXT_KEY_PUBLIC_KEY, hex_encode(&self.public_key)),
        ]
    }

    /// The DNS-SD instance name: readable, and unique per node so two
    /// brokers never probe for the same name.
    pub fn instance_name(&self) -> String {
        format!("{}-{}", self.node_name, &self.node_id.as_str()[..8])
    }

    /// The host name its A/AAAA records are published under: per node, so
    /// it never collides with the machine's own `.local` name.
    pub fn host_name(&self) -> String {
        format!("scout-{}.local.", &self.node_id.as_str()[..12])
    }
}

/// Reads an advert from TXT properties (key, value) as received.
pub fn parse_txt<'a>(
    properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Advert, AdvertError> {
    let mut version = None;
    let mut node_id = None;
    let mut node_name = None;
    let mut mesh_id = None;
    let mut protocol = None;
    let mut public_key = None;
    for (key, value) in properties {
        let slot = match key.to_ascii_lowercase().as_str() {
            TXT_KEY_VERSION => &mut version,
            TXT_KEY_NODE_ID => &mut node_id,
            TXT_KEY_NODE_NAME => &mut node_name,
            TXT_KEY_MESH_ID => &mut mesh_id,
            TXT_KEY_PROTOCOL => &mut protocol,
            TXT_KEY_PUBLIC_KEY => &mut public_key,
            _ => continue,
        };
        // RFC 6763 6.4: only the first occurrence of a key counts.
        if slot.is_none() {
            *slot = Some(value.unwrap_or_default());
        }
    }
    let text = |key: &'static str, value: Option<&[u8]>| -> Result<String, AdvertError> {
        let bytes = value.ok_or(AdvertError::Missing(key))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AdvertError::BadValue {
            key,
            reason: "not UTF-8".into(),
        })
    };
    let version = text(TXT_KEY_VERSION, version)?;
    if version != TXT_VERSION {
        return Err(AdvertError::UnsupportedVersion(version));
    }
    let node_id_text = text(TXT_KEY_NODE_ID, node_id)?;
    let node_id = NodeId::parse(&node_id_text).map_err(|err| AdvertError::BadValue {
        key: TXT_KEY_NODE_ID,
        reason: err.to_string(),
    })?;
    let node_name = text(TXT_KEY_NODE_NAME, node_name)?;
    if node_name.is_empty()
        || node_name.len() > NODE_NAME_LEN_MAX
        || !node_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(AdvertError::BadValue {
            key: TXT_KEY_NODE_NAME,
            reason: format!("`{node_name}` is not a node name"),
        });
    }
    let mesh_id =
        MeshId::parse(&text(TXT_KEY_MESH_ID, mesh_id)?).map_err(|err| AdvertError::BadValue {
            key: TXT_KEY_MESH_ID,
            reason: err.to_string(),
        })?;
    let protocol_text = text(TXT_KEY_PROTOCOL, protocol)?;
    let protocol_version = protocol_text
        .parse::<u16>()
        .map_err(|_| AdvertError::BadValue {
            key: TXT_KEY_PROTOCOL,
            reason: format!("`{protocol_text}` is not a version number"),
        })?;
    let key_text = text(TXT_KEY_PUBLIC_KEY, public_key)?;
    let public_key = hex_decode_32(&key_text).ok_or_else(|| AdvertError::BadValue {
        key: TXT_KEY_PUBLIC_KEY,
        reason: "expected 64 lower-case hex characters".into(),
    })?;
    if NodeId::of_public_key(&public_key) != node_id {
        return Err(AdvertError::ForeignKey(node_id.to_string()));
    }
    Ok(Advert {
        node_id,
        node_name,
        mesh_id,
        protocol_version,
        public_key,
    })
}

/// What to do with a well-formed advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Another broker of this mesh: its addresses are worth dialing.
    Dial,
    /// This broker's own advert, heard back.
    Own,
    /// A broker of another mesh.
    OtherMesh(MeshId),
    /// A broker speaking another protocol version.
    OtherProtocol(u16),
}

/// Judges an advert against this broker.
pub fn judge(advert: &Advert, own_node: &NodeId, own_mesh: &MeshId, protocol: u16) -> Verdict {
    if advert.node_id == *own_node {
        Verdict::Own
    } else if advert.mesh_id != *own_mesh {
        Verdict::OtherMesh(advert.mesh_id)
    } else if advert.protocol_version != protocol {
        Verdict::OtherProtocol(advert.protocol_version)
    } else {
        Verdict::Dial
    }
}

/// One address as the mDNS daemon heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeardAddress {
    /// The address from an A or AAAA record.
    pub ip: IpAddr,
    /// The index of the interface it was heard on.
    pub interface_index: u32,
    /// Whether that interface is a loopback one.
    pub interface_is_loopback: bool,
}

/// The addresses to dial for what was heard, with the SRV port:
/// - a loopback address only when heard on loopback (the advertiser runs on
///   this machine; elsewhere `127.0.0.1` would mean ourselves);
/// - IPv6 only when `ipv6` (the mesh socket can send it), and a link-local
///   IPv6 address scoped to the interface it was heard on;
/// - no unspecified, multicast or broadcast addresses; at most
///   [`ADDRESSES_PER_ADVERT_MAX`], sorted.
pub fn dial_addresses(heard: &[HeardAddress], port: u16, ipv6: bool) -> Vec<SocketAddr> {
    if port == 0 {
        return Vec::new();
    }
    let mut out = BTreeSet::new();
    for address in heard {
        if address.ip.is_unspecified() || address.ip.is_multicast() {
            continue;
        }
        if address.ip.is_loopback() && !address.interface_is_loopback {
            continue;
        }
        match address.ip {
            IpAddr::V4(v4) => {
                if v4.is_broadcast() {
                    continue;
                }
                out.insert(SocketAddr::new(address.ip, port));
            }
            IpAddr::V6(v6) => {
                if !ipv6 {
                    continue;
                }
                let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                if link_local {
                    if address.interface_index == 0 {
                        continue;
                    }
                    out.insert(SocketAddr::V6(SocketAddrV6::new(
                        v6,
                        port,
                        0,
                        address.interface_index,
                    )));
                } else {
                    out.insert(SocketAddr::new(address.ip, port));
                }
            }
        }
    }
    out.into_iter().take(ADDRESSES_PER_ADVERT_MAX).collect()
}

/// Why the mDNS daemon could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MDNS_ERROR: {0}")]
pub struct MdnsError(pub String);

impl From<mdns_sd::Error> for MdnsError {
    fn from(err: mdns_sd::Error) -> MdnsError {
        MdnsError(err.to_string())
    }
}

/// How the daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdnsConfig {
    /// Speak mDNS over IPv6 too (only useful when the mesh socket can
    /// reach IPv6 addresses).
    pub ipv6: bool,
    /// How often the daemon looks for interfaces appearing and going away.
    pub interface_check_secs: u32,
}

/// A running mDNS daemon that advertises this broker and browses for others.
pub struct Mdns {
    daemon: ServiceDaemon,
    advertised: Option<String>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

impl Mdns {
    /// Starts the daemon (a thread of its own; sockets open lazily).
    pub fn start(config: MdnsConfig) -> Result<Mdns, MdnsError> {
        let daemon = ServiceDaemon::new()?;
        if !config.ipv6 {
            daemon.disable_interface(IfKind::IPv6)?;
        }
        daemon.set_ip_check_interval(config.interface_check_secs.max(1))?;
        Ok(Mdns {
            daemon,
            advertised: None,
        })
    }

    /// Advertises `advert` at `port`, replacing an earlier advert (after a
    /// mesh change, say). The addresses follow the interfaces.
    pub fn advertise(&mut self, advert: &Advert, port: u16) -> Result<(), MdnsError> {
        self.withdraw();
        let properties = advert.txt_properties();
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &advert.instance_name(),
            &advert.host_name(),
            (),
            port,
            &properties[..],
        )?
        .enable_addr_auto();
        // The instance and host names embed the node id, so no other
        // broker claims them: probing would only delay the first announce.
        info.set_requires_probe(false);
        let fullname = info.get_fullname().to_owned();
        self.daemon.register(info)?;
        self.advertised = Some(fullname);
        Ok(())
    }

    /// Sends goodbyes for the current advert, if any.
    pub fn withdraw(&mut self) {
        if let Some(fullname) = self.advertised.take() {
            let _ = self.daemon.unregister(&fullname);
        }
    }

    /// Starts browsing for brokers.
    pub fn browse(&self) -> Result<Browser, MdnsError> {
        Ok(Browser {
            receiver: self.daemon.browse(SERVICE_TYPE)?,
        })
    }

    /// Stops browsing (before browsing again).
    pub fn stop_browse(&self) {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
    }

    /// Events about interfaces appearing and going away.
    pub fn interface_changes(&self) -> Result<InterfaceChanges, MdnsError> {
        Ok(InterfaceChanges {
            receiver: self.daemon.monitor()?,
        })
    }

    /// Withdraws the advert and stops the daemon's thread.
    pub fn shutdown(mut self) {
        self.withdraw();
        let _ = self.daemon.shutdown();
    }
}

/// A broker heard on the LAN.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The DNS-SD instance's full name (the key of a sighting).
    pub fullname: String,
    /// The SRV target host.
    pub host: String,
    /// The SRV port.
    pub port: u16,
    /// Addresses with the interface each was heard on.
    pub heard: Vec<HeardAddress>,
    /// The TXT record, read.
    pub advert: Result<Advert, AdvertError>,
}

/// What a browse reports.
#[derive(Debug, Clone)]
pub enum BrowseEvent {
    /// A broker was resolved (or its records changed).
    Resolved(Box<Sighting>),
    /// A broker said goodbye or its records expired.
    Removed {
        /// Its full name.
        fullname: String,
    },
    /// The browse ended: the receiver fell behind and the daemon dropped
    /// it, or the daemon stopped. Browse again to get a fresh picture.
    Ended,
    /// Something the caller need not act on.
    Other,
}

/// The events of one browse.
#[derive(Debug)]
pub struct Browser {
    receiver: mdns_sd::Receiver<ServiceEvent>,
}

impl Browser {
    /// The next event.
    pub async fn next(&self) -> BrowseEvent {
        match self.receiver.recv_async().await {
            Ok(ServiceEvent::ServiceResolved(resolved)) => {
                let loopback = loopback_interfaces();
                let heard = resolved
                    .get_addresses()
                    .iter()
                    .flat_map(|scoped| heard_of(scoped, &loopback))
                    .collect();
                let advert = parse_txt(
                    resolved
                        .get_properties()
                        .iter()
                        .map(|property| (property.key(), property.val())),
                );
                BrowseEvent::Resolved(Box::new(Sighting {
                    fullname: resolved.get_fullname().to_owned(),
                    host: resolved.get_hostname().to_owned(),
                    port: resolved.get_port(),
                    heard,
                    advert,
                }))
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => BrowseEvent::Removed { fullname },
            Ok(_) => BrowseEvent::Other,
            Err(_) => BrowseEvent::Ended,
        }
    }
}

/// Interface changes seen by the daemon.
#[derive(Debug)]
pub struct InterfaceChanges {
    receiver: mdns_sd::Receiver<mdns_sd::DaemonEvent>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceChange {
    /// An address appeared on an interface.
    Added(IpAddr),
    /// An address went away.
    Removed(IpAddr),
    /// The daemon reported an error (a socket it could not open, say).
    Error(String),
    /// Something else.
    Other,
    /// The daemon stopped.
    Ended,
}

impl InterfaceChanges {
    /// The next change.
    pub async fn next(&self) -> InterfaceChange {
        match self.receiver.recv_async().await {
            Ok(mdns_sd::DaemonEvent::IpAdd(ip)) => InterfaceChange::Added(ip),
            Ok(mdns_sd::DaemonEvent::IpDel(ip)) => InterfaceChange::Removed(ip),
            Ok(mdns_sd::DaemonEvent::Error(err)) => InterfaceChange::Error(err.to_string()),
            Ok(_) => InterfaceChange::Other,
            Err(_) => InterfaceChange::Ended,
        }
    }
}

/// The interfaces mDNS can use on this machine: (name, address), loopback
/// included, IPv6 only when `ipv6`.
pub fn interfaces(ipv6: bool) -> Vec<(String, IpAddr)> {
    let mut out: Vec<(String, IpAddr)> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|interface| ipv6 || interface.ip().is_ipv4())
        .map(|interface| (interface.name.clone(), interface.ip()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn loopback_interfaces() -> BTreeSet<u32> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|interface| interface.is_loopback())
        .filter_map(|interface| interface.index)
        .collect()
}

fn heard_of(scoped: &mdns_sd::ScopedIp, loopback: &BTreeSet<u32>) -> Vec<HeardAddress> {
    match scoped {
        mdns_sd::ScopedIp::V4(v4) => v4
            .interface_ids()
            .iter()
            .map(|interface| HeardAddress {
                ip: IpAddr::V4(*v4.addr()),
                interface_index: interface.index,
                interface_is_loopback: loopback.contains(&interface.index),
            })
            .collect(),
        mdns_sd::ScopedIp::V6(v6) => vec![HeardAddress {
            ip: IpAddr::V6(*v6.addr()),
            interface_index: v6.scope_id().index,
            interface_is_loopback: loopback.contains(&v6.scope_id().index),
        }],
        _ => Vec::new(),
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (idx, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        out[idx] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(key_byte: u8) -> Advert {
        let public_key = [key_byte; 32];
        Advert {
            node_id: NodeId::of_public_key(&public_key),
            node_name: "devbox".into(),
            mesh_id: MeshId::founded_by(&[1; 32]),
            protocol_version: 1,
            public_key,
        }
    }

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<Advert, AdvertError> {
        parse_txt(
            pairs
                .iter()
                .map(|(key, value)| (*key, Some(value.as_bytes()))),
        )
    }

    fn pairs_of(advert: &Advert) -> Vec<(&'static str, String)> {
        advert.txt_properties()
    }

    #[test]
    fn txt_round_trips() {
        let advert = advert(7);
        let pairs = pairs_of(&advert);
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(parse_pairs(&borrowed).unwrap(), advert);
        for (key, value) in &pairs {
            assert!(key.len() + value.len() < 255, "{key} too long for TXT");
        }
        assert!(advert.instance_name().starts_with("devbox-"));
        assert!(advert.host_name().ends_with(".local."));
    }

    #[test]
    fn bad_txt_data_is_refused_with_the_key_named() {
        let good = pairs_of(&advert(7));
        let with = |key: &str, value: Option<&str>| -> Result<Advert, AdvertError> {
            let mut pairs: Vec<(&str, Option<&[u8]>)> = good
                .iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| (*k, Some(v.as_bytes())))
                .collect();
            if let Some(value) = value {
                pairs.push((key, Some(value.as_bytes())));
            }
            parse_txt(pairs)
        };
        assert_eq!(
            with(TXT_KEY_NODE_ID, None).unwrap_err(),
            AdvertError::Missing(TXT_KEY_NODE_ID)
        );
        assert!(matches!(
            with(TXT_KEY_MESH_ID, Some("zz")).unwrap_err(),
            AdvertError::BadValue { key: "mesh", .. }
        ));
        assert!(matches!(
            with(TXT_KEY_PUBLIC_KEY, Some("00")).unwrap_err(),
            AdvertError::BadValue { key: "pk", .. }
        ));
        assert!(matches!(
            with(TXT_KEY_PROTOCOL, Some("one")).unwrap_err(),
            AdvertError::BadValue { key: "proto", .. }
        ));
        assert!(matches!(
            with(TXT_KEY_NODE_NAME, Some("Bad Name")).unwrap_err(),
            AdvertError::BadValue { key: "name", .. }
        ));
        assert_eq!(
            with(TXT_KEY_VERSION, Some("9")).unwrap_err(),
            AdvertError::UnsupportedVersion("9".into())
        );
        let not_utf8 = parse_txt(
            good.iter()
                .map(|(k, v)| {
                    if *k == TXT_KEY_NODE_NAME {
                        (*k, Some(&[0xff, 0xfe][..]))
                    } else {
                        (*k, Some(v.as_bytes()))
                    }
                })
                .collect::<Vec<_>>(),
        );
        assert!(not_utf8.is_err());
    }

    #[test]
    fn a_key_that_is_not_the_nodes_own_is_foreign() {
        let mine = advert(7);
        let other_key = "08".repeat(32);
        let mut pairs = pairs_of(&mine);
        for (key, value) in &mut pairs {
            if *key == TXT_KEY_PUBLIC_KEY {
                *value = other_key.clone();
            }
        }
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = parse_pairs(&borrowed).unwrap_err();
        assert_eq!(err.code(), "FOREIGN_KEY");
    }

    #[test]
    fn verdicts_separate_self_other_meshes_and_members() {
        let advert = advert(7);
        let mesh = advert.mesh_id;
        assert_eq!(judge(&advert, &advert.node_id, &mesh, 1), Verdict::Own);
        let other = NodeId::of_public_key(&[9; 32]);
        assert_eq!(judge(&advert, &other, &mesh, 1), Verdict::Dial);
        let other_mesh = MeshId::founded_by(&[2; 32]);
        assert_eq!(
            judge(&advert, &other, &other_mesh, 1),
            Verdict::OtherMesh(mesh)
        );
        assert_eq!(judge(&advert, &other, &mesh, 2), Verdict::OtherProtocol(1));
    }

    #[test]
    fn dial_addresses_scope_link_local_and_keep_loopback_local() {
        let heard = |ip: &str, index: u32, loopback: bool| HeardAddress {
            ip: ip.parse().unwrap(),
            interface_index: index,
            interface_is_loopback: loopback,
        };
        let addresses = dial_addresses(
            &[
                heard("10.0.0.5", 2, false),
                heard("10.0.0.5", 3, false),
                heard("127.0.0.1", 1, true),
                heard("127.0.0.1", 2, false),
                heard("fe80::1", 2, false),
                heard("fe80::2", 0, false),
                heard("fd00::5", 2, false),
                heard("0.0.0.0", 2, false),
                heard("224.0.0.251", 2, false),
                heard("255.255.255.255", 2, false),
            ],
            3101,
            true,
        );
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.5:3101",
                "127.0.0.1:3101",
                "[fd00::5]:3101",
                "[fe80::1%2]:3101"
            ]
        );
        let v4_only = dial_addresses(&[heard("fd00::5", 2, false)], 3101, false);
        assert!(v4_only.is_empty());
        assert!(dial_addresses(&[heard("10.0.0.5", 2, false)], 0, true).is_empty());
    }
}
