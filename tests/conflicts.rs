//! The conflict journal on real clusters: two nodes updating the same rows at the same moment leave the values
//! that last-writer-wins threw away in `__harmonylite__conflicts`, and only those; a strictly sequential
//! overwrite journals nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);
const ROWS: i64 = 40;
const SCHEMA: &str = "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL);";

fn cluster() -> Cluster {
    let seed: Vec<String> = (1..=ROWS).map(|i| format!("({i}, 'seed')")).collect();
    Cluster::start(Options {
        schema: format!("{SCHEMA}\nINSERT INTO kv VALUES {};", seed.join(", ")),
        ..Default::default()
    })
}

/// Journal entries of `kv` on one node: (row id, lost value, lost origin, winner origin).
fn journal(n: &Node) -> Vec<(i64, Option<String>, i64, i64)> {
    let conn = n.open();
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(row_key, '$[0]'), json_extract(lost_row, '$.v'), lost_origin, winner_origin \
             FROM __harmonylite__conflicts WHERE tbl = 'kv' ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn table(n: &Node) -> BTreeMap<i64, String> {
    let conn = n.open();
    let mut stmt = conn.prepare("SELECT id, v FROM kv").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Nodes 1 and 2 update every row at the same moment, several rounds: the journal holds entries, and every
/// lost value is a value one of them wrote that is no longer anywhere in the table.
#[test]
fn concurrent_overwrites_are_journaled() {
    let c = cluster();
    let mut written: BTreeSet<String> = BTreeSet::new();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|node| {
                let db = c.node(node as usize).db.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let conn = open(&db);
                    barrier.wait();
                    conn.execute(
                        "UPDATE kv SET v = 'n' || ?1 || '-r' || ?2 || '-' || id",
                        rusqlite::params![node as i64, round],
                    )
                    .unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        for node in [1, 2] {
            for id in 1..=ROWS {
                written.insert(format!("n{node}-r{round}-{id}"));
            }
        }
        c.converged("kv", T);
    }
    let final_table = table(c.node(1));
    let still_there: BTreeSet<&String> = final_table.values().collect();
    let mut total = 0;
    for i in 1..=3 {
        let n = c.node(i);
        for (id, lost, lost_origin, winner_origin) in journal(n) {
            total += 1;
            let lost = lost.unwrap_or_else(|| panic!("node {i}: a lost deletion of row {id}"));
            assert!(
                written.contains(&lost),
                "node {i}: journaled {lost:?}, which nobody wrote"
            );
            assert!(
                !still_there.contains(&lost),
                "node {i}: journaled {lost:?} for row {id}, but it is still in the table"
            );
            assert!(
                lost.starts_with(&format!("n{lost_origin}-")),
                "node {i}: {lost:?} attributed to node {lost_origin}"
            );
            assert_ne!(lost_origin, winner_origin);
        }
    }
    assert!(
        total > 0,
        "two nodes wrote the same {ROWS} rows at the same moment five times, and nothing was journaled"
    );
    c.assert_all_alive();
}

/// Write on node 1, wait until every node has it, then overwrite on node 2: nothing is journaled.
#[test]
fn sequential_overwrites_journal_nothing() {
    let c = cluster();
    for round in 0..3 {
        for (writer, other) in [(1usize, 2usize), (2, 3), (3, 1)] {
            let value = format!("w{writer}-r{round}");
            c.node(writer)
                .sql(&format!("UPDATE kv SET v = '{value}' WHERE id <= 10;"));
            for i in 1..=3 {
                c.node(i).eventually(T, "the write is everywhere", || {
                    table(c.node(i)).get(&1) == Some(&value)
                });
            }
            let _ = other;
        }
    }
    c.converged("kv", T);
    for i in 1..=3 {
        assert_eq!(
            journal(c.node(i)),
            [],
            "node {i} journaled a sequential overwrite"
        );
    }
    c.assert_all_alive();
}
