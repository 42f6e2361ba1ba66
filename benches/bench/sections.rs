//! The bench's cluster-wide sections: writers on every node at once against one writer alone (leaderless), a
//! node catching up on rows it missed, and one large transaction. Each writer is a thread of its own with its own
//! connection to its node's database and its own range of keys, so writers share no lock but SQLite's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;

use crate::support;

/// Keys of writer `w` start here: ranges far apart, so writers never touch each other's rows (the large
/// transaction and the catch-up write far above every writer's range).
fn key_base(w: usize) -> i64 {
    10_000_000_000 * (w as i64 + 1)
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM bench", [], |r| r.get(0))
        .unwrap()
}

/// One transaction of rows `first..first + n` in `w`; returns the next key.
fn insert_rows(w: &mut Connection, first: i64, n: i64) -> i64 {
    let tx = w.transaction().unwrap();
    {
        let mut st = tx
            .prepare_cached("INSERT INTO bench (id, payload, t) VALUES (?1, ?2, 0)")
            .unwrap();
        for id in first..first + n {
            st.execute(rusqlite::params![
                id,
                "payload-payload-payload-payload-payload"
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    first + n
}

/// Write 100-row transactions into `db` from `first` on until `stop`; returns the rows written.
fn write_until(db: &std::path::Path, first: i64, stop: &AtomicBool) -> i64 {
    let mut w = support::open(db);
    let mut id = first;
    while !stop.load(Ordering::Relaxed) {
        id = insert_rows(&mut w, id, 100);
    }
    id - first
}

/// The machine's CPU time so far, from `/proc/stat`: (busy, idle) in seconds over all cores.
pub fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are the idle time.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let busy: f64 = v.iter().take(8).sum::<f64>() - idle;
    (busy / 100.0, idle / 100.0)
}

/// Writers on the nodes `writers` (1-based) for `secs` at once, each in its own thread; then waits until every
/// node of the cluster holds every row. Returns (replicated rows/s: rows written ÷ time until all nodes hold
/// them, rows written).
fn writers_on(
    c: &support::Cluster,
    writers: &[usize],
    secs: f64,
    round: usize,
) -> (f64, i64, serde_json::Value) {
    let all: Vec<Connection> = c.nodes.iter().map(|n| support::open(&n.db)).collect();
    let base: Vec<i64> = all.iter().map(count).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let threads: Vec<_> = writers
        .iter()
        .map(|&n| {
            let db = c.node(n).db.clone();
            let stop = stop.clone();
            let first = key_base(n) + 1_000_000_000 * round as i64;
            std::thread::spawn(move || write_until(&db, first, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let rows: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    loop {
        if all
            .iter()
            .zip(&base)
            .all(|(conn, b)| count(conn) - b >= rows)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "writers on {writers:?}: not replicated everywhere within 600 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds();
    let (busy, idle) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let cpu = json!({
        "busy_cpu_seconds": busy,
        "idle_share": idle / (busy + idle).max(1e-9),
        "cpu_microseconds_per_row": busy * 1e6 / rows as f64,
    });
    (rows as f64 / took, rows, cpu)
}

/// One writer on node 1 alone, then one writer on every node at once (same length, 100-row transactions):
/// replicated rows/s of each and their ratio.
pub fn leaderless(c: &support::Cluster, secs: f64) -> serde_json::Value {
    let n = c.nodes.len();
    eprintln!("bench: leaderless: one writer alone, then one writer on each of the {n} nodes...");
    let (alone, alone_rows, alone_cpu) = writers_on(c, &[1], secs, 0);
    eprintln!("bench: leaderless: {n} writers at once...");
    let every: Vec<usize> = (1..=n).collect();
    let (all, all_rows, all_cpu) = writers_on(c, &every, secs, 1);
    json!({
        "one_writer_rows_per_s": alone.round(),
        "one_writer_rows": alone_rows,
        "writers": n,
        "all_writers_rows_per_s": all.round(),
        "all_writers_rows": all_rows,
        "ratio": all / alone,
        "one_writer_cpu": alone_cpu,
        "all_writers_cpu": all_cpu,
    })
}

/// The last node is stopped while `rows` rows are written on node 1 (1,000-row transactions) and reach the
/// others; then it is started again. Rows/s from its start until it holds them all, and how long it took to
/// say "node running". Returns the report and the restarted node's sidecar pid.
pub fn catch_up(
    c: &mut support::Cluster,
    rows: i64,
    first_id: i64,
    rss: &RssSampler,
) -> (serde_json::Value, u32) {
    let last = c.nodes.len();
    eprintln!("bench: catch-up: node {last} stopped while {rows} rows are written...");
    assert_eq!(c.node_mut(last).stop(), Some(0), "node {last} stop");
    let others: Vec<Connection> = (1..last).map(|i| support::open(&c.node(i).db)).collect();
    let target = count(&support::open(&c.node(last).db)) + rows;
    let base: Vec<i64> = others.iter().map(count).collect();
    let mut w = support::open(&c.node(1).db);
    let mut id = first_id;
    while id < first_id + rows {
        id = insert_rows(&mut w, id, 1_000.min(first_id + rows - id));
    }
    support::eventually(
        Duration::from_secs(600),
        "the other nodes hold every row",
        || others.iter().zip(&base).all(|(o, b)| count(o) - b >= rows),
    );
    eprintln!("bench: catch-up: node {last} started again...");
    rss.phase("catch-up: the node catching up");
    let reader = support::open(&c.node(last).db);
    // Rows arrive in stream order, whole transactions at a time: the last key there means every row is (a
    // count of the whole table would read every page of it each time).
    let last_key = first_id + rows - 1;
    let top = |r: &Connection| -> i64 {
        r.query_row("SELECT max(id) FROM bench", [], |x| {
            x.get::<_, Option<i64>>(0)
        })
        .unwrap()
        .unwrap_or(0)
    };
    let runs = c.node(last).running_count();
    let start = Instant::now();
    c.node_mut(last).start();
    let pid = c.node(last).pid().unwrap();
    rss.watch(pid, last as u64);
    let mut running = None;
    let mut first_applied = None;
    loop {
        if running.is_none() && c.node(last).running_count() > runs {
            running = Some(start.elapsed().as_secs_f64());
        }
        let top = top(&reader);
        if first_applied.is_none() && top >= first_id {
            first_applied = Some(start.elapsed().as_secs_f64());
        }
        if top >= last_key {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "node {last} did not catch up within 900 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count(&reader), target, "node {last} after its catch-up");
    let report = json!({
        "missed_rows": rows,
        "seconds_from_start": secs,
        "rows_per_s": (rows as f64 / secs).round(),
        "node_running_after_s": running,
        "first_rows_applied_after_s": first_applied,
    });
    (report, pid)
}

/// Right after the cluster runs: one row written on node 1, the time from its commit until every other node
/// holds it, in ms.
pub fn first_row(c: &support::Cluster) -> f64 {
    let peers: Vec<Connection> = (2..=c.nodes.len())
        .map(|i| support::open(&c.node(i).db))
        .collect();
    support::open(&c.node(1).db)
        .execute(
            "INSERT INTO bench (id, payload, t) VALUES (0, 'first', 0)",
            [],
        )
        .unwrap();
    let committed = Instant::now();
    let holds = |p: &Connection| {
        p.query_row("SELECT count(*) FROM bench WHERE id = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 1
    };
    while !peers.iter().all(holds) {
        assert!(
            committed.elapsed() < Duration::from_secs(60),
            "the first row is not everywhere after 60 s"
        );
        std::thread::sleep(Duration::from_micros(300));
    }
    committed.elapsed().as_secs_f64() * 1000.0
}

/// One transaction of `rows` rows on node 1: replicated rows/s until every other node holds it.
pub fn large_transaction(c: &support::Cluster, rows: i64, first_id: i64) -> serde_json::Value {
    eprintln!("bench: one transaction of {rows} rows...");
    let others: Vec<Connection> = (2..=c.nodes.len())
        .map(|i| support::open(&c.node(i).db))
        .collect();
    let base: Vec<i64> = others.iter().map(count).collect();
    let mut w = support::open(&c.node(1).db);
    let start = Instant::now();
    insert_rows(&mut w, first_id, rows);
    let committed = start.elapsed().as_secs_f64();
    support::eventually(
        Duration::from_secs(600),
        "every node holds the transaction",
        || others.iter().zip(&base).all(|(o, b)| count(o) - b >= rows),
    );
    let secs = start.elapsed().as_secs_f64();
    json!({
        "rows": rows,
        "commit_s": committed,
        "replicated_s": secs,
        "replicated_rows_per_s": (rows as f64 / secs).round(),
    })
}

/// The largest RSS seen in one phase of the run, in KiB, and the node whose sidecar it was.
#[derive(Default, Clone, Copy)]
pub struct Peak {
    pub sidecar: u64,
    pub node: u64,
    pub nats: u64,
}

type Phases = Vec<(String, Peak)>;

/// Samples the resident memory of the sidecars (`harmonylite` processes alone) and, apart, of their
/// nats-servers every 50 ms in a thread, per phase of the run ([`RssSampler::phase`]), until finished.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    /// (sidecar pid, node id)
    pids: Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    phases: Arc<std::sync::Mutex<Phases>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Watches the sidecars `pids` (of nodes 1, 2, ...).
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let pids: Vec<(u32, u64)> = pids.into_iter().zip(1..).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(std::sync::Mutex::new(pids));
        let phases = Arc::new(std::sync::Mutex::new(vec![(
            "start".to_string(),
            Peak::default(),
        )]));
        let thread = {
            let (stop, pids, phases) = (stop.clone(), pids.clone(), phases.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut now = Peak::default();
                    for &(p, node) in pids.lock().unwrap().iter() {
                        let rss = support::rss_kb(p);
                        if rss > now.sidecar {
                            (now.sidecar, now.node) = (rss, node);
                        }
                        for child in support::child_pids(p) {
                            now.nats = now.nats.max(support::rss_kb(child));
                        }
                    }
                    if let Some((_, peak)) = phases.lock().unwrap().last_mut() {
                        if now.sidecar > peak.sidecar {
                            (peak.sidecar, peak.node) = (now.sidecar, now.node);
                        }
                        peak.nats = peak.nats.max(now.nats);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssSampler {
            stop,
            pids,
            phases,
            thread: Some(thread),
        }
    }

    /// What the run does from now on.
    pub fn phase(&self, name: &str) {
        self.phases
            .lock()
            .unwrap()
            .push((name.to_string(), Peak::default()));
    }

    /// Another sidecar to watch: node `node` started again.
    pub fn watch(&self, pid: u32, node: u64) {
        self.pids.lock().unwrap().push((pid, node));
    }

    /// The largest RSS per phase, in KiB, in the order of the run. The sidecars' own peak (`VmHWM`) bounds
    /// the whole run from above, between samples too: it is the `"whole run"` entry.
    pub fn finish(mut self) -> Phases {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let mut phases = std::mem::take(&mut *self.phases.lock().unwrap());
        let (hwm, node) = self
            .pids
            .lock()
            .unwrap()
            .iter()
            .map(|&(p, node)| (support::peak_rss_kb(p), node))
            .max()
            .unwrap_or((0, 0));
        let nats = phases.iter().map(|(_, p)| p.nats).max().unwrap_or(0);
        phases.retain(|(_, p)| p.sidecar > 0);
        phases.push((
            "whole run".into(),
            Peak {
                sidecar: hwm,
                node,
                nats,
            },
        ));
        phases
    }
}
