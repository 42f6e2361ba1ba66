//! Retention that follows the nodes: a change stays in its stream until every node of the cluster has handled
//! it, bounded by the streams' caps (`max_age_seconds`, `max_bytes`, and `max_entries` when set).
//!
//! Each node writes the stream positions it has handled (applied, or skipped as its own echo) to the KV bucket
//! [`BUCKET`] under `node-<id>`, about once a second. Every node runs the trim: once as many nodes as the
//! cluster is expected to have (the `-cluster-peers`, or those that registered, with external NATS) have
//! registered, each stream is purged below the lowest position any of them reported (and below the latest
//! snapshot's position when one was recorded under [`SNAPSHOT_KEY`], so a snapshot can always be caught up
//! from). Purging an already purged range is harmless, so nodes need no coordination.
//!
//! The entry also certifies, after a crash, what the node had handled: a node that restarts from a position
//! lower than its entry (positions of skipped messages are not written to the database) may step over a purged
//! range its own entry covers; every change in it had no effect on this node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;

use crate::cluster::positions::{
    Positions, SNAPSHOT_KEY, bucket, certifies, node_key, read_all_dated, read_entry, write,
};
use crate::config::Config;
use crate::counters::Counters;
use crate::retry::Backoff;

/// How often the positions are written and the streams trimmed.
const PERIOD: Duration = Duration::from_secs(1);
const TRIM_EVERY: u32 = 5;

/// The nodes of `entries` that hold back a stream (see [`crate::cluster::holding::holding_back`]): silent since
/// their status entry was last written (`heard`; this node is not silent; a node without one, since its
/// positions entry was), the streams' ends from `counters` (streams whose end is not known yet left out).
fn stale_nodes(
    entries: &BTreeMap<String, (Positions, u64)>,
    heard: &BTreeMap<u64, u64>,
    me: u64,
    streams: &[String],
    counters: &Counters,
    after: Duration,
) -> Vec<crate::cluster::Holding> {
    let now = crate::ops::status::report::unix_ms(std::time::SystemTime::now());
    let nodes: Vec<(u64, BTreeMap<String, u64>, u64)> = entries
        .iter()
        .filter(|(k, _)| k.starts_with("node-"))
        .map(|(_, (p, written))| {
            let silent = if p.node_id == me {
                0
            } else {
                now.saturating_sub(heard.get(&p.node_id).copied().unwrap_or(*written))
            };
            (p.node_id, p.positions.clone(), silent)
        })
        .collect();
    // A node heard of that never wrote its positions holds every stream from its start.
    let mut nodes = nodes;
    for (&id, &at) in heard {
        if id != me && !nodes.iter().any(|n| n.0 == id) {
            nodes.push((id, BTreeMap::new(), now.saturating_sub(at)));
        }
    }
    let last: BTreeMap<String, u64> = counters
        .shard_views()
        .iter()
        .filter(|v| v.lag_msgs.is_some())
        .filter_map(|v| {
            streams
                .get(v.shard as usize - 1)
                .map(|s| (s.clone(), v.last_seq))
        })
        .collect();
    crate::cluster::holding::holding_back(&nodes, &last, after.as_millis() as u64)
}

/// What the trim keeps: for each stream, the lowest position of the registered nodes, the snapshot and the
/// change feed's writer, once at least `expected_nodes` nodes have registered. Below that, nothing is purged.
pub fn trim_points(
    entries: &BTreeMap<String, Positions>,
    streams: &[String],
    expected_nodes: usize,
) -> BTreeMap<String, u64> {
    let nodes: Vec<&Positions> = entries
        .iter()
        .filter(|(k, _)| k.starts_with("node-"))
        .map(|(_, p)| p)
        .collect();
    if nodes.len() < expected_nodes.max(1) {
        return BTreeMap::new();
    }
    let snapshot = entries.get(SNAPSHOT_KEY);
    let feed = entries.get(crate::feed::POSITIONS_KEY);
    streams
        .iter()
        .filter_map(|s| {
            let lowest = nodes
                .iter()
                .chain(snapshot.iter())
                .chain(feed.iter())
                .map(|p| p.positions.get(s).copied().unwrap_or(0))
                .min()?;
            (lowest > 0).then(|| (s.clone(), lowest))
        })
        .collect()
}

/// Per stream, the lowest position the registered nodes other than `mine` reported (0 when one has none).
fn others_lowest(
    entries: &BTreeMap<String, Positions>,
    mine: &str,
    streams: &[String],
) -> Vec<u64> {
    streams
        .iter()
        .map(|s| {
            entries
                .iter()
                .filter(|(k, _)| k.starts_with("node-") && k.as_str() != mine)
                .map(|(_, p)| p.positions.get(s).copied().unwrap_or(0))
                .min()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// Write this node's positions and trim the streams, until cancelled. The positions written are the applied
/// ones, or those this node's entry certified at start when higher (`counters`' certified positions). When
/// the entry could not be read at start (`certified_unknown`), it is read before anything is written, and the
/// positions it certifies are set in `counters` (a shard stopped at a gap steps over them at its next look).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    js: jetstream::Context,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    incarnation: u64,
    replicas: usize,
    expected_nodes: usize,
    certified_unknown: bool,
    cancel: CancellationToken,
) {
    let mut r = Retention::new(
        js,
        cfg,
        counters,
        incarnation,
        replicas,
        expected_nodes,
        certified_unknown,
    );
    let mut store: Option<kv::Store> = None;
    let mut backoff = Backoff::new(PERIOD, Duration::from_secs(30));
    loop {
        match r.step(&mut store).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                store = None;
                tracing::debug!(error = %e, "positions not written or streams not trimmed; retrying");
                if !backoff.sleep(&cancel).await {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// What [`run`] works with, and what it remembers from one step to the next.
struct Retention {
    js: jetstream::Context,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    incarnation: u64,
    replicas: usize,
    expected_nodes: usize,
    certified_unknown: bool,
    streams: Vec<String>,
    key: String,
    written: Option<Positions>,
    purged: BTreeMap<String, u64>,
    tick: u32,
    stale_after: Duration,
    /// Stale nodes named at WARN, and when (each once per `stale_after`).
    warned: BTreeMap<u64, tokio::time::Instant>,
}

impl Retention {
    /// The state of a run that has written and trimmed nothing yet.
    fn new(
        js: jetstream::Context,
        cfg: Arc<Config>,
        counters: Arc<Counters>,
        incarnation: u64,
        replicas: usize,
        expected_nodes: usize,
        certified_unknown: bool,
    ) -> Retention {
        let streams: Vec<String> = (1..=cfg.replication_log.shards.get())
            .map(|s| cfg.stream_name(s))
            .collect();
        let key = node_key(cfg.node_id);
        let stale_after = Duration::from_secs(cfg.replication_log.stale_node_seconds.get());
        Retention {
            js,
            cfg,
            counters,
            incarnation,
            replicas,
            expected_nodes,
            certified_unknown,
            streams,
            key,
            written: None,
            purged: BTreeMap::new(),
            tick: 0,
            stale_after,
            warned: BTreeMap::new(),
        }
    }

    /// One look: the bucket opened (into `store`) when it is not, the entry read when it was not at start, this
    /// node's positions written when they changed, and every [`TRIM_EVERY`] looks the trim.
    async fn step(&mut self, store: &mut Option<kv::Store>) -> anyhow::Result<()> {
        if store.is_none() {
            *store = Some(bucket(&self.js, self.replicas).await?);
        }
        let kv = store.as_ref().expect("set above");
        if self.certified_unknown {
            self.read_certified().await?;
        }
        let (mine, floors) = self.handled_now();
        if self.written.as_ref() != Some(&mine) && !mine.positions.is_empty() {
            // The positions were read before: every change they cover as applied is on disk before they go out.
            tokio::task::block_in_place(|| crate::db::sync_committed(&self.cfg.db_path))?;
            write(kv, &self.key, &mine).await?;
            self.written = Some(mine);
        }
        self.tick += 1;
        if self.tick.is_multiple_of(TRIM_EVERY) {
            self.trim(kv, &floors).await?;
        }
        Ok(())
    }

    /// Read this node's entry, which could not be read at start, and set the positions it certifies.
    async fn read_certified(&mut self) -> anyhow::Result<()> {
        let found = tokio::time::timeout(
            Duration::from_secs(5),
            read_entry(&self.js, self.cfg.node_id),
        )
        .await
        .map_err(|_| anyhow::anyhow!("positions entry: no answer within 5 s"))??;
        let found = certifies(found, self.incarnation);
        for (i, stream) in self.streams.iter().enumerate() {
            if let Some(&p) = found.get(stream) {
                self.counters.set_certified(i as u32 + 1, p);
            }
        }
        tracing::info!(certified = ?found, "positions entry read");
        self.certified_unknown = false;
        Ok(())
    }

    /// This node's entry as of now (applied positions, raised to the certified ones and held at the floors),
    /// and the hold floors.
    fn handled_now(&self) -> (Positions, Vec<u64>) {
        let counters = &self.counters;
        let certified = counters.certified();
        let floors = counters.hold_floors();
        let applied: Vec<u64> = counters
            .applied()
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                a.max(certified.get(i).copied().unwrap_or(0))
                    .min(floors.get(i).copied().unwrap_or(u64::MAX))
            })
            .collect();
        // Read after the applied positions: a change of ours they cover (and the trim may remove) was
        // acknowledged by then in all but the rarest timings.
        let published_upto = counters
            .published_upto
            .load(std::sync::atomic::Ordering::Acquire);
        let mine = Positions {
            node_id: self.cfg.node_id,
            incarnation: self.incarnation,
            positions: self
                .streams
                .iter()
                .zip(&applied)
                .filter(|(_, p)| **p > 0)
                .map(|(s, p)| (s.clone(), *p))
                .collect(),
            published_upto,
        };
        (mine, floors)
    }

    /// The trim: every node's entry read (removed nodes left out), stale nodes named, holds released, and each
    /// stream purged below its trim point.
    async fn trim(&mut self, kv: &kv::Store, floors: &[u64]) -> anyhow::Result<()> {
        let removed = crate::cluster::removals::removed(&self.js).await?;
        let mut dated = read_all_dated(kv).await?;
        dated.retain(|k, (p, _)| !k.starts_with("node-") || !removed.contains_key(&p.node_id));
        // The change feed's entry holds the streams while its writer is heard of: one not written for
        // `stale_node_seconds` (the feed turned off on every node, or every node that writes it away) no longer
        // does, so a feed abandoned does not keep the streams growing to their caps.
        let now = crate::ops::status::report::unix_ms(std::time::SystemTime::now());
        dated.retain(|k, (_, written)| {
            k != crate::feed::POSITIONS_KEY
                || now.saturating_sub(*written) < self.stale_after.as_millis() as u64
        });
        // Naming stale nodes never holds up the trim: when the status bucket does not answer (a leader
        // election), it waits for the next look.
        if let Some(mut heard) = status_heard(&self.js).await {
            heard.retain(|id, _| !removed.contains_key(id));
            self.name_stale(&dated, &heard);
        }
        let entries: BTreeMap<String, Positions> =
            dated.into_iter().map(|(k, (p, _))| (k, p)).collect();
        if floors.iter().any(|&f| f != u64::MAX) {
            self.counters
                .release_holds(&others_lowest(&entries, &self.key, &self.streams));
        }
        let expected =
            crate::cluster::removals::expected_without_removed(self.expected_nodes, &removed);
        self.purge(&entries, expected).await
    }

    /// Name at WARN the nodes that hold back a stream (each once per `stale_after`), and set them in the
    /// counters.
    fn name_stale(
        &mut self,
        dated: &BTreeMap<String, (Positions, u64)>,
        heard: &BTreeMap<u64, u64>,
    ) {
        let stale = stale_nodes(
            dated,
            heard,
            self.cfg.node_id,
            &self.streams,
            &self.counters,
            self.stale_after,
        );
        for h in &stale {
            if self
                .warned
                .get(&h.node_id)
                .is_none_or(|at: &tokio::time::Instant| at.elapsed() >= self.stale_after)
            {
                tracing::warn!(
                    node_id = h.node_id,
                    "{}",
                    crate::cluster::holding::holding_text(h)
                );
                self.warned.insert(h.node_id, tokio::time::Instant::now());
            }
        }
        self.warned
            .retain(|id, _| stale.iter().any(|h| h.node_id == *id));
        self.counters.set_stale_nodes(stale);
    }

    /// Purge each stream below its trim point, unless it was purged that far already.
    async fn purge(
        &mut self,
        entries: &BTreeMap<String, Positions>,
        expected: usize,
    ) -> anyhow::Result<()> {
        for (stream, below) in trim_points(entries, &self.streams, expected) {
            if self.purged.get(&stream).is_some_and(|&p| p >= below) {
                continue;
            }
            let s = self.js.get_stream(&stream).await?;
            // Everything up to and including `below` has been handled by every node.
            let r = s.purge().sequence(below + 1).await?;
            tracing::debug!(stream, below, removed = r.purged, "stream trimmed");
            self.purged.insert(stream, below);
        }
        Ok(())
    }
}

/// When each node was last heard of ([`crate::ops::status::last_heard`]); `None` when the status bucket does
/// not answer within 2 s.
async fn status_heard(js: &jetstream::Context) -> Option<BTreeMap<u64, u64>> {
    match tokio::time::timeout(Duration::from_secs(2), crate::ops::status::last_heard(js)).await {
        Ok(Ok(h)) => Some(h),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "status entries not read; stale nodes not looked for");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cluster::positions::sample as p;

    #[test]
    fn trim_keeps_what_the_slowest_node_and_the_snapshot_need() {
        let streams = vec!["a".to_string(), "b".to_string()];
        let mut e = BTreeMap::new();
        e.insert("node-1".to_string(), p(1, &[("a", 100), ("b", 50)]));
        e.insert("node-2".to_string(), p(2, &[("a", 80), ("b", 70)]));
        assert!(
            trim_points(&e, &streams, 3).is_empty(),
            "a node of the cluster has not registered: nothing is purged"
        );
        e.insert("node-3".to_string(), p(3, &[("a", 90)]));
        assert_eq!(
            trim_points(&e, &streams, 3),
            BTreeMap::from([("a".to_string(), 80)]),
            "stream b: node 3 has handled nothing there yet"
        );
        e.insert(SNAPSHOT_KEY.to_string(), p(0, &[("a", 60), ("b", 40)]));
        assert_eq!(
            trim_points(&e, &streams, 3),
            BTreeMap::from([("a".to_string(), 60)])
        );
    }
}
