//! The fault suite's oracle: application processes writing every node's database while faults strike
//! ([`Apps`]), and the verdict at the end ([`Cluster::verdict`]):
//!
//! 1. every transaction an application saw committed on any node is on every node;
//! 2. every node's user tables are identical (order-independent checksums), and no row exists that no
//!    application ever tried to write;
//! 3. no node died but those a fault killed (and the test restarted), and no node panicked;
//! 4. every application write either committed or failed with an ordinary SQLite error; those errors are
//!    counted, by message, in the verdict.
//!
//! Tables: [`LEDGER`] (one row per application transaction) and `hot` (eight rows every writer overwrites, so
//! last-writer-wins conflicts are part of every run).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::node::Node;
use super::process::{Signal, pid_alive, send_signal};
use super::sql;

/// The oracle's schema: run it on every node before start (after any other schema).
pub const LEDGER: &str = "CREATE TABLE ledger (id TEXT PRIMARY KEY, node INTEGER NOT NULL, n INTEGER NOT NULL, payload TEXT);
CREATE TABLE hot (id INTEGER PRIMARY KEY, v INTEGER, by TEXT);";

/// What the applications saw, shared with the threads reading their output.
#[derive(Default)]
struct Seen {
    tried: BTreeSet<String>,
    committed: BTreeSet<String>,
    /// Error message → count.
    errors: BTreeMap<String, u64>,
}

/// One application process ([`Apps::start`]).
struct App {
    node: u64,
    name: String,
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: PathBuf,
    busy_ms: u32,
    rate: f64,
    db: PathBuf,
}

/// Application processes (`tests/support/app_writer.py`, Python's sqlite3 driver) writing the nodes' databases;
/// killed when dropped.
pub struct Apps {
    apps: Vec<App>,
    seen: Arc<Mutex<Seen>>,
    dir: PathBuf,
    /// Writers killed with -9 by the test.
    pub killed: u64,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/app_writer.py")
}

impl Apps {
    /// No application yet; their stderr files go to `dir`.
    pub fn new(dir: &Path) -> Apps {
        Apps {
            apps: Vec::new(),
            seen: Arc::default(),
            dir: dir.to_path_buf(),
            killed: 0,
        }
    }

    /// Starts an application writing `node`'s database about `rate` transactions per second with a busy
    /// timeout of `busy_ms` (0: none); returns its index.
    pub fn start(&mut self, node: &Node, rate: f64, busy_ms: u32) -> usize {
        let i = self.apps.len();
        let mut app = App {
            node: node.id,
            name: format!("w{i}"),
            child: None,
            reader: None,
            stderr: self.dir.join(format!("app-{i}.err")),
            busy_ms,
            rate,
            db: node.db.clone(),
        };
        self.spawn(&mut app);
        self.apps.push(app);
        i
    }

    /// One application on every node of `c` (see [`Apps::start`]).
    pub fn on_every_node(c: &Cluster, rate: f64, busy_ms: u32) -> Apps {
        let mut apps = Apps::new(c.path());
        for n in &c.nodes {
            apps.start(n, rate, busy_ms);
        }
        apps
    }

    fn spawn(&self, app: &mut App) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&app.stderr)
            .unwrap();
        let mut child = Command::new("python3")
            .arg(script())
            .arg(&app.db)
            .arg(app.node.to_string())
            .arg(&app.name)
            .arg(app.rate.to_string())
            .arg(app.busy_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("python3 must be installed");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Until it says so, SIGTERM would end it without finishing anything: wait (a stop right after a
        // restart must not find it still starting).
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        assert_eq!(
            first.trim(),
            "ready",
            "application {} on node {} did not start: {}",
            app.name,
            app.node,
            super::process::read_lossy(&app.stderr)
        );
        let seen = self.seen.clone();
        app.reader = Some(std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, ' ');
                let (kind, id, rest) = (parts.next(), parts.next(), parts.next());
                let mut s = seen.lock().unwrap();
                match (kind, id) {
                    (Some("try"), Some(id)) => {
                        s.tried.insert(id.to_string());
                    }
                    (Some("ok"), Some(id)) => {
                        s.committed.insert(id.to_string());
                    }
                    (Some("err"), Some(_)) => {
                        *s.errors.entry(rest.unwrap_or("").to_string()).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }));
        app.child = Some(child);
    }

    /// Number of applications started.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Application `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.apps[i].child.as_ref().map(|c| c.id())
    }

    /// `kill -9` application `i` (its transaction in progress, if any, is committed or not: the oracle accepts
    /// both), then start it again as a new process.
    pub fn kill9_and_restart(&mut self, i: usize) {
        let mut app = std::mem::replace(
            &mut self.apps[i],
            App {
                node: 0,
                name: String::new(),
                child: None,
                reader: None,
                stderr: PathBuf::new(),
                busy_ms: 0,
                rate: 0.0,
                db: PathBuf::new(),
            },
        );
        if let Some(mut c) = app.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = app.reader.take() {
            let _ = r.join();
        }
        self.killed += 1;
        self.spawn(&mut app);
        self.apps[i] = app;
    }

    /// Transactions committed so far, all applications.
    pub fn committed(&self) -> usize {
        self.seen.lock().unwrap().committed.len()
    }

    /// Transactions committed so far by the applications of node `node` (1-based).
    pub fn committed_on(&self, node: u64) -> usize {
        let prefix = format!("n{node}-");
        let seen = self.seen.lock().unwrap();
        seen.committed
            .range(prefix.clone()..)
            .take_while(|id| id.starts_with(&prefix))
            .count()
    }

    /// Waits until `more` further transactions have committed on node `node` (1-based); panics after `timeout`.
    pub fn wait_for_more_on(&self, node: u64, more: usize, timeout: Duration) {
        let target = self.committed_on(node) + more;
        super::wait::eventually(
            timeout,
            &format!("node {node}'s applications commit"),
            || self.committed_on(node) >= target,
        );
    }

    /// Waits until `more` further transactions have committed (all applications together); panics after
    /// `timeout`.
    pub fn wait_for_more(&self, more: usize, timeout: Duration) {
        let target = self.committed() + more;
        super::wait::eventually(timeout, "applications commit", || {
            self.committed() >= target
        });
    }

    /// Ends every application with SIGTERM (each finishes its transaction in progress); panics when one had
    /// ended by itself with an error (anything but an SQLite error), with its stderr.
    pub fn stop(&mut self) {
        for app in &mut self.apps {
            let Some(mut c) = app.child.take() else {
                continue;
            };
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "application {} on node {} ended by itself ({st}): {}",
                    app.name,
                    app.node,
                    super::process::read_lossy(&app.stderr)
                );
            }
            send_signal(c.id(), Signal::SIGTERM);
            let st = c.wait().unwrap();
            assert!(
                st.success(),
                "application {} on node {} failed ({st}): {}",
                app.name,
                app.node,
                super::process::read_lossy(&app.stderr)
            );
            if let Some(r) = app.reader.take() {
                let _ = r.join();
            }
        }
    }

    /// The applications' SQLite errors so far, by message.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.seen.lock().unwrap().errors.clone()
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        for app in &mut self.apps {
            if let Some(mut c) = app.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What [`Cluster::verdict`] found (all invariants held, or it panicked).
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Transactions the applications saw committed.
    pub committed: usize,
    /// Rows of `ledger` on every node (committed, plus in-flight ones of killed applications).
    pub rows: u64,
    /// Committed transactions missing on some node (always 0 in a verdict: else it panics).
    pub lost: usize,
    /// The applications' SQLite errors, by message.
    pub app_errors: BTreeMap<String, u64>,
    /// From the call (applications stopped) until every node agreed.
    pub converged_in: Duration,
}

impl Verdict {
    /// Application errors, all messages.
    pub fn app_error_count(&self) -> u64 {
        self.app_errors.values().sum()
    }

    /// One line for a test's output and for `docs/RELIABILITY.md`.
    pub fn summary(&self) -> String {
        format!(
            "committed={} rows={} lost={} app_errors={} {:?} converged_in={:.1}s",
            self.committed,
            self.rows,
            self.lost,
            self.app_error_count(),
            self.app_errors,
            self.converged_in.as_secs_f64()
        )
    }
}

impl Cluster {
    /// Rows of `origin`'s applications with `n` above `after` in node `on`'s `ledger`.
    pub fn ledger_rows_after(&self, on: usize, origin: usize, after: i64) -> i64 {
        let q = format!("SELECT count(*) FROM ledger WHERE node = {origin} AND n > {after};");
        self.node(on).sql(&q).trim().parse().unwrap()
    }

    /// Rows of `origin`'s applications with `n` up to `upto` in node `on`'s `ledger`.
    pub fn ledger_rows_upto(&self, on: usize, origin: usize, upto: i64) -> i64 {
        let q = format!("SELECT count(*) FROM ledger WHERE node = {origin} AND n <= {upto};");
        self.node(on).sql(&q).trim().parse().unwrap()
    }

    /// The highest `n` of node `i`'s own applications in its `ledger`: every row of theirs above it commits
    /// later.
    pub fn own_ledger_mark(&self, i: usize) -> i64 {
        let q = format!("SELECT coalesce(max(n), 0) FROM ledger WHERE node = {i};");
        self.node(i).sql(&q).trim().parse().unwrap()
    }

    /// The oracle: stops the applications, waits (at most `timeout`) until every node's user tables are
    /// identical, then checks that every committed transaction is on every node, that no row was made up, that
    /// every node started by the test is alive and none panicked. Panics with the details when one does not
    /// hold.
    pub fn verdict(&self, apps: &mut Apps, timeout: Duration) -> Verdict {
        apps.stop();
        let start = Instant::now();
        self.converged_all(timeout);
        let converged_in = start.elapsed();
        let seen = apps.seen.lock().unwrap();
        let mut rows = 0;
        let mut lost = BTreeSet::new();
        for n in &self.nodes {
            let ids: BTreeSet<String> = sql::open_read_only(&n.db)
                .prepare("SELECT id FROM ledger")
                .unwrap()
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows = ids.len() as u64;
            let missing: Vec<_> = seen.committed.difference(&ids).cloned().collect();
            if !missing.is_empty() {
                eprintln!(
                    "node {} misses {} committed transactions, e.g. {:?}",
                    n.id,
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            lost.extend(missing);
            let made_up: Vec<_> = ids.difference(&seen.tried).take(5).cloned().collect();
            assert!(
                made_up.is_empty(),
                "node {} has rows no application wrote: {made_up:?}",
                n.id
            );
        }
        assert!(
            lost.is_empty(),
            "{} committed transactions are missing on some node\n{}",
            lost.len(),
            self.logs_tail()
        );
        self.assert_all_alive();
        for n in &self.nodes {
            let panics = n.log_lines_with(&["panicked"]);
            assert!(panics.is_empty(), "node {} panicked: {panics:?}", n.id);
        }
        Verdict {
            committed: seen.committed.len(),
            rows,
            lost: lost.len(),
            app_errors: seen.errors.clone(),
            converged_in,
        }
    }
}

/// What a [`StreamWatch`] read of the replication stream, about [`LEDGER`]'s `ledger` table.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Messages read.
    pub messages: usize,
    /// Messages purged by retention before the watch could read them (0: it saw the whole stream).
    pub missed: u64,
    /// Sequences below the stream's last that could not be read (deleted, or not served) and were skipped.
    pub unreadable: u64,
    /// `ledger` rows carried, all messages read together.
    pub ledger_rows: usize,
    /// Distinct `ledger` rows carried.
    pub distinct: usize,
    /// `ledger` rows (insert-only: each should be published once) carried by more than one message.
    pub published_twice: usize,
}

#[derive(Default)]
struct Read {
    next: u64,
    p: Published,
    counts: BTreeMap<String, u32>,
}

/// Reads a replication stream as it grows (a thread, message by message from the stream's leader, through any
/// node of the cluster, before
/// retention trims it) and counts the `ledger` rows its messages carry: every application transaction inserts
/// one `ledger` row and never changes it, so a row carried by two messages was published twice.
pub struct StreamWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    read: Arc<Mutex<Read>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stream: String,
}

impl StreamWatch {
    /// Starts reading `stream` from its first message, through every node of `c` (whichever answers).
    pub fn start(c: &Cluster, stream: &str) -> StreamWatch {
        let addrs: Vec<String> = c
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = Arc::new(Mutex::new(Read {
            next: 1,
            ..Default::default()
        }));
        let (stop2, read2, name) = (stop.clone(), read.clone(), stream.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(watch(addrs, name, stop2, read2));
        });
        StreamWatch {
            stop,
            read,
            thread: Some(thread),
            stream: stream.to_string(),
        }
    }

    /// Waits (at most `timeout`) until the watch has read up to the stream's last sequence as node `via` sees
    /// it, stops it, and returns what it read.
    pub fn finish(mut self, c: &Cluster, via: usize, timeout: Duration) -> Published {
        let last = c
            .node(via)
            .eventually(timeout, "the stream's state", || {
                c.node(via).stream_info(&self.stream)
            })
            .state
            .last_sequence;
        c.eventually(timeout, "the stream watch reads the whole stream", || {
            self.read.lock().unwrap().next > last
        });
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("stream watch thread");
        }
        let r = self.read.lock().unwrap();
        let mut p = r.p.clone();
        p.distinct = r.counts.len();
        p.published_twice = r.counts.values().filter(|n| **n > 1).count();
        p
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn watch(
    addrs: Vec<String>,
    stream: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    read: Arc<Mutex<Read>>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let stopped = || stop.load(Relaxed);
    let pause = || tokio::time::sleep(Duration::from_millis(50));
    let client = loop {
        match async_nats::ConnectOptions::new()
            .connect(addrs.as_slice())
            .await
        {
            Ok(c) => break c,
            Err(_) if !stopped() => pause().await,
            Err(_) => return,
        }
    };
    let js = async_nats::jetstream::new(client);
    let limit = Duration::from_secs(5);
    while !stopped() {
        let Ok(Ok(mut s)) = tokio::time::timeout(limit, js.get_stream(&stream)).await else {
            pause().await;
            continue;
        };
        let mut tries = 0;
        while !stopped() {
            let next = read.lock().unwrap().next;
            // From the stream's leader: a replica behind would answer "not found" for a message it lacks.
            match tokio::time::timeout(limit, s.get_raw_message(next)).await {
                Ok(Ok(m)) => {
                    let msg = harmonylite::wire::decode(&m.payload).expect("a HarmonyLite message");
                    let mut r = read.lock().unwrap();
                    r.p.messages += 1;
                    for t in msg.tables.iter().filter(|t| t.table == "ledger") {
                        let at = |names: &[String]| {
                            names.iter().position(|c| c == "id").expect("ledger.id")
                        };
                        let (in_row, in_key) = (at(&t.columns), at(&t.key));
                        for row in &t.rows {
                            let key = match row {
                                harmonylite::wire::Row::Upsert(v) => format!("{:?}", v[in_row]),
                                harmonylite::wire::Row::Delete(v) => format!("{:?}", v[in_key]),
                            };
                            r.p.ledger_rows += 1;
                            *r.counts.entry(key).or_default() += 1;
                        }
                    }
                    r.next += 1;
                    tries = 0;
                }
                Ok(Err(e))
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    // Not there: not written yet, or purged (the stream's first sequence is past it).
                    match tokio::time::timeout(limit, s.info()).await {
                        Ok(Ok(info)) if info.state.first_sequence > next => {
                            let first = info.state.first_sequence;
                            let mut r = read.lock().unwrap();
                            r.p.missed += first - next;
                            r.next = first;
                        }
                        Ok(Ok(info)) if info.state.last_sequence > next => {
                            // An interior deleted message, or one a new leader does not serve yet: asked
                            // again for a second before it is skipped (and counted).
                            tries += 1;
                            if tries >= 20 {
                                tries = 0;
                                let mut r = read.lock().unwrap();
                                r.p.unreadable += 1;
                                r.next += 1;
                            } else {
                                pause().await;
                            }
                        }
                        Ok(Ok(_)) => pause().await,
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        pause().await;
    }
}

/// `pid`'s children whose command name starts with `name` (e.g. the node's `nats-server-<hash>`).
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    super::process::child_pids(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|comm| comm.trim().starts_with(name))
                && pid_alive(*c)
        })
        .collect()
}

/// A small seeded generator (xorshift64*) for fault schedules: the same seed replays the same choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi.saturating_sub(lo)).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// The fault suite's knobs, from the environment (`scripts/faults.sh` sets them; unset: the short form run by
/// `cargo test`): `HARMONYLITE_FAULT_SEED` (default: the clock), `HARMONYLITE_FAULT_CYCLES`,
/// `HARMONYLITE_FAULT_DURATION_S` (0: no time limit; the cycles end a run), `HARMONYLITE_FAULT_RATE` (application
/// transactions per second per node).
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub cycles: u64,
    pub duration: Option<Duration>,
    pub rate: f64,
    /// The short form's cycles (what `cargo test` runs).
    pub short_cycles: u64,
}

impl Plan {
    /// The plan, `short_cycles` when the environment does not say.
    pub fn from_env(short_cycles: u64) -> Plan {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let seed = var("HARMONYLITE_FAULT_SEED")
            .map(|v| v.parse().expect("HARMONYLITE_FAULT_SEED: a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    % 1_000_000
            });
        let cycles = var("HARMONYLITE_FAULT_CYCLES")
            .map(|v| v.parse().expect("HARMONYLITE_FAULT_CYCLES: a number"))
            .unwrap_or(short_cycles);
        let duration = var("HARMONYLITE_FAULT_DURATION_S")
            .map(|v| {
                v.parse::<u64>()
                    .expect("HARMONYLITE_FAULT_DURATION_S: seconds")
            })
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let rate = var("HARMONYLITE_FAULT_RATE")
            .map(|v| v.parse().expect("HARMONYLITE_FAULT_RATE: a number"))
            .unwrap_or(50.0);
        let plan = Plan {
            seed,
            cycles,
            duration,
            rate,
            short_cycles,
        };
        eprintln!("fault plan: {plan:?} (replay with HARMONYLITE_FAULT_SEED={seed})");
        plan
    }

    /// For a fault whose cycle lasts several times the kill -9 cycle: one in `divisor` of the long form's
    /// cycles, never fewer than the short form's (the short form is left as it is).
    pub fn slower(mut self, divisor: u64) -> Plan {
        self.cycles = (self.cycles / divisor.max(1)).max(self.short_cycles.min(self.cycles));
        eprintln!("fault plan: this test runs {} cycles", self.cycles);
        self
    }

    /// Whether cycle `k` (0-based) should run, the run having started at `started`.
    pub fn goes_on(&self, k: u64, started: Instant) -> bool {
        k < self.cycles && self.duration.is_none_or(|d| started.elapsed() < d)
    }
}

/// Appends one line to the file named by `HARMONYLITE_FAULT_REPORT` when set (`scripts/faults.sh` collects
/// the figures of a long run there), and prints it.
pub fn report(test: &str, line: &str) {
    eprintln!("FAULT-REPORT {test}: {line}");
    if let Ok(path) = std::env::var("HARMONYLITE_FAULT_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the fault report");
        writeln!(f, "{test}: {line}").unwrap();
    }
}
