//! What operators see, on real clusters: Prometheus metrics that follow the rows written and applied, health
//! that turns 503 when this node's JetStream loses its quorum and 200 again after it heals, and readiness that
//! is 503 until the streams exist.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

/// Options for a cluster whose nodes serve metrics and health on their own loopback ports; returns the ports
/// (metrics, health) per node.
fn observed_cluster(nodes: usize) -> (Options, Vec<(u16, u16)>) {
    let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
    let per_node_toml = ports
        .iter()
        .map(|(m, h)| {
            format!(
                "[prometheus]\nenable = true\nbind = \"127.0.0.1:{m}\"\n\n\
                 [health_check]\nenable = true\nbind = \"127.0.0.1:{h}\"\nmax_stuck_seconds = 5\n"
            )
        })
        .collect();
    (
        Options {
            nodes,
            per_node_toml,
            ..Default::default()
        },
        ports,
    )
}

fn scrape(port: u16) -> String {
    let r = eventually(T, "metrics answer", || http_get(port, "/metrics"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    r.body
}

/// Metrics move with the rows: node 1 counts what it published, nodes 2 and 3 what they applied, every series
/// carries `node_id`, lag returns to zero, and the batch-duration histograms fill.
#[test]
fn metrics_follow_rows_written_and_applied() {
    let (opts, ports) = observed_cluster(3);
    let c = Cluster::start(opts);
    let before = scrape(ports[0].0);
    assert_eq!(
        metric(&before, "harmonylite_published", &[("node_id", "1")]),
        Some(0.0),
        "{before}"
    );
    for name in [
        "# TYPE harmonylite_published counter",
        "# TYPE harmonylite_pending_publish gauge",
        "# TYPE harmonylite_schema_mismatch_paused gauge",
        "# TYPE harmonylite_jetstream_quorum gauge",
    ] {
        assert!(before.contains(name), "{name} missing:\n{before}");
    }

    // 5 transactions of 5 rows on node 1, with the sqlite3 CLI.
    for t in 0..5 {
        let values: Vec<String> = (0..5)
            .map(|i| format!("('metrics {t}.{i}', 'M', {})", 2000 + t * 5 + i))
            .collect();
        c.node(1).sql(&format!(
            "INSERT INTO Books (title, author, publication_year) VALUES {};",
            values.join(", ")
        ));
    }
    c.converged("Books", T);

    let text = eventually(T, "node 1 counts 25 published rows", || {
        let t = scrape(ports[0].0);
        (metric(&t, "harmonylite_published", &[("node_id", "1")]) == Some(25.0)).then_some(t)
    });
    assert!(
        metric(&text, "harmonylite_published_messages", &[("node_id", "1")]).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "harmonylite_scan_changes_count", &[("node_id", "1")]).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "harmonylite_publish_batch_seconds_count",
            &[("node_id", "1")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "harmonylite_applied_rows", &[("node_id", "1")]),
        Some(0.0),
        "node 1 applies nothing of its own"
    );
    for (i, (m, _)) in ports.iter().enumerate().skip(1) {
        let id = (i + 1).to_string();
        // The stream's last sequence is read by the status task about once a second, the applied position
        // at every apply: wait until both have been seen at the same point.
        let t = eventually(
            T,
            "peer counts 25 applied rows, no lag, position at the stream's end",
            || {
                let t = scrape(*m);
                let shard = [("node_id", id.as_str()), ("shard", "1")];
                (metric(&t, "harmonylite_applied_rows", &[("node_id", &id)]) == Some(25.0)
                    && metric(&t, "harmonylite_lag_messages", &shard) == Some(0.0)
                    && metric(&t, "harmonylite_jetstream_quorum", &[("node_id", &id)]) == Some(1.0)
                    && metric(&t, "harmonylite_applied_position", &shard)
                        == metric(&t, "harmonylite_stream_last_sequence", &shard))
                .then_some(t)
            },
        );
        assert_eq!(
            metric(&t, "harmonylite_published", &[("node_id", &id)]),
            Some(0.0)
        );
        assert!(
            metric(
                &t,
                "harmonylite_apply_batch_seconds_count",
                &[("node_id", &id)]
            )
            .unwrap()
                >= 1.0,
            "{t}"
        );
        let applied = metric(
            &t,
            "harmonylite_applied_position",
            &[("node_id", &id), ("shard", "1")],
        );
        assert!(applied >= Some(1.0), "{t}");
        assert_eq!(
            applied,
            metric(
                &t,
                "harmonylite_stream_last_sequence",
                &[("node_id", &id), ("shard", "1")]
            ),
            "{t}"
        );
    }
    // Any path serves the metrics, as the original's handler does.
    let other = http_get(ports[1].0, "/anything").unwrap();
    assert_eq!(other.status, 200);
    assert!(other.body.contains("harmonylite_applied_rows"));
    c.assert_all_alive();
}

/// Two of three nodes killed: node 1's health turns 503 (no quorum) within seconds; a write made on node 1
/// meanwhile arrives on the others after they restart, and health is 200 again.
#[test]
fn health_follows_quorum_and_recovers() {
    let (opts, ports) = observed_cluster(3);
    let mut c = Cluster::start(opts);
    let health = |i: usize| http_get(ports[i].1, "/health");
    for i in 0..3 {
        eventually(T, "healthy", || health(i).is_some_and(|r| r.status == 200));
    }
    let h = health(0).unwrap();
    assert_eq!(h.content_type, "application/json");
    let j = h.json();
    assert_eq!(j["status"], "healthy");
    assert_eq!(j["node_id"], 1);
    assert_eq!(j["quorum"], true);
    assert_eq!(j["db_connected"], true);
    assert_eq!(j["nats_connected"], true);
    assert_eq!(j["cdc_installed"], true);
    assert_eq!(j["tables_tracked"], 2);
    assert_eq!(j["lag"][0]["lag_messages"], 0);

    c.node_mut(2).kill9();
    c.node_mut(3).kill9();
    let down = eventually(Duration::from_secs(20), "node 1 unhealthy", || {
        health(0).filter(|r| r.status == 503)
    });
    let j = down.json();
    assert_eq!(j["status"], "unhealthy");
    assert_eq!(j["quorum"], false);
    assert!(
        j["problems"].to_string().contains("quorum"),
        "{}",
        down.body
    );

    c.node(1).sql(
        "INSERT INTO Books (title, author, publication_year) VALUES ('Written during the outage', 'O', 2024);",
    );
    c.node_mut(2).start();
    c.node_mut(3).start();
    c.wait_all_running(T);
    eventually(T, "node 1 healthy again", || {
        health(0).is_some_and(|r| r.status == 200)
    });
    for i in [2, 3] {
        c.node(i).eventually(T, "the outage's row arrives", || {
            c.node(i)
                .try_sql("SELECT count(*) FROM Books WHERE title = 'Written during the outage';")
                .is_ok_and(|o| o.trim() == "1")
        });
    }
    c.converged("Books", T);
    for i in 0..3 {
        eventually(T, "healthy after heal", || {
            health(i).is_some_and(|r| r.status == 200)
        });
    }
    c.assert_all_alive();
}

/// Node 1 alone (its two peers not started yet): the endpoints answer while it waits for its cluster, 503 for
/// health and readiness; once the peers run and the streams exist, readiness is 200.
#[test]
fn readiness_waits_for_the_streams() {
    let (opts, ports) = observed_cluster(3);
    let mut c = Cluster::new(opts);
    c.node_mut(1).start();
    let r = eventually(T, "readiness answers", || http_get(ports[0].1, "/ready"));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert!(r.body.contains("streams do not exist"), "{}", r.body);
    assert_eq!(http_get(ports[0].1, "/health").unwrap().status, 503);

    c.node_mut(2).start();
    c.node_mut(3).start();
    c.wait_all_running(Duration::from_secs(90));
    let ready = eventually(T, "node 1 ready", || {
        http_get(ports[0].1, "/ready").filter(|r| r.status == 200)
    });
    let j = ready.json();
    assert_eq!(j["streams_ready"], true);
    assert_eq!(j["not_ready"].as_array().map(Vec::len), Some(0));
    c.assert_all_alive();
}

/// A node far behind its streams shows its catch-up: `catch_up` in `/health`, `harmonylite_catching_up` in the
/// metrics, `catching up` in its log; and says `caught up` with what it applied once it holds every row. Node 3
/// is held behind by a write transaction the test keeps open on its database while node 1 publishes 3,000
/// messages (one row each: `scan_max_changes = 1`).
#[test]
fn a_node_far_behind_shows_its_catch_up_and_says_when_it_is_done() {
    let (mut opts, ports) = observed_cluster(3);
    opts.per_node_toml[0].insert_str(0, "scan_max_changes = 1\n");
    let c = Cluster::start(opts);
    c.book_reaches_the_others(1, "before the lock");
    let lock = c.node(3).open();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // An application committing 3,000 single-row transactions on node 1.
    let app = c.node(1).open();
    for i in 0..3_000 {
        app.execute(
            "INSERT INTO Books (id, title, author) VALUES (?1, ?2, 'A')",
            rusqlite::params![10_000 + i, format!("row {i}")],
        )
        .unwrap();
    }
    let health = eventually(T, "node 3's health shows a catch-up", || {
        http_get(ports[2].1, "/health").filter(|r| !r.json()["catch_up"].is_null())
    });
    let j = health.json();
    let behind = j["catch_up"]["behind_messages"].as_u64().unwrap();
    assert!(behind >= 1_000, "{}", health.body);
    assert!(
        j["catch_up"]["seconds"].as_f64().is_some(),
        "{}",
        health.body
    );
    let body = scrape(ports[2].0);
    assert_eq!(
        metric(&body, "harmonylite_catching_up", &[("node_id", "3")]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        c.node(3)
            .log_lines_with(&[
                "catching up: this node is behind its streams",
                "behind_messages="
            ])
            .len(),
        1
    );

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let done = c.node(3).eventually(T, "node 3 says it caught up", || {
        c.node(3)
            .log_lines_with(&["caught up", "applied_rows="])
            .pop()
    });
    let applied: u64 = done
        .split("applied_rows=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no applied_rows in {done}"));
    assert!(applied >= 2_000, "{done}");
    assert_eq!(
        c.node(3)
            .sql("SELECT count(*) FROM Books WHERE id >= 10000;")
            .trim(),
        "3000"
    );
    eventually(T, "node 3's health without a catch-up", || {
        http_get(ports[2].1, "/health").is_some_and(|r| r.json()["catch_up"].is_null())
    });
    let body = scrape(ports[2].0);
    assert_eq!(
        metric(&body, "harmonylite_catching_up", &[("node_id", "3")]),
        Some(0.0),
        "{body}"
    );
    c.assert_all_alive();
}
