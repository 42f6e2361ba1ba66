//! One real `harmonylite` process (with its bundled nats-server): its paths, the config the kit writes for it,
//! and its life cycle (start, `kill -9`, SIGTERM stop, restart, waiting for it to run or exit).
//!
//! Layout under the cluster's directory `ROOT`: the config `ROOT/node-N.toml` and the log `ROOT/node-N.log` stay
//! put; the data lives in the node's data directory, by default `ROOT/node-N/` (database `node-N.db`, sequence
//! map `node-N.state`, and the nats-server's store `nats/`, which HarmonyLite keeps beside the database). Point
//! a node elsewhere with [`Node::use_db`] or [`Node::use_data_dir`] while it is stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{Signal, last_lines, pid_alive, read_lossy, send_signal};
use super::sql::{self, Checksum};
use super::wait::{self, Ready};

/// How many log lines failure messages about a single node show.
const LOG_LINES: usize = 60;

/// The `harmonylite` binary: `HARMONYLITE_BIN` if set, else the one cargo built for these tests or this bench
/// (`CARGO_BIN_EXE_harmonylite`), else one next to the running executable or in its parent directory.
pub fn harmonylite_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HARMONYLITE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_harmonylite") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let beside = exe.with_file_name("harmonylite");
    match exe.parent().and_then(Path::parent) {
        Some(up) if !beside.exists() && up.join("harmonylite").exists() => up.join("harmonylite"),
        _ => beside,
    }
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Merges `extra` into `base`: tables key by key, any other value replaces.
fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge_toml(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub struct Node {
    /// `node_id`, 1-based.
    pub id: u64,
    /// The database (`db_path`). Its directory is the node's data directory.
    pub db: PathBuf,
    /// The sequence map (`seq_map_path`).
    pub seq_map: PathBuf,
    /// The config file the kit writes (again before every start).
    pub config: PathBuf,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
    /// Cluster port of the embedded nats-server (`-cluster-addr`).
    pub cluster_port: u16,
    /// Client port of the node's embedded nats-server (`bind_address = "127.0.0.1:<port>"`); 0 leaves
    /// `bind_address` out of the config (the default: loopback, a random port).
    pub client_port: u16,
    /// Cluster ports of the peers (`-cluster-peers`); empty: no cluster flags.
    pub peers: Vec<u16>,
    /// Host of `-cluster-addr` (default `127.0.0.1`), e.g. the node's address in its network namespace.
    pub cluster_host: String,
    /// Host of each peer's route URL, in the order of [`Node::peers`]; empty (the default): every peer on
    /// `127.0.0.1`.
    pub peer_hosts: Vec<String>,
    /// The network namespace the node runs in (`ip netns exec NS harmonylite ...`, which execs: the pid stays
    /// the node's); `None` (the default): the test's own. Its client port is then loopback inside that
    /// namespace, which the test process cannot reach (call [`Node::stream_info`] through
    /// `netns::Network::run_in`); its files are shared as usual. See `netns::Network`.
    pub netns: Option<String>,
    /// `[replication_log] shards`.
    pub shards: u32,
    /// `[replication_log] compress`.
    pub compress: bool,
    /// `[logging] verbose`, and `HARMONYLITE_LOG=info,harmonylite=debug,nats-server=debug` rather than `info`.
    pub verbose: bool,
    /// Extra TOML merged into the generated config (tables key by key, other values replace), e.g.
    /// `"publish = false"` or `"[snapshot]\nenabled = true"`.
    pub extra_toml: String,
    /// Extra command-line arguments for every start.
    pub args: Vec<String>,
    /// Extra environment variables for every start.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Length of the log when the last start began: that run's lines come after it.
    started_at_log: u64,
}

impl Node {
    /// A stopped node with the kit's defaults: data directory `root/node-<id>/` (created), config and log in
    /// `root`; nothing written yet but the directory.
    pub fn new(root: &Path, id: u64, cluster_port: u16, client_port: u16, peers: Vec<u16>) -> Node {
        let data = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&data).unwrap();
        Node {
            id,
            db: data.join(format!("node-{id}.db")),
            seq_map: data.join(format!("node-{id}.state")),
            config: root.join(format!("node-{id}.toml")),
            log: root.join(format!("node-{id}.log")),
            cluster_port,
            client_port,
            peers,
            cluster_host: "127.0.0.1".to_string(),
            peer_hosts: Vec::new(),
            netns: None,
            shards: 1,
            compress: true,
            verbose: true,
            extra_toml: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            child: None,
            started_at_log: 0,
        }
    }

    /// Where a joining node keeps its database as it was before its first capture (`<db>.pre-join`).
    pub fn pre_join_copy(&self) -> PathBuf {
        let mut p = self.db.as_os_str().to_owned();
        p.push(".pre-join");
        PathBuf::from(p)
    }

    /// The data directory: the database's directory (where HarmonyLite also keeps the nats-server's store).
    pub fn data_dir(&self) -> &Path {
        self.db.parent().expect("db path has a directory")
    }

    /// Use the database at `db` (existing, empty or missing), with the sequence map beside it. Stopped nodes only.
    pub fn use_db(&mut self, db: impl Into<PathBuf>) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.db = db.into();
        self.seq_map = self.data_dir().join(format!("node-{}.state", self.id));
        self.write_config();
    }

    /// Use the data directory `dir` (created if missing): database and sequence map there, under their usual
    /// names. A fresh directory means an empty database and no nats-server state. Stopped nodes only.
    pub fn use_data_dir(&mut self, dir: impl Into<PathBuf>) {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).unwrap();
        self.use_db(dir.join(format!("node-{}.db", self.id)));
    }

    /// The config file's text: the kit's settings with [`Node::extra_toml`] merged in.
    pub fn config_text(&self) -> String {
        let path = |p: &Path| toml_str(&p.display().to_string());
        let bind = match self.client_port {
            0 => String::new(),
            port => format!("bind_address = \"127.0.0.1:{port}\"\n"),
        };
        let base = format!(
            "node_id = {id}\ndb_path = {db}\nseq_map_path = {state}\ncleanup_interval = 1000\n\n\
             [replication_log]\nshards = {shards}\ncompress = {compress}\n\n\
             [nats]\n{bind}ready_timeout_seconds = 60\n\n\
             [logging]\nverbose = {verbose}\n",
            id = self.id,
            db = path(&self.db),
            state = path(&self.seq_map),
            shards = self.shards,
            compress = self.compress,
            verbose = self.verbose,
        );
        let mut table: toml::Table = base.parse().expect("the kit's config is TOML");
        let extra: toml::Table = self
            .extra_toml
            .parse()
            .unwrap_or_else(|e| panic!("node {}: extra TOML {:?}: {e}", self.id, self.extra_toml));
        merge_toml(&mut table, extra);
        toml::to_string(&table).unwrap()
    }

    /// Merges `toml` into [`Node::extra_toml`] (tables key by key, other values replace, as the config itself is
    /// merged), e.g. to change a setting between two runs, and writes the config.
    pub fn add_toml(&mut self, toml: &str) {
        let parse = |text: &str| -> toml::Table {
            text.parse()
                .unwrap_or_else(|e| panic!("node {}: TOML {text:?}: {e}", self.id))
        };
        let mut table = parse(&self.extra_toml);
        merge_toml(&mut table, parse(toml));
        self.extra_toml = toml::to_string(&table).unwrap();
        self.write_config();
    }

    /// Serves the node's Prometheus metrics on a free loopback port from its next start (`[prometheus]`); read
    /// them with [`Node::metric`].
    pub fn serve_metrics(&mut self) {
        let port = super::ports::free_port();
        self.add_toml(&format!(
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:{port}\"\n"
        ));
    }

    /// The value of the node's metric `name` (its series labelled with this `node_id`), scraped now from the
    /// port [`Node::serve_metrics`] chose; `None` when nothing answers or the series is absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let cfg: toml::Table = self.config_text().parse().ok()?;
        let bind = cfg.get("prometheus")?.get("bind")?.as_str()?.to_string();
        let port: u16 = bind.rsplit_once(':')?.1.parse().ok()?;
        let body = super::http::http_get(port, "/metrics")?.body;
        super::http::metric(&body, name, &[("node_id", &self.id.to_string())])
    }

    /// Writes [`Node::config_text`] to [`Node::config`].
    pub fn write_config(&self) {
        std::fs::write(&self.config, self.config_text()).unwrap();
    }

    /// `HARMONYLITE_LOG` for this node.
    fn log_filter(&self) -> &'static str {
        if self.verbose {
            "info,harmonylite=debug,nats-server=debug"
        } else {
            "info"
        }
    }

    /// A command running the binary on this node's config (written now), e.g. for `-cleanup` while it is stopped;
    /// in the node's network namespace when it has one.
    pub fn command(&self) -> Command {
        self.write_config();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(harmonylite_bin());
                cmd
            }
            None => Command::new(harmonylite_bin()),
        };
        cmd.arg("-config").arg(&self.config);
        cmd.env("HARMONYLITE_LOG", self.log_filter());
        cmd
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the node's process exists (started, not stopped or killed, not exited).
    pub fn is_alive(&self) -> bool {
        self.pid().is_some_and(pid_alive)
    }

    /// Spawns the node (config written first), output appended to its log. Does not wait: see
    /// [`Node::wait_running`].
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        self.started_at_log = super::process::file_len(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.command();
        if !self.peers.is_empty() {
            let peers: Vec<String> = self
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let host = self.peer_hosts.get(i).map_or("127.0.0.1", String::as_str);
                    format!("nats://{host}:{p}/")
                })
                .collect();
            cmd.arg("-cluster-addr")
                .arg(format!("{}:{}", self.cluster_host, self.cluster_port));
            cmd.arg("-cluster-peers").arg(peers.join(","));
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn harmonylite");
        self.child = Some(child);
    }

    /// [`Node::start`] and [`Node::wait_running`].
    pub fn start_and_wait(&mut self, timeout: Duration) {
        self.start();
        self.wait_running(timeout);
    }

    /// SIGTERM stop (must exit 0), then start again and wait until it runs.
    pub fn restart(&mut self, timeout: Duration) {
        let status = self.stop();
        assert_eq!(status, Some(0), "node {} stopped with {status:?}", self.id);
        self.start_and_wait(timeout);
    }

    /// Number of times the log says the node is running (one per successful start).
    pub fn running_count(&self) -> usize {
        self.log_text().matches("node running").count()
    }

    /// Waits until the log says that the node's last start reached running; panics with its last log lines.
    pub fn wait_running(&self, timeout: Duration) {
        let since = self.started_at_log;
        if wait::poll(timeout, || self.log_since(since).contains("node running")).is_none() {
            panic!(
                "node {} not running after {timeout:?}; last log lines:\n{}",
                self.id,
                self.log_tail(LOG_LINES)
            );
        }
    }

    /// Everything the node printed so far (all runs).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log_text(), n)
    }

    /// [`wait::eventually`] with this node's last log lines in the failure message.
    pub fn eventually<R: Ready>(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl FnMut() -> R,
    ) -> R::Value {
        wait::eventually_or(
            timeout,
            what,
            || format!("node {} log:\n{}", self.id, self.log_tail(LOG_LINES)),
            condition,
        )
    }

    /// Runs `f` with a JetStream context on this node's nats-server (a runtime of its own, 5 s for `f`); `None`
    /// when the server cannot be reached in time or `f` gives nothing.
    pub fn with_jetstream<T>(
        &self,
        f: impl AsyncFnOnce(async_nats::jetstream::Context) -> Option<T>,
    ) -> Option<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = async_nats::connect(format!("127.0.0.1:{}", self.client_port))
                .await
                .ok()?;
            let js = async_nats::jetstream::new(client);
            tokio::time::timeout(Duration::from_secs(5), f(js))
                .await
                .ok()?
        })
    }

    /// Stream `stream` as this node's nats-server sees it (`None` when it cannot be read).
    pub fn stream_info(&self, stream: &str) -> Option<async_nats::jetstream::stream::Info> {
        self.with_jetstream(async |js| {
            let mut s = js.get_stream(stream).await.ok()?;
            s.info().await.ok().cloned()
        })
    }

    /// The pid of the node's nats-server child, when it has one.
    pub fn nats_server_pid(&self) -> Option<u32> {
        super::oracle::children_named(self.pid()?, "nats-server")
            .into_iter()
            .next()
    }

    /// `kill -9` and reap (no-op when not running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to the running node without waiting.
    pub fn signal(&self, signal: Signal) {
        send_signal(self.pid().expect("node not running"), signal);
    }

    /// Waits for the node to exit by itself; returns its exit status code (kills it and panics after `timeout`).
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
                panic!(
                    "node {} did not exit within {timeout:?}; last log lines:\n{}",
                    self.id,
                    self.log_tail(LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (30 s at most); returns the exit status code (`None` when not running).
    pub fn stop(&mut self) -> Option<i32> {
        let pid = self.pid()?;
        send_signal(pid, Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// SQL through the `sqlite3` CLI with a 5 s busy timeout, as most drivers have by default; returns stdout.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("sqlite3 {sql:?} failed: {e}"))
    }

    /// [`Node::sql`] returning the CLI's error instead of panicking.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        sql::try_sqlite3(&self.db, sql, Some(5000))
    }

    /// A rusqlite connection to the node's database (10 s busy timeout).
    pub fn open(&self) -> rusqlite::Connection {
        sql::open(&self.db)
    }

    /// True once the node has installed capture in its database: its triggers are in the schema (what `.schema`
    /// shows), which happens before it connects to NATS.
    pub fn has_triggers(&self) -> bool {
        sql::try_sqlite3(
            &self.db,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 15) = '__harmonylite__';",
            Some(5000),
        )
        .is_ok_and(|out| out.trim().parse::<u32>().unwrap_or(0) > 0)
    }

    /// Log lines containing every one of `parts`.
    pub fn log_lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    /// Whether the node's config replicates `table` (`include_tables`, `exclude_tables`, the built-in node-local
    /// tables, and the records of applied migrations unless `[ddl] enabled`), read from its config file.
    pub fn replicates(&self, table: &str) -> bool {
        let cfg = harmonylite::config::load(Some(&self.config), &Default::default())
            .unwrap_or_else(|e| panic!("node {}: its config: {e}", self.id))
            .0;
        harmonylite::capture::schema::selected(table, &cfg.include_tables, &cfg.exclude_tables)
    }

    /// The node's shared schema as text: every object but SQLite's and HarmonyLite's, one per line (`type name:
    /// sql`), then `PRAGMA user_version`.
    pub fn schema(&self) -> String {
        self.sql(
            "SELECT type || ' ' || name || ': ' || sql FROM sqlite_master
               WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'
                 AND name NOT LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'
               ORDER BY type, name;
             PRAGMA user_version;",
        )
    }

    /// The node's user tables (see [`sql::user_tables`]).
    pub fn tables(&self) -> Vec<String> {
        sql::user_tables(&self.db)
    }

    /// Checksum of one table on this node (see [`sql::checksum`]).
    pub fn checksum(&self, table: &str) -> Checksum {
        sql::checksum(&self.db, table)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}
