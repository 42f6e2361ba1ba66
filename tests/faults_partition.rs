//! The fault suite's network partition: three nodes on three real hosts (network namespaces joined by a
//! bridge, see `support::netns`), applications writing every node, and one node cut off from the two others
//! (a minority) then joined again, cycle after cycle. The minority goes on taking its applications' writes,
//! the majority goes on replicating between its two nodes, nothing crosses the cut, and after the last heal the
//! oracle ([`Cluster::verdict`]) finds every node converged with nothing committed lost.
//!
//! Needs root (it creates network namespaces): without, it prints `SKIPPED: <reason>` and passes.
//! `cargo test` runs one cycle; `scripts/faults.sh` more (minorities chosen by the seeded [`Rng`]).

mod support;

use std::time::{Duration, Instant};

use support::netns::Network;
use support::oracle::report;
use support::*;

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(180);

/// Cycle after cycle, one node (node 3 first, then as the seed chooses) is cut off from the two others while
/// every node's application writes: the cut-off node's commits go on, the two others replicate each other's new
/// rows, no row committed after the cut crosses it either way; after the heal each side gets the other's rows.
/// At the end every node converges and every committed transaction is on every node.
#[test]
fn a_partitioned_minority_keeps_writing_and_converges_after_the_heal() {
    let plan = Plan::from_env(1).slower(5);
    let mut rng = Rng::new(plan.seed);
    // Declared before the cluster: dropped after it (the nodes are killed first), also on a panic.
    let Some(mut net) = Network::create_or_skip(3) else {
        return;
    };
    let started = Instant::now();
    let mut c = Cluster::new(Options {
        schema: format!("{BOOKS}\n{LEDGER}"),
        extra_toml: "[nats]\ncluster_secret = \"partition-test-secret\"".into(),
        ..Default::default()
    });
    net.place(&mut c);
    c.start_all();
    c.wait_all_running(START);
    for i in 1..=3 {
        let pid = c.node(i).pid().unwrap();
        assert!(
            net.holds(i, pid),
            "node {i} (pid {pid}) does not run in namespace {}",
            net.namespace(i)
        );
        let open_port = c
            .node(i)
            .log_lines_with(&["accepts routes from any server"]);
        assert!(open_port.is_empty(), "node {i} warns: {open_port:?}");
    }
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    // The three hosts form one cluster: every node's rows reach every other node, and the change stream has
    // its three replicas (so two nodes keep a quorum when one is cut off).
    for from in 1..=3 {
        for to in (1..=3).filter(|t| *t != from) {
            c.eventually(T, &format!("node {from}'s rows on node {to}"), || {
                c.ledger_rows_after(to, from, 0) > 0
            });
        }
    }
    c.eventually(T, "the change stream has three replicas", || {
        net.run_in(1, || c.node(1).stream_info("harmonylite-changes-c-1"))
            .is_some_and(|i| {
                i.config.num_replicas == 3 && i.cluster.is_some_and(|cl| cl.replicas.len() == 2)
            })
    });

    let mut cycles = Vec::new();
    let mut k = 0;
    while plan.goes_on(k, started) {
        let m = if k == 0 { 3 } else { 1 + rng.below(3) as usize };
        let majority: Vec<usize> = (1..=3).filter(|i| *i != m).collect();
        net.partition(&[m]);
        let cut_at = Instant::now();
        // Rows committed from now on cannot cross the cut.
        let mark: Vec<i64> = (0..=3)
            .map(|i| if i == 0 { 0 } else { c.own_ledger_mark(i) })
            .collect();
        let minority_before = apps.committed_on(m as u64);

        // The majority replicates between its two nodes.
        for (a, b) in [(majority[0], majority[1]), (majority[1], majority[0])] {
            c.eventually(
                T,
                &format!("node {a}'s new rows on node {b} during the partition (node {m} cut off)"),
                || c.ledger_rows_after(b, a, mark[a]) >= 20,
            );
        }
        let majority_replicated = cut_at.elapsed();
        // The minority's applications go on committing.
        let more = (plan.rate * 5.0) as usize + rng.below(plan.rate as u64 * 5) as usize;
        apps.wait_for_more_on(m as u64, more, T);
        let minority_commits = apps.committed_on(m as u64) - minority_before;
        // Nothing committed after the cut crossed it, either way (rows are never deleted: one look suffices).
        for &a in &majority {
            let leaked = c.ledger_rows_after(m, a, mark[a]);
            assert_eq!(
                leaked, 0,
                "node {m}, cut off, has {leaked} of node {a}'s new rows"
            );
            let leaked = c.ledger_rows_after(a, m, mark[m]);
            assert_eq!(
                leaked, 0,
                "node {a} has {leaked} of node {m}'s rows written while it was cut off"
            );
        }
        c.assert_all_alive();
        let partition = cut_at.elapsed();

        net.heal();
        let healed_at = Instant::now();
        let heal_mark: Vec<i64> = (0..=3)
            .map(|i| if i == 0 { 0 } else { c.own_ledger_mark(i) })
            .collect();
        for (from, &upto) in heal_mark.iter().enumerate().skip(1) {
            let all = c.ledger_rows_upto(from, from, upto);
            for to in (1..=3).filter(|t| *t != from && (*t == m || from == m)) {
                c.eventually(
                    CATCH_UP,
                    &format!("node {from}'s rows up to the heal on node {to}"),
                    || c.ledger_rows_upto(to, from, upto) == all,
                );
            }
        }
        let catch_up = healed_at.elapsed();
        c.assert_all_alive();
        eprintln!(
            "cycle {k}: node {m} cut off {:.1}s ({minority_commits} commits there; majority replicating after \
             {:.1}s), caught up {:.1}s after the heal",
            partition.as_secs_f64(),
            majority_replicated.as_secs_f64(),
            catch_up.as_secs_f64()
        );
        cycles.push((
            m,
            partition,
            minority_commits,
            majority_replicated,
            catch_up,
        ));
        apps.wait_for_more(20 + rng.below(100) as usize, T);
        k += 1;
    }

    let v = c.verdict(&mut apps, CONVERGE);
    let secs = |f: fn(&(usize, Duration, usize, Duration, Duration)) -> Duration| {
        cycles.iter().map(f).max().unwrap_or_default().as_secs_f64()
    };
    report(
        "partition",
        &format!(
            "seed={} cycles={k} minorities={:?} minority_commits={:?} max_partition={:.1}s \
             max_majority_replicating_after={:.1}s max_catch_up={:.1}s {} run={:.0}s",
            plan.seed,
            cycles.iter().map(|c| c.0).collect::<Vec<_>>(),
            cycles.iter().map(|c| c.2).collect::<Vec<_>>(),
            secs(|c| c.1),
            secs(|c| c.3),
            secs(|c| c.4),
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(v.committed > 0 && v.rows as usize >= v.committed);
    net.remove_after(apps, c);
}
