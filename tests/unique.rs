//! Unique collisions on real clusters: rows of different keys written on different nodes at the same moment
//! that collide on a UNIQUE index (column or table constraint, composite, expression, partial) or on a primary
//! key compared under its collation end the same on every node, decided by the stream's order, and every row
//! that lost is in every node's `__harmonylite__conflicts` exactly once (reason `unique`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(90);

/// Runs each node's statements on its own thread, all starting at the same moment; returns, per node, the
/// outcome of each statement (`Err` with SQLite's message when the node's own constraints refused it, as a
/// single SQLite would).
fn at_once(
    c: &Cluster,
    writes: Vec<(usize, Vec<String>)>,
) -> Vec<(usize, Vec<Result<(), String>>)> {
    let barrier = Arc::new(Barrier::new(writes.len()));
    let threads: Vec<_> = writes
        .into_iter()
        .map(|(node, stmts)| {
            let db = c.node(node).db.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let conn = open(&db);
                barrier.wait();
                let out: Vec<Result<(), String>> = stmts
                    .iter()
                    .map(|s| conn.execute_batch(s).map_err(|e| e.to_string()))
                    .collect();
                (node, out)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The unique losses of `table` journaled on one node: (`row_key` JSON, `lost_row` JSON) → how often.
fn unique_losses(n: &Node, table: &str) -> BTreeMap<(String, String), usize> {
    let conn = n.open();
    let mut stmt = conn
        .prepare(
            "SELECT row_key, lost_row FROM __harmonylite__conflicts WHERE tbl = ?1 AND reason = 'unique' \
             AND index_name IS NOT NULL AND winner_key IS NOT NULL",
        )
        .unwrap();
    let mut out = BTreeMap::new();
    for k in stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
    {
        *out.entry(k.unwrap()).or_insert(0) += 1;
    }
    out
}

/// The rows of `table` on node `n` by their key as the journal writes it (`[1]`, `["a"]`), each as a JSON
/// object of column → value.
fn rows(n: &Node, table: &str, key: &str) -> BTreeMap<String, String> {
    let conn = n.open();
    let cols: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let obj: Vec<String> = cols.iter().map(|c| format!("'{c}', \"{c}\"")).collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT json_array({key}), json_object({}) FROM {table}",
            obj.join(", ")
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// After convergence: on every node, the journal's unique losses of `table` cover exactly the rows written
/// (`written`: keys whose write succeeded on its node) that are no longer in the table, each lost value once.
/// A row written twice (inserted, then moved by an update) may have lost its first value and hold its second:
/// such a key is journaled while present, but never with the value it holds now. Returns how many rows lost.
fn every_loser_journaled_once(
    c: &Cluster,
    table: &str,
    key: &str,
    written: &BTreeSet<String>,
) -> usize {
    let present = rows(c.node(1), table, key);
    let lost: BTreeSet<String> = written
        .iter()
        .filter(|k| !present.contains_key(*k))
        .cloned()
        .collect();
    for i in 1..=c.nodes.len() {
        let journal = unique_losses(c.node(i), table);
        let twice: Vec<_> = journal.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "node {i}: journaled more than once: {twice:?}"
        );
        let mut journaled = BTreeSet::new();
        for (k, row) in journal.keys() {
            match present.get(k) {
                Some(now) => assert_ne!(
                    json(now),
                    json(row),
                    "node {i}: row {k} is journaled as lost with the value it still holds"
                ),
                None => {
                    journaled.insert(k.clone());
                }
            }
        }
        if journaled != lost {
            let all = c.node(i).sql(
                "SELECT row_key, lost_row, lost_origin, lost_seq, winner_origin, winner_seq, index_name, winner_key \
                 FROM __harmonylite__conflicts;",
            );
            panic!(
                "node {i}: the journal's unique losses of {table} are not the rows that were written and are gone:\n\
                 journaled {journaled:?}\nlost {lost:?}\njournal:\n{all}\n{}",
                c.logs_tail()
            );
        }
    }
    lost.len()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// No shard paused, on any node.
fn no_pause(c: &Cluster) {
    for i in 1..=c.nodes.len() {
        let paused = c.node(i).log_lines_with(&["shard paused"]);
        assert!(paused.is_empty(), "node {i} paused: {paused:?}");
    }
}

/// The reproduction: the same email inserted on nodes 1 and 2 at once, many times over. Every node ends
/// with the same row per email; the row that lost is journaled on every node.
#[test]
fn colliding_inserts_converge_and_every_loser_is_journaled() {
    let c = Cluster::start(Options {
        schema:
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);"
                .into(),
        ..Default::default()
    });
    let rounds = 20;
    let mut written = BTreeSet::new();
    for r in 0..rounds {
        let outcome = at_once(
            &c,
            [1usize, 2]
                .into_iter()
                .map(|n| {
                    (
                        n,
                        vec![format!(
                            "INSERT INTO users VALUES ({}, 'ann{r}@example.com', 'Ann on node {n}');",
                            n * 1000 + r
                        )],
                    )
                })
                .collect(),
        );
        for (n, res) in outcome {
            match &res[0] {
                Ok(()) => {
                    written.insert(format!("[{}]", n * 1000 + r));
                }
                Err(e) => assert!(e.contains("UNIQUE"), "node {n}: {e}"),
            }
        }
    }
    c.converged("users", T);
    let rows: i64 = c
        .node(3)
        .sql("SELECT count(*) FROM users;")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows, rounds as i64, "one row per email");
    let lost = every_loser_journaled_once(&c, "users", "id", &written);
    assert!(
        lost > 0,
        "no insert collided in {rounds} rounds: nothing was tested"
    );
    eprintln!(
        "{rounds} rounds, {} inserts succeeded, {lost} lost",
        written.len()
    );
    no_pause(&c);
    c.assert_all_alive();
}

/// Two existing rows moved onto the same free value at once: the later move wins, and the row the earlier
/// move put there is displaced (gone everywhere, journaled everywhere). Also on a composite `UNIQUE (a, b)`
/// and on a unique expression index.
#[test]
fn updates_onto_a_taken_value_composite_and_expression_indexes_converge() {
    let pairs = 12;
    let mut seed = String::from(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);
         CREATE TABLE seats (id INTEGER PRIMARY KEY, flight TEXT, seat TEXT, who TEXT, UNIQUE (flight, seat));
         CREATE TABLE slugs (id INTEGER PRIMARY KEY, slug TEXT, hidden INTEGER);
         CREATE UNIQUE INDEX slugs_lower ON slugs (lower(slug)) WHERE hidden IS NULL;\n",
    );
    for p in 0..pairs {
        seed += &format!(
            "INSERT INTO users VALUES ({a}, 'a{p}@x', 'A'), ({b}, 'b{p}@x', 'B');\n",
            a = 100 + p,
            b = 200 + p
        );
    }
    let c = Cluster::start(Options {
        schema: seed,
        ..Default::default()
    });
    let mut written: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in 0..pairs {
        written
            .entry("users")
            .or_default()
            .extend([format!("[{}]", 100 + p), format!("[{}]", 200 + p)]);
        let outcome = at_once(
            &c,
            vec![
                (
                    1,
                    vec![
                        format!(
                            "UPDATE users SET email = 'taken{p}@x' WHERE id = {};",
                            100 + p
                        ),
                        format!(
                            "INSERT INTO seats VALUES ({}, 'LH{p}', '12A', 'node 1');",
                            100 + p
                        ),
                        format!("INSERT INTO slugs VALUES ({}, 'Hello-{p}', NULL);", 100 + p),
                    ],
                ),
                (
                    2,
                    vec![
                        format!(
                            "UPDATE users SET email = 'taken{p}@x' WHERE id = {};",
                            200 + p
                        ),
                        format!(
                            "INSERT INTO seats VALUES ({}, 'LH{p}', '12A', 'node 2');",
                            200 + p
                        ),
                        format!("INSERT INTO slugs VALUES ({}, 'HELLO-{p}', NULL);", 200 + p),
                    ],
                ),
            ],
        );
        for (n, res) in outcome {
            for (table, r) in ["users", "seats", "slugs"].into_iter().zip(&res) {
                match r {
                    Ok(()) => {
                        if table != "users" {
                            written
                                .entry(table)
                                .or_default()
                                .insert(format!("[{}]", n * 100 + p));
                        }
                    }
                    Err(e) => assert!(e.contains("UNIQUE"), "node {n}: {table}: {e}"),
                }
            }
        }
    }
    // A row outside the partial index never collides.
    c.node(3)
        .sql("INSERT INTO slugs VALUES (999, 'hello-0', 1);");
    let tables = c.converged_all(T);
    assert_eq!(tables["seats"].1, pairs as u64, "one passenger per seat");
    assert_eq!(
        tables["slugs"].1,
        pairs as u64 + 1,
        "one visible slug per name, and the hidden one"
    );
    let mut lost = 0;
    for (table, w) in &written {
        lost += every_loser_journaled_once(&c, table, "id", w);
    }
    assert!(lost > 0, "nothing collided");
    no_pause(&c);
    c.assert_all_alive();
}

/// A primary key compared under `NOCASE` (one row for SQLite, two spellings in bytes), written on two nodes at
/// once: every node ends with the same whole row, the later writer's spelling with its own name.
#[test]
fn a_collated_primary_key_converges_whole() {
    let c = Cluster::start(Options {
        schema: "CREATE TABLE accounts (email TEXT PRIMARY KEY COLLATE NOCASE, name TEXT) WITHOUT ROWID;".into(),
        ..Default::default()
    });
    let rounds = 15;
    let mut written = BTreeSet::new();
    for r in 0..rounds {
        let spell = |n: usize| {
            if n == 1 {
                format!("Ann{r}@Example.com")
            } else {
                format!("ann{r}@example.com")
            }
        };
        let outcome = at_once(
            &c,
            [1usize, 2]
                .into_iter()
                .map(|n| {
                    (
                        n,
                        vec![format!(
                            "INSERT INTO accounts VALUES ('{}', 'node {n}');",
                            spell(n)
                        )],
                    )
                })
                .collect(),
        );
        for (n, res) in outcome {
            match &res[0] {
                Ok(()) => {
                    written.insert(format!("[\"{}\"]", spell(n)));
                }
                Err(e) => assert!(e.contains("UNIQUE"), "node {n}: {e}"),
            }
        }
    }
    c.converged("accounts", T);
    let conn = c.node(1).open();
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT email, name FROM accounts")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), rounds);
    for (email, name) in &rows {
        let by = if email.starts_with('A') {
            "node 1"
        } else {
            "node 2"
        };
        assert_eq!(name, by, "row {email} carries another node's name");
    }
    let lost = every_loser_journaled_once(&c, "accounts", "email", &written);
    assert!(lost > 0, "no spelling collided");
    no_pause(&c);
    c.assert_all_alive();
}

/// Three nodes insert and move rows over a small pool of emails as fast as they can: 300 writes, most of them
/// colliding. Every node identical, `-verify` finds nothing, every loser journaled exactly once, no pause.
#[test]
fn a_burst_of_collisions_from_three_nodes_converges() {
    let c = Cluster::start(Options {
        schema:
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);"
                .into(),
        ..Default::default()
    });
    let per_node = 100;
    let pool = 40;
    // A small linear congruential sequence per node: the same writes on every run.
    let writes: Vec<(usize, Vec<String>)> = (1..=3usize)
        .map(|n| {
            let mut x: u64 = 7 * n as u64 + 1;
            let stmts = (0..per_node)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let e = (x >> 33) % pool;
                    let id = n * 10_000 + i;
                    if i % 4 == 3 {
                        // Move one of this node's earlier rows onto another email.
                        format!("UPDATE users SET email = 'u{e}@x' WHERE id = {};", id - 2)
                    } else {
                        format!("INSERT INTO users VALUES ({id}, 'u{e}@x', 'node {n} #{i}');")
                    }
                })
                .collect();
            (n, stmts)
        })
        .collect();
    let inserted: BTreeSet<String> = writes
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter_map(|s| {
            s.strip_prefix("INSERT INTO users VALUES (")
                .and_then(|r| r.split(',').next())
                .map(|id| format!("[{id}]"))
        })
        .collect();
    let outcome = at_once(&c, writes.clone());
    let mut written = BTreeSet::new();
    let mut refused = 0;
    for (n, res) in &outcome {
        let stmts = &writes.iter().find(|(m, _)| m == n).unwrap().1;
        for (s, r) in stmts.iter().zip(res) {
            match r {
                Ok(()) => {
                    if let Some(id) = s
                        .strip_prefix("INSERT INTO users VALUES (")
                        .and_then(|r| r.split(',').next())
                    {
                        written.insert(format!("[{id}]"));
                    }
                }
                Err(e) => {
                    assert!(e.contains("UNIQUE"), "node {n}: {s}: {e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(written.is_subset(&inserted));
    c.converged_all(T);
    c.assert_verified(1);
    let lost = every_loser_journaled_once(&c, "users", "id", &written);
    eprintln!(
        "{} inserts succeeded, {refused} writes refused by their own node, {lost} rows lost to collisions",
        written.len()
    );
    assert!(lost > 0, "nothing collided");
    no_pause(&c);
    c.assert_all_alive();
}
