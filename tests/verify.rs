//! `-verify` beside real running nodes: a converged cluster under light write load verifies identical (exit 0,
//! the summary line); a row changed on one node behind capture's back (while its triggers were removed with
//! `-cleanup`) is found, naming the table and the node (exit 1); a killed node is named as not answering
//! (exit 2).

mod support;

use std::process::Output;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(45);

use support::output_text as text;

/// Runs `-verify` (with `extra` flags) on `node`'s config.
fn verify(node: &Node, extra: &[&str]) -> Output {
    output_retrying(node.command().arg("-verify").args(extra))
}

/// Three nodes, writes on two of them until converged, then node 1 keeps inserting a row every ~100 ms while
/// `-verify` runs: the nodes are compared at a common point of the stream and found identical.
#[test]
fn a_converged_cluster_under_light_writes_verifies_identical() {
    let c = Cluster::start(Options::default());
    c.node(2)
        .sql("INSERT INTO Authors (name, birth_year) VALUES ('from 2', 1950);");
    c.node(1)
        .sql("INSERT INTO Books (title, author) VALUES ('from 1', 'N1');");
    c.converged_all(T);

    let writer = Writer::start(&c.node(1).db, Duration::from_millis(100), |i| {
        format!(
            "INSERT INTO Books (title, author, publication_year) VALUES ('load {i}', 'W', {i});"
        )
    });
    // Writes are under way before the command starts.
    c.eventually(T, "the writer's rows reach node 3", || {
        c.node(3)
            .try_sql("SELECT count(*) FROM Books WHERE author = 'W';")
            .is_ok_and(|n| n.trim().parse::<u32>().unwrap_or(0) >= 3)
    });
    let o = verify(c.node(1), &["-timeout", "30"]);
    let (written, _) = writer.stop();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", c.logs_tail());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.starts_with("verified: 3 nodes, 2 tables, ")
            && stdout.contains(" rows identical at positions {"),
        "{out}"
    );
    assert!(written > 3, "the writer kept writing ({written} rows)");
    c.assert_all_alive();
}

/// Node 2 stopped, its triggers and bookkeeping removed with `-cleanup`, a seeded row changed with the sqlite3
/// CLI, node 2 started again: capture is installed afresh and does not publish the changed row (it changed
/// while no triggers existed). The checksums find it: exit 1, naming Books and node 2.
#[test]
fn a_row_changed_behind_captures_back_is_found() {
    let mut c = Cluster::start(Options::default());
    c.node(1)
        .sql("INSERT INTO Books (title, author) VALUES ('from 1', 'N1');");
    c.converged_all(T);

    assert_eq!(c.node_mut(2).stop(), Some(0), "node 2 stops cleanly");
    let o = output_retrying(c.node(2).command().arg("-cleanup"));
    assert_eq!(o.status.code(), Some(0), "-cleanup: {}", text(&o));
    c.node(2)
        .sql("UPDATE Books SET title = 'changed behind capture' WHERE id = 1;");
    c.node_mut(2).start_and_wait(T);
    c.eventually(T, "node 2 caught up on the row from node 1", || {
        c.node(2)
            .try_sql("SELECT count(*) FROM Books WHERE title = 'from 1';")
            .is_ok_and(|n| n.trim() == "1")
    });

    let o = verify(c.node(1), &["-timeout", "30"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", c.logs_tail());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("table Books differs on node 2 (8 rows, checksum ")
            && stdout.contains("from the majority, nodes 1, 3 (8 rows, checksum "),
        "{out}"
    );
    assert!(
        !stdout.contains("table Authors"),
        "only Books differs:\n{out}"
    );
    c.assert_all_alive();
}

/// Once `-verify` knows three nodes (from their status entries), node 3 is killed with -9: `-verify -timeout 10`
/// gives up on it and names it (exit 2).
#[test]
fn a_node_that_does_not_answer_is_named() {
    let mut c = Cluster::start(Options::default());
    c.node(3)
        .sql("INSERT INTO Books (title, author) VALUES ('from 3', 'N3');");
    c.converged_all(T);
    c.eventually(T, "-verify verifies all three nodes", || {
        let o = verify(c.node(1), &["-timeout", "10"]);
        o.status.code() == Some(0)
            && String::from_utf8_lossy(&o.stdout).starts_with("verified: 3 nodes, 2 tables, 8 rows")
    });

    c.node_mut(3).kill9();
    let started = std::time::Instant::now();
    let o = verify(c.node(1), &["-timeout", "10"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{}", c.logs_tail());
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("not verified: node 3 did not answer within 10s"),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the command kept to its timeout: {:?}",
        started.elapsed()
    );
    c.assert_all_alive();
}

/// No NATS to reach: `-verify` exits 2 (not verified) and says why.
#[test]
fn an_unreachable_cluster_is_not_verified() {
    let c = Cluster::without_nats();
    let o = verify(c.node(1), &["-timeout", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("cannot reach the cluster's NATS"),
        "{}",
        text(&o)
    );
}

/// What a deploy script does: start a fresh three-node cluster and run `-verify` the moment every node has
/// installed capture, while the nodes' responders may not be subscribed yet. The request is sent again until
/// every node answers: exit 0, the three nodes identical.
#[test]
fn verify_run_while_a_fresh_cluster_starts_waits_for_every_node() {
    let mut c = Cluster::new(Options::default());
    c.start_all_until_captured(T);
    let o = verify(c.node(1), &["-timeout", "30"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", c.logs_tail());
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("verified: 3 nodes, "),
        "{out}"
    );
    c.assert_all_alive();
}
