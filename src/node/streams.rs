//! The node's streams: one per shard, created when missing, updated when `update_existing` asks for it (or when
//! an older stream lacks atomic batch publish).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::config::Config;
use crate::retry::Backoff;

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
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// The configuration of shard `shard`'s stream.
fn stream_config(cfg: &Config, shard: u32, replicas: usize) -> stream::Config {
    stream::Config {
        name: cfg.stream_name(shard),
        subjects: vec![cfg.subject_name(shard)],
        max_messages: cfg.replication_log.max_entries,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// Create (or check) one stream per shard, retrying until `deadline` has passed.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &Config,
    replicas: usize,
    deadline: Duration,
) -> Result<(), StreamError> {
    let start = Instant::now();
    for shard in 1..=cfg.replication_log.shards.get() {
        let config = stream_config(cfg, shard, replicas);
        // Nodes starting together create the same stream at once; a request caught in that race can go
        // unanswered, so each attempt is short (growing from 0.5 s to 5 s) and retried.
        let mut attempt_timeout = Duration::from_millis(500);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_millis(250));
        loop {
            let r = tokio::time::timeout(attempt_timeout, ensure_one(js, cfg, &config, replicas))
                .await
                .unwrap_or(Err(Attempt::NoAnswer(attempt_timeout)));
            attempt_timeout = (attempt_timeout * 2).min(Duration::from_secs(5));
            match r {
                Ok(()) => break,
                Err(e) if start.elapsed() < deadline => {
                    tracing::debug!(stream = %config.name, error = %e, "stream not ready yet");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    return Err(StreamError::Unavailable {
                        stream: config.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
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
            }
            Ok(())
        }
        Err(_) => {
            js.create_stream(config.clone()).await?;
            tracing::info!(stream = %config.name, replicas, "stream created");
            Ok(())
        }
    }
}
