//! Readable logs on real nodes: every line carries the node id (our lines and nats-server's), a node whose peers
//! are down logs a bounded number of lines about them, and `[logging] format = "json"` gives one JSON object per
//! line.

mod support;

use std::time::Duration;

use support::{Cluster, Node, Options, during, json_lines};

/// What nats-server says, at every attempt, about a peer it cannot reach.
const ROUTE_ERROR: &str = "Error trying to connect to route";

/// The `node=<id>` a console line names: the third word of a first line (after timestamp and level), or the
/// first of a continuation line (`  node=<id> | ...`).
fn named_node(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    if line.starts_with(' ') {
        words.next()
    } else {
        words.nth(2)
    }
}

/// Panics unless every line `node` printed names it.
fn assert_every_line_names(node: &Node) {
    let want = format!("node={}", node.id);
    let text = node.log_text();
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert_eq!(
            named_node(line),
            Some(want.as_str()),
            "node {}: a line without `{want}`: {line:?}\n{text}",
            node.id
        );
    }
}

#[test]
fn every_line_of_a_node_carries_its_id() {
    let c = Cluster::start(Options::default());
    c.node(1)
        .sql("INSERT INTO Books (title, author) VALUES ('Dune', 'Frank Herbert');");
    c.converged("Books", Duration::from_secs(30));
    for n in &c.nodes {
        let ours = n.log_lines_with(&["node running"]);
        assert!(!ours.is_empty(), "node {}: no `node running` line", n.id);
        let forwarded = n.log_lines_with(&["nats-server: "]);
        assert!(
            forwarded.len() >= 3,
            "node {}: nats-server's lines are not forwarded:\n{}",
            n.id,
            n.log_text()
        );
        assert_every_line_names(n);
    }
}

#[test]
fn a_node_whose_peers_are_down_logs_a_bounded_number_of_lines_about_them() {
    let mut c = Cluster::new(Options::default());
    // Node 1 first, so that its peers' routes reach it: on losing a route it did not open itself, nats-server
    // reports every reconnection attempt (one per connection of the route's pool, every second).
    c.node_mut(1).start();
    c.node(1)
        .eventually(Duration::from_secs(30), "node 1 tries its routes", || {
            c.node(1).log_text().contains(ROUTE_ERROR)
        });
    c.start_all();
    c.wait_all_running(Duration::from_secs(90));
    c.node(1)
        .sql("INSERT INTO Books (title, author) VALUES ('Dune', 'Frank Herbert');");
    c.converged("Books", Duration::from_secs(30));
    let mark = c.node(1).log_mark();
    c.node_mut(2).kill9();
    c.node_mut(3).kill9();
    // The window is what this test measures; it spans one summary period.
    let window = Duration::from_secs(36);
    during(window, || {
        assert!(c.node(1).is_alive(), "node 1 died:\n{}", c.logs_tail())
    });
    let text = c.node(1).log_since(mark);
    let route_errors: Vec<&str> = text.lines().filter(|l| l.contains(ROUTE_ERROR)).collect();
    let per_minute = |n: usize| n as f64 * 60.0 / window.as_secs_f64();
    eprintln!(
        "node 1, {window:?} with both peers down: {} lines ({:.0}/min), {} about routes ({:.0}/min)",
        text.lines().count(),
        per_minute(text.lines().count()),
        route_errors.len(),
        per_minute(route_errors.len())
    );
    assert!(
        route_errors.len() <= 6,
        "{} route error lines in {window:?}:\n{}",
        route_errors.len(),
        route_errors.join("\n")
    );
    // Whether nats-server floods depends on which side opened each route (it retries the routes its peers
    // opened every second, per pool connection, and the ones it opened itself quietly), which is a race at
    // start. When it flooded, the flood must show as one start line and a summary, not line by line; the
    // suppressor's own tests (`nats::child_io`, `repeat`) drive a flood on a clock.
    for port in [c.node(2).cluster_port, c.node(3).cluster_port] {
        let about: Vec<&&str> = route_errors
            .iter()
            .filter(|l| l.contains(&format!("127.0.0.1:{port}:")))
            .collect();
        let flooded = about.iter().any(|l| l.contains("repeating ("));
        eprintln!(
            "route to port {port}: {} lines, {}",
            about.len(),
            if flooded {
                "nats-server flooded; summarised"
            } else {
                "nats-server retried quietly"
            }
        );
        if flooded {
            assert!(
                about.iter().any(|l| l.contains(" WARN ")),
                "a summarised flood without its start line:\n{text}"
            );
        }
    }
    assert_every_line_names(c.node(1));
}

#[test]
fn json_format_gives_one_object_per_line_with_the_node_id() {
    let c = Cluster::start(Options {
        nodes: 1,
        extra_toml: "[logging]\nformat = \"json\"".into(),
        ..Options::default()
    });
    let n = c.node(1);
    n.sql("INSERT INTO Books (title, author) VALUES ('Dune', 'Frank Herbert');");
    n.eventually(Duration::from_secs(30), "the insert is published", || {
        n.log_text().contains("\"message\":\"published\"")
    });
    let text = n.log_text();
    let objs = json_lines(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(objs.len() >= 10, "{text}");
    for o in &objs {
        assert_eq!(o.get("node_id"), Some(&1.into()), "{o:?}");
        for key in ["timestamp", "level", "message", "target"] {
            assert!(o.get(key).is_some_and(|v| v.is_string()), "no {key}: {o:?}");
        }
    }
    let nats: Vec<_> = objs
        .iter()
        .filter(|o| o.get("source").and_then(|v| v.as_str()) == Some("nats-server"))
        .collect();
    assert!(
        nats.len() >= 3,
        "nats-server's lines are not folded in:\n{text}"
    );
    assert!(
        nats.iter().all(|o| o["target"] == "nats-server"
            && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&o["level"].as_str().unwrap())
            && !o["message"].as_str().unwrap().contains("[INF]")),
        "{nats:?}"
    );
    assert!(
        objs.iter().any(|o| o["message"] == "node running"),
        "no `node running` object:\n{text}"
    );
    // The event's fields are keys of their own.
    assert!(
        objs.iter()
            .any(|o| o["target"] != "nats-server" && o.len() > 5),
        "no line with fields:\n{text}"
    );
}
