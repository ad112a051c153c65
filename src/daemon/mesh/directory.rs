//! The mesh's directory of agents: where a mention goes. Candidates come
//! from the replicated registry, with owners this broker cannot reach shown
//! as unreachable so reachable ones win, resolved by the core's policy
//! ([`scout_mesh::resolve`]). The same view answers the routing core's
//! [`Directory`] when it may reroute.

use std::collections::HashSet;

use scout_mesh::lifecycle::EndpointState;
use scout_mesh::names::AgentName;
use scout_mesh::resolve::{self, Candidate, ResolveError};
use scout_mesh::routing::{Choice, Directory};
use scout_mesh::wire::NodeId;

use super::Mesh;

/// Resolves `query` to an instance and its owner, leaving out the
/// instance named `exclude`.
pub fn choose(
    mesh: &Mesh,
    own: &NodeId,
    query: &AgentName,
    exclude: Option<&str>,
) -> Result<Choice, ResolveError> {
    let reachable: HashSet<NodeId> = mesh.reachable().into_iter().collect();
    let pairs: Vec<(Candidate, NodeId)> = mesh.with_registry(|registry| {
        registry
            .instances()
            .into_iter()
            .filter(|entry| exclude.is_none_or(|name| entry.name.to_string() != name))
            .map(|entry| {
                let is_local = *entry.origin == *own;
                let state = if is_local || reachable.contains(entry.origin) {
                    entry.body.endpoint_state
                } else {
                    EndpointState::Unreachable
                };
                (
                    Candidate {
                        name: entry.name.clone(),
                        is_local,
                        state,
                        active_flights: entry.body.active_flights,
                        worktrees: entry.body.worktrees,
                    },
                    entry.origin.clone(),
                )
            })
            .collect()
    });
    let list: Vec<Candidate> = pairs
        .iter()
        .map(|(candidate, _)| candidate.clone())
        .collect();
    let resolution = resolve::resolve(query, &list)?;
    // A new worktree has no instance yet: its owner is the node of the
    // definition's instance that makes it.
    let owner = pairs
        .iter()
        .find(|(candidate, _)| candidate.name == resolution.chosen)
        .or_else(|| {
            pairs.iter().find(|(candidate, _)| {
                candidate.worktrees
                    && candidate.name.definition() == resolution.chosen.definition()
                    && candidate.name.node() == resolution.chosen.node()
            })
        })
        .map(|(_, owner)| owner.clone())
        .unwrap_or_else(|| own.clone());
    Ok(Choice {
        instance: resolution.chosen.to_string(),
        reason: resolution.reason.as_str().to_owned(),
        owner,
    })
}

/// The core's directory over this broker's registry.
#[derive(Debug, Clone)]
pub struct MeshDirectory {
    /// The mesh.
    pub mesh: Mesh,
    /// This node.
    pub own: NodeId,
}

impl Directory for MeshDirectory {
    /// Work moves only to an instance that exists: a new worktree made
    /// elsewhere would be a second one for the same workspace.
    fn alternative(&self, target: &str, exclude: &str) -> Option<Choice> {
        let query = AgentName::parse(target).ok()?;
        choose(&self.mesh, &self.own, &query, Some(exclude))
            .ok()
            .filter(|choice| choice.reason != resolve::ResolveReason::NewWorktree.as_str())
    }
}
