//! Nodes holding a stream back: a node long silent whose handled position is a stream's lowest keeps every
//! change after it in the stream (up to the caps). Named in the logs, `/health` and `-status`.

use std::collections::BTreeMap;

use serde::Serialize;

/// A node holding back a stream's retention: its position is the stream's lowest, below the stream's end, and
/// it has not been heard of for longer than the configured `stale_node_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub node_id: u64,
    pub stream: String,
    /// The position it has handled (the stream keeps every change after it).
    pub position: u64,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// How long it has not been heard of, in ms.
    pub silent_ms: u64,
}

/// The nodes among `nodes` (id, handled position per stream, ms since it was last heard of) that hold back a
/// stream of `last` (stream → last sequence): each stream's lowest position, when below the stream's end,
/// held by a node silent for more than `after_ms`. A node without a position for a stream counts as 0.
pub fn holding_back(
    nodes: &[(u64, BTreeMap<String, u64>, u64)],
    last: &BTreeMap<String, u64>,
    after_ms: u64,
) -> Vec<Holding> {
    let mut out = Vec::new();
    for (stream, &end) in last {
        let at = |n: &(u64, BTreeMap<String, u64>, u64)| n.1.get(stream).copied().unwrap_or(0);
        let Some(lowest) = nodes.iter().map(at).min() else {
            continue;
        };
        if lowest >= end {
            continue;
        }
        for n in nodes.iter().filter(|n| at(n) == lowest && n.2 > after_ms) {
            out.push(Holding {
                node_id: n.0,
                stream: stream.clone(),
                position: lowest,
                last_sequence: end,
                silent_ms: n.2,
            });
        }
    }
    out
}

/// One line naming `h` for logs and `-status`.
pub fn holding_text(h: &Holding) -> String {
    let mins = h.silent_ms / 60_000;
    let silent = if h.silent_ms == u64::MAX {
        "has never been heard of".to_string()
    } else {
        format!("has not been heard of for {}h{:02}m", mins / 60, mins % 60)
    };
    format!(
        "node {} {silent} and holds {} at {} of {}: the stream keeps every change since for it (up to its \
         caps); if it is gone for good, run `harmonylite -config <file> -remove-node {}`",
        h.node_id, h.stream, h.position, h.last_sequence, h.node_id
    )
}

#[cfg(test)]
mod holding_tests {
    use super::*;

    fn node(id: u64, pos: u64, silent_ms: u64) -> (u64, BTreeMap<String, u64>, u64) {
        (id, BTreeMap::from([("s".to_string(), pos)]), silent_ms)
    }

    #[test]
    fn only_a_silent_node_at_the_lowest_position_below_the_end_holds_back() {
        let last = BTreeMap::from([("s".to_string(), 100)]);
        let hour = 3_600_000;
        let nodes = [node(1, 100, 10), node(2, 100, 5), node(3, 40, 2 * hour)];
        let h = holding_back(&nodes, &last, hour);
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].node_id, h[0].position, h[0].last_sequence),
            (3, 40, 100)
        );
        assert!(
            holding_text(&h[0]).contains("2h00m"),
            "{}",
            holding_text(&h[0])
        );
        assert!(holding_text(&h[0]).contains("-remove-node 3"));
        // Silent, but not for long enough.
        assert!(holding_back(&[node(1, 100, 10), node(3, 40, hour - 1)], &last, hour).is_empty());
        // Silent for long, but not the lowest: a live node behind it holds the stream.
        assert!(holding_back(&[node(1, 30, 10), node(3, 40, 2 * hour)], &last, hour).is_empty());
        // Every node at the end (an idle cluster): nothing is held, however old the entries.
        assert!(
            holding_back(
                &[node(1, 100, 2 * hour), node(3, 100, 2 * hour)],
                &last,
                hour
            )
            .is_empty()
        );
    }
}
