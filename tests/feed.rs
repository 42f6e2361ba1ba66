//! The change feed (`[feed]`, docs/FEED.md) on real three-node clusters, written with the real `sqlite3` CLI and
//! read with the `-changes` command: every kind of value exactly; upserts, deletes and a primary-key change once
//! each, in order; reading on from a cursor; refused cursors (garbage, expired); the feed's writer killed -9
//! mid-run, with another node going on and nothing lost or doubled.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::feed::Consumed;
use support::*;

const T: Duration = Duration::from_secs(60);

/// `z` has no type: SQLite keeps -0.0 there (a REAL column stores an integral value as an integer, so its -0.0
/// reads back as 0.0 even on the node that wrote it).
const VALS: &str =
    "CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n, z);";

fn feed_cluster(schema: &str) -> Cluster {
    let mut c = Cluster::new(Options {
        schema: format!("{BOOKS}\n{schema}"),
        extra_toml: FEED_ON.to_string(),
        ..Default::default()
    });
    c.start_all_until_captured(T);
    c
}

#[test]
fn every_change_and_value_reaches_the_feed_exactly_once_in_order() {
    let port = free_port();
    let mut c = Cluster::new(Options {
        schema: format!("{BOOKS}\n{VALS}"),
        extra_toml: FEED_ON.to_string(),
        per_node_toml: vec![
            String::new(),
            String::new(),
            format!("[health_check]\nenable = true\nbind = \"127.0.0.1:{port}\"\n"),
        ],
        ..Default::default()
    });
    c.start_all_until_captured(T);
    let (n1, n2) = (c.node(1), c.node(2));
    // Beside the command: an HTTP reader of node 3, open from before the first change.
    let mut http = poll(T, || {
        let h = FeedHttp::open(port, "/changes?tables=vals", &[]);
        (h.status == 200).then_some(h)
    })
    .expect("/changes answers 200 once the feed stream exists");
    let http_reader = std::thread::spawn(move || {
        (0..7)
            .map(|_| http.next_line().expect("a record"))
            .collect::<Vec<String>>()
    });
    // One statement at a time, each awaited in the feed, so that no two are sent as one unit (a unit carries
    // the newest value of each row it changed).
    let steps: [(&str, usize); 6] = [
        (
            "INSERT INTO vals VALUES (1, -9223372036854775808, 1.0, 'héllo \"q\"', x'00ff10', NULL, -0.0);",
            1,
        ),
        (
            "INSERT INTO vals VALUES (2, 9223372036854775807, -0.0, CAST(x'ff61' AS TEXT), x'', 9e999, 0.5);",
            2,
        ),
        (
            "INSERT INTO vals VALUES (3, 0, 1e300, '2026-12-07 12:00:00', zeroblob(3), -9e999, 12);",
            3,
        ),
        ("UPDATE vals SET t = 'changed', r = 0.1 WHERE id = 1;", 4),
        ("DELETE FROM vals WHERE id = 3;", 5),
        ("UPDATE vals SET id = 20 WHERE id = 2;", 7),
    ];
    let mut feed = None;
    for (sql, n) in steps {
        n1.sql(sql);
        feed = Some(n2.wait_feed("vals", n, T));
    }
    let feed = feed.expect("six steps");
    let vals: Vec<&str> = feed
        .lines
        .iter()
        .filter(|l| l.contains("\"table\":\"vals\""))
        .map(String::as_str)
        .collect();
    // The exact text of the values (the record's other fields checked apart).
    let rows: Vec<String> = vals
        .iter()
        .map(|l| {
            let from = l.find("\"key\"").expect("a key");
            let to = l.find(",\"origin\"").expect("an origin");
            l[from..to].to_string()
        })
        .collect();
    assert_eq!(
        rows[..5],
        [
            r#""key":{"id":1},"row":{"id":1,"i":-9223372036854775808,"r":1.0,"t":"héllo \"q\"","b":{"base64":"AP8Q"},"n":null,"z":-0.0}"#,
            r#""key":{"id":2},"row":{"id":2,"i":9223372036854775807,"r":0.0,"t":{"text_base64":"/2E="},"b":{"base64":""},"n":"Infinity","z":0.5}"#,
            r#""key":{"id":3},"row":{"id":3,"i":0,"r":1e+300,"t":"2026-12-07 12:00:00","b":{"base64":"AAAA"},"n":"-Infinity","z":12}"#,
            r#""key":{"id":1},"row":{"id":1,"i":-9223372036854775808,"r":0.1,"t":"changed","b":{"base64":"AP8Q"},"n":null,"z":-0.0}"#,
            r#""key":{"id":3},"row":null"#,
        ],
        "{vals:#?}"
    );
    // The same records over HTTP, and to a NATS client (its messages carry no cursor: their stream sequence is
    // the position).
    let over_http = http_reader.join().expect("the HTTP reader");
    assert_eq!(over_http, vals, "/changes");
    let by_nats: Vec<String> = c
        .node(3)
        .feed_consumer(
            "harmonylite.feed.vals",
            "vals",
            "3",
            "0",
            &c.path().join("consumer.out"),
        )
        .finish(T)
        .into_iter()
        .map(|r| {
            format!(
                "{},\"cursor\":\"{}\"}}",
                r.record.strip_suffix('}').expect("a JSON object"),
                r.cursor()
            )
        })
        .collect();
    assert_eq!(by_nats, vals, "a NATS client");

    let mut last_two = rows[5..].to_vec();
    last_two.sort();
    assert_eq!(
        last_two,
        [
            r#""key":{"id":20},"row":{"id":20,"i":9223372036854775807,"r":0.0,"t":{"text_base64":"/2E="},"b":{"base64":""},"n":"Infinity","z":0.5}"#,
            r#""key":{"id":2},"row":null"#,
        ],
        "a primary-key change is a delete and an upsert"
    );
    let recs = feed.of("vals");
    let ops: Vec<&str> = recs.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        &ops[..5],
        ["upsert", "upsert", "upsert", "upsert", "delete"]
    );
    for r in &recs {
        assert_eq!(r["v"], 1);
        assert_eq!(r["origin"], 1, "written on node 1: {r}");
        let ts = r["ts"].as_str().expect("the origin's read time");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "RFC 3339 UTC with milliseconds: {ts}"
        );
        assert!(r["unit"].as_str().is_some_and(|u| !u.is_empty()));
    }
    // The final rows as SQLite holds them on another node are the last records' rows.
    let on_n3: BTreeMap<i64, (i64, f64, Vec<u8>, f64)> = open_read_only(&c.node(3).db)
        .prepare("SELECT id, i, r, CAST(t AS BLOB), z FROM vals")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(on_n3.keys().copied().collect::<Vec<_>>(), [1, 20]);
    assert_eq!(on_n3[&1].0, i64::MIN);
    assert_eq!(on_n3[&1].1, 0.1);
    assert_eq!(on_n3[&20].0, i64::MAX);
    assert!(
        on_n3[&1].3 == 0.0 && on_n3[&1].3.is_sign_negative(),
        "-0.0 arrived as it is"
    );
    assert_eq!(on_n3[&20].2, [0xff, b'a']);

    // Reading on from a cursor gives exactly what follows it, on any node.
    let cursors = feed.cursors();
    let third = feed
        .records
        .iter()
        .position(|r| r["table"] == "vals" && r["key"]["id"] == 3)
        .expect("the record of row 3");
    let after = c.node(3).changes(&["-from", &cursors[third]]);
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    assert_eq!(
        after.lines,
        feed.lines[third + 1..],
        "read on from {}",
        cursors[third]
    );
    let only_books = n2.changes(&["-tables", "Books"]);
    assert_eq!(only_books.code, Some(0));
    assert!(
        only_books.records.is_empty(),
        "no change to Books was made: {:?}",
        only_books.lines
    );
    let now = n2.changes(&["-from", "now"]);
    assert_eq!((now.code, now.lines.len()), (Some(0), 0), "{}", now.stderr);

    // Cursors that are not ones, and one older than what the feed holds, are refused.
    for bad in ["garbage", "1.0", "2.5", ""] {
        let r = n2.changes(&["-from", bad]);
        assert_eq!(r.code, Some(2), "-from {bad:?}: {}", r.stderr);
        assert!(r.records.is_empty());
    }
    let feed_stream = "harmonylite-feed";
    let purged = n2.with_jetstream(async |js| {
        let s = js.get_stream(feed_stream).await.ok()?;
        s.purge().sequence(4).await.ok()
    });
    assert!(purged.is_some(), "the feed's first three records purged");
    let expired = n2.changes(&["-from", &cursors[0]]);
    assert_eq!(expired.code, Some(1), "{}", expired.stderr);
    assert!(expired.records.is_empty());
    assert!(
        expired.stderr.contains("no longer holds"),
        "the refusal says why: {}",
        expired.stderr
    );
    let gone = FeedHttp::open(port, &format!("/changes?from={}", cursors[0]), &[]);
    assert_eq!(gone.status, 410, "over HTTP too: {}", gone.headers);
    let still = n2.changes(&["-from", &cursors[2]]);
    assert_eq!(
        still.code,
        Some(0),
        "the cursor right before the oldest record held: {}",
        still.stderr
    );
    assert_eq!(still.lines, feed.lines[3..]);
}

#[test]
fn the_feed_writer_killed_mid_run_is_replaced_and_nothing_is_lost_or_doubled() {
    let mut c = feed_cluster("");
    let first = c.feed_writer(T);
    let writer_node = first % 3 + 1;
    let db = c.node(writer_node).db.clone();
    let w = Writer::start(&db, Duration::from_millis(5), |i| {
        format!(
            "INSERT INTO Books (id, title, author) VALUES ({}, 'feed {i}', 'W');",
            1000 + i
        )
    });
    let reader = (first + 1) % 3 + 1;
    // Some records written, then the feed's writer killed while rows keep coming.
    let r = c.node(reader);
    r.eventually(T, "records in the feed", || {
        r.changes(&[]).of("Books").len() >= 100
    });
    c.node_mut(first).kill9();
    let next = poll(T, || {
        c.nodes
            .iter()
            .enumerate()
            .find(|(i, n)| {
                *i != first
                    && !n
                        .log_lines_with(&["writes the change feed (lease acquired)"])
                        .is_empty()
            })
            .map(|(i, _)| i)
    })
    .unwrap_or_else(|| panic!("no other node took the feed over\n{}", c.logs_tail()));
    let r = c.node(reader);
    r.eventually(T, "more records after the takeover", || {
        r.changes(&[]).of("Books").len() >= 400
    });
    let (ok, _) = w.stop();
    let ids: Vec<i64> = open_read_only(&db)
        .prepare("SELECT id FROM Books WHERE id >= 1000 ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        ids.len() as u64 >= ok.min(400),
        "{} rows committed",
        ids.len()
    );
    let feed = c.node(reader).wait_feed("Books", ids.len(), T);
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for r in feed.of("Books") {
        assert_eq!(r["op"], "upsert");
        *seen
            .entry(r["key"]["id"].as_i64().expect("an integer key"))
            .or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records written twice: {doubled:?}");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        ids,
        "every committed row once"
    );
    // In order: the rows were inserted in id order on one node, so their records are too.
    let order: Vec<i64> = feed
        .of("Books")
        .iter()
        .map(|r| r["key"]["id"].as_i64().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "records out of order"
    );
    // Every cursor is distinct and increasing.
    let order: Vec<(u64, u32)> = feed.cursors().iter().map(|c| cursor_order(c)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert_ne!(next, first);
}

/// A cursor's place in the feed's order: its feed message, and its line there (a message's last record's
/// cursor, `1.<seq>`, names no line: it comes after the others).
fn cursor_order(cursor: &str) -> (u64, u32) {
    let rest = cursor.strip_prefix("1.").expect("a version 1 cursor");
    match rest.split_once('.') {
        Some((seq, line)) => (seq.parse().unwrap(), line.parse().unwrap()),
        None => (rest.parse().unwrap(), u32::MAX),
    }
}

/// Inserts books `from..to` (ids from 1000) on `node` with one `sqlite3` run, one transaction each.
fn insert_books(node: &Node, from: usize, to: usize) {
    let sql: String = (from..to)
        .map(|i| {
            format!(
                "INSERT INTO Books (id, title, author) VALUES ({}, 'feed {i}', 'W');\n",
                1000 + i
            )
        })
        .collect();
    node.sql(&sql);
}

/// The lines of a file written by a child (empty when it does not exist yet).
fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_nats_client_with_a_durable_consumer_resumes_after_it_is_killed() {
    let c = feed_cluster("");
    let n1 = c.node(1);
    // In ten groups, each in the feed before the next is written: the records are in several feed messages (the
    // writer gathers what comes together), so the consumer can be killed between two of them.
    for g in 0..10 {
        insert_books(n1, g * 20, g * 20 + 20);
        n1.wait_feed("Books", g * 20 + 20, T);
    }
    let consumer = |name: &str, idle: &str, delay: &str| {
        c.node(2).feed_consumer(
            "harmonylite.feed.>",
            "audit",
            idle,
            delay,
            &c.path().join(name),
        )
    };
    let key = |r: &Consumed| -> ((u64, u32), i64) {
        let v: serde_json::Value = serde_json::from_str(&r.record).expect("a JSON record");
        (r.order(), v["key"]["id"].as_i64().expect("an integer key"))
    };
    // The first run reads slowly and is killed -9 partway.
    let mut first = consumer("consumer-1.out", "60", "0.2");
    eventually(T, "the first consumer has read 50 records", || {
        first.read().len() >= 50
    });
    first.child.kill();
    // More changes while it is away; the second run reads on from what the first acknowledged.
    insert_books(n1, 200, 300);
    let feed = n1.wait_feed("Books", 300, T);
    let second_read: Vec<((u64, u32), i64)> = consumer("consumer-2.out", "3", "0")
        .finish(T)
        .iter()
        .map(key)
        .collect();
    let first_read: Vec<((u64, u32), i64)> = first.read().iter().map(key).collect();
    let mut ids: Vec<i64> = first_read.iter().chain(&second_read).map(|r| r.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        (1000..1300).collect::<Vec<i64>>(),
        "every change reached the consumer"
    );
    // At least once, resuming where it acknowledged: the second run reads again nothing the first one
    // acknowledged (it prints a message's records, then acknowledges the message, so only its last message may
    // come again); what the first run had fetched but not handled when it was killed comes again (after the
    // consumer's ack wait).
    let first_positions: std::collections::BTreeSet<(u64, u32)> =
        first_read.iter().map(|r| r.0).collect();
    let first_last = first_positions
        .last()
        .expect("the first run read records")
        .0;
    let again: Vec<(u64, u32)> = second_read
        .iter()
        .map(|r| r.0)
        .filter(|p| first_positions.contains(p))
        .collect();
    assert!(
        again.iter().all(|p| p.0 == first_last),
        "read again after the restart: {again:?} (the first run's last message was {first_last})"
    );
    let mut positions: Vec<(u64, u32)> =
        first_read.iter().chain(&second_read).map(|r| r.0).collect();
    positions.sort();
    positions.dedup();
    let all: Vec<(u64, u32)> = feed.cursors().iter().map(|c| cursor_order(c)).collect();
    assert_eq!(positions, all, "every record of the feed, by position");
    assert!(
        first_read.windows(2).all(|w| w[0].0 < w[1].0),
        "a consumer reads in order"
    );
}

/// The next record of `h`, failing with every node's last log lines when none comes.
fn next_or_logs(h: &mut FeedHttp, c: &Cluster) -> serde_json::Value {
    match h.try_next_line() {
        Ok(Some(l)) => serde_json::from_str(&l).expect("a JSON record"),
        other => panic!(
            "no record: {other:?}; the feed stream: {:?}\n{}",
            c.node(1).stream_info("harmonylite-feed").map(|i| i.state),
            c.logs_tail()
        ),
    }
}

#[test]
fn changes_over_http_from_loopback_resume_after_a_restart_and_a_slow_reader_is_cut_off() {
    let port = free_port();
    let mut c = Cluster::new(Options {
        extra_toml: FEED_ON.to_string(),
        per_node_toml: vec![
            String::new(),
            format!("[health_check]\nenable = true\nbind = \"0.0.0.0:{port}\"\n"),
        ],
        ..Default::default()
    });
    c.start_all_until_captured(T);
    // New changes only without `from`: open (once the feed's writer has made its stream), then write.
    let mut live = poll(T, || {
        let h = FeedHttp::open(port, "/changes", &[]);
        (h.status == 200).then_some(h)
    })
    .expect("/changes answers 200 once the feed stream exists");
    assert!(
        live.headers
            .to_ascii_lowercase()
            .contains("application/x-ndjson"),
        "{}",
        live.headers
    );
    insert_books(c.node(1), 0, 1);
    let first = next_or_logs(&mut live, &c);
    assert_eq!(
        (first["table"].as_str(), first["key"]["id"].as_i64()),
        (Some("Books"), Some(1000))
    );
    let cursor = first["cursor"].as_str().expect("a cursor").to_string();
    drop(live);

    // The node serving it restarts; reading on from the cursor loses and doubles nothing.
    c.node_mut(2).restart(T);
    insert_books(c.node(1), 1, 5);
    let mut again = poll(T, || {
        let h = FeedHttp::open(port, &format!("/changes?from={cursor}"), &[]);
        (h.status == 200).then_some(h)
    })
    .expect("/changes answers after the restart");
    let ids: Vec<i64> = (0..4)
        .map(|_| next_or_logs(&mut again, &c)["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1001, 1002, 1003, 1004]);
    drop(again);

    // Server-Sent Events, with each cursor as the event id.
    let mut sse = FeedHttp::open(
        port,
        &format!("/changes?from={cursor}&tables=Books"),
        &[("Accept", "text/event-stream")],
    );
    assert_eq!(sse.status, 200);
    assert!(sse.headers.contains("text/event-stream"), "{}", sse.headers);
    let id = sse.next_line().expect("an event");
    assert!(id.starts_with("id: 1."), "{id}");
    let data = sse.next_line().expect("its data");
    let r: serde_json::Value =
        serde_json::from_str(data.strip_prefix("data: ").expect("data")).unwrap();
    assert_eq!(r["cursor"].as_str(), id.strip_prefix("id: "));
    drop(sse);

    // Refused: a cursor that is not one.
    let bad = FeedHttp::open(port, "/changes?from=nonsense", &[]);
    assert_eq!(bad.status, 400, "{}", bad.headers);

    // A reader that reads nothing while 200,000 changes arrive is cut off, and the node's memory stays flat.
    let pid = c.node(2).pid().expect("node 2 runs");
    let base = rss_kb(pid);
    let mut slow = FeedHttp::open(port, "/changes", &[]);
    assert_eq!(slow.status, 200);
    c.node(1).sql(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 199999) \
         INSERT INTO Books (id, title, author) SELECT 10000 + i, 'bulk ' || i, 'B' FROM n; COMMIT;",
    );
    let mut peak = base;
    let node2 = c.node(2);
    node2.eventually(T * 3, "the slow reader is cut off", || {
        peak = peak.max(rss_kb(pid));
        !node2.log_lines_with(&["reader fell behind"]).is_empty()
    });
    // What was queued for it, then its last line, then the end.
    let mut last = None;
    let mut lines = 0usize;
    while let Some(l) = slow.next_line() {
        lines += 1;
        last = Some(l);
        if lines.is_multiple_of(1000) {
            peak = peak.max(rss_kb(pid));
        }
    }
    // The bulk's last row (id 209999) is the feed's last record of Books once the feed holds the 200,000.
    node2.eventually(T * 3, "the feed holds the 200,000 changes", || {
        peak = peak.max(rss_kb(pid));
        let feed = node2.changes(&["-from", &cursor, "-tables", "Books"]);
        feed.records
            .last()
            .is_some_and(|r| r["key"]["id"].as_i64() == Some(209_999))
    });
    let last = last.expect("the slow reader got lines");
    assert!(
        last.contains("\"error\"") && last.contains("cut off"),
        "the last line says why: {last}"
    );
    assert!(
        lines < 200_005,
        "the slow reader was cut off before the end ({lines} lines)"
    );
    assert!(
        peak < base + 40_000,
        "node 2's RSS grew from {base} kB to {peak} kB while a reader fell behind"
    );
}

/// The records a `-changes -follow` run has printed to `out` so far (its log lines left out).
fn followed(out: &std::path::Path) -> Vec<serde_json::Value> {
    lines_of(out)
        .iter()
        .filter(|l| l.starts_with("{\"v\":"))
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

#[test]
fn a_follow_reader_goes_on_from_its_last_cursor_after_its_node_restarts() {
    let mut c = feed_cluster("");
    insert_books(c.node(1), 0, 2);
    c.node(2).wait_feed("Books", 2, T);
    let out1 = c.path().join("follow-1.out");
    let mut cmd = c.node(2).command();
    cmd.args(["-changes", "-follow"]);
    let mut follower = ChildGuard::spawn_logged(cmd, &out1);
    let first = eventually(T, "the follower prints what the feed holds", || {
        let r = followed(&out1);
        (r.len() == 2).then_some(r)
    });
    let cursor = first[1]["cursor"].as_str().expect("a cursor").to_string();
    // Its node restarts under it (its NATS connection goes with it); changes go on meanwhile.
    c.node_mut(2).restart(T);
    insert_books(c.node(1), 2, 6);
    follower.kill();
    let seen_before: Vec<i64> = followed(&out1)
        .iter()
        .map(|r| r["key"]["id"].as_i64().unwrap())
        .collect();
    // Started again from the last cursor it printed: the rest, once each.
    let last = followed(&out1)
        .last()
        .and_then(|r| r["cursor"].as_str().map(str::to_string))
        .unwrap_or(cursor);
    let out2 = c.path().join("follow-2.out");
    let mut cmd = c.node(2).command();
    cmd.args(["-changes", "-follow", "-from", &last]);
    let mut again = ChildGuard::spawn_logged(cmd, &out2);
    let after = eventually(T, "the follower prints the rest", || {
        let r = followed(&out2);
        (seen_before.len() + r.len() >= 6).then_some(r)
    });
    let mut ids = seen_before.clone();
    ids.extend(after.iter().map(|r| r["key"]["id"].as_i64().unwrap()));
    assert_eq!(
        ids,
        (1000..1006).collect::<Vec<i64>>(),
        "nothing lost, nothing twice, in order"
    );
    again.kill();
}

#[test]
fn the_live_page_shows_the_nodes_and_a_new_row_within_two_seconds_in_a_real_browser() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        panic!("chromium is needed (scripts/test.sh installs it: apt-get install chromium)");
    };
    let port = free_port();
    let c = {
        let mut c = Cluster::new(Options {
            extra_toml: FEED_ON.to_string(),
            per_node_toml: vec![format!(
                "[health_check]\nenable = true\nbind = \"127.0.0.1:{port}\"\n"
            )],
            ..Default::default()
        });
        c.start_all_until_captured(T);
        c
    };
    // The feed's stream exists once a node writes it: the page's change list needs it.
    poll(T, || {
        let h = FeedHttp::open(port, "/changes", &[]);
        (h.status == 200).then_some(())
    })
    .expect("/changes answers");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/page_check.py");
    let profile = c.fresh_dir("chromium-profile");
    let mut browser = std::process::Command::new("python3")
        .arg(&script)
        .arg(chromium)
        .arg(free_port().to_string())
        .arg(&profile)
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg("3")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = browser.stdin.take().expect("stdin");
    let mut out = std::io::BufReader::new(browser.stdout.take().expect("stdout"));
    let mut line = || {
        use std::io::BufRead;
        let mut l = String::new();
        out.read_line(&mut l).expect("the page checker's output");
        l.trim_end().to_string()
    };
    let ready = line();
    if ready != "READY" {
        let _ = browser.kill();
        let _ = browser.wait();
        panic!(
            "the page did not show three reachable nodes: {ready}\n{}\n{}",
            line(),
            c.logs_tail()
        );
    }
    insert_books(c.node(1), 0, 1);
    use std::io::Write;
    writeln!(stdin, "INSERTED Books {{\"id\":1000}}").expect("tell the checker");
    let appeared = line();
    let errors = line();
    let status = browser.wait().expect("the checker ends");
    assert!(status.success(), "{appeared}\n{errors}");
    let ms: u64 = appeared
        .strip_prefix("APPEARED ")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| {
            panic!("the row inserted on node 1 is not in the page's change list: {appeared}")
        });
    assert!(ms <= 2000, "the row appeared after {ms} ms");
    assert_eq!(errors, "ERRORS []", "the page logged errors");
}

#[test]
fn changes_are_refused_to_other_hosts_without_the_token() {
    // Declared before the cluster: dropped after it (the nodes are killed first), also on a panic.
    let Some(net) = support::netns::Network::create_or_skip(3) else {
        return;
    };
    let port = free_port();
    let health = format!("[health_check]\nenable = true\nbind = \"0.0.0.0:{port}\"\n");
    // Node 1 has a token, node 2 none; each serves `/changes` on all its addresses.
    let mut c = Cluster::new(Options {
        extra_toml: "[nats]\ncluster_secret = \"feed-test-secret\"\n".into(),
        per_node_toml: vec![
            format!("{health}[feed]\nenabled = true\nhttp_token = \"s3cret-token\"\n"),
            format!("{health}{FEED_ON}"),
            FEED_ON.to_string(),
        ],
        ..Default::default()
    });
    net.place(&mut c);
    c.start_all_until_captured(T);
    let status = |from: usize, to: usize, headers: &[(&str, &str)]| {
        let host = if from == to {
            "127.0.0.1".to_string()
        } else {
            net.addr(to)
        };
        net.run_in(from, || {
            FeedHttp::open_at(&host, port, "/changes", headers).status
        })
    };
    // From the node's own loopback: served (once a node writes the feed).
    for node in [1, 2] {
        poll(T, || (status(node, node, &[]) == 200).then_some(())).unwrap_or_else(|| {
            panic!("node {node} serves /changes on loopback\n{}", c.logs_tail())
        });
    }
    // From another host: the token, and only it, opens node 1's; node 2's is closed to other hosts.
    assert_eq!(status(3, 1, &[]), 401, "no token");
    assert_eq!(
        status(3, 1, &[("Authorization", "Bearer s3cret-tokeN")]),
        401,
        "a wrong token"
    );
    assert_eq!(
        status(3, 1, &[("Authorization", "Bearer s3cret-token")]),
        200,
        "the token"
    );
    assert_eq!(
        status(3, 2, &[("Authorization", "Bearer s3cret-token")]),
        403,
        "no token configured"
    );
    drop(c);
}

#[test]
fn a_ten_thousand_row_transaction_reaches_every_kind_of_reader_once_in_order() {
    let port = free_port();
    let mut c = Cluster::new(Options {
        extra_toml: FEED_ON.to_string(),
        per_node_toml: vec![
            String::new(),
            format!("[health_check]\nenable = true\nbind = \"127.0.0.1:{port}\"\n"),
        ],
        ..Default::default()
    });
    c.start_all_until_captured(T);
    let mut http = poll(T, || {
        let h = FeedHttp::open(port, "/changes", &[]);
        (h.status == 200).then_some(h)
    })
    .expect("/changes answers 200 once the feed stream exists");
    c.node(1).sql(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) \
         INSERT INTO Books (id, title, author) SELECT 10000 + i, 'row ' || i, 'T' FROM n; COMMIT;",
    );
    let want: Vec<i64> = (10_000..20_000).collect();
    let id = |r: &serde_json::Value| {
        r["key"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("not a record of Books: {r}"))
    };
    // HTTP, read as it comes (a reader that falls 256 records behind is cut off).
    let http_reader = std::thread::spawn(move || {
        (0..10_000)
            .map(|_| http.next_record().expect("a record"))
            .collect::<Vec<serde_json::Value>>()
    });

    // The command.
    let feed = c.node(2).wait_feed("Books", 10_000, T);
    let books = feed.of("Books");
    assert_eq!(
        books.iter().map(|r| id(r)).collect::<Vec<_>>(),
        want,
        "-changes"
    );
    let units: std::collections::BTreeSet<&str> =
        books.iter().map(|r| r["unit"].as_str().unwrap()).collect();
    assert_eq!(
        units.len(),
        1,
        "one local transaction travels as one unit: {units:?}"
    );
    // Its 10,000 records fill several feed messages: resuming from a record inside one (a cursor naming its
    // line) and from the last of one gives exactly the records after it.
    let cursors = feed.cursors();
    let inside = (1..10_000)
        .find(|&i| cursors[i].matches('.').count() == 2 && cursors[i + 1].matches('.').count() == 2)
        .expect("a record with a record of its feed message after it");
    let last_of_one = (inside..10_000)
        .find(|&i| cursors[i].matches('.').count() == 1)
        .expect("the last record of a feed message");
    assert!(
        last_of_one < 9_999,
        "the rows fill more than one feed message"
    );
    for at in [inside, last_of_one] {
        let after = c
            .node(3)
            .changes(&["-from", &cursors[at], "-tables", "Books"]);
        assert_eq!(after.code, Some(0), "{}", after.stderr);
        assert_eq!(
            after.of("Books").iter().map(|r| id(r)).collect::<Vec<_>>(),
            want[at + 1..],
            "after {}",
            cursors[at]
        );
    }

    let over_http: Vec<i64> = http_reader
        .join()
        .expect("the HTTP reader")
        .iter()
        .map(id)
        .collect();
    assert_eq!(over_http, want, "/changes");

    // A NATS client.
    let by_nats: Vec<i64> = c
        .node(3)
        .feed_consumer(
            "harmonylite.feed.Books",
            "ten",
            "3",
            "0",
            &c.path().join("consumer.out"),
        )
        .finish(T)
        .iter()
        .map(|r| id(&serde_json::from_str(&r.record).expect("a JSON record")))
        .collect();
    assert_eq!(by_nats, want, "a NATS client");
}

#[test]
fn a_row_too_large_for_one_message_is_written_without_its_row_and_the_feed_goes_on() {
    let c = feed_cluster("CREATE TABLE files (id INTEGER PRIMARY KEY, body BLOB);");
    c.node(1)
        .sql("INSERT INTO files VALUES (1, randomblob(2 * 1024 * 1024));");
    c.node(1).sql("INSERT INTO files VALUES (2, x'0102');");
    let feed = c.node(2).wait_feed("files", 2, T);
    let files = feed.of("files");
    assert_eq!(files[0]["key"]["id"], 1);
    assert!(files[0]["row"].is_null(), "{}", files[0]);
    assert!(
        files[0]["omitted_bytes"]
            .as_u64()
            .is_some_and(|b| b > 2 * 1024 * 1024),
        "the record says how large it was: {}",
        files[0]
    );
    assert_eq!(
        files[1]["row"],
        serde_json::json!({"id": 2, "body": {"base64": "AQI="}})
    );
}

/// A message another program publishes on the feed's subjects is no record: readers pass over it, and the writer,
/// whose next message it refused (the feed's last message was no longer the writer's), goes on after it.
#[test]
fn a_message_another_program_publishes_on_the_feed_is_passed_over_and_the_feed_goes_on() {
    let c = feed_cluster("");
    insert_books(c.node(1), 0, 3);
    c.node(2).wait_feed("Books", 3, T);
    let published = stream::publish(
        c.node(2).client_port,
        "harmonylite.feed.Books",
        vec![b"not a record".to_vec()],
    );
    let foreign = published[0].clone().expect("the foreign message is stored");
    insert_books(c.node(1), 3, 6);
    let feed = c.node(3).wait_feed("Books", 6, Duration::from_secs(60));
    let ids: Vec<i64> = feed
        .of("Books")
        .iter()
        .map(|r| r["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1000..1006).collect::<Vec<i64>>(),
        "every book once, in order"
    );
    // The writer said where the foreign message is.
    let at = format!("from={foreign}");
    let said: Vec<String> = (1..=3)
        .flat_map(|i| {
            c.node(i)
                .log_lines_with(&["the feed holds messages its writer did not write", &at])
        })
        .collect();
    assert!(
        !said.is_empty(),
        "no node's feed writer named the foreign message"
    );
    // And a later write still reaches the feed: the writer goes on after the foreign message.
    insert_books(c.node(2), 6, 7);
    c.node(1).wait_feed("Books", 7, Duration::from_secs(60));
}
