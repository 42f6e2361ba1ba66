//! Deployment on NATS, with real processes only: three nodes on an existing three-server NATS cluster
//! (`[nats] urls`) with a password, an NKey or TLS, and the refusals at start of a wrong password, an unknown
//! NKey and an untrusted server certificate; three embedded servers with TLS on their client and route ports
//! (and a server whose certificate another CA signed, kept out of the cluster); a node joining a hub as a leaf
//! node, replicating both ways.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// How long nodes may take to start (JetStream of a fresh cluster elects its leaders first).
const START: Duration = Duration::from_secs(90);
/// How long a change may take to reach the other nodes.
const REPLICATED: Duration = Duration::from_secs(30);
/// How long a refused node may take to exit: retrying its connection as configured in [`STUBBORN`] would take
/// minutes, so exiting within this shows the refusal was not retried.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);
/// `[nats]` connection settings for nodes on external NATS.
const QUICK: &str = "connect_retries = 3\nreconnect_wait_seconds = 1\nready_timeout_seconds = 60\n";
/// `[nats]` settings under which retrying a refused connection would take over three minutes.
const STUBBORN: &str = "connect_retries = 40\nreconnect_wait_seconds = 5\n";

/// A TOML string holding `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// Three stopped nodes, node i on server i of `servers` through `[nats] urls` (with `scheme`), and `nats_toml`
/// (keys of `[nats]`) for node i from `nats_toml(i)`.
fn nodes_on(servers: &[NatsServer], scheme: &str, nats_toml: impl Fn(usize) -> String) -> Cluster {
    let per_node_toml = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("[nats]\n{}{QUICK}{}", urls_of(s, scheme), nats_toml(i + 1)))
        .collect();
    let mut cluster = Cluster::new(Options {
        per_node_toml,
        ..Default::default()
    });
    for node in &mut cluster.nodes {
        // External NATS: no -cluster-addr / -cluster-peers.
        node.peers.clear();
    }
    cluster
}

/// Starts every node and waits until all run; panics with the servers' logs too when one does not.
fn start_all(cluster: &mut Cluster, servers: &[NatsServer]) {
    cluster.start_all();
    let started = Instant::now();
    for node in &cluster.nodes {
        let running = poll(START, || node.running_count() >= 1 || !node.is_alive());
        if running.is_none() || !node.is_alive() {
            let logs: Vec<String> = servers.iter().map(NatsServer::log).collect();
            panic!(
                "node {} did not start:\n{}\n--- servers ---\n{}",
                node.id,
                node.log_tail(40),
                logs.join("\n---\n")
            );
        }
    }
    eprintln!(
        "{} nodes running in {:?}",
        cluster.nodes.len(),
        started.elapsed()
    );
}

/// The `[nats] urls` key for `server` with `scheme`.
fn urls_of(server: &NatsServer, scheme: &str) -> String {
    format!("urls = [\"{scheme}://127.0.0.1:{}\"]\n", server.port)
}

/// One more node, alone in its own directory, with `nats_toml` (keys of `[nats]`), whose connection is refused:
/// it must exit non-zero within [`REFUSED_WITHIN`] although its settings would retry for minutes, with an error
/// that contains every one of `causes`. Returns its log.
fn refused(nats_toml: &str, causes: &[&str]) -> String {
    let mut lone = Cluster::new(Options {
        nodes: 1,
        extra_toml: format!("[nats]\n{STUBBORN}ready_timeout_seconds = 60\n{nats_toml}"),
        ..Default::default()
    });
    let node = lone.node_mut(1);
    node.peers.clear();
    let started = Instant::now();
    node.start();
    let code = node.wait_exit(REFUSED_WITHIN);
    let log = node.log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "a refused node must exit non-zero, got {code:?} after {:?}:\n{log}",
        started.elapsed()
    );
    assert!(
        !log.contains("node running"),
        "a refused node must not run:\n{log}"
    );
    for cause in causes {
        assert!(
            log.contains(cause),
            "the error should name the cause ({cause:?}):\n{log}"
        );
    }
    let error = log
        .lines()
        .find(|l| l.contains("not retried"))
        .unwrap_or_else(|| panic!("the error should say it was not retried:\n{log}"));
    eprintln!("refused in {:?}: {error}", started.elapsed());
    log
}

/// A random word for passwords.
fn secret() -> String {
    (0..24).map(|_| fastrand::alphanumeric()).collect()
}

#[test]
fn external_cluster_with_user_and_password() {
    let password = secret();
    let servers = NatsServer::cluster(&format!(
        "authorization {{\n  users: [ {{ user: \"harmonylite\", password: \"{password}\" }} ]\n}}\n"
    ));
    let mut cluster = nodes_on(&servers, "nats", |_| {
        format!("user_name = \"harmonylite\"\nuser_password = \"{password}\"\n")
    });
    start_all(&mut cluster, &servers);
    cluster.book_reaches_the_others(1, "Passwords");

    let log = refused(
        &format!(
            "{}user_name = \"harmonylite\"\nuser_password = \"not-the-password\"\n",
            urls_of(&servers[1], "nats")
        ),
        &["authorization violation", "nats.user_password"],
    );
    assert!(
        !log.contains("not-the-password") && !log.contains(&password),
        "no password in the log:\n{log}"
    );
}

#[test]
fn external_cluster_with_nkey_seed_files() {
    let user = nkeys::KeyPair::new_user();
    let servers = NatsServer::cluster(&format!(
        "authorization {{\n  users: [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    ));
    let keys = temp_dir("hl-nkeys-");
    let seed_file = keys.path().join("node.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let mut cluster = nodes_on(&servers, "nats", |_| {
        format!("seed_file = {}\n", toml_path(&seed_file))
    });
    start_all(&mut cluster, &servers);
    cluster.book_reaches_the_others(1, "NKeys");

    // A seed whose public key the servers do not know.
    let stranger = nkeys::KeyPair::new_user();
    let stranger_file = keys.path().join("stranger.nk");
    std::fs::write(&stranger_file, stranger.seed().unwrap()).unwrap();
    let log = refused(
        &format!(
            "{}seed_file = {}\n",
            urls_of(&servers[2], "nats"),
            toml_path(&stranger_file)
        ),
        &["authorization violation", "nats.seed_file"],
    );
    assert!(
        !log.contains(&stranger.seed().unwrap()),
        "no seed in the log:\n{log}"
    );
}

#[test]
fn external_cluster_with_tls() {
    let certs = temp_dir("hl-certs-");
    let ca = TestCa::new(certs.path(), "trusted");
    let server = ca.issue("nats-server");
    let servers = NatsServer::cluster(&format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n}}\n",
        toml_path(&server.cert),
        toml_path(&server.key)
    ));
    let mut cluster = nodes_on(&servers, "tls", |_| {
        format!("ca_file = {}\n", toml_path(&ca.cert))
    });
    start_all(&mut cluster, &servers);
    cluster.book_reaches_the_others(1, "Certificates");

    // The node trusts another CA only: the servers' certificate is not trusted.
    let other = TestCa::new(certs.path(), "other");
    refused(
        &format!(
            "{}ca_file = {}\n",
            urls_of(&servers[0], "tls"),
            toml_path(&other.cert)
        ),
        &["certificate", "unknown issuer", "nats.ca_file"],
    );
}

/// `[nats]` TLS keys of an embedded node: `files` on the client port (its own client trusts `ca`), and on the
/// route port, where peers are verified against `ca`.
fn embedded_tls_toml(files: &CertFiles, ca: &Path) -> String {
    let (cert, key, ca) = (toml_path(&files.cert), toml_path(&files.key), toml_path(ca));
    format!(
        "[nats]\ncert_file = {cert}\nkey_file = {key}\nca_file = {ca}\n\
         cluster_cert_file = {cert}\ncluster_key_file = {key}\ncluster_ca_file = {ca}\n"
    )
}

#[test]
fn embedded_cluster_with_tls_on_client_and_route_ports() {
    let certs = temp_dir("hl-certs-");
    let ca = TestCa::new(certs.path(), "cluster");
    let per_node_toml = (1..=3)
        .map(|i| embedded_tls_toml(&ca.issue(&format!("node-{i}")), &ca.cert))
        .collect();
    let mut cluster = Cluster::new(Options {
        per_node_toml,
        ..Default::default()
    });
    cluster.start_all();
    cluster.wait_all_running(START);
    for node in &cluster.nodes {
        let conf = std::fs::read_to_string(
            node.data_dir()
                .join(format!("nats/harmonylite-node-{}.conf", node.id)),
        )
        .unwrap();
        assert!(
            conf.contains("verify: true") && conf.contains(&ca.cert.display().to_string()),
            "route TLS in the generated config:\n{conf}"
        );
    }
    cluster.book_reaches_the_others(1, "Routes under TLS");
    cluster.book_reaches_the_others(3, "Back again");

    // A server with a certificate from another CA cannot route in: node 1 refuses it, it refuses node 1.
    let rogue_ca = TestCa::new(certs.path(), "rogue");
    let rogue = rogue_ca.issue("rogue");
    let node1 = cluster.node(1);
    let mark = node1.log_mark();
    let intruder = NatsServer::start_with(&format!(
        "cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [\"nats://127.0.0.1:{}\"]\n  \
         tls {{\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n    verify: true\n  }}\n}}\n",
        harmonylite::nats::CLUSTER_NAME,
        free_port(),
        node1.cluster_port,
        toml_path(&rogue.cert),
        toml_path(&rogue.key),
        toml_path(&rogue_ca.cert)
    ));
    eventually(
        REPLICATED,
        "the intruder's route refused for its certificate",
        || {
            intruder
                .log()
                .contains("certificate signed by unknown authority")
        },
    );
    node1.eventually(REPLICATED, "node 1 refusing the intruder's route", || {
        node1.log_since(mark).contains("TLS route handshake error")
    });
    // The cluster still works, without the intruder.
    cluster.book_reaches_the_others(2, "Still three");
    assert!(
        !intruder.log().contains("Route connection created"),
        "{}",
        intruder.log()
    );
}

#[test]
fn embedded_node_whose_ca_did_not_sign_its_certificate_is_refused_at_start() {
    let certs = temp_dir("hl-certs-");
    let signer = TestCa::new(certs.path(), "signer");
    let other = TestCa::new(certs.path(), "other");
    let files = signer.issue("node");
    // The node's own client trusts `other` only: it refuses its server's certificate.
    let toml = embedded_tls_toml(&files, &other.cert);
    refused(
        toml.trim_start_matches("[nats]\n"),
        &["certificate", "unknown issuer", "nats.ca_file"],
    );
}

#[test]
fn leaf_node_replicates_with_the_hub_both_ways() {
    let (leaf_port, monitor_port) = (free_port(), free_port());
    let hub = NatsServer::start_in_domain(
        "hub",
        &format!(
            "leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\nhttp: \"127.0.0.1:{monitor_port}\"\n"
        ),
    );
    // Node 1 is a client of the hub; node 2 runs its own server, a leaf node of the hub, which reaches the
    // hub's JetStream through its domain.
    let mut cluster = Cluster::new(Options {
        nodes: 2,
        per_node_toml: vec![
            format!(
                "[nats]\nurls = [\"{}\"]\njetstream_domain = \"hub\"\n{QUICK}",
                hub.url
            ),
            "[nats]\njetstream_domain = \"hub\"\n".into(),
        ],
        ..Default::default()
    });
    for node in &mut cluster.nodes {
        node.peers.clear();
    }
    cluster.node_mut(2).args = vec![
        "-leaf-servers".into(),
        format!("nats://127.0.0.1:{leaf_port}"),
    ];
    // The hub side first: its streams exist when the leaf connects.
    cluster.node_mut(1).start_and_wait(START);
    start_all(&mut cluster, std::slice::from_ref(&hub));

    // One JetStream, the hub's: both nodes' consumers are on its stream.
    cluster.eventually(START, "both nodes' consumers on the hub's stream", || {
        http_get(monitor_port, "/jsz?consumers=true").is_some_and(|r| {
            r.body.contains("harmonylite-node-1") && r.body.contains("harmonylite-node-2")
        })
    });
    cluster.book_reaches_the_others(2, "From the leaf");
    cluster.book_reaches_the_others(1, "From the hub");
    cluster.assert_all_alive();
}

/// A leaf node without `nats.jetstream_domain` cannot reach the hub's JetStream: it refuses to start at once and
/// says which key to set, before any server starts.
#[test]
fn a_leaf_node_without_the_hubs_domain_is_refused_with_the_key_to_set() {
    let mut lone = Cluster::new(Options {
        nodes: 1,
        ..Default::default()
    });
    let node = lone.node_mut(1);
    node.peers.clear();
    node.args = vec![
        "-leaf-servers".into(),
        format!("nats://127.0.0.1:{}", free_port()),
    ];
    node.start();
    let code = node.wait_exit(REFUSED_WITHIN);
    let log = node.log_text();
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}:\n{log}");
    assert!(log.contains("set nats.jetstream_domain"), "{log}");
    assert!(!log.contains("Starting nats-server"), "{log}");
}
