//! The `-status` report: which nodes are reachable, how far each has applied every shard, and how far behind
//! the stream it is; printed as an aligned table or, with `-json`, as one JSON document.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Activity, Stored, StreamState};

/// An entry stored longer ago than this (before the reference time) belongs to an unreachable node.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The cluster as `-status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Entries older than this are unreachable.
    pub stale_after_ms: u64,
    /// The command's clock when the streams had been read.
    pub now_ms: u64,
    /// Server-side time of the newest status entry, when there is one.
    pub newest_entry_ms: Option<u64>,
    /// What ages are measured from: the later of `newest_entry_ms` and `now_ms`.
    pub reference_ms: u64,
    pub streams: Vec<StreamState>,
    /// One per known node, by id (removed nodes left out).
    pub nodes: Vec<NodeRow>,
    /// Nodes removed for good (`-remove-node`), by id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<u64, crate::cluster::removals::Removal>,
    /// Nodes not heard of for `replication_log.stale_node_seconds` that hold back a stream's retention.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_nodes: Vec<crate::cluster::Holding>,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub node_id: u64,
    /// Its entry was stored within `stale_after_ms` of the reference time.
    pub reachable: bool,
    /// Age of its entry at the reference time (none: it never wrote one that could be read).
    pub age_ms: Option<u64>,
    pub version: Option<String>,
    /// The time of its last write by its own clock.
    pub written_at_ms: Option<u64>,
    pub shards: Vec<ShardRow>,
    pub counters: Option<Activity>,
    /// Change-log ids of this node up to here are acknowledged by JetStream (from its status entry; none when
    /// it does not publish or its entry does not say).
    pub published_upto: Option<u64>,
    /// How many nodes this node expects in its cluster (from its status entry).
    pub expected_nodes: Option<u64>,
}

/// One shard of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    pub shard: u32,
    pub stream: String,
    /// Handled position (from the status entry; from the retention bucket for a node without one).
    pub applied: u64,
    /// The stream's last sequence minus `applied`.
    pub lag: u64,
    pub paused: Option<String>,
    pub schema_paused: bool,
    pub gap: Option<u64>,
    /// Tables whose changes the shard holds, and how many rows.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, u64>,
}

/// Unix ms of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Report {
    /// The report from the status entries read, the ids of nodes whose entry was unreadable, the positions
    /// of the nodes the retention bucket knows, the streams, and the command's clock.
    pub fn assess(
        stored: Vec<Stored>,
        unreadable: BTreeSet<u64>,
        handled: BTreeMap<u64, BTreeMap<String, u64>>,
        streams: Vec<StreamState>,
        now_ms: u64,
    ) -> Report {
        let newest_entry_ms = stored.iter().map(|s| s.created_ms).max();
        let reference_ms = newest_entry_ms.unwrap_or(0).max(now_ms);
        let stale_after_ms = STALE_AFTER.as_millis() as u64;
        let by_id: BTreeMap<u64, Stored> =
            stored.into_iter().map(|s| (s.entry.node_id, s)).collect();
        let ids: BTreeSet<u64> = by_id
            .keys()
            .chain(unreadable.iter())
            .chain(handled.keys())
            .copied()
            .collect();
        let nodes = ids
            .into_iter()
            .map(|id| {
                let s = by_id.get(&id);
                let age_ms = s.map(|s| reference_ms.saturating_sub(s.created_ms));
                let shards = streams
                    .iter()
                    .map(|st| {
                        let mine =
                            s.and_then(|s| s.entry.shards.iter().find(|sh| sh.stream == st.stream));
                        let applied = match mine {
                            Some(sh) => sh.applied,
                            None => handled
                                .get(&id)
                                .and_then(|h| h.get(&st.stream))
                                .copied()
                                .unwrap_or(0),
                        };
                        ShardRow {
                            shard: st.shard,
                            stream: st.stream.clone(),
                            applied,
                            lag: st.last_sequence.saturating_sub(applied),
                            paused: mine.and_then(|sh| sh.paused.clone()),
                            schema_paused: mine.is_some_and(|sh| sh.schema_paused),
                            gap: mine.and_then(|sh| sh.gap),
                            held: mine.map(|sh| sh.held.clone()).unwrap_or_default(),
                        }
                    })
                    .collect();
                NodeRow {
                    node_id: id,
                    reachable: age_ms.is_some_and(|a| a <= stale_after_ms),
                    age_ms,
                    version: s.map(|s| s.entry.version.clone()),
                    written_at_ms: s.map(|s| s.entry.written_at_ms),
                    shards,
                    counters: s.map(|s| s.entry.counters.clone()),
                    published_upto: s.and_then(|s| s.entry.published_upto),
                    expected_nodes: s.and_then(|s| s.entry.expected_nodes),
                }
            })
            .collect();
        Report {
            stale_after_ms,
            now_ms,
            newest_entry_ms,
            reference_ms,
            streams,
            nodes,
            removed: BTreeMap::new(),
            stale_nodes: Vec::new(),
        }
    }

    /// Names the nodes that hold back a stream, silent for more than `after_ms` (by their status entry's
    /// age; a node that never wrote one counts as silent).
    pub fn with_stale_nodes(mut self, after_ms: u64) -> Report {
        let nodes: Vec<(u64, BTreeMap<String, u64>, u64)> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.node_id,
                    n.shards
                        .iter()
                        .map(|s| (s.stream.clone(), s.applied))
                        .collect(),
                    n.age_ms.unwrap_or(u64::MAX),
                )
            })
            .collect();
        let last = self
            .streams
            .iter()
            .map(|s| (s.stream.clone(), s.last_sequence))
            .collect();
        self.stale_nodes = crate::cluster::holding::holding_back(&nodes, &last, after_ms);
        self
    }

    /// Leave the removed nodes out (they are listed in `removed`).
    pub fn without_removed(
        mut self,
        removed: BTreeMap<u64, crate::cluster::removals::Removal>,
    ) -> Report {
        self.nodes.retain(|n| !removed.contains_key(&n.node_id));
        self.removed = removed;
        self
    }

    /// The report as one JSON document.
    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report serialises");
        s.push('\n');
        s
    }

    /// The report as text: a summary, the streams, and an aligned table with one row per node.
    pub fn text(&self) -> String {
        let reachable = self.nodes.iter().filter(|n| n.reachable).count();
        let mut out = format!(
            "Cluster status: {} node{}, {reachable} reachable (a node is unreachable when its status is more \
             than {} s old)\n",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            self.stale_after_ms / 1000
        );
        let behind = self.newest_entry_ms.map(|n| self.now_ms.saturating_sub(n));
        match behind {
            None => out.push_str("No node has written its status yet.\n"),
            Some(b) if b > self.stale_after_ms => out.push_str(&format!(
                "Note: the newest status entry is {} old by this machine's clock: no node is writing its \
                 status, or this machine's clock is ahead of the servers'.\n",
                age(b)
            )),
            Some(_) => {}
        }
        let streams: Vec<String> = self
            .streams
            .iter()
            .map(|s| format!("{} (last {})", s.stream, s.last_sequence))
            .collect();
        out.push_str(&format!(
            "Shards: {}{}\n\n",
            streams.join(", "),
            if self.streams.len() > 1 {
                "; APPLIED and LAG list them in this order"
            } else {
                ""
            }
        ));
        let mut rows = vec![
            [
                "NODE",
                "REACHABLE",
                "SEEN",
                "VERSION",
                "APPLIED",
                "LAG",
                "PAUSED",
            ]
            .map(String::from),
        ];
        for n in &self.nodes {
            let list = |f: &dyn Fn(&ShardRow) -> u64| {
                n.shards
                    .iter()
                    .map(|s| f(s).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            rows.push([
                n.node_id.to_string(),
                if n.reachable { "yes" } else { "NO" }.to_string(),
                n.age_ms
                    .map_or("never".to_string(), |a| format!("{} ago", age(a))),
                n.version.clone().unwrap_or_else(|| "-".to_string()),
                list(&|s| s.applied),
                list(&|s| s.lag),
                paused(n),
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c == r.len() - 1 {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for h in &self.stale_nodes {
            out.push_str(&format!(
                "\nHolding a stream: {}\n",
                crate::cluster::holding::holding_text(h)
            ));
        }
        out
    }
}

/// The PAUSED cell: each paused or stopped shard with why, `-` when none.
fn paused(n: &NodeRow) -> String {
    let cells: Vec<String> = n
        .shards
        .iter()
        .filter_map(|s| {
            if let Some(g) = s.gap {
                Some(format!("shard {}: stopped at a gap, needs {g}", s.shard))
            } else if s.schema_paused {
                Some(format!(
                    "shard {}: waits for the local schema ({})",
                    s.shard,
                    s.paused.as_deref().unwrap_or("")
                ))
            } else {
                s.paused.as_ref().map(|r| format!("shard {}: {r}", s.shard))
            }
        })
        .collect();
    if cells.is_empty() {
        "-".to_string()
    } else {
        cells.join("; ")
    }
}

/// An age for people, in one word: `0.4s`, `12.0s`, `3m12s`, `5h2m`, `3d4h`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, ShardEntry};
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn stored(id: u64, created_ms: u64, applied: &[u64]) -> Stored {
        Stored {
            entry: Entry {
                node_id: id,
                version: "9.9.9".into(),
                written_at_ms: created_ms,
                shards: applied
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ShardEntry {
                        shard: i as u32 + 1,
                        stream: format!("s-{}", i + 1),
                        applied: *a,
                        ..Default::default()
                    })
                    .collect(),
                counters: Activity::default(),
                published_upto: Some(id * 10),
                expected_nodes: Some(3),
                instance: None,
            },
            created_ms,
        }
    }

    use crate::ops::status::test_streams as streams;

    #[test]
    fn stale_entries_and_nodes_known_only_from_retention_are_unreachable() {
        let handled = BTreeMap::from([
            (1, BTreeMap::from([("s-1".to_string(), 9)])),
            (4, BTreeMap::from([("s-1".to_string(), 7)])),
        ]);
        let r = Report::assess(
            vec![
                stored(1, NOW - 300, &[10, 20]),
                stored(2, NOW - 900, &[10, 18]),
                stored(3, NOW - 6_000, &[4, 20]),
            ],
            BTreeSet::new(),
            handled,
            streams(&[10, 20]),
            NOW,
        );
        let ids: Vec<(u64, bool)> = r.nodes.iter().map(|n| (n.node_id, n.reachable)).collect();
        assert_eq!(ids, [(1, true), (2, true), (3, false), (4, false)]);
        let lags: Vec<Vec<u64>> = r
            .nodes
            .iter()
            .map(|n| n.shards.iter().map(|s| s.lag).collect())
            .collect();
        assert_eq!(lags, [vec![0, 0], vec![0, 2], vec![6, 0], vec![3, 20]]);
        assert_eq!(r.nodes[3].age_ms, None);
        let text = r.text();
        assert!(text.contains("4 nodes, 2 reachable"), "{text}");
        assert!(!text.contains("Note:"), "{text}");
    }

    #[test]
    fn ages_are_measured_from_the_later_of_the_newest_entry_and_now() {
        // Every node stopped a minute ago: none is reachable, though the newest entry is itself.
        let r = Report::assess(
            vec![stored(1, NOW - 60_000, &[5]), stored(2, NOW - 61_000, &[5])],
            BTreeSet::new(),
            BTreeMap::new(),
            streams(&[5]),
            NOW,
        );
        assert!(r.nodes.iter().all(|n| !n.reachable));
        assert!(
            r.text()
                .contains("Note: the newest status entry is 1m0s old")
        );
        // The servers' clock ahead of the command's: ages come from the newest entry.
        let r = Report::assess(
            vec![stored(1, NOW + 30_000, &[5]), stored(2, NOW + 29_000, &[5])],
            BTreeSet::from([3]),
            BTreeMap::new(),
            streams(&[5]),
            NOW,
        );
        let seen: Vec<(bool, Option<u64>)> =
            r.nodes.iter().map(|n| (n.reachable, n.age_ms)).collect();
        assert_eq!(seen, [(true, Some(0)), (true, Some(1000)), (false, None)]);
    }

    #[test]
    fn the_table_is_aligned_and_names_paused_shards() {
        let mut slow = stored(12, NOW - 100, &[3, 20]);
        slow.entry.shards[0].paused = Some("no such column: rating".into());
        slow.entry.shards[0].schema_paused = true;
        slow.entry.shards[1].gap = Some(21);
        let r = Report::assess(
            vec![stored(1, NOW - 200, &[10, 20]), slow],
            BTreeSet::new(),
            BTreeMap::new(),
            streams(&[10, 20]),
            NOW,
        );
        let text = r.text();
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE"))
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        let col = |l: &str| {
            l.find("APPLIED")
                .or_else(|| l.find("10/20").or(l.find("3/20")))
        };
        let at = col(table[0]);
        assert!(table.iter().all(|l| col(l) == at), "{text}");
        assert!(table[2].starts_with("12    yes"), "{text}");
        assert!(
            table[2].contains("shard 1: waits for the local schema (no such column: rating)"),
            "{text}"
        );
        assert!(
            table[2].contains("shard 2: stopped at a gap, needs 21"),
            "{text}"
        );
        assert!(table[1].ends_with('-'), "{text}");
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["nodes"][1]["shards"][0]["lag"], 7);
        assert_eq!(json["nodes"][1]["shards"][1]["gap"], 21);
    }
}
