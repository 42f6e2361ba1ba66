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

/// What the trim keeps: for each stream, the lowest position of the registered nodes and the snapshot, once
/// at least `expected_nodes` nodes have registered. Below that, nothing is purged.
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
    streams
        .iter()
        .filter_map(|s| {
            let lowest = nodes
                .iter()
                .chain(snapshot.iter())
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
    mut certified_unknown: bool,
    cancel: CancellationToken,
) {
    let streams: Vec<String> = (1..=cfg.replication_log.shards.get())
        .map(|s| cfg.stream_name(s))
        .collect();
    let key = node_key(cfg.node_id);
    let mut store: Option<kv::Store> = None;
    let mut written: Option<Positions> = None;
    let mut purged: BTreeMap<String, u64> = BTreeMap::new();
    let mut backoff = Backoff::new(PERIOD, Duration::from_secs(30));
    let mut tick = 0u32;
    let stale_after = Duration::from_secs(cfg.replication_log.stale_node_seconds.get());
    // Stale nodes named at WARN, and when (each once per `stale_after`).
    let mut warned: BTreeMap<u64, tokio::time::Instant> = BTreeMap::new();
    loop {
        let step = async {
            if store.is_none() {
                store = Some(bucket(&js, replicas).await?);
            }
            let kv = store.as_ref().expect("set above");
            if certified_unknown {
                let found =
                    tokio::time::timeout(Duration::from_secs(5), read_entry(&js, cfg.node_id))
                        .await
                        .map_err(|_| "positions entry: no answer within 5 s".to_string())??;
                let found = certifies(found, incarnation);
                for (i, stream) in streams.iter().enumerate() {
                    if let Some(&p) = found.get(stream) {
                        counters.set_certified(i as u32 + 1, p);
                    }
                }
                tracing::info!(certified = ?found, "positions entry read");
                certified_unknown = false;
            }
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
                node_id: cfg.node_id,
                incarnation,
                positions: streams
                    .iter()
                    .zip(&applied)
                    .filter(|(_, p)| **p > 0)
                    .map(|(s, p)| (s.clone(), *p))
                    .collect(),
                published_upto,
            };
            if written.as_ref() != Some(&mine) && !mine.positions.is_empty() {
                write(kv, &key, &mine).await?;
                written = Some(mine);
            }
            tick += 1;
            if tick.is_multiple_of(TRIM_EVERY) {
                let removed = crate::cluster::removals::removed(&js).await?;
                let mut dated = read_all_dated(kv).await?;
                dated.retain(|k, (p, _)| {
                    !k.starts_with("node-") || !removed.contains_key(&p.node_id)
                });
                // Naming stale nodes never holds up the trim: when the status bucket does not answer (a
                // leader election), it waits for the next look.
                let heard = match tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::ops::status::last_heard(&js),
                )
                .await
                {
                    Ok(Ok(h)) => Some(h),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "status entries not read; stale nodes not looked for");
                        None
                    }
                    Err(_) => None,
                };
                if let Some(mut heard) = heard {
                    heard.retain(|id, _| !removed.contains_key(id));
                    let stale = stale_nodes(
                        &dated,
                        &heard,
                        cfg.node_id,
                        &streams,
                        &counters,
                        stale_after,
                    );
                    for h in &stale {
                        if warned
                            .get(&h.node_id)
                            .is_none_or(|at: &tokio::time::Instant| at.elapsed() >= stale_after)
                        {
                            tracing::warn!(
                                node_id = h.node_id,
                                "{}",
                                crate::cluster::holding::holding_text(h)
                            );
                            warned.insert(h.node_id, tokio::time::Instant::now());
                        }
                    }
                    warned.retain(|id, _| stale.iter().any(|h| h.node_id == *id));
                    counters.set_stale_nodes(stale);
                }
                let entries: BTreeMap<String, Positions> =
                    dated.into_iter().map(|(k, (p, _))| (k, p)).collect();
                if floors.iter().any(|&f| f != u64::MAX) {
                    counters.release_holds(&others_lowest(&entries, &key, &streams));
                }
                let expected =
                    crate::cluster::removals::expected_without_removed(expected_nodes, &removed);
                for (stream, below) in trim_points(&entries, &streams, expected) {
                    if purged.get(&stream).is_some_and(|&p| p >= below) {
                        continue;
                    }
                    let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
                    // Everything up to and including `below` has been handled by every node.
                    let r = s
                        .purge()
                        .sequence(below + 1)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::debug!(stream, below, removed = r.purged, "stream trimmed");
                    purged.insert(stream, below);
                }
            }
            Ok::<(), String>(())
        };
        match step.await {
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
