//! Removing a node for good (`-remove-node N`): a durable removal record every count subtracts, the node's
//! entries gone from the positions, status and schema-registry buckets, its server taken out of every stream's
//! replicas, and a removed id refused when it starts again.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The bucket of removal records, one per removed node (key `node-<id>`).
pub const BUCKET: &str = "harmonylite-removed";

/// A node removed from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub node_id: u64,
    /// RFC 3339.
    pub removed_at: String,
    /// How many nodes the cluster counted when the node was removed (the more of the removing node's
    /// `-cluster-peers` + 1 and the nodes with a positions entry, the removed one included): a node whose
    /// configuration counts that many still names the removed node's route and subtracts it; one configured
    /// for fewer never counted it, or was reconfigured since.
    pub cluster_size: u64,
    /// The node whose configuration ran the command.
    pub by_node: u64,
}

fn key(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// The removal records, by node id (empty when no node was ever removed).
pub async fn removed(js: &jetstream::Context) -> Result<BTreeMap<u64, Removal>, String> {
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut out = BTreeMap::new();
    let mut keys = store.keys().await.map_err(|e| e.to_string())?;
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| e.to_string())?;
        if let Some(v) = store.get(&k).await.map_err(|e| e.to_string())?
            && let Ok(r) = serde_json::from_slice::<Removal>(&v)
        {
            out.insert(r.node_id, r);
        }
    }
    Ok(out)
}

/// `expected` nodes (a node's `-cluster-peers` + 1) less the removed nodes it still counts.
pub fn expected_without_removed(expected: usize, removed: &BTreeMap<u64, Removal>) -> usize {
    let still_counted = removed
        .values()
        .filter(|r| expected as u64 >= r.cluster_size)
        .count();
    expected.saturating_sub(still_counted).max(1)
}

/// Refuse to start a node whose id was removed.
pub async fn refuse_removed(js: &jetstream::Context, node_id: u64) -> Result<(), String> {
    let removed = match tokio::time::timeout(Duration::from_secs(5), removed(js)).await {
        Ok(Ok(r)) => r,
        // Not readable now: the start goes on (a removed node is also refused by nothing else; said at WARN).
        Ok(Err(e)) => {
            tracing::warn!(error = %e, bucket = BUCKET, "cannot read the removal records");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                bucket = BUCKET,
                "the removal records did not answer within 5 s"
            );
            return Ok(());
        }
    };
    match removed.get(&node_id) {
        None => Ok(()),
        Some(r) => Err(format!(
            "node_id {node_id} was removed from this cluster at {} (-remove-node); it does not start again under \
             that id. To bring this machine back, join it as a new node: give it an unused node_id, and start it \
             with an empty database or with this one after `harmonylite -config <file> -cleanup` (a database \
             never captured joins with the cluster's data and keeps its own rows in <db>.pre-join); see \
             OPERATIONS.md, \"Adding and removing nodes\"",
            r.removed_at
        )),
    }
}

/// How recent a status entry must be for its node to count as running (the report's reachability).
const FRESH: Duration = Duration::from_secs(5);

/// The latest entry of `key` in KV bucket `bucket`, read through its stream's leader (a direct get may be
/// answered by a replica still catching up, which would not know a live node's entry): its value and when
/// the server stored it. `None`: no such entry, or it was deleted.
async fn leader_entry(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<(bytes::Bytes, std::time::SystemTime)>, String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = match js
        .get_stream(crate::nats::placement::kv_stream(bucket))
        .await
    {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    match stream
        .get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}"))
        .await
    {
        Ok(m) => {
            let deleted = m
                .headers
                .get("KV-Operation")
                .is_some_and(|v| v.as_str() == "DEL" || v.as_str() == "PURGE");
            if deleted {
                return Ok(None);
            }
            let at = std::time::UNIX_EPOCH
                + Duration::from_nanos(m.time.unix_timestamp_nanos().max(0) as u64);
            Ok(Some((m.payload, at)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The latest entry of `key` in `bucket` through [`leader_entry`], asked again for up to ten seconds while
/// the bucket does not answer (a server that just died leaves some streams without a leader for seconds).
async fn leader_entry_patiently(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<(bytes::Bytes, std::time::SystemTime)>, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match leader_entry(js, bucket, key).await {
            Ok(e) => return Ok(e),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// What `-remove-node` did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub node_id: u64,
    /// Buckets whose entry of the node was deleted.
    pub entries: Vec<String>,
    /// Streams whose replica on the node's server was removed.
    pub streams: Vec<String>,
    /// Streams whose replica could not be removed, with why.
    pub stream_errors: Vec<(String, String)>,
    pub peers_now: Vec<String>,
}

impl Outcome {
    pub fn text(&self) -> String {
        let mut out = format!(
            "node {} removed: a removal record in bucket {BUCKET}; every count of the cluster's nodes leaves it out\n",
            self.node_id
        );
        if self.entries.is_empty() {
            out.push_str("its entries: none found\n");
        } else {
            out.push_str(&format!(
                "its entries deleted: {}\n",
                self.entries.join(", ")
            ));
        }
        if !self.streams.is_empty() {
            out.push_str(&format!(
                "its server harmonylite-node-{} left the replicas of: {} (JetStream places them on the other servers)\n",
                self.node_id,
                self.streams.join(", ")
            ));
        }
        for (s, e) in &self.stream_errors {
            out.push_str(&format!(
                "stream {s}: its replica there was not removed: {e}\n"
            ));
        }
        out.push_str(&format!(
            "next: take node {}'s route URL out of every other node's -cluster-peers and restart them one at a \
             time{}\n",
            self.node_id,
            if self.peers_now.is_empty() {
                String::new()
            } else {
                format!(
                    " (this node's -cluster-peers now: {}; remove the one that reached node {})",
                    self.peers_now.join(","),
                    self.node_id
                )
            }
        ));
        out
    }
}

/// Remove node `node_id` from the cluster (see the module's documentation). `cluster_size` is the removing
/// node's count of nodes. Refuses a node whose status entry is fresh unless `force`.
pub async fn remove(
    js: &jetstream::Context,
    cfg: &Config,
    node_id: u64,
    cluster_size: usize,
    replicas: usize,
    force: bool,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(node_id != 0, "-remove-node needs a node id other than 0");
    let server = format!("harmonylite-node-{node_id}");
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(n) = names.next().await {
        match n {
            Ok(n) => streams.push(n),
            Err(e) => anyhow::bail!("cannot list the streams: {e}"),
        }
    }
    let mut infos = Vec::new();
    for name in &streams {
        if let Ok(mut s) = js.get_stream(name).await
            && let Ok(info) = s.info().await
        {
            infos.push(info.clone());
        }
    }
    // Its server answering as a replica is a sign of life too (a node that just started has no status entry
    // yet).
    let leads = infos.iter().any(|i| {
        i.cluster
            .as_ref()
            .is_some_and(|c| c.leader.as_deref() == Some(server.as_str()))
    });
    let answering = infos.iter().any(|i| {
        i.cluster.as_ref().is_some_and(|c| {
            c.replicas
                .iter()
                .any(|r| r.name == server && !r.offline && r.active <= FRESH)
        })
    });
    if (leads || answering) && !force {
        anyhow::bail!(
            "node {node_id} is running (its server {server} answers as a replica of the streams): stop it for \
             good first, or give -force to remove it anyway"
        );
    }
    let status = leader_entry_patiently(js, crate::ops::status::BUCKET, &key(node_id))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read node {node_id}'s status entry, so cannot tell whether it runs: {e} (give -force to \
                 remove it anyway)"
            )
        })?;
    if let Some((_, at)) = status {
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        if age <= FRESH && !force {
            anyhow::bail!(
                "node {node_id} is running (its status entry was written {:.1} s ago): stop it for good first, or \
                 give -force to remove it anyway",
                age.as_secs_f64()
            );
        }
    }
    let mut known: std::collections::BTreeSet<u64> = super::retention::handled_by_node(js)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read bucket {}: {e}", super::retention::BUCKET))?
        .into_keys()
        .collect();
    known.insert(node_id);
    let record = Removal {
        node_id,
        removed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        cluster_size: cluster_size.max(known.len()) as u64,
        by_node: cfg.node_id,
    };
    let store = crate::nats::placement::kv_bucket(
        js,
        BUCKET,
        "HarmonyLite: nodes removed from the cluster for good",
        replicas,
        Duration::ZERO,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot open bucket {BUCKET}: {e}"))?;
    let body = serde_json::to_vec(&record).expect("a record serialises");
    store
        .put(key(node_id), body.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write the removal record: {e}"))?;
    let mut outcome = Outcome {
        node_id,
        ..Default::default()
    };
    for bucket in [
        super::retention::BUCKET,
        crate::ops::status::BUCKET,
        crate::ops::schema::BUCKET,
    ] {
        let present = leader_entry_patiently(js, bucket, &key(node_id))
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {} in {bucket}: {e}", key(node_id)))?
            .is_some();
        if present {
            let s = js
                .get_key_value(bucket)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {bucket}: {e}"))?;
            s.purge(key(node_id)).await.map_err(|e| {
                anyhow::anyhow!("cannot delete {} from {bucket}: {e}", key(node_id))
            })?;
            outcome.entries.push(format!("{bucket}/{}", key(node_id)));
        }
    }
    for info in infos {
        let name = info.config.name.clone();
        let on_it = info.cluster.as_ref().is_some_and(|c| {
            c.leader.as_deref() == Some(server.as_str())
                || c.replicas.iter().any(|r| r.name == server)
        });
        if !on_it {
            continue;
        }
        let subject = format!("STREAM.PEER.REMOVE.{name}");
        let r: Result<serde_json::Value, _> = js
            .request(subject, &serde_json::json!({ "peer": server }))
            .await;
        match r {
            Ok(v) if v.get("error").is_none() => outcome.streams.push(name),
            Ok(v) => outcome.stream_errors.push((name, v["error"].to_string())),
            Err(e) => outcome.stream_errors.push((name, e.to_string())),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(node_id: u64, cluster_size: u64) -> Removal {
        Removal {
            node_id,
            removed_at: String::new(),
            cluster_size,
            by_node: 1,
        }
    }

    #[test]
    fn a_node_subtracts_the_removed_nodes_its_configuration_still_counts() {
        let mut r = BTreeMap::new();
        assert_eq!(expected_without_removed(3, &r), 3);
        // Four nodes, all configured with the other three: node 4 removed.
        r.insert(4, removal(4, 4));
        assert_eq!(expected_without_removed(4, &r), 3);
        // A node configured for three (it never named node 4, or was reconfigured since).
        assert_eq!(expected_without_removed(3, &r), 3);
        // Then node 3 removed too while the configurations still name four.
        r.insert(3, removal(3, 4));
        assert_eq!(expected_without_removed(4, &r), 2);
        // Never below one.
        assert_eq!(expected_without_removed(1, &r), 1);
    }
}

/// A node holding back a stream's retention: its position is the stream's lowest, below the stream's end, and
/// it has not been heard of for longer than the configured `stale_node_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub node_id: u64,
    pub stream: String,
    /// The position it has handled (the stream keeps every change after it).
    pub position: u64,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// How long it has not been heard of, in ms.
    pub silent_ms: u64,
}

/// The nodes among `nodes` (id, handled position per stream, ms since it was last heard of) that hold back a
/// stream of `last` (stream → last sequence): each stream's lowest position, when below the stream's end,
/// held by a node silent for more than `after_ms`. A node without a position for a stream counts as 0.
pub fn holding_back(
    nodes: &[(u64, BTreeMap<String, u64>, u64)],
    last: &BTreeMap<String, u64>,
    after_ms: u64,
) -> Vec<Holding> {
    let mut out = Vec::new();
    for (stream, &end) in last {
        let at = |n: &(u64, BTreeMap<String, u64>, u64)| n.1.get(stream).copied().unwrap_or(0);
        let Some(lowest) = nodes.iter().map(at).min() else {
            continue;
        };
        if lowest >= end {
            continue;
        }
        for n in nodes.iter().filter(|n| at(n) == lowest && n.2 > after_ms) {
            out.push(Holding {
                node_id: n.0,
                stream: stream.clone(),
                position: lowest,
                last_sequence: end,
                silent_ms: n.2,
            });
        }
    }
    out
}

/// One line naming `h` for logs and `-status`.
pub fn holding_text(h: &Holding) -> String {
    let mins = h.silent_ms / 60_000;
    let silent = if h.silent_ms == u64::MAX {
        "has never been heard of".to_string()
    } else {
        format!("has not been heard of for {}h{:02}m", mins / 60, mins % 60)
    };
    format!(
        "node {} {silent} and holds {} at {} of {}: the stream keeps every change since for it (up to its \
         caps); if it is gone for good, run `harmonylite -config <file> -remove-node {}`",
        h.node_id, h.stream, h.position, h.last_sequence, h.node_id
    )
}

#[cfg(test)]
mod holding_tests {
    use super::*;

    fn node(id: u64, pos: u64, silent_ms: u64) -> (u64, BTreeMap<String, u64>, u64) {
        (id, BTreeMap::from([("s".to_string(), pos)]), silent_ms)
    }

    #[test]
    fn only_a_silent_node_at_the_lowest_position_below_the_end_holds_back() {
        let last = BTreeMap::from([("s".to_string(), 100)]);
        let hour = 3_600_000;
        let nodes = [node(1, 100, 10), node(2, 100, 5), node(3, 40, 2 * hour)];
        let h = holding_back(&nodes, &last, hour);
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].node_id, h[0].position, h[0].last_sequence),
            (3, 40, 100)
        );
        assert!(
            holding_text(&h[0]).contains("2h00m"),
            "{}",
            holding_text(&h[0])
        );
        assert!(holding_text(&h[0]).contains("-remove-node 3"));
        // Silent, but not for long enough.
        assert!(holding_back(&[node(1, 100, 10), node(3, 40, hour - 1)], &last, hour).is_empty());
        // Silent for long, but not the lowest: a live node behind it holds the stream.
        assert!(holding_back(&[node(1, 30, 10), node(3, 40, 2 * hour)], &last, hour).is_empty());
        // Every node at the end (an idle cluster): nothing is held, however old the entries.
        assert!(
            holding_back(
                &[node(1, 100, 2 * hour), node(3, 100, 2 * hour)],
                &last,
                hour
            )
            .is_empty()
        );
    }
}
