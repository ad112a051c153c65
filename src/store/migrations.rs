//! The schema, as an ordered list of migrations tracked in
//! `PRAGMA user_version`.
//!
//! A migration is applied in one transaction together with the version bump,
//! so a crash leaves the file at the old or the new version, never between.
//! A released migration never changes: a new column or table is a new entry
//! at the end of [`MIGRATIONS`]. State columns carry CHECK constraints with
//! the words of `scout_mesh::lifecycle`; a unit test keeps the two in step,
//! so a new state word fails the build's tests until a migration adds it.
//!
//! Conventions: ids are TEXT (uuid v7 strings for rows the store creates,
//! natural keys for registry rows), timestamps are INTEGER unix
//! milliseconds (`*_at_ms`), every table is STRICT so a value of the wrong
//! type is refused at write time rather than discovered at read time.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `user_version` after this migration; versions count up from 1
    /// without gaps.
    pub version: i64,
    /// What the migration does, for logs.
    pub name: &'static str,
    /// The statements, run as one batch inside the migration's transaction.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial schema",
        sql: SCHEMA_V1,
    },
    Migration {
        version: 2,
        name: "replicated registry, mesh state and invites",
        sql: SCHEMA_V2,
    },
    Migration {
        version: 3,
        name: "queued flights by instance, resolution on deliveries",
        sql: SCHEMA_V3,
    },
    Migration {
        version: 4,
        name: "failure codes and usage on flights and deliveries",
        sql: SCHEMA_V4,
    },
    Migration {
        version: 5,
        name: "sender and causal chain on invocations",
        sql: SCHEMA_V5,
    },
    Migration {
        version: 6,
        name: "approvals and standing approval rules",
        sql: SCHEMA_V6,
    },
    Migration {
        version: 7,
        name: "checkpoints of agent worktrees",
        sql: SCHEMA_V7,
    },
    Migration {
        version: 8,
        name: "scoped api tokens, hash-chained audit log",
        sql: SCHEMA_V8,
    },
    Migration {
        version: 9,
        name: "flight output appended in chunks",
        sql: SCHEMA_V9,
    },
    Migration {
        version: 10,
        name: "manifest records in the registry",
        sql: SCHEMA_V10,
    },
];

/// The registry's kind list gains `manifest`: an origin's list of its live
/// records, which replaces waiting for every member before a tombstone is
/// collected. SQLite cannot change a CHECK in place, so the table is
/// rebuilt with its rows (as in version 6).
const SCHEMA_V10: &str = r#"
CREATE TABLE registry_records_v10 (
    origin         TEXT NOT NULL CHECK (length(origin) = 32),
    kind           TEXT NOT NULL CHECK (kind IN
                   ('node', 'instance', 'admission', 'revocation', 'definition', 'approval',
                    'manifest')),
    name           TEXT NOT NULL,
    counter        INTEGER NOT NULL CHECK (counter >= 1),
    tombstone      INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
    record         BLOB NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (origin, kind, name)
) STRICT;
INSERT INTO registry_records_v10 SELECT * FROM registry_records;
DROP TABLE registry_records;
ALTER TABLE registry_records_v10 RENAME TO registry_records;
"#;

/// A flight's output grows by appending chunks as the agent writes, instead
/// of rewriting the whole value: SQLite rewrites a TEXT value (and every
/// overflow page of it) on each `output || ?`, so a chatty agent near the
/// 1 MiB limit cost a megabyte of writes per 16 KiB of output. The flight
/// row keeps the output up to the last cut in `output` and the byte count
/// of it and its chunks in `output_bytes`; the chunks hold the rest in
/// order (a new flight's row keeps none; a cut or a finished flight folds
/// them into one chunk). `store::flights` reads the two as one text.
const SCHEMA_V9: &str = r#"
ALTER TABLE flights ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0
    CHECK (output_bytes >= 0);
UPDATE flights SET output_bytes = length(CAST(output AS BLOB));

CREATE TABLE flight_output_chunks (
    chunk_id   INTEGER PRIMARY KEY,
    flight_id  TEXT NOT NULL REFERENCES flights (flight_id),
    chunk      TEXT NOT NULL
) STRICT;
CREATE INDEX flight_output_chunks_by_flight ON flight_output_chunks (flight_id, chunk_id);
"#;

/// Tokens made with `scout tokens create`, kept as the SHA-256 digest of
/// the secret (hex), never the secret; and the audit log's hash chain:
/// each row's `hash` covers its fields and the previous row's hash
/// (`store::audit` says how). Rows written before this step are chained by
/// [`super::audit::chain_unchained`], run in the same transaction.
const SCHEMA_V8: &str = r#"
CREATE TABLE api_tokens (
    token_id         TEXT PRIMARY KEY,
    name             TEXT CHECK (name IS NULL OR length(name) BETWEEN 1 AND 64),
    scope            TEXT NOT NULL CHECK (scope IN ('read', 'agent', 'operator')),
    agent            TEXT,
    digest           TEXT NOT NULL UNIQUE CHECK (length(digest) = 64),
    created_by       TEXT NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    expires_at_ms    INTEGER,
    last_used_at_ms  INTEGER,
    revoked_at_ms    INTEGER,
    CHECK (scope <> 'agent' OR agent IS NOT NULL)
) STRICT;

ALTER TABLE audit_log ADD COLUMN prev_hash TEXT
    CHECK (prev_hash IS NULL OR length(prev_hash) = 64);
ALTER TABLE audit_log ADD COLUMN hash TEXT
    CHECK (hash IS NULL OR length(hash) = 64);
"#;

/// Approvals this broker owns (it runs the agent that asked, or took the
/// gated request): the one authoritative copy, which the registry record
/// every member sees mirrors. `gate_json` is the gated action to run once
/// approved (NULL when the asking agent acts itself on the answer);
/// `applied_at_ms` marks that it ran, so a restart after the decision runs
/// it at most once more, and only when it had not finished. The registry's
/// kind list gains `approval`: SQLite cannot change a CHECK in place, so the
/// table is rebuilt with its rows. A rule is a standing answer (`--always`)
/// for one action and exact summary of one agent instance on this broker;
/// `applied_at_ms` is also the claim that keeps a gated action to one run.
const SCHEMA_V6: &str = r#"
CREATE TABLE registry_records_v6 (
    origin         TEXT NOT NULL CHECK (length(origin) = 32),
    kind           TEXT NOT NULL CHECK (kind IN
                   ('node', 'instance', 'admission', 'revocation', 'definition', 'approval')),
    name           TEXT NOT NULL,
    counter        INTEGER NOT NULL CHECK (counter >= 1),
    tombstone      INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
    record         BLOB NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (origin, kind, name)
) STRICT;
INSERT INTO registry_records_v6 SELECT * FROM registry_records;
DROP TABLE registry_records;
ALTER TABLE registry_records_v6 RENAME TO registry_records;

CREATE TABLE approvals (
    approval_id     TEXT PRIMARY KEY NOT NULL CHECK (length(approval_id) = 20),
    agent           TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (length(action) BETWEEN 1 AND 96),
    summary         TEXT NOT NULL,
    invocation_id   TEXT,
    gate_json       TEXT CHECK (gate_json IS NULL OR json_valid(gate_json)),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    created_at_ms   INTEGER NOT NULL,
    deadline_at_ms  INTEGER NOT NULL,
    decided_by      TEXT,
    decided_at_ms   INTEGER,
    note            TEXT NOT NULL DEFAULT '',
    applied_at_ms   INTEGER,
    outcome         TEXT
) STRICT;
CREATE INDEX approvals_pending_by_deadline ON approvals (deadline_at_ms)
    WHERE state = 'pending';
CREATE INDEX approvals_by_creation ON approvals (created_at_ms);

CREATE TABLE approval_rules (
    rule_id        TEXT PRIMARY KEY NOT NULL,
    agent          TEXT NOT NULL,
    action         TEXT NOT NULL,
    summary        TEXT NOT NULL,
    allow          INTEGER NOT NULL CHECK (allow IN (0, 1)),
    created_by     TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    UNIQUE (agent, action, summary)
) STRICT;
CREATE INDEX approvals_pending_by_agent ON approvals (agent) WHERE state = 'pending';
"#;

/// Checkpoints of agent worktrees taken before risky work (see
/// `crate::checkpoint`), one per flight (or other action) id: where the
/// worktree is, the ref and commit that keep its files, and how many files
/// differed from `HEAD`. A checkpoint that git failed to make keeps the
/// error instead of a ref and commit, so the flight's record says why it
/// has none.
const SCHEMA_V7: &str = r#"
CREATE TABLE checkpoints (
    checkpoint_id TEXT PRIMARY KEY CHECK (length(checkpoint_id) BETWEEN 1 AND 128),
    invocation_id TEXT,
    instance TEXT NOT NULL,
    workspace TEXT NOT NULL,
    ref_name TEXT,
    commit_id TEXT,
    files_changed INTEGER CHECK (files_changed IS NULL OR files_changed >= 0),
    error TEXT,
    created_at_ms INTEGER NOT NULL,
    CHECK ((commit_id IS NULL) = (ref_name IS NULL)),
    CHECK ((commit_id IS NULL) <> (error IS NULL))
) STRICT;
CREATE INDEX checkpoints_by_instance ON checkpoints (instance, created_at_ms);
CREATE INDEX checkpoints_by_invocation ON checkpoints (invocation_id);
CREATE INDEX checkpoints_by_workspace ON checkpoints (workspace, created_at_ms);
"#;

/// Who sent an invocation, when an agent did (NULL for a person), and the
/// causal chain of instances that led to it, as a JSON array (NULL when
/// empty): the mention-loop check reads the chain of the invocation an
/// agent runs when that agent sends another.
const SCHEMA_V5: &str = r#"
ALTER TABLE invocations ADD COLUMN from_instance TEXT;
ALTER TABLE invocations ADD COLUMN chain TEXT;
"#;

/// What a turn used and how it failed, on the owner's flight and on the
/// origin's delivery (which learns them with the result): the stable code
/// of a failed turn (`AUTH_REQUIRED`), and the tokens and cost the agent's
/// CLI reported (all NULL when it reported none; the cost alone NULL when
/// it reported tokens but no price). The index serves usage totals over
/// finished flights by the time they ended.
const SCHEMA_V4: &str = r#"
ALTER TABLE flights ADD COLUMN failure_code TEXT
    CHECK (failure_code IS NULL OR (length(failure_code) BETWEEN 1 AND 64
           AND failure_code NOT GLOB '*[^A-Z0-9_]*'));
ALTER TABLE flights ADD COLUMN input_tokens INTEGER CHECK (input_tokens >= 0);
ALTER TABLE flights ADD COLUMN output_tokens INTEGER CHECK (output_tokens >= 0);
ALTER TABLE flights ADD COLUMN cached_tokens INTEGER CHECK (cached_tokens >= 0);
ALTER TABLE flights ADD COLUMN cost_micro_usd INTEGER CHECK (cost_micro_usd >= 0);
ALTER TABLE deliveries ADD COLUMN failure_code TEXT
    CHECK (failure_code IS NULL OR (length(failure_code) BETWEEN 1 AND 64
           AND failure_code NOT GLOB '*[^A-Z0-9_]*'));
ALTER TABLE deliveries ADD COLUMN input_tokens INTEGER CHECK (input_tokens >= 0);
ALTER TABLE deliveries ADD COLUMN output_tokens INTEGER CHECK (output_tokens >= 0);
ALTER TABLE deliveries ADD COLUMN cached_tokens INTEGER CHECK (cached_tokens >= 0);
ALTER TABLE deliveries ADD COLUMN cost_micro_usd INTEGER CHECK (cost_micro_usd >= 0);
CREATE INDEX flights_finished_by_update ON flights (updated_at_ms)
    WHERE state IN ('completed', 'failed', 'cancelled');
"#;

/// A runner takes the oldest queued flight of its instance
/// (`Flight::next_queued`): one step down this index, where the state index
/// alone made it read and sort every queued flight of every instance. The
/// origin keeps why it chose the instance on the delivery itself.
const SCHEMA_V3: &str = r#"
CREATE INDEX flights_queued_by_instance
    ON flights (chosen_instance, created_at_ms, flight_id)
    WHERE state = 'queued';
ALTER TABLE deliveries ADD COLUMN resolve_reason TEXT;
"#;

/// The schema version this binary writes: the last migration's.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The mesh: the replicated registry records exactly as they travel (the
/// postcard bytes of a `scout_mesh::wire::Record`, tombstones included), the
/// version vector persisted with them, and the invites this broker issued
/// (only the secret's hash is kept). Which mesh the broker belongs to lives
/// in `mesh.json` beside the node key, so a lost store resyncs into the same
/// mesh.
const SCHEMA_V2: &str = r#"
CREATE TABLE registry_records (
    origin         TEXT NOT NULL CHECK (length(origin) = 32),
    kind           TEXT NOT NULL CHECK (kind IN
                   ('node', 'instance', 'admission', 'revocation', 'definition')),
    name           TEXT NOT NULL,
    counter        INTEGER NOT NULL CHECK (counter >= 1),
    tombstone      INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
    record         BLOB NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (origin, kind, name)
) STRICT;

CREATE TABLE registry_vv (
    origin   TEXT PRIMARY KEY NOT NULL CHECK (length(origin) = 32),
    counter  INTEGER NOT NULL CHECK (counter >= 0)
) STRICT;

CREATE TABLE invites (
    invite_id      TEXT PRIMARY KEY NOT NULL CHECK (length(invite_id) = 16),
    secret_hash    BLOB NOT NULL CHECK (length(secret_hash) = 32),
    expires_at_ms  INTEGER NOT NULL,
    used_by        TEXT,
    used_at_ms     INTEGER,
    created_at_ms  INTEGER NOT NULL
) STRICT;
"#;

const SCHEMA_V1: &str = r#"
CREATE TABLE nodes (
    node_id          TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    addresses_json   TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(addresses_json)),
    last_seen_at_ms  INTEGER,
    updated_at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX nodes_by_name ON nodes (name);

CREATE TABLE projects (
    project_id     TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    root_path      TEXT,
    node_id        TEXT REFERENCES nodes (node_id),
    updated_at_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE agent_definitions (
    name           TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    project_id     TEXT REFERENCES projects (project_id),
    harness        TEXT,
    description    TEXT,
    updated_at_ms  INTEGER NOT NULL
) STRICT;

-- An instance is a definition running on a node in a workspace. The
-- workspace is '' when the instance has none, so the natural key is unique
-- (NULLs never collide in a UNIQUE constraint).
CREATE TABLE agent_instances (
    instance_id      TEXT PRIMARY KEY NOT NULL,
    definition_name  TEXT NOT NULL REFERENCES agent_definitions (name),
    node_id          TEXT NOT NULL REFERENCES nodes (node_id),
    workspace        TEXT NOT NULL DEFAULT '',
    project_id       TEXT REFERENCES projects (project_id),
    updated_at_ms    INTEGER NOT NULL,
    UNIQUE (definition_name, node_id, workspace)
) STRICT;
CREATE INDEX agent_instances_by_node ON agent_instances (node_id);

CREATE TABLE endpoints (
    endpoint_id    TEXT PRIMARY KEY NOT NULL,
    instance_id    TEXT NOT NULL REFERENCES agent_instances (instance_id) ON DELETE CASCADE,
    harness        TEXT NOT NULL,
    transport      TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN
                   ('registered', 'waking', 'idle', 'working', 'unreachable', 'failed', 'stopped')),
    updated_at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX endpoints_by_instance ON endpoints (instance_id);

CREATE TABLE conversations (
    conversation_id  TEXT PRIMARY KEY NOT NULL,
    title            TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX conversations_by_update ON conversations (updated_at_ms);

-- seq orders messages within a conversation; the single writer assigns it.
CREATE TABLE messages (
    message_id       TEXT PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (conversation_id),
    seq              INTEGER NOT NULL CHECK (seq >= 1),
    author           TEXT NOT NULL,
    body             TEXT NOT NULL,
    invocation_id    TEXT,
    created_at_ms    INTEGER NOT NULL,
    UNIQUE (conversation_id, seq)
) STRICT;

-- The primary key is the UNIQUE(invocation_id) the owner relies on to never
-- execute an id twice. conversation_id is not a foreign key: an owner
-- receives invocations for conversations that live at the origin.
CREATE TABLE invocations (
    invocation_id    TEXT PRIMARY KEY NOT NULL,
    action           TEXT NOT NULL CHECK (action IN
                     ('consult', 'execute', 'summarize', 'status', 'wake')),
    body             TEXT NOT NULL,
    conversation_id  TEXT,
    origin_node      TEXT NOT NULL,
    target           TEXT NOT NULL,
    deadline_ms      INTEGER,
    delivery_policy  TEXT NOT NULL CHECK (delivery_policy IN
                     ('best_effort', 'must_ack', 'durable', 'ephemeral')),
    created_at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX invocations_by_conversation ON invocations (conversation_id)
    WHERE conversation_id IS NOT NULL;

-- One flight per invocation, on its owner. A failure reason is required on
-- `failed`, allowed on `cancelled`, and refused on every other state.
CREATE TABLE flights (
    flight_id        TEXT PRIMARY KEY NOT NULL,
    invocation_id    TEXT NOT NULL UNIQUE REFERENCES invocations (invocation_id),
    state            TEXT NOT NULL CHECK (state IN
                     ('queued', 'waking', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    chosen_instance  TEXT,
    resolve_reason   TEXT,
    failure_reason   TEXT CHECK (failure_reason IN
                     ('peer_unreachable', 'peer_rejected', 'agent_offline', 'timeout',
                      'harness_error', 'dispatch', 'cancelled')),
    failure_detail   TEXT,
    output           TEXT NOT NULL DEFAULT '',
    result           TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    CHECK (state <> 'failed' OR failure_reason IS NOT NULL),
    CHECK (failure_reason IS NULL OR state IN ('failed', 'cancelled'))
) STRICT;
CREATE INDEX flights_non_terminal ON flights (state)
    WHERE state IN ('queued', 'waking', 'running', 'waiting');

-- The origin's view of routing one invocation.
CREATE TABLE deliveries (
    delivery_id      TEXT PRIMARY KEY NOT NULL,
    invocation_id    TEXT NOT NULL REFERENCES invocations (invocation_id),
    target           TEXT NOT NULL,
    owner_node       TEXT,
    state            TEXT NOT NULL CHECK (state IN
                     ('accepted', 'peer_acked', 'running', 'completed', 'deferred', 'failed', 'cancelled')),
    failure_reason   TEXT CHECK (failure_reason IN
                     ('peer_unreachable', 'peer_rejected', 'agent_offline', 'timeout',
                      'harness_error', 'dispatch', 'cancelled')),
    failure_detail   TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    CHECK (state <> 'failed' OR failure_reason IS NOT NULL),
    CHECK (failure_reason IS NULL OR state IN ('failed', 'cancelled'))
) STRICT;
CREATE INDEX deliveries_by_state ON deliveries (state, updated_at_ms);
CREATE INDEX deliveries_by_invocation ON deliveries (invocation_id);

-- One row per try; ended_at_ms and outcome stay NULL while the try runs.
CREATE TABLE delivery_attempts (
    delivery_id      TEXT NOT NULL REFERENCES deliveries (delivery_id),
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    started_at_ms    INTEGER NOT NULL,
    ended_at_ms      INTEGER,
    outcome          TEXT CHECK (outcome IN ('succeeded', 'failed')),
    failure_reason   TEXT CHECK (failure_reason IN
                     ('peer_unreachable', 'peer_rejected', 'agent_offline', 'timeout',
                      'harness_error', 'dispatch', 'cancelled')),
    failure_detail   TEXT,
    PRIMARY KEY (delivery_id, attempt),
    CHECK ((outcome IS NULL) = (ended_at_ms IS NULL)),
    CHECK ((outcome = 'failed') = (failure_reason IS NOT NULL))
) STRICT;

CREATE TABLE work_orders (
    work_order_id  TEXT PRIMARY KEY NOT NULL,
    target         TEXT NOT NULL,
    body           TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN
                   ('queued', 'running', 'completed', 'failed', 'cancelled')),
    owner_node     TEXT NOT NULL,
    schedule       TEXT,
    invocation_id  TEXT,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX work_orders_by_state ON work_orders (state, created_at_ms);

-- Append-only; seq gives the order entries were written in.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    ts_ms        INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    detail_json  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail_json))
) STRICT;
CREATE INDEX audit_log_by_subject ON audit_log (subject, seq);
"#;

/// Reads `PRAGMA user_version`.
pub fn schema_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies every migration newer than the file's version, each in its own
/// transaction. Refuses a file newer than [`SCHEMA_VERSION`].
pub(crate) fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    for migration in MIGRATIONS {
        // BEGIN IMMEDIATE takes the write lock first, so the version read
        // below cannot change under us before the migration commits.
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = schema_version(&transaction)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found >= migration.version {
            continue;
        }
        transaction.execute_batch(migration.sql)?;
        // Rows the audit log held before it was chained get their chain in
        // the step that adds it; a no-op before that step and after it.
        super::audit::chain_unchained(&transaction)?;
        transaction.pragma_update(None, "user_version", migration.version)?;
        transaction.commit()?;
        tracing::info!(
            path = %path.display(),
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scout_mesh::lifecycle::{
        DeliveryPolicy, DeliveryState, EndpointState, FailureReason, FlightState, InvocationAction,
    };

    use crate::store::work_orders::WorkOrderState;
    use scout_mesh::wire::ApprovalState;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (idx, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, idx as i64 + 1, "{}", migration.name);
        }
    }

    /// The CHECK list of `column` in the schema text, e.g. for
    /// `state IN ('a', 'b')` returns `["a", "b"]`. Takes the first match
    /// after `anchor`.
    fn check_list(anchor: &str, column: &str) -> Vec<String> {
        let all_sql: String = MIGRATIONS.iter().map(|m| m.sql).collect();
        let table_start = all_sql.find(anchor).expect("anchor in schema");
        let rest = &all_sql[table_start..];
        let needle = format!("{column} IN");
        let column_start = rest.find(&needle).expect("column check in schema");
        let open = column_start + rest[column_start..].find('(').expect("open paren");
        let close = open + rest[open..].find(')').expect("close paren");
        rest[open + 1..close]
            .split(',')
            .map(|word| word.trim().trim_matches('\'').to_owned())
            .collect()
    }

    fn words<T: std::fmt::Display>(all: &[T]) -> Vec<String> {
        all.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn check_constraints_list_the_lifecycle_words() {
        assert_eq!(
            check_list("CREATE TABLE flights", "state"),
            words(FlightState::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE flights", "failure_reason"),
            words(FailureReason::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE deliveries", "state"),
            words(DeliveryState::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE deliveries", "failure_reason"),
            words(FailureReason::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE delivery_attempts", "failure_reason"),
            words(FailureReason::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE invocations", "action"),
            words(InvocationAction::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE invocations", "delivery_policy"),
            words(DeliveryPolicy::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE endpoints", "state"),
            words(EndpointState::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE work_orders", "state"),
            words(WorkOrderState::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE registry_records_v10", "kind"),
            words(scout_mesh::wire::RecordKind::ALL)
        );
        assert_eq!(
            check_list("CREATE TABLE approvals", "state"),
            words(&[
                ApprovalState::Pending,
                ApprovalState::Approved,
                ApprovalState::Denied,
                ApprovalState::Expired
            ])
        );
    }

    #[test]
    fn migrating_an_empty_database_reaches_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        let mut connection = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&connection).unwrap(), 0);
        migrate(&mut connection, &path).unwrap();
        assert_eq!(schema_version(&connection).unwrap(), SCHEMA_VERSION);
        let n_tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        // 13 tables of the first schema, 3 of the mesh (records, vv,
        // invites), 2 of approvals (approvals, rules), 1 of checkpoints, 1 of
        // tokens.
        assert_eq!(n_tables, 21);
        // A second run finds nothing to do.
        migrate(&mut connection, &path).unwrap();
        assert_eq!(schema_version(&connection).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn state_checks_refuse_unknown_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scout.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path).unwrap();
        let err = connection
            .execute(
                "INSERT INTO work_orders (work_order_id, target, body, state, owner_node,
                     created_at_ms, updated_at_ms)
                 VALUES ('w', '@a', 'b', 'sleeping', 'n', 0, 0)",
                [],
            )
            .unwrap_err();
        assert!(err.to_string().contains("CHECK"), "{err}");
    }
}
