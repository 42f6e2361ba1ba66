//! N real nodes in one temporary directory, each on free loopback ports and peered with all the others, and the
//! convergence oracle: every node's tables identical by an order-independent checksum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::node::Node;
use super::ports::{free_port, free_ports};
use super::process::temp_dir;
use super::sql::{self, Checksum};
use super::wait::{self, Ready};

/// How many log lines of each node failure messages about the cluster show.
const LOG_LINES: usize = 30;

/// The original's e2e schema: two tables, seven books.
pub const BOOKS: &str = "CREATE TABLE Books (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author TEXT NOT NULL, publication_year INTEGER);
CREATE TABLE Authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, birth_year INTEGER);
INSERT INTO Books (title, author, publication_year) VALUES
 ('The Hitchhiker''s Guide to the Galaxy', 'Douglas Adams', 1979), ('The Lord of the Rings', 'J.R.R. Tolkien', 1954),
 ('Harry Potter and the Sorcerer''s Stone', 'J.K. Rowling', 1997), ('The Catcher in the Rye', 'J.D. Salinger', 1951),
 ('To Kill a Mockingbird', 'Harper Lee', 1960), ('1984', 'George Orwell', 1949), ('The Great Gatsby', 'F. Scott Fitzgerald', 1925);";

/// What [`Cluster::new`] prepares. Anything finer (one node's database, directory, arguments) is set on the
/// [`Node`]s between [`Cluster::new`] and [`Cluster::start_all`].
#[derive(Clone)]
pub struct Options {
    pub nodes: usize,
    /// Schema SQL run with the sqlite3 CLI on every node's database before start (empty: no database file).
    pub schema: String,
    /// Extra TOML for every node's config (e.g. `publish = false`), merged as [`Node::extra_toml`].
    pub extra_toml: String,
    /// Extra TOML for single nodes (index 0 = node 1), merged after [`Options::extra_toml`].
    pub per_node_toml: Vec<String>,
    /// `[replication_log] shards`.
    pub shards: u32,
    /// `[replication_log] compress`.
    pub compress: bool,
    /// `[logging] verbose` (and debug logs).
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            schema: BOOKS.to_string(),
            extra_toml: String::new(),
            per_node_toml: Vec::new(),
            shards: 1,
            compress: true,
            verbose: true,
        }
    }
}

pub struct Cluster {
    /// The nodes, node 1 first (dropped, so killed, before the directory is removed).
    pub nodes: Vec<Node>,
    /// Holds every node's config, log and (by default) data directory; removed when the cluster is dropped.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Prepares directories, databases (schema) and configs; starts nothing.
    pub fn new(opts: Options) -> Cluster {
        let dir = temp_dir("hl-test-");
        let ports = free_ports(opts.nodes);
        let client_ports = free_ports(opts.nodes);
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let peers = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            let mut node = Node::new(dir.path(), i as u64 + 1, ports[i], client_ports[i], peers);
            node.shards = opts.shards;
            node.compress = opts.compress;
            node.verbose = opts.verbose;
            node.extra_toml = format!(
                "{}\n{}",
                opts.extra_toml,
                opts.per_node_toml.get(i).map(String::as_str).unwrap_or("")
            );
            if !opts.schema.is_empty() {
                sql::sqlite3(&node.db, &opts.schema);
            }
            node.write_config();
            nodes.push(node);
        }
        Cluster { nodes, dir }
    }

    /// One stopped node configured for an external NATS on a loopback port where nothing listens, with short
    /// timeouts: its commands meet an unreachable cluster at once.
    pub fn without_nats() -> Cluster {
        let port = free_port();
        Cluster::new(Options {
            nodes: 1,
            extra_toml: format!(
                "[nats]\nurls = [\"nats://127.0.0.1:{port}\"]\nconnect_retries = 1\n\
                 reconnect_wait_seconds = 0\nready_timeout_seconds = 2"
            ),
            ..Default::default()
        })
    }

    /// Prepares one more node (not started): the next id, fresh loopback ports, peered with every node of the
    /// cluster, the first node's settings (shards, compression, verbosity, extra TOML), its database made
    /// with `schema` (empty: no database file). Returns its number (1-based).
    pub fn add_node(&mut self, schema: &str) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let peers = self.nodes.iter().map(|n| n.cluster_port).collect();
        let first = &self.nodes[0];
        let mut node = Node::new(self.dir.path(), id, free_port(), free_port(), peers);
        node.shards = first.shards;
        node.compress = first.compress;
        node.verbose = first.verbose;
        node.extra_toml = first.extra_toml.clone();
        if !schema.is_empty() {
            sql::sqlite3(&node.db, schema);
        }
        node.write_config();
        self.nodes.push(node);
        id as usize
    }

    /// Prepares and starts every node; waits until all run (90 s at most).
    pub fn start(opts: Options) -> Cluster {
        let mut c = Cluster::new(opts);
        c.start_all();
        c.wait_all_running(Duration::from_secs(90));
        c
    }

    /// Starts every node and returns as soon as each has installed capture (its log says so), long before
    /// it runs: what a deploy script sees right after starting the nodes.
    pub fn start_all_until_captured(&mut self, timeout: Duration) {
        self.start_all();
        for n in &self.nodes {
            n.eventually(timeout, "capture installed", || {
                !n.log_lines_with(&["change capture installed"]).is_empty()
            });
        }
    }

    /// Starts every node that is not running, without waiting.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            if n.pid().is_none() {
                n.start();
            }
        }
    }

    /// Waits until every node runs (see [`Node::wait_running`]).
    pub fn wait_all_running(&self, timeout: Duration) {
        for n in &self.nodes {
            n.wait_running(timeout);
        }
    }

    /// Node `i`, 1-based.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// Node `i`, 1-based.
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// The cluster's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new empty directory `name` in the cluster's directory (e.g. for [`Node::use_data_dir`]).
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let d = self.path().join(name);
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("create {d:?}: {e}"));
        d
    }

    /// `table`'s checksum on every node, in node order (an error as text, e.g. a missing table).
    pub fn checksums(&self, table: &str) -> Vec<Result<Checksum, String>> {
        self.nodes
            .iter()
            .map(|n| sql::try_checksum(&n.db, table).map_err(|e| e.to_string()))
            .collect()
    }

    /// Waits until `table` is identical on every node; returns its (checksum, rows). Panics after `timeout` with
    /// every node's checksum and last log lines.
    pub fn converged(&self, table: &str, timeout: Duration) -> Checksum {
        let mut last = Vec::new();
        let result = wait::poll(timeout, || {
            last = self.checksums(table);
            agreed(&last)
        });
        result.unwrap_or_else(|| {
            panic!(
                "table {table} did not converge within {timeout:?}: {last:?}\n{}",
                self.logs_tail()
            )
        })
    }

    /// Runs `-verify` (30 s timeout) from node `node`'s config and asserts it exits 0: every node identical at a
    /// common point of the streams. Returns its standard output (the summary line).
    pub fn assert_verified(&self, node: usize) -> String {
        let o = super::process::output_retrying(
            self.node(node)
                .command()
                .args(["-verify", "-timeout", "30"]),
        );
        assert_eq!(
            o.status.code(),
            Some(0),
            "-verify:\n{}\n{}",
            super::process::output_text(&o),
            self.logs_tail()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Waits until every node has the same user tables (all of them, found in `sqlite_master`, but HarmonyLite's
    /// `__harmonylite%`, SQLite's `sqlite_%`, and the tables a node's config keeps node-local, e.g.
    /// `django_migrations` with `[ddl] enabled` off, whose `applied` times differ from node to node: see
    /// [`Node::replicates`]) with identical contents; returns each table's (checksum, rows). Panics after
    /// `timeout` with what differs and every node's last log lines.
    pub fn converged_all(&self, timeout: Duration) -> BTreeMap<String, Checksum> {
        let mut last = Vec::new();
        let result = wait::poll(timeout, || {
            last = self
                .nodes
                .iter()
                .map(|n| {
                    sql::try_checksums(&n.db)
                        .map(|m| {
                            m.into_iter()
                                .filter(|(t, _)| self.nodes.iter().all(|n| n.replicates(t)))
                                .collect()
                        })
                        .map_err(|e| e.to_string())
                })
                .collect::<Vec<_>>();
            agreed(&last)
        });
        result.unwrap_or_else(|| {
            panic!(
                "the nodes' tables did not converge within {timeout:?}:\n{}{}{}",
                describe_differences(&last),
                self.differing_rows(&last),
                self.logs_tail()
            )
        })
    }

    /// Waits until every node's shared schema ([`Node::schema`]) is node 1's; returns it. `what` names the
    /// change awaited in the failure message.
    pub fn same_schema(&self, timeout: Duration, what: &str) -> String {
        self.eventually(timeout, what, || {
            let one = self.node(1).schema();
            self.nodes[1..]
                .iter()
                .all(|n| n.schema() == one)
                .then_some(one)
        })
    }

    /// Inserts a book titled `title` with the `sqlite3` CLI on node `from` (1-based) and waits until every
    /// other node has it (30 s at most).
    pub fn book_reaches_the_others(&self, from: usize, title: &str) {
        self.node(from).sql(&format!(
            "INSERT INTO Books (title, author, publication_year) VALUES ('{title}', 'Replication Test', 2026);"
        ));
        let query = format!("SELECT count(*) FROM Books WHERE title = '{title}';");
        for node in self.nodes.iter().filter(|n| n.id != from as u64) {
            self.eventually(
                Duration::from_secs(30),
                &format!("{title} on node {}", node.id),
                || node.sql(&query).trim() == "1",
            );
        }
    }

    /// Like [`wait::eventually`], with every node's last log lines in the failure message.
    pub fn eventually<R: Ready>(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl FnMut() -> R,
    ) -> R::Value {
        wait::eventually_or(timeout, what, || self.logs_tail(), condition)
    }

    /// The last lines of every node's log (for failure messages).
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "--- node {} log (last {LOG_LINES} lines) ---\n",
                n.id
            ));
            let tail = n.log_tail(LOG_LINES);
            if !tail.is_empty() {
                out.push_str(&tail);
                out.push('\n');
            }
        }
        out
    }

    /// Panics, with every node's last log lines, when a started node's process has died.
    pub fn assert_all_alive(&self) {
        let dead: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some() && !n.is_alive())
            .map(|n| n.id)
            .collect();
        assert!(dead.is_empty(), "nodes {dead:?} died\n{}", self.logs_tail());
    }

    /// Stops every running node with SIGTERM; returns their exit codes in node order.
    pub fn stop_all(&mut self) -> Vec<Option<i32>> {
        self.nodes.iter_mut().map(Node::stop).collect()
    }
}

/// The value every node reported, if they all reported the same one without an error.
pub(super) fn agreed<T: Clone + PartialEq>(values: &[Result<T, String>]) -> Option<T> {
    let first = values.first()?.as_ref().ok()?;
    values
        .iter()
        .all(|v| v.as_ref().is_ok_and(|v| v == first))
        .then(|| first.clone())
}

/// For a failure message: per node, its error or the tables whose checksum is not the same on every node.
impl Cluster {
    /// For each table whose checksums differ, the rows some nodes hold and others do not (at most 10 a node).
    fn differing_rows(&self, per_node: &[Result<BTreeMap<String, Checksum>, String>]) -> String {
        let maps: Vec<_> = per_node.iter().filter_map(|r| r.as_ref().ok()).collect();
        let tables: std::collections::BTreeSet<&String> = maps
            .iter()
            .flat_map(|m| m.iter())
            .filter(|(t, c)| !maps.iter().all(|o| o.get(*t) == Some(*c)))
            .map(|(t, _)| t)
            .collect();
        let mut out = String::new();
        for t in tables {
            let rows: Vec<_> = self
                .nodes
                .iter()
                .map(|n| sql::try_row_texts(&n.db, t).unwrap_or_default())
                .collect();
            for (i, mine) in rows.iter().enumerate() {
                let only: Vec<_> = mine
                    .iter()
                    .filter(|r| !rows.iter().all(|o| o.contains(*r)))
                    .take(10)
                    .collect();
                if !only.is_empty() {
                    out.push_str(&format!(
                        "{t}: rows node {} holds that not every node does: {only:?}\n",
                        i + 1
                    ));
                }
            }
        }
        out
    }
}

fn describe_differences(per_node: &[Result<BTreeMap<String, Checksum>, String>]) -> String {
    let maps: Vec<_> = per_node.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut out = String::new();
    for (i, r) in per_node.iter().enumerate() {
        out.push_str(&format!("node {}: ", i + 1));
        match r {
            Err(e) => out.push_str(&format!("error {e}\n")),
            Ok(m) => {
                let differing: BTreeMap<_, _> = m
                    .iter()
                    .filter(|(t, c)| !maps.iter().all(|o| o.get(*t) == Some(*c)))
                    .collect();
                let missing: Vec<_> = maps
                    .iter()
                    .flat_map(|o| o.keys())
                    .filter(|t| !m.contains_key(*t))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out.push_str(&format!("differing {differing:?}, missing {missing:?}\n"));
            }
        }
    }
    out
}

impl Drop for Cluster {
    /// With `HARMONYLITE_TEST_KEEP` set, a failing test leaves its directory (logs, databases) in place and
    /// says where.
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("HARMONYLITE_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept the cluster's directory: {}",
                self.dir.path().display()
            );
        }
    }
}
