//! The node's counters and gauges: what it published, applied and skipped, its errors by kind, each shard's
//! applied stream position, pause reason, gap and lag, and when it last did anything. Updated where the work
//! happens; read by `sleep_timeout`, the metrics and health endpoints (`ops`) and the cluster status.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Declares the running totals in one table: each row is the [`Total`] variant, its Prometheus counter
/// (empty: not exported as a metric) and the counter's help text. Adding a total is a row here and a
/// [`Counters::add`] where the work happens; the metrics, `/health` and the status entry read them all from
/// [`Counters::totals`].
macro_rules! totals {
    ($($(#[$doc:meta])* $name:ident => $metric:literal, $help:literal;)*) => {
        /// A running total of what the node did since it started.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Total {
            $($(#[$doc])* $name,)*
        }

        impl Total {
            pub const ALL: &[Total] = &[$(Total::$name,)*];
            pub const COUNT: usize = Total::ALL.len();

            /// The Prometheus counter it is exported as (`harmonylite_` prefix), if any.
            pub fn metric(self) -> Option<&'static str> {
                match self {
                    $(Total::$name => Some($metric).filter(|m: &&str| !m.is_empty()),)*
                }
            }

            /// The metric's help text.
            pub fn help(self) -> &'static str {
                match self {
                    $(Total::$name => $help,)*
                }
            }
        }
    };
}

totals! {
    /// Rows of this node's changes published (acknowledged).
    PublishedRows => "harmonylite_published", "Rows published to JetStream (acknowledged).";
    PublishedMessages => "harmonylite_published_messages", "JetStream messages published (acknowledged).";
    PublishErrors => "", "";
    /// Rows read and dropped because `publish = false`.
    DiscardedRows => "harmonylite_discarded_rows", "Local change-log rows read and not published because publish = false.";
    AppliedRows => "harmonylite_applied_rows", "Rows from other nodes written into the database.";
    AppliedMessages => "harmonylite_applied_messages", "Stream messages handled (applied, or skipped as this node's own).";
    SkippedRows => "harmonylite_skipped_echo_rows", "Rows skipped because they are this node's own changes coming back, or older than its own newer write.";
    ApplyErrors => "", "";
    /// Times a shard paused because this node's schema was behind (once per message waited at).
    SchemaPauses => "harmonylite_schema_pauses", "Times a shard paused at a message naming a table or column this node does not have yet.";
    /// Incoming rows of tables (or key columns) dropped on this node, not applied.
    DroppedRows => "harmonylite_dropped_rows", "Incoming rows of tables or key columns this node does not replicate.";
    /// Values overwritten by a concurrent change and kept in the conflict journal.
    Conflicts => "harmonylite_conflicts", "Values overwritten by a concurrent change from another node, kept in __harmonylite__conflicts.";
    /// Rows of a rebuilt table's backfill not applied because a newer change of the row was in the stream.
    BackfillSuperseded => "harmonylite_backfill_superseded_rows", "Rows of a rebuilt table's backfill not applied because the stream held a newer change of the row.";
    /// Stream messages that can never be applied, kept in `__harmonylite__quarantine`.
    Quarantined => "harmonylite_quarantined_messages", "Stream messages that can never be applied (undecodable, malformed, or naming a reserved table), kept in __harmonylite__quarantine.";
    /// Local changes that can never be published, set aside in `__harmonylite__unpublished` (since start).
    Unpublished => "harmonylite_unpublished_rows", "Local changes that can never be published (too large for any message, or refused by the server for good), set aside in __harmonylite__unpublished; the changes behind them go on.";
    /// Pieces of large values published.
    PiecesPublished => "harmonylite_value_pieces_published", "Pieces of large values published (a value longer than a quarter of replication_log.max_message_bytes travels in pieces).";
    /// Pieces of other nodes' large values staged.
    PiecesStaged => "harmonylite_value_pieces_staged", "Pieces of other nodes' large values staged in __harmonylite__pieces until their row is applied.";
}

/// The totals at one moment, by [`Total`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals([u64; Total::COUNT]);

impl Totals {
    pub fn get(&self, t: Total) -> u64 {
        self.0[t as usize]
    }
}

/// Counters and gauges of one running node, shared by its tasks (`Arc<Counters>`).
#[derive(Default)]
pub struct Counters {
    /// The running totals of [`Total`], counted with [`Counters::add`].
    totals: [AtomicU64; Total::COUNT],
    /// Ports this node opens to anyone (see `nats::exposure`), as said at start.
    security_warnings: Mutex<Vec<String>>,
    /// See [`Counters::set_stale_nodes`].
    stale_nodes: Mutex<Vec<crate::cluster::Holding>>,
    /// See [`Counters::set_catch_up`].
    catch_up: Mutex<Option<CatchUp>>,
    /// Change-log rows written by applications and not yet published (measured about once a second).
    pub pending_rows: AtomicU64,
    /// Unix ms when the latest snapshot this node saved or restored finished, and how long it took.
    pub last_snapshot_ms: AtomicU64,
    pub last_snapshot_duration_ms: AtomicU64,
    /// Change-log ids up to here are acknowledged by JetStream (set with [`Counters::set_published_upto`]).
    /// Stored (`Release`) after the stream sequences of those changes ([`Counters::set_published_seq`]), so a
    /// reader that loads it (`Acquire`) first and then reads those sequences sees every one of them.
    pub published_upto: AtomicU64,
    /// Unix ms of the last message applied from the stream, and of the last publish acknowledged.
    pub last_applied_ms: AtomicU64,
    pub last_published_ms: AtomicU64,
    /// Whether every shard's stream answered with a leader at the last look (JetStream quorum).
    pub quorum: AtomicBool,
    /// Whether every shard's stream exists (seen at least once).
    pub streams_ready: AtomicBool,
    /// Unix ms of the last local or remote change handled.
    last_activity_ms: AtomicU64,
    shards: Mutex<Vec<ShardGauges>>,
    /// Errors by (operation, kind), e.g. ("apply", "decode").
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Signalled when an applied position or `published_upto` moves (see [`Counters::progressed`]).
    progress: tokio::sync::Notify,
}

#[derive(Default, Clone)]
struct ShardGauges {
    applied: u64,
    paused: Option<String>,
    schema_paused: bool,
    /// The first sequence needed, while the shard is stopped at a gap.
    gap: Option<u64>,
    /// Unix ms since when the shard has been paused or stopped at a gap (0 while it is not).
    stuck_since_ms: u64,
    /// The stream's last sequence at the last look.
    last_seq: u64,
    /// Whether the stream has been looked at (until then the lag is not known).
    last_seq_known: bool,
    /// Age in ms of the oldest message not yet handled at the last look (0 when caught up).
    oldest_unapplied_ms: u64,
    /// The highest stream sequence at which JetStream stored one of this node's own changes (this run).
    published: u64,
    /// The position this node's positions entry certified when this run started (messages up to it were
    /// handled by an earlier run on this database; own changes skipped then leave the database's position
    /// behind it).
    certified: u64,
    /// While a backfill of this node's is not handled by every node: the stream must keep what follows
    /// `floor` (see [`Counters::hold`]).
    hold: Option<Hold>,
    /// Changes held because this node's schema is behind, per lower-cased table: (rows, since unix ms).
    held: BTreeMap<String, (u64, u64)>,
}

/// A backfill's window kept in the stream: everything after `floor` until every node has handled `until`.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    floor: u64,
    until: u64,
    /// Backfill units built and not yet acknowledged (their positions are not known yet).
    pending: u32,
}

impl ShardGauges {
    fn stuck(&self) -> bool {
        self.paused.is_some() || self.gap.is_some()
    }
}

/// A catch-up going on, as operators see it (followed by `ops::catch_up`).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct CatchUp {
    /// Messages in the streams this node has not handled yet.
    pub behind_messages: u64,
    /// Rows from other nodes applied since the catch-up began.
    pub applied_rows: u64,
    /// Rows applied per second, over the last few seconds.
    pub rows_per_second: f64,
    /// Stream messages handled per second, over the last few seconds.
    pub messages_per_second: f64,
    /// Time left at that pace (`null` until a pace is measured).
    pub remaining_seconds: Option<f64>,
    /// Since the catch-up began.
    pub seconds: f64,
}

/// One shard as operators see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    pub applied: u64,
    pub last_seq: u64,
    /// Messages in the stream this node has not handled yet; `None` until the stream's last sequence is known.
    pub lag_msgs: Option<u64>,
    /// Age in ms of the oldest of them (0 when caught up).
    pub lag_ms: u64,
    pub paused: Option<String>,
    pub schema_paused: bool,
    pub gap: Option<u64>,
    /// How long the shard has been paused or stopped at a gap, in ms (0 while it is not).
    pub stuck_for_ms: u64,
}

impl Counters {
    /// Count `n` more of `t`.
    #[inline]
    pub fn add(&self, t: Total, n: u64) {
        self.totals[t as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Every total now.
    pub fn totals(&self) -> Totals {
        Totals(std::array::from_fn(|i| {
            self.totals[i].load(Ordering::Relaxed)
        }))
    }

    /// The nodes that hold back a stream's retention, silent for `stale_node_seconds` (see
    /// [`crate::cluster::holding::holding_back`]), as the last look found them.
    pub fn set_stale_nodes(&self, nodes: Vec<crate::cluster::Holding>) {
        *self.stale_nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
    }

    /// The catch-up going on, as the last look found it (`None` when the node is not far behind).
    pub fn set_catch_up(&self, c: Option<CatchUp>) {
        *self.catch_up.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    pub fn catch_up(&self) -> Option<CatchUp> {
        self.catch_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stale_nodes(&self) -> Vec<crate::cluster::Holding> {
        self.stale_nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_security_warnings(&self, warnings: Vec<String>) {
        *self
            .security_warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = warnings;
    }

    pub fn security_warnings(&self) -> Vec<String> {
        self.security_warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
        let g = &mut v[i];
        let was_stuck = g.stuck();
        f(g);
        match (was_stuck, g.stuck()) {
            (false, true) => g.stuck_since_ms = now_ms(),
            (_, false) => g.stuck_since_ms = 0,
            _ => {}
        }
    }

    /// A snapshot was saved or restored, taking `took`.
    pub fn snapshot_done(&self, took: std::time::Duration) {
        self.last_snapshot_duration_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        self.last_snapshot_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Count one error of `kind` in `op` ("publish", "apply", "consume", ...).
    pub fn error(&self, op: &'static str, kind: &'static str) {
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((op, kind)).or_default() += 1;
    }

    /// Errors so far by (operation, kind).
    pub fn errors(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record what the stream of `shard` holds: its last sequence, and the age of the oldest message this node
    /// has not handled (0 when caught up).
    pub fn set_stream(&self, shard: u32, last_seq: u64, oldest_unapplied_ms: u64) {
        self.with_shard(shard, |g| {
            g.last_seq = last_seq;
            g.last_seq_known = true;
            g.oldest_unapplied_ms = oldest_unapplied_ms;
        });
    }

    /// Every shard as operators see it (index 0 = shard 1).
    pub fn shard_views(&self) -> Vec<ShardView> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        v.iter()
            .enumerate()
            .map(|(i, g)| {
                let lag_msgs = g.last_seq.saturating_sub(g.applied);
                ShardView {
                    shard: i as u32 + 1,
                    applied: g.applied,
                    last_seq: g.last_seq,
                    lag_msgs: g.last_seq_known.then_some(lag_msgs),
                    lag_ms: if lag_msgs == 0 {
                        0
                    } else {
                        g.oldest_unapplied_ms
                    },
                    paused: g.paused.clone(),
                    schema_paused: g.schema_paused,
                    gap: g.gap,
                    stuck_for_ms: if g.stuck() {
                        now.saturating_sub(g.stuck_since_ms)
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    pub fn set_applied(&self, shard: u32, seq: u64) {
        self.with_shard(shard, |g| g.applied = seq);
        self.progress.notify_one();
    }

    /// Change-log ids up to `upto` are acknowledged by JetStream.
    pub fn set_published_upto(&self, upto: u64) {
        self.published_upto.store(upto, Ordering::Release);
        self.progress.notify_one();
    }

    /// Resolves once an applied position or `published_upto` has moved since the last call resolved (at once
    /// when it moved meanwhile). Meant for one waiter: the task that shares this node's status.
    pub async fn progressed(&self) {
        self.progress.notified().await;
    }

    /// Applied stream position per shard (index 0 = shard 1).
    pub fn applied(&self) -> Vec<u64> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|g| g.applied).collect()
    }

    /// The position this node's positions entry certifies for `shard` (0: none; see [`ShardGauges`]).
    pub fn set_certified(&self, shard: u32, seq: u64) {
        self.with_shard(shard, |g| g.certified = seq);
    }

    /// Certified position per shard (index 0 = shard 1).
    pub fn certified(&self) -> Vec<u64> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|g| g.certified).collect()
    }

    /// A backfill unit of `shard` was built with `seen` as its window's start: until every node has handled it,
    /// this node's positions entry says no more than `seen` for that stream, so the trim keeps the window
    /// every node reads to decide its rows (`apply::window`).
    pub fn hold(&self, shard: u32, seen: u64) {
        self.with_shard(shard, |g| {
            let h = g.hold.get_or_insert(Hold {
                floor: seen,
                ..Hold::default()
            });
            h.floor = h.floor.min(seen);
            h.pending += 1;
        });
    }

    /// A backfill unit of `shard` was stored at `top` (0: stored by an earlier attempt at an unknown position;
    /// the stream's last sequence at the last look stands for it).
    pub fn hold_until(&self, shard: u32, top: u64) {
        self.with_shard(shard, |g| {
            let last = g.last_seq;
            if let Some(h) = &mut g.hold {
                h.pending = h.pending.saturating_sub(1);
                h.until = h.until.max(if top == 0 { last.max(1) } else { top });
            }
        });
    }

    /// Per shard (index 0 = shard 1), the position this node's entry may not go above (`u64::MAX`: none).
    pub fn hold_floors(&self) -> Vec<u64> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .map(|g| g.hold.map_or(u64::MAX, |h| h.floor))
            .collect()
    }

    /// End the holds whose backfills every other node has handled (`others`: per shard, the lowest position
    /// the other nodes reported) and this node too.
    pub fn release_holds(&self, others: &[u64]) {
        let mut v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        for (g, &o) in v.iter_mut().zip(others) {
            if let Some(h) = g.hold
                && h.pending == 0
                && o >= h.until
                && g.applied >= h.until
            {
                tracing::debug!(
                    floor = h.floor,
                    until = h.until,
                    "backfill handled by every node"
                );
                g.hold = None;
            }
        }
    }

    /// The changes `shard` holds, per table: (rows, since unix ms); empty when it holds none.
    pub fn set_held(&self, shard: u32, held: BTreeMap<String, (u64, u64)>) {
        self.with_shard(shard, |g| g.held = held);
    }

    /// Per shard (index 0 = shard 1), the changes it holds per table: (rows, since unix ms).
    pub fn held(&self) -> Vec<BTreeMap<String, (u64, u64)>> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|g| g.held.clone()).collect()
    }

    /// JetStream stored one of this node's own changes at `seq` of `shard`'s stream.
    pub fn set_published_seq(&self, shard: u32, seq: u64) {
        self.with_shard(shard, |g| g.published = g.published.max(seq));
    }

    /// Per shard (index 0 = shard 1), the highest stream sequence of this node's own changes stored this run.
    pub fn published_seqs(&self) -> Vec<u64> {
        let v = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|g| g.published).collect()
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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
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
    fn lag_and_stuck_time_per_shard() {
        let c = Counters::default();
        c.set_applied(1, 10);
        assert_eq!(c.shard_views()[0].lag_msgs, None, "not known before a look");
        c.set_stream(1, 15, 2_000);
        c.set_applied(2, 7);
        c.set_stream(2, 7, 500);
        let v = c.shard_views();
        assert_eq!((v[0].lag_msgs, v[0].lag_ms), (Some(5), 2_000));
        assert_eq!(
            (v[1].lag_msgs, v[1].lag_ms),
            (Some(0), 0),
            "caught up: no age"
        );
        assert_eq!(v[0].stuck_for_ms, 0);
        c.set_gap(1, Some(11));
        assert!(c.shard_views()[0].stuck_for_ms < 60_000);
        assert!(c.shards.lock().unwrap()[0].stuck_since_ms > 0);
        c.set_paused(1, Some("x".into()));
        c.set_gap(1, None);
        assert!(
            c.shards.lock().unwrap()[0].stuck_since_ms > 0,
            "still paused"
        );
        c.set_paused(1, None);
        assert_eq!(c.shards.lock().unwrap()[0].stuck_since_ms, 0);
        c.error("apply", "decode");
        c.error("apply", "decode");
        assert_eq!(c.errors()[&("apply", "decode")], 2);
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

    #[test]
    fn totals_count_apart_and_their_metrics_are_named_once() {
        let c = Counters::default();
        c.add(Total::AppliedRows, 3);
        c.add(Total::AppliedRows, 2);
        c.add(Total::Conflicts, 1);
        let t = c.totals();
        assert_eq!(t.get(Total::AppliedRows), 5);
        assert_eq!(t.get(Total::Conflicts), 1);
        assert_eq!(t.get(Total::PublishedRows), 0);
        let mut names = std::collections::BTreeSet::new();
        for &t in Total::ALL {
            if let Some(name) = t.metric() {
                assert!(name.starts_with("harmonylite_"), "{name}");
                assert!(!t.help().is_empty(), "{name} has no help text");
                assert!(names.insert(name), "{name} is named twice");
            }
        }
        assert_eq!(Total::PublishedRows.metric(), Some("harmonylite_published"));
        assert_eq!(Total::ApplyErrors.metric(), None);
    }
}
