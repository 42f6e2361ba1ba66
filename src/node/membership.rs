//! Removing a node for good (`-remove-node N`): a durable removal record every count subtracts, the node's
//! entries gone from the positions, status and schema-registry buckets, its server taken out of every stream's
//! replicas, and a removed id refused when it starts again.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

use crate::cluster::removals::{BUCKET, Removal, key, removed};
use crate::config::Config;
use crate::nats::KvError;

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
) -> Result<Option<(bytes::Bytes, std::time::SystemTime)>, KvError> {
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
        Err(e) => return Err(KvError::open(bucket, e)),
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
        Err(e) => Err(KvError::read(bucket, key, e)),
    }
}

/// The latest entry of `key` in `bucket` through [`leader_entry`], asked again for up to ten seconds while
/// the bucket does not answer (a server that just died leaves some streams without a leader for seconds).
async fn leader_entry_patiently(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<(bytes::Bytes, std::time::SystemTime)>, KvError> {
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
    let infos = stream_infos(js).await?;
    if serves_replicas(&infos, &server) && !force {
        anyhow::bail!(
            "node {node_id} is running (its server {server} answers as a replica of the streams): stop it for \
             good first, or give -force to remove it anyway"
        );
    }
    refuse_fresh_status(js, node_id, force).await?;
    write_record(js, cfg, node_id, cluster_size, replicas).await?;
    let mut outcome = Outcome {
        node_id,
        ..Default::default()
    };
    outcome.entries = delete_entries(js, node_id).await?;
    leave_replicas(js, infos, &server, &mut outcome).await;
    Ok(outcome)
}

/// Every stream's information (streams that do not answer left out).
async fn stream_infos(js: &jetstream::Context) -> anyhow::Result<Vec<jetstream::stream::Info>> {
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
    Ok(infos)
}

/// Whether `server` leads a stream or answers as one's replica.
fn serves_replicas(infos: &[jetstream::stream::Info], server: &str) -> bool {
    // Its server answering as a replica is a sign of life too (a node that just started has no status entry
    // yet).
    let leads = infos.iter().any(|i| {
        i.cluster
            .as_ref()
            .is_some_and(|c| c.leader.as_deref() == Some(server))
    });
    let answering = infos.iter().any(|i| {
        i.cluster.as_ref().is_some_and(|c| {
            c.replicas
                .iter()
                .any(|r| r.name == server && !r.offline && r.active <= FRESH)
        })
    });
    leads || answering
}

/// Refuse (unless `force`) when node `node_id`'s status entry is fresh, or cannot be read.
async fn refuse_fresh_status(
    js: &jetstream::Context,
    node_id: u64,
    force: bool,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Write node `node_id`'s removal record, with the cluster's size counted from `cluster_size` and the nodes
/// with a positions entry.
async fn write_record(
    js: &jetstream::Context,
    cfg: &Config,
    node_id: u64,
    cluster_size: usize,
    replicas: usize,
) -> anyhow::Result<()> {
    let mut known: std::collections::BTreeSet<u64> = crate::cluster::positions::handled_by_node(js)
        .await?
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
    .await?;
    let body = serde_json::to_vec(&record).expect("a record serialises");
    store
        .put(key(node_id), body.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write the removal record: {e}"))?;
    Ok(())
}

/// Delete node `node_id`'s entries from the positions, status and schema-registry buckets: those deleted, as
/// `<bucket>/<key>`.
async fn delete_entries(js: &jetstream::Context, node_id: u64) -> anyhow::Result<Vec<String>> {
    let mut deleted = Vec::new();
    for bucket in [
        crate::cluster::positions::BUCKET,
        crate::ops::status::BUCKET,
        crate::ops::schema::BUCKET,
    ] {
        let present = leader_entry_patiently(js, bucket, &key(node_id))
            .await?
            .is_some();
        if present {
            let s = js
                .get_key_value(bucket)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {bucket}: {e}"))?;
            s.purge(key(node_id)).await.map_err(|e| {
                anyhow::anyhow!("cannot delete {} from {bucket}: {e}", key(node_id))
            })?;
            deleted.push(format!("{bucket}/{}", key(node_id)));
        }
    }
    Ok(deleted)
}

/// Take `server` out of the replicas of every stream of `infos` it leads or serves, noted in `outcome`.
async fn leave_replicas(
    js: &jetstream::Context,
    infos: Vec<jetstream::stream::Info>,
    server: &str,
    outcome: &mut Outcome,
) {
    for info in infos {
        let name = info.config.name.clone();
        let on_it = info.cluster.as_ref().is_some_and(|c| {
            c.leader.as_deref() == Some(server) || c.replicas.iter().any(|r| r.name == server)
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
}
