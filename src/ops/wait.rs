//! Write confirmation: wait until every change committed on this node before the call has been applied on
//! every node of the cluster (`-wait-replicated`, and `GET /wait-replicated` on the health server).
//!
//! The condition, in three steps:
//!
//! 1. `M`, the change log's highest id now (read-only connection; an empty log, or a node with
//!    `publish = false`, leaves nothing to publish: `M = 0`).
//! 2. This node's publisher has `published_upto >= M`: every one of those changes is acknowledged by
//!    JetStream. Inside the node this is its [`Counters`]; from a command, the node's status entry (which the
//!    node writes soon after its publisher moves).
//! 3. The shards' streams are read *after* step 2 held: each one's last sequence `L_s` is at or above every
//!    acknowledged message. Then every known node's status entry must show a handled position `>= L_s` on
//!    every shard. Known nodes are those of the status bucket and of the retention bucket
//!    (`harmonylite-positions`): a node that is down still counts, and makes the wait time out.
//!
//! Everything is read through [`status::gather`] and polled every [`POLL`] until the timeout. The nodes write
//! their status entries soon after they apply (at most 4 times a second, see [`status::run`]), so a settled
//! cluster answers within a second or so.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;

use super::status::{self, Handled, Report, StatusError, StreamState};
use crate::config::Config;
use crate::counters::Counters;
use crate::nats::KvError;

/// The path of the health server's route.
pub const ROUTE: &str = crate::config::WAIT_REPLICATED_ROUTE;
/// How long the wait lasts when no timeout is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait the HTTP route accepts.
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the cluster's state is read again while waiting.
const POLL: Duration = Duration::from_millis(150);
/// The longest a single read of the cluster's state may retry once the first one has answered.
const READ_WITHIN: Duration = Duration::from_secs(5);

/// Why the wait could not even start.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("cannot read the change log of {path}: {reason}")]
    ChangeLog { path: String, reason: String },
    #[error("cannot reach the cluster's NATS: {0}")]
    Nats(#[from] crate::nats::NatsError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// Where this node's publish progress is read.
#[derive(Clone)]
pub enum Progress {
    /// Inside the node: its counters.
    Counters(Arc<Counters>),
    /// From a command: the node's status entry.
    StatusEntry,
}

/// Every change up to log id `upto` is on every node.
#[derive(Debug, Clone, Serialize)]
pub struct Replicated {
    pub status: &'static str,
    pub node_id: u64,
    /// The change log's highest id at the call (0: nothing to publish).
    pub upto: u64,
    /// The nodes that have applied it all.
    pub nodes: Vec<u64>,
    /// The positions every node reached (the streams' last sequences once `upto` was acknowledged).
    pub streams: Vec<StreamState>,
    pub waited_ms: u64,
}

/// The timeout passed first: who is still behind.
#[derive(Debug, Clone, Serialize)]
pub struct Behind {
    pub status: &'static str,
    pub node_id: u64,
    pub upto: u64,
    pub timeout_ms: u64,
    /// This node's publisher had not acknowledged `upto` yet: how far it had (none: not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpublished: Option<Unpublished>,
    /// Nodes below the positions needed (below the streams' current ends while `upto` is unpublished).
    pub nodes: Vec<NodeBehind>,
    /// How many nodes the status and retention buckets know, and how many the NATS cluster's routes name (as
    /// this command or node sees them, or as any node's status entry says).
    pub known_nodes: usize,
    pub expected_nodes: usize,
    /// The last failure to read the cluster's state, when the last read failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// This node has not published everything up to `upto`.
#[derive(Debug, Clone, Serialize)]
pub struct Unpublished {
    pub published_upto: Option<u64>,
}

/// One node still behind.
#[derive(Debug, Clone, Serialize)]
pub struct NodeBehind {
    pub node_id: u64,
    pub reachable: bool,
    /// Age of its status entry (none: it never wrote one that could be read).
    pub age_ms: Option<u64>,
    pub shards: Vec<ShardBehind>,
}

/// One shard of a node still behind.
#[derive(Debug, Clone, Serialize)]
pub struct ShardBehind {
    pub shard: u32,
    pub stream: String,
    pub applied: u64,
    pub needed: u64,
    pub behind: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<u64>,
}

/// How a wait ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Replicated(Replicated),
    TimedOut(Behind),
}

impl Outcome {
    pub fn is_replicated(&self) -> bool {
        matches!(self, Outcome::Replicated(_))
    }

    /// The outcome as one JSON document.
    pub fn json(&self) -> String {
        match self {
            Outcome::Replicated(r) => serde_json::to_string(r),
            Outcome::TimedOut(b) => serde_json::to_string(b),
        }
        .expect("an outcome serialises")
    }

    /// The outcome for people: one line when replicated; else a line per node behind.
    pub fn text(&self) -> String {
        match self {
            Outcome::Replicated(r) => format!(
                "replicated: changes up to log id {} are on all {} nodes\n",
                r.upto,
                r.nodes.len()
            ),
            Outcome::TimedOut(b) => b.text(),
        }
    }
}

impl Behind {
    fn text(&self) -> String {
        let mut out = format!(
            "not replicated within {:.1} s: changes up to log id {} are not on every node yet\n",
            self.timeout_ms as f64 / 1000.0,
            self.upto
        );
        if let Some(u) = &self.unpublished {
            let had = match u.published_upto {
                Some(p) => format!("published up to {p}"),
                None => "its publish progress is not known".to_string(),
            };
            out.push_str(&format!(
                "  node {} (this node): has not published them yet ({had})\n",
                self.node_id
            ));
        }
        for n in &self.nodes {
            let state = match (n.reachable, n.age_ms) {
                (true, _) => "reachable".to_string(),
                (false, Some(age)) => {
                    format!("unreachable, last seen {:.1} s ago", age as f64 / 1000.0)
                }
                (false, None) => "unreachable, never seen".to_string(),
            };
            let shards: Vec<String> = n
                .shards
                .iter()
                .map(|s| {
                    let mut t = format!(
                        "shard {} behind by {} (applied {} of {})",
                        s.shard, s.behind, s.applied, s.needed
                    );
                    if let Some(p) = &s.paused {
                        t.push_str(&format!(", paused: {p}"));
                    }
                    if let Some(g) = s.gap {
                        t.push_str(&format!(", stopped at a gap needing {g}"));
                    }
                    t
                })
                .collect();
            out.push_str(&format!(
                "  node {} ({state}): {}\n",
                n.node_id,
                shards.join("; ")
            ));
        }
        if self.known_nodes < self.expected_nodes {
            out.push_str(&format!(
                "  only {} nodes are known of the {} the cluster's routes name (the others never reported)\n",
                self.known_nodes, self.expected_nodes
            ));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("  last read of the cluster's state failed: {e}\n"));
        }
        out
    }
}

/// The change log's highest id (0 when it is empty or does not exist yet), through a read-only connection.
pub fn highest_log_id(db: &Path) -> Result<u64, WaitError> {
    use rusqlite::OpenFlags;
    let err = |e: rusqlite::Error| WaitError::ChangeLog {
        path: db.display().to_string(),
        reason: e.to_string(),
    };
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [crate::capture::LOG],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !exists {
        return Ok(0);
    }
    let max = crate::capture::max_log_id(&conn).map_err(err)?;
    Ok(max.max(0) as u64)
}

/// What the wait must cover: the change log's highest id now ([`highest_log_id`]), or 0 when this node does
/// not publish (`publish = false`: its changes never leave it). Blocking.
pub fn log_upto(cfg: &Config) -> Result<u64, WaitError> {
    if cfg.publish {
        highest_log_id(&cfg.db_path)
    } else {
        Ok(0)
    }
}

/// Wait until every change of this node up to log id `upto` (see [`log_upto`]) is applied on every known node,
/// or `timeout` passes. Fewer known nodes than `expected_nodes` (the servers the embedded NATS cluster's
/// routes name), or than any node's status entry expects, count as not there yet. Fails when the cluster's state cannot be read at all.
pub async fn wait(
    js: &jetstream::Context,
    cfg: &Config,
    upto: u64,
    progress: Progress,
    expected_nodes: usize,
    timeout: Duration,
) -> Result<Outcome, WaitError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    // The streams' ends once `upto` was acknowledged: the positions every node must reach.
    let mut targets: Option<Vec<StreamState>> = None;
    let mut first = true;
    let mut last = Behind {
        status: "timeout",
        node_id: cfg.node_id,
        upto,
        timeout_ms: timeout.as_millis() as u64,
        unpublished: None,
        nodes: Vec::new(),
        known_nodes: 0,
        expected_nodes,
        error: None,
    };
    loop {
        // Inside the node, read the counter before the streams are.
        let counted = match &progress {
            Progress::Counters(c) => Some(c.published_upto.load(Ordering::Relaxed)),
            Progress::StatusEntry => None,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let within = if first {
            left.max(Duration::from_secs(1))
        } else {
            left.min(READ_WITHIN).max(Duration::from_millis(100))
        };
        match status::gather(js, cfg, || handled_positions(js), within).await {
            Ok(report) => {
                first = false;
                last.error = None;
                let published = counted.or_else(|| {
                    report
                        .nodes
                        .iter()
                        .find(|n| n.node_id == cfg.node_id)
                        .and_then(|n| n.published_upto)
                });
                // A status entry's streams are read after its entries, so after `published` was.
                if targets.is_none() && (upto == 0 || published.is_some_and(|p| p >= upto)) {
                    targets = Some(report.streams.clone());
                }
                let needed = targets.as_ref().unwrap_or(&report.streams);
                last.nodes = behind(&report, needed);
                last.unpublished = targets.is_none().then_some(Unpublished {
                    published_upto: published,
                });
                last.known_nodes = report.nodes.len();
                // The nodes' own view counts too: a command may not know the routes the node was started with.
                last.expected_nodes = crate::cluster::removals::expected_without_removed(
                    report
                        .nodes
                        .iter()
                        .filter_map(|n| n.expected_nodes)
                        .map(|n| n as usize)
                        .fold(expected_nodes, usize::max),
                    &report.removed,
                );
                tracing::debug!(upto, ?published, targets = ?targets.as_ref().map(|t| t.iter().map(|s| s.last_sequence).collect::<Vec<_>>()),
                    nodes = ?report.nodes.iter().map(|n| (n.node_id, n.shards.iter().map(|s| s.applied).collect::<Vec<_>>())).collect::<Vec<_>>(),
                    "waiting until replicated");
                let all_known =
                    !report.nodes.is_empty() && report.nodes.len() >= last.expected_nodes;
                if targets.is_some() && last.nodes.is_empty() && all_known {
                    return Ok(Outcome::Replicated(Replicated {
                        status: "replicated",
                        node_id: cfg.node_id,
                        upto,
                        nodes: report.nodes.iter().map(|n| n.node_id).collect(),
                        streams: needed.clone(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    }));
                }
            }
            Err(e) if first => return Err(e.into()),
            Err(e) => last.error = Some(e.to_string()),
        }
        if tokio::time::Instant::now() + POLL >= deadline {
            return Ok(Outcome::TimedOut(last));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The nodes of `report` whose handled position is below `needed` on some shard.
fn behind(report: &Report, needed: &[StreamState]) -> Vec<NodeBehind> {
    let needed: BTreeMap<&str, u64> = needed
        .iter()
        .map(|s| (s.stream.as_str(), s.last_sequence))
        .collect();
    report
        .nodes
        .iter()
        .filter_map(|n| {
            let shards: Vec<ShardBehind> = n
                .shards
                .iter()
                .filter_map(|s| {
                    let need = needed.get(s.stream.as_str()).copied().unwrap_or(0);
                    (s.applied < need).then(|| ShardBehind {
                        shard: s.shard,
                        stream: s.stream.clone(),
                        applied: s.applied,
                        needed: need,
                        behind: need - s.applied,
                        paused: s.paused.clone(),
                        gap: s.gap,
                    })
                })
                .collect();
            (!shards.is_empty()).then_some(NodeBehind {
                node_id: n.node_id,
                reachable: n.reachable,
                age_ms: n.age_ms,
                shards,
            })
        })
        .collect()
}

/// `-wait-replicated`: the wait, through the running node's NATS (or the node's server started for the
/// command). Returns the outcome; fails when the cluster cannot be reached.
pub async fn command(
    cfg: &Config,
    flags: &crate::nats::ClusterFlags,
    timeout: Duration,
) -> Result<Outcome, WaitError> {
    // Read first: the wait covers what was committed before the call, not what comes while NATS is reached.
    let started = std::time::Instant::now();
    let upto = tokio::task::block_in_place(|| log_upto(cfg))?;
    let nats = crate::nats::Nats::attach(cfg, flags).await?;
    let js = &nats.jetstream;
    let left = timeout.saturating_sub(started.elapsed());
    // Embedded NATS (the running node's server or one started for the command): one node per route peer.
    let expected = if cfg.nats.urls.is_empty() {
        nats.cluster_size_hint()
    } else {
        1
    };
    let outcome = wait(js, cfg, upto, Progress::StatusEntry, expected, left).await;
    nats.shutdown().await;
    outcome
}

/// The retention bucket's handled positions by node.
async fn handled_positions(js: &jetstream::Context) -> Result<Handled, KvError> {
    crate::cluster::positions::handled_by_node(js).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::report::Report;
    use crate::ops::status::{Entry, ShardEntry, Stored};

    fn stored(id: u64, applied: &[u64], now: u64) -> Stored {
        Stored {
            entry: Entry {
                node_id: id,
                version: "x".into(),
                written_at_ms: now,
                shards: applied
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ShardEntry {
                        shard: i as u32 + 1,
                        stream: format!("s-{}", i + 1),
                        applied: *a,
                        ..Default::default()
                    })
                    .collect(),
                counters: Default::default(),
                published_upto: Some(5),
                expected_nodes: Some(3),
                instance: None,
            },
            created_ms: now,
        }
    }

    use crate::ops::status::test_streams as streams;

    #[test]
    fn nodes_below_the_needed_positions_are_named_per_shard() {
        let now = 1_800_000_000_000;
        let r = Report::assess(
            vec![
                stored(1, &[9, 4], now),
                stored(2, &[7, 4], now),
                stored(3, &[9, 4], now - 60_000),
            ],
            Default::default(),
            [(4, [("s-1".to_string(), 2)].into())].into(),
            streams(&[12, 4]),
            now,
        );
        let b = behind(&r, &streams(&[9, 4]));
        type Row = (u64, bool, Vec<(u32, u64)>);
        let ids: Vec<Row> = b
            .iter()
            .map(|n| {
                (
                    n.node_id,
                    n.reachable,
                    n.shards.iter().map(|s| (s.shard, s.behind)).collect(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            [(2, true, vec![(1, 2)]), (4, false, vec![(1, 7), (2, 4)])],
            "node 4 is known from the retention bucket only"
        );
        let text = Outcome::TimedOut(Behind {
            status: "timeout",
            node_id: 1,
            upto: 30,
            timeout_ms: 5_000,
            unpublished: None,
            nodes: b,
            known_nodes: 2,
            expected_nodes: 3,
            error: None,
        })
        .text();
        assert!(
            text.contains("node 2 (reachable): shard 1 behind by 2 (applied 7 of 9)"),
            "{text}"
        );
        assert!(text.contains("node 4 (unreachable, never seen)"), "{text}");
        assert!(text.contains("only 2 nodes are known of the 3"), "{text}");
        assert!(behind(&r, &streams(&[7, 4])).len() == 1, "only node 4");
    }

    #[test]
    fn older_status_entries_have_no_publish_progress() {
        let old = r#"{"node_id":2,"version":"0.1.0","written_at_ms":1,"shards":[]}"#;
        let e: Entry = serde_json::from_str(old).unwrap();
        assert_eq!(e.published_upto, None);
    }

    #[test]
    fn the_highest_log_id_reads_an_empty_or_missing_log_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        assert_eq!(highest_log_id(&db).unwrap(), 0, "no change log yet");
        conn.execute_batch(&format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k)",
            crate::capture::LOG
        ))
        .unwrap();
        assert_eq!(highest_log_id(&db).unwrap(), 0, "an empty change log");
        conn.execute_batch(&format!(
            "INSERT INTO {log}(tbl, k) VALUES (1, 1), (1, 2)",
            log = crate::capture::LOG
        ))
        .unwrap();
        assert_eq!(highest_log_id(&db).unwrap(), 2);
        assert!(matches!(
            highest_log_id(&dir.path().join("missing/x.db")),
            Err(WaitError::ChangeLog { .. })
        ));
    }
}
