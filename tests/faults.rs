//! The fault suite: real three-node clusters under application write load (Python's sqlite3 driver, one process
//! per node) while processes die; every test ends with the kit's oracle ([`Cluster::verdict`]): nothing
//! committed is lost, every node converges, no node died but those killed on purpose, application errors are
//! ordinary SQLite errors and are counted.
//!
//! `cargo test` runs the short form (a few cycles); `scripts/faults.sh` runs the long form (seed, cycles,
//! duration from `HARMONYLITE_FAULT_*`, see [`Plan`]). `docs/RELIABILITY.md` has the figures.

mod support;

use std::time::{Duration, Instant};

use support::oracle::report;
use support::*;

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(180);
const STREAM: &str = "harmonylite-changes-c-1";

fn schema() -> String {
    format!("{BOOKS}\n{LEDGER}")
}

/// `kill -9` of a node's sidecar (restarted after a random number of application commits), of its nats-server
/// child (the sidecar starts a new one), and of an application process (started again), at random moments
/// under write load on all three nodes.
#[test]
fn kill_nine_of_sidecar_nats_server_and_application_under_load() {
    let plan = Plan::from_env(6);
    let mut rng = Rng::new(plan.seed);
    let mut c = Cluster::start(Options {
        schema: schema(),
        ..Default::default()
    });
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    apps.wait_for_more(20, T);
    let started = Instant::now();
    let mut kinds = [0u64; 3];
    let mut k = 0;
    while plan.goes_on(k, started) {
        let i = 1 + rng.below(3) as usize;
        // Every kind in turn (from a seeded start), so that a short run meets each.
        let kind = ((k + plan.seed) % 3) as usize;
        match kind {
            0 => {
                c.node_mut(i).kill9();
                apps.wait_for_more(10 + rng.below(150) as usize, T);
                c.node_mut(i).start_and_wait(START);
            }
            1 => {
                let node = c.node(i);
                let old = node.eventually(T, "the node's nats-server", || node.nats_server_pid());
                send_signal(old, Signal::SIGKILL);
                node.eventually(T, "a new nats-server", || {
                    node.nats_server_pid().filter(|p| *p != old)
                });
            }
            _ => apps.kill9_and_restart(i - 1),
        }
        kinds[kind] += 1;
        c.assert_all_alive();
        apps.wait_for_more(20 + rng.below(200) as usize, T);
        k += 1;
    }
    let v = c.verdict(&mut apps, CONVERGE);
    report(
        "kill9",
        &format!(
            "seed={} cycles={k} (sidecar {}, nats-server {}, application {}) {} run={:.0}s",
            plan.seed,
            kinds[0],
            kinds[1],
            kinds[2],
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(v.committed > 0 && v.rows as usize >= v.committed);
}

/// Three nodes started together, node 3 killed at once (before any stream exists): nodes 1 and 2 replicate
/// between them; when node 3 comes, it catches up and the streams get their third replica, after which no node
/// looks at their replica count again.
#[test]
fn a_node_down_at_the_first_start_does_not_stop_the_others() {
    let mut c = Cluster::new(Options {
        schema: schema(),
        ..Default::default()
    });
    c.start_all();
    c.node_mut(3).kill9();
    c.node(1).wait_running(START);
    c.node(2).wait_running(START);
    let mut apps = Apps::new(c.path());
    apps.start(c.node(1), 50.0, 5000);
    apps.start(c.node(2), 50.0, 5000);
    apps.wait_for_more(50, T);
    for (from, to) in [(1, 2), (2, 1)] {
        let q = format!("SELECT count(*) FROM ledger WHERE node = {from};");
        c.eventually(T, &format!("node {from}'s rows on node {to}"), || {
            c.node(to).sql(&q).trim() != "0"
        });
    }
    c.node_mut(3).start_and_wait(START);
    apps.start(c.node(3), 50.0, 5000);
    apps.wait_for_more(50, T);
    c.eventually(
        Duration::from_secs(120),
        "the stream has three replicas",
        || {
            c.node(1)
                .stream_info(STREAM)
                .is_some_and(|i| i.config.num_replicas == 3)
        },
    );
    // Once every stream has its replicas, each node stops looking (no info request every few seconds).
    for n in &c.nodes {
        n.eventually(T, "the replica raise stops looking", || {
            !n.log_lines_with(&["every stream has its replicas; no more looks"])
                .is_empty()
        });
    }
    let v = c.verdict(&mut apps, CONVERGE);
    report("first-start", &v.summary());
}

/// A node offline until the stream no longer holds its next change (`max_entries = 2000`) and a periodic
/// snapshot was saved after that, its application writing on meanwhile, then back: it finds its next change gone, publishes its own unpublished writes, restores the
/// latest periodic snapshot and converges, its application still writing throughout.
#[test]
fn a_node_offline_past_retention_comes_back_from_a_snapshot() {
    let plan = Plan::from_env(1).slower(5);
    let mut rng = Rng::new(plan.seed);
    let mut c = Cluster::start(Options {
        schema: schema(),
        extra_toml:
            "[replication_log]\nmax_entries = 2000\n[snapshot]\ninterval = 2000\nleader_ttl = 3000\n"
                .into(),
        ..Default::default()
    });
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    apps.wait_for_more(20, T);
    let started = Instant::now();
    let mut k = 0;
    let mut restored = 0;
    while plan.goes_on(k, started) {
        let i = 1 + rng.below(3) as usize;
        let node = c.node(i);
        let mark = node.log_mark();
        let restores = |n: &Node| {
            n.log_since(mark)
                .matches("snapshot restored into the database")
                .count()
        };
        c.node_mut(i).kill9();
        let others: Vec<usize> = (1..=3).filter(|j| *j != i).collect();
        // Nothing the node handled lies beyond the stream's last message when it died.
        let handled = c.eventually(T, "the stream's last sequence", || {
            c.node(others[0])
                .stream_info(STREAM)
                .map(|s| s.state.last_sequence)
        });
        // Away until the stream no longer holds the node's next change ...
        c.eventually(
            Duration::from_secs(120),
            "the stream moves past the node",
            || {
                c.node(others[0])
                    .stream_info(STREAM)
                    .is_some_and(|s| s.state.first_sequence > handled + 1)
            },
        );
        // ... and a periodic snapshot is saved after that, then a while more.
        let marks: Vec<u64> = others.iter().map(|j| c.node(*j).log_mark()).collect();
        // On failure, what the remaining nodes said of snapshots and their lease (their last lines are all
        // replication).
        let said = || {
            others
                .iter()
                .zip(&marks)
                .map(|(j, m)| {
                    let lines: Vec<String> = c
                        .node(*j)
                        .log_since(*m)
                        .lines()
                        .filter(|l| l.contains("snapshot") || l.contains("lease"))
                        .map(str::to_string)
                        .collect();
                    format!(
                        "--- node {j}, snapshot and lease lines ---\n{}",
                        lines.join("\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        eventually_or(
            T,
            "a snapshot saved after the stream moved past the node",
            said,
            || {
                others
                    .iter()
                    .zip(&marks)
                    .any(|(j, m)| c.node(*j).log_since(*m).contains("snapshot saved"))
            },
        );
        apps.wait_for_more(rng.below(300) as usize, T);
        c.node_mut(i).start_and_wait(START);
        let node = c.node(i);
        node.eventually(
            Duration::from_secs(120),
            "the node restores a snapshot",
            || restores(node) > 0,
        );
        restored += 1;
        apps.wait_for_more(50, T);
        k += 1;
    }
    let v = c.verdict(&mut apps, CONVERGE);
    report(
        "offline-past-retention",
        &format!(
            "seed={} cycles={k} restores={restored} {} run={:.0}s",
            plan.seed,
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
}
