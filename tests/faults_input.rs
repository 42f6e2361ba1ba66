//! The fault suite, bad input: poison published onto a running cluster's change stream while applications write
//! every node; invalid configurations given to the binary; an application using the `sqlite3` CLI without a
//! busy timeout beside a node that applies a heavy stream. Cluster tests end with the kit's oracle
//! ([`Cluster::verdict`]).

mod support;

use std::time::{Duration, Instant};

use harmonylite::wire::{self, Value};
use support::oracle::report;
use support::stream::{
    BAD_BODY, NOT_ZSTD, applied_position_message, publish, sqlite_sequence_message, text, upsert,
};
use support::*;

const T: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(180);

fn schema() -> String {
    format!("{BOOKS}\n{LEDGER}")
}

/// NATS's default `max_payload` (the bundled server's configuration does not change it).
const MAX_PAYLOAD: usize = 1024 * 1024;

/// Poison on the change stream of a three-node cluster under application load on every node. Messages that
/// can never apply (garbage, truncated or invalid zstd, malformed rows, reserved tables, a large one near the
/// payload limit) are quarantined on every node (a row each in `__harmonylite__quarantine`, the metric, one
/// ERROR line each) and the shard goes on; a message larger than the server's limit is refused at publish.
/// Messages naming a column or a table the nodes do not have yet pause the shard until the schema is altered
/// on each node, then apply. No internal or SQLite table is ever written from the stream.
#[test]
fn poison_on_the_stream_is_quarantined_and_a_schema_ahead_waits_for_the_schema() {
    let plan = Plan::from_env(1);
    let started = Instant::now();
    let metrics = free_ports(3);
    let c = Cluster::start(Options {
        schema: schema(),
        per_node_toml: metrics
            .iter()
            .map(|p| format!("[prometheus]\nenable = true\nbind = \"127.0.0.1:{p}\"\n"))
            .collect(),
        ..Default::default()
    });
    let cfg = c.node(1).loaded_config();
    let (subject, stream) = (cfg.subject_name(1), cfg.stream_name(1));
    let client = c.node(1).client_port;
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    apps.wait_for_more(30, T);

    // Poison: (what, payload, how the quarantine's reason starts).
    let books = ["id", "title", "author", "publication_year"];
    let book = |id: i64, title: &str| {
        vec![
            Value::Integer(id),
            text(title),
            text("Poison"),
            Value::Integer(2026),
        ]
    };
    let valid = wire::encode(&upsert("Books", &books, "id", book(600, "Never")), true);
    let huge_title = "x".repeat(MAX_PAYLOAD - 10_000);
    let reserved = |table: &str, columns: &[&str]| {
        let row = columns.iter().map(|_| Value::Integer(1_000_000)).collect();
        wire::encode(&upsert(table, columns, columns[0], row), true)
    };
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage text",
            b"GARBAGE: no message at all \x00\xff\xfe".to_vec(),
            "undecodable message: unknown wire version 71",
        ),
        ("one byte", b"\x02".to_vec(), "undecodable message: empty"),
        (
            "truncated zstd",
            valid[..valid.len() / 2].to_vec(),
            "undecodable message: cannot decompress",
        ),
        (
            "not zstd",
            NOT_ZSTD.to_vec(),
            "undecodable message: cannot decompress",
        ),
        (
            "bad body",
            BAD_BODY.to_vec(),
            "undecodable message: cannot decode",
        ),
        (
            "row width",
            wire::encode(
                &upsert("Books", &books, "id", vec![Value::Integer(601)]),
                true,
            ),
            "malformed message",
        ),
        (
            "key not shipped",
            wire::encode(
                &upsert("Books", &["title"], "id", vec![text("No key")]),
                true,
            ),
            "malformed message",
        ),
        (
            "large malformed",
            wire::encode(
                &upsert(
                    "Books",
                    &books,
                    "id",
                    vec![Value::Integer(602), text(&huge_title)],
                ),
                false,
            ),
            "malformed message",
        ),
        (
            "__harmonylite__applied",
            applied_position_message(&stream, 1_000_000),
            "refused message: table \"__harmonylite__applied\" is reserved",
        ),
        (
            "__harmonylite__quarantine",
            reserved("__harmonylite__quarantine", &["id", "seq"]),
            "refused message: table \"__harmonylite__quarantine\" is reserved",
        ),
        (
            "__harmonylite__change_log",
            reserved("__harmonylite__change_log", &["id", "tbl"]),
            "refused message: table \"__harmonylite__change_log\" is reserved",
        ),
        (
            "__HarmonyLite__Meta",
            reserved("__HarmonyLite__Meta", &["key", "value"]),
            "refused message: table \"__HarmonyLite__Meta\" is reserved",
        ),
        (
            "sqlite_sequence",
            sqlite_sequence_message("Books", 100_000),
            "refused message: table \"sqlite_sequence\" is reserved",
        ),
        (
            "sqlite_master",
            reserved("sqlite_master", &["name", "sql"]),
            "refused message: table \"sqlite_master\" is reserved",
        ),
        (
            "sqlite_schema",
            reserved("sqlite_schema", &["name", "sql"]),
            "refused message: table \"sqlite_schema\" is reserved",
        ),
    ];
    assert!(
        poison[7].1.len() > MAX_PAYLOAD - 20_000 && poison[7].1.len() < MAX_PAYLOAD,
        "the large message is near the limit"
    );
    let marks: Vec<u64> = c.nodes.iter().map(Node::log_mark).collect();
    let last_before = c.node(1).stream_info(&stream).unwrap().state.last_sequence;

    // Larger than the server accepts: refused at publish, nothing reaches the stream.
    let oversize = vec![0x02; MAX_PAYLOAD + 1];
    let refused = publish(client, &subject, vec![oversize]).remove(0);
    let oversize_error = refused.expect_err("a payload above max_payload is refused");
    assert!(
        oversize_error.to_lowercase().contains("payload"),
        "{oversize_error}"
    );

    let payloads: Vec<Vec<u8>> = poison.iter().map(|(_, p, _)| p.clone()).collect();
    let seqs: Vec<u64> = publish(client, &subject, payloads)
        .into_iter()
        .zip(&poison)
        .map(|(r, (what, ..))| r.unwrap_or_else(|e| panic!("publish {what}: {e}")))
        .collect();
    assert!(
        seqs[0] > last_before,
        "nothing of the oversize message was stored"
    );
    // A good message after the poison applies on every node, and so do application rows written later.
    publish(
        client,
        &subject,
        vec![wire::encode(
            &upsert("Books", &books, "id", book(500, "After the poison")),
            true,
        )],
    )
    .remove(0)
    .unwrap();
    for n in &c.nodes {
        n.eventually(T, "the good message applied", || {
            n.sql("SELECT title FROM Books WHERE id = 500;").trim() == "After the poison"
        });
    }
    c.book_reaches_the_others(2, "Written after the poison");
    apps.wait_for_more(30, T);

    for (n, mark) in c.nodes.iter().zip(&marks) {
        let q = n.sql(&format!(
            "SELECT seq || ' ' || reason FROM __harmonylite__quarantine WHERE stream = '{stream}' ORDER BY seq;"
        ));
        let lines: Vec<&str> = q.lines().collect();
        assert_eq!(lines.len(), poison.len(), "node {}: {q}", n.id);
        for ((line, (what, _, reason)), seq) in lines.iter().zip(&poison).zip(&seqs) {
            assert!(
                line.starts_with(&format!("{seq} {reason}")),
                "node {}: {what}: {line:?} should start with {seq} {reason:?}",
                n.id
            );
        }
        let errors = n
            .log_since(*mark)
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("quarantined"))
            .count();
        assert_eq!(errors, poison.len(), "node {}", n.id);
        let port = metrics[n.id as usize - 1];
        let counted = n.eventually(T, "the quarantine metric", || {
            let body = http_get(port, "/metrics")?.body;
            metric(&body, "harmonylite_quarantined_messages", &[])
                .filter(|v| *v as usize == poison.len())
        });
        assert_eq!(counted as usize, poison.len());
        // Nothing from the stream wrote an internal or SQLite table.
        let books_seq: u64 = n
            .sql("SELECT seq FROM sqlite_sequence WHERE name = 'Books';")
            .trim()
            .parse()
            .unwrap();
        assert!(
            books_seq < 1_000,
            "node {}: Books sequence {books_seq}",
            n.id
        );
        let applied: u64 = n
            .sql(&format!(
                "SELECT seq FROM __harmonylite__applied WHERE stream = '{stream}';"
            ))
            .trim()
            .parse()
            .unwrap();
        assert!(applied < 1_000_000, "node {}: applied {applied}", n.id);
        assert_eq!(
            n.sql("SELECT count(*) FROM __harmonylite__meta WHERE key = '1000000';")
                .trim(),
            "0"
        );
        assert_eq!(
            n.sql("SELECT count(*) FROM sqlite_schema WHERE name = '1000000' OR sql = '1000000';")
                .trim(),
            "0"
        );
    }
    let quarantine_s = started.elapsed().as_secs_f64();

    // Ahead of every node's schema: a column, then a table, nobody has yet. Each node holds it, then applies it
    // once the node is altered.
    let mut waits = Vec::new();
    for (what, message, alter, check) in [
        (
            "column",
            upsert(
                "Books",
                &["id", "title", "author", "publication_year", "isbn"],
                "id",
                vec![
                    Value::Integer(701),
                    text("Ahead"),
                    text("Schema"),
                    Value::Integer(2026),
                    text("978-3"),
                ],
            ),
            "ALTER TABLE Books ADD COLUMN isbn TEXT;",
            "SELECT isbn FROM Books WHERE id = 701;",
        ),
        (
            "table",
            upsert(
                "Reviews",
                &["id", "body"],
                "id",
                vec![Value::Integer(1), text("Good")],
            ),
            "CREATE TABLE Reviews (id INTEGER PRIMARY KEY, body TEXT);",
            "SELECT body FROM Reviews WHERE id = 1;",
        ),
    ] {
        let want = if what == "column" { "978-3" } else { "Good" };
        let table = message.tables[0].table.clone();
        let column = (what == "column").then_some("isbn");
        publish(client, &subject, vec![wire::encode(&message, true)])
            .remove(0)
            .unwrap();
        for n in &c.nodes {
            n.wait_paused_on(&table, column, T);
        }
        let paused_at = Instant::now();
        // Held: application rows committed now (other tables) go on replicating past the held message.
        apps.wait_for_more(20, T);
        during(Duration::from_secs(2), || c.assert_all_alive());
        for n in &c.nodes {
            n.sql(alter);
            n.eventually(
                T,
                &format!("node {} resumed after the {what}", n.id),
                || n.try_sql(check).is_ok_and(|v| v.trim() == want),
            );
        }
        waits.push(format!(
            "{what} paused {:.1}s",
            paused_at.elapsed().as_secs_f64()
        ));
        for n in &c.nodes {
            assert!(
                !n.log_lines_with(&["local schema caught up; shard resumed"])
                    .is_empty(),
                "node {}",
                n.id
            );
        }
    }
    c.book_reaches_the_others(3, "After the schema caught up");

    let v = c.verdict(&mut apps, CONVERGE);
    for n in &c.nodes {
        assert_eq!(
            n.sql("SELECT count(*) FROM __harmonylite__quarantine;")
                .trim(),
            poison.len().to_string(),
            "node {}: nothing quarantined but the poison",
            n.id
        );
    }
    report(
        "poison",
        &format!(
            "quarantined={} per node (all in {quarantine_s:.0}s) oversize_publish=\"{oversize_error}\" {} {} run={:.0}s",
            poison.len(),
            waits.join(", "),
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
}

/// An application on node 2 using the `sqlite3` CLI with no busy timeout (one process per INSERT, as a shell
/// script would) while node 2 applies about 10,000 rows a second written on node 1 in big transactions. A write
/// meets `database is locked` only when it starts while node 2's applier holds the write lock (the applier takes
/// it for its apply transactions only: decoding, planning and skipping its own echoes hold none), so the share
/// of failed attempts must stay within the share of time node 2's apply transactions took (the metric
/// `harmonylite_apply_batch_seconds`), with margin. Both figures are reported.
#[test]
fn sqlite3_cli_without_busy_timeout_beside_a_heavy_apply() {
    let plan = Plan::from_env(1);
    let window = plan.duration.unwrap_or(Duration::from_secs(15));
    let started = Instant::now();
    let metrics = free_port();
    let c = Cluster::start(Options {
        nodes: 2,
        per_node_toml: vec![
            String::new(),
            format!("[prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics}\"\n"),
        ],
        schema: format!(
            "{LEDGER}\nCREATE TABLE bulk (id INTEGER PRIMARY KEY, v TEXT);\n\
             CREATE TABLE cli (id INTEGER PRIMARY KEY, v TEXT);"
        ),
        ..Default::default()
    });
    let mut apps = Apps::new(c.path());
    let (n1, n2) = (c.node(1), c.node(2));
    // The peer: transactions of 500 rows every 40 ms on node 1 (at most 12,500 rows/s).
    const BATCH: u64 = 500;
    let peer = Writer::start(&n1.db, Duration::from_millis(40), |i| {
        format!(
            "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {BATCH}) \
             INSERT INTO bulk(v) SELECT 'batch {i} row ' || x || ' ' || hex(randomblob(24)) FROM s;"
        )
    });
    let count = |n: &Node, t: &str| -> u64 {
        n.sql(&format!("SELECT count(*) FROM {t};"))
            .trim()
            .parse()
            .unwrap()
    };
    // Node 2 applies the stream before the application starts.
    c.eventually(T, "node 2 applies node 1's rows", || {
        count(n2, "bulk") >= 5 * BATCH
    });
    let apply_seconds = || -> f64 {
        let body = http_get(metrics, "/metrics")
            .expect("node 2's metrics")
            .body;
        metric(&body, "harmonylite_apply_batch_seconds_sum", &[]).unwrap_or(0.0)
    };
    let applied_before = count(n2, "bulk");
    let busy_before = apply_seconds();
    let t0 = Instant::now();
    let (mut attempts, mut locked) = (0u64, 0u64);
    while t0.elapsed() < window {
        attempts += 1;
        let sql = format!("INSERT INTO cli(v) VALUES ('cli {attempts}');");
        match try_sqlite3(&n2.db, &sql, None) {
            Ok(_) => {}
            Err(e) if e.contains("database is locked") => locked += 1,
            Err(e) => panic!("sqlite3 {sql:?}: {e}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let lock_share = (apply_seconds() - busy_before) / secs;
    let applied = count(n2, "bulk") - applied_before;
    let (peer_txns, peer_failed) = peer.stop();
    assert_eq!(peer_failed, 0, "the peer's transactions all commit");
    let apply_rate = applied as f64 / secs;
    let rate = locked as f64 / attempts as f64;
    let v = c.verdict(&mut apps, CONVERGE);
    assert_eq!(
        count(n1, "cli"),
        attempts - locked,
        "every INSERT that succeeded on node 2 is on node 1"
    );
    report(
        "sqlite3-cli-no-timeout",
        &format!(
            "locked={locked}/{attempts} ({:.2}%) in {secs:.0}s while node 2 applied {apply_rate:.0} rows/s \
             (peer: {peer_txns} transactions of {BATCH} rows), its apply transactions {:.1}% of the time {} \
             run={:.0}s",
            rate * 100.0,
            lock_share * 100.0,
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(
        apply_rate > 3_000.0,
        "the load is heavy: node 2 applied {apply_rate:.0} rows/s"
    );
    assert!(
        rate <= lock_share * 1.5 + 0.03,
        "{locked}/{attempts} attempts met a lock, more than the applier's share of time {lock_share:.3} allows"
    );
}

/// Every refused value of every configuration key (the table the config unit test uses), and the paths that are
/// only checked at start (a database that is a directory or missing, a state file that is a directory, NATS
/// files that are missing or not files, route TLS files): the binary exits non-zero with an error naming the
/// key, and writes nothing (the database unchanged, no WAL, no state file, no nats-server directory).
#[test]
fn invalid_configurations_are_refused_with_the_key_named_and_nothing_written() {
    let cases: &[(&str, &str, &str)] = include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/config/bad_values.in"
    ));
    let dir = temp_dir("hl-badcfg-");
    let missing = dir.path().join("missing");
    let a_dir = dir.path().join("a-directory");
    std::fs::create_dir(&a_dir).unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "not a certificate").unwrap();
    let (m, d, f) = (missing.display(), a_dir.display(), a_file.display());
    let at_start: Vec<(String, &str, &str, i32)> = vec![
        (format!("db_path = \"{d}\""), "db_path", "is a directory", 1),
        (format!("db_path = \"{m}\""), "db_path", "does not exist", 1),
        (
            format!("seq_map_path = \"{d}\""),
            "seq_map_path",
            "is a directory",
            1,
        ),
        (
            format!("[nats]\nserver_config = \"{m}\""),
            "nats.server_config",
            "cannot read",
            1,
        ),
        (
            format!("[nats]\nseed_file = \"{m}\""),
            "nats.seed_file",
            "cannot read",
            1,
        ),
        (
            format!("[nats]\nca_file = \"{d}\""),
            "nats.ca_file",
            "is not a file",
            1,
        ),
        (
            format!("[nats]\ncert_file = \"{m}\"\nkey_file = \"{m}\""),
            "nats.cert_file",
            "cannot read",
            1,
        ),
        (
            format!("[nats]\ncluster_cert_file = \"{f}\""),
            "nats.cluster_key_file",
            "together",
            2,
        ),
        (
            format!(
                "[nats]\ncluster_cert_file = \"{m}\"\ncluster_key_file = \"{m}\"\ncluster_ca_file = \"{m}\""
            ),
            "nats.cluster_cert_file",
            "cannot read",
            2,
        ),
    ];
    let all = cases
        .iter()
        .map(|(toml, key, value)| (toml.to_string(), *key, *value, 2))
        .chain(at_start);
    let started = Instant::now();
    let mut n = 0;
    for (i, (toml, key, shown, code)) in all.enumerate() {
        let root = dir.path().join(format!("case-{i}"));
        std::fs::create_dir(&root).unwrap();
        let mut node = Node::new(&root, 1, free_port(), free_port(), Vec::new());
        sqlite3(&node.db, BOOKS);
        let db_before = std::fs::read(&node.db).unwrap();
        let listing = |p: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = listing(node.data_dir());
        node.extra_toml = toml.clone();
        node.start();
        let exit = node.wait_exit(Duration::from_secs(30));
        let log = node.log_text();
        assert_eq!(exit, Some(code), "{toml:?}: exit {exit:?}\n{log}");
        assert!(
            log.contains(key) && log.contains(shown),
            "{toml:?}: the error should name {key} and say {shown:?}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{toml:?}:\n{log}");
        assert_eq!(
            listing(node.data_dir()),
            before,
            "{toml:?}: files written (state file, WAL, nats-server directory)"
        );
        assert!(
            std::fs::read(&node.db).unwrap() == db_before,
            "{toml:?}: the database changed"
        );
        assert!(
            !a_dir.read_dir().unwrap().any(|_| true) && !missing.exists(),
            "{toml:?}: written into the path given"
        );
        n += 1;
    }
    report(
        "bad-config",
        &format!(
            "{n} invalid configurations refused, each naming its key, nothing written, in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
}

/// A second process configured with the `node_id` of a running node of the cluster (its own database and
/// data directory, routes to the cluster) under application load: it refuses to run, with an error naming the
/// node id, and exits 1 before its engine starts (no consumer, no status entry, nothing published), leaving
/// nothing behind (no capture in its database, no server files, no publish state), while the first keeps running and the cluster goes on replicating. The same node killed with -9 and started again at
/// once is not refused.
#[test]
fn a_second_node_with_a_running_nodes_id_is_refused() {
    let mut c = Cluster::start(Options {
        schema: schema(),
        ..Default::default()
    });
    let mut apps = Apps::on_every_node(&c, 20.0, 5000);
    apps.wait_for_more(20, T);
    let peers = c.nodes.iter().map(|n| n.cluster_port).collect();
    let root = c.fresh_dir("twin");
    let mut twin = Node::new(&root, 1, free_port(), free_port(), peers);
    sqlite3(&twin.db, &schema());
    let mark = c.node(1).log_mark();
    let started = Instant::now();
    twin.start();
    let own_lines = |n: &Node| -> String {
        let text = n.log_text();
        let own: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("nats-server:"))
            .collect();
        own.join("\n")
    };
    if poll(Duration::from_secs(120), || !twin.is_alive()).is_none() {
        panic!("the twin still runs after 120 s:\n{}", own_lines(&twin));
    }
    let exit = twin.wait_exit(Duration::from_secs(5));
    let refused_in = started.elapsed();
    let log = own_lines(&twin);
    assert_eq!(exit, Some(1), "{log}");
    assert!(
        log.contains("node_id 1 is already used by another running node"),
        "{log}"
    );
    for never in ["node running", "consumer started", "status entry written"] {
        assert!(
            !log.contains(never),
            "the twin's engine started ({never}):\n{log}"
        );
    }
    assert!(
        !c.node(1).log_since(mark).contains("consumer deleted"),
        "the twin touched node 1's consumer"
    );
    // Nothing of the refused start is left: no capture in its database, no server files, no publish state.
    assert_eq!(
        sqlite3(
            &twin.db,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_harmonylite%' ESCAPE '\\';"
        )
        .trim(),
        "0",
        "the twin's database keeps capture"
    );
    let nats_dir = twin.db.parent().unwrap().join("nats");
    assert!(!nats_dir.exists(), "{} left behind", nats_dir.display());
    assert!(
        !twin.seq_map.exists(),
        "{} left behind",
        twin.seq_map.display()
    );
    c.assert_all_alive();
    c.book_reaches_the_others(1, "Beside a refused twin");
    // The same node, killed and started again at once, is itself, not a twin.
    c.node_mut(1).kill9();
    c.node_mut(1).start_and_wait(T);
    apps.wait_for_more(20, T);
    let v = c.verdict(&mut apps, CONVERGE);
    report(
        "duplicate-node-id",
        &format!(
            "twin refused in {:.1}s (exit 1), node 1 restarted after kill -9 not refused, {}",
            refused_in.as_secs_f64(),
            v.summary()
        ),
    );
}
