//! An edge site over a leaf connection: three nodes on three hosts form the hub (embedded servers in one
//! JetStream cluster, domain `hub`, a `leafnodes` listener added with `nats.server_config`); a fourth node on a
//! fourth host joins through `-leaf-servers` and runs no JetStream of its own. The link between the leaf and
//! the hub is cut (the leaf's host moved to a separate bridge: packets dropped, nothing reset) while
//! applications write every node, the same `hot` rows included, then healed. Every committed row reaches every
//! node, the nodes converge, and `-verify` finds the four identical.
//!
//! Needs root (it creates network namespaces): without, it prints `SKIPPED: <reason>` and passes.

mod support;

use std::time::{Duration, Instant};

use support::netns::Network;
use support::oracle::report;
use support::*;

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(180);
/// The hub nodes' leafnodes port (each on its own host).
const LEAF_PORT: u16 = 7422;

/// Pings every second, two unanswered close a connection: the cut link is seen dead within seconds (by
/// default after minutes), so the leaf connection is closed and made again, as after a long outage.
const PINGS: &str = "ping_interval: \"1s\"\nping_max: 2\n";

#[test]
fn a_leaf_cut_off_from_its_hub_keeps_writing_and_converges_after_the_heal() {
    // Declared before the cluster: dropped after it (the nodes are killed first), also on a panic.
    let Some(mut net) = Network::create_or_skip(4) else {
        return;
    };
    let started = Instant::now();
    let mut c = Cluster::new(Options {
        nodes: 4,
        schema: format!("{BOOKS}\n{LEDGER}"),
        ..Default::default()
    });
    let hub_conf = c.dir.path().join("hub-leafnodes.conf");
    std::fs::write(
        &hub_conf,
        format!("leafnodes {{\n  listen: \"0.0.0.0:{LEAF_PORT}\"\n}}\n{PINGS}"),
    )
    .unwrap();
    let leaf_conf = c.dir.path().join("leaf-pings.conf");
    std::fs::write(&leaf_conf, PINGS).unwrap();
    net.place(&mut c);
    for i in 1..=4 {
        let node = c.node_mut(i);
        if i < 4 {
            node.add_toml(&format!(
                "[nats]\njetstream_domain = \"hub\"\ncluster_secret = \"leaf-test-secret\"\nserver_config = {}\n",
                toml::Value::String(hub_conf.display().to_string())
            ));
        } else {
            node.peers.clear();
            node.peer_hosts.clear();
            node.args = vec![
                "-leaf-servers".into(),
                format!("nats://{}:{LEAF_PORT}", net.addr(1)),
            ];
            node.add_toml(&format!(
                "[nats]\njetstream_domain = \"hub\"\nserver_config = {}\n",
                toml::Value::String(leaf_conf.display().to_string())
            ));
        }
    }
    // The hub first: its streams exist, at three replicas, when the leaf connects.
    for i in 1..=3 {
        c.node_mut(i).start();
    }
    for i in 1..=3 {
        c.node(i).wait_running(START);
    }
    c.node_mut(4).start_and_wait(START);
    let leaf = c.node(4);
    assert!(
        !leaf
            .log_lines_with(&["a leaf node: its nats-server runs without JetStream"])
            .is_empty(),
        "{}",
        leaf.log_tail(30)
    );
    assert!(
        leaf.log_lines_with(&["stream created"]).is_empty(),
        "the leaf creates no stream of its own:\n{}",
        leaf.log_tail(30)
    );

    let mut apps = Apps::on_every_node(&c, 20.0, 5000);
    for from in 1..=4 {
        for to in (1..=4).filter(|t| *t != from) {
            c.eventually(T, &format!("node {from}'s rows on node {to}"), || {
                c.ledger_rows_after(to, from, 0) > 0
            });
        }
    }

    net.partition(&[4]);
    let cut_at = Instant::now();
    let mark: Vec<i64> = (0..=4)
        .map(|i| if i == 0 { 0 } else { c.own_ledger_mark(i) })
        .collect();
    let leaf_before = apps.committed_on(4);
    // The hub replicates within itself; the leaf's applications go on committing.
    c.eventually(T, "node 1's new rows on node 2 during the cut", || {
        c.ledger_rows_after(2, 1, mark[1]) >= 20
    });
    apps.wait_for_more_on(4, 100, T);
    // The leaf's server gives the dead link up (a long outage's state, not a pause TCP would bridge).
    c.eventually(
        T,
        "the leaf's server closes its connection to the hub",
        || {
            !c.node(4)
                .log_lines_with(&["Leafnode connection closed"])
                .is_empty()
        },
    );
    apps.wait_for_more_on(4, 20, T);
    let leaf_commits = apps.committed_on(4) - leaf_before;
    for a in 1..=3 {
        assert_eq!(
            c.ledger_rows_after(4, a, mark[a]),
            0,
            "node {a}'s new rows reached the leaf through a cut link"
        );
        assert_eq!(
            c.ledger_rows_after(a, 4, mark[4]),
            0,
            "the leaf's new rows reached node {a} through a cut link"
        );
    }
    c.assert_all_alive();
    let cut_for = cut_at.elapsed();

    net.heal();
    let healed_at = Instant::now();
    let leaf_mark = c.own_ledger_mark(4);
    let hub_mark = c.own_ledger_mark(1);
    c.eventually(CATCH_UP, "the leaf's rows of the cut on node 1", || {
        c.ledger_rows_after(1, 4, mark[4]) >= leaf_mark - mark[4]
    });
    c.eventually(CATCH_UP, "node 1's rows of the cut on the leaf", || {
        c.ledger_rows_after(4, 1, mark[1]) >= hub_mark - mark[1]
    });
    let catch_up = healed_at.elapsed();
    apps.wait_for_more(50, T);

    let v = c.verdict(&mut apps, CONVERGE);
    let tables = c.converged_all(T);
    assert!(tables["hot"].1 > 0, "the hot rows were written");
    let verified = c.assert_verified(1);
    assert!(verified.contains("4 nodes"), "{verified}");
    // The leaf's own commands reach the hub's JetStream through the domain too.
    let from_leaf = c.assert_verified(4);
    assert!(from_leaf.contains("4 nodes"), "{from_leaf}");
    c.assert_all_alive();
    report(
        "leaf",
        &format!(
            "cut={:.1}s leaf_commits_during_cut={leaf_commits} caught_up={:.1}s {} run={:.0}s",
            cut_for.as_secs_f64(),
            catch_up.as_secs_f64(),
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(v.committed > 0 && v.rows as usize >= v.committed);
    net.remove_after(apps, c);
}
