//! Test harness: real `harmonylite` processes (each with its bundled nats-server) on free loopback ports in a
//! temporary directory, SQL through the real `sqlite3` CLI and through rusqlite from the test process,
//! `eventually` polling with a deadline, and a convergence oracle (order-independent table checksums).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
mod ports;
pub use ports::free_port;

/// Poll `cond` until it returns true or `timeout` passes; panics with `what` on timeout.
pub fn eventually(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !poll(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// Poll `cond` until it returns true (true) or `timeout` passes (false).
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Run SQL through the real `sqlite3` CLI (no busy timeout, as an application would); returns stdout.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI must be installed");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A rusqlite connection from the test process (a second writer besides the CLI).
pub fn open(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Order-independent checksum of a table's rows (every value by storage class, exact), and its row count.
pub fn checksum(db: &Path, table: &str) -> (u64, u64) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
    let n = stmt.column_count();
    let mut rows = stmt.query([]).unwrap();
    let (mut sum, mut count) = (0u64, 0u64);
    while let Some(r) = rows.next().unwrap() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in 0..n {
            use rusqlite::types::ValueRef::*;
            use std::hash::Hash;
            match r.get_ref(i).unwrap() {
                Null => 0u8.hash(&mut h),
                Integer(v) => (1u8, v).hash(&mut h),
                Real(v) => (2u8, v.to_bits()).hash(&mut h),
                Text(v) => (3u8, v).hash(&mut h),
                Blob(v) => (4u8, v).hash(&mut h),
            }
        }
        use std::hash::Hasher;
        sum = sum.wrapping_add(h.finish());
        count += 1;
    }
    (sum, count)
}

/// The `harmonylite` binary: `HARMONYLITE_BIN` if set, else the one cargo built for these tests, else the one
/// next to the running executable (the bench).
pub fn harmonylite_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HARMONYLITE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_harmonylite") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    exe.with_file_name("harmonylite")
}

pub struct Node {
    pub id: u64,
    pub db: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub cluster_port: u16,
    /// Client port of the node's embedded nats-server.
    pub client_port: u16,
    pub peers: Vec<u16>,
    child: Option<Child>,
    starts: u32,
    log_filter: String,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}/"))
            .collect();
        let mut cmd = Command::new(harmonylite_bin());
        cmd.arg("-config").arg(&self.config);
        if !peers.is_empty() {
            cmd.arg("-cluster-addr")
                .arg(format!("127.0.0.1:{}", self.cluster_port));
            cmd.arg("-cluster-peers").arg(peers.join(","));
        }
        let child = cmd
            .env("HARMONYLITE_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn harmonylite");
        self.child = Some(child);
    }

    /// Number of times the log says the node is running (one per successful start).
    pub fn running_count(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("node running")
            .count()
    }

    pub fn wait_running(&self, timeout: Duration) {
        let want = self.starts as usize;
        if !poll(timeout, || self.running_count() >= want) {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            panic!(
                "node {} not running after {timeout:?}; last log lines:\n{}",
                self.id,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the node to exit by itself; returns its exit status code (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take().expect("node not running");
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {} did not exit within {timeout:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {} did not stop within 30 s", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SQL through the `sqlite3` CLI with a 5 s busy timeout, as most drivers have by default.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 5000")
            .arg(&self.db)
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sqlite3 {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Options {
    pub nodes: usize,
    /// Schema SQL run with the sqlite3 CLI on every node's database before start.
    pub schema: String,
    /// Extra top-level TOML lines for every node's config (e.g. `publish = false`).
    pub extra_top: String,
    pub shards: u32,
    pub compress: bool,
    /// Extra top-level TOML lines for single nodes (index 0 = node 1).
    pub per_node_top: Vec<String>,
    /// `[logging] verbose`.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            schema: BOOKS.to_string(),
            extra_top: String::new(),
            shards: 1,
            compress: true,
            per_node_top: Vec::new(),
            verbose: true,
        }
    }
}

pub const BOOKS: &str = "CREATE TABLE Books (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author TEXT NOT NULL, publication_year INTEGER);
CREATE TABLE Authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, birth_year INTEGER);
INSERT INTO Books (title, author, publication_year) VALUES
 ('The Hitchhiker''s Guide to the Galaxy', 'Douglas Adams', 1979), ('The Lord of the Rings', 'J.R.R. Tolkien', 1954),
 ('Harry Potter and the Sorcerer''s Stone', 'J.K. Rowling', 1997), ('The Catcher in the Rye', 'J.D. Salinger', 1951),
 ('To Kill a Mockingbird', 'Harper Lee', 1960), ('1984', 'George Orwell', 1949), ('The Great Gatsby', 'F. Scott Fitzgerald', 1925);";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Prepare databases and configs (nothing started).
    pub fn new(opts: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("hl-test-")
            .tempdir()
            .unwrap();
        let ports: Vec<u16> = (0..opts.nodes).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..opts.nodes).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let id = i as u64 + 1;
            let db = dir.path().join(format!("node-{id}.db"));
            sqlite3(&db, &opts.schema);
            let config = dir.path().join(format!("node-{id}.toml"));
            let top = format!(
                "{}\n{}",
                opts.extra_top,
                opts.per_node_top.get(i).cloned().unwrap_or_default()
            );
            std::fs::write(
                &config,
                format!(
                    "node_id = {id}\ndb_path = {db:?}\nseq_map_path = {state:?}\ncleanup_interval = 1000\n{top}\n\
                     [replication_log]\nshards = {shards}\nmax_entries = 1000000\ncompress = {compress}\n\n\
                     [nats]\nbind_address = \"127.0.0.1:{client_port}\"\nready_timeout_seconds = 60\n\n\
                     [logging]\nverbose = {verbose}\n",
                    compress = opts.compress,
                    client_port = client_ports[i],
                    verbose = opts.verbose,
                    state = dir.path().join(format!("node-{id}.state")),
                    shards = opts.shards,
                ),
            )
            .unwrap();
            let peers = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            nodes.push(Node {
                id,
                db,
                config,
                log: dir.path().join(format!("node-{id}.log")),
                cluster_port: ports[i],
                client_port: client_ports[i],
                peers,
                child: None,
                starts: 0,
                log_filter: if opts.verbose {
                    "info,harmonylite=debug".into()
                } else {
                    "info".into()
                },
            });
        }
        Cluster { dir, nodes }
    }

    /// Prepare and start every node; wait until all run.
    pub fn start(opts: Options) -> Cluster {
        let mut c = Cluster::new(opts);
        for n in &mut c.nodes {
            n.start();
        }
        for n in &c.nodes {
            n.wait_running(Duration::from_secs(90));
        }
        c
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// Wait until `table` is identical on every node; returns its (checksum, rows).
    pub fn converged(&self, table: &str, timeout: Duration) -> (u64, u64) {
        let start = Instant::now();
        loop {
            let last = self
                .nodes
                .iter()
                .map(|n| checksum(&n.db, table))
                .collect::<Vec<_>>();
            if last.windows(2).all(|w| w[0] == w[1]) {
                return last[0];
            }
            if start.elapsed() > timeout {
                panic!(
                    "table {table} did not converge within {timeout:?}: {last:?}\n{}",
                    self.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`eventually`], with every node's last log lines in the failure message.
    pub fn eventually(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        if !poll(timeout, cond) {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                self.logs_tail()
            );
        }
    }

    /// The last lines of every node's log (for failure messages).
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = n.log_text();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {} log (last 30 lines) ---\n", n.id));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Read a whole file to a string (empty when missing).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
