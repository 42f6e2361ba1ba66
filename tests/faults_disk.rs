//! Disk faults of one node, under application write load on every node of a real three-node cluster, judged by
//! the kit's oracle ([`Cluster::verdict`]):
//!
//! - the node's disk fills up (a small tmpfs holding its database, state file and nats-server store) and
//!   frees again: the node says so loudly, corrupts nothing, keeps running and resumes by itself;
//! - the node loses power and with it its publish progress (the state file empty, cut, or garbage): nothing is
//!   lost and nothing is published twice.
//!
//! `cargo test` runs the short form; `scripts/faults.sh` the long form (see [`Plan`]).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::oracle::report;
use support::*;

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(180);
/// The replication stream of the kit's clusters (one shard, compressed).
const STREAM: &str = "harmonylite-changes-c-1";

/// A tmpfs of `mib` MiB mounted on a directory the test made; unmounted when dropped (also on panic).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts it, or says why it cannot (not root, no mount permission).
    fn mount(dir: &Path, mib: u32) -> Result<Tmpfs, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Appends to file `name` in 1 MiB pieces (then smaller ones) until the file system is full; returns the
    /// bytes written.
    fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap();
        let mut written = 0u64;
        for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let chunk = vec![0xa5u8; size];
            loop {
                match f.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {:?}: {e}", self.dir),
                }
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Free bytes left.
    fn free(&self) -> u64 {
        free_bytes(&self.dir)
    }
}

/// Bytes available on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: whatever still has a file open there (a node being killed) cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Node 3's data directory (database, state file, nats-server store) on a small tmpfs; once the cluster runs
/// under load, the tmpfs is filled until ENOSPC, then the filler is removed. The node must say so in an ERROR
/// line, stay up, keep its database intact, and resume publishing and applying by itself.
#[test]
fn disk_full_on_one_node_then_space_returns() {
    let plan = Plan::from_env(1).slower(5);
    // A stream reserves its size cap on every replica's store: 16 MiB leaves node 3's small disk room for it.
    let mut c = Cluster::new(Options {
        schema: LEDGER.to_string(),
        extra_toml: "[replication_log]\nmax_bytes = 16777216".into(),
        ..Default::default()
    });
    let dir = c.fresh_dir("small-disk");
    let disk = match Tmpfs::mount(&dir, 64) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let health_port = free_port();
    {
        let n = c.node_mut(3);
        n.use_data_dir(&dir);
        sqlite3(&n.db, LEDGER);
        n.serve_metrics();
        n.add_toml(&format!(
            "[health_check]\nenable = true\nbind = \"127.0.0.1:{health_port}\"\n"
        ));
    }
    c.start_all();
    c.wait_all_running(START);
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    apps.wait_for_more(100, T);
    // Node 3's nats-server holds a replica of the stream before its disk fills (the stream may have been
    // created before node 3's server was up, with fewer replicas, and raised since).
    if poll(Duration::from_secs(120), || replica_current(&c, 3)).is_none() {
        let lines: Vec<String> = c
            .nodes
            .iter()
            .flat_map(|n| n.log_lines_with(&["replicas"]))
            .collect();
        panic!(
            "node 3's nats-server is not a current replica of the stream: {:?}\n{lines:#?}",
            c.node(1)
                .stream_info(STREAM)
                .map(|i| (i.config.num_replicas, i.cluster)),
        );
    }
    let started = Instant::now();
    let mut stats = FullStats::default();
    let mut k = 0;
    while plan.goes_on(k, started) {
        full_then_free(&c, &disk, &mut apps, k, &mut stats, health_port);
        k += 1;
    }
    apps.wait_for_more(100, T);
    let v = c.verdict(&mut apps, CONVERGE);
    let integrity = c.node(3).sql("PRAGMA integrity_check;");
    assert_eq!(
        integrity.trim(),
        "ok",
        "node 3's database after the full disk"
    );
    report(
        "disk-full",
        &format!(
            "seed={} cycles={k} filler={}MiB error_said_in_max={:.1}s node3_error_lines={} \
             jetstream_disabled_and_restarted={} app_errors_while_full={} resumed_in_max={:.1}s \
             replica_current_in_max={:.1}s {} run={:.0}s",
            plan.seed,
            stats.filler >> 20,
            stats.said_in.as_secs_f64(),
            stats.error_lines,
            stats.js_restarts,
            stats.app_errors,
            stats.resumed_in.as_secs_f64(),
            stats.replica_in.as_secs_f64(),
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
    // The nodes first, then the mount, then the directory it was in.
    for n in &mut c.nodes {
        n.kill9();
    }
    drop(disk);
    drop(c);
}

/// What the disk-full cycles measured (durations: the longest of the cycles).
#[derive(Default)]
struct FullStats {
    filler: u64,
    said_in: Duration,
    error_lines: usize,
    js_restarts: u32,
    app_errors: u64,
    resumed_in: Duration,
    replica_in: Duration,
}

/// One cycle: node 3's disk filled while the applications write, node 3 says so at ERROR, in `/health`
/// (`disk_full`) and in `harmonylite_disk_full`, and stays up; the filler removed, node 3 publishes and applies again, and its nats-server holds a current replica again.
fn full_then_free(
    c: &Cluster,
    disk: &Tmpfs,
    apps: &mut Apps,
    k: u64,
    stats: &mut FullStats,
    health_port: u16,
) {
    let node3 = c.node(3);
    let mark = node3.log_mark();
    let errors_before: u64 = apps.errors().values().sum();
    let filled = Instant::now();
    stats.filler = disk.fill("filler");
    eprintln!(
        "cycle {k}: filled {} MiB, {} bytes free",
        stats.filler >> 20,
        disk.free()
    );
    // Node 3 cannot apply what the other nodes write (nor, mostly, publish): it says so, at ERROR. The disk
    // stays full: a file replaced by a new one (the state file), a page freed by SQLite, a WAL reused from its
    // start let the node write on for a while; whatever space it frees, the filler takes.
    node3.eventually(T, "node 3's ERROR line about its full disk", || {
        stats.filler += disk.fill("filler");
        node3
            .log_since(mark)
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("stopped: the disk is full"))
    });
    stats.said_in = stats.said_in.max(filled.elapsed());
    // /health names the stopped part (and is unhealthy), and the metric says so.
    let disk_full = || -> Option<Vec<serde_json::Value>> {
        let r = http_get(health_port, "/health")?;
        let j: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        j["disk_full"].as_array().cloned()
    };
    node3.eventually(
        T,
        "node 3's /health names its full disk and the metric is 1",
        || {
            stats.filler += disk.fill("filler");
            disk_full().is_some_and(|parts| !parts.is_empty())
                && node3.metric("harmonylite_disk_full") == Some(1.0)
        },
    );
    // The other nodes go on meanwhile: node 3 stays full while they commit a few seconds' worth.
    apps.wait_for_more(500, T);
    c.assert_all_alive();
    stats.app_errors += apps.errors().values().sum::<u64>() - errors_before;
    let full_log = node3.log_since(mark);
    stats.error_lines += full_log.lines().filter(|l| l.contains("ERROR")).count();
    for l in full_log
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains("nats-server:"))
        .take(10)
    {
        eprintln!("  {l}");
    }

    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    let freed = Instant::now();
    // Node 3 resumes by itself: a change made there reaches node 1, and one of node 1 reaches it (in `hot`,
    // beyond the applications' eight rows: `ledger` holds the applications' rows only).
    let base = 1000 + 10 * k as u32;
    for (from, to) in [(3, 1), (1, 3)] {
        let id = base + from as u32;
        c.node(from).sql(&format!(
            "INSERT INTO hot (id, v, by) VALUES ({id}, 0, 'probe');"
        ));
        c.eventually(
            T,
            &format!("probe {id} from node {from} on node {to}"),
            || {
                c.node(to)
                    .try_sql(&format!("SELECT count(*) FROM hot WHERE id = {id};"))
                    .is_ok_and(|o| o.trim() == "1")
            },
        );
    }
    stats.resumed_in = stats.resumed_in.max(freed.elapsed());
    node3.eventually(
        T,
        "node 3's /health and metric say the disk is no longer full",
        || {
            disk_full().is_some_and(|parts| parts.is_empty())
                && node3.metric("harmonylite_disk_full") == Some(0.0)
        },
    );
    // Its nats-server holds a current replica of the stream again: JetStream disables itself on a server whose
    // store cannot be written, and the node restarts that server once there is room.
    if poll(T, || replica_current(c, 3)).is_none() {
        panic!(
            "node 3's nats-server is not a current replica of the stream again within {T:?}: {:?}\n{}",
            c.node(1).stream_info(STREAM).and_then(|i| i.cluster),
            c.logs_tail()
        );
    }
    stats.replica_in = stats.replica_in.max(freed.elapsed());
    let log = node3.log_since(mark);
    if log.contains("nats-server disabled JetStream") {
        assert!(
            log.contains("restarting nats-server so that JetStream runs again"),
            "node 3's nats-server disabled JetStream and was not restarted"
        );
        stats.js_restarts += 1;
    }
    // Every part that stopped said that it resumed.
    for what in ["applying", "publishing"] {
        if log.contains(&format!("{what} stopped: the disk is full")) {
            assert!(
                log.contains(&format!("{what} resumed: disk space is available again")),
                "node 3 did not say that {what} resumed"
            );
        }
    }
}

/// Whether node `i`'s nats-server leads the stream or is a current, online replica of it (as node 1 sees it).
fn replica_current(c: &Cluster, i: usize) -> bool {
    let name = format!("harmonylite-node-{i}");
    let via = if i == 1 { 2 } else { 1 };
    c.node(via)
        .stream_info(STREAM)
        .and_then(|info| info.cluster)
        .is_some_and(|cl| {
            cl.leader.as_deref() == Some(name.as_str())
                || cl
                    .replicas
                    .iter()
                    .any(|r| r.name == name && r.current && !r.offline)
        })
}

/// The ways a power loss can leave the state file.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Empty,
    Half,
    Garbage,
}

/// Under application load, `kill -9` a node, then damage its state file (publish progress) as a power loss
/// could (empty, cut in the middle, garbage: each in turn), and start it again; repeated. Nothing committed is
/// lost, every node converges, and no change is published twice (the stream, read as it grows, carries every
/// `ledger` row once).
#[test]
fn power_loss_of_the_publish_progress_file() {
    let plan = Plan::from_env(3).slower(2);
    let mut rng = Rng::new(plan.seed);
    let mut c = Cluster::start(Options {
        schema: LEDGER.to_string(),
        ..Default::default()
    });
    let watch = StreamWatch::start(&c, STREAM);
    let mut apps = Apps::on_every_node(&c, plan.rate, 5000);
    apps.wait_for_more(50, T);
    let started = Instant::now();
    let mut cuts = [0u32; 3];
    // Restarts whose node found its progress again in the stream, or did not.
    let (mut found_again, mut not_found) = (0u32, 0u32);
    let mut k = 0;
    while plan.goes_on(k, started) {
        let i = 1 + rng.below(3) as usize;
        let cut = [Cut::Empty, Cut::Half, Cut::Garbage][((k + plan.seed) % 3) as usize];
        // Let the node publish and prune a while since its last start, then cut the power.
        apps.wait_for_more(100 + rng.below(300) as usize, T);
        let node = c.node_mut(i);
        node.kill9();
        let state = std::fs::read(&node.seq_map).unwrap_or_default();
        let damaged: Vec<u8> = match cut {
            Cut::Empty => Vec::new(),
            Cut::Half => state[..state.len() / 2].to_vec(),
            Cut::Garbage => (0..1 + rng.below(64))
                .map(|_| rng.below(256) as u8)
                .collect(),
        };
        std::fs::write(&node.seq_map, &damaged).unwrap();
        cuts[cut as usize] += 1;
        // Its application goes on writing while it is down.
        apps.wait_for_more(10 + rng.below(100) as usize, T);
        let mark = c.node(i).log_mark();
        c.node_mut(i).start_and_wait(START);
        let log = c.node(i).log_since(mark);
        if log.contains("publish progress lost with the state file; found again") {
            found_again += 1;
        } else if log.contains("publish progress lost") {
            not_found += 1;
        }
        c.assert_all_alive();
        k += 1;
    }
    apps.wait_for_more(100, T);
    let v = c.verdict(&mut apps, CONVERGE);
    let p = watch.finish(&c, 1, T);
    eprintln!("stream: {p:?}");
    assert_eq!(
        p.published_twice, 0,
        "ledger rows published twice after a lost state file: {p:?}"
    );
    if p.missed == 0 && p.unreadable == 0 {
        assert_eq!(
            p.distinct as u64, v.rows,
            "every ledger row is in the stream once: {p:?}"
        );
    }
    report(
        "progress-loss",
        &format!(
            "seed={} cycles={k} (empty {}, half {}, garbage {}) progress_found_again={found_again} not_found={not_found} stream_messages={} unreadable={} ledger_rows_published={} twice={} \
             {} run={:.0}s",
            plan.seed,
            cuts[0],
            cuts[1],
            cuts[2],
            p.messages,
            p.unreadable,
            p.ledger_rows,
            p.published_twice,
            v.summary(),
            started.elapsed().as_secs_f64()
        ),
    );
}
