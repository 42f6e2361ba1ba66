//! End-to-end replication on real three-node clusters: writes through the real `sqlite3` CLI and through a
//! second process (rusqlite in the test process), checked on every node.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn count(node: &Node, sql: &str) -> i64 {
    node.sql(sql).trim().parse().unwrap_or(-1)
}

/// The original's e2e specs (insert, update, delete, multi-table, bulk, last writer wins) plus writes with
/// `trusted_schema = OFF` and from a second process.
#[test]
fn insert_update_delete_multitable_bulk_and_lww() {
    let c = Cluster::start(Options::default());
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));

    // INSERT through the CLI with trusted_schema OFF: no PRAGMA needed, nothing refused.
    n1.sql("PRAGMA trusted_schema = OFF; INSERT INTO Books (title, author, publication_year) VALUES ('Pride and Prejudice', 'Jane Austen', 1813);");
    for n in [n2, n3] {
        c.eventually(T, "insert replicated", || {
            n.sql("SELECT id, title, author, publication_year FROM Books WHERE title = 'Pride and Prejudice';").trim()
                == "8|Pride and Prejudice|Jane Austen|1813"
        });
    }

    // UPDATE
    n1.sql("UPDATE Books SET title = 'Pride & Prejudice' WHERE id = 8;");
    for n in [n2, n3] {
        c.eventually(T, "update replicated", || {
            n.sql("SELECT title FROM Books WHERE id = 8;").trim() == "Pride & Prejudice"
        });
    }

    // DELETE
    n1.sql("DELETE FROM Books WHERE id = 8;");
    for n in [n2, n3] {
        c.eventually(T, "delete replicated", || {
            count(n, "SELECT count(*) FROM Books WHERE id = 8;") == 0
        });
    }

    // Multi-table, written by a second process (rusqlite).
    {
        let conn = open(&n2.db);
        conn.execute_batch(
            "BEGIN; INSERT INTO Authors (id, name, birth_year) VALUES (100, 'Ursula K. Le Guin', 1929);
             INSERT INTO Books (id, title, author, publication_year) VALUES (100, 'The Dispossessed', 'Ursula K. Le Guin', 1974); COMMIT;",
        )
        .unwrap();
    }
    for n in [n1, n3] {
        c.eventually(T, "multi-table replicated", || {
            count(n, "SELECT count(*) FROM Authors WHERE id = 100;") == 1
                && count(n, "SELECT count(*) FROM Books WHERE id = 100;") == 1
        });
    }

    // Bulk: 100 single-row inserts on node 1, by the CLI without a busy timeout: the node takes no write lock
    // for its own changes coming back, so the application does not meet "database is locked".
    let stmts: String = (0..100)
        .map(|i| format!("INSERT INTO Books (id, title, author, publication_year) VALUES ({}, 'Bulk {i}', 'A', 2000);", 1000 + i))
        .collect();
    sqlite3(&n1.db, &stmts);
    for n in [n2, n3] {
        c.eventually(Duration::from_secs(60), "bulk replicated", || {
            count(
                n,
                "SELECT count(*) FROM Books WHERE id >= 1000 AND id < 1100;",
            ) == 100
        });
    }

    // Last writer wins: node 1 then, 100 ms later, node 2 update the same row.
    n1.sql("UPDATE Books SET title = 'Node1 Update' WHERE id = 1;");
    std::thread::sleep(Duration::from_millis(100));
    n2.sql("UPDATE Books SET title = 'Node2 Update' WHERE id = 1;");
    c.converged("Books", T);
    assert_eq!(
        n3.sql("SELECT title FROM Books WHERE id = 1;").trim(),
        "Node2 Update"
    );
    c.converged("Authors", T);

    // A table created while the nodes run is captured, including rows written right after its creation.
    for n in [n3, n2, n1] {
        n.sql("CREATE TABLE late (k TEXT PRIMARY KEY, v INTEGER);");
    }
    n1.sql("INSERT INTO late VALUES ('a', 1), ('b', 2);");
    let (_, rows) = c.converged("late", T);
    assert_eq!(rows, 2);
    // Every user table, not only those checked above.
    let tables = c.converged_all(T);
    assert_eq!(
        tables.keys().collect::<Vec<_>>(),
        ["Authors", "Books", "late"]
    );
}

/// Three writers update the same ten rows at the same time; every node ends identical, and each row's value
/// is one that some writer wrote.
#[test]
fn concurrent_writers_on_the_same_rows_converge() {
    let schema = format!("{BOOKS}\nCREATE TABLE hot (id INTEGER PRIMARY KEY, v TEXT, n INTEGER);");
    let c = Cluster::start(Options {
        schema,
        ..Default::default()
    });
    c.node(1).sql(
        &(1..=10)
            .map(|i| format!("INSERT INTO hot VALUES ({i}, 'seed', 0);"))
            .collect::<String>(),
    );
    c.converged("hot", T);
    let dbs: Vec<_> = c.nodes.iter().map(|n| n.db.clone()).collect();
    let handles: Vec<_> = dbs
        .into_iter()
        .enumerate()
        .map(|(w, db)| {
            std::thread::spawn(move || {
                let conn = open(&db);
                for round in 0..60 {
                    for id in 1..=10 {
                        conn.execute(
                            "UPDATE hot SET v = ?1, n = ?2 WHERE id = ?3",
                            rusqlite::params![format!("w{w}-r{round}"), round, id],
                        )
                        .unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (_, rows) = c.converged("hot", Duration::from_secs(60));
    assert_eq!(rows, 10);
    let values = c.node(1).sql("SELECT v FROM hot ORDER BY id;");
    for v in values.lines() {
        assert!(
            v.starts_with('w') && v.contains("-r"),
            "unexpected value {v}"
        );
    }
    // Stays converged (no late flicker).
    std::thread::sleep(Duration::from_millis(500));
    c.converged("hot", Duration::from_secs(1));
}

/// A reader on a node's database in a thread of its own ([`keep_reading`]).
struct Reading<S> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(S, u64)>,
}

impl<S> Reading<S> {
    /// Stops the reader: its state, and how many looks it took.
    fn finish(self) -> (S, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Reads `node`'s database in a thread of its own: `look` runs again and again, gathering into its state, until
/// [`Reading::finish`].
fn keep_reading<S: Default + Send + 'static>(
    node: &Node,
    mut look: impl FnMut(&rusqlite::Connection, &mut S) + Send + 'static,
) -> Reading<S> {
    let db = node.db.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut state = S::default();
        let mut looks = 0;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            look(&conn, &mut state);
            looks += 1;
        }
        (state, looks)
    });
    Reading { stop, thread }
}

/// A 30,000-row transaction over two tables is seen whole or not at all by a reader on a peer. It is one unit
/// larger than the 20,000 rows a receiver holds decoded: the rest of its messages wait as received and are
/// decoded one at a time as they are applied, on the peers and on its own node (its echo, skipped).
#[test]
fn large_two_table_transaction_is_atomic_on_peers() {
    let c = Cluster::start(Options::default());
    let (n1, n2) = (c.node(1), c.node(2));
    let reader = keep_reading(
        n2,
        |conn, seen: &mut std::collections::BTreeSet<(i64, i64)>| {
            let (a, b): (i64, i64) = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM Books WHERE id >= 5000), (SELECT count(*) FROM Authors WHERE id >= 5000)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            seen.insert((a, b));
        },
    );
    n1.sql(
        "BEGIN;
         WITH RECURSIVE s(x) AS (SELECT 5000 UNION ALL SELECT x + 1 FROM s WHERE x < 19999)
           INSERT INTO Books (id, title, author, publication_year) SELECT x, 'T' || x, 'A' || x, x FROM s;
         WITH RECURSIVE s(x) AS (SELECT 5000 UNION ALL SELECT x + 1 FROM s WHERE x < 19999)
           INSERT INTO Authors (id, name, birth_year) SELECT x, 'N' || x, x FROM s;
         COMMIT;",
    );
    c.eventually(Duration::from_secs(60), "big transaction on node 2", || {
        count(n2, "SELECT count(*) FROM Authors WHERE id >= 5000;") == 15000
    });
    let (seen, _) = reader.finish();
    assert!(
        seen.iter().all(|&s| s == (0, 0) || s == (15000, 15000)),
        "reader saw a partial transaction: {seen:?}"
    );
    assert!(seen.contains(&(15000, 15000)));
    c.converged("Books", T);
    c.converged("Authors", T);
}

/// An application writing faster than the cluster takes its changes (a backlog of many transactions builds up
/// in the change log): a reader on a peer still sees each of its transactions whole or not at all.
#[test]
fn transactions_stay_whole_on_peers_under_a_backlog() {
    const TXNS: i64 = 150;
    const ROWS: i64 = 1_500;
    const FIRST: i64 = 1_000_000;
    let c = Cluster::start(Options::default());
    let (n1, n2) = (c.node(1), c.node(2));
    let reader = keep_reading(
        n2,
        |conn, partial: &mut std::collections::BTreeMap<i64, i64>| {
            let mut q = conn
                .prepare_cached(&format!(
                    "SELECT (id - {FIRST}) / {ROWS}, count(*) FROM Books WHERE id >= {FIRST} \
                     GROUP BY 1 HAVING count(*) != {ROWS}"
                ))
                .unwrap();
            let rows = q
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .unwrap();
            for r in rows {
                let (txn, n) = r.unwrap();
                partial.insert(txn, n);
            }
        },
    );
    // One `sqlite3` process commits the transactions one after the other, as fast as it can.
    let script: String = (0..TXNS)
        .map(|t| {
            let lo = FIRST + t * ROWS;
            format!(
                "BEGIN; WITH RECURSIVE s(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM s WHERE x < {hi}) \
                 INSERT INTO Books (id, title, author, publication_year) SELECT x, 'T' || x, 'A', x FROM s; \
                 COMMIT;\n",
                hi = lo + ROWS - 1
            )
        })
        .collect();
    n1.sql(&script);
    c.eventually(
        Duration::from_secs(120),
        "every transaction on node 2",
        || {
            count(
                n2,
                &format!("SELECT count(*) FROM Books WHERE id >= {FIRST};"),
            ) == TXNS * ROWS
        },
    );
    let (partial, looks) = reader.finish();
    assert!(looks > 0, "the reader never looked");
    assert!(
        partial.is_empty(),
        "a reader on node 2 saw transactions in part (transaction: rows seen): {partial:?}"
    );
    c.converged("Books", T);
}

/// Values arrive byte-exact, and every kind of key works: composite, WITHOUT ROWID, no primary key, quoted
/// identifiers, a primary key changed by UPDATE.
#[test]
fn exact_values_and_every_kind_of_key() {
    let schema = r#"
        CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, u, t TEXT, b BLOB, d DATETIME);
        CREATE TABLE comp (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));
        CREATE TABLE wr (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
        CREATE TABLE nopk (x TEXT, y INTEGER);
        CREATE TABLE "Order Items" ("select" INTEGER PRIMARY KEY, "we""ird" TEXT, [group] TEXT);
        CREATE TABLE textpk (code TEXT PRIMARY KEY, name TEXT);
    "#;
    let c = Cluster::start(Options {
        schema: schema.into(),
        ..Default::default()
    });
    let (n1, n2) = (c.node(1), c.node(2));
    {
        let conn = open(&n1.db);
        let big_blob: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let big_text: String = (0..100_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        conn.execute(
            "INSERT INTO vals VALUES (1, ?1, ?2, ?3, ?4, ?5, '2024-02-29 23:59:59.123456789+05:30')",
            rusqlite::params![i64::MIN, -0.0f64, -0.0f64, big_text, big_blob],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO vals VALUES (2, ?1, ?2, ?3, 'x', x'', 'not a date')",
            rusqlite::params![i64::MAX, f64::INFINITY, f64::NEG_INFINITY],
        )
        .unwrap();
        conn.execute("INSERT INTO vals VALUES (3, 'text in an integer column', 1.5, 7, NULL, NULL, 1700000000)", []).unwrap();
        conn.execute(
            "INSERT INTO vals (id, t) VALUES (4, CAST(x'fffe00' AS TEXT))",
            [],
        )
        .unwrap();
    }
    n1.sql(
        "INSERT INTO comp VALUES ('x,y', 1, 'one'), ('it''s', 2, 'two'), ('z', 3, 'three');
         INSERT INTO wr VALUES ('k1', 1), ('k2', 2);
         INSERT INTO nopk VALUES ('a', 1), ('b', 2);
         INSERT INTO \"Order Items\" VALUES (1, 'q\"uote', 'g');
         INSERT INTO textpk VALUES ('A1', 'first'), ('B2', 'second');",
    );
    for t in ["vals", "comp", "wr", "nopk", "Order Items", "textpk"] {
        c.converged(t, T);
    }
    // exact storage classes on the peer
    let conn = open(&n2.db);
    let (r, u): (f64, f64) = conn
        .query_row("SELECT r, u FROM vals WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        u.to_bits(),
        (-0.0f64).to_bits(),
        "-0.0 in an untyped column keeps its sign"
    );
    assert_eq!(r, 0.0);
    let types = n2.sql("SELECT typeof(i), typeof(d) FROM vals WHERE id = 3;");
    assert_eq!(types.trim(), "text|integer");
    assert_eq!(
        n2.sql("SELECT d FROM vals WHERE id = 1;").trim(),
        "2024-02-29 23:59:59.123456789+05:30"
    );
    assert_eq!(
        n2.sql("SELECT hex(t) FROM vals WHERE id = 4;").trim(),
        "FFFE00"
    );

    // updates and deletes by every kind of key; a primary key change leaves no stale row
    n1.sql(
        "UPDATE comp SET v = 'ONE' WHERE a = 'x,y' AND b = 1;
         DELETE FROM comp WHERE a = 'it''s';
         UPDATE wr SET k = 'k3' WHERE k = 'k1';
         UPDATE nopk SET y = 20 WHERE x = 'b';
         DELETE FROM nopk WHERE x = 'a';
         UPDATE \"Order Items\" SET \"select\" = 2 WHERE \"select\" = 1;
         UPDATE textpk SET code = 'C3' WHERE code = 'A1';
         UPDATE vals SET id = 10 WHERE id = 2;",
    );
    for t in ["vals", "comp", "wr", "nopk", "Order Items", "textpk"] {
        c.converged(t, T);
    }
    assert_eq!(n2.sql("SELECT k FROM wr ORDER BY k;").trim(), "k2\nk3");
    assert_eq!(
        n2.sql("SELECT \"select\" FROM \"Order Items\";").trim(),
        "2"
    );
    assert_eq!(
        n2.sql("SELECT code FROM textpk ORDER BY code;").trim(),
        "B2\nC3"
    );
    assert_eq!(
        n2.sql("SELECT id FROM vals ORDER BY id;").trim(),
        "1\n3\n4\n10"
    );
    assert_eq!(n2.sql("SELECT count(*) FROM nopk;").trim(), "1");
}

/// A node killed with -9 catches up; rows written while a node's sidecar was down are published when it
/// starts again.
#[test]
fn killed_node_catches_up_and_offline_writes_arrive() {
    let mut c = Cluster::start(Options::default());
    c.node_mut(3).kill9();
    c.node(1)
        .sql("INSERT INTO Books (id, title, author) VALUES (200, 'While 3 was down', 'X');");
    c.eventually(T, "row on node 2", || {
        count(c.node(2), "SELECT count(*) FROM Books WHERE id = 200;") == 1
    });

    // Sidecar of node 2 stopped; the application keeps writing to its database.
    assert_eq!(c.node_mut(2).stop(), Some(0), "graceful stop exits 0");
    c.node(2).sql(
        "INSERT INTO Books (id, title, author) VALUES (201, 'Written while sidecar down', 'Y');",
    );
    c.node(2)
        .sql("UPDATE Books SET title = 'Changed offline' WHERE id = 2;");

    c.node_mut(3).start();
    c.node_mut(2).start();
    c.node(3).wait_running(Duration::from_secs(60));
    c.node(2).wait_running(Duration::from_secs(60));
    let (_, rows) = c.converged("Books", Duration::from_secs(60));
    assert_eq!(rows, 9);
    assert_eq!(
        c.node(3)
            .sql("SELECT title FROM Books WHERE id = 2;")
            .trim(),
        "Changed offline"
    );
    assert_eq!(
        count(
            c.node(1),
            "SELECT count(*) FROM Books WHERE id IN (200, 201);"
        ),
        2
    );
}

/// `publish = false` applies but never sends; `replicate = false` sends but never applies.
#[test]
fn publish_false_and_replicate_false() {
    let c = Cluster::start(Options {
        per_node_toml: vec![
            String::new(),
            "publish = false".into(),
            "replicate = false".into(),
        ],
        ..Default::default()
    });
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    n2.sql("INSERT INTO Books (id, title, author) VALUES (300, 'from a replica', 'R');");
    n3.sql("INSERT INTO Books (id, title, author) VALUES (301, 'from the primary', 'P');");
    n1.sql("INSERT INTO Books (id, title, author) VALUES (302, 'from node 1', 'N');");
    c.eventually(T, "node 1's row on node 2", || {
        count(n2, "SELECT count(*) FROM Books WHERE id = 302;") == 1
    });
    c.eventually(T, "node 3's row on nodes 1 and 2", || {
        count(n1, "SELECT count(*) FROM Books WHERE id = 301;") == 1
            && count(n2, "SELECT count(*) FROM Books WHERE id = 301;") == 1
    });
    // Node 3 applies nothing; node 2 published nothing. Checked after the rows above went through.
    during(Duration::from_secs(2), || {
        assert_eq!(
            count(n1, "SELECT count(*) FROM Books WHERE id = 300;"),
            0,
            "publish=false node published"
        );
        assert_eq!(
            count(n3, "SELECT count(*) FROM Books WHERE id IN (300, 302);"),
            0,
            "replicate=false node applied"
        );
    });
}

/// `-cleanup` removes every trigger and table HarmonyLite created and keeps the user's data.
#[test]
fn cleanup_removes_our_objects_only() {
    let mut c = Cluster::start(Options {
        nodes: 1,
        ..Default::default()
    });
    c.node(1)
        .sql("INSERT INTO Books (id, title, author) VALUES (500, 'kept', 'K');");
    let before = c.node(1).sql("SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\';");
    assert!(before.trim().parse::<i64>().unwrap() >= 4);
    c.node_mut(1).stop();
    let out = c.node(1).command().arg("-cleanup").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = c.node(1).sql("SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\';");
    assert_eq!(after.trim(), "0");
    assert_eq!(count(c.node(1), "SELECT count(*) FROM Books;"), 8);
}

/// Publishing fails while the cluster has no quorum (both peers killed with -9): the writing node keeps its
/// changes pending and retries, and once the peers are back every change arrives. Nothing is lost.
#[test]
fn changes_written_while_publishing_fails_are_not_lost() {
    let mut c = Cluster::start(Options::default());
    c.node_mut(2).kill9();
    c.node_mut(3).kill9();
    let n1 = c.node(1);
    for i in 0..20 {
        n1.sql(&format!(
            "INSERT INTO Books (id, title, author) VALUES ({}, 'no quorum {i}', 'Q');",
            600 + i
        ));
    }
    c.eventually(
        Duration::from_secs(60),
        "node 1 reports failing publishes",
        || n1.log_text().contains("publish failed"),
    );
    c.node_mut(2).start();
    c.node_mut(3).start();
    c.node(2).wait_running(Duration::from_secs(90));
    c.node(3).wait_running(Duration::from_secs(90));
    let (_, rows) = c.converged("Books", Duration::from_secs(90));
    assert_eq!(rows, 27);
}

/// `sleep_timeout`: a node with no local or remote activity for that long exits by itself, with status 0.
#[test]
fn sleep_timeout_exits_an_idle_node() {
    let mut c = Cluster::start(Options {
        nodes: 1,
        extra_toml: "sleep_timeout = 1500".into(),
        ..Default::default()
    });
    let status = c.node_mut(1).wait_exit(Duration::from_secs(30));
    assert_eq!(status, Some(0));
    assert!(
        c.node(1)
            .log_text()
            .contains("no activity for sleep_timeout")
    );
}
