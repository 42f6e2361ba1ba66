//! `-status` beside real running nodes: once writes (made with the real `sqlite3` CLI) have reached every node,
//! every node is listed reachable with zero lag on every shard, in the table and in the JSON document alike; a
//! node killed with -9 turns unreachable while the others stay reachable; a cluster that cannot be reached
//! makes the command fail with a clear error.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(45);

use support::output_text as text;

/// Runs `-status` (with `extra` flags) on `node`'s config; panics unless it exits 0.
fn status(node: &Node, extra: &[&str]) -> String {
    let o = output_retrying(node.command().arg("-status").args(extra));
    assert_eq!(o.status.code(), Some(0), "-status failed:\n{}", text(&o));
    String::from_utf8(o.stdout).expect("UTF-8 output")
}

/// `-status -json` on `node`'s config, parsed.
fn status_json(node: &Node) -> Value {
    let out = status(node, &["-json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("-status -json is not JSON ({e}):\n{out}"))
}

/// (node id, reachable, applied per shard, lag per shard) of every node in a JSON report.
type Row = (u64, bool, Vec<u64>, Vec<u64>);

fn json_rows(v: &Value) -> Vec<Row> {
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let per_shard = |k: &str| -> Vec<u64> {
                n["shards"]
                    .as_array()
                    .expect("shards")
                    .iter()
                    .map(|s| s[k].as_u64().expect(k))
                    .collect()
            };
            (
                n["node_id"].as_u64().expect("node_id"),
                n["reachable"].as_bool().expect("reachable"),
                per_shard("applied"),
                per_shard("lag"),
            )
        })
        .collect()
}

/// The same from the text table: its rows after the `NODE` header.
fn text_rows(out: &str) -> Vec<Row> {
    let list = |cell: &str| -> Vec<u64> {
        cell.split('/')
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{cell:?} in\n{out}")))
            .collect()
    };
    out.lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            // NODE REACHABLE SEEN(two words, or "never") VERSION APPLIED LAG PAUSED...
            let seen_words = if cells[2] == "never" { 1 } else { 2 };
            let at = 3 + seen_words;
            (
                cells[0]
                    .parse()
                    .unwrap_or_else(|_| panic!("{l:?} in\n{out}")),
                match cells[1] {
                    "yes" => true,
                    "NO" => false,
                    other => panic!("reachable {other:?} in\n{out}"),
                },
                list(cells[at]),
                list(cells[at + 1]),
            )
        })
        .collect()
}

/// Every node listed, reachable, with zero lag on every one of `shards` shards, and something applied.
fn all_caught_up(rows: &[Row], nodes: u64, shards: usize) -> bool {
    rows.len() == nodes as usize
        && rows
            .iter()
            .enumerate()
            .all(|(i, (id, reachable, applied, lag))| {
                *id == i as u64 + 1
                    && *reachable
                    && applied.len() == shards
                    && lag.iter().all(|l| *l == 0)
            })
        && rows.iter().all(|r| r.2.iter().sum::<u64>() > 0)
}

/// Two shards, writes on two nodes: once the rows are everywhere, `-status` on every node lists the three nodes
/// reachable with zero lag on both shards (a node's own changes count as handled), and `-status -json` says the
/// same, with the streams' last sequences.
#[test]
fn settled_cluster_is_reachable_with_zero_lag_in_text_and_json() {
    let c = Cluster::start(Options {
        shards: 2,
        ..Default::default()
    });
    for i in 0..4 {
        c.node(2).sql(&format!(
            "INSERT INTO Authors (name, birth_year) VALUES ('n2 author {i}', {});",
            1900 + i
        ));
    }
    c.converged_all(T);
    // Node 1 writes last, on both shards (ten keys): its applied positions reach the streams' ends only through
    // its own changes coming back, which it skips.
    for i in 0..10 {
        c.node(1).sql(&format!(
            "INSERT INTO Books (title, author) VALUES ('n1 book {i}', 'A{i}');"
        ));
    }
    c.converged_all(T);

    let json = c.eventually(T, "-status -json: all reachable, zero lag", || {
        let v = status_json(c.node(1));
        all_caught_up(&json_rows(&v), 3, 2).then_some(v)
    });
    let streams = json["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{json:#}");
    let last: Vec<u64> = streams
        .iter()
        .map(|s| s["last_sequence"].as_u64().unwrap())
        .collect();
    assert!(
        last.iter().all(|l| *l > 0),
        "both shards carried changes: {json:#}"
    );
    for n in json["nodes"].as_array().unwrap() {
        let applied: Vec<u64> = n["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["applied"].as_u64().unwrap())
            .collect();
        assert_eq!(applied, last, "{json:#}");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{json:#}");
    }

    // The table agrees with the JSON document, on every node's config.
    for i in 1..=3 {
        let out = status(c.node(i), &[]);
        assert!(out.contains("3 nodes, 3 reachable"), "{out}");
        assert_eq!(text_rows(&out), json_rows(&json), "node {i}:\n{out}");
        for s in streams {
            assert!(
                out.contains(s["stream"].as_str().unwrap()),
                "the table names the streams:\n{out}"
            );
        }
    }
    c.assert_all_alive();
}

/// Node 3 killed with -9: `-status` on node 1's config soon shows it unreachable, nodes 1 and 2 reachable.
#[test]
fn a_killed_node_turns_unreachable_and_the_others_stay_reachable() {
    let mut c = Cluster::start(Options::default());
    c.node(3)
        .sql("INSERT INTO Books (title, author) VALUES ('from 3', 'N3');");
    c.converged_all(T);
    c.eventually(T, "all three reachable, zero lag", || {
        all_caught_up(&text_rows(&status(c.node(1), &[])), 3, 1)
    });

    c.node_mut(3).kill9();
    let out = c.eventually(T, "node 3 unreachable in -status", || {
        let out = status(c.node(1), &[]);
        let rows = text_rows(&out);
        let reachable: Vec<(u64, bool)> = rows.iter().map(|r| (r.0, r.1)).collect();
        (reachable == [(1, true), (2, true), (3, false)]).then_some(out)
    });
    assert!(out.contains("3 nodes, 2 reachable"), "{out}");
    let json = status_json(c.node(2));
    let reachable: Vec<(u64, bool)> = json_rows(&json).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(reachable, [(1, true), (2, true), (3, false)], "{json:#}");
    assert!(
        json["nodes"][2]["age_ms"].as_u64().unwrap() > json["stale_after_ms"].as_u64().unwrap(),
        "{json:#}"
    );
    c.assert_all_alive();
}

/// No NATS to reach: `-status` exits 1 and says why.
#[test]
fn an_unreachable_cluster_fails_with_a_clear_error() {
    let c = Cluster::without_nats();
    let o = output_retrying(c.node(1).command().arg("-status"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cannot reach the cluster's NATS"),
        "{}",
        text(&o)
    );
}
