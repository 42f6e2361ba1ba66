//! `-verify`: ask every node for its checksums at one agreed point of the streams, and compare them.
//!
//! The nodes are those `-status` lists (the status bucket and the handled-positions bucket), the embedded
//! servers that hold a replica of a shard's stream (named `harmonylite-node-<id>`), every node that has
//! answered, and at least as many as the cluster's configuration expects. Each round sets the target to every
//! stream's last sequence, publishes one request with a reply inbox, and collects replies until every node
//! has answered, and [`GRACE`] longer for nodes known from nowhere else. When every
//! node reached the target with the same positions, the checksums are compared: a table differs when some
//! node's checksum or row count is not the majority's. When the positions differ (writes went on meanwhile) a
//! new round starts with a fresh target, until the deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

use super::{MAX_WAIT, Reply, Request, TableReply, subject};
use crate::cli::Cli;
use crate::cluster::positions;
use crate::config::Config;
use crate::nats::{ClusterFlags, Nats};
use crate::ops::status::{self, StatusError};

/// Pause before a new round when the last one found no common point.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// How long a round waits for missing replies before it sends its request again.
const RESEND: Duration = Duration::from_secs(1);
/// How long replies are still collected once every known node has answered.
const GRACE: Duration = Duration::from_millis(300);

/// What `-verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every node holds the same data (the summary line).
    Identical(String),
    /// Some tables differ (one line per table).
    Differ(String),
    /// Some node did not answer in time, or no common point was found.
    Unverified(String),
}

impl Outcome {
    /// The command's exit code: 0 identical, 1 differing, 2 not verified.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Identical(_) => 0,
            Outcome::Differ(_) => 1,
            Outcome::Unverified(_) => 2,
        }
    }

    /// What the command prints.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Identical(t) | Outcome::Differ(t) | Outcome::Unverified(t) => t,
        }
    }
}

/// Why the command could not even start asking.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot reach the cluster's NATS: {0}")]
    Attach(#[from] crate::nats::NatsError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("cannot {what}: {reason}")]
    Nats { what: &'static str, reason: String },
}

fn nats_err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> VerifyError {
    move |e| VerifyError::Nats {
        what,
        reason: e.to_string(),
    }
}

/// `-verify`: through the running node's NATS (or the node's server started for the command), within
/// `timeout`.
pub async fn verify(cfg: &Config, cli: &Cli, timeout: Duration) -> Result<Outcome, VerifyError> {
    let nats = Nats::attach(cfg, &ClusterFlags::from_cli(cli)).await?;
    let js = &nats.jetstream;
    let outcome = run(
        &nats.client,
        js,
        cfg,
        nats.cluster_size_hint(),
        || positions::handled_by_node(js),
        timeout,
    )
    .await;
    nats.shutdown().await;
    outcome
}

/// Run `-verify` through `client` (and its JetStream context `js`) within `timeout`. `expected` is how many
/// nodes the cluster's configuration says there are (the route peers plus this one). `handled` reads the
/// handled-positions bucket (which nodes exist beyond the status bucket).
pub async fn run<F, Fut>(
    client: &async_nats::Client,
    js: &jetstream::Context,
    cfg: &Config,
    expected: usize,
    handled: F,
    timeout: Duration,
) -> Result<Outcome, VerifyError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<status::Handled, crate::nats::KvError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let report = status::gather(js, cfg, handled, left().max(Duration::from_secs(1))).await?;
    let expected = crate::cluster::removals::expected_without_removed(expected, &report.removed);
    let mut nodes: BTreeSet<u64> = report.nodes.iter().map(|n| n.node_id).collect();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats_err("subscribe to the reply inbox")(&e))?;
    let mut round = 0u64;
    let last_round = loop {
        round += 1;
        let target = match last_sequences(js, cfg).await {
            Ok((t, members)) => {
                nodes.extend(
                    members
                        .into_iter()
                        .filter(|m| !report.removed.contains_key(m)),
                );
                t
            }
            Err(e) if left().is_zero() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "streams not read yet; retrying");
                tokio::time::sleep(ROUND_PAUSE.min(left())).await;
                continue;
            }
        };
        let ask = Ask::new(client, cfg, &inbox, round, &target, left());
        ask.send().await?;
        let got = ask
            .collect(&mut replies, &nodes, expected, deadline)
            .await?;
        nodes.extend(got.keys().copied());
        if !all_answered(&nodes, &got, expected) {
            let missing: Vec<u64> = nodes
                .iter()
                .filter(|n| !got.contains_key(n))
                .copied()
                .collect();
            return Ok(Outcome::Unverified(unanswered(
                &missing, &got, expected, timeout,
            )));
        }
        let settled = got.values().all(|r| r.reached && r.error.is_none());
        let first = got.values().next().map(|r| &r.positions);
        if settled && got.values().all(|r| Some(&r.positions) == first) {
            return Ok(compare(&got));
        }
        if left() <= ROUND_PAUSE {
            break got;
        }
        tracing::debug!(round, ?target, "no common point yet; asking again");
        tokio::time::sleep(ROUND_PAUSE).await;
    };
    Ok(Outcome::Unverified(no_common_point(&last_round, timeout)))
}

/// Whether every node of `nodes`, and at least `expected` nodes, have answered.
fn all_answered(nodes: &BTreeSet<u64>, got: &BTreeMap<u64, Reply>, expected: usize) -> bool {
    !got.is_empty() && nodes.iter().all(|n| got.contains_key(n)) && got.len() >= expected
}

/// One round's request, sent to every node with replies to `inbox`.
struct Ask<'a> {
    client: &'a async_nats::Client,
    cfg: &'a Config,
    inbox: &'a str,
    round: u64,
    body: bytes::Bytes,
}

impl<'a> Ask<'a> {
    /// Round `round`'s request for positions `target`, the nodes waiting at most `left` for them.
    fn new(
        client: &'a async_nats::Client,
        cfg: &'a Config,
        inbox: &'a str,
        round: u64,
        target: &BTreeMap<String, u64>,
        left: Duration,
    ) -> Ask<'a> {
        let req = Request {
            round,
            target: target.clone(),
            wait_ms: MAX_WAIT.min(left).as_millis() as u64,
        };
        let body: bytes::Bytes = serde_json::to_vec(&req)
            .expect("a request serialises")
            .into();
        Ask {
            client,
            cfg,
            inbox,
            round,
            body,
        }
    }

    /// Publish the request and flush it.
    async fn send(&self) -> Result<(), VerifyError> {
        self.client
            .publish_with_reply(subject(self.cfg), self.inbox.to_string(), self.body.clone())
            .await
            .map_err(|e| nats_err("send the verify request")(&e))?;
        self.client
            .flush()
            .await
            .map_err(|e| nats_err("send the verify request")(&e))
    }

    /// The replies of this round from `replies`, until every node answered and [`GRACE`] passed, or `deadline`.
    async fn collect(
        &self,
        replies: &mut async_nats::Subscriber,
        nodes: &BTreeSet<u64>,
        expected: usize,
        deadline: tokio::time::Instant,
    ) -> Result<BTreeMap<u64, Reply>, VerifyError> {
        let mut got: BTreeMap<u64, Reply> = BTreeMap::new();
        let mut grace_until: Option<tokio::time::Instant> = None;
        // A node whose responder was not subscribed yet (it is starting) never saw the request: it is sent
        // again while some node has not answered (each node answers one round once, see `serve`).
        let mut resend_at = tokio::time::Instant::now() + RESEND;
        loop {
            if grace_until.is_none() && all_answered(nodes, &got, expected) {
                grace_until = Some(tokio::time::Instant::now() + GRACE);
            }
            let until = grace_until.unwrap_or(resend_at).min(deadline);
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            let msg = match tokio::time::timeout(wait, replies.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) if grace_until.is_none() && tokio::time::Instant::now() < deadline => {
                    self.send().await?;
                    resend_at = tokio::time::Instant::now() + RESEND;
                    continue;
                }
                Err(_) => break,
            };
            match serde_json::from_slice::<Reply>(&msg.payload) {
                Ok(r) if r.round == self.round => {
                    got.insert(r.node_id, r);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable verify reply ignored"),
            }
        }
        Ok(got)
    }
}

/// Every shard's stream and its last sequence now (0 for a stream that does not exist yet), and the ids of the
/// nodes whose embedded server holds a replica of one of them.
async fn last_sequences(
    js: &jetstream::Context,
    cfg: &Config,
) -> Result<(BTreeMap<String, u64>, BTreeSet<u64>), VerifyError> {
    use jetstream::context::GetStreamErrorKind;
    let mut out = BTreeMap::new();
    let mut members = BTreeSet::new();
    let node_of = |server: &str| {
        server
            .strip_prefix("harmonylite-node-")
            .and_then(|id| id.parse::<u64>().ok())
    };
    for shard in 1..=cfg.replication_log.shards.get() {
        let stream = cfg.stream_name(shard);
        let last = match js.get_stream(&stream).await {
            Ok(s) => {
                let info = s.cached_info();
                if let Some(c) = &info.cluster {
                    members.extend(c.leader.as_deref().and_then(node_of));
                    members.extend(c.replicas.iter().filter_map(|p| node_of(&p.name)));
                }
                info.state.last_sequence
            }
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                0
            }
            Err(e) => return Err(nats_err("read the streams")(&e)),
        };
        out.insert(stream, last);
    }
    Ok((out, members))
}

fn node_list(ids: &[u64]) -> String {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    match list.len() {
        1 => format!("node {}", list[0]),
        _ => format!("nodes {}", list.join(", ")),
    }
}

/// `{stream: seq, ...}`.
fn positions_text(p: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = p.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    format!("{{{}}}", items.join(", "))
}

fn unanswered(
    missing: &[u64],
    got: &BTreeMap<u64, Reply>,
    expected: usize,
    timeout: Duration,
) -> String {
    if missing.is_empty() && got.is_empty() {
        format!(
            "not verified: no node answered within {}s",
            timeout.as_secs()
        )
    } else if missing.is_empty() {
        format!(
            "not verified: the cluster's configuration expects {expected} nodes, {} answered within {}s ({})",
            got.len(),
            timeout.as_secs(),
            node_list(&got.keys().copied().collect::<Vec<_>>())
        )
    } else {
        format!(
            "not verified: {} did not answer within {}s",
            node_list(missing),
            timeout.as_secs()
        )
    }
}

fn no_common_point(got: &BTreeMap<u64, Reply>, timeout: Duration) -> String {
    let mut out = format!(
        "not verified: no common point found within {}s (writes went on, or a node did not catch up):",
        timeout.as_secs()
    );
    for r in got.values() {
        out.push_str(&format!(
            "\n  node {}: positions {}{}{}",
            r.node_id,
            positions_text(&r.positions),
            if r.reached {
                ""
            } else {
                ", target not reached"
            },
            r.error
                .as_ref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// Compare replies that share their positions: identical, or one line per differing table.
pub fn compare(got: &BTreeMap<u64, Reply>) -> Outcome {
    let positions = got
        .values()
        .next()
        .map(|r| positions_text(&r.positions))
        .unwrap_or_default();
    let tables: BTreeSet<&String> = got.values().flat_map(|r| r.tables.keys()).collect();
    let mut lines = Vec::new();
    for table in &tables {
        // Each distinct (rows, checksum) — None: the table is missing — and the nodes that have it.
        let mut groups: Vec<(Option<&TableReply>, Vec<u64>)> = Vec::new();
        for (id, r) in got {
            let v = r.tables.get(*table);
            match groups.iter_mut().find(|(g, _)| *g == v) {
                Some((_, ids)) => ids.push(*id),
                None => groups.push((v, vec![*id])),
            }
        }
        if groups.len() == 1 {
            continue;
        }
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.1.cmp(&b.1)));
        let describe = |v: Option<&TableReply>| match v {
            Some(t) => format!("{} rows, checksum {}", t.rows, t.checksum),
            None => "no such table".to_string(),
        };
        let majority = groups[0].1.len() > got.len() / 2;
        if majority {
            for (v, ids) in &groups[1..] {
                lines.push(format!(
                    "table {table} differs on {} ({}) from the majority, {} ({})",
                    node_list(ids),
                    describe(*v),
                    node_list(&groups[0].1),
                    describe(groups[0].0)
                ));
            }
        } else {
            let parts: Vec<String> = groups
                .iter()
                .map(|(v, ids)| format!("{} ({})", node_list(ids), describe(*v)))
                .collect();
            lines.push(format!(
                "table {table} differs with no majority: {}",
                parts.join("; ")
            ));
        }
    }
    if lines.is_empty() {
        let rows: u64 = got
            .values()
            .next()
            .map(|r| r.tables.values().map(|t| t.rows).sum())
            .unwrap_or(0);
        Outcome::Identical(format!(
            "verified: {} nodes, {} tables, {rows} rows identical at positions {positions}",
            got.len(),
            tables.len()
        ))
    } else {
        Outcome::Differ(format!(
            "{}\nnot identical at positions {positions}: {} table(s) differ",
            lines.join("\n"),
            lines.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: u64, tables: &[(&str, u64, &str)]) -> (u64, Reply) {
        (
            id,
            Reply {
                node_id: id,
                round: 1,
                positions: BTreeMap::from([("s-1".to_string(), 9)]),
                tables: tables
                    .iter()
                    .map(|(t, rows, c)| {
                        (
                            t.to_string(),
                            TableReply {
                                rows: *rows,
                                checksum: c.to_string(),
                            },
                        )
                    })
                    .collect(),
                reached: true,
                error: None,
            },
        )
    }

    #[test]
    fn identical_nodes_give_the_summary() {
        let got = BTreeMap::from([
            reply(1, &[("a", 2, "x"), ("b", 3, "y")]),
            reply(2, &[("a", 2, "x"), ("b", 3, "y")]),
            reply(3, &[("a", 2, "x"), ("b", 3, "y")]),
        ]);
        let o = compare(&got);
        assert_eq!(o.exit_code(), 0);
        assert_eq!(
            o.text(),
            "verified: 3 nodes, 2 tables, 5 rows identical at positions {s-1: 9}"
        );
    }

    #[test]
    fn the_node_that_differs_from_the_majority_is_named() {
        let got = BTreeMap::from([
            reply(1, &[("a", 2, "x"), ("b", 3, "y")]),
            reply(2, &[("a", 2, "z"), ("b", 3, "y")]),
            reply(3, &[("a", 2, "x")]),
        ]);
        let o = compare(&got);
        assert_eq!(o.exit_code(), 1);
        let t = o.text();
        assert!(
            t.contains(
                "table a differs on node 2 (2 rows, checksum z) from the majority, nodes 1, 3"
            ),
            "{t}"
        );
        assert!(
            t.contains("table b differs on node 3 (no such table) from the majority, nodes 1, 2"),
            "{t}"
        );
    }

    #[test]
    fn without_a_majority_every_group_is_named() {
        let got = BTreeMap::from([reply(1, &[("a", 2, "x")]), reply(2, &[("a", 1, "z")])]);
        let o = compare(&got);
        assert_eq!(o.exit_code(), 1);
        assert!(
            o.text().contains("no majority: node 1 (2 rows"),
            "{}",
            o.text()
        );
    }
}
