//! Usage across the mesh: each owner answers for the flights it ran, from
//! its own store ([`Router::answer_usage_query`]), and the broker asked by
//! a person totals its own answer and those of every connected member
//! ([`Router::usage`]). A member that is not connected, does not answer in
//! time, or refuses the query (a broker of an older build) is listed as
//! missing, so a total never silently leaves one out.
//!
//! This is a read of committed rows, not routing: it never reaches the
//! routing core.

use std::collections::BTreeMap;
use std::time::Duration;

use scout_mesh::wire::{
    ErrorCode, MeshFrame, NodeId, USAGE_RANGE_MS_MAX, USAGE_ROWS_MAX, UsageQuery, UsageReport,
    UsageRow,
};

use super::routing::Router;
use crate::api::usage::{MissingMember, UsageGrouping, UsageSum, UsageTotalRow, UsageTotals};
use crate::store::usage::usage_by_instance;

/// How long the asking broker waits for each member's report. A report is
/// one indexed read on the owner; five seconds covers a slow link and a
/// busy disk, and a person waits at most this long for a total.
pub const USAGE_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Members asked at most in one query: far above a broker's active view,
/// so every connected member is asked, while a bug that connects thousands
/// cannot turn one request into thousands.
pub const USAGE_MEMBERS_MAX: usize = 256;

/// Members asked at once: fewer than a broker's on-demand connections.
const USAGE_ASKS_AT_ONCE: usize = 8;

/// Usage queries read from the store one at a time, off the async
/// workers: each is a scan of up to a year of flights, and members may ask
/// many at once; the rest wait their turn (and their asker's timeout)
/// instead of taking every reader connection and runtime thread.
pub const USAGE_READS_AT_ONCE: usize = 1;

impl Router {
    /// The owner's answer to a usage query: its finished flights since the
    /// asked time (clamped to [`USAGE_RANGE_MS_MAX`] before now), per
    /// instance, at most [`USAGE_ROWS_MAX`] rows.
    pub async fn answer_usage_query(&self, query: &UsageQuery) -> MeshFrame {
        let Ok(_permit) = self.usage_reads.clone().acquire_owned().await else {
            return MeshFrame::error(ErrorCode::NotReady, "this broker is stopping");
        };
        let router = self.clone();
        let since = query.since_unix_ms;
        let report = tokio::task::spawn_blocking(move || router.own_usage(since)).await;
        let Ok(report) = report else {
            return MeshFrame::error(ErrorCode::NotReady, "the usage read did not finish");
        };
        match report {
            Ok(report) => MeshFrame::UsageReport(report),
            Err(err) => MeshFrame::error(ErrorCode::from_word(err.code()), err.to_string()),
        }
    }

    fn own_usage(&self, since_unix_ms: u64) -> Result<UsageReport, crate::store::StoreError> {
        let earliest = self.now_ms().saturating_sub(USAGE_RANGE_MS_MAX);
        let since = i64::try_from(since_unix_ms.max(earliest)).unwrap_or(i64::MAX);
        let (rows, truncated) = self
            .store
            .read(move |connection| usage_by_instance(connection, since, USAGE_ROWS_MAX))?;
        Ok(UsageReport {
            rows: rows
                .into_iter()
                .map(|row| UsageRow {
                    instance: row.instance,
                    flights: row.flights,
                    failed: row.failed,
                    usage: row.usage,
                })
                .collect(),
            truncated,
        })
    }

    /// Totals of the flights this broker and every connected member ran
    /// since `window` ago, by agent or by node.
    pub async fn usage(&self, window: Duration, by: UsageGrouping) -> UsageTotals {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let since_ms = self.now_ms().saturating_sub(window_ms);
        let query = MeshFrame::UsageQuery(UsageQuery {
            since_unix_ms: since_ms,
        });
        let names: BTreeMap<String, String> = self
            .mesh
            .peers()
            .into_iter()
            // A revoked broker is no member: its flights are not asked for.
            .filter(|peer| peer.state != "revoked")
            .map(|peer| (peer.node_id, peer.name))
            .collect();
        let name_of = |node: &NodeId| {
            names
                .get(node.as_str())
                .cloned()
                .unwrap_or_else(|| node.to_string())
        };
        let mut missing = Vec::new();
        let mut connected = self.mesh.reachable();
        connected.sort();
        let asked: Vec<NodeId> = connected.iter().take(USAGE_MEMBERS_MAX).cloned().collect();
        for (node_id, name) in &names {
            let is_connected = connected.iter().any(|peer| peer.as_str() == node_id);
            if !is_connected {
                missing.push(MissingMember {
                    node_id: node_id.clone(),
                    name: name.clone(),
                    reason: "unreachable".to_owned(),
                });
            }
        }
        for skipped in connected.iter().skip(USAGE_MEMBERS_MAX) {
            missing.push(MissingMember {
                node_id: skipped.to_string(),
                name: name_of(skipped),
                reason: format!("more than {USAGE_MEMBERS_MAX} members were reachable"),
            });
        }
        // A few at a time: members outside this broker's view are dialed
        // on demand, and its on-demand connections are bounded.
        use futures_util::StreamExt as _;
        let answers: Vec<Result<UsageReport, String>> =
            futures_util::stream::iter(asked.clone().into_iter().map(|peer| {
                let mesh = self.mesh.clone();
                let query = query.clone();
                async move {
                    match tokio::time::timeout(USAGE_ASK_TIMEOUT, mesh.request(&peer, &query)).await
                    {
                        Ok(Ok(MeshFrame::UsageReport(report))) => Ok(report),
                        Ok(Ok(MeshFrame::Error(error))) => {
                            Err(format!("{}: {}", error.code, error.message))
                        }
                        Ok(Ok(other)) => Err(format!("answered `{}`", other.name())),
                        Ok(Err(detail)) => Err(detail),
                        Err(_) => Err(format!(
                            "no answer within {} s",
                            USAGE_ASK_TIMEOUT.as_secs()
                        )),
                    }
                }
            }))
            .buffered(USAGE_ASKS_AT_ONCE)
            .collect()
            .await;
        let own = match self
            .answer_usage_query(&UsageQuery {
                since_unix_ms: since_ms,
            })
            .await
        {
            MeshFrame::UsageReport(report) => Ok(report),
            MeshFrame::Error(error) => Err(error.message),
            other => Err(format!("unexpected answer `{}`", other.name())),
        };
        let mut reports = vec![(
            self.node_id.clone(),
            self.mesh.shared().identity.node_name.to_string(),
            own,
        )];
        for (peer, answer) in asked.iter().zip(answers) {
            reports.push((peer.clone(), name_of(peer), answer));
        }
        let mut totals = UsageTotals {
            since_ms,
            by,
            rows: Vec::new(),
            total: UsageSum::default(),
            missing: Vec::new(),
            truncated: Vec::new(),
        };
        for (node_id, name, answer) in reports {
            match answer {
                Ok(report) => add_report(&mut totals, &node_id, &name, report),
                Err(reason) => missing.push(MissingMember {
                    node_id: node_id.to_string(),
                    name,
                    reason,
                }),
            }
        }
        totals.missing = missing;
        totals.rows.sort_by(|a, b| {
            b.sum
                .flights
                .cmp(&a.sum.flights)
                .then_with(|| a.key.cmp(&b.key))
        });
        totals
    }
}

/// Adds one member's report to the totals, as rows of its agents or one
/// row for the member.
fn add_report(totals: &mut UsageTotals, node_id: &NodeId, name: &str, report: UsageReport) {
    if report.truncated {
        totals.truncated.push(name.to_owned());
    }
    let mut node_sum = UsageSum::default();
    for row in report.rows {
        let sum = UsageSum {
            flights: row.flights,
            failed: row.failed,
            usage: row.usage,
        };
        node_sum = node_sum.plus(sum);
        if totals.by == UsageGrouping::Agent {
            // A member answers for its own agents only: a row that is not
            // an instance name of that member (another node's, or text
            // meant for a person's terminal) is counted under a plain key.
            let own = scout_mesh::names::AgentName::parse(&row.instance)
                .is_ok_and(|agent| agent.node().is_some_and(|node| node.as_str() == name));
            let key = if own {
                row.instance
            } else {
                format!("{name}: an agent it did not name properly")
            };
            totals.rows.push(UsageTotalRow {
                key,
                node_id: node_id.to_string(),
                sum,
            });
        }
    }
    if totals.by == UsageGrouping::Node {
        totals.rows.push(UsageTotalRow {
            key: name.to_owned(),
            node_id: node_id.to_string(),
            sum: node_sum,
        });
    }
    totals.total = totals.total.plus(node_sum);
}
