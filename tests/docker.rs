//! HarmonyLite under Docker: the repository's `Dockerfile` and `docker-compose.yml`, three nodes on a private
//! network, each with its own volume and the demo Books database. A write on one container's database reaches
//! the others; with one container stopped and another disconnected from the network, both sides of the split
//! take writes; once healed, all three converge.
//!
//! Where no Docker engine answers (`docker info` fails), the test prints `SKIPPED: no Docker engine (...)` and
//! passes. Otherwise it needs, as root: `debootstrap` (`apt-get install debootstrap`), `docker-compose` (v1) or
//! the `docker compose` plugin (v2), and what `scripts/release.sh` needs (cargo; the build fetches nats-server
//! with pip). No container registry is used: the base image is a local Debian. What the test runs, as a user
//! would:
//!
//! ```sh
//! base=$(scripts/docker-base-image.sh)          # harmonylite-base:bookworm, made once (debootstrap) and kept
//! archive=$(scripts/release.sh)                  # dist/harmonylite-v<version>-linux-amd64.tar.gz
//! docker build --build-arg RUST_IMAGE=$base --build-arg RUNTIME_IMAGE=$base \
//!     --build-arg RELEASE_ARCHIVE=dist/$(basename "$archive") -t harmonylite .
//! docker-compose up -d                           # HARMONYLITE_IMAGE picks another tag
//! ```
//!
//! The test's image (`harmonylite-test:<project>`) and its compose project (containers, network, volumes) are
//! removed when it ends, also when it fails; the base image `harmonylite-base:bookworm` (or
//! `$HARMONYLITE_BASE_IMAGE`) is kept, so only the first run pays for debootstrap. Run it alone with
//! `cargo test --locked --test docker -- --nocapture` to see the steps.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::docker::{self, Compose, Image};
use support::{during, eventually_or, free_ports, http_get, release_archive, script_result};

/// The database inside each container (the image's configuration).
const DB: &str = "/data/harmonylite.db";
const SERVICES: [&str; 3] = ["node1", "node2", "node3"];
/// From `up` to three healthy containers: nats-server start, routes, JetStream's meta leader, streams.
const HEALTHY_WITHIN: Duration = Duration::from_secs(180);
const REPLICATED_WITHIN: Duration = Duration::from_secs(60);
/// After the heal: node 3's restart, node 2's routes back, both sides' changes published and applied.
const CONVERGED_WITHIN: Duration = Duration::from_secs(240);
/// How long the test watches each side of the split not see the other's write.
const SPLIT_HOLDS_FOR: Duration = Duration::from_secs(3);

/// Says how far the test got, past the harness's output capture (shown with or without `--nocapture`).
fn step(started: Instant, what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "docker test [{:>5.1}s]: {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `sql` with the sqlite3 CLI inside `container` (as the image's user), values printed SQL-quoted.
fn sqlite3(compose: &Compose, container: &str, sql: &str) -> Result<String, String> {
    compose.exec(
        container,
        &[
            "sqlite3",
            "-bail",
            "-cmd",
            ".timeout 10000",
            "-cmd",
            ".mode quote",
            DB,
            sql,
        ],
    )
}

/// Every row of Books ordered by its key: the same text on two nodes means the same table.
fn books(compose: &Compose, container: &str) -> Result<String, String> {
    sqlite3(compose, container, "SELECT * FROM Books ORDER BY id")
}

/// Waits until Docker sees every container healthy (the image's HEALTHCHECK: the node's `/health` answers 200).
fn wait_healthy(compose: &Compose, containers: &[String], what: &str) {
    eventually_or(
        HEALTHY_WITHIN,
        what,
        || compose.logs(),
        || containers.iter().all(|c| compose.health(c) == "healthy"),
    );
}

#[test]
fn compose_cluster_replicates_and_converges_after_a_split() {
    if let Some(why) = docker::engine_unavailable() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no Docker engine (docker info failed: {why})"
        );
        return;
    }
    let started = Instant::now();
    let root = docker::repo_root();

    let base = script_result("docker-base-image.sh", &[]);
    step(started, &format!("base image {base}"));
    let archive = release_archive();
    let archive = archive
        .strip_prefix(&root)
        .unwrap_or_else(|_| {
            panic!("release archive {archive:?} is outside the build context {root:?}")
        })
        .to_str()
        .unwrap()
        .to_string();
    step(started, &format!("release archive {archive}"));

    let project = docker::unique_name("hltest");
    let image = Image::build(
        &format!("harmonylite-test:{project}"),
        &root,
        &[
            ("RUST_IMAGE", base.as_str()),
            ("RUNTIME_IMAGE", base.as_str()),
            ("RELEASE_ARCHIVE", archive.as_str()),
        ],
    );
    step(
        started,
        &format!(
            "image {} built, {:.1} MB",
            image.tag,
            image.size() as f64 / 1e6
        ),
    );
    let user = docker::docker(&["image", "inspect", "-f", "{{.Config.User}}", &image.tag]).unwrap();
    assert_eq!(user, "harmonylite", "the image runs as its non-root user");

    // Health on ports[0..3], metrics on ports[3..6], published on 127.0.0.1 for node 1, 2 and 3.
    let ports = free_ports(6);
    // The cluster secret reaches every node through the environment (docker-compose.yml passes it on).
    let secret: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
    let mut env = vec![
        ("HARMONYLITE_IMAGE".to_string(), image.tag.clone()),
        ("HARMONYLITE_CLUSTER_SECRET".to_string(), secret),
    ];
    for n in 1..=3 {
        let (health, metrics) = (ports[n - 1], ports[n + 2]);
        env.push((
            format!("HARMONYLITE_NODE{n}_HEALTH_PORT"),
            health.to_string(),
        ));
        env.push((
            format!("HARMONYLITE_NODE{n}_METRICS_PORT"),
            metrics.to_string(),
        ));
    }
    let compose = Compose::new(&root.join("docker-compose.yml"), &project, env);
    compose
        .run(&["up", "-d", "--no-build"])
        .unwrap_or_else(|e| panic!("{e}"));
    let containers: Vec<String> = SERVICES.iter().map(|s| compose.container(s)).collect();
    let (c1, c2, c3) = (&containers[0], &containers[1], &containers[2]);

    wait_healthy(&compose, &containers, "all three containers healthy");
    step(started, "three nodes healthy");
    let health = http_get(ports[0], "/health").expect("node1's published health port answers");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["node_id"], 1, "{}", health.body);
    // With the secret, the cluster port open on the private network is not reported as open to anyone.
    assert_eq!(
        health.json()["security_warnings"],
        serde_json::json!([]),
        "{}",
        health.body
    );
    let metrics = http_get(ports[3], "/metrics").expect("node1's published metrics port answers");
    assert_eq!(metrics.status, 200);

    // The demo database, made by each container's entrypoint: the same seven books everywhere.
    let demo = books(&compose, c1).unwrap();
    assert_eq!(demo.lines().count(), 7, "{demo}");
    assert!(demo.contains("'The Great Gatsby'"), "{demo}");
    for c in [c2, c3] {
        assert_eq!(books(&compose, c).unwrap(), demo);
    }

    sqlite3(
        &compose,
        c1,
        "INSERT INTO Books (id, title, author, publication_year) VALUES (8, 'Dune', 'Frank Herbert', 1965)",
    )
    .unwrap();
    eventually_or(
        REPLICATED_WITHIN,
        "the book written on node1 on node2 and node3",
        || compose.logs(),
        || {
            [c2, c3]
                .iter()
                .all(|c| books(&compose, c).is_ok_and(|b| b.contains("'Dune'")))
        },
    );
    step(started, "a write on node1 read on node2 and node3");

    // The split: node3 stopped, node2 cut off from the network; node1 alone on its side.
    docker::docker(&["stop", "-t", "10", c3]).unwrap();
    let running = docker::docker(&["inspect", "-f", "{{.State.Running}}", c3]).unwrap();
    assert_eq!(running, "false", "node3 is stopped");
    let networks = compose.networks(c2);
    assert_eq!(networks.len(), 1, "node2's networks: {networks:?}");
    let network = &networks[0];
    docker::docker(&["network", "disconnect", network, c2]).unwrap();
    assert!(compose.networks(c2).is_empty(), "node2 is cut off");
    // Each side: a new book (101 on node1, 102 on node2) and a new year for one demo book (1 on node1, 2 on node2).
    for (n, c, year) in [(1, c1, 1980), (2, c2, 1955)] {
        let id = 100 + n;
        let sql = format!(
            "INSERT INTO Books (id, title, author, publication_year)
                 VALUES ({id}, 'Written on node{n} during the split', 'Node {n}', 2000);
             UPDATE Books SET publication_year = {year} WHERE id = {n};"
        );
        sqlite3(&compose, c, &sql).unwrap();
    }
    // Were they still connected, either write would be on the other side within a second or two.
    during(SPLIT_HOLDS_FOR, || {
        assert!(
            !books(&compose, c2)
                .unwrap()
                .contains("node1 during the split"),
            "node1's write reached node2 through the split"
        );
        assert!(
            !books(&compose, c1)
                .unwrap()
                .contains("node2 during the split"),
            "node2's write reached node1 through the split"
        );
    });
    step(
        started,
        "split: node3 stopped, node2 disconnected, both sides written",
    );

    // Heal: node2 back under its service name, node3 started again.
    docker::docker(&["network", "connect", "--alias", "node2", network, c2]).unwrap();
    docker::docker(&["start", c3]).unwrap();
    let converged = eventually_or(
        CONVERGED_WITHIN,
        "the three nodes' Books identical, with both sides' writes",
        || {
            let dumps: Vec<String> = containers
                .iter()
                .map(|c| books(&compose, c).unwrap_or_else(|e| e))
                .collect();
            format!(
                "{}\nBooks per node:\n{}",
                compose.logs(),
                dumps.join("\n--\n")
            )
        },
        || {
            let dumps: Vec<String> = containers
                .iter()
                .map(|c| books(&compose, c).ok())
                .collect::<Option<_>>()?;
            (dumps.iter().all(|d| d == &dumps[0])
                && dumps[0].contains("node1 during the split")
                && dumps[0].contains("node2 during the split"))
            .then(|| dumps[0].clone())
        },
    );
    step(started, "converged");
    assert_eq!(converged.lines().count(), 10, "{converged}");
    assert!(
        converged.contains("1,'The Hitchhiker''s Guide to the Galaxy','Douglas Adams',1980"),
        "{converged}"
    );
    assert!(
        converged.contains("2,'The Lord of the Rings','J.R.R. Tolkien',1955"),
        "{converged}"
    );
    assert!(
        converged.contains("8,'Dune','Frank Herbert',1965"),
        "{converged}"
    );

    wait_healthy(
        &compose,
        &containers,
        "all three containers healthy again after the heal",
    );
    step(started, "healthy again; taking the project down");
}
