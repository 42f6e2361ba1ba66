//! Periodic and count-based snapshots, taken by one node at a time.
//!
//! The node that holds the lease (key `snapshot-leader` in the KV bucket `e-harmonylite`, the original's names)
//! saves a snapshot when `snapshot.interval` has passed since the latest one, and, when `max_entries` caps the
//! streams, whenever a stream has grown by half the cap since the latest snapshot, so a snapshot's positions are
//! always still in the stream. The lease is clock-skew-proof: the bucket's `max_age` is the lease time, so the
//! server alone expires an unrenewed lease; taking it is a `create` (only when no one holds it), renewing it an
//! `update` at the revision the holder last wrote (refused if anyone else wrote since). No node's clock decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::snapshot;

/// The lease bucket and key (the original's names).
pub const LEASE_BUCKET: &str = "e-harmonylite";
pub const LEASE_KEY: &str = "snapshot-leader";

/// The lease as this node sees it.
struct Lease {
    store: kv::Store,
    node_id: u64,
    /// The revision this node last wrote while holding the lease.
    revision: Option<u64>,
}

impl Lease {
    async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
        node_id: u64,
    ) -> Result<Lease, String> {
        let store = match js.get_key_value(LEASE_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.to_string(),
                    description: "HarmonyLite: which node takes the periodic snapshots".to_string(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?,
        };
        Ok(Lease {
            store,
            node_id,
            revision: None,
        })
    }

    /// Take or renew the lease; true while this node holds it.
    async fn hold(&mut self) -> bool {
        let value = bytes::Bytes::from(self.node_id.to_string());
        let r = match self.revision {
            Some(rev) => self
                .store
                .update(LEASE_KEY, value, rev)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .store
                .create(LEASE_KEY, value)
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(rev) => {
                if self.revision.is_none() {
                    tracing::info!("this node takes the periodic snapshots (lease acquired)");
                }
                self.revision = Some(rev);
                true
            }
            Err(e) => {
                if self.revision.take().is_some() {
                    tracing::info!(error = %e, "snapshot lease lost");
                }
                false
            }
        }
    }
}

/// Why a snapshot is due, if it is.
fn due(cfg: &Config, since_last: Option<Duration>, grown_since_last: u64) -> Option<&'static str> {
    let interval = cfg.snapshot.interval_ms;
    if interval > 0 && since_last.is_none_or(|d| d >= Duration::from_millis(interval)) {
        return Some("interval");
    }
    let cap = cfg.replication_log.max_entries;
    if cap > 0 && grown_since_last >= (cap as u64 / 2).max(1) {
        return Some("stream grew by half of max_entries");
    }
    None
}

/// Take snapshots while this node holds the lease, until cancelled.
pub async fn run(
    js: jetstream::Context,
    cfg: Arc<Config>,
    replicas: usize,
    cancel: CancellationToken,
) {
    if !cfg.snapshot.enabled
        || (cfg.snapshot.interval_ms == 0 && cfg.replication_log.max_entries <= 0)
    {
        return;
    }
    let ttl = Duration::from_millis(cfg.snapshot.leader_ttl_ms.max(3000));
    let mut lease: Option<Lease> = None;
    let mut last: Option<(Instant, std::collections::BTreeMap<String, u64>)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        if lease.is_none() {
            match Lease::open(&js, ttl, replicas, cfg.node_id).await {
                Ok(l) => lease = Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "snapshot lease bucket not reachable yet");
                    continue;
                }
            }
        }
        let l = lease.as_mut().expect("set above");
        if !l.hold().await {
            last = None;
            continue;
        }
        let store = match snapshot::store::open(&cfg, &js).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot store not available");
                continue;
            }
        };
        if last.is_none() {
            // Start counting from the latest snapshot, whoever took it.
            if let Ok(Some(m)) = snapshot::latest(store.as_ref()).await {
                let age = humantime::parse_rfc3339(&m.created_at)
                    .ok()
                    .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                last = Some((
                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                    m.positions,
                ));
            }
        }
        let mut grown = 0u64;
        for shard in 1..=cfg.replication_log.shards.get() {
            let name = cfg.stream_name(shard);
            if let Ok(mut s) = js.get_stream(&name).await
                && let Ok(info) = s.info().await
            {
                let at = last
                    .as_ref()
                    .and_then(|(_, p)| p.get(&name).copied())
                    .unwrap_or(0);
                grown = grown.max(info.state.last_sequence.saturating_sub(at));
            }
        }
        let Some(why) = due(&cfg, last.as_ref().map(|(t, _)| t.elapsed()), grown) else {
            continue;
        };
        tracing::info!(reason = why, "taking a snapshot");
        match snapshot::save(&cfg, store.as_ref()).await {
            Ok(m) => {
                super::record_snapshot_positions(&js, &m, replicas).await;
                last = Some((Instant::now(), m.positions));
            }
            Err(e) => tracing::warn!(error = %e, "snapshot failed; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_by_interval_or_by_growth_under_a_cap() {
        let mut cfg = crate::config::load(None, &Default::default()).unwrap().0;
        assert_eq!(due(&cfg, None, 1_000_000), None, "interval off, no cap");
        cfg.snapshot.interval_ms = 60_000;
        assert_eq!(due(&cfg, None, 0), Some("interval"), "never taken");
        assert_eq!(due(&cfg, Some(Duration::from_secs(30)), 0), None);
        assert_eq!(
            due(&cfg, Some(Duration::from_secs(61)), 0),
            Some("interval")
        );
        cfg.replication_log.max_entries = 64;
        assert!(due(&cfg, Some(Duration::from_secs(1)), 32).is_some());
        assert!(due(&cfg, Some(Duration::from_secs(1)), 31).is_none());
    }
}
