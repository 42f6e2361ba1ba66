//! Snapshots on real clusters with the default store (the NATS object store): the demo's snapshot section, a
//! node that was away longer than the stream keeps, a fresh node, a corrupt snapshot, and readers during a
//! restore.

mod support;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

fn save_snapshot(node: &Node) -> Output {
    node.command()
        .arg("-save-snapshot")
        .output()
        .expect("run harmonylite")
}

use support::output_text as text;

fn count(node: &Node, sql: &str) -> i64 {
    node.sql(sql).trim().parse().unwrap_or(-1)
}

/// `n` single-statement transactions from `sql(k)` on nodes 1 and 2 in turn, in batches of 40 after each of
/// which both have everything (counted in `table`: a table's name, or one with a `WHERE` clause): the running
/// nodes stay within a small `max_entries`; only the stopped node falls past it.
fn write_while_down(c: &Cluster, n: usize, sql: impl Fn(usize) -> String, table: &str) {
    let want = |c: &Cluster, i: usize| count(c.node(i), &format!("SELECT count(*) FROM {table};"));
    let base = want(c, 1);
    for k in 0..n {
        c.node(1 + k % 2).sql(&sql(k));
        if (k + 1) % 40 == 0 || k + 1 == n {
            let expect = base + k as i64 + 1;
            c.eventually(T, "the running nodes keep up", || {
                want(c, 1) == expect && want(c, 2) == expect
            });
        }
    }
}

/// The seed demo's "Snapshots and Recovery", command by command: stop node 3, save a snapshot with node 1's
/// config while node 1 runs, write on node 1, restart node 3: the row is there.
#[test]
fn demo_snapshot_section() {
    let mut c = Cluster::start(Options::default());
    c.node(1)
        .sql("INSERT INTO Books (title, author, publication_year) VALUES ('Before', 'B', 2001);");
    c.converged("Books", T);
    assert_eq!(c.node_mut(3).stop(), Some(0));
    let o = save_snapshot(c.node(1));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Snapshot saved"), "{}", text(&o));
    assert!(c.node(1).is_alive(), "the running node is not disturbed");
    c.node(1).sql(
        "INSERT INTO Books (title, author, publication_year) VALUES ('Snapshot Test', 'S', 2024);",
    );
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "the row reaches node 3", || {
        count(
            c.node(3),
            "SELECT count(*) FROM Books WHERE title = 'Snapshot Test';",
        ) == 1
    });
    c.converged("Books", T);
}

/// A node away for 200 transactions with `max_entries = 64` finds its next change gone; with a snapshot saved
/// meanwhile it restores, publishes first the write it made just before it was killed, and converges. A
/// reader polling its database during the restore sees the old content or the new, never an error or a mix.
/// Node-local tables (Litestream's) stay each node's own: not in the snapshot, kept through the restore.
#[test]
fn a_node_past_the_cap_restores_a_snapshot_and_keeps_its_last_write() {
    let mut c = Cluster::start(Options {
        extra_toml: "[replication_log]\nmax_entries = 64\n".into(),
        ..Default::default()
    });
    c.converged("Books", T);
    for i in [2, 3] {
        c.node(i).sql(&format!(
            "CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
             INSERT INTO _litestream_seq VALUES (1, {i});"
        ));
    }
    // Its last write, then killed before it could matter whether it was published.
    c.node(3)
        .sql("INSERT INTO Books (id, title, author) VALUES (300, 'last write of node 3', 'N3');");
    c.node_mut(3).kill9();
    write_while_down(
        &c,
        200,
        |k| {
            format!(
                "BEGIN; INSERT INTO Books (id, title, author) VALUES ({}, 'while 3 is down', 'x');
                 INSERT INTO Authors (id, name) VALUES ({}, 'a'); COMMIT;",
                1000 + k,
                1000 + k
            )
        },
        // Node 3's last write may reach the others at any moment (published or not before the kill, and
        // their consumers may be re-electing leaders that were on node 3's server): not counted.
        "Books WHERE id <> 300",
    );
    let o = save_snapshot(c.node(2));
    assert!(o.status.success(), "{}", text(&o));

    // A reader on node 3's database: every read sees the two tables of one state.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let db = c.node(3).db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = open_read_only(&db);
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (b, a): (i64, i64) = conn
                    .query_row(
                        "SELECT (SELECT count(*) FROM Books WHERE id >= 1000), (SELECT count(*) FROM Authors WHERE id >= 1000)",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap_or_else(|e| panic!("a read during the restore failed: {e}"));
                assert_eq!(b, a, "a read saw a mix of two states");
                reads += 1;
            }
            reads
        })
    };
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "node 3 restored", || {
        !c.node(3)
            .log_lines_with(&["snapshot restored into the database"])
            .is_empty()
    });
    let (_, rows) = c.converged("Books", T);
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(rows, 7 + 1 + 200);
    assert_eq!(
        count(c.node(3), "SELECT seq FROM _litestream_seq WHERE id = 1;"),
        3,
        "node 3's own Litestream table after the restore"
    );
    assert_eq!(
        count(
            c.node(1),
            "SELECT count(*) FROM sqlite_master WHERE name = '_litestream_seq';"
        ),
        0
    );
    for i in [2, 3] {
        c.node(i).sql("DROP TABLE _litestream_seq;");
    }
    for i in 1..=3 {
        assert_eq!(
            count(c.node(i), "SELECT count(*) FROM Books WHERE id = 300;"),
            1,
            "node {i} has node 3's last write"
        );
    }
    c.converged_all(T);
    c.assert_all_alive();
}

/// A fresh node with only the schema joins after the changes it needs have left the stream: it restores the
/// latest snapshot and becomes identical to the others.
#[test]
fn a_fresh_node_with_only_the_schema_restores_and_converges() {
    fresh_node_restores_from("");
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn a_fresh_node_restores_from_s3() {
    let server = S3Server::start();
    fresh_node_restores_from(&format!(
        "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = {}\nbucket = \"harmonylite\"\npath = \"snapshots/harmonylite\"\naccess_key = {}\nsecret = {}\n",
        toml_str(&server.endpoint),
        toml_str(&server.access_key),
        toml_str(&server.secret)
    ));
}

#[test]
fn a_fresh_node_restores_from_webdav() {
    let server = WebDavServer::start();
    fresh_node_restores_from(&format!(
        "[snapshot]\nstore = \"webdav\"\n[snapshot.webdav]\nurl = {}\n",
        toml_str(&format!(
            "{}?dir=/snapshots&login={}&secret={}",
            server.url, server.user, server.password
        ))
    ));
}

#[test]
fn a_fresh_node_restores_from_sftp() {
    let server = SftpServer::start();
    fresh_node_restores_from(&format!(
        "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = {}\n",
        toml_str(&format!(
            "sftp://{}:{}@127.0.0.1:{}{}",
            server.user,
            server.password,
            server.port,
            server.home.join("snapshots").display()
        ))
    ));
}

/// The fresh-node case with the snapshot store of `store_toml` (empty: the default NATS object store).
fn fresh_node_restores_from(store_toml: &str) {
    let mut c = Cluster::start(Options {
        extra_toml: format!("[replication_log]\nmax_entries = 64\n{store_toml}"),
        ..Default::default()
    });
    // A single writer: node 1 only skips its own changes coming back, so its database records no applied
    // position; the snapshot's positions come from what its retention entry certifies.
    for k in 0..150 {
        c.node(1).sql(&format!(
            "INSERT INTO Authors (id, name) VALUES ({}, 'n{k}');",
            2000 + k
        ));
    }
    c.converged("Authors", T);
    let o = save_snapshot(c.node(1));
    assert!(o.status.success(), "{}", text(&o));
    assert!(c.node(1).is_alive());
    // Node 3 is replaced by a new machine: a database with only the schema, no state file.
    assert_eq!(c.node_mut(3).stop(), Some(0));
    let fresh = c.fresh_dir("node-3-new");
    c.node_mut(3).use_data_dir(&fresh);
    sqlite3(
        &c.node(3).db,
        "CREATE TABLE Books (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author TEXT NOT NULL, publication_year INTEGER);
         CREATE TABLE Authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, birth_year INTEGER);",
    );
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    c.node(1)
        .sql("INSERT INTO Authors (id, name) VALUES (9999, 'after the fresh node joined');");
    let tables = c.converged_all(T);
    assert_eq!(tables["Authors"].1, 151);
    assert!(
        !c.node(3)
            .log_lines_with(&["snapshot restored into the database"])
            .is_empty(),
        "node 3 came back from the snapshot"
    );
    c.assert_all_alive();
}

/// With `snapshot.interval` set, the node holding the lease takes snapshots by itself; a node away past the
/// cap comes back from one without any command.
#[test]
fn periodic_snapshots_bring_back_a_node_past_the_cap() {
    let mut c = Cluster::start(Options {
        extra_toml:
            "[replication_log]\nmax_entries = 64\n[snapshot]\ninterval = 1000\nleader_ttl = 3000\n"
                .into(),
        ..Default::default()
    });
    assert_eq!(c.node_mut(3).stop(), Some(0));
    write_while_down(
        &c,
        200,
        |k| {
            format!(
                "INSERT INTO Authors (id, name) VALUES ({}, 'p{k}');",
                5000 + k
            )
        },
        "Authors",
    );
    c.eventually(T, "a periodic snapshot after the writes", || {
        let saved = |i: usize| c.node(i).log_lines_with(&["snapshot saved"]).len();
        saved(1) + saved(2) >= 2
    });
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    let tables = c.converged_all(T);
    assert_eq!(tables["Authors"].1, 200);
    let holders = (1..=3)
        .filter(|&i| !c.node(i).log_lines_with(&["lease acquired"]).is_empty())
        .count();
    assert!(holders >= 1, "some node took the snapshots");
    c.assert_all_alive();
}

/// Object store access from the test, through node `node`'s nats-server.
fn with_snapshot_bucket<T>(
    node: &Node,
    f: impl AsyncFnOnce(async_nats::jetstream::object_store::ObjectStore) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{}", node.client_port))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let store = js
            .get_object_store("harmonylite-changes-snapshot-store")
            .await
            .unwrap();
        f(store).await
    })
}

/// A snapshot whose data does not match the hash in its manifest is refused with a clear error, and nothing
/// changes in the database: the node stays stopped at its gap.
#[test]
fn a_corrupt_snapshot_is_refused_and_nothing_changes() {
    let mut c = Cluster::start(Options {
        extra_toml: "[replication_log]\nmax_entries = 64\n".into(),
        ..Default::default()
    });
    assert_eq!(c.node_mut(3).stop(), Some(0));
    write_while_down(
        &c,
        200,
        |k| {
            format!(
                "INSERT INTO Authors (id, name) VALUES ({}, 'c{k}');",
                7000 + k
            )
        },
        "Authors",
    );
    let o = save_snapshot(c.node(1));
    assert!(o.status.success(), "{}", text(&o));
    // Replace the data object by other bytes of the same length: the manifest's sha256 no longer matches.
    with_snapshot_bucket(c.node(1), async |store| {
        use tokio::io::AsyncReadExt;
        let mut manifest = Vec::new();
        store
            .get("harmonylite-snapshot.json")
            .await
            .unwrap()
            .read_to_end(&mut manifest)
            .await
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let object = m["object"].as_str().unwrap().to_string();
        let len = m["compressed_bytes"].as_u64().unwrap() as usize;
        let mut junk = std::io::Cursor::new(vec![0x5au8; len]);
        store.put(object.as_str(), &mut junk).await.unwrap();
    });
    let before = c.node(3).checksum("Authors");
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    let line = c.eventually(T, "node 3 refuses the snapshot", || {
        c.node(3)
            .log_lines_with(&["does not match the manifest"])
            .pop()
    });
    assert!(line.contains("nothing was restored"), "{line}");
    c.eventually(T, "node 3 reports its gap", || {
        !c.node(3).log_lines_with(&["stopped at a gap"]).is_empty()
    });
    assert_eq!(
        c.node(3).checksum("Authors"),
        before,
        "node 3's data is unchanged"
    );
    c.assert_all_alive();
}
