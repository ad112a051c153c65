//! The registry tables: nodes, projects, agent definitions, agent instances
//! and endpoints, as plain rows with upsert and list.
//!
//! These hold this broker's view of who exists where. Replication (per-origin
//! sequence numbers, tombstones, merge) is layered on top later; for now an
//! upsert replaces the row's fields and keeps its identity.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use scout_mesh::lifecycle::EndpointState;

use super::{StoreError, list_limit, parse_word};

/// Most addresses kept per node. A node has a handful (LAN, Tailscale,
/// public); more would be a misconfiguration or a hostile record.
pub const NODE_ADDRESSES_MAX: usize = 32;

/// A broker in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Derived from the node's public key.
    pub node_id: String,
    /// The human name (`laptop`); data, not identity.
    pub name: String,
    /// Where it was last reachable (`host:port`).
    pub addresses: Vec<String>,
    /// When it was last heard from, unix ms.
    pub last_seen_at_ms: Option<i64>,
    /// When this row last changed, unix ms.
    pub updated_at_ms: i64,
}

/// A project: a repository checkout agents work in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The project's id.
    pub project_id: String,
    /// Its name.
    pub name: String,
    /// The checkout's path on its node.
    pub root_path: Option<String>,
    /// The node the checkout is on.
    pub node_id: Option<String>,
    /// When this row last changed, unix ms.
    pub updated_at_ms: i64,
}

/// A logical agent (`@fabric`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDefinition {
    /// The definition name, lower-case, without `@`.
    pub name: String,
    /// The project it belongs to.
    pub project_id: Option<String>,
    /// The harness it runs in (`claude`, `codex`, ...).
    pub harness: Option<String>,
    /// What it is for.
    pub description: Option<String>,
    /// When this row last changed, unix ms.
    pub updated_at_ms: i64,
}

/// A concrete agent (`@fabric@laptop#feature-x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInstance {
    /// The instance's id; stable across upserts of the same natural key.
    pub instance_id: String,
    /// Its definition's name.
    pub definition_name: String,
    /// The node it runs on.
    pub node_id: String,
    /// Its workspace (branch or worktree), if any.
    pub workspace: Option<String>,
    /// The project it works in.
    pub project_id: Option<String>,
    /// When this row last changed, unix ms.
    pub updated_at_ms: i64,
}

/// How an instance is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The instance it reaches.
    pub instance_id: String,
    /// The harness (`claude`, `codex`, `gemini`, `command`).
    pub harness: String,
    /// The transport (`pty`, `stream_json`, ...).
    pub transport: String,
    /// Whether it can take work now.
    pub state: EndpointState,
    /// When this row last changed, unix ms.
    pub updated_at_ms: i64,
}

impl Node {
    /// Inserts or replaces a node by id.
    pub fn upsert(transaction: &Transaction<'_>, node: &Node) -> Result<(), StoreError> {
        if node.addresses.len() > NODE_ADDRESSES_MAX {
            return Err(StoreError::InvalidRequest {
                detail: format!(
                    "node {} has {} addresses, more than {NODE_ADDRESSES_MAX}",
                    node.node_id,
                    node.addresses.len()
                ),
            });
        }
        let addresses_json = serde_json::Value::from(node.addresses.clone()).to_string();
        transaction
            .prepare_cached(
                "INSERT INTO nodes (node_id, name, addresses_json, last_seen_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (node_id) DO UPDATE SET name = excluded.name,
                     addresses_json = excluded.addresses_json,
                     last_seen_at_ms = excluded.last_seen_at_ms,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                node.node_id,
                node.name,
                addresses_json,
                node.last_seen_at_ms,
                node.updated_at_ms
            ])?;
        Ok(())
    }

    /// The node with this id, if known.
    pub fn get(connection: &Connection, node_id: &str) -> Result<Option<Node>, StoreError> {
        connection
            .prepare_cached(
                "SELECT node_id, name, addresses_json, last_seen_at_ms, updated_at_ms
                 FROM nodes WHERE node_id = ?1",
            )?
            .query_row([node_id], |row| Ok(Node::from_row(row)))
            .optional()?
            .transpose()
    }

    /// Known nodes by name.
    pub fn list(connection: &Connection, limit: usize) -> Result<Vec<Node>, StoreError> {
        let mut statement = connection.prepare_cached(
            "SELECT node_id, name, addresses_json, last_seen_at_ms, updated_at_ms
             FROM nodes ORDER BY name, node_id LIMIT ?1",
        )?;
        let rows = statement.query_map([list_limit(limit)], |row| Ok(Node::from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    fn from_row(row: &Row<'_>) -> Result<Node, StoreError> {
        let node_id: String = row.get(0)?;
        let addresses_json: String = row.get(2)?;
        let addresses: Vec<String> =
            serde_json::from_str(&addresses_json).map_err(|err| StoreError::MalformedRow {
                table: "nodes",
                id: node_id.clone(),
                detail: format!("addresses are not a JSON list of strings: {err}"),
            })?;
        Ok(Node {
            name: row.get(1)?,
            addresses,
            last_seen_at_ms: row.get(3)?,
            updated_at_ms: row.get(4)?,
            node_id,
        })
    }
}

impl Project {
    /// Inserts or replaces a project by id.
    pub fn upsert(transaction: &Transaction<'_>, project: &Project) -> Result<(), StoreError> {
        transaction
            .prepare_cached(
                "INSERT INTO projects (project_id, name, root_path, node_id, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (project_id) DO UPDATE SET name = excluded.name,
                     root_path = excluded.root_path, node_id = excluded.node_id,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                project.project_id,
                project.name,
                project.root_path,
                project.node_id,
                project.updated_at_ms
            ])?;
        Ok(())
    }

    /// Known projects by name.
    pub fn list(connection: &Connection, limit: usize) -> Result<Vec<Project>, StoreError> {
        let mut statement = connection.prepare_cached(
            "SELECT project_id, name, root_path, node_id, updated_at_ms
             FROM projects ORDER BY name, project_id LIMIT ?1",
        )?;
        let rows = statement.query_map([list_limit(limit)], |row| {
            Ok(Project {
                project_id: row.get(0)?,
                name: row.get(1)?,
                root_path: row.get(2)?,
                node_id: row.get(3)?,
                updated_at_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl AgentDefinition {
    /// Inserts or replaces a definition by name.
    pub fn upsert(
        transaction: &Transaction<'_>,
        definition: &AgentDefinition,
    ) -> Result<(), StoreError> {
        transaction
            .prepare_cached(
                "INSERT INTO agent_definitions (name, project_id, harness, description,
                     updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET project_id = excluded.project_id,
                     harness = excluded.harness, description = excluded.description,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                definition.name,
                definition.project_id,
                definition.harness,
                definition.description,
                definition.updated_at_ms
            ])?;
        Ok(())
    }

    /// Known definitions by name.
    pub fn list(connection: &Connection, limit: usize) -> Result<Vec<AgentDefinition>, StoreError> {
        let mut statement = connection.prepare_cached(
            "SELECT name, project_id, harness, description, updated_at_ms
             FROM agent_definitions ORDER BY name LIMIT ?1",
        )?;
        let rows = statement.query_map([list_limit(limit)], |row| {
            Ok(AgentDefinition {
                name: row.get(0)?,
                project_id: row.get(1)?,
                harness: row.get(2)?,
                description: row.get(3)?,
                updated_at_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

const INSTANCE_COLUMNS: &str =
    "instance_id, definition_name, node_id, workspace, project_id, updated_at_ms";

impl AgentInstance {
    /// Inserts an instance or updates the one with the same definition,
    /// node and workspace. Returns the stored instance id, which is the
    /// existing one when the natural key was already known.
    pub fn upsert(
        transaction: &Transaction<'_>,
        instance: &AgentInstance,
    ) -> Result<String, StoreError> {
        let instance_id: String = transaction
            .prepare_cached(
                "INSERT INTO agent_instances (instance_id, definition_name, node_id, workspace,
                     project_id, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (definition_name, node_id, workspace) DO UPDATE
                     SET project_id = excluded.project_id, updated_at_ms = excluded.updated_at_ms
                 RETURNING instance_id",
            )?
            .query_row(
                params![
                    instance.instance_id,
                    instance.definition_name,
                    instance.node_id,
                    instance.workspace.as_deref().unwrap_or(""),
                    instance.project_id,
                    instance.updated_at_ms
                ],
                |row| row.get(0),
            )?;
        Ok(instance_id)
    }

    /// The instance with this id, if known.
    pub fn get(
        connection: &Connection,
        instance_id: &str,
    ) -> Result<Option<AgentInstance>, StoreError> {
        Ok(connection
            .prepare_cached(&format!(
                "SELECT {INSTANCE_COLUMNS} FROM agent_instances WHERE instance_id = ?1"
            ))?
            .query_row([instance_id], instance_from_row)
            .optional()?)
    }

    /// Known instances, optionally only those on one node, by name.
    pub fn list(
        connection: &Connection,
        node_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentInstance>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM agent_instances
             WHERE ?1 IS NULL OR node_id = ?1
             ORDER BY definition_name, node_id, workspace LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![node_id, list_limit(limit)], instance_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<AgentInstance> {
    let workspace: String = row.get(3)?;
    Ok(AgentInstance {
        instance_id: row.get(0)?,
        definition_name: row.get(1)?,
        node_id: row.get(2)?,
        workspace: (!workspace.is_empty()).then_some(workspace),
        project_id: row.get(4)?,
        updated_at_ms: row.get(5)?,
    })
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, instance_id, harness, transport, state, updated_at_ms";

impl Endpoint {
    /// Inserts or replaces an endpoint by id.
    pub fn upsert(transaction: &Transaction<'_>, endpoint: &Endpoint) -> Result<(), StoreError> {
        transaction
            .prepare_cached(
                "INSERT INTO endpoints (endpoint_id, instance_id, harness, transport, state,
                     updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (endpoint_id) DO UPDATE SET instance_id = excluded.instance_id,
                     harness = excluded.harness, transport = excluded.transport,
                     state = excluded.state, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                endpoint.endpoint_id,
                endpoint.instance_id,
                endpoint.harness,
                endpoint.transport,
                endpoint.state.as_str(),
                endpoint.updated_at_ms
            ])?;
        Ok(())
    }

    /// Sets an endpoint's state. Endpoint states have no transition rules:
    /// they report what the harness is doing now.
    pub fn set_state(
        transaction: &Transaction<'_>,
        endpoint_id: &str,
        state: EndpointState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let n_updated = transaction
            .prepare_cached(
                "UPDATE endpoints SET state = ?1, updated_at_ms = ?2 WHERE endpoint_id = ?3",
            )?
            .execute(params![state.as_str(), now_ms, endpoint_id])?;
        if n_updated == 0 {
            return Err(StoreError::NotFound {
                kind: "endpoint",
                id: endpoint_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Known endpoints, optionally only those of one instance.
    pub fn list(
        connection: &Connection,
        instance_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StoreError> {
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints
             WHERE ?1 IS NULL OR instance_id = ?1
             ORDER BY instance_id, endpoint_id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![instance_id, list_limit(limit)], |row| {
            Ok(Endpoint::from_row(row))
        })?;
        rows.map(|row| row?).collect()
    }

    fn from_row(row: &Row<'_>) -> Result<Endpoint, StoreError> {
        let endpoint_id: String = row.get(0)?;
        let state: String = row.get(4)?;
        Ok(Endpoint {
            instance_id: row.get(1)?,
            harness: row.get(2)?,
            transport: row.get(3)?,
            state: parse_word("endpoints", &endpoint_id, &state)?,
            updated_at_ms: row.get(5)?,
            endpoint_id,
        })
    }
}
