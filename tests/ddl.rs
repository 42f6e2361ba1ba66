//! Schema changes replicated (`[ddl] enabled = true`): a change made on one node with the real `sqlite3` CLI, or
//! a table rebuilt by the real `sqlite-utils transform`, reaches every node while applications write on all of
//! them, and every node ends with the same schema and the same rows. A node with the feature off keeps today's
//! behaviour: it holds what needs the change until its own migration. Application writes go through
//! `Node::sql`, which fails the test when SQLite refuses one.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);
const DDL_ON: &str = "[ddl]\nenabled = true\n";

/// Wait until every node's schema is node 1's, and return it.
fn same_schema(c: &Cluster, what: &str) -> String {
    c.same_schema(T, what)
}

/// Every node writes a row into Books (the applications going on between migration steps).
fn write_everywhere(c: &Cluster, step: &str) {
    for i in 1..=c.nodes.len() {
        c.node(i).sql(&format!(
            "INSERT INTO Books (title, author, publication_year) VALUES ('{step} on {i}', 'A', 2000);"
        ));
    }
}

/// Three nodes with schema changes replicated and `shards` shards, running.
fn running_with_ddl(shards: u32) -> Cluster {
    let mut c = Cluster::new(Options {
        extra_toml: DDL_ON.into(),
        shards,
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(T);
    c
}

#[test]
fn every_kind_of_schema_change_made_on_one_node_reaches_the_others() {
    let c = running_with_ddl(2);
    let n1 = c.node(1);

    n1.sql(
        "CREATE TABLE Publishers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, city TEXT DEFAULT 'x, y');
         CREATE INDEX publishers_city ON Publishers(city);
         CREATE VIEW old_books AS SELECT title FROM Books WHERE publication_year < 1950;
         CREATE TRIGGER books_year AFTER INSERT ON Books WHEN NEW.publication_year IS NULL
           BEGIN UPDATE Books SET publication_year = 0 WHERE id = NEW.id; END;",
    );
    let s = same_schema(&c, "the new table, index, view and trigger on every node");
    assert!(
        s.contains("table Publishers") && s.contains("trigger books_year"),
        "{s}"
    );
    write_everywhere(&c, "created");
    for i in 1..=3 {
        c.node(i).sql(&format!(
            "INSERT INTO Publishers (id, name) VALUES ({i}, 'publisher {i}');"
        ));
    }
    c.converged("Publishers", T);

    n1.sql("ALTER TABLE Books ADD COLUMN isbn TEXT DEFAULT '';");
    same_schema(&c, "the added column on every node");
    // Each node writes the new column once it has it.
    for i in 1..=3 {
        c.node(i).sql(&format!(
            "INSERT INTO Books (title, author, publication_year, isbn) VALUES ('isbn {i}', 'B', 2001, 'isbn-{i}');"
        ));
    }
    c.converged("Books", T);

    n1.sql("ALTER TABLE Publishers RENAME COLUMN city TO town;");
    same_schema(&c, "the renamed column on every node");
    write_everywhere(&c, "renamed column");
    n1.sql("UPDATE Publishers SET town = 'Oslo' WHERE id = 2;");

    n1.sql("DROP INDEX publishers_city; ALTER TABLE Publishers DROP COLUMN town;");
    same_schema(&c, "the dropped column on every node");

    n1.sql("ALTER TABLE Publishers RENAME TO Houses;");
    same_schema(&c, "the renamed table on every node");
    for i in 1..=3 {
        c.node(i).sql(&format!(
            "INSERT INTO Houses (id, name) VALUES ({}, 'house {i}');",
            10 + i
        ));
    }
    c.converged("Houses", T);

    n1.sql("PRAGMA user_version = 42;");
    let s = same_schema(&c, "user_version on every node");
    assert!(s.trim_end().ends_with("42"), "{s}");

    n1.sql("DROP VIEW old_books; DROP TRIGGER books_year; DROP TABLE Houses;");
    let s = same_schema(&c, "the drops on every node");
    assert!(!s.contains("Houses") && !s.contains("old_books"), "{s}");
    write_everywhere(&c, "after the drops");

    let sums = c.converged_all(T);
    assert!(sums.contains_key("Books"), "{sums:?}");
    c.assert_verified(1);
    c.assert_all_alive();
}

#[test]
fn a_table_rebuilt_by_sqlite_utils_on_one_node_reaches_the_others_with_its_rows() {
    let mut c = Cluster::new(Options {
        extra_toml: DDL_ON.into(),
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(T);
    write_everywhere(&c, "before");
    c.converged("Books", T);
    // The rebuild sqlite-utils makes: a new table with the new types, the rows copied, the old one dropped and
    // the new one renamed into place.
    let out = std::process::Command::new("sqlite-utils")
        .args(["transform"])
        .arg(&c.node(1).db)
        .args([
            "Books",
            "--type",
            "publication_year",
            "text",
            "--not-null",
            "author",
        ])
        .output()
        .expect("run sqlite-utils (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", output_text(&out));
    let s = same_schema(&c, "the rebuilt table on every node");
    assert!(s.contains("\"publication_year\" TEXT"), "{s}");
    write_everywhere(&c, "after");
    c.converged_all(T);
    c.assert_verified(1);
    for i in 1..=3 {
        assert_eq!(
            c.node(i)
                .sql("SELECT typeof(publication_year) FROM Books WHERE title = '1984';")
                .trim(),
            "text",
            "node {i}"
        );
    }
    c.assert_all_alive();
}

#[test]
fn a_node_with_the_feature_off_holds_until_its_own_migration() {
    let mut c = Cluster::new(Options {
        per_node_toml: vec![DDL_ON.into(), DDL_ON.into(), String::new()],
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(T);
    c.node(1).sql(
        "ALTER TABLE Books ADD COLUMN rating INTEGER;
         INSERT INTO Books (title, author, publication_year, rating) VALUES ('Rated', 'R', 2000, 5);",
    );
    c.eventually(T, "node 2 has the column", || {
        c.node(2).schema().contains("rating INTEGER")
    });
    c.node(3).wait_paused_on("Books", Some("rating"), T);
    assert!(!c.node(3).schema().contains("rating"));
    // The cluster's schema report names the node that needs its own migration.
    let report = c.eventually(T, "the schema report names node 3", || {
        let out = c
            .node(1)
            .command()
            .arg("-schema-status-cluster")
            .output()
            .expect("run harmonylite");
        let text = output_text(&out);
        text.contains("Schema changes are not replicated to node 3 ")
            .then_some(text)
    });
    assert!(report.contains("NOT consistent"), "{report}");
    c.node(3)
        .sql("ALTER TABLE Books ADD COLUMN rating INTEGER;");
    c.converged("Books", T);
    assert_eq!(
        c.node(3)
            .sql("SELECT rating FROM Books WHERE title = 'Rated';")
            .trim(),
        "5"
    );
    c.assert_all_alive();
}

/// The rows of `__harmonylite__quarantine` on `node`.
fn quarantined(node: &Node) -> String {
    node.sql("SELECT count(*) FROM __harmonylite__quarantine;")
        .trim()
        .to_string()
}

#[test]
fn two_nodes_adding_columns_to_one_table_at_the_same_moment_converge() {
    let c = running_with_ddl(2);
    // Each node writes its own rows (ids of its own): rows written on two nodes at once collide by key, which
    // is the conflict journal's matter, not this test's.
    let insert = |node: usize, id: u32, what: &str| {
        c.node(node).sql(&format!(
            "INSERT INTO Books (id, title, author, publication_year) VALUES ({id}, '{what} on {node}', 'A', 2000);"
        ));
    };
    for i in 1..=3 {
        insert(i, 100 * i as u32, "before");
    }
    c.converged("Books", T);
    // Two migrations started together with the real `sqlite3` CLI, each writing its new column at once.
    let (n1, n2) = (c.node(1), c.node(2));
    std::thread::scope(|s| {
        let one = s.spawn(|| {
            n1.sql(
                "ALTER TABLE Books ADD COLUMN isbn TEXT;
                 INSERT INTO Books (id, title, author, publication_year, isbn) VALUES (101, 'isbn on 1', 'A', 2001, '978-1');",
            )
        });
        let two = s.spawn(|| {
            n2.sql(
                "ALTER TABLE Books ADD COLUMN rating INTEGER DEFAULT 3;
                 INSERT INTO Books (id, title, author, publication_year, rating) VALUES (201, 'rated on 2', 'B', 2002, 5);",
            )
        });
        one.join().expect("node 1's migration");
        two.join().expect("node 2's migration");
    });
    let s = same_schema(&c, "both columns on every node");
    assert!(
        s.contains("isbn TEXT") && s.contains("rating INTEGER DEFAULT 3"),
        "{s}"
    );
    for i in 1..=3 {
        insert(i, 100 * i as u32 + 2, "after");
    }
    c.node(3)
        .sql("UPDATE Books SET isbn = '978-3', rating = 4 WHERE id = 302;");
    c.converged("Books", T);
    assert_eq!(
        c.node(1).sql(
            "SELECT id, title, isbn, rating FROM Books WHERE id > 100 AND id % 100 > 0 ORDER BY id;"
        ),
        "101|isbn on 1|978-1|3\n102|after on 1||3\n201|rated on 2||5\n202|after on 2||3\n\
         302|after on 3|978-3|4\n"
    );
    for i in 1..=3 {
        assert_eq!(quarantined(c.node(i)), "0", "node {i}");
    }
    c.assert_verified(1);
    c.assert_all_alive();
}

/// Node 3 made a table by hand before it turned schema replication on; node 1's migration then creates a table
/// of that name with another shape. On node 3 the change does not apply: it is held there (with the rows written
/// to the table, in every shard) and said at WARN with the statement and the reason, shown in `/health`,
/// `-status` and the metrics, kept across a restart, while everything else replicates. Node 3's operator drops
/// the hand-made table: that fix stays local (nodes 1 and 2 keep theirs), the held change applies, and every
/// node ends with one schema and the same rows.
#[test]
fn a_schema_change_that_does_not_apply_to_one_node_is_held_there_until_fixed() {
    let (m3, h3) = (free_port(), free_port());
    let mut c = Cluster::new(Options {
        per_node_toml: vec![
            DDL_ON.into(),
            DDL_ON.into(),
            format!(
                "[prometheus]\nenable = true\nbind = \"127.0.0.1:{m3}\"\n\n\
                 [health_check]\nenable = true\nbind = \"127.0.0.1:{h3}\"\n"
            ),
        ],
        shards: 2,
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(T);
    c.node(3)
        .sql("CREATE TABLE Reviews (id INTEGER PRIMARY KEY, body TEXT);");
    c.node_mut(3).add_toml(DDL_ON);
    c.node_mut(3).restart(Duration::from_secs(90));

    c.node(1).sql(
        "CREATE TABLE Reviews (id INTEGER PRIMARY KEY, book TEXT NOT NULL, stars INTEGER);
         INSERT INTO Reviews VALUES (1, 'Dune', 5);",
    );
    for (id, book) in [(2, "Emma"), (3, "Ulysses"), (4, "Beloved")] {
        c.node(1)
            .sql(&format!("INSERT INTO Reviews VALUES ({id}, '{book}', 4);"));
    }
    c.eventually(T, "node 2 has node 1's reviews", || {
        c.node(2)
            .try_sql("SELECT count(*) FROM Reviews;")
            .is_ok_and(|n| n.trim() == "4")
    });
    let warn = c.eventually(T, "node 3 holds the schema change", || {
        c.node(3)
            .log_lines_with(&[" WARN ", "changes held", "schema change", "reviews"])
            .pop()
    });
    assert!(
        warn.contains("book TEXT NOT NULL")
            && warn.contains("table Reviews (created on another node)"),
        "the statement and the reason: {warn}"
    );
    // Everything else goes on.
    c.book_reaches_the_others(1, "While reviews are held, from 1");
    c.book_reaches_the_others(3, "While reviews are held, from 3");
    assert_eq!(c.node(3).sql("SELECT count(*) FROM Reviews;").trim(), "0");
    let health = eventually(T, "health shows the held change", || {
        http_get(h3, "/health").filter(|r| r.body.contains("reviews"))
    });
    assert!(
        health.body.contains("does not apply to this node's schema"),
        "{}",
        health.body
    );
    eventually(T, "the held gauge of reviews", || {
        http_get(m3, "/metrics").filter(|r| {
            r.body.lines().any(|l| {
                l.starts_with("harmonylite_held_changes{") && l.contains("table=\"reviews\"")
            })
        })
    });
    c.eventually(T, "-status shows the held change", || {
        output_text(&c.node(3).command().arg("-status").output().unwrap())
            .contains("does not apply")
    });

    // Held across a restart.
    c.node_mut(3).kill9();
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "held again after the restart", || {
        c.node(3)
            .log_lines_with(&[" WARN ", "changes held", "schema change", "reviews"])
            .len()
            >= 2
    });

    // The fix: node 3's own table goes; that stays on node 3.
    c.node(3).sql("DROP TABLE Reviews;");
    c.eventually(T, "node 3 has node 1's reviews", || {
        c.node(3)
            .try_sql("SELECT count(*) FROM Reviews;")
            .ok()?
            .trim()
            .eq("4")
            .then_some(())
    });
    assert!(
        !c.node(3)
            .log_lines_with(&["this node's fix, kept local"])
            .is_empty()
    );
    let s = same_schema(&c, "node 1's Reviews on every node");
    assert!(s.contains("book TEXT NOT NULL"), "{s}");
    c.converged_all(T);
    for i in 1..=3 {
        assert_eq!(
            c.node(i)
                .sql("SELECT group_concat(book) FROM (SELECT book FROM Reviews ORDER BY id);")
                .trim(),
            "Dune,Emma,Ulysses,Beloved",
            "node {i}"
        );
        assert_eq!(quarantined(c.node(i)), "0", "node {i}");
    }
    c.assert_verified(1);
    c.assert_all_alive();
}

/// Node 2 creates a table while it has not yet received the table of that name node 1 created (its process is
/// stopped meanwhile, so its change is sent after node 1's). In stream order node 1's comes first: nodes 1 and 3
/// quarantine node 2's, and node 2, which cannot take node 1's without losing its own table, holds it until its
/// operator drops that table; then every node has node 1's table and the same rows.
#[test]
fn a_table_created_on_two_nodes_at_once_ends_as_the_first_in_stream_order_everywhere() {
    let c = running_with_ddl(1);
    c.node(2).signal(Signal::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.node(2).sql(
            "CREATE TABLE Shelves (id INTEGER PRIMARY KEY, label TEXT NOT NULL, floor INTEGER);",
        );
        c.node(1)
            .sql("CREATE TABLE Shelves (id INTEGER PRIMARY KEY, name TEXT);");
        // Authors has a `name TEXT` column too: look at Shelves alone.
        c.eventually(T, "node 3 has node 1's Shelves", || {
            c.node(3)
                .schema()
                .contains("table Shelves: CREATE TABLE Shelves (id INTEGER PRIMARY KEY, name TEXT)")
        });
    }));
    c.node(2).signal(Signal::SIGCONT);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let held = c.eventually(T, "node 2 holds node 1's table", || {
        c.node(2)
            .log_lines_with(&[" WARN ", "changes held", "schema change", "shelves"])
            .pop()
    });
    assert!(
        held.contains("Shelves (id INTEGER PRIMARY KEY, name TEXT)"),
        "{held}"
    );
    for i in [1, 3] {
        c.eventually(T, "node 2's table quarantined on nodes 1 and 3", || {
            quarantined(c.node(i)) == "1"
        });
    }
    c.book_reaches_the_others(2, "While node 2 holds Shelves");
    c.node(2).sql("DROP TABLE Shelves;");
    let s = same_schema(&c, "node 1's Shelves on every node");
    assert!(
        s.contains("table Shelves: CREATE TABLE Shelves (id INTEGER PRIMARY KEY, name TEXT)")
            && !s.contains("label"),
        "{s}"
    );
    for i in 1..=3 {
        c.node(i).sql(&format!(
            "INSERT INTO Shelves (id, name) VALUES ({i}, 'shelf {i}');"
        ));
    }
    c.converged_all(T);
    assert_eq!(quarantined(c.node(2)), "0");
    c.assert_verified(1);
    c.assert_all_alive();
}

/// One row written on two nodes at once while their schemas differ: node 1 adds a column and sets it on the row;
/// node 2 (its process stopped, so it has neither yet) updates the same row, and its change goes out after node
/// 1's, without the column. In stream order node 2's write is the later one but leaves the column as node 1 set
/// it: every node, node 2 too (which skips node 1's older write for its own), ends with node 2's title and node
/// 1's value.
#[test]
fn one_row_written_on_two_nodes_while_their_schemas_differ_converges() {
    let c = running_with_ddl(1);
    c.node(1).sql(
        "INSERT INTO Books (id, title, author, publication_year) VALUES (500, 'Same row', 'A', 2000);",
    );
    c.converged("Books", T);
    c.node(2).signal(Signal::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.node(1).sql(
            "ALTER TABLE Books ADD COLUMN isbn TEXT;
             UPDATE Books SET isbn = '978-1', title = 'from 1' WHERE id = 500;",
        );
        c.eventually(T, "node 3 has node 1's write", || {
            c.node(3)
                .try_sql("SELECT isbn FROM Books WHERE id = 500;")
                .is_ok_and(|v| v.trim() == "978-1")
        });
        c.node(2)
            .sql("UPDATE Books SET title = 'from 2' WHERE id = 500;");
    }));
    c.node(2).signal(Signal::SIGCONT);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    c.same_schema(T, "the column on every node");
    c.converged_all(T);
    let row = c
        .node(2)
        .sql("SELECT title, isbn FROM Books WHERE id = 500;");
    // Node 2 sends its write without the column when it publishes before applying node 1's change (the usual
    // order); after it, its write carries the column as node 2 had it (empty), and that is the later value.
    assert!(
        row.trim() == "from 2|978-1" || row.trim() == "from 2|",
        "{row}"
    );
    eprintln!("row 500 on every node: {}", row.trim());
    c.assert_verified(1);
    c.assert_all_alive();
}
