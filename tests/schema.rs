//! Schema changes while the cluster runs, made the ordinary way (the real `sqlite3` CLI, with the busy timeout
//! applications have): nothing missed, no application write fails, a node whose schema is behind waits and
//! says so, and every node converges. Every application write goes through `Node::sql`, which fails the test
//! when SQLite refuses it.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(45);

/// Runs `-schema-status` or `-schema-status-cluster` on `node`'s config.
fn status(node: &Node, flag: &str) -> Output {
    node.command().arg(flag).output().expect("run harmonylite")
}

use support::output_text as text;

/// The reproduction: migrations run right after a deploy, while the nodes are still starting. On node
/// 1, as soon as its triggers exist, a column is added and a row uses it; the same column is added on nodes 2
/// and 3 only after they have received that row. A table created on every node in the same window is captured
/// and its rows replicate.
#[test]
fn schema_changes_in_the_first_second_after_start_are_not_missed() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    c.eventually(T, "node 1 installed its triggers", || {
        c.node(1).has_triggers()
    });
    c.node(1).sql(
        "ALTER TABLE Books ADD COLUMN rating INTEGER;
         INSERT INTO Books (title, author, publication_year, rating) VALUES ('Rated', 'R', 2000, 5);",
    );
    for i in 1..=3 {
        c.node(i)
            .sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);");
    }
    c.node(1)
        .sql("INSERT INTO notes VALUES (1, 'written in the first second');");
    c.wait_all_running(Duration::from_secs(90));
    c.node(2)
        .sql("INSERT INTO notes VALUES (2, 'from node 2');");

    // Nodes 2 and 3 receive the row with its rating and wait for the column.
    for i in [2, 3] {
        c.node(i).wait_paused_on("Books", Some("rating"), T);
    }
    for i in [2, 3] {
        c.node(i)
            .sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
    }
    c.converged("Books", T);
    for i in 1..=3 {
        assert_eq!(
            c.node(i)
                .sql("SELECT rating FROM Books WHERE title = 'Rated';")
                .trim(),
            "5",
            "node {i}"
        );
    }
    let (_, notes) = c.converged("notes", T);
    assert_eq!(notes, 2);
    c.converged_all(T);
    c.assert_all_alive();
}

/// A table created on every node right after start, right after a restart, and while a node was stopped
/// (with rows written on that node before it came back): all captured, all rows everywhere.
#[test]
fn tables_created_after_start_after_restart_and_while_stopped_replicate() {
    let mut c = Cluster::start(Options::default());
    for i in 1..=3 {
        c.node(i)
            .sql("CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT);");
    }
    for i in 1..=3 {
        c.node(i)
            .sql(&format!("INSERT INTO t1 VALUES ({i}, 'node {i}');"));
    }
    assert_eq!(c.converged("t1", T).1, 3);

    // Restart node 2 and migrate as soon as its process is back.
    assert_eq!(c.node_mut(2).stop(), Some(0));
    c.node_mut(2).start();
    c.eventually(T, "node 2 re-installed capture", || {
        c.node(2)
            .log_text()
            .matches("change capture installed")
            .count()
            >= 2
    });
    for i in [2, 1, 3] {
        c.node(i)
            .sql("CREATE TABLE t2 (k TEXT PRIMARY KEY, v INTEGER);");
    }
    c.node(2).sql("INSERT INTO t2 VALUES ('from-2', 2);");
    c.node(1).sql("INSERT INTO t2 VALUES ('from-1', 1);");
    c.node(2).wait_running(Duration::from_secs(90));
    assert_eq!(c.converged("t2", T).1, 2);

    // Node 3 is stopped; a table is created everywhere and written on node 3 before it starts again.
    assert_eq!(c.node_mut(3).stop(), Some(0));
    for i in 1..=3 {
        c.node(i)
            .sql("CREATE TABLE t3 (id INTEGER PRIMARY KEY, v);");
    }
    c.node(3)
        .sql("INSERT INTO t3 VALUES (30, 'written while stopped'), (31, 'too');");
    c.node(1).sql("INSERT INTO t3 VALUES (10, 'node 1');");
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    assert_eq!(c.converged("t3", T).1, 3);
    c.converged_all(T);
    c.assert_all_alive();
}

/// `ADD COLUMN` on node 1 with writes using it (inserts and updates) while node 2 keeps writing the table
/// without it; nodes 2 and 3 wait, say where, and resume when altered; every value arrives.
#[test]
fn add_column_on_one_node_with_writes_before_the_others_are_altered() {
    let c = Cluster::start(Options::default());
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    n1.sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
    n1.sql("INSERT INTO Books (id, title, author, rating) VALUES (100, 'New', 'N', 4);");
    n1.sql("UPDATE Books SET rating = 3 WHERE id = 1;");
    n2.sql("INSERT INTO Books (id, title, author) VALUES (200, 'Old schema', 'O');");
    n2.sql("UPDATE Books SET title = 'Changed on 2' WHERE id = 2;");
    let line = n3.wait_paused_on("Books", Some("rating"), T);
    for part in ["stream=", "seq=", "table=Books", "column=rating"] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
    n2.wait_paused_on("Books", Some("rating"), T);
    // Still paused, not crashed, while the schema is behind.
    during(Duration::from_secs(2), || {
        c.assert_all_alive();
        assert_eq!(
            n3.sql("SELECT count(*) FROM Books WHERE id = 100;").trim(),
            "0"
        );
    });
    for n in [n3, n2] {
        n.sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
        let altered = Instant::now();
        c.eventually(T, "resumed after the local ALTER", || {
            n.sql("SELECT rating FROM Books WHERE id = 100;").trim() == "4"
        });
        // From the node's own log: capture re-installed for the ALTER, then the shard resumed.
        // The line follows the commit that made the row visible: wait for it too.
        let stamp = |what: &str| {
            let line = n.eventually(T, &format!("the log line {what:?}"), || {
                n.log_lines_with(&[what]).pop()
            });
            humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).unwrap()
        };
        let woke = stamp("local schema caught up")
            .duration_since(stamp("schema changed; capture re-installed"))
            .unwrap_or_default();
        eprintln!(
            "node {}: row visible {:?} after its ALTER TABLE; shard resumed {woke:?} after capture was re-installed",
            n.id,
            altered.elapsed()
        );
        assert!(
            woke < Duration::from_secs(2),
            "node {} resumed {woke:?} after its schema changed",
            n.id
        );
    }
    c.converged("Books", T);
    for n in [n1, n2, n3] {
        assert_eq!(
            n.sql("SELECT id, rating, title FROM Books WHERE id IN (1, 2, 100, 200) ORDER BY id;"),
            "1|3|The Hitchhiker's Guide to the Galaxy\n2||Changed on 2\n100|4|New\n200||Old schema\n",
            "node {}",
            n.id
        );
    }
    c.assert_all_alive();
}

/// The rebuild migration tools do (create new, copy, drop old, rename, in one transaction), on every node in
/// turn while the others keep writing: capture is kept, the new column replicates, nothing is lost.
#[test]
fn table_rebuild_on_every_node_keeps_capture() {
    let c = Cluster::start(Options::default());
    let rebuild = "BEGIN;
        CREATE TABLE Books_new (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author TEXT NOT NULL,
            publication_year INTEGER, isbn TEXT NOT NULL DEFAULT '');
        INSERT INTO Books_new (id, title, author, publication_year) SELECT id, title, author, publication_year FROM Books;
        DROP TABLE Books;
        ALTER TABLE Books_new RENAME TO Books;
        COMMIT;";
    let mut next = 1000;
    let write_all = |c: &Cluster, next: &mut i64, with_isbn: &[usize]| {
        for i in 1..=3 {
            *next += 1;
            let next = *next;
            let sql = if with_isbn.contains(&i) {
                format!(
                    "INSERT INTO Books (id, title, author, isbn) VALUES ({next}, 'b{next}', 'n{i}', 'isbn-{next}');"
                )
            } else {
                format!("INSERT INTO Books (id, title, author) VALUES ({next}, 'b{next}', 'n{i}');")
            };
            c.node(i).sql(&sql);
        }
    };
    write_all(&c, &mut next, &[]);
    let mut rebuilt = Vec::new();
    for i in 1..=3 {
        rebuilt.push(i);
        // With a write right after the rebuild, in the same CLI session: before capture can have been
        // re-installed.
        next += 1;
        c.node(i).sql(&format!(
            "{rebuild} INSERT INTO Books (id, title, author, isbn) VALUES ({next}, 'right after', 'r{i}', 'isbn-r{i}');"
        ));
        write_all(&c, &mut next, &rebuilt);
    }
    let (_, rows) = c.converged("Books", Duration::from_secs(60));
    assert_eq!(rows, 7 + 12 + 3);
    for i in 1..=3 {
        assert_eq!(
            c.node(i)
                .sql("SELECT count(*) FROM Books WHERE isbn LIKE 'isbn-%';")
                .trim(),
            "9",
            "node {i}"
        );
        let triggers = c.node(i).sql(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'Books';",
        );
        assert_eq!(
            triggers.trim(),
            "3",
            "node {i} keeps capture on the rebuilt table"
        );
    }
    c.converged_all(T);
    c.assert_all_alive();
}

/// `DROP TABLE` of a captured table on one node while another still writes it (and every node writes another
/// table): no node pauses or dies, the drop is done everywhere in the end, and the rest converges.
#[test]
fn drop_table_while_writes_go_on_elsewhere() {
    let schema = format!("{BOOKS}\nCREATE TABLE junk (id INTEGER PRIMARY KEY, v TEXT);");
    let c = Cluster::start(Options {
        schema,
        ..Default::default()
    });
    c.node(1).sql("INSERT INTO junk VALUES (1, 'a'), (2, 'b');");
    c.converged("junk", T);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .map(|i| {
            let db = c.node(i).db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n: i64 = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    sqlite3_with_timeout(
                        &db,
                        &format!(
                            "INSERT INTO Authors (id, name) VALUES ({}, 'w{i}-{n}');",
                            i as i64 * 100_000 + n
                        ),
                    );
                }
                n
            })
        })
        .collect();
    c.node(1).sql("DROP TABLE junk;");
    for k in 10..20 {
        c.node(2).sql(&format!(
            "INSERT INTO junk VALUES ({k}, 'after the drop on node 1');"
        ));
    }
    c.eventually(T, "node 3 has node 2's junk rows", || {
        c.node(3).sql("SELECT count(*) FROM junk;").trim() == "12"
    });
    c.node(2).sql("DROP TABLE junk;");
    c.node(3).sql("DROP TABLE junk;");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written: i64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(written > 0);
    let tables = c.converged_all(T);
    assert!(!tables.contains_key("junk"), "{tables:?}");
    assert_eq!(
        c.node(1).sql("SELECT count(*) FROM Authors;").trim(),
        written.to_string()
    );
    for i in 1..=3 {
        assert!(
            c.node(i).log_lines_with(&["shard paused"]).is_empty()
                && c.node(i).log_lines_with(&["changes held"]).is_empty(),
            "node {i} paused"
        );
    }
    c.assert_all_alive();
}

/// An application write through the CLI with a busy timeout; fails the test when SQLite refuses it.
fn sqlite3_with_timeout(db: &std::path::Path, sql: &str) {
    if let Err(e) = try_sqlite3(db, sql, Some(5000)) {
        panic!("application write {sql:?} failed: {e}");
    }
}

/// A node never altered stays paused and reports it (log, schema status of the cluster), the others go on;
/// altered, it resumes and the cluster's schema is consistent again.
#[test]
fn a_node_never_altered_stays_paused_reports_it_and_resumes_when_altered() {
    let c = Cluster::start(Options::default());
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    c.eventually(T, "every node registered its schema", || {
        let o = status(n1, "-schema-status-cluster");
        o.status.success() && text(&o).contains("3 nodes, consistent")
    });

    for n in [n1, n2] {
        n.sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
    }
    n1.sql("INSERT INTO Books (id, title, author, rating) VALUES (50, 'Five', 'F', 5);");
    c.eventually(T, "node 2 has the row", || {
        n2.sql("SELECT rating FROM Books WHERE id = 50;").trim() == "5"
    });
    n3.wait_paused_on("Books", Some("rating"), T);

    // The cluster view names the table that differs and the node behind.
    let o = c.eventually(T, "the registry shows node 3 behind", || {
        let o = status(n2, "-schema-status-cluster");
        (o.status.code() == Some(1) && text(&o).contains("Books: ")).then_some(o)
    });
    let report = text(&o);
    assert!(report.contains("NOT consistent"), "{report}");
    let books = report
        .lines()
        .find(|l| l.trim_start().starts_with("Books: "))
        .unwrap();
    assert!(books.contains("node 3"), "{report}");
    // The local view works beside the running node.
    let o = status(n3, "-schema-status");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Books"), "{}", text(&o));
    assert!(text(&o).contains("captured"), "{}", text(&o));

    during(Duration::from_secs(3), || {
        c.assert_all_alive();
        assert_eq!(
            n3.sql("SELECT count(*) FROM Books WHERE id = 50;").trim(),
            "0"
        );
    });
    n3.sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
    c.converged("Books", T);
    assert_eq!(
        n3.sql("SELECT rating FROM Books WHERE id = 50;").trim(),
        "5"
    );
    c.eventually(T, "the registry is consistent again", || {
        let o = status(n1, "-schema-status-cluster");
        o.status.success() && text(&o).contains("3 nodes, consistent")
    });
    c.assert_all_alive();
}

/// The status commands without a running node: the local view reads the database; before any node ran on it,
/// it says "Not initialized".
#[test]
fn schema_status_without_a_running_node() {
    let mut c = Cluster::new(Options {
        nodes: 1,
        ..Default::default()
    });
    let n = c.node(1);
    let o = status(n, "-schema-status");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Not initialized"), "{}", text(&o));
    assert!(text(&o).contains("Books"), "{}", text(&o));
    c.node_mut(1).start_and_wait(Duration::from_secs(60));
    assert_eq!(c.node_mut(1).stop(), Some(0));
    let n = c.node(1);
    let o = status(n, "-schema-status");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("Not initialized"), "{}", text(&o));
    assert!(text(&o).contains("captured"), "{}", text(&o));
    // The cluster view starts the node's own server for the command, and reads the registry it wrote.
    let o = status(n, "-schema-status-cluster");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 node, consistent"), "{}", text(&o));
}

/// A table created on one node only (a tool's table, or a migration not yet run elsewhere): its changes are held
/// on the others, whole with their transactions, while writes to every other table go on replicating. The held
/// change survives a restart (the recorded position stays before it), is shown in the metrics and `/health`,
/// said at ERROR once it lasts longer than `max_stuck_seconds`, and is applied once the table exists; on a node
/// that excludes the table instead, the held changes are released as dropped (and the rest of their
/// transaction applied).
#[test]
fn a_table_one_node_lacks_holds_only_its_own_changes() {
    let (m2, h2) = (free_port(), free_port());
    let mut c = Cluster::start(Options {
        per_node_toml: vec![
            String::new(),
            format!(
                "[prometheus]\nenable = true\nbind = \"127.0.0.1:{m2}\"\n\n\
                 [health_check]\nenable = true\nbind = \"127.0.0.1:{h2}\"\nmax_stuck_seconds = 3\n"
            ),
        ],
        ..Default::default()
    });
    c.node(1).sql(
        "CREATE TABLE only_here (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO only_here VALUES (1, 'held');",
    );
    // Wait until node 1 captured the table, then write a book in the same transaction as a new held row.
    c.eventually(T, "node 1 captured only_here", || {
        !c.node(1)
            .log_lines_with(&["table captured", "only_here"])
            .is_empty()
            || c.node(1).sql("SELECT count(*) FROM sqlite_master WHERE name = '__harmonylite__only_here_insert';").trim() == "1"
    });
    c.node(1).sql(
        "BEGIN; INSERT INTO only_here VALUES (2, 'with a book');
         INSERT INTO Books (id, title, author) VALUES (900, 'Held with its transaction', 'H'); COMMIT;",
    );
    for i in [2, 3] {
        c.node(i).wait_paused_on("only_here", None, T);
    }
    // Other tables go on: books written on nodes 1 and 2 reach everyone.
    c.book_reaches_the_others(1, "After the hold, from 1");
    c.book_reaches_the_others(2, "After the hold, from 2");
    c.node(1)
        .sql("INSERT INTO Authors (id, name) VALUES (77, 'Not held');");
    c.eventually(T, "the author reached nodes 2 and 3", || {
        [2, 3].iter().all(|&i| {
            c.node(i)
                .sql("SELECT count(*) FROM Authors WHERE id = 77;")
                .trim()
                == "1"
        })
    });
    // The book written in the held transaction waits with it (a transaction is never split).
    for i in [2, 3] {
        assert_eq!(
            c.node(i)
                .sql("SELECT count(*) FROM Books WHERE id = 900;")
                .trim(),
            "0"
        );
    }
    // Shown: metrics per shard and table, /health per shard, an ERROR once past max_stuck_seconds.
    let r = eventually(T, "held gauges", || {
        http_get(m2, "/metrics").filter(|r| {
            r.body.lines().any(|l| {
                l.starts_with("harmonylite_held_changes{") && l.contains("table=\"only_here\"")
            })
        })
    });
    assert!(r.body.contains("harmonylite_held_seconds{"), "{}", r.body);
    let health = eventually(T, "health lists the held table", || {
        http_get(h2, "/health")
            .filter(|r| r.body.contains("\"held\"") && r.body.contains("only_here"))
    });
    assert!(health.body.contains("changes held"), "{}", health.body);
    c.node(2)
        .eventually(T, "the ERROR after max_stuck_seconds", || {
            !c.node(2)
                .log_lines_with(&[" ERROR ", "changes held for long", "only_here"])
                .is_empty()
        });

    // A restart of node 2 does not lose the held change.
    c.node_mut(2).kill9();
    c.node_mut(2).start_and_wait(Duration::from_secs(90));
    c.node(2).wait_paused_on("only_here", None, T);
    c.book_reaches_the_others(3, "After node 2 restarted");

    // Node 3 will never have the table: excluded there, its held changes are dropped.
    c.node_mut(3).extra_toml = "exclude_tables = [\"Only_*\"]".into();
    c.node_mut(3).restart(Duration::from_secs(90));
    c.node(3)
        .eventually(T, "the book of the held transaction on node 3", || {
            c.node(3)
                .sql("SELECT count(*) FROM Books WHERE id = 900;")
                .trim()
                == "1"
        });
    // The table appears on node 2: the held changes are applied, the book of their transaction too.
    c.node(2)
        .sql("CREATE TABLE only_here (id INTEGER PRIMARY KEY, v TEXT);");
    c.node(2).eventually(T, "the held rows on node 2", || {
        c.node(2).sql("SELECT count(*) FROM only_here;").trim() == "2"
    });
    c.converged("Books", T);
    assert_eq!(
        c.node(3)
            .sql("SELECT count(*) FROM sqlite_master WHERE name = 'only_here';")
            .trim(),
        "0"
    );
    for i in 1..=3 {
        if i < 3 {
            assert_eq!(
                c.node(i).sql("SELECT v FROM only_here ORDER BY id;").trim(),
                "held\nwith a book"
            );
        }
        assert_eq!(
            c.node(i)
                .sql("SELECT count(*) FROM Books WHERE id = 900;")
                .trim(),
            "1"
        );
    }
    c.assert_all_alive();
}
