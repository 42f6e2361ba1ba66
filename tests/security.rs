//! Secure by default (see docs/SECURITY.md): what a node listens on with default settings, the cluster secret
//! that keeps a stranger's nats-server out of the cluster, client authentication, and messages on the stream
//! that name tables no stream may write.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use harmonylite::wire::{self, Value};
use support::stream::{
    BAD_BODY, NOT_ZSTD, applied_position_message, publish, sqlite_sequence_message, text, upsert,
};
use support::{
    Cluster, NatsServer, Node, Options, during, free_port, http_get, listening_sockets, temp_dir,
};

const START: Duration = Duration::from_secs(90);

/// The generated nats-server configuration of `node` (`<data dir>/nats/*.conf`).
fn generated_conf(node: &Node) -> std::path::PathBuf {
    let dir = node.data_dir().join("nats");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "conf"))
        .unwrap_or_else(|| panic!("no generated config in {}", dir.display()))
}

/// The monitoring port of `node`'s nats-server, from the ports file it writes beside its store.
fn monitoring_port(node: &Node) -> u16 {
    let dir = node
        .data_dir()
        .join(format!("nats/harmonylite-node-{}", node.id));
    let ports = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ports"))
        .unwrap_or_else(|| panic!("no ports file in {}", dir.display()));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ports).unwrap()).unwrap();
    let url = v["monitoring"][0].as_str().expect("a monitoring URL");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A node with default settings (no `bind_address`) listens on loopback only, but for the cluster address it
/// was given; it warns once that this cluster port is open to any server; its generated config is private.
#[test]
fn default_settings_listen_on_loopback_but_for_the_given_cluster_address() {
    // Three nodes (clustered JetStream needs its peers); node 1 has default settings and every interface as
    // its cluster address (the flag given last wins over the kit's loopback one).
    let mut cluster = Cluster::new(Options::default());
    let node = cluster.node_mut(1);
    let cluster_port = node.cluster_port;
    node.client_port = 0;
    node.args = vec!["-cluster-addr".into(), format!("0.0.0.0:{cluster_port}")];
    cluster.start_all();
    cluster.wait_all_running(START);
    let node = cluster.node(1);

    let sockets = listening_sockets(node.pid().unwrap());
    assert!(
        sockets.len() >= 3,
        "expected the client, monitoring and cluster listeners, found {sockets:?}"
    );
    let open: Vec<_> = sockets.iter().filter(|a| !a.ip().is_loopback()).collect();
    assert_eq!(
        open.len(),
        1,
        "listeners beyond loopback: {open:?} (all: {sockets:?})"
    );
    assert!(
        open[0].ip().is_unspecified() && open[0].port() == cluster_port,
        "{open:?}"
    );
    let warned = node.log_lines_with(&["WARN", "accepts routes from any server"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(node.log_lines_with(&["WARN", "client port"]).is_empty());

    let mode = std::fs::metadata(generated_conf(node))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "generated config mode {mode:o}");
}

/// An explicit non-loopback `bind_address` without credentials: one warning at start, and in the health
/// details.
#[test]
fn an_open_client_port_is_said_at_start_and_in_the_health_details() {
    let dir = temp_dir("hl-sec-");
    let (client, health) = (free_port(), free_port());
    let mut node = Node::new(dir.path(), 1, free_port(), 0, Vec::new());
    node.extra_toml = format!(
        "[nats]\nbind_address = \"0.0.0.0:{client}\"\n[health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\n"
    );
    support::sqlite3(&node.db, support::BOOKS);
    node.start_and_wait(START);
    let warned = node.log_lines_with(&["WARN", "NATS client port (0.0.0.0"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    let body = http_get(health, "/health").expect("health answers").body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let w = v["security_warnings"]
        .as_array()
        .expect("security_warnings");
    assert_eq!(w.len(), 1, "{body}");
    assert!(
        w[0].as_str().unwrap().contains("accepts any client"),
        "{body}"
    );
}

/// Reads the server's INFO line, sends `connect` (a JSON object) and a PING; returns the answer line.
fn nats_handshake(port: u16, connect: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    (&stream)
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// With client credentials configured, a client without them (or with wrong ones) is refused; the node's own
/// client uses them, so the node runs.
#[test]
fn clients_without_credentials_are_refused_when_client_auth_is_set() {
    let dir = temp_dir("hl-sec-");
    let client = free_port();
    let mut node = Node::new(dir.path(), 1, free_port(), client, Vec::new());
    node.extra_toml =
        "[nats]\nuser_name = \"app\"\nuser_password = \"correct horse\"\n".to_string();
    support::sqlite3(&node.db, support::BOOKS);
    node.start_and_wait(START);
    assert_eq!(
        nats_handshake(client, r#"{"verbose":false}"#),
        "-ERR 'Authorization Violation'"
    );
    assert_eq!(
        nats_handshake(client, r#"{"verbose":false,"user":"app","pass":"wrong"}"#),
        "-ERR 'Authorization Violation'"
    );
    assert_eq!(
        nats_handshake(
            client,
            r#"{"verbose":false,"user":"app","pass":"correct horse"}"#
        ),
        "PONG"
    );
    assert!(!node.log_text().contains("correct horse"));
}

/// Three nodes sharing a cluster secret (from the environment) form their cluster and replicate; a stranger's
/// nats-server that routes to a node without the secret, or with a wrong one, is refused and never routed.
#[test]
fn a_stranger_without_the_cluster_secret_cannot_join() {
    const SECRET: &str = "the-cluster's s3cret";
    let mut cluster = Cluster::new(Options::default());
    for node in &mut cluster.nodes {
        node.env
            .push(("HARMONYLITE_CLUSTER_SECRET".into(), SECRET.into()));
    }
    cluster.start_all();
    cluster.wait_all_running(START);
    cluster.book_reaches_the_others(1, "Behind a secret");

    let target = cluster.node(1).cluster_port;
    let node1_monitor = monitoring_port(cluster.node(1));
    for (case, route) in [
        ("no secret", format!("nats://127.0.0.1:{target}")),
        (
            "a wrong secret",
            format!("nats://harmonylite-route:guessed@127.0.0.1:{target}"),
        ),
    ] {
        let route_port = free_port();
        let stranger = NatsServer::start_with(&format!(
            "cluster {{\n  name: e-harmonylite\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [\"{route}\"]\n}}\n"
        ));
        let mark = cluster.node(1).log_mark();
        cluster.eventually(
            Duration::from_secs(30),
            &format!("node 1 refusing a stranger with {case}"),
            || {
                let log = cluster.node(1).log_since(mark).to_lowercase();
                log.contains("authorization violation") || log.contains("authentication error")
            },
        );
        // Node 1's side decides: the stranger never appears among its routes. (The stranger itself may list
        // its outgoing route for the moment between node 1's INFO and node 1's refusal, so its own /routez
        // proves nothing.)
        let stranger_name = format!("hl-test-{}", stranger.port);
        during(Duration::from_secs(3), || {
            let routez = http_get(node1_monitor, "/routez").expect("node 1's /routez");
            let v: serde_json::Value = serde_json::from_str(&routez.body).unwrap();
            let mut peers: Vec<String> = v["routes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| r["remote_name"].as_str().unwrap_or("").to_string())
                .collect();
            peers.sort();
            peers.dedup();
            assert_eq!(
                peers,
                ["harmonylite-node-2", "harmonylite-node-3"],
                "node 1 routes to its peers only (the stranger is {stranger_name}, {case}): {}",
                routez.body
            );
        });
        drop(stranger);
    }
    cluster.book_reaches_the_others(3, "Still among ourselves");
    for node in &cluster.nodes {
        assert!(
            !node.log_text().contains("s3cret"),
            "node {} logged the secret (as is or percent-encoded)",
            node.id
        );
        let conf = std::fs::read_to_string(generated_conf(node)).unwrap();
        assert!(conf.contains("authorization"), "{conf}");
    }
}

/// Messages that name our own tables or SQLite's, garbage and truncated zstd: nothing is written from them,
/// they are quarantined, and the shard goes on to the next message.
#[test]
fn messages_naming_reserved_tables_change_nothing() {
    let dir = temp_dir("hl-sec-");
    let client = free_port();
    let mut node = Node::new(dir.path(), 1, free_port(), client, Vec::new());
    support::sqlite3(&node.db, support::BOOKS);
    node.start_and_wait(START);
    let sequence_before = node.sql("SELECT seq FROM sqlite_sequence WHERE name = 'Books';");

    let stream = node.loaded_config().stream_name(1);
    let stream = stream.as_str();
    let mut payloads = vec![
        applied_position_message(stream, 1_000_000),
        sqlite_sequence_message("Books", 100_000),
        wire::encode(
            &upsert(
                "__HarmonyLite__Change_Log",
                &["id", "tbl", "k"],
                "id",
                vec![Value::Integer(1), Value::Integer(1), Value::Null],
            ),
            false,
        ),
        NOT_ZSTD.to_vec(),
        BAD_BODY.to_vec(),
    ];
    payloads.push(wire::encode(
        &upsert(
            "Books",
            &["id", "title", "author", "publication_year"],
            "id",
            vec![
                Value::Integer(500),
                text("After the poison"),
                text("Someone"),
                Value::Integer(2026),
            ],
        ),
        true,
    ));
    let subject = node.loaded_config().subject_name(1);
    for (i, r) in publish(client, &subject, payloads).into_iter().enumerate() {
        assert_eq!(r, Ok(i as u64 + 1), "payload {i}");
    }
    node.eventually(Duration::from_secs(30), "the good message applied", || {
        node.sql("SELECT title FROM Books WHERE id = 500;").trim() == "After the poison"
    });
    let applied = node.sql(&format!(
        "SELECT seq FROM __harmonylite__applied WHERE stream = '{stream}';"
    ));
    assert_eq!(
        applied.trim(),
        "6",
        "the applied position is the stream's, not the message's"
    );
    let sequence_after = node.sql("SELECT seq FROM sqlite_sequence WHERE name = 'Books';");
    assert_eq!(sequence_after.trim(), "500", "before: {sequence_before}");
    let quarantined = node.sql(
        "SELECT seq || ' ' || reason || ' ' || length(payload) FROM __harmonylite__quarantine ORDER BY seq;",
    );
    let lines: Vec<&str> = quarantined.lines().collect();
    let expected = [
        "1 refused message: table \"__harmonylite__applied\" is reserved",
        "2 refused message: table \"sqlite_sequence\" is reserved",
        "3 refused message: table \"__HarmonyLite__Change_Log\" is reserved",
        "4 undecodable message: cannot decompress",
        "5 undecodable message: cannot decode",
    ];
    assert_eq!(lines.len(), expected.len(), "{quarantined}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line:?} should start with {want:?}"
        );
    }
    assert!(
        lines[4].ends_with(" 4"),
        "the undecodable bytes are kept as received: {quarantined}"
    );
    assert_eq!(
        node.log_lines_with(&["ERROR", "quarantined"]).len(),
        5,
        "{}",
        node.log_tail(30)
    );
    assert!(node.is_alive());
}
