//! Table rebuilds while the cluster runs, made the way migration tools make them (create a new table, copy the
//! rows, drop the old one, rename), with the real `sqlite3` CLI: a rebuild on a node that is behind reverts no
//! newer value and brings back no deleted row; a write made inside the rebuild reaches every node; a rebuild
//! made in separate steps never publishes its temporary table.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

const ITEMS: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT NOT NULL);";

fn count(node: &Node, cond: &str) -> i64 {
    node.sql(&format!("SELECT count(*) FROM items WHERE {cond};"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("count {cond}: {e}"))
}

/// The three nodes hold 300 rows `orig-<id>`.
fn cluster_with_items() -> Cluster {
    let mut c = Cluster::new(Options {
        schema: ITEMS.to_string(),
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    c.node(1).sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO items SELECT i, 'orig-' || i FROM n;",
    );
    let sum = c.converged("items", T);
    assert_eq!(sum.1, 300, "{sum:?}");
    c
}

/// The data loss: node 3 is paused behind (a change names a column it does not have yet) while nodes 1
/// and 2 update and delete rows; then node 3's migration rebuilds the table. Its backfill (every row, as node 3
/// had them) must not win over the newer updates, nor bring the deleted rows back. A row node 3 writes inside
/// the rebuild's own transaction (no triggers exist yet) still reaches every node.
#[test]
fn a_rebuild_on_a_node_behind_reverts_nothing_and_resurrects_nothing() {
    let c = cluster_with_items();
    for i in [1, 2] {
        c.node(i).sql("ALTER TABLE items ADD COLUMN extra TEXT;");
    }
    c.node(1)
        .sql("INSERT INTO items (id, v, extra) VALUES (10000, 'new', 'x');");
    c.node(3).wait_paused_on("items", Some("extra"), T);

    c.node(1)
        .sql("UPDATE items SET v = 'by-1' WHERE id <= 100;");
    c.node(2)
        .sql("DELETE FROM items WHERE id BETWEEN 101 AND 150;");
    c.node(2)
        .sql("UPDATE items SET v = 'by-2' WHERE id BETWEEN 151 AND 200;");
    // Nodes 1 and 2 have each other's changes: they are in the stream, behind node 3's position.
    c.eventually(T, "nodes 1 and 2 agree", || {
        count(c.node(1), "v = 'by-2'") == 50
            && count(c.node(2), "v = 'by-1'") == 100
            && count(c.node(1), "id BETWEEN 101 AND 150") == 0
    });
    assert_eq!(
        count(c.node(3), "v LIKE 'orig-%'"),
        300,
        "node 3 must still be behind"
    );

    // Node 3 migrates: the table is rebuilt with the new column (Django's way), and a row is written in the
    // same transaction, before any trigger exists on the new table.
    let mark = c.node(3).log_mark();
    c.node(3).sql(
        "BEGIN;
         CREATE TABLE new__items (id INTEGER PRIMARY KEY, v TEXT NOT NULL, extra TEXT);
         INSERT INTO new__items (id, v, extra) SELECT id, v, NULL FROM items;
         DROP TABLE items;
         ALTER TABLE new__items RENAME TO items;
         INSERT INTO items (id, v, extra) VALUES (20000, 'written in the rebuild', 'r');
         COMMIT;",
    );
    let sum = c.converged("items", T);
    for node in &c.nodes {
        let id = node.id;
        assert_eq!(
            count(node, "id <= 100 AND v = 'by-1'"),
            100,
            "node {id}: updates of node 1 reverted"
        );
        assert_eq!(
            count(node, "id BETWEEN 101 AND 150"),
            0,
            "node {id}: deleted rows came back"
        );
        assert_eq!(
            count(node, "id BETWEEN 151 AND 200 AND v = 'by-2'"),
            50,
            "node {id}: updates of node 2 reverted"
        );
        assert_eq!(
            count(node, "id BETWEEN 201 AND 300 AND v = 'orig-' || id"),
            100,
            "node {id}"
        );
        assert_eq!(count(node, "id = 10000 AND extra = 'x'"), 1, "node {id}");
        assert_eq!(
            count(node, "id = 20000 AND extra = 'r'"),
            1,
            "node {id}: the write inside the rebuild"
        );
        assert!(
            !node.tables().iter().any(|t| t.starts_with("new__")),
            "node {id}: {:?}",
            node.tables()
        );
    }
    assert_eq!(sum.1, 300 - 50 + 2, "{sum:?}");
    let log = c.node(3).log_since(mark);
    assert!(
        log.contains("existing rows are published as a backfill"),
        "node 3 did not backfill the rebuilt table:\n{log}"
    );
    // The backfill lost where the stream had newer changes: on every node, the same rows.
    for node in &c.nodes {
        node.eventually(T, "the superseded backfill rows are said", || {
            !node
                .log_lines_with(&["backfill rows superseded"])
                .is_empty()
        });
    }
}

/// Alembic's batch mode commits its steps separately: the copy into `_alembic_tmp_<table>` first, then the
/// drop and the rename. Capture is installed again between the two (forced by waiting for it): the temporary
/// table stays on its node, so no peer ever pauses on it, and the rebuilt table goes on replicating.
#[test]
fn a_rebuild_in_separate_steps_never_publishes_its_temporary_table() {
    let c = cluster_with_items();
    let mark = c.node(3).log_mark();
    c.node(3).sql(
        "CREATE TABLE _alembic_tmp_items (id INTEGER PRIMARY KEY, v TEXT NOT NULL, extra TEXT);
         INSERT INTO _alembic_tmp_items (id, v) SELECT id, v FROM items;",
    );
    c.node(3).eventually(T, "node 3 re-installed capture", || {
        c.node(3)
            .log_since(mark)
            .contains("schema changed; capture re-installed")
    });
    // A write of node 1 meanwhile, and one of node 3 after the install.
    c.node(1)
        .sql("UPDATE items SET v = 'between the steps' WHERE id = 1;");
    c.node(3)
        .sql("UPDATE items SET v = 'node 3 between' WHERE id = 2;");
    c.eventually(T, "the writes between the steps reached every node", || {
        c.nodes.iter().all(|n| {
            count(n, "id = 1 AND v = 'between the steps'") == 1
                && count(n, "id = 2 AND v = 'node 3 between'") == 1
        })
    });
    c.node(3).sql(
        "BEGIN;
         DROP TABLE items;
         ALTER TABLE _alembic_tmp_items RENAME TO items;
         COMMIT;",
    );
    for i in [1, 2] {
        c.node(i).sql("ALTER TABLE items ADD COLUMN extra TEXT;");
    }
    c.node(1)
        .sql("INSERT INTO items (id, v, extra) VALUES (5000, 'after', 'a');");
    c.node(3)
        .sql("INSERT INTO items (id, v, extra) VALUES (5001, 'after 3', 'b');");
    let sum = c.converged("items", T);
    assert_eq!(sum.1, 302, "{sum:?}");
    for node in &c.nodes {
        assert!(
            node.log_lines_with(&["changes held", "_alembic_tmp_"])
                .is_empty(),
            "node {} paused on the temporary table",
            node.id
        );
        assert!(
            !node.tables().iter().any(|t| t.starts_with("_alembic_tmp_")),
            "node {}: {:?}",
            node.id,
            node.tables()
        );
        assert_eq!(
            count(node, "id = 1 AND v = 'between the steps'"),
            1,
            "node {}",
            node.id
        );
        // Node 3's own write between the steps went to the old table and was lost there by the rebuild, but it
        // was published: the stream's newer value stays everywhere, node 3 included.
        assert_eq!(
            count(node, "id = 2 AND v = 'node 3 between'"),
            1,
            "node {}",
            node.id
        );
    }
}
