//! Nodes joining a running cluster: a new node gets the rows that predate capture (from the store's snapshot,
//! or from one a live peer takes on request), keeps what its own file held in `<db>.pre-join`, and a cluster's
//! very first start restores nothing.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

/// The quick start's tables, without their seven books.
const SCHEMA_ONLY: &str = "CREATE TABLE Books (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author TEXT NOT NULL, publication_year INTEGER);
CREATE TABLE Authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, birth_year INTEGER);";

const STREAM: &str = "harmonylite-changes-c-1";

fn count(node: &Node, sql: &str) -> i64 {
    node.sql(sql).trim().parse().unwrap_or(-1)
}

/// Three nodes started with the quick start's seven books in every database; 500 books written on node 1 and
/// replicated. Checks the first start joined nothing: no snapshot taken, no pre-join copy left.
fn cluster_with_history() -> Cluster {
    let c = Cluster::start(Options::default());
    for n in &c.nodes {
        assert!(
            !n.log_lines_with(&["the cluster's first start, nothing to join"])
                .is_empty(),
            "node {} saw the cluster's first start:\n{}",
            n.id,
            n.log_tail(20)
        );
    }
    let mut sql = String::from("BEGIN;");
    for k in 0..500 {
        sql.push_str(&format!(
            "INSERT INTO Books (title, author, publication_year) VALUES ('joined {k}', 'A', 2026);"
        ));
        if k % 50 == 49 {
            sql.push_str("COMMIT; BEGIN;");
        }
    }
    sql.push_str("COMMIT;");
    c.node(1).sql(&sql);
    c.converged("Books", T);
    assert_eq!(count(c.node(1), "SELECT count(*) FROM Books;"), 507);
    for n in &c.nodes {
        assert!(
            !n.pre_join_copy().exists(),
            "node {}: no pre-join copy after a first start",
            n.id
        );
        assert!(
            n.log_lines_with(&["taking a snapshot"]).is_empty(),
            "node {}: no snapshot at a first start",
            n.id
        );
    }
    c
}

/// The stream still holds every change since the first start, so only the join (not a gap) can bring the
/// seven books to a new node.
fn assert_stream_untrimmed(c: &Cluster) {
    let info = c.node(1).stream_info(STREAM).expect("stream info");
    assert_eq!(info.state.first_sequence, 1, "the stream was not trimmed");
}

/// The reproduction: a fourth node with the schema only, no snapshot in the store. It asks a peer for
/// one, restores it, and ends with all 507 books; `-verify` finds the four nodes identical.
#[test]
fn a_new_node_without_a_snapshot_in_the_store_asks_a_peer_and_gets_every_row() {
    let mut c = cluster_with_history();
    assert_stream_untrimmed(&c);
    let n = c.add_node(SCHEMA_ONLY);
    c.node_mut(n).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "node 4 has every book", || {
        count(c.node(n), "SELECT count(*) FROM Books;") == 507
    });
    c.node(2)
        .sql("INSERT INTO Authors (name) VALUES ('after the join');");
    let tables = c.converged_all(T);
    assert_eq!(tables["Books"].1, 507);
    let node4 = c.node(n);
    assert!(
        !node4
            .log_lines_with(&["a peer saved a snapshot for this node"])
            .is_empty(),
        "node 4 asked a peer:\n{}",
        node4.log_tail(40)
    );
    assert!(
        !node4
            .log_lines_with(&["snapshot restored into the database"])
            .is_empty()
    );
    let answered: usize = c.nodes[..3]
        .iter()
        .map(|p| {
            p.log_lines_with(&["taking a snapshot for a joining node"])
                .len()
        })
        .sum();
    assert_eq!(
        answered,
        1,
        "one peer took one snapshot; node 4's log:\n{}",
        node4.log_tail(80)
    );
    assert!(
        !node4.pre_join_copy().exists(),
        "a database with no rows leaves no pre-join copy"
    );
    let verified = c.assert_verified(1);
    assert!(verified.contains("4 nodes"), "{verified}");
    c.assert_all_alive();
}

/// With a snapshot already in the store (saved by `-save-snapshot` before the join), the new node restores it
/// without asking anyone, then applies the stream from the snapshot's positions.
#[test]
fn a_new_node_restores_the_stores_snapshot_before_applying_the_stream() {
    let mut c = cluster_with_history();
    let o = c.node(1).command().arg("-save-snapshot").output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    c.node(3)
        .sql("INSERT INTO Books (title, author, publication_year) VALUES ('after the snapshot', 'B', 2026);");
    c.converged("Books", T);
    assert_stream_untrimmed(&c);
    let n = c.add_node(SCHEMA_ONLY);
    c.node_mut(n).start_and_wait(Duration::from_secs(90));
    let tables = c.converged_all(T);
    assert_eq!(tables["Books"].1, 508);
    let node4 = c.node(n);
    assert!(
        !node4
            .log_lines_with(&["restoring the latest snapshot before applying the stream"])
            .is_empty(),
        "{}",
        node4.log_tail(40)
    );
    assert!(
        node4.log_lines_with(&["asking a peer"]).is_empty(),
        "node 4 restored the store's snapshot without asking:\n{}",
        node4.log_tail(80)
    );
    c.assert_verified(2);
    c.assert_all_alive();
}

/// A new node whose file already held rows (two books of its own, written before its first start): they are
/// never published (the other nodes never see them), the snapshot replaces them, and the file as it was is
/// kept in `<db>.pre-join`, named at WARN.
#[test]
fn a_joining_nodes_own_rows_are_kept_in_the_pre_join_copy() {
    let mut c = cluster_with_history();
    // A snapshot in the store: without one, a node with rows of its own joining within a minute of the
    // cluster's first change is taken for a late node of its first start.
    let o = c.node(2).command().arg("-save-snapshot").output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let n = c.add_node(&format!(
        "{SCHEMA_ONLY}
         INSERT INTO Books (id, title, author, publication_year) VALUES (9001, 'only on the new node', 'L', 1999),
           (9002, 'also only there', 'L', 1998);"
    ));
    c.node_mut(n).start_and_wait(Duration::from_secs(90));
    let tables = c.converged_all(T);
    assert_eq!(tables["Books"].1, 507);
    for p in &c.nodes {
        assert_eq!(
            count(p, "SELECT count(*) FROM Books WHERE id > 9000;"),
            0,
            "node {}: the new node's own rows were never published",
            p.id
        );
    }
    let node4 = c.node(n);
    let copy = node4.pre_join_copy();
    let warned = node4.log_lines_with(&["WARN", "pre-join"]);
    assert!(
        warned
            .iter()
            .any(|l| l.contains(&copy.display().to_string())),
        "a WARN line names the copy: {warned:?}"
    );
    assert_eq!(
        sqlite3(
            &copy,
            "SELECT group_concat(title, '|') FROM Books ORDER BY id;"
        )
        .trim(),
        "only on the new node|also only there"
    );
    c.assert_all_alive();
}

/// With snapshots disabled everywhere, a new node says once, at WARN, what it cannot get and how to seed it,
/// and applies the stream.
#[test]
fn a_joining_node_without_snapshots_says_how_to_seed_it() {
    let mut c = Cluster::new(Options {
        extra_toml: "[snapshot]\nenabled = false\n".into(),
        ..Default::default()
    });
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    c.node(1).sql(
        "INSERT INTO Books (title, author, publication_year) VALUES ('in the stream', 'S', 2026);",
    );
    c.converged("Books", T);
    let n = c.add_node(SCHEMA_ONLY);
    c.node_mut(n).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "node 4 applies the stream", || {
        count(
            c.node(n),
            "SELECT count(*) FROM Books WHERE title = 'in the stream';",
        ) == 1
    });
    let warned = c
        .node(n)
        .log_lines_with(&["WARN", "snapshots are disabled"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("Seed its database"), "{}", warned[0]);
    c.assert_all_alive();
}

/// Every stream's server names (leader and replicas), as node 1's server sees them.
fn stream_peers(c: &Cluster) -> Vec<(String, usize, Vec<String>)> {
    c.node(1)
        .with_jetstream(async |js| {
            use futures::StreamExt;
            let mut names = js.stream_names();
            let mut out = Vec::new();
            while let Some(Ok(n)) = names.next().await {
                let mut s = js.get_stream(&n).await.ok()?;
                let info = s.info().await.ok()?;
                let mut peers: Vec<String> = Vec::new();
                if let Some(cl) = &info.cluster {
                    peers.extend(cl.leader.clone());
                    peers.extend(cl.replicas.iter().map(|r| r.name.clone()));
                }
                out.push((n, info.config.num_replicas, peers));
            }
            Some(out)
        })
        .unwrap_or_default()
}

/// A fourth node joins, then dies for good. The streams keep what it has not handled until it is removed:
/// `-remove-node 4` (refused for a running node) deletes its entries, takes its server out of every stream's
/// replicas, and then the streams are trimmed past it, `-wait-replicated` and `-verify` answer for the three
/// nodes left, every stream is back at its replicas on them, and node 4 is refused when it starts again.
#[test]
fn a_node_removed_for_good_lets_go_and_is_refused_if_it_returns() {
    let mut c = Cluster::start(Options::default());
    c.node(1)
        .sql("INSERT INTO Authors (name) VALUES ('before node 4 joined');");
    c.converged("Authors", T);
    let n = c.add_node(SCHEMA_ONLY);
    c.node_mut(n).start_and_wait(Duration::from_secs(90));
    c.node(1)
        .sql("INSERT INTO Authors (name) VALUES ('before node 4 died');");
    c.converged_all(T);

    let o = c
        .node(1)
        .command()
        .args(["-remove-node", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("node 2 is running"),
        "{}",
        output_text(&o)
    );

    let mut gone = c.nodes.pop().expect("node 4");
    gone.kill9();
    let stopped_at = c.node(1).stream_info(STREAM).unwrap().state.last_sequence;
    for k in 0..30 {
        c.node(1).sql(&format!(
            "INSERT INTO Authors (name) VALUES ('after node 4 died {k}');"
        ));
    }
    c.converged_all(T);
    // A snapshot newer than node 4's last position: the streams keep what the latest snapshot needs, so only
    // node 4's entry holds them below it now. Node 2 applied every change, so its copy's positions say so.
    let o = c.node(2).command().arg("-save-snapshot").output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    c.eventually(T, "-status shows node 4 unreachable", || {
        let o = c
            .node(1)
            .command()
            .args(["-status", "-json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|r| {
            r["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["node_id"] == 4 && n["reachable"] == false)
            })
        })
    });

    let o = c
        .node(1)
        .command()
        .args(["-remove-node", "4"])
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("node 4 removed"), "{text}");
    assert!(text.contains("harmonylite-positions/node-4"), "{text}");
    assert!(text.contains("harmonylite-status/node-4"), "{text}");

    c.eventually(T, "the stream trimmed past node 4's last position", || {
        c.node(1)
            .stream_info(STREAM)
            .is_some_and(|i| i.state.first_sequence > stopped_at)
    });
    c.eventually(
        T,
        "every stream back at its replicas, none on node 4",
        || {
            let peers = stream_peers(&c);
            !peers.is_empty()
                && peers.iter().all(|(_, want, on)| {
                    on.len() == *want && !on.iter().any(|p| p == "harmonylite-node-4")
                })
        },
    );
    let o = c
        .node(2)
        .command()
        .args(["-wait-replicated", "-timeout", "30"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let verified = c.assert_verified(3);
    assert!(verified.contains("3 nodes"), "{verified}");
    let status = c
        .node(1)
        .command()
        .args(["-status", "-json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["node_id"] != 4),
        "{report}"
    );
    assert!(report["removed"]["4"].is_object(), "{report}");

    // Node 4 comes back: refused, with how to rejoin as a new node.
    gone.start();
    let exit = gone.wait_exit(Duration::from_secs(90));
    let log = gone.log_text();
    assert_eq!(exit, Some(1), "{log}");
    assert!(
        log.contains("node_id 4 was removed from this cluster"),
        "{log}"
    );
    assert!(log.contains("join it as a new node"), "{log}");
    c.assert_all_alive();
}

/// A node gone without `-remove-node` holds the streams' retention: once it has not been heard of for
/// `stale_node_seconds` while its position is a stream's lowest, every node names it at WARN with the command
/// to remove it, `/health` lists it under `stale_nodes`, and `-status` says so under its table.
#[test]
fn a_silent_node_holding_a_stream_is_named() {
    let health_port = free_port();
    let mut c = Cluster::new(Options {
        extra_toml: "[replication_log]\nstale_node_seconds = 2\n".into(),
        ..Default::default()
    });
    c.node_mut(1).add_toml(&format!(
        "[health_check]\nenable = true\nbind = \"127.0.0.1:{health_port}\"\n"
    ));
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    c.book_reaches_the_others(1, "Before node 3 went away");
    // Node 3 is known to the cluster (its status entry written) before it goes away.
    c.eventually(T, "-status lists node 3 reachable", || {
        let o = c.node(2).command().arg("-status").output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with("3 ") && l.contains(" yes "))
    });
    c.node_mut(3).kill9();
    c.node(1)
        .sql("INSERT INTO Books (title, author) VALUES ('after node 3 went away', 'S');");
    let named = "node 3 has not been heard of for";
    c.eventually(T, "node 1 names node 3 at WARN", || {
        !c.node(1).log_lines_with(&["WARN", named]).is_empty()
    });
    let line = c.node(1).log_lines_with(&["WARN", named]).remove(0);
    assert!(line.contains("-remove-node 3"), "{line}");
    c.eventually(T, "/health lists node 3", || {
        http_get(health_port, "/health").is_some_and(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).is_ok_and(|j| {
                j["stale_nodes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|h| h["node_id"] == 3))
            })
        })
    });
    // `-status` reads the stream's end from the stream itself: node 1's write after node 3 went away may still
    // be on its way there (the stream's leader may have been node 3's server, and a new one is elected first).
    let holding = format!("Holding a stream: {named}");
    c.eventually(T, "-status names node 3 as holding a stream", || {
        let o = c.node(2).command().arg("-status").output().unwrap();
        output_text(&o).contains(&holding)
    });
    // Once per period: not a line every few seconds.
    let warned = c.node(1).log_lines_with(&["WARN", named]).len();
    assert!(warned <= 3, "named {warned} times");
    c.node_mut(3).start_and_wait(Duration::from_secs(90));
    c.eventually(T, "node 3 back: /health lists no stale node", || {
        http_get(health_port, "/health").is_some_and(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body)
                .is_ok_and(|j| j["stale_nodes"].as_array().is_some_and(|a| a.is_empty()))
        })
    });
}
