//! `/v1/peers` and `/v1/agents`: the mesh and its agents as one broker
//! sees them.

use serde::{Deserialize, Serialize};

use crate::config::discover::AgentView;
use crate::daemon::mesh::address_book::AddressView;
use crate::daemon::mesh::{InstanceView, PeerView};

/// The body of `GET /v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peers {
    /// This broker.
    pub node_id: String,
    /// This broker's name.
    pub node_name: String,
    /// The mesh.
    pub mesh_id: String,
    /// Every other member.
    pub peers: Vec<PeerView>,
    /// Every address in the address book.
    pub addresses: Vec<AddressView>,
}

/// The body of `GET /v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentList {
    /// This machine's agents, in discovery order.
    pub agents: Vec<AgentView>,
    /// Every instance in the mesh, this machine's included.
    pub instances: Vec<InstanceView>,
}
