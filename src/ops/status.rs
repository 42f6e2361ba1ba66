//! Cluster status: every node shares what it is doing, and `-status` shows the whole cluster.
//!
//! Each running node writes an [`Entry`] to the JetStream KV bucket [`BUCKET`] under `node-<id>` about once a
//! second ([`run`]): its version, the time of the write, and per shard the stream, the position it has handled
//! (applied, or skipped as its own echo: both advance it), why it is paused, whether it waits for its schema,
//! and the gap it is stopped at; plus its publish and apply counters. The bucket keeps one value per key
//! (history 1) and is created, when missing, with the replica count of the node's other buckets.
//!
//! `-status` ([`gather`], then [`report::Report`]) reads the bucket and each shard's stream (its last
//! sequence, at the time of the command) and prints one row per node: reachable or not, applied position and
//! lag per shard, paused shards, version. Which nodes exist comes from this bucket and from the
//! handled-positions bucket (`harmonylite-positions`), so a node that stopped long ago still shows up.
//!
//! Reachable means the node's entry was stored within [`report::STALE_AFTER`] of the reference time. The age
//! of an entry is taken from the KV's server-side `created` timestamp, never from the node's own clock; the
//! reference is the later of the newest entry's `created` and the command's clock. The newest entry alone
//! would make every node look reachable when none writes any more (the whole cluster stopped, or a single
//! node stopped and its server started for the command); the command's clock alone would hinge on its
//! agreement with the servers' clocks. With the later of both, clock skew can only make nodes look
//! unreachable, never the reverse, and the report says when no entry is recent by the command's clock.

pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::counters::{Counters, Total};
use crate::nats::KvError;

pub use report::Report;

/// The status bucket.
pub const BUCKET: &str = "harmonylite-status";
/// How often a node writes its entry.
const PERIOD: Duration = Duration::from_secs(1);
/// How long failing to write the status entry is routine after the node starts.
const ROUTINE_AT_START: Duration = Duration::from_secs(5);
/// The shortest time between two writes: progress (an applied position or `published_upto` moving) writes the
/// entry sooner than [`PERIOD`], at most this often.
const MIN_GAP: Duration = Duration::from_millis(250);
/// Longest a write of the entry (opening the bucket first when needed) may take before it is tried again.
const ATTEMPT: Duration = Duration::from_secs(2);

/// One node's status entry (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node_id: u64,
    pub version: String,
    /// Unix ms of the write, by the node's clock (the report measures ages with the server's timestamp).
    pub written_at_ms: u64,
    pub shards: Vec<ShardEntry>,
    #[serde(default)]
    pub counters: Activity,
    /// Change-log ids up to here are acknowledged by JetStream (none: the node does not publish, or wrote its
    /// entry with an older version).
    #[serde(default)]
    pub published_upto: Option<u64>,
    /// How many nodes this node expects in its cluster (1 + its embedded server's route peers; 1 with external
    /// NATS). Older entries do not say.
    #[serde(default)]
    pub expected_nodes: Option<u64>,
    /// The writer's database (its change-log incarnation): tells a restart of the same node from another
    /// process given the same `node_id` ([`refuse_twin`]). Older entries do not say.
    #[serde(default)]
    pub instance: Option<u64>,
}

/// One shard as a node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub shard: u32,
    pub stream: String,
    /// The last stream position handled: applied, or skipped as the node's own echo.
    pub applied: u64,
    /// Why the shard is paused on a message, while it is.
    #[serde(default)]
    pub paused: Option<String>,
    /// Paused because the node's schema is behind.
    #[serde(default)]
    pub schema_paused: bool,
    /// The first sequence needed, while the shard is stopped at a gap.
    #[serde(default)]
    pub gap: Option<u64>,
    /// Tables whose changes the shard holds (this node lacks a table or column they need): rows held.
    /// Absent in entries of earlier builds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, u64>,
}

/// A node's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub published_msgs: u64,
    pub published_rows: u64,
    pub publish_errors: u64,
    pub applied_msgs: u64,
    pub applied_rows: u64,
    pub skipped_rows: u64,
    pub apply_errors: u64,
    pub dropped_rows: u64,
    pub schema_pauses: u64,
    /// Absent in entries of earlier builds.
    #[serde(default)]
    pub quarantined: u64,
    /// Absent in entries of earlier builds.
    #[serde(default)]
    pub unpublished: u64,
    /// Values overwritten by a concurrent change, kept in the conflict journal. Absent in entries of earlier
    /// builds.
    #[serde(default)]
    pub conflicts: u64,
}

/// Why the cluster status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the {bucket} bucket: {reason}")]
    Bucket { bucket: String, reason: String },
    /// The handled positions or the removal records could not be read.
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("cannot read stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("the cluster's JetStream did not answer within {within:?} (last: {error})")]
    NoAnswer { within: Duration, error: String },
}

impl Entry {
    /// This node's entry as its counters are now; it expects `expected_nodes` nodes in its cluster.
    pub fn of(cfg: &Config, counters: &Counters, expected_nodes: usize) -> Entry {
        use std::sync::atomic::Ordering::Relaxed;
        let gauges = counters.shard_views();
        let held = counters.held();
        let shards = (1..=cfg.replication_log.shards.get())
            .map(|shard| {
                let g = gauges.get(shard as usize - 1).cloned().unwrap_or_default();
                ShardEntry {
                    shard,
                    stream: cfg.stream_name(shard),
                    applied: g.applied,
                    paused: g.paused,
                    schema_paused: g.schema_paused,
                    gap: g.gap,
                    held: held
                        .get(shard as usize - 1)
                        .map(|h| h.iter().map(|(t, (rows, _))| (t.clone(), *rows)).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let totals = counters.totals();
        Entry {
            node_id: cfg.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            written_at_ms: report::unix_ms(std::time::SystemTime::now()),
            shards,
            counters: Activity {
                published_msgs: totals.get(Total::PublishedMessages),
                published_rows: totals.get(Total::PublishedRows),
                publish_errors: totals.get(Total::PublishErrors),
                applied_msgs: totals.get(Total::AppliedMessages),
                applied_rows: totals.get(Total::AppliedRows),
                skipped_rows: totals.get(Total::SkippedRows),
                apply_errors: totals.get(Total::ApplyErrors),
                dropped_rows: totals.get(Total::DroppedRows),
                schema_pauses: totals.get(Total::SchemaPauses),
                quarantined: totals.get(Total::Quarantined),
                unpublished: totals.get(Total::Unpublished),
                conflicts: totals.get(Total::Conflicts),
            },
            published_upto: cfg.publish.then(|| counters.published_upto.load(Relaxed)),
            expected_nodes: Some(expected_nodes as u64),
            instance: None,
        }
    }
}

/// The key of node `node_id`'s entry.
pub fn node_key(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// The node id in a `node-<id>` key.
pub fn key_node(key: &str) -> Option<u64> {
    key.strip_prefix("node-")?.parse().ok()
}

/// How long [`refuse_twin`] watches another incarnation's entry for a new write (the writer writes every
/// [`PERIOD`]).
const TWIN_WATCH: Duration = Duration::from_secs(3);
/// An entry older than this (by the server's timestamp and our clock) is from a process that has stopped.
const TWIN_RECENT: Duration = Duration::from_secs(30);

/// Refuses to run a second process with this node's id in the cluster. Two signs of a live twin: the cluster's
/// servers keep refusing routes of this node's server (same name as the twin's: counted in
/// [`crate::nats::DUPLICATE_NAME_REFUSALS`]), or `node_id`'s status entry is written by another database (its
/// `instance`, the change-log incarnation, differs from `incarnation`) and is still being written (a new revision
/// within [`TWIN_WATCH`]). The same node restarting (after `kill -9` as well) finds its own incarnation, and the
/// routes of a dead process are closed at once; a stopped process's entry is not written again. When neither
/// sign shows, nothing is watched: the start is not delayed.
pub async fn refuse_twin(
    js: &jetstream::Context,
    node_id: u64,
    incarnation: u64,
) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let refusals = || crate::nats::DUPLICATE_NAME_REFUSALS.load(Relaxed);
    let ask = Duration::from_secs(1);
    let key = node_key(node_id);
    let read = |e: &kv::Entry| serde_json::from_slice::<Entry>(&e.value).ok();
    let store = match tokio::time::timeout(ask, js.get_key_value(BUCKET)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    };
    let first = match &store {
        Some(s) => match tokio::time::timeout(ask, s.entry(&key)).await {
            Ok(Ok(e)) => e,
            _ => None,
        },
        None => None,
    };
    let other_recent = first.as_ref().is_some_and(|e| {
        let created_ms = (e.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let age_ms = report::unix_ms(std::time::SystemTime::now()).saturating_sub(created_ms);
        read(e).is_some_and(|x| x.instance != Some(incarnation))
            && age_ms <= TWIN_RECENT.as_millis() as u64
    });
    let refused_before = refusals();
    if !other_recent && refused_before == 0 {
        return Ok(());
    }
    let twin = |why: &str| {
        Err(format!(
            "node_id {node_id} is already used by another running node of this cluster ({why}); give every \
             node its own node_id"
        ))
    };
    let deadline = tokio::time::Instant::now() + TWIN_WATCH;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(PERIOD / 4).await;
        if refusals() >= refused_before + 5 {
            return twin(&format!(
                "the cluster's servers refuse this node's server name harmonylite-node-{node_id} as a duplicate"
            ));
        }
        let (Some(s), Some(first)) = (&store, &first) else {
            continue;
        };
        if let Ok(Ok(Some(now))) = tokio::time::timeout(ask, s.entry(&key)).await
            && now.revision != first.revision
            && read(&now).is_some_and(|e| e.instance != Some(incarnation))
        {
            return twin(&format!(
                "another database writes the status entry {key} of bucket {BUCKET} every second"
            ));
        }
    }
    Ok(())
}

/// Open the bucket, creating it when missing.
async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, KvError> {
    crate::nats::placement::kv_bucket(
        js,
        BUCKET,
        "HarmonyLite: each node's status, written about once a second",
        replicas,
        std::time::Duration::ZERO,
    )
    .await
}

async fn put(
    js: &jetstream::Context,
    store: &mut Option<kv::Store>,
    replicas: usize,
    key: &str,
    entry: &Entry,
) -> Result<(), KvError> {
    if store.is_none() {
        *store = Some(bucket(js, replicas).await?);
    }
    let s = store.as_ref().expect("store set above");
    let body = serde_json::to_vec(entry).map_err(|e| KvError::write(BUCKET, key, e))?;
    s.put(key, body.into())
        .await
        .map_err(|e| KvError::write(BUCKET, key, e))?;
    Ok(())
}

/// Write this node's entry about once a second until cancelled, and soon after progress (an applied position or
/// `published_upto` moving; at most once per [`MIN_GAP`]), so that `-wait-replicated` learns of it quickly
/// without a write per transaction under load. A failure is logged at WARN when it starts (and at INFO when
/// writes work again), not at every attempt; it never stops replication.
pub async fn run(
    js: jetstream::Context,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    replicas: usize,
    expected_nodes: usize,
    incarnation: u64,
    cancel: CancellationToken,
) {
    let key = node_key(cfg.node_id);
    let mut store: Option<kv::Store> = None;
    let mut failing = false;
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = counters.progressed(), if !failing => tick.reset(),
        }
        let mut entry = Entry::of(&cfg, &counters, expected_nodes);
        entry.instance = Some(incarnation);
        // One try at a time, bounded: after a server dies, a request can wait seconds for an answer that a new
        // stream leader would give at once to the next one, and an entry missing that long reads as this node
        // being unreachable.
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(ATTEMPT, put(&js, &mut store, replicas, &key, &entry)) => {
                r.unwrap_or_else(|_| {
                    Err(KvError::write(BUCKET, &key, format!("no answer within {} s", ATTEMPT.as_secs())))
                })
            }
        };
        match r {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(bucket = BUCKET, "status entry written again");
            }
            Ok(()) => {}
            Err(e) => {
                store = None;
                // At start, the bucket another node is creating at that moment may not take writes for a
                // moment: routine for the first few seconds, said at DEBUG.
                if !failing && started.elapsed() >= ROUTINE_AT_START {
                    failing = true;
                    tracing::warn!(bucket = BUCKET, error = %e,
                        "cannot write this node's status entry; retrying every second (said once)");
                } else {
                    tracing::debug!(error = %e, "status entry not written; retrying");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}

/// A status entry as read back, with the server-side time it was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub entry: Entry,
    /// Unix ms of the KV entry's `created` timestamp.
    pub created_ms: u64,
}

/// A shard's stream at the time of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamState {
    pub shard: u32,
    pub stream: String,
    pub last_sequence: u64,
}

/// Node id → stream → handled position, as the retention bucket has them.
pub type Handled = BTreeMap<u64, BTreeMap<String, u64>>;

/// `-status`: [`gather`] with the handled positions of the positions bucket.
pub async fn command(
    js: &jetstream::Context,
    cfg: &Config,
    within: Duration,
) -> Result<Report, StatusError> {
    let handled = || crate::cluster::positions::handled_by_node(js);
    gather(js, cfg, handled, within).await
}

/// Read everything `-status` shows: the status entries, the streams' last sequences, and the handled
/// positions of the nodes the retention bucket knows (read by `handled`). Right after a node died, a stream
/// or bucket may have no leader for a few seconds and its requests go unanswered: each attempt is short
/// (1 s, growing to 5 s) and retried until `within` has passed.
pub async fn gather<F, Fut>(
    js: &jetstream::Context,
    cfg: &Config,
    handled: F,
    within: Duration,
) -> Result<Report, StatusError>
where
    // A plain closure returning a future, not an async closure: the future stays `Send` for callers that need
    // it (the HTTP server's `-wait-replicated` route).
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Handled, KvError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut attempt = Duration::from_secs(1);
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let once = async {
            let h = handled().await?;
            gather_once(js, cfg, h).await
        };
        let error = match tokio::time::timeout(attempt.min(left), once).await {
            Ok(Ok(report)) => return Ok(report),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", attempt.min(left)),
        };
        if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
            return Err(StatusError::NoAnswer { within, error });
        }
        tracing::debug!(%error, "cluster status not read yet; retrying");
        tokio::time::sleep(backoff.next_delay().min(left)).await;
        attempt = (attempt * 2).min(Duration::from_secs(5));
    }
}

async fn gather_once(
    js: &jetstream::Context,
    cfg: &Config,
    handled: Handled,
) -> Result<Report, StatusError> {
    let (stored, unreadable) = read_entries(js).await?;
    let mut streams = Vec::new();
    for shard in 1..=cfg.replication_log.shards.get() {
        let stream = cfg.stream_name(shard);
        use jetstream::context::GetStreamErrorKind;
        let last_sequence = match js.get_stream(&stream).await {
            Ok(info) => info.cached_info().state.last_sequence,
            // No node has started with this shard yet: nothing to be behind on.
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                0
            }
            Err(e) => {
                return Err(StatusError::Stream {
                    stream,
                    reason: e.to_string(),
                });
            }
        };
        streams.push(StreamState {
            shard,
            stream,
            last_sequence,
        });
    }
    let removed = crate::cluster::removals::removed(js).await?;
    let now_ms = report::unix_ms(std::time::SystemTime::now());
    Ok(Report::assess(stored, unreadable, handled, streams, now_ms)
        .without_removed(removed)
        .with_stale_nodes(cfg.replication_log.stale_node_seconds.get() * 1000))
}

/// When each node's status entry was last written (unix ms, by the servers' clock), by node id: when it was
/// last heard of. Empty when the bucket does not exist yet.
pub async fn last_heard(js: &jetstream::Context) -> Result<BTreeMap<u64, u64>, StatusError> {
    let (stored, _) = read_entries(js).await?;
    Ok(stored
        .into_iter()
        .map(|s| (s.entry.node_id, s.created_ms))
        .collect())
}

/// Every readable entry of the status bucket, and the ids of nodes whose entry could not be read (empty when
/// the bucket does not exist yet).
async fn read_entries(
    js: &jetstream::Context,
) -> Result<(Vec<Stored>, BTreeSet<u64>), StatusError> {
    let err = |e: &dyn std::fmt::Display| StatusError::Bucket {
        bucket: BUCKET.to_string(),
        reason: e.to_string(),
    };
    let store = match js.get_key_value(BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(Default::default());
        }
        Err(e) => return Err(err(&e)),
    };
    let mut keys = store.keys().await.map_err(|e| err(&e))?;
    let mut stored = Vec::new();
    let mut unreadable = BTreeSet::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| err(&e))?;
        let Some(e) = store.entry(&key).await.map_err(|e| err(&e))? else {
            continue;
        };
        if e.operation != kv::Operation::Put {
            continue;
        }
        match serde_json::from_slice::<Entry>(&e.value) {
            Ok(entry) => stored.push(Stored {
                entry,
                created_ms: (e.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
            }),
            Err(error) => {
                tracing::warn!(key, %error, "unreadable status entry");
                unreadable.extend(key_node(&key));
            }
        }
    }
    Ok((stored, unreadable))
}

/// Streams `s-1`, `s-2`, ... with the given last sequences, for unit tests of the reports.
#[cfg(test)]
pub(crate) fn test_streams(last: &[u64]) -> Vec<StreamState> {
    last.iter()
        .enumerate()
        .map(|(i, l)| StreamState {
            shard: i as u32 + 1,
            stream: format!("s-{}", i + 1),
            last_sequence: *l,
        })
        .collect()
}
