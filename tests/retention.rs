//! Retention and gaps on real clusters: a node back from an absence under load catches up from the stream (the
//! stream keeps every change until all nodes have handled it), the streams are trimmed once every node has
//! handled their changes, and a node whose next change is gone stops at the hole instead of applying past it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

/// Messages in stream `stream` as node `node`'s nats-server sees it.
fn stream_messages(node: &Node, stream: &str) -> Option<u64> {
    Some(node.stream_info(stream)?.state.messages)
}

/// The reproduction with the defaults: writers on every node (single-row transactions, about 200 per second
/// each, ids unique per writer) while nodes are killed with -9 and restarted 30 times: at the end every
/// committed row is on every node, no node met a gap, and the streams have been trimmed.
#[test]
fn kill_cycles_under_load_lose_nothing_and_streams_are_trimmed() {
    let schema =
        format!("{BOOKS}\nCREATE TABLE events (id INTEGER PRIMARY KEY, node INTEGER, n INTEGER);");
    let mut c = Cluster::start(Options {
        schema,
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3u64)
        .map(|i| {
            let db = c.node(i as usize).db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let conn = open(&db);
                let mut committed = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = i * 10_000_000 + n;
                    match conn.execute(
                        "INSERT INTO events (id, node, n) VALUES (?1, ?2, ?3)",
                        rusqlite::params![id as i64, i as i64, n as i64],
                    ) {
                        Ok(_) => committed.push(id),
                        Err(e) => panic!("application write on node {i} failed: {e}"),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                committed
            })
        })
        .collect();
    let cycles = 30;
    for k in 0..cycles {
        let i = 1 + (k % 3);
        c.node_mut(i).kill9();
        // Down while the others write, then back.
        let others = if i == 1 { 2 } else { 1 };
        let before = c.node(others).sql("SELECT count(*) FROM events;");
        c.eventually(T, "the others keep writing", || {
            c.node(others).sql("SELECT count(*) FROM events;") != before
        });
        c.node_mut(i).start_and_wait(Duration::from_secs(90));
    }
    stop.store(true, Ordering::Relaxed);
    let committed: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let (_, rows) = c.converged("events", Duration::from_secs(120));
    assert_eq!(rows as usize, committed.len(), "every committed row, once");
    for node in &c.nodes {
        let ids: std::collections::BTreeSet<u64> = node
            .sql("SELECT id FROM events;")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let missing = committed.iter().filter(|id| !ids.contains(id)).count();
        assert_eq!(
            missing, 0,
            "node {} misses {missing} committed rows",
            node.id
        );
        assert!(
            node.log_lines_with(&["stopped at a gap"]).is_empty(),
            "node {} met a gap",
            node.id
        );
    }
    c.assert_all_alive();
    // Every node has handled everything: the stream is trimmed (it held one message per local transaction).
    c.eventually(T, "the stream is trimmed", || {
        stream_messages(c.node(1), "harmonylite-changes-c-1")
            .is_some_and(|m| (m as usize) < committed.len() / 10)
    });
}

/// A configuration of the original that caps the stream (`max_entries = 64`): a node away for 200 transactions
/// finds its next change gone. It stops at the gap, says so, applies nothing newer, stays up, and keeps the
/// write it made just before it went down (published when it comes back).
#[test]
fn a_node_past_the_cap_stops_at_the_gap_and_reports_it() {
    let c = Cluster::new(Options {
        extra_toml: "[replication_log]\nmax_entries = 64\n[snapshot]\nenabled = false\n".into(),
        ..Default::default()
    });
    let mut c = c;
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    assert!(
        !c.node(1)
            .log_lines_with(&["max_entries caps each shard's stream at 64"])
            .is_empty(),
        "the node explains the cap at start"
    );
    c.node(3)
        .sql("INSERT INTO Books (id, title, author) VALUES (300, 'before going down', 'N3');");
    c.eventually(T, "node 1 has node 3's row", || {
        c.node(1)
            .sql("SELECT count(*) FROM Books WHERE id = 300;")
            .trim()
            == "1"
    });
    assert_eq!(c.node_mut(3).stop(), Some(0));
    for k in 0..200 {
        c.node(1 + k % 2).sql(&format!(
            "INSERT INTO Books (id, title, author) VALUES ({}, 'while 3 is down', 'x');",
            1000 + k
        ));
    }
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    let line = c.eventually(T, "node 3 reports the gap", || {
        c.node(3).log_lines_with(&["stopped at a gap"]).pop()
    });
    assert!(
        line.contains("needed=") && line.contains("first_available="),
        "{line}"
    );
    during(Duration::from_secs(2), || {
        c.assert_all_alive();
        assert_eq!(
            c.node(3)
                .sql("SELECT count(*) FROM Books WHERE id >= 1000;")
                .trim(),
            "0",
            "nothing newer is applied over the hole"
        );
    });
    assert_eq!(
        c.node(3)
            .sql("SELECT count(*) FROM Books WHERE id = 300;")
            .trim(),
        "1"
    );
}
