//! `bench`: HarmonyLite's own benchmark. Starts a local cluster (three nodes, or `--nodes N`: real `harmonylite`
//! processes with their bundled nats-servers, R3, fsync always) and prints, from one run, as a table and as JSON:
//! plain SQLite insert rates, the cost of our capture triggers, the original's one-row-per-acked-message design
//! on the same cluster, our sustained replicated rows/s for 1-, 10- and 100-row transactions, replication lag
//! p50 / p99 / max idle, at half the maximum rate and under a fixed load of 30,000 rows/s, the leaderless section
//! (one writer on every node at once against one writer alone, each a thread with its own connection and keys),
//! one large transaction, a node catching up on rows written while it was stopped (rows/s from its start), the
//! largest RSS of a `harmonylite` process and, apart, of a nats-server over the whole run, the cold start,
//! snapshot save and restore rates with their peak RSS (64 MiB database with `--quick`, 1 GiB otherwise), and
//! large rows: replicated MB/s for rows of 1 KB, 1 MB and 64 MB, with the nodes' peak RSS while the 64 MB rows
//! replicate (fewer rows with `--quick`), and the change feed's cost (100-row replication on fresh clusters with
//! the feed off, then on with one `-changes -follow` reader).
//!
//! Run it with `scripts/bench.sh [--quick] [--nodes N] [--catch-up-rows N] [--soak SECS] [--json FILE]`, which builds the release
//! `harmonylite` binary and runs this bench against it through `cargo bench --bench bench -- ARGS`. `--quick`
//! finishes within about a minute; `--json FILE` also writes the JSON there; `--catch-up-rows N` sets how many rows the catch-up section's node misses (2,000,000, or 100,000 with `--quick`); `--soak SECS` adds a run of SECS
//! seconds at half the maximum rate, sampling sidecar RSS; `--feed-cost-only` measures only the change feed's cost; `--lag-only` only the lag at half the maximum rate (`--lag-runs N`, 3; `--lag-load R` at R rows/s instead). It measures only when given `--bench` (as `cargo
//! bench` does): `cargo test --benches` runs it without and it returns at once. `BENCH_VERBOSE=1` runs the nodes
//! with their debug lines (`[logging] verbose`), at some cost in CPU. The nodes' binary is found by
//! the test kit (`HARMONYLITE_BIN`, else the `harmonylite` that cargo built alongside).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "bench/sections.rs"]
mod sections;

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;
use support::{MB, child_pids, peak_rss_kb, reset_peak_rss, rss_kb};

struct Scale {
    bulk_rows: usize,
    single_rows: usize,
    baseline_msgs: usize,
    run_secs: f64,
    lag_samples: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Plain vs captured insert rates on a fresh database file (WAL, default synchronous, as an application).
fn sqlite_rates(dir: &Path, scale: &Scale) -> serde_json::Value {
    let mut res = serde_json::Map::new();
    for capture in [false, true] {
        let db = dir.join(format!("local-{capture}.db"));
        let mut conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, title TEXT, author TEXT, year INTEGER);")
            .unwrap();
        if capture {
            harmonylite::capture::install(&mut conn, &[], &[]).unwrap();
        }
        let start = Instant::now();
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare("INSERT INTO t (title, author, year) VALUES (?1, ?2, ?3)")
                .unwrap();
            for i in 0..scale.bulk_rows {
                st.execute(rusqlite::params![
                    format!("title {i}"),
                    format!("author {i}"),
                    1900 + (i % 100) as i64
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        let bulk = scale.bulk_rows as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        {
            let mut st = conn
                .prepare("INSERT INTO t (title, author, year) VALUES (?1, ?2, ?3)")
                .unwrap();
            for i in 0..scale.single_rows {
                st.execute(rusqlite::params![format!("single {i}"), "a", 2000])
                    .unwrap();
            }
        }
        let single = scale.single_rows as f64 / start.elapsed().as_secs_f64();
        let key = if capture { "capture" } else { "plain" };
        res.insert(format!("{key}_bulk_rows_per_s"), json!(bulk.round()));
        res.insert(
            format!("{key}_autocommit_rows_per_s"),
            json!(single.round()),
        );
    }
    let f = |k: &str| res[k].as_f64().unwrap();
    let bulk = f("plain_bulk_rows_per_s") / f("capture_bulk_rows_per_s");
    let auto = f("plain_autocommit_rows_per_s") / f("capture_autocommit_rows_per_s");
    res.insert("bulk_overhead".into(), json!(bulk));
    res.insert("autocommit_overhead".into(), json!(auto));
    serde_json::Value::Object(res)
}

/// The original's design on the same cluster: one row per JetStream message, each acknowledgement awaited.
fn baseline(rt: &tokio::runtime::Runtime, port: u16, msgs: usize) -> f64 {
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream("bench-baseline").await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "bench-baseline".into(),
            subjects: vec!["bench-baseline".into()],
            num_replicas: 3,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let payload = vec![b'x'; 160]; // about one CBOR-encoded Books row
        let start = Instant::now();
        for _ in 0..msgs {
            js.publish("bench-baseline", payload.clone().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let rate = msgs as f64 / start.elapsed().as_secs_f64();
        let _ = js.delete_stream("bench-baseline").await;
        rate
    })
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM bench", [], |r| r.get(0))
        .unwrap()
}

/// Write on node 1 in transactions of `batch` rows for `secs`, then wait until every other node has every row.
/// Returns (replicated rows/s, local write rows/s).
fn throughput(c: &support::Cluster, batch: usize, secs: f64, next_id: &mut i64) -> (f64, f64) {
    let mut w = support::open(&c.node(1).db);
    let peers: Vec<Connection> = (2..=c.nodes.len())
        .map(|i| support::open(&c.node(i).db))
        .collect();
    let base: Vec<i64> = peers.iter().map(count).collect();
    let start = Instant::now();
    let mut rows = 0i64;
    while start.elapsed().as_secs_f64() < secs {
        let tx = w.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO bench (id, payload, t) VALUES (?1, ?2, ?3)")
                .unwrap();
            for _ in 0..batch {
                st.execute(rusqlite::params![
                    *next_id,
                    "payload-payload-payload-payload-payload",
                    0
                ])
                .unwrap();
                *next_id += 1;
            }
        }
        tx.commit().unwrap();
        rows += batch as i64;
    }
    let wrote = start.elapsed().as_secs_f64();
    loop {
        let done = peers.iter().zip(&base).all(|(p, b)| count(p) - b >= rows);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            panic!("replication did not catch up within 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (
        rows as f64 / start.elapsed().as_secs_f64(),
        rows as f64 / wrote,
    )
}

/// Whether `e` is SQLite's "database is locked" (the busy timeout ran out).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy)
}

/// Replication lag of single-row writes on node 1 as seen on node 2 (and until every peer holds them), with an optional background load of
/// `load_rows_per_s` (100-row transactions on node 1): p50, p99, max from the moment the probe's `INSERT`
/// returns; apart, how long the probe's own `INSERT` took (`probe_write_ms`: waiting for node 1's write lock),
/// and how many writes found the database locked for the whole 10 s busy timeout (written again).
fn lag(
    c: &support::Cluster,
    samples: usize,
    load_rows_per_s: f64,
    next_id: &mut i64,
) -> serde_json::Value {
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = (load_rows_per_s > 0.0).then(|| {
        let db = c.node(1).db.clone();
        let stop = stop.clone();
        let busy = busy.clone();
        // Each loaded run writes its own range of keys.
        static LOAD_RUNS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        let run = LOAD_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = 1_000_000_000i64 * run;
        std::thread::spawn(move || {
            let mut w = support::open(&db);
            let per_txn = 100;
            let interval = Duration::from_secs_f64(per_txn as f64 / load_rows_per_s);
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let write = |w: &mut rusqlite::Connection| -> rusqlite::Result<()> {
                    let tx = w.transaction()?;
                    for i in 0..per_txn {
                        tx.execute(
                            "INSERT INTO bench (id, payload, t) VALUES (?1, 'load', 0)",
                            [id + i],
                        )?;
                    }
                    tx.commit()
                };
                match write(&mut w) {
                    Ok(()) => id += per_txn,
                    Err(e) if is_busy(&e) => {
                        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => panic!("load writer: {e}"),
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    });
    let w = support::open(&c.node(1).db);
    let cpu_before = sections::cpu_seconds();
    // Per process kind: the sidecars and their nats-servers, CPU time and time runnable but waiting for a CPU.
    let kinds: Vec<(&str, Vec<u32>)> = {
        let sidecars: Vec<u32> = c.nodes.iter().filter_map(|n| n.pid()).collect();
        let servers = sidecars.iter().flat_map(|&p| child_pids(p)).collect();
        vec![("sidecars", sidecars), ("nats_servers", servers)]
    };
    let sched = |pids: &[u32]| {
        pids.iter()
            .map(|&p| support::cpu_and_runqueue_ns(p))
            .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let sched_before: Vec<(u64, u64)> = kinds.iter().map(|(_, p)| sched(p)).collect();
    let phase_start = Instant::now();
    let peers: Vec<Connection> = (2..=c.nodes.len())
        .map(|i| support::open(&c.node(i).db))
        .collect();
    let mut lags = Vec::new();
    let mut lags_all = Vec::new();
    let mut writes = Vec::new();
    for _ in 0..samples {
        let id = *next_id;
        *next_id += 1;
        let t0 = Instant::now();
        let committed = loop {
            match w.execute(
                "INSERT INTO bench (id, payload, t) VALUES (?1, 'probe', 1)",
                [id],
            ) {
                Ok(_) => break Instant::now(),
                Err(e) if is_busy(&e) && t0.elapsed() < Duration::from_secs(60) => {
                    busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => panic!("probe {id}: {e}"),
            }
        };
        writes.push(committed.duration_since(t0).as_secs_f64() * 1000.0);
        // When each peer first holds the probe (node 2 first in the list).
        let mut seen: Vec<Option<f64>> = vec![None; peers.len()];
        while seen.iter().any(Option::is_none) {
            for (r, s) in peers.iter().zip(&mut seen) {
                if s.is_none()
                    && r.query_row("SELECT count(*) FROM bench WHERE id = ?1", [id], |x| {
                        x.get::<_, i64>(0)
                    })
                    .unwrap()
                        == 1
                {
                    *s = Some(committed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                panic!("probe {id} not replicated everywhere within 30 s");
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        lags.push(seen[0].unwrap());
        lags_all.push(seen.iter().flatten().copied().fold(0.0, f64::max));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu_after = sections::cpu_seconds();
    let phase_s = phase_start.elapsed().as_secs_f64();
    let per_s = |ns: u64| (ns as f64 / 1e6 / phase_s * 10.0).round() / 10.0;
    let mut processes = serde_json::Map::new();
    for ((kind, pids), before) in kinds.iter().zip(&sched_before) {
        let after = sched(pids);
        processes.insert(
            (*kind).into(),
            json!({
                "cpu_ms_per_s": per_s(after.0.saturating_sub(before.0)),
                "runqueue_wait_ms_per_s": per_s(after.1.saturating_sub(before.1)),
            }),
        );
    }
    if let Some(l) = loader {
        l.join().unwrap();
    }
    let (busy_s, idle_s) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    json!({
        "cpu_busy_fraction": ((busy_s / (busy_s + idle_s).max(f64::EPSILON)) * 1000.0).round() / 1000.0,
        "processes": processes,
        "p50": percentile(&mut lags, 0.5),
        "p99": percentile(&mut lags, 0.99),
        "max": percentile(&mut lags, 1.0),
        "every_peer": {
            "p50": percentile(&mut lags_all, 0.5),
            "p99": percentile(&mut lags_all, 0.99),
            "max": percentile(&mut lags_all, 1.0),
        },
        "probe_write_ms": {
            "p50": percentile(&mut writes, 0.5),
            "p99": percentile(&mut writes, 0.99),
            "max": percentile(&mut writes, 1.0),
        },
        "load_rows_per_s": load_rows_per_s.round(),
        "busy_timeouts": busy.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Load node 1 at `rows_per_s` (100-row transactions) for `secs`, sampling the largest sidecar RSS every 10 s.
fn soak(
    c: &support::Cluster,
    secs: u64,
    rows_per_s: f64,
    pids: &[u32],
    next_id: &mut i64,
) -> serde_json::Value {
    eprintln!("bench: soak for {secs} s at {rows_per_s:.0} rows/s...");
    let mut w = support::open(&c.node(1).db);
    let interval = Duration::from_secs_f64(100.0 / rows_per_s);
    let start = Instant::now();
    let mut next = start;
    let mut next_sample = start;
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_sample {
            let rss = pids.iter().map(|&p| rss_kb(p)).max().unwrap_or(0) as f64 / 1024.0;
            samples.push(json!([start.elapsed().as_secs(), rss]));
            next_sample += Duration::from_secs(10);
        }
        let tx = w.transaction().unwrap();
        for _ in 0..100 {
            tx.execute(
                "INSERT INTO bench (id, payload, t) VALUES (?1, 'soak', 0)",
                [*next_id],
            )
            .unwrap();
            *next_id += 1;
        }
        tx.commit().unwrap();
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let rss: Vec<f64> = samples.iter().map(|s| s[1].as_f64().unwrap()).collect();
    json!({
        "seconds": secs,
        "rows_per_s": rows_per_s.round(),
        "rss_mb_first": rss.first().copied().unwrap_or(0.0),
        "rss_mb_last": rss.last().copied().unwrap_or(0.0),
        "rss_mb_max": rss.iter().copied().fold(0.0, f64::max),
        "samples": samples,
    })
}

/// Snapshot save and restore of a database of about `mb` MiB of realistic rows on one node (NATS object
/// store): rates in MB/s of database size, and the peak RSS of the process doing the work (the `-save-snapshot`
/// command; the node while it restores).
fn snapshot_bench(mb: u64) -> serde_json::Value {
    let dir = tempfile::Builder::new()
        .prefix("hl-bench-snap-")
        .tempdir()
        .unwrap();
    let mut c = support::Cluster::new(support::Options {
        nodes: 1,
        schema:
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, city TEXT, \
                 balance REAL, created INTEGER, notes TEXT);"
                .into(),
        verbose: true,
        ..Default::default()
    });
    let db = c.node(1).db.clone();
    {
        // Rows of about 330 bytes: text that compresses like real text (hex of random bytes compresses 2x).
        let conn = Connection::open(&db).unwrap();
        let rows = mb * 1024 * 1024 / 330;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; BEGIN;
             WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {rows})
             INSERT INTO customers SELECT x, 'Customer ' || x, 'user' || x || '@example.com',
               'City ' || (x % 1000), x * 1.25, 1700000000 + x, hex(randomblob(120)) FROM s;
             COMMIT; PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .unwrap();
    }
    let size = std::fs::metadata(&db).unwrap().len();
    c.start_all();
    c.wait_all_running(Duration::from_secs(120));
    // A few changes so the stream is trimmed past its start: a fresh database then has a gap to restore over.
    for i in 0..20 {
        c.node(1).sql(&format!(
            "UPDATE customers SET balance = balance + 1 WHERE id = {};",
            i + 1
        ));
    }
    support::poll(Duration::from_secs(60), || {
        !c.node(1).log_lines_with(&["stream trimmed"]).is_empty()
    })
    .expect("the stream was not trimmed");
    let peak = |child: &mut std::process::Child| {
        let mut peak = 0u64;
        while child.try_wait().unwrap().is_none() {
            peak = peak.max(rss_kb(child.id()));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    };
    let t = Instant::now();
    let mut save = c
        .node(1)
        .command()
        .arg("-save-snapshot")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let save_rss = peak(&mut save);
    let save_secs = t.elapsed().as_secs_f64();
    assert!(save.wait().unwrap().success(), "-save-snapshot failed");

    c.node_mut(1).stop();
    let fresh = db.with_file_name("fresh.db");
    support::sqlite3(
        &fresh,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, city TEXT, balance REAL, \
         created INTEGER, notes TEXT);",
    );
    c.node_mut(1).use_db(&fresh);
    c.node_mut(1).start();
    let pid = c.node(1).pid().unwrap();
    let mut restore_rss = 0u64;
    let restored = support::poll(Duration::from_secs(600), || {
        restore_rss = restore_rss.max(rss_kb(pid));
        let lines = c
            .node(1)
            .log_lines_with(&["snapshot restored into the database"]);
        std::thread::sleep(Duration::from_millis(20));
        lines.last().cloned()
    })
    .expect("no restore");
    let stamp =
        |line: &str| humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).unwrap();
    let began = c
        .node(1)
        .log_lines_with(&["restoring snapshot"])
        .pop()
        .expect("restore start");
    let restore_secs = stamp(&restored)
        .duration_since(stamp(&began))
        .unwrap()
        .as_secs_f64();
    c.node_mut(1).wait_running(Duration::from_secs(120));
    c.stop_all();
    drop(dir);
    let mbs = size as f64 / 1e6;
    json!({
        "database_mb": mbs,
        "save_mb_per_s": mbs / save_secs,
        "save_peak_rss_mb": save_rss as f64 / 1024.0,
        "restore_mb_per_s": mbs / restore_secs,
        "restore_peak_rss_mb": restore_rss as f64 / 1024.0,
    })
}

/// One class of large rows: `rows` rows of `bytes` random bytes each, `per_txn` rows per transaction.
struct RowClass {
    key: &'static str,
    label: &'static str,
    bytes: usize,
    rows: usize,
    per_txn: usize,
}

/// Large rows on a fresh three-node cluster: per class of [`RowClass`], rows of random bytes written on node 1
/// as fast as it takes them, timed from the first write until the last row is on both peers (MB/s of row
/// bytes, 1 MB = 10^6 bytes); and the peak RSS (`VmHWM`, reset before) of the sidecars and of their
/// nats-servers while the 64 MB rows replicate, the largest over the nodes.
fn large_rows_bench(quick: bool) -> serde_json::Value {
    let classes = [
        RowClass {
            key: "1kb",
            label: "1 KB rows, 100 per transaction",
            bytes: 1024,
            rows: if quick { 5_000 } else { 20_000 },
            per_txn: 100,
        },
        RowClass {
            key: "1mb",
            label: "1 MB rows",
            bytes: MB,
            rows: if quick { 16 } else { 128 },
            per_txn: 1,
        },
        RowClass {
            key: "64mb",
            label: "64 MB rows",
            bytes: 64 * MB,
            rows: if quick { 2 } else { 8 },
            per_txn: 1,
        },
    ];
    let mut c = support::Cluster::new(support::Options {
        schema: "CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB);".into(),
        verbose: false,
        ..Default::default()
    });
    c.start_all();
    c.wait_all_running(Duration::from_secs(120));
    let sidecars: Vec<u32> = c.nodes.iter().filter_map(|n| n.pid()).collect();
    let servers: Vec<u32> = sidecars.iter().flat_map(|&p| child_pids(p)).collect();
    let mut w = support::open(&c.node(1).db);
    let peers: Vec<Connection> = (2..=c.nodes.len())
        .map(|i| support::open(&c.node(i).db))
        .collect();
    let mut res = serde_json::Map::new();
    let mut next_id = 1i64;
    for class in &classes {
        eprintln!(
            "bench: large rows, {} x {} ({})...",
            class.rows, class.bytes, class.label
        );
        let peak = class.bytes >= 64 * MB;
        if peak {
            for &pid in sidecars.iter().chain(&servers) {
                reset_peak_rss(pid);
            }
        }
        let (first, last) = (next_id, next_id + class.rows as i64 - 1);
        let start = Instant::now();
        for _ in 0..class.rows / class.per_txn {
            let tx = w.transaction().unwrap();
            for _ in 0..class.per_txn {
                tx.execute(
                    "INSERT INTO big (id, data) VALUES (?1, randomblob(?2))",
                    rusqlite::params![next_id, class.bytes as i64],
                )
                .unwrap();
                next_id += 1;
            }
            tx.commit().unwrap();
        }
        loop {
            let arrived = peers.iter().all(|p| {
                p.query_row(
                    "SELECT count(*) FROM big WHERE id BETWEEN ?1 AND ?2",
                    [first, last],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                    == class.rows as i64
            });
            if arrived {
                break;
            }
            if start.elapsed() > Duration::from_secs(900) {
                panic!("{} did not reach every peer within 900 s", class.label);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = (class.rows * class.bytes) as f64 / 1e6;
        let mut r = json!({
            "label": class.label,
            "rows": class.rows,
            "row_bytes": class.bytes,
            "rows_per_transaction": class.per_txn,
            "seconds": secs,
            "replicated_mb_per_s": mb / secs,
        });
        if peak {
            let max = |pids: &[u32]| {
                pids.iter().map(|&p| peak_rss_kb(p)).max().unwrap_or(0) as f64 / 1024.0
            };
            r["peak_rss_mb"] = json!({"sidecar": max(&sidecars), "nats_server": max(&servers)});
        }
        res.insert(class.key.into(), r);
    }
    c.stop_all();
    serde_json::Value::Object(res)
}

/// What the command line asks for.
struct Args {
    quick: bool,
    json_out: Option<String>,
    soak_secs: u64,
    nodes: usize,
    /// Rows the catch-up section's node misses (default: 2,000,000; 100,000 with `--quick`).
    catch_up_rows: Option<i64>,
    /// Fresh clusters started (and stopped) after the run's own, for the spread of the cold start (default: 5;
    /// 1 with `--quick`).
    cold_starts: Option<usize>,
    /// Only the cold starts (`--cold-starts N` of them, 20 by default), nothing else.
    cold_starts_only: bool,
    /// Only the change feed's cost (`--feed-cost-only`), for work on the feed.
    feed_cost_only: bool,
    /// Only the lag at half the maximum rate (`--lag-only`): the 100-row rate, then `--lag-runs N` (3) runs
    /// of the loaded lag, for work on the lag's tail.
    lag_only: bool,
    lag_runs: usize,
    /// With `--lag-only`: this load (rows/s) instead of half the rate measured first (`--lag-load N`).
    lag_load: Option<f64>,
}

fn args() -> Option<Args> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return None;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let nodes = value("--nodes").map_or(3, |v| v.parse().expect("--nodes takes a number of nodes"));
    assert!(nodes >= 2, "--nodes: at least 2 nodes");
    Some(Args {
        quick: args.iter().any(|a| a == "--quick"),
        json_out: value("--json"),
        soak_secs: value("--soak")
            .map(|v| v.parse().expect("--soak takes a number of seconds"))
            .unwrap_or(0),
        nodes,
        catch_up_rows: value("--catch-up-rows")
            .map(|v| v.parse().expect("--catch-up-rows takes a number of rows")),
        cold_starts: value("--cold-starts")
            .map(|v| v.parse().expect("--cold-starts takes a number of starts")),
        feed_cost_only: args.iter().any(|a| a == "--feed-cost-only"),
        cold_starts_only: args.iter().any(|a| a == "--cold-starts-only"),
        lag_only: args.iter().any(|a| a == "--lag-only"),
        lag_runs: value("--lag-runs")
            .map_or(3, |v| v.parse().expect("--lag-runs takes a number of runs")),
        lag_load: value("--lag-load").map(|v| v.parse().expect("--lag-load takes rows per second")),
    })
}

/// Background load of the fixed-rate lag run (rows/s, 100-row transactions on node 1).
const FIXED_LOAD: f64 = 30_000.0;

/// Everything measured on the running cluster: replication rates, lag, the leaderless, large-transaction and
/// catch-up sections, memory.
fn cluster_sections(
    c: &mut support::Cluster,
    scale: &Scale,
    quick: bool,
    soak_secs: u64,
    catch_up_rows: Option<i64>,
) -> serde_json::Value {
    let sidecar_pids: Vec<u32> = c.nodes.iter().filter_map(|n| n.pid()).collect();
    let rss = sections::RssSampler::start(sidecar_pids.clone());
    let mut next_id = 1i64;
    let mut results = serde_json::Map::new();
    let mut max_rate: f64 = 0.0;
    for batch in [1usize, 10, 100] {
        eprintln!("bench: sustained replication, {batch}-row transactions...");
        rss.phase(&format!("{batch}-row transactions"));
        let (repl, write) = throughput(c, batch, scale.run_secs, &mut next_id);
        max_rate = max_rate.max(repl);
        results.insert(
            format!("txn_{batch}"),
            json!({"replicated_rows_per_s": repl.round(), "written_rows_per_s": write.round()}),
        );
    }
    let mut lags = serde_json::Map::new();
    for (name, load) in [
        ("idle", 0.0),
        ("half_max_rate", max_rate / 2.0),
        ("fixed_load", FIXED_LOAD),
    ] {
        eprintln!("bench: lag, {name} ({load:.0} rows/s of load)...");
        rss.phase(&format!("lag, {name}"));
        lags.insert(name.into(), lag(c, scale.lag_samples, load, &mut next_id));
    }
    let soak_report =
        (soak_secs > 0).then(|| soak(c, soak_secs, max_rate / 2.0, &sidecar_pids, &mut next_id));
    rss.phase("leaderless");
    let leaderless = sections::leaderless(c, scale.run_secs);
    let big = if quick { 50_000 } else { 200_000 };
    rss.phase("large transaction");
    let large_txn = sections::large_transaction(c, big, 800_000_000_000_000_000);
    let missed = catch_up_rows.unwrap_or(if quick { 100_000 } else { 2_000_000 });
    rss.phase("catch-up: the rows written while a node is stopped");
    let (catch_up, _) = sections::catch_up(c, missed, 900_000_000_000_000_000, &rss);
    // Let the sampler see the restarted node at least once.
    std::thread::sleep(Duration::from_millis(250));
    let phases = rss.finish();
    let (whole, rss_phases) = phases.split_last().unwrap();
    let mb = |kb: u64| (kb as f64 / 1024.0 * 10.0).round() / 10.0;
    let rss_phases: Vec<serde_json::Value> = rss_phases
        .iter()
        .map(|(name, p)| json!({"phase": name, "sidecar": mb(p.sidecar), "node": p.node, "nats_server": mb(p.nats)}))
        .collect();
    json!({
        "replication": results,
        "max_replicated_rows_per_s": max_rate.round(),
        "lag_ms": lags,
        "leaderless": leaderless,
        "large_transaction": large_txn,
        "catch_up": catch_up,
        "sidecar_rss_mb_max": mb(whole.1.sidecar),
        "sidecar_rss_max_node": whole.1.node,
        "nats_server_rss_mb_max": mb(whole.1.nats),
        "rss_mb_by_phase": rss_phases,
        "soak": soak_report,
    })
}

fn main() {
    let Some(a) = args() else {
        eprintln!(
            "bench: not run as a benchmark (no --bench): nothing measured; run scripts/bench.sh or cargo bench --bench bench"
        );
        return;
    };
    let quick = a.quick;
    let scale = if quick {
        Scale {
            bulk_rows: 50_000,
            single_rows: 300,
            baseline_msgs: 1_000,
            run_secs: 2.0,
            lag_samples: 40,
        }
    } else {
        Scale {
            bulk_rows: 200_000,
            single_rows: 2_000,
            baseline_msgs: 5_000,
            run_secs: 8.0,
            lag_samples: 300,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hl-bench-")
        .tempdir()
        .unwrap();

    let opts = support::Options {
        nodes: a.nodes,
        schema: "CREATE TABLE bench (id INTEGER PRIMARY KEY, payload TEXT, t INTEGER);".into(),
        verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
        ..Default::default()
    };
    if a.cold_starts_only {
        let starts = a.cold_starts.unwrap_or(20);
        // With the nodes' debug lines, so that a slow start's kept logs tell where it waited.
        let opts = support::Options {
            verbose: true,
            ..opts.clone()
        };
        let runs: Vec<(f64, f64)> = (0..starts).map(|_| fresh_start(&opts)).collect();
        let secs: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let out = json!({
            "cold_starts_s": secs,
            "cold_start_max_s": secs.iter().copied().fold(0.0, f64::max),
            "first_row_ms": runs.iter().map(|r| r.1).collect::<Vec<f64>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        return;
    }
    if a.feed_cost_only {
        let feed = feed_cost(&opts, scale.run_secs);
        println!("{}", serde_json::to_string_pretty(&feed).unwrap());
        return;
    }
    if a.lag_only {
        let mut c = support::Cluster::new(opts.clone());
        c.start_all();
        c.wait_all_running(Duration::from_secs(120));
        let mut next_id = 1i64;
        let (max_rate, _) = throughput(&c, 100, scale.run_secs, &mut next_id);
        let load = a.lag_load.unwrap_or(max_rate / 2.0);
        let runs: Vec<serde_json::Value> = (0..a.lag_runs)
            .map(|i| {
                eprintln!(
                    "bench: lag under {load:.0} rows/s of load, run {}...",
                    i + 1
                );
                lag(&c, scale.lag_samples, load, &mut next_id)
            })
            .collect();
        c.stop_all();
        let out = json!({"max_replicated_rows_per_s": max_rate.round(), "load_rows_per_s": load.round(), "lag_runs": runs});
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        return;
    }
    eprintln!("bench: local SQLite insert rates...");
    let local = sqlite_rates(dir.path(), &scale);

    eprintln!("bench: starting {} nodes...", a.nodes);
    let mut c = support::Cluster::new(opts.clone());
    let t0 = Instant::now();
    c.start_all();
    c.wait_all_running(Duration::from_secs(120));
    let cold_start = t0.elapsed().as_secs_f64();
    let first_row = sections::first_row(&c);

    eprintln!("bench: baseline (one row per acknowledged message)...");
    let base = baseline(&rt, c.node(1).client_port, scale.baseline_msgs);
    let mut report = cluster_sections(&mut c, &scale, quick, a.soak_secs, a.catch_up_rows);
    c.stop_all();
    let snapshot_mb = if quick { 64 } else { 1024 };
    eprintln!("bench: snapshot save and restore of a {snapshot_mb} MiB database...");
    let snap = snapshot_bench(snapshot_mb);
    let large = large_rows_bench(quick);
    let starts = a.cold_starts.unwrap_or(if quick { 1 } else { 5 });
    eprintln!(
        "bench: {starts} more cold starts of {} fresh nodes...",
        a.nodes
    );
    let mut cold_starts = vec![cold_start];
    // The first row is measured again after each fresh start: one figure per run hides how often it is slow.
    let mut first_rows = vec![first_row];
    for _ in 0..starts {
        let (secs, first) = fresh_start(&opts);
        cold_starts.push(secs);
        first_rows.push(first);
    }
    let feed = feed_cost(&opts, scale.run_secs);
    let max_rate = report["max_replicated_rows_per_s"].as_f64().unwrap();
    let extra = json!({
        "quick": quick,
        "nodes": a.nodes,
        "local_sqlite": local,
        "baseline_one_row_per_acked_message_rows_per_s": base.round(),
        "speedup_vs_baseline": max_rate / base,
        "cold_start_s": cold_start,
        "cold_starts_s": cold_starts,
        "cold_start_max_s": cold_starts.iter().copied().fold(0.0, f64::max),
        "first_row_after_start_ms": first_row,
        "first_rows_after_starts_ms": first_rows,
        "first_row_after_start_max_ms": first_rows.iter().copied().fold(0.0, f64::max),
        "snapshot": snap,
        "large_rows": large,
        "feed": feed,
    });
    for (k, v) in extra.as_object().unwrap() {
        report[k] = v.clone();
    }
    print_table(&report);
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    if let Some(path) = a.json_out {
        std::fs::write(path, &text).unwrap();
    }
}

/// The change feed's cost: 100-row transactions on node 1 for `secs` on a fresh cluster without the feed, then on
/// one with `[feed] enabled` and a `-changes -follow` reader on node 2 counting the records it prints. The
/// replicated rows/s of both, their ratio (goal ≥ 0.9), and how long after the writing ended the reader had
/// every row.
fn feed_cost(opts: &support::Options, secs: f64) -> serde_json::Value {
    use std::io::BufRead;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let run = |feed: bool| -> (f64, Option<f64>, serde_json::Value) {
        let mut o = opts.clone();
        if feed {
            o.extra_toml.push_str(support::FEED_ON);
        }
        let mut c = support::Cluster::new(o);
        c.start_all();
        c.wait_all_running(Duration::from_secs(120));
        let seen = Arc::new(AtomicU64::new(0));
        let mut reader = None;
        if feed {
            // The feed's writer makes its stream: the reader starts once it exists.
            support::poll(Duration::from_secs(60), || {
                c.node(2).stream_info("harmonylite-feed").is_some()
            })
            .expect("a node writes the feed");
            let mut cmd = c.node(2).command();
            cmd.args(["-changes", "-follow"])
                .stdout(std::process::Stdio::piped());
            let mut child = cmd.spawn().expect("the reader starts");
            let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let counter = seen.clone();
            std::thread::spawn(move || {
                for line in out.lines() {
                    if line.is_err() {
                        break;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            reader = Some(child);
        }
        // CPU seconds of each sidecar, of the nats-servers and of the reader over the writing and catching up.
        let sidecars: Vec<u32> = c.nodes.iter().filter_map(|n| n.pid()).collect();
        let servers: Vec<u32> = sidecars.iter().flat_map(|&p| child_pids(p)).collect();
        let reader_pid: Vec<u32> = reader.iter().map(std::process::Child::id).collect();
        let cpu = |pids: &[u32]| -> Vec<u64> {
            pids.iter()
                .map(|&p| support::cpu_and_runqueue_ns(p).0)
                .collect()
        };
        let before = [cpu(&sidecars), cpu(&servers), cpu(&reader_pid)];
        let mut next_id = 1i64;
        let (repl, _) = throughput(&c, 100, secs, &mut next_id);
        let rows = (next_id - 1) as u64;
        let caught_up = reader.as_ref().map(|_| {
            let t = Instant::now();
            support::poll(Duration::from_secs(300), || {
                seen.load(Ordering::Relaxed) >= rows
            })
            .expect("the reader has every row within 300 s");
            t.elapsed().as_secs_f64()
        });
        let after = [cpu(&sidecars), cpu(&servers), cpu(&reader_pid)];
        let secs_of = |i: usize| -> Vec<f64> {
            after[i]
                .iter()
                .zip(&before[i])
                .map(|(a, b)| ((a - b) as f64 / 1e7).round() / 100.0)
                .collect()
        };
        let servers_total: f64 = secs_of(1).iter().sum();
        let cpu_s = json!({
            "feed_writer_node": reader_pid.first().map(|_| c.feed_writer(Duration::from_secs(10))),
            "sidecars": secs_of(0),
            "nats_servers": (servers_total * 100.0).round() / 100.0,
            "reader": secs_of(2).first(),
        });
        if let Some(mut r) = reader {
            let _ = r.kill();
            let _ = r.wait();
        }
        c.stop_all();
        (repl, caught_up, cpu_s)
    };
    eprintln!("bench: the change feed's cost: without the feed...");
    let (without, _, cpu_without) = run(false);
    eprintln!("bench: the change feed's cost: with the feed and one -changes -follow reader...");
    let (with, caught_up, cpu_with) = run(true);
    json!({
        "without_feed_rows_per_s": without.round(),
        "with_feed_and_reader_rows_per_s": with.round(),
        "ratio": with / without,
        "reader_had_every_row_after_s": caught_up,
        "cpu_s_without_feed": cpu_without,
        "cpu_s_with_feed": cpu_with,
    })
}

/// A JSON number as a whole number (`NaN` when absent).
fn whole(v: &serde_json::Value) -> String {
    v.as_f64().map_or("NaN".into(), |x| format!("{x:.0}"))
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let l = &r["local_sqlite"];
    let n = r["nodes"].as_u64().unwrap();
    println!(
        "HarmonyLite bench{}, {n} nodes",
        if r["quick"] == true { " (quick)" } else { "" }
    );
    println!("{:<62} {:>16}", "measure", "value");
    let row = |k: &str, v: String| println!("{k:<62} {v:>16}");
    row(
        "plain SQLite bulk insert (rows/s)",
        whole(&l["plain_bulk_rows_per_s"]),
    );
    row(
        "with capture, bulk insert (rows/s)",
        whole(&l["capture_bulk_rows_per_s"]),
    );
    row(
        "capture overhead, bulk (x)",
        format!("{:.2}", f(&l["bulk_overhead"])),
    );
    row(
        "plain SQLite autocommit insert (rows/s)",
        whole(&l["plain_autocommit_rows_per_s"]),
    );
    row(
        "with capture, autocommit insert (rows/s)",
        whole(&l["capture_autocommit_rows_per_s"]),
    );
    row(
        "capture overhead, autocommit (x)",
        format!("{:.2}", f(&l["autocommit_overhead"])),
    );
    row(
        "baseline: one row per acked message (rows/s)",
        whole(&r["baseline_one_row_per_acked_message_rows_per_s"]),
    );
    let repl = &r["replication"];
    for b in [1, 10, 100] {
        let t = &repl[format!("txn_{b}")];
        row(
            &format!("replicated rows/s, {b}-row transactions (written rows/s)"),
            format!(
                "{} ({})",
                whole(&t["replicated_rows_per_s"]),
                whole(&t["written_rows_per_s"])
            ),
        );
    }
    let t100 = &repl["txn_100"];
    row(
        "replicated / written, 100-row transactions",
        format!(
            "{:.2}",
            f(&t100["replicated_rows_per_s"]) / f(&t100["written_rows_per_s"])
        ),
    );
    row(
        "speedup vs baseline (x)",
        format!("{:.1}", f(&r["speedup_vs_baseline"])),
    );
    for (name, label) in [
        ("idle", "idle".to_string()),
        (
            "half_max_rate",
            format!(
                "at half max rate, {} rows/s",
                whole(&r["lag_ms"]["half_max_rate"]["load_rows_per_s"])
            ),
        ),
        (
            "fixed_load",
            format!(
                "under {} rows/s of load",
                whole(&r["lag_ms"]["fixed_load"]["load_rows_per_s"])
            ),
        ),
    ] {
        let g = &r["lag_ms"][name];
        row(
            &format!("lag {label}, p50 / p99 / max (ms)"),
            format!(
                "{:.1} / {:.1} / {:.1}",
                f(&g["p50"]),
                f(&g["p99"]),
                f(&g["max"])
            ),
        );
        let e = &g["every_peer"];
        row(
            "  until every peer holds it, p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.1}",
                f(&e["p50"]),
                f(&e["p99"]),
                f(&e["max"])
            ),
        );
        let w = &g["probe_write_ms"];
        row(
            "  the probe's own INSERT on node 1, p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.1}",
                f(&w["p50"]),
                f(&w["p99"]),
                f(&w["max"])
            ),
        );
    }
    let busy: u64 = ["idle", "half_max_rate", "fixed_load"]
        .iter()
        .map(|k| r["lag_ms"][k]["busy_timeouts"].as_u64().unwrap_or(0))
        .sum();
    row(
        "lag runs: writes that found the database locked 10 s",
        format!("{busy}"),
    );
    let ll = &r["leaderless"];
    row(
        "one writer alone, replicated rows/s",
        whole(&ll["one_writer_rows_per_s"]),
    );
    row(
        &format!("one writer on each of the {n} nodes, replicated rows/s"),
        whole(&ll["all_writers_rows_per_s"]),
    );
    row(
        "all writers / one writer",
        format!("{:.2}", f(&ll["ratio"])),
    );
    let (c1, ca) = (&ll["one_writer_cpu"], &ll["all_writers_cpu"]);
    row(
        "  machine CPU µs per replicated row, one / all writers",
        format!(
            "{:.1} / {:.1}",
            f(&c1["cpu_microseconds_per_row"]),
            f(&ca["cpu_microseconds_per_row"])
        ),
    );
    row(
        "  machine idle share, one / all writers",
        format!("{:.2} / {:.2}", f(&c1["idle_share"]), f(&ca["idle_share"])),
    );
    let lt = &r["large_transaction"];
    row(
        &format!("one {}-row transaction, replicated rows/s", lt["rows"]),
        whole(&lt["replicated_rows_per_s"]),
    );
    let cu = &r["catch_up"];
    row(
        &format!(
            "catch-up of {} missed rows, rows/s from start",
            cu["missed_rows"]
        ),
        format!(
            "{} ({:.1} s)",
            whole(&cu["rows_per_s"]),
            f(&cu["seconds_from_start"])
        ),
    );
    row(
        "  the node running / first rows applied after (s)",
        format!(
            "{:.2} / {:.2}",
            f(&cu["node_running_after_s"]),
            f(&cu["first_rows_applied_after_s"])
        ),
    );
    row(
        "sidecar RSS max, harmonylite alone (MB)",
        format!("{:.1}", f(&r["sidecar_rss_mb_max"])),
    );
    if let Some(phases) = r["rss_mb_by_phase"].as_array() {
        for p in phases {
            row(
                &format!(
                    "  sidecar (node) / nats-server RSS max, {} (MB)",
                    p["phase"].as_str().unwrap_or("")
                ),
                format!(
                    "{:.1} ({}) / {:.1}",
                    f(&p["sidecar"]),
                    p["node"],
                    f(&p["nats_server"])
                ),
            );
        }
    }
    row(
        "nats-server RSS max (MB)",
        format!("{:.1}", f(&r["nats_server_rss_mb_max"])),
    );
    row(
        &format!("{n}-node cold start to ready (s)"),
        format!("{:.2}", f(&r["cold_start_s"])),
    );
    if let Some(starts) = r["cold_starts_s"].as_array() {
        let each: Vec<String> = starts.iter().map(|s| format!("{:.2}", f(s))).collect();
        row(
            &format!("{n}-node cold starts, each (s)"),
            format!(
                "{} (max {:.2})",
                each.join(" / "),
                f(&r["cold_start_max_s"])
            ),
        );
    }
    row(
        "first row after the start, until every peer holds it (ms)",
        format!("{:.1}", f(&r["first_row_after_start_ms"])),
    );
    if let Some(rows) = r["first_rows_after_starts_ms"].as_array() {
        let each: Vec<String> = rows.iter().map(|s| format!("{:.1}", f(s))).collect();
        row(
            "first row after each start (ms)",
            format!(
                "{} (max {:.1})",
                each.join(" / "),
                f(&r["first_row_after_start_max_ms"])
            ),
        );
    }
    let snap = &r["snapshot"];
    row(
        &format!(
            "snapshot save / restore, {:.0} MB database (MB/s)",
            f(&snap["database_mb"])
        ),
        format!(
            "{:.0} / {:.0}",
            f(&snap["save_mb_per_s"]),
            f(&snap["restore_mb_per_s"])
        ),
    );
    row(
        "peak RSS during save / restore (MB)",
        format!(
            "{:.1} / {:.1}",
            f(&snap["save_peak_rss_mb"]),
            f(&snap["restore_peak_rss_mb"])
        ),
    );
    let large = &r["large_rows"];
    for key in ["1kb", "1mb", "64mb"] {
        row(
            &format!("replicated MB/s, {}", large[key]["label"].as_str().unwrap()),
            format!("{:.1}", f(&large[key]["replicated_mb_per_s"])),
        );
    }
    let p = &large["64mb"]["peak_rss_mb"];
    row(
        "peak RSS sidecar / nats-server, 64 MB rows (MB)",
        format!("{:.1} / {:.1}", f(&p["sidecar"]), f(&p["nats_server"])),
    );
    let feed = &r["feed"];
    row(
        "100-row rows/s, feed off / feed on + reader (ratio)",
        format!(
            "{} / {} ({:.2})",
            whole(&feed["without_feed_rows_per_s"]),
            whole(&feed["with_feed_and_reader_rows_per_s"]),
            f(&feed["ratio"])
        ),
    );
    row(
        "the feed's reader had every row, after the writes (s)",
        format!("{:.2}", f(&feed["reader_had_every_row_after_s"])),
    );
}

/// Starts a fresh cluster, waits until every node says "node running", measures the first row written right after,
/// and stops it: (seconds to running on all, first row's ms). A start slower than a second keeps its nodes' logs
/// in `target/bench-slow-starts/` (the cluster's directory is removed with it), and says where.
fn fresh_start(opts: &support::Options) -> (f64, f64) {
    let mut fresh = support::Cluster::new(opts.clone());
    let t = Instant::now();
    fresh.start_all();
    fresh.wait_all_running(Duration::from_secs(120));
    let secs = t.elapsed().as_secs_f64();
    let first = sections::first_row(&fresh);
    fresh.stop_all();
    if secs > 1.0 {
        let keep = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/bench-slow-starts")
            .join(std::process::id().to_string())
            .join(format!(
                "{:.0}ms-{}",
                secs * 1000.0,
                fresh.path().file_name().unwrap().to_string_lossy()
            ));
        std::fs::create_dir_all(&keep).unwrap();
        for entry in std::fs::read_dir(fresh.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                std::fs::copy(entry.path(), keep.join(entry.file_name())).unwrap();
            }
        }
        eprintln!(
            "bench: a cold start took {secs:.2} s; its logs are in {}",
            keep.display()
        );
    }
    (secs, first)
}
