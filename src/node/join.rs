//! A node joining a cluster that already holds data gets that data before it applies the stream.
//!
//! The stream carries changes, not the rows that were in the databases before capture began (the first install
//! records nothing: every node started from the same data). So a node whose database was never captured —
//! a new node, or one whose file was replaced by an empty one — would apply the stream and stop there without
//! those rows. A database captured for the first time is marked *join pending* (`capture::set_join_pending`);
//! while the mark is there, the engine's start looks at the cluster ([`decide`]):
//!
//! - the streams are empty, no node has handled anything and there is no snapshot: the cluster's very first
//!   start; nothing to do;
//! - a snapshot covers the streams: it is restored before anything is applied (as the original does);
//! - the cluster holds data but there is no usable snapshot: a live peer is asked to take one ([`ask_peer`],
//!   answered by [`serve`] on one node of the queue group), and it is restored;
//! - snapshots are disabled: said once at WARN, with how to seed the node.
//!
//! All of it happens before the engine applies anything: a restore later would replace what the node did
//! meanwhile. A node no peer answers within [`PATIENCE`] (or whose snapshot store cannot be read) starts
//! without the base data, says so at WARN, and stays marked: its next start tries again.
//!
//! Rows the file held before its first capture are never published (they could be older than the cluster's
//! values); when a restore replaces them, the file as it was is kept beside the database (`<db>.pre-join`,
//! written before the first install, and named at WARN).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::positions;
use crate::config::Config;
use crate::counters::Counters;
use crate::snapshot::{self, Manifest, store};

/// What a joining node does.
pub enum Decision {
    /// Nothing anywhere: the cluster's first start.
    FirstStart,
    /// Restore this snapshot first.
    Restore(Box<dyn store::Store>, Manifest),
    /// The cluster holds data but no snapshot that covers the streams: ask a peer for one.
    AskPeer,
    /// The cluster holds data and snapshots are disabled here.
    CannotSeed,
    /// The cluster holds data and the snapshot store cannot be read.
    StoreUnreadable(String),
}

/// How long a joining node waits for a peer's snapshot before it starts without the base data.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// Where the file as it was before its first capture is kept.
pub fn pre_join_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".pre-join");
    PathBuf::from(p)
}

/// Copy the database as it is (before its first capture) to `<db>.pre-join`, when it holds rows of tables that
/// replicate; an existing copy (from an earlier start that did not finish joining) is kept.
pub fn keep_pre_join(conn: &rusqlite::Connection, cfg: &Config) -> anyhow::Result<()> {
    let path = pre_join_path(&cfg.db_path);
    if path.exists()
        || !crate::capture::has_user_rows(conn, &cfg.include_tables, &cfg.exclude_tables)?
    {
        return Ok(());
    }
    conn.execute("VACUUM INTO ?1", [path.to_string_lossy()])
        .map_err(|e| anyhow::anyhow!("cannot copy the database to {}: {e}", path.display()))?;
    tracing::debug!(copy = %path.display(),
        "the database holds rows before its first capture; a copy is kept until this node knows whether it joins a cluster's data");
    Ok(())
}

/// Remove the pre-join copy: nothing replaced the rows it holds.
pub fn drop_pre_join(cfg: &Config) {
    let path = pre_join_path(&cfg.db_path);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::debug!(copy = %path.display(), "pre-join copy removed: the rows stay in the database")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(copy = %path.display(), error = %e, "cannot remove the pre-join copy")
        }
    }
}

/// Whether a stream holds a change, or any node (this one's earlier database included) has handled one, or a
/// snapshot's positions were recorded. The bucket is opened (created when missing: a cluster's first start), never assumed empty
/// when it does not answer.
async fn cluster_has_data(
    cfg: &Config,
    js: &jetstream::Context,
    replicas: usize,
) -> Result<bool, String> {
    for shard in 1..=cfg.replication_log.shards.get() {
        let mut s = js
            .get_stream(cfg.stream_name(shard))
            .await
            .map_err(|e| e.to_string())?;
        if s.info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence
            > 0
        {
            return Ok(true);
        }
    }
    let kv = positions::bucket(js, replicas)
        .await
        .map_err(|e| e.to_string())?;
    Ok(positions::read_all(&kv)
        .await
        .map_err(|e| e.to_string())?
        .values()
        .any(|p| p.positions.values().any(|&s| s > 0)))
}

/// Whether `m` can bring every shard of `cfg` to the stream (its positions are still in the streams).
async fn covers_streams(cfg: &Config, js: &jetstream::Context, m: &Manifest) -> bool {
    for shard in 1..=cfg.replication_log.shards.get() {
        let name = cfg.stream_name(shard);
        let first = match js.get_stream(&name).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => i.state.first_sequence,
                Err(_) => return false,
            },
            Err(_) => 1,
        };
        if !snapshot::covers(m, &name, first) {
            return false;
        }
    }
    true
}

/// A node with rows of its own whose cluster's first change is younger than this is taken for a node of the
/// cluster's first start, not a joining one (when there is no snapshot).
const FIRST_START_GRACE: Duration = Duration::from_secs(60);

/// Whether every stream's first change was stored less than [`FIRST_START_GRACE`] ago (an empty stream too).
async fn streams_began_lately(cfg: &Config, js: &jetstream::Context) -> bool {
    let now = std::time::SystemTime::now();
    for shard in 1..=cfg.replication_log.shards.get() {
        let Ok(mut s) = js.get_stream(cfg.stream_name(shard)).await else {
            return false;
        };
        let Ok(info) = s.info().await else {
            return false;
        };
        if info.state.messages == 0 {
            continue;
        }
        let first = std::time::UNIX_EPOCH
            + Duration::from_nanos(info.state.first_timestamp.unix_timestamp_nanos().max(0) as u64);
        if now.duration_since(first).unwrap_or_default() >= FIRST_START_GRACE {
            return false;
        }
    }
    true
}

/// Decide what a joining node does (see the module's documentation).
pub async fn decide(
    cfg: &Config,
    js: &jetstream::Context,
    replicas: usize,
) -> Result<Decision, String> {
    let has_data = cluster_has_data(cfg, js, replicas).await?;
    if !cfg.snapshot.enabled {
        return Ok(if has_data {
            Decision::CannotSeed
        } else {
            Decision::FirstStart
        });
    }
    let store = match store::open(cfg, js).await {
        Ok(s) => s,
        Err(e) if has_data => return Ok(Decision::StoreUnreadable(e.to_string())),
        Err(_) => return Ok(Decision::FirstStart),
    };
    let latest = match snapshot::latest(store.as_ref()).await {
        Ok(l) => l,
        Err(e) if has_data => return Ok(Decision::StoreUnreadable(e.to_string())),
        Err(_) => return Ok(Decision::FirstStart),
    };
    if let Some(m) = latest {
        if covers_streams(cfg, js, &m).await {
            return Ok(Decision::Restore(store, m));
        }
        tracing::info!(object = %m.object, created_at = %m.created_at,
            "the latest snapshot is older than what the streams still hold");
        return Ok(Decision::AskPeer);
    }
    if has_data && pre_join_path(&cfg.db_path).exists() && streams_began_lately(cfg, js).await {
        // Rows of its own and a cluster whose first change is moments old: a node of the cluster's first
        // start, a little late (its peers began writing while it was still starting), not a new node.
        return Ok(Decision::FirstStart);
    }
    Ok(if has_data {
        Decision::AskPeer
    } else {
        Decision::FirstStart
    })
}

/// The subject of snapshot requests.
pub fn subject(cfg: &Config) -> String {
    format!("{}.ops.snapshot", cfg.nats.subject_prefix)
}

/// The queue group of the nodes that answer them (one node answers each request).
const QUEUE: &str = "harmonylite-snapshot";

/// A request for a snapshot (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The node asking.
    pub node_id: u64,
    /// A snapshot a peer gave before that did not cover the streams as the asking node saw them: never given
    /// again, a new one is taken (absent from older versions' requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<String>,
}

/// The answer (JSON): the snapshot's object, or why none was taken.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub node_id: u64,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A snapshot younger than this is given to a joining node instead of taking another one.
const FRESH_ENOUGH: Duration = Duration::from_secs(60);

/// How long a requester waits for one answer (the peer copies, compresses and uploads its database).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Answer joining nodes' snapshot requests until cancelled: take a snapshot into the configured store (unless
/// one younger than a minute covers the streams) and say which. One request at a time.
pub async fn serve(
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    replicas: usize,
    cancel: CancellationToken,
) {
    let subject = subject(&cfg);
    let mut sub = loop {
        match client
            .queue_subscribe(subject.clone(), QUEUE.to_string())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot subscribe to snapshot requests; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Some(reply_to) = msg.reply else { continue };
        let (asking, not) = serde_json::from_slice::<Request>(&msg.payload)
            .map(|r| (r.node_id, r.not))
            .unwrap_or((0, None));
        tracing::info!(
            node = asking,
            "a joining node asks for a snapshot of the cluster's data"
        );
        let answer = tokio::select! {
            _ = cancel.cancelled() => break,
            a = take(&js, &cfg, &counters, replicas, not.as_deref()) => a,
        };
        let reply = match answer {
            Ok(object) => Reply {
                node_id: cfg.node_id,
                object: Some(object),
                error: None,
            },
            Err(e) => {
                tracing::warn!(node = asking, error = %e, "cannot give the joining node a snapshot");
                Reply {
                    node_id: cfg.node_id,
                    object: None,
                    error: Some(e),
                }
            }
        };
        let body = serde_json::to_vec(&reply).expect("a reply serialises");
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "cannot answer the snapshot request");
        }
    }
    let _ = sub.unsubscribe().await;
}

/// A snapshot for a joining node: the latest when it is fresh and covers the streams (and is not `not`, one
/// the joining node found short), else a new one.
async fn take(
    js: &jetstream::Context,
    cfg: &Config,
    counters: &Counters,
    replicas: usize,
    not: Option<&str>,
) -> Result<String, String> {
    let store = store::open(cfg, js).await.map_err(|e| e.to_string())?;
    if let Ok(Some(m)) = snapshot::latest(store.as_ref()).await
        && not != Some(m.object.as_str())
    {
        let age = humantime::parse_rfc3339(&m.created_at)
            .ok()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < FRESH_ENOUGH) && covers_streams(cfg, js, &m).await {
            return Ok(m.object);
        }
    }
    tracing::info!("taking a snapshot for a joining node");
    let handled = super::saves::handled_positions(js, cfg.node_id).await;
    let started = std::time::Instant::now();
    let m = snapshot::save(cfg, store.as_ref(), handled)
        .await
        .map_err(|e| e.to_string())?;
    counters.snapshot_done(started.elapsed());
    super::saves::record_snapshot_positions(js, &m, replicas).await;
    Ok(m.object)
}

/// Ask the cluster's nodes for a snapshot until one says it saved one (then return its object), `until`, or
/// `cancel`; `not`: the object a peer gave last time, which did not cover the streams. Says at WARN, at most
/// once a minute, while no node answers.
pub async fn ask_peer(
    client: async_nats::Client,
    cfg: Arc<Config>,
    until: std::time::Instant,
    not: Option<String>,
    cancel: CancellationToken,
) -> Option<String> {
    let subject = subject(&cfg);
    let body = serde_json::to_vec(&Request {
        node_id: cfg.node_id,
        not,
    })
    .expect("a request serialises");
    let mut last_warn: Option<std::time::Instant> = None;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        tracing::info!(
            "this node joins a cluster that holds data and there is no snapshot of it: asking a peer to take one"
        );
        let request = async_nats::Request::new()
            .payload(body.clone().into())
            .timeout(Some(ANSWER_TIMEOUT.min(left)));
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = client.send_request(subject.clone(), request) => r,
        };
        let problem = match outcome {
            Ok(msg) => match serde_json::from_slice::<Reply>(&msg.payload) {
                Ok(Reply {
                    object: Some(object),
                    node_id,
                    ..
                }) => {
                    tracing::info!(
                        object,
                        peer = node_id,
                        "a peer saved a snapshot for this node"
                    );
                    return Some(object);
                }
                Ok(Reply { error, node_id, .. }) => format!(
                    "node {node_id} could not take one: {}",
                    error.unwrap_or_default()
                ),
                Err(e) => format!("unreadable answer: {e}"),
            },
            Err(e) => e.to_string(),
        };
        if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_warn = Some(std::time::Instant::now());
            tracing::warn!(
                problem,
                "no peer gave this joining node a snapshot yet; it asks again (a node with snapshots enabled must \
                 be running); it applies nothing meanwhile"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
