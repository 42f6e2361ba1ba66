//! Periodic and count-based snapshots, taken by one node at a time.
//!
//! The node that holds the lease (key `snapshot-leader` in the KV bucket `e-harmonylite`, the original's names)
//! saves a snapshot when `snapshot.interval` has passed since the latest one; when `max_entries` caps the
//! streams, whenever a stream has grown by half the cap since the latest snapshot; and, with no setting at
//! all, as soon as a stream has been trimmed (a new node can no longer replay it from the start) and again
//! before the age and size caps could remove the latest snapshot's positions, or after 100,000 messages. So
//! a node that missed more than the streams keep always finds a snapshot it can catch up from. The lease is clock-skew-proof: the bucket's `max_age` is the lease time, so the
//! server alone expires an unrenewed lease; taking it is a `create` (only when no one holds it), renewing it an
//! `update` at the revision the holder last wrote (refused if anyone else wrote since). No node's clock decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::cluster::lease::{Kind, Lease};
use crate::cluster::positions;
use crate::config::Config;
use crate::snapshot;

/// How long [`save_now`] waits for this node's recorded positions to reach the latest snapshot's.
const BEHIND_PATIENCE: Duration = Duration::from_secs(15);

/// Save a snapshot of this node's database now (`-save-snapshot`) and record its positions. The node records
/// what it has handled once a second: a node that has just caught up may still be recorded behind the latest
/// snapshot, so a refusal for that reason is retried for up to [`BEHIND_PATIENCE`]. Returns the manifest and
/// where the store is.
pub async fn save_now(
    cfg: &Config,
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<(snapshot::Manifest, String)> {
    let store = snapshot::store::open(cfg, js).await?;
    let patience = Instant::now() + BEHIND_PATIENCE;
    let m = loop {
        let handled = handled_positions(js, cfg.node_id).await;
        match snapshot::save(cfg, store.as_ref(), handled).await {
            Err(snapshot::SnapshotError::Behind { .. }) if Instant::now() < patience => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => break r?,
        }
    };
    record_snapshot_positions(js, &m, replicas).await;
    Ok((m, store.describe()))
}

/// What this node's retention entry says it has handled, for a snapshot's positions.
pub(super) async fn handled_positions(
    js: &async_nats::jetstream::Context,
    node_id: u64,
) -> crate::snapshot::Handled {
    positions::entry(js, node_id)
        .await
        .map(|e| crate::snapshot::Handled {
            incarnation: e.incarnation,
            positions: e.positions,
        })
        .unwrap_or_default()
}

/// Keep the stream from being trimmed below a snapshot's positions, so it can always be caught up from.
pub(super) async fn record_snapshot_positions(
    js: &async_nats::jetstream::Context,
    m: &crate::snapshot::Manifest,
    replicas: usize,
) {
    let entry = positions::Positions {
        node_id: m.node_id,
        incarnation: 0,
        positions: m.positions.clone(),
        published_upto: 0,
    };
    let r = match positions::bucket(js, replicas).await {
        Ok(kv) => positions::write(&kv, positions::SNAPSHOT_KEY, &entry).await,
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot record the snapshot's positions; the stream may be trimmed past them");
    }
}

/// The lease bucket and key (the original's names).
pub const LEASE_BUCKET: &str = "e-harmonylite";
pub const LEASE_KEY: &str = "snapshot-leader";

/// The snapshot lease.
static LEASE: Kind = Kind {
    bucket: LEASE_BUCKET,
    key: LEASE_KEY,
    description: "HarmonyLite: which node takes the periodic snapshots",
    role: "takes the periodic snapshots",
};

/// Messages a stream may grow by before a new snapshot is taken, when no other rule asked for one sooner.
const GROWTH: u64 = 100_000;

/// What the lease holder knows when it decides.
struct Look {
    /// Time since the latest snapshot (`None`: there is none).
    since_last: Option<Duration>,
    /// Most messages any stream gained since the latest snapshot's position.
    grown: u64,
    /// Some stream no longer starts at its first message (a new node cannot replay it from the start).
    trimmed: bool,
    /// Largest stream size in bytes.
    bytes: u64,
}

/// Why a snapshot is due, if it is. With the defaults (no `interval`, no `max_entries`) a snapshot exists as
/// soon as a stream has been trimmed, and is renewed before the stream's caps could remove its positions.
fn due(cfg: &Config, l: &Look) -> Option<&'static str> {
    let interval = cfg.snapshot.interval_ms;
    if interval > 0
        && l.since_last
            .is_none_or(|d| d >= Duration::from_millis(interval))
    {
        return Some("interval");
    }
    let rl = &cfg.replication_log;
    if rl.max_entries > 0 && l.grown >= (rl.max_entries as u64 / 2).max(1) {
        return Some("stream grew by half of max_entries");
    }
    if l.grown == 0 {
        return None;
    }
    if l.since_last.is_none() && l.trimmed {
        return Some("the streams were trimmed and there is no snapshot yet");
    }
    if l.since_last
        .is_some_and(|d| d.as_secs() >= rl.max_age_seconds.get() / 2)
    {
        return Some("half of max_age_seconds since the latest snapshot");
    }
    if rl.max_bytes > 0 && l.bytes >= rl.max_bytes as u64 / 2 {
        return Some("a stream holds half of max_bytes");
    }
    if l.grown >= GROWTH {
        return Some("a stream grew by 100,000 messages");
    }
    None
}

/// Take snapshots while this node holds the lease, until cancelled.
pub async fn run(
    js: jetstream::Context,
    cfg: Arc<Config>,
    counters: Arc<crate::counters::Counters>,
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
            match Lease::open(&LEASE, &js, ttl, replicas, cfg.node_id).await {
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
        let mut look = Look {
            since_last: last.as_ref().map(|(t, _)| t.elapsed()),
            grown: 0,
            trimmed: false,
            bytes: 0,
        };
        for shard in 1..=cfg.replication_log.shards.get() {
            let name = cfg.stream_name(shard);
            if let Ok(mut s) = js.get_stream(&name).await
                && let Ok(info) = s.info().await
            {
                let at = last
                    .as_ref()
                    .and_then(|(_, p)| p.get(&name).copied())
                    .unwrap_or(0);
                look.grown = look.grown.max(info.state.last_sequence.saturating_sub(at));
                look.trimmed |= info.state.first_sequence > 1;
                look.bytes = look.bytes.max(info.state.bytes);
            }
        }
        let Some(why) = due(&cfg, &look) else {
            continue;
        };
        tracing::info!(reason = why, "taking a snapshot");
        let handled = handled_positions(&js, cfg.node_id).await;
        let started = Instant::now();
        match snapshot::save(&cfg, store.as_ref(), handled).await {
            Ok(m) => {
                counters.snapshot_done(started.elapsed());
                record_snapshot_positions(&js, &m, replicas).await;
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
    fn a_snapshot_is_due_by_interval_by_growth_or_before_the_caps() {
        let mut cfg = crate::config::load(None, &Default::default()).unwrap().0;
        let look = |since: Option<u64>, grown, trimmed, bytes| Look {
            since_last: since.map(Duration::from_secs),
            grown,
            trimmed,
            bytes,
        };
        assert_eq!(
            due(&cfg, &look(None, 50, false, 0)),
            None,
            "nothing trimmed yet"
        );
        assert!(
            due(&cfg, &look(None, 50, true, 0)).is_some(),
            "trimmed, no snapshot"
        );
        assert_eq!(due(&cfg, &look(Some(10), 0, true, 0)), None, "nothing new");
        assert!(due(&cfg, &look(Some(10), 100_000, true, 0)).is_some());
        assert!(
            due(&cfg, &look(Some(4 * 24 * 3600), 1, true, 0)).is_some(),
            "half of max_age"
        );
        assert!(
            due(&cfg, &look(Some(10), 1, true, 600 << 20)).is_some(),
            "half of max_bytes"
        );
        cfg.snapshot.interval_ms = 60_000;
        assert_eq!(
            due(&cfg, &look(None, 0, false, 0)),
            Some("interval"),
            "never taken"
        );
        assert_eq!(due(&cfg, &look(Some(30), 0, false, 0)), None);
        assert_eq!(due(&cfg, &look(Some(61), 0, false, 0)), Some("interval"));
        cfg.replication_log.max_entries = 64;
        assert!(due(&cfg, &look(Some(1), 32, false, 0)).is_some());
        assert!(due(&cfg, &look(Some(1), 31, false, 0)).is_none());
    }
}
