//! Write confirmation on real three-node clusters, with writes made by the real `sqlite3` CLI: once
//! `-wait-replicated` on the writing node's config exits 0, the rows are already readable on every other node
//! (read at once, no waiting); with a node killed, the command times out with exit code 1 and names it; the
//! health server's `GET /wait-replicated` answers 200 once a write is everywhere, and 504 naming the node
//! behind; a cluster that cannot be reached makes the command fail with a clear error.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(45);

/// Runs `-wait-replicated` (with `extra` flags) on `node`'s config.
fn wait_replicated(node: &Node, extra: &[&str]) -> Output {
    output_retrying(node.command().arg("-wait-replicated").args(extra))
}

/// How many books titled `title` `node`'s database holds, read now.
fn books_titled(node: &Node, title: &str) -> i64 {
    open_read_only(&node.db)
        .query_row(
            "SELECT count(*) FROM Books WHERE title = ?1",
            [title],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("node {}: {e}", node.id))
}

/// Inserts a book titled `title` on `node` with the sqlite3 CLI.
fn write_book(node: &Node, title: &str) {
    node.sql(&format!(
        "INSERT INTO Books (title, author, publication_year) VALUES ('{title}', 'W', 2024);"
    ));
}

/// Asserts that the book titled `title` is on every node of `c`, read once, right now.
fn on_every_node_now(c: &Cluster, title: &str, output: &str) {
    let counts: Vec<i64> = c.nodes.iter().map(|n| books_titled(n, title)).collect();
    assert_eq!(
        counts,
        vec![1; c.nodes.len()],
        "{title:?} is not on every node right after the wait returned:\n{output}\n{}",
        c.logs_tail()
    );
}

/// Options whose node 1 serves health (and `/wait-replicated`) on a loopback port; returns the port.
fn with_health_on_node_1() -> (Options, u16) {
    let port = free_port();
    let opts = Options {
        per_node_toml: vec![format!(
            "[health_check]\nenable = true\nbind = \"127.0.0.1:{port}\"\n"
        )],
        ..Default::default()
    };
    (opts, port)
}

/// Node `pid` stopped with SIGSTOP until dropped (SIGCONT).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        send_signal(pid, Signal::SIGSTOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        send_signal(self.0, Signal::SIGCONT);
    }
}

/// Writes a book titled `title` on node 1 while `hold()` keeps the change from reaching everywhere (until what
/// it returns is dropped): `-wait-replicated` on node 1's config must keep waiting for as long (`what` says
/// why), then exit 0 with its one line, and the row be on every node the moment it has returned.
fn confirmed_after_hold<H>(c: &Cluster, title: &str, what: &str, hold: impl FnOnce() -> H) {
    let held = hold();
    write_book(c.node(1), title);
    let mut cmd = c.node(1).command();
    cmd.args(["-wait-replicated", "-timeout", "30"]);
    let mut child = ChildGuard::spawn(cmd);
    let mut early = false;
    during(Duration::from_millis(1500), || {
        early = early || child.exited().is_some();
    });
    drop(held);
    let (status, stdout) = child.finish();
    on_every_node_now(c, title, &stdout);
    assert!(
        !early,
        "-wait-replicated returned ({status}) while {what}:\n{stdout}"
    );
    assert_eq!(status.code(), Some(0), "{stdout}\n{}", c.logs_tail());
    assert!(
        stdout.starts_with("replicated: changes up to log id ")
            && stdout.trim_end().ends_with(" are on all 3 nodes"),
        "{stdout}"
    );
}

/// Five times: a row written on node 1 while another node (2, then 3, ...) cannot apply it (the test holds that
/// node's write lock); then once while node 1 itself cannot publish it (its process stopped). Each time
/// `-wait-replicated` keeps waiting while the change cannot be everywhere, exits 0 once it can, and the row
/// is on nodes 2 and 3 the moment it has returned.
#[test]
fn a_write_is_on_every_node_when_the_command_returns() {
    let c = Cluster::start(Options::default());
    for i in 0..5 {
        let node = c.node(2 + i % 2);
        let what = format!("node {} could not apply the change", node.id);
        confirmed_after_hold(&c, &format!("confirmed {i}"), &what, || {
            let lock = open(&node.db);
            lock.execute_batch("BEGIN IMMEDIATE").unwrap();
            lock
        });
    }
    let pid = c.node(1).pid().expect("node 1 runs");
    confirmed_after_hold(
        &c,
        "published late",
        "node 1 could not publish the change",
        || Stopped::new(pid),
    );
    // The double-dash form and an explicit timeout in the equals form work too.
    let o = output_retrying(
        c.node(2)
            .command()
            .args(["--wait-replicated", "-timeout=20"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    c.assert_all_alive();
}

/// Node 3 killed with -9: after a write on node 1, `-wait-replicated -timeout 5` exits 1 within a bounded time
/// and names node 3 and how far behind it is; the HTTP form answers 504 naming it too.
#[test]
fn a_dead_node_makes_the_wait_time_out_and_is_named() {
    let (opts, port) = with_health_on_node_1();
    let mut c = Cluster::start(opts);
    write_book(c.node(1), "before the kill");
    let o = wait_replicated(c.node(1), &["-timeout", "30"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    c.node_mut(3).kill9();
    // Right after the kill the streams elect new leaders; the case here is a node that is down, so wait until
    // the cluster answers again and sees node 3 gone.
    let mut last = String::new();
    let settled = poll(T, || {
        let o = output_retrying(c.node(1).command().arg("-status"));
        last = output_text(&o);
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("3 nodes, 2 reachable")
    });
    assert!(
        settled.is_some(),
        "-status never showed node 3 unreachable; last:\n{last}\n{}",
        c.logs_tail()
    );
    // ... and until node 2 applies again: its consumer may have been moving to its own server just as node 3
    // died, and placing it can take several tries then (the case here is the dead node, named alone).
    write_book(c.node(1), "after the kill");
    c.eventually(T, "node 2 applies again after the kill", || {
        books_titled(c.node(2), "after the kill") == 1
    });
    write_book(c.node(1), "while node 3 is down");
    let started = Instant::now();
    let o = wait_replicated(c.node(1), &["-timeout", "5"]);
    let took = started.elapsed();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}\n{}", c.logs_tail());
    assert!(
        took < Duration::from_secs(25),
        "a 5 s timeout took {took:?}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("not replicated within 5.0 s"), "{text}");
    let named: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("node "))
        .collect();
    assert_eq!(
        named.len(),
        1,
        "only node 3 is behind: {text}\n{}",
        c.logs_tail()
    );
    assert!(
        named[0].contains("node 3 (unreachable") && named[0].contains("shard 1 behind by "),
        "{text}"
    );

    let r = http_get_within(port, "/wait-replicated?timeout=2", Duration::from_secs(30))
        .expect("/wait-replicated answers");
    assert_eq!(r.status, 504, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "timeout", "{v:#}");
    let behind: Vec<u64> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(behind, [3], "{v:#}");
    assert_eq!(v["nodes"][0]["reachable"], false, "{v:#}");
}

/// `GET /wait-replicated` on node 1's health server answers 200 with JSON after a write, and the row is then on
/// every node; meanwhile health keeps answering.
#[test]
fn the_http_form_answers_once_a_write_is_everywhere() {
    let (opts, port) = with_health_on_node_1();
    let c = Cluster::start(opts);
    eventually(T, "health answers", || http_get(port, "/health"));
    for i in 0..3 {
        let title = format!("over http {i}");
        write_book(c.node(1), &title);
        let r = http_get_within(port, "/wait-replicated?timeout=30", Duration::from_secs(40))
            .expect("/wait-replicated answers");
        on_every_node_now(&c, &title, &r.body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        let v = r.json();
        assert_eq!(v["status"], "replicated", "{v:#}");
        assert_eq!(v["node_id"], 1, "{v:#}");
        assert_eq!(v["nodes"], serde_json::json!([1, 2, 3]), "{v:#}");
        assert!(v["upto"].as_u64().unwrap() > 0, "{v:#}");
    }
    let bad = http_get(port, "/wait-replicated?timeout=soon").expect("answers");
    assert_eq!(bad.status, 400, "{}", bad.body);
    c.assert_all_alive();
}

/// No NATS to reach: `-wait-replicated` exits 1 and says why.
#[test]
fn an_unreachable_cluster_fails_with_a_clear_error() {
    let c = Cluster::without_nats();
    let o = wait_replicated(c.node(1), &["-timeout", "5"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot reach the cluster's NATS"), "{text}");
}

/// `-wait-replicated` run the moment a fresh three-node cluster has installed capture (its buckets may not
/// exist yet) asks again until the nodes answer: exit 0.
#[test]
fn wait_replicated_while_a_fresh_cluster_starts_waits_for_every_node() {
    let mut c = Cluster::new(Options::default());
    c.start_all_until_captured(T);
    let o = wait_replicated(c.node(1), &["-timeout", "30"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        output_text(&o),
        c.logs_tail()
    );
    c.assert_all_alive();
}
