//! The node's counters and gauges: what it published, applied and skipped, its errors, each shard's applied
//! stream position and pause reason, and when it last did anything. Updated where the work happens; read by
//! `sleep_timeout` and, next, by the metrics and health endpoints.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counters and gauges of one running node, shared by its tasks (`Arc<Counters>`).
#[derive(Default)]
pub struct Counters {
    pub published_rows: AtomicU64,
    pub published_msgs: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Rows read and dropped because `publish = false`.
    pub discarded_rows: AtomicU64,
    pub applied_rows: AtomicU64,
    pub applied_msgs: AtomicU64,
    pub skipped_rows: AtomicU64,
    pub apply_errors: AtomicU64,
    /// Times a shard paused because this node's schema was behind (once per message waited at).
    pub schema_pauses: AtomicU64,
    /// Incoming rows of tables (or key columns) dropped on this node, not applied.
    pub dropped_rows: AtomicU64,
    /// Unix ms of the last local or remote change handled.
    last_activity_ms: AtomicU64,
    shards: Mutex<Vec<ShardGauges>>,
}

/// One shard's gauges as [`Counters::shards`] reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// The last stream position handled (applied, or skipped as this node's own echo).
    pub applied: u64,
    /// Why the shard is paused on a message, while it is.
    pub paused: Option<String>,
    /// Paused because this node's schema is behind.
    pub schema_paused: bool,
    /// The first sequence needed, while the shard is stopped at a gap.
    pub gap: Option<u64>,
}

#[derive(Default, Clone)]
struct ShardGauges {
    applied: u64,
    paused: Option<String>,
    schema_paused: bool,
    /// The first sequence needed, while the shard is stopped at a gap.
    gap: Option<u64>,
}

impl Counters {
    /// Record activity now (for `sleep_timeout`).
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last recorded activity.
    pub fn idle_ms(&self) -> u64 {
        now_ms().saturating_sub(self.last_activity_ms.load(Ordering::Relaxed))
    }

    fn with_shard(&self, shard: u32, f: impl FnOnce(&mut ShardGauges)) {
        let mut v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let i = shard as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, ShardGauges::default());
        }
        f(&mut v[i]);
    }

    pub fn set_applied(&self, shard: u32, seq: u64) {
        self.with_shard(shard, |g| g.applied = seq);
    }

    /// Applied stream position per shard (index 0 = shard 1).
    pub fn applied(&self) -> Vec<u64> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|g| g.applied).collect()
    }

    pub fn set_paused(&self, shard: u32, reason: Option<String>) {
        self.with_shard(shard, |g| g.paused = reason);
    }

    /// Whether `shard` is paused waiting for the local schema to catch up.
    pub fn set_schema_paused(&self, shard: u32, paused: bool) {
        self.with_shard(shard, |g| g.schema_paused = paused);
    }

    /// How many shards are paused waiting for the local schema (the `schema_mismatch_paused` gauge).
    pub fn schema_paused(&self) -> usize {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().filter(|g| g.schema_paused).count()
    }

    /// Mark `shard` stopped at a gap (needing sequence `needed`), or no longer.
    pub fn set_gap(&self, shard: u32, needed: Option<u64>) {
        self.with_shard(shard, |g| g.gap = needed);
    }

    /// Shards stopped at a gap, with the first sequence each needs.
    pub fn gaps(&self) -> Vec<(u32, u64)> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .enumerate()
            .filter_map(|(i, g)| g.gap.map(|n| (i as u32 + 1, n)))
            .collect()
    }

    /// Shards paused on a message they cannot apply, with the reason.
    pub fn paused(&self) -> Vec<(u32, String)> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .enumerate()
            .filter_map(|(i, g)| g.paused.clone().map(|r| (i as u32 + 1, r)))
            .collect()
    }

    /// Every shard's gauges at once (index 0 = shard 1), for the status entry.
    pub fn shards(&self) -> Vec<ShardView> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .map(|g| ShardView {
                applied: g.applied,
                paused: g.paused.clone(),
                schema_paused: g.schema_paused,
                gap: g.gap,
            })
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_gauges_grow_on_demand() {
        let c = Counters::default();
        c.set_applied(2, 7);
        c.set_paused(3, Some("unknown column".into()));
        assert_eq!(c.applied(), [0, 7, 0]);
        assert_eq!(c.paused(), [(3, "unknown column".to_string())]);
        c.set_paused(3, None);
        assert!(c.paused().is_empty());
        c.set_schema_paused(1, true);
        c.set_schema_paused(2, true);
        c.set_schema_paused(2, false);
        assert_eq!(c.schema_paused(), 1);
    }

    #[test]
    fn idle_time_restarts_at_touch() {
        let c = Counters::default();
        assert!(
            c.idle_ms() > 1_000_000,
            "never touched: idle since the epoch"
        );
        c.touch();
        assert!(c.idle_ms() < 60_000);
    }
}
