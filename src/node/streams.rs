//! The node's streams: one per shard, created when missing, updated when `update_existing` asks for it (or when
//! an older stream lacks atomic batch publish).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::config::Config;
use crate::repeat::{Repeats, Report};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create or open stream {stream}: {reason}")]
    Unavailable { stream: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Get(#[from] jetstream::context::GetStreamError),
    #[error(transparent)]
    Info(#[from] jetstream::stream::InfoError),
    /// Creating or updating the stream.
    #[error(transparent)]
    Write(#[from] jetstream::context::CreateStreamError),
    #[error("{0}")]
    Create(String),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// The configuration of shard `shard`'s stream.
fn stream_config(cfg: &Config, shard: u32, replicas: usize) -> stream::Config {
    stream::Config {
        name: cfg.stream_name(shard),
        subjects: vec![cfg.subject_name(shard)],
        max_messages: cfg.replication_log.max_entries,
        max_age: Duration::from_secs(cfg.replication_log.max_age_seconds.get()),
        max_bytes: cfg.replication_log.max_bytes,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// What `max_entries`, when a configuration sets it, means for nodes that are away: said once at start.
pub fn explain_caps(cfg: &Config) {
    let n = cfg.replication_log.max_entries;
    if n > 0 {
        tracing::warn!(
            max_entries = n,
            "replication_log.max_entries caps each shard's stream at {n} messages (one per local transaction \
             of any node): at 500 transactions per second across the cluster, a node away for more than about \
             {:.1} s can no longer catch up from the stream and needs a snapshot. Remove the key to keep \
             every change until all nodes have applied it (bounded by max_age_seconds and max_bytes)",
            n as f64 / 500.0
        );
    }
}

/// How long failing to create or open a stream is routine at start (peers starting at the same moment).
const ROUTINE: Duration = Duration::from_secs(5);

/// Create (or check) one stream per shard, retrying until `deadline` has passed. Replication waits for the
/// streams, so a failure is a warning when it starts (e.g. "no suitable peers for placement"), summarised while
/// it repeats (see [`crate::repeat`]), and its end is said.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &Config,
    replicas: usize,
    deadline: Duration,
) -> Result<(), StreamError> {
    let start = Instant::now();
    let mut trouble = Repeats::default();
    for shard in 1..=cfg.replication_log.shards.get() {
        let config = stream_config(cfg, shard, replicas);
        // Nodes starting together create the same stream at once; a request caught in that race can go
        // unanswered, so tries overlap (`Asking::FORMING`).
        let mut warned = false;
        let asked = crate::retry::ask(
            crate::retry::Asking::FORMING,
            tokio::time::Instant::from_std(start + deadline),
            || ensure_one(js, cfg, &config, replicas),
            Attempt::NoAnswer,
            |e| {
                let error = e.to_string();
                match trouble.observe(&config.name, &error, Instant::now()) {
                    // Nodes starting together race to create the streams: a few seconds of refusals and
                    // unanswered requests are routine, said at DEBUG.
                    _ if !warned && start.elapsed() >= ROUTINE => {
                        warned = true;
                        tracing::warn!(stream = %config.name, error,
                            "cannot create or open the stream yet; replication waits for it; retrying")
                    }
                    Some(Report::Repeating { count, ongoing, .. }) if warned => {
                        tracing::warn!(stream = %config.name, error, failed_attempts = count,
                            ongoing_s = ongoing.as_secs(),
                            "still cannot create or open the stream; replication waits for it; retrying")
                    }
                    _ => tracing::debug!(stream = %config.name, error, "stream not ready yet"),
                }
            },
        )
        .await;
        if let Err(e) = asked {
            return Err(StreamError::Unavailable {
                stream: config.name.clone(),
                reason: e.to_string(),
            });
        }
        if let Some(Report::Ended { total, lasted, .. }) =
            trouble.resolve(&config.name, Instant::now())
        {
            if warned {
                tracing::info!(stream = %config.name, failed_attempts = total, after_s = lasted.as_secs(),
                    "stream available after {total} failed attempts");
            } else {
                tracing::debug!(stream = %config.name, failed_attempts = total,
                    "stream available after {total} failed attempts");
            }
        }
    }
    Ok(())
}

/// How long [`prepare_buckets`] tries.
const AHEAD: Duration = Duration::from_secs(5);

/// The buckets a node's start opens after the change streams (the positions bucket; the snapshot object store
/// when snapshots live in NATS), created at the same time as the streams: on a cluster's first start each is a
/// RAFT group of its own electing its leader (30–100 ms here), and the start's later steps then find them ready
/// instead of creating them one after another. One try each; failures are left to those steps, which open or
/// create the buckets themselves.
pub async fn prepare_buckets(js: jetstream::Context, cfg: std::sync::Arc<Config>, replicas: usize) {
    let positions = async {
        match tokio::time::timeout(AHEAD, crate::cluster::positions::bucket(&js, replicas)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "positions bucket not created ahead"),
            Err(_) => {
                tracing::debug!("positions bucket not created ahead: no answer within {AHEAD:?}")
            }
        }
    };
    let snapshots = async {
        if cfg.replicate
            && cfg.snapshot.enabled
            && cfg.snapshot.store == crate::config::SnapshotStore::Nats
        {
            crate::snapshot::store::nats::prepare(&cfg, &js, replicas, AHEAD).await;
        }
    };
    futures::join!(positions, snapshots);
}

/// Every stream the node creates (the change streams, the buckets' streams, with `[feed] enabled` the feed's
/// stream and lease bucket) with the replicas it should have: what [`crate::nats::placement::raise`] watches.
pub fn wanted_replicas(cfg: &Config, replicas: usize) -> Vec<(String, usize)> {
    use crate::nats::placement::{kv_stream, object_stream};
    let mut out: Vec<(String, usize)> = (1..=cfg.replication_log.shards.get())
        .map(|shard| (cfg.stream_name(shard), replicas))
        .collect();
    for bucket in [
        crate::cluster::positions::BUCKET,
        crate::ops::schema::BUCKET,
        crate::ops::status::BUCKET,
        super::saves::LEASE_BUCKET,
    ] {
        out.push((kv_stream(bucket), replicas));
    }
    if cfg.feed.enabled {
        out.push((crate::feed::stream_name(cfg), replicas));
        out.push((kv_stream(crate::feed::writer::LEASE_BUCKET), replicas));
    }
    let snapshots = match cfg.snapshot.nats.replicas {
        0 => replicas,
        n => n as usize,
    };
    out.push((
        object_stream(&crate::snapshot::store::nats::bucket_name(cfg)),
        snapshots,
    ));
    out
}

async fn ensure_one(
    js: &jetstream::Context,
    cfg: &Config,
    config: &stream::Config,
    replicas: usize,
) -> Result<(), Attempt> {
    match js.get_stream(&config.name).await {
        Ok(mut s) => {
            let info = s.info().await?.config.clone();
            if cfg.replication_log.update_existing || !info.allow_atomic_publish {
                js.update_stream(config).await?;
                tracing::info!(stream = %config.name, "stream configuration updated");
            } else if (info.max_messages, info.max_age, info.max_bytes)
                != (config.max_messages, config.max_age, config.max_bytes)
            {
                tracing::warn!(stream = %config.name, max_messages = info.max_messages,
                    max_age_s = info.max_age.as_secs(), max_bytes = info.max_bytes,
                    "the stream keeps the retention limits it was created with, not those of this \
                     configuration; set replication_log.update_existing = true to apply them");
            }
            Ok(())
        }
        Err(_) => {
            let placed = crate::nats::placement::create(&config.name, replicas, |r| {
                let mut config = config.clone();
                config.num_replicas = r;
                async move {
                    js.create_stream(config)
                        .await
                        .map(|_| r)
                        .map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(Attempt::Create)?;
            tracing::info!(stream = %config.name, replicas = placed, "stream created");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_stream_and_its_lease_are_raised_only_with_the_feed_on() {
        let mut cfg = Config::default();
        let names = |cfg: &Config| -> Vec<String> {
            wanted_replicas(cfg, 3)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert!(!names(&cfg).iter().any(|n| n.contains("feed")));
        cfg.feed.enabled = true;
        let on = names(&cfg);
        assert!(on.contains(&"harmonylite-feed".to_string()), "{on:?}");
        assert!(
            on.contains(&"KV_harmonylite-feed-lease".to_string()),
            "{on:?}"
        );
    }
}
