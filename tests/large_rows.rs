//! Large rows on real clusters: values bigger than a NATS message (BLOB or TEXT, up to 64 MB, in rowid and
//! WITHOUT ROWID tables) reach every node byte for byte and do not hold up what is written after them; a
//! transaction holding such rows is never seen in part on a peer; an existing NATS whose `max_payload` is
//! 512 KB carries a 4 MB row; a node killed while it publishes a 64 MB row publishes it whole after its restart;
//! two nodes writing large values to one row at once converge; and a change that can never be published (a key
//! larger than a message) is set aside (logged, counted, recorded in `__harmonylite__unpublished`) while later
//! changes go on, then replicates once the operator has raised the limits and retried it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

/// How long nodes may take to start.
const START: Duration = Duration::from_secs(90);
/// How long rows of tens of megabytes may take to reach every node.
const LARGE: Duration = Duration::from_secs(300);
/// How long small changes may take to reach every node.
const T: Duration = Duration::from_secs(60);

/// A table of files and a table of small notes.
const FILES: &str = "CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT, data BLOB);
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);";

/// The byte length of each row's value, by its label read as an integer id: compared with what was written.
fn lengths(rows: &BTreeMap<String, Digest>) -> Vec<(i64, usize)> {
    rows.iter()
        .map(|(id, d)| (id.parse().unwrap(), d.bytes as usize))
        .collect()
}

/// The reproduction, as a user would write it with the `sqlite3` CLI: rows of 0.5, 2, 8 and 30 MB of
/// random bytes, then a small row in another table. Every node ends with every blob byte for byte, and the
/// small row written after them arrives too (before large values travelled in pieces, the 2 MB row wedged the
/// publisher and nothing after it replicated).
#[test]
fn rows_of_half_a_megabyte_to_thirty_megabytes_replicate_and_later_writes_follow() {
    let c = Cluster::start(Options {
        schema: FILES.into(),
        ..Default::default()
    });
    let sizes = [(1, MB / 2), (2, 2 * MB), (3, 8 * MB), (4, 30 * MB)];
    c.node(1).sql(&format!(
        "{}INSERT INTO notes (id, body) VALUES (1, 'written after the large rows');",
        random_blob_inserts("files", "data", &sizes)
    ));
    let rows = c.converged_rows("files", "id", "data", LARGE);
    assert_eq!(lengths(&rows), sizes);
    assert!(rows.values().all(|d| d.kind == "blob"), "{rows:?}");
    assert_eq!(c.converged("notes", T).1, 1);
}

/// One transaction of two 64 MB rows and 100 small rows in another table: a reader on node 2, polling from its
/// own connection the whole time, sees the counts of before or of after the transaction and nothing between.
#[test]
fn a_transaction_of_two_64_mb_rows_and_100_small_ones_is_never_seen_in_part_on_a_peer() {
    let c = Cluster::start(Options {
        schema: FILES.into(),
        ..Default::default()
    });
    let counts = "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM notes)";
    let reader = Sampler::start(&c.node(2).db, counts, Duration::from_millis(5));
    let notes: String = (1..=100)
        .map(|i| format!("INSERT INTO notes (id, body) VALUES ({i}, 'note {i}');\n"))
        .collect();
    let sizes = [(1, 64 * MB), (2, 64 * MB)];
    c.node(1).sql(&format!(
        "BEGIN;\n{}{notes}COMMIT;",
        random_blob_inserts("files", "data", &sizes)
    ));
    assert_eq!(
        lengths(&c.converged_rows("files", "id", "data", LARGE)),
        sizes
    );
    assert_eq!(c.converged("notes", T).1, 100);
    c.eventually(T, "node 2's reader sees the transaction", || {
        reader.count_of(&["2", "100"]) > 0
    });
    let seen = reader.stop();
    eprintln!("node 2's reader saw (files, notes): {seen:?}");
    let (before, after) = (vec!["0", "0"], vec!["2", "100"]);
    assert!(
        seen.keys().all(|r| *r == before || *r == after),
        "node 2's reader saw (files, notes) other than before or after the transaction: {seen:?}"
    );
    assert!(seen.contains_key(&before.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
}

/// A 3.4 MB TEXT value full of multi-byte UTF-8, and a large value in a WITHOUT ROWID table, arrive byte for
/// byte with their storage class; then a large value replaced by another, a large value replaced by a small
/// one, a large row deleted and a small value grown large in the WITHOUT ROWID table; no node keeps pieces.
#[test]
fn large_text_without_rowid_values_updates_and_deletes_arrive_byte_exact() {
    let c = Cluster::start(Options {
        schema: format!(
            "{FILES}\nCREATE TABLE docs (owner TEXT, name TEXT, body, PRIMARY KEY (owner, name)) WITHOUT ROWID;"
        ),
        ..Default::default()
    });
    // About 3.4 MB of text with two-, three- and four-byte UTF-8 characters all through it.
    let text = "replace(replace(replace(hex(randomblob(1250000)), 'A', 'ä'), 'B', '€'), 'C', '😀')";
    c.node(1).sql(&format!(
        "{}INSERT INTO notes (id, body) VALUES (1, {text});
         INSERT INTO docs (owner, name, body) VALUES ('ann', 'report', randomblob({})), ('ann', 'memo', 'short');",
        random_blob_inserts("files", "data", &[(1, 3 * MB), (2, 3 * MB), (3, 3 * MB)]),
        5 * MB
    ));
    let notes = c.converged_rows("notes", "id", "body", LARGE);
    assert!(
        notes["1"].kind == "text" && notes["1"].bytes > 3 * MB as u64,
        "{notes:?}"
    );
    let docs = c.converged_rows("docs", "owner || '/' || name", "body", LARGE);
    assert_eq!(docs["ann/report"].bytes, 5 * MB as u64, "{docs:?}");
    let files = c.converged_rows("files", "id", "data", LARGE);
    assert_eq!(lengths(&files), [(1, 3 * MB), (2, 3 * MB), (3, 3 * MB)]);

    // Large to another large value, large to small, a large row deleted, small to large in WITHOUT ROWID.
    c.node(1).sql(&format!(
        "UPDATE files SET data = randomblob({}) WHERE id = 1;
         UPDATE files SET data = x'0102' WHERE id = 2;
         DELETE FROM files WHERE id = 3;
         UPDATE docs SET body = randomblob({}) WHERE owner = 'ann' AND name = 'memo';",
        4 * MB,
        2 * MB
    ));
    let updated = c.converged_rows("files", "id", "data", LARGE);
    assert_eq!(lengths(&updated), [(1, 4 * MB), (2, 2)]);
    assert_ne!(updated["1"].sha256, files["1"].sha256);
    let docs = c.converged_rows("docs", "owner || '/' || name", "body", LARGE);
    assert_eq!(docs["ann/memo"].bytes, 2 * MB as u64, "{docs:?}");
    c.no_pieces_staged(T);
}

/// Nodes on an existing three-server NATS whose `max_payload` is 512 KB (below the default message size) keep
/// their messages under it: a 4 MB row reaches every node, and no publish is refused for its size.
#[test]
fn an_existing_nats_whose_max_payload_is_512_kb_carries_a_4_mb_row() {
    let servers = NatsServer::cluster("max_payload: 524288\n");
    let mut c = Cluster::on_nats(
        &servers,
        Options {
            schema: FILES.into(),
            ..Default::default()
        },
    );
    c.start_all();
    c.wait_all_running(START);
    c.node(1)
        .sql(&random_blob_inserts("files", "data", &[(1, 4 * MB)]));
    assert_eq!(
        lengths(&c.converged_rows("files", "id", "data", LARGE)),
        [(1, 4 * MB)]
    );
    for n in &c.nodes {
        let refused = n.log_lines_with(&["payload size exceeded"]);
        assert!(refused.is_empty(), "node {}: {refused:?}", n.id);
    }
}

/// Node 1 is killed (`kill -9`) once the stream shows its 64 MB row's pieces arriving and before all of them
/// are there; after its restart the row reaches every node whole, once, with the small rows around it, `-verify`
/// finds every node identical, and no node keeps pieces of the interrupted publish.
#[test]
fn a_node_killed_while_publishing_a_64_mb_row_publishes_it_whole_after_its_restart() {
    let mut c = Cluster::start(Options {
        schema: format!("{FILES}\nCREATE TABLE uploads (name TEXT, data BLOB);"),
        ..Default::default()
    });
    c.node(1)
        .sql("INSERT INTO notes (id, body) VALUES (1, 'before');");
    c.converged("notes", T);
    let stream = c.node(1).loaded_config().stream_name(1);
    let before = c.node(1).watch_stream(&stream, T, |_| true);
    c.node(1).sql(&format!(
        "BEGIN;
         INSERT INTO uploads (name, data) VALUES ('large', randomblob({}));
         INSERT INTO notes (id, body) VALUES (2, 'with the large row');
         COMMIT;",
        64 * MB
    ));
    let begun = c
        .node(1)
        .watch_stream(&stream, LARGE, |s| s.last_sequence > before.last_sequence);
    c.node_mut(1).kill9();
    let grown = begun.bytes.saturating_sub(before.bytes);
    assert!(
        grown < 64 * MB as u64,
        "the stream showed nothing of the 64 MB row until {grown} bytes were on it: no moment to kill the \
         node in the middle of its publish"
    );
    eprintln!("node 1 killed with {grown} bytes of its publish on the stream");

    c.node_mut(1).start_and_wait(START);
    c.node(1)
        .sql("INSERT INTO notes (id, body) VALUES (3, 'after the restart');");
    let rows = c.converged_rows("uploads", "rowid", "data", LARGE);
    assert_eq!(lengths(&rows), [(1, 64 * MB)]);
    assert_eq!(c.converged("uploads", T).1, 1);
    assert_eq!(c.converged("notes", T).1, 3);
    c.assert_verified(2);
    c.no_pieces_staged(T);
}

/// A row whose TEXT key alone (2 MB) cannot fit any message is set aside on node 1 (a row in
/// `__harmonylite__unpublished` naming its table, an ERROR, `harmonylite_unpublished_rows` 1) while a row written
/// after it replicates. With `max_payload` and `max_message_bytes` raised on every node and the operator's
/// retry run on node 1, it reaches every node.
#[test]
fn a_row_whose_key_outgrows_a_message_is_set_aside_and_replicates_once_retried_under_higher_limits()
{
    let mut c = Cluster::new(Options {
        schema: format!("{BOOKS}\nCREATE TABLE tags (k TEXT PRIMARY KEY, v INTEGER);"),
        ..Default::default()
    });
    c.node_mut(1).serve_metrics();
    c.start_all();
    c.wait_all_running(START);
    // A 2 MB key: no message of the default limits can hold it.
    c.node(1)
        .sql("INSERT INTO tags (k, v) VALUES (hex(randomblob(1000000)), 1);");
    c.book_reaches_the_others(1, "Written after the large key");
    let node = c.node(1);
    let set_aside = node.eventually(T, "one change set aside", || {
        Some(node.set_aside()).filter(|s| s.len() == 1)
    });
    assert_eq!(set_aside[0].table_name, "tags", "{set_aside:?}");
    assert!(!set_aside[0].reason.trim().is_empty(), "{set_aside:?}");
    node.eventually(T, "an ERROR line saying the change was set aside", || {
        !node.log_lines_with(&[" ERROR ", "set aside"]).is_empty()
    });
    node.eventually(T, "harmonylite_unpublished_rows 1", || {
        node.metric("harmonylite_unpublished_rows") == Some(1.0)
    });
    for n in &c.nodes[1..] {
        assert_eq!(n.sql("SELECT count(*) FROM tags;").trim(), "0");
    }

    assert!(c.stop_all().iter().all(|s| *s == Some(0)));
    for n in &mut c.nodes {
        n.add_toml(
            "[nats]\nmax_payload = 8388608\n[replication_log]\nmax_message_bytes = 4194304\n",
        );
    }
    c.start_all();
    c.wait_all_running(START);
    c.node(1).retry_set_aside(set_aside[0].id);
    let tags = c.converged_rows("tags", "v", "k", T);
    assert_eq!(lengths(&tags), [(1, 2_000_000)]);
    assert!(c.node(1).set_aside().is_empty());
}

/// Nodes 1 and 2 replace one row's value with a large value of their own at the same moment: every node ends
/// with the same one, and once each writer has published again no node keeps the pieces of the value that
/// lost.
#[test]
fn large_values_written_to_one_row_on_two_nodes_at_once_converge() {
    let c = Cluster::start(Options {
        schema: FILES.into(),
        ..Default::default()
    });
    c.node(1)
        .sql("INSERT INTO files (id, name) VALUES (1, 'shared');");
    c.converged("files", T);
    let writers: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let db = c.node(i).db.clone();
            std::thread::spawn(move || {
                sqlite3(
                    &db,
                    &format!(
                        "UPDATE files SET data = randomblob({}) WHERE id = 1;",
                        (4 + i) * MB
                    ),
                )
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let rows = c.converged_rows("files", "id", "data", LARGE);
    assert!(
        [5 * MB, 6 * MB].contains(&(rows["1"].bytes as usize)),
        "{rows:?}"
    );
    // A later pass of each writer lets every node drop the pieces of the value that lost.
    for i in [1, 2] {
        c.node(i).sql(&format!(
            "INSERT INTO notes (id, body) VALUES ({i}, 'later');"
        ));
    }
    assert_eq!(c.converged("notes", T).1, 2);
    c.no_pieces_staged(T);
}
