//! The positions bucket [`BUCKET`]: the stream positions each node has handled (applied, or skipped as its own
//! echo), written by the node about once a second under `node-<id>`, and the latest snapshot's under
//! [`SNAPSHOT_KEY`]. Retention trims the streams below them (`node::retention`), a restarting node steps over
//! a purged range its own entry certifies, a node that lost its publish state starts from its entry's
//! `published_upto` (`publish::recover`), and the commands read them.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::KvError;

/// The bucket of handled positions.
pub const BUCKET: &str = "harmonylite-positions";
/// The key under which the latest snapshot's positions are kept.
pub const SNAPSHOT_KEY: &str = "snapshot";
/// A node's (or the latest snapshot's) handled position per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub node_id: u64,
    /// The change-log incarnation of the database these positions belong to (0 for a snapshot): a
    /// certification holds only for the same database, never for a replaced or restored one.
    #[serde(default)]
    pub incarnation: u64,
    pub positions: BTreeMap<String, u64>,
    /// The node's change-log ids acknowledged by JetStream up to here (its publish progress; 0 for a
    /// snapshot): what a node that lost its state file starts from, at least (see `publish::recover`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub published_upto: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Open the bucket, creating it when missing.
pub async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, KvError> {
    crate::nats::placement::kv_bucket(
        js,
        BUCKET,
        "HarmonyLite: stream positions each node has handled",
        replicas,
        Duration::ZERO,
    )
    .await
}

/// Every entry of the bucket, by key.
pub async fn read_all(store: &kv::Store) -> Result<BTreeMap<String, Positions>, KvError> {
    Ok(read_all_dated(store)
        .await?
        .into_iter()
        .map(|(k, (p, _))| (k, p))
        .collect())
}

/// Every entry of the bucket, by key, with when it was last written (unix ms, by the servers' clock).
pub async fn read_all_dated(
    store: &kv::Store,
) -> Result<BTreeMap<String, (Positions, u64)>, KvError> {
    let mut keys = store.keys().await.map_err(|e| KvError::keys(BUCKET, e))?;
    let mut out = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| KvError::keys(BUCKET, e))?;
        if let Some(e) = store
            .entry(&key)
            .await
            .map_err(|e| KvError::read(BUCKET, &key, e))?
            && e.operation == kv::Operation::Put
            && let Ok(p) = serde_json::from_slice::<Positions>(&e.value)
        {
            let written = (e.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            out.insert(key, (p, written));
        }
    }
    Ok(out)
}

/// Write `p` under `key`.
pub async fn write(store: &kv::Store, key: &str, p: &Positions) -> Result<(), KvError> {
    let body = serde_json::to_vec(p).map_err(|e| KvError::write(BUCKET, key, e))?;
    store
        .put(key, body.into())
        .await
        .map(|_| ())
        .map_err(|e| KvError::write(BUCKET, key, e))
}

/// What every node's entry says it has handled: node id → stream → position (empty when the bucket does not
/// exist yet). The snapshot's entry is left out.
pub async fn handled_by_node(
    js: &jetstream::Context,
) -> Result<BTreeMap<u64, BTreeMap<String, u64>>, KvError> {
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(KvError::open(BUCKET, e)),
    };
    Ok(read_all(&store)
        .await?
        .into_iter()
        .filter(|(k, _)| k.starts_with("node-"))
        .map(|(_, p)| (p.node_id, p.positions))
        .collect())
}

/// This node's key.
pub fn node_key(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// How long [`entry`] asks again a bucket that does not answer (a cluster electing leaders after a server's
/// death answers within seconds).
const ENTRY_PATIENCE: Duration = Duration::from_secs(30);

/// This node's entry as it is now: `None` when it has none, the bucket does not exist, or the bucket did not
/// answer within [`ENTRY_PATIENCE`] (said at WARN).
pub async fn entry(js: &jetstream::Context, node_id: u64) -> Option<Positions> {
    match entry_patiently(js, node_id).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(
                bucket = BUCKET,
                error = %error,
                "cannot read this node's positions entry"
            );
            None
        }
    }
}

/// This node's entry (`Ok(None)`: it has none, or the bucket does not exist). A bucket that does not answer is
/// asked again for up to [`ENTRY_PATIENCE`]: taking "no answer" for "no entry" would make a node coming back
/// take its own changes skipped before it stopped, and trimmed from the stream since, for a gap.
async fn entry_patiently(
    js: &jetstream::Context,
    node_id: u64,
) -> Result<Option<Positions>, KvError> {
    // A request sent while the cluster forms can go unanswered for seconds (sent before the bucket's stream had
    // a leader, it is never answered): tries overlap, each with a short time of its own.
    crate::retry::ask(
        crate::retry::Asking::FORMING,
        tokio::time::Instant::now() + ENTRY_PATIENCE,
        || read_entry(js, node_id),
        |t| KvError::read(BUCKET, &node_key(node_id), format!("no answer within {t:?}")),
        |e| tracing::debug!(bucket = BUCKET, error = %e, "positions entry not read yet; asking again"),
    )
    .await
}

/// One try of [`entry`]: `Ok(None)` only when the bucket or the key does not exist.
pub(crate) async fn read_entry(
    js: &jetstream::Context,
    node_id: u64,
) -> Result<Option<Positions>, KvError> {
    use jetstream::context::GetStreamErrorKind;
    match js
        .get_stream(crate::nats::placement::kv_stream(BUCKET))
        .await
    {
        Ok(_) => {}
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(KvError::open(BUCKET, e)),
    }
    let store = js
        .get_key_value(BUCKET)
        .await
        .map_err(|e| KvError::open(BUCKET, e))?;
    let key = node_key(node_id);
    let value = store
        .get(&key)
        .await
        .map_err(|e| KvError::read(BUCKET, &key, e))?;
    Ok(value.and_then(|v| serde_json::from_slice::<Positions>(&v).ok()))
}

/// The positions this node's entry certifies for the database of change-log incarnation `incarnation`, per
/// stream (empty when it has none or it belongs to another database); an error when the bucket did not answer
/// within [`ENTRY_PATIENCE`].
pub async fn certified(
    js: &jetstream::Context,
    node_id: u64,
    incarnation: u64,
) -> Result<BTreeMap<String, u64>, KvError> {
    Ok(certifies(entry_patiently(js, node_id).await?, incarnation))
}

pub(crate) fn certifies(entry: Option<Positions>, incarnation: u64) -> BTreeMap<String, u64> {
    match entry {
        Some(p) if p.incarnation == incarnation && incarnation != 0 => p.positions,
        _ => BTreeMap::new(),
    }
}

/// An entry of node `id` (incarnation 1) with these positions, for tests.
#[cfg(test)]
pub(crate) fn sample(id: u64, pos: &[(&str, u64)]) -> Positions {
    Positions {
        node_id: id,
        incarnation: 1,
        positions: pos.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        published_upto: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::sample as p;

    #[test]
    fn an_entry_certifies_only_for_its_own_database() {
        let entry = p(1, &[("a", 100)]);
        assert_eq!(
            certifies(Some(entry.clone()), 1),
            BTreeMap::from([("a".to_string(), 100)])
        );
        assert!(
            certifies(Some(entry.clone()), 2).is_empty(),
            "another change-log incarnation"
        );
        assert!(certifies(None, 1).is_empty(), "no entry");
        let mut unknown = entry;
        unknown.incarnation = 0;
        assert!(
            certifies(Some(unknown), 0).is_empty(),
            "incarnation unknown"
        );
    }
}
