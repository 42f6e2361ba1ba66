//! Large values: rows of many megabytes written the way an application would, compared row by row across nodes
//! by a digest of their exact bytes, readers that watch a peer while such rows arrive, the stream seen growing
//! while a node publishes, and what a node keeps about large values: the pieces it has staged
//! (`__harmonylite__pieces`) and the changes it had to set aside (`__harmonylite__unpublished`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::cluster::{Cluster, agreed};
use super::node::Node;
use super::{sql, wait};

/// One mebibyte.
pub const MB: usize = 1 << 20;

/// SQL for the `sqlite3` CLI: per `(id, bytes)` of `rows`, one `INSERT` into `table`'s columns `id` and `column`
/// of `randomblob(bytes)` (each its own transaction unless the caller wraps them in `BEGIN` ... `COMMIT`).
pub fn random_blob_inserts(table: &str, column: &str, rows: &[(i64, usize)]) -> String {
    rows.iter()
        .map(|(id, bytes)| {
            format!("INSERT INTO {table} (id, {column}) VALUES ({id}, randomblob({bytes}));\n")
        })
        .collect()
}

/// One value as stored: its storage class (`typeof`), its length in bytes, and the SHA-256 of its bytes (hex;
/// empty while only its shape was read, see [`row_shapes`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} B", self.kind, self.bytes)?;
        match self.sha256.get(..12) {
            Some(sha) => write!(f, " sha256 {sha}"),
            None => Ok(()),
        }
    }
}

/// `SELECT label, value FROM table`, where `label` is the SQL expression `key` as text (keep it short: it names
/// the row in failure messages) and `value` the SQL expression `column`.
fn select(table: &str, key: &str, column: &str) -> String {
    format!("SELECT CAST(({key}) AS TEXT), {column} FROM \"{table}\"")
}

/// Per row of `table` (labelled by the SQL expression `key`), the storage class and byte length of `column`,
/// read without hashing (cheap to poll while rows arrive).
pub fn row_shapes(
    db: &Path,
    table: &str,
    key: &str,
    column: &str,
) -> rusqlite::Result<BTreeMap<String, Digest>> {
    let c = sql::open_read_only(db);
    let mut stmt = c.prepare(&format!(
        "SELECT CAST(({key}) AS TEXT), typeof({column}), octet_length({column}) FROM \"{table}\""
    ))?;
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            Digest {
                kind: r.get(1)?,
                bytes: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                sha256: String::new(),
            },
        ))
    })?
    .collect()
}

/// Per row of `table` (labelled by the SQL expression `key`), the [`Digest`] of `column`'s exact bytes (text
/// as stored, without any conversion), computed here from the bytes SQLite returns.
pub fn row_digests(
    db: &Path,
    table: &str,
    key: &str,
    column: &str,
) -> rusqlite::Result<BTreeMap<String, Digest>> {
    let c = sql::open_read_only(db);
    let mut stmt = c.prepare(&select(table, key, column))?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next()? {
        use rusqlite::types::ValueRef;
        let label = r.get::<_, Option<String>>(0)?.unwrap_or_default();
        let (kind, bytes): (&str, Vec<u8>) = match r.get_ref(1)? {
            ValueRef::Null => ("null", Vec::new()),
            ValueRef::Integer(v) => ("integer", v.to_string().into_bytes()),
            ValueRef::Real(v) => ("real", v.to_bits().to_be_bytes().to_vec()),
            ValueRef::Text(t) => ("text", t.to_vec()),
            ValueRef::Blob(b) => ("blob", b.to_vec()),
        };
        let digest = Digest {
            kind: kind.to_string(),
            bytes: if kind == "null" {
                0
            } else {
                bytes.len() as u64
            },
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        out.insert(label, digest);
    }
    Ok(out)
}

/// [`row_shapes`] or [`row_digests`].
type RowReader = fn(&Path, &str, &str, &str) -> rusqlite::Result<BTreeMap<String, Digest>>;

impl Cluster {
    /// Waits until every node holds the same rows of `table` with the same bytes in `column` (rows labelled by
    /// the SQL expression `key`: see [`row_digests`]); returns them. Polls the cheap [`row_shapes`] until the
    /// nodes agree on them, then compares digests. Panics after `timeout` with what each node held last and
    /// every node's last log lines.
    pub fn converged_rows(
        &self,
        table: &str,
        key: &str,
        column: &str,
        timeout: Duration,
    ) -> BTreeMap<String, Digest> {
        let mut last = Vec::new();
        let read = |f: RowReader| {
            self.nodes
                .iter()
                .map(|n| f(&n.db, table, key, column).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        };
        let result = wait::poll(timeout, || {
            last = read(row_shapes);
            agreed(&last)?;
            last = read(row_digests);
            agreed(&last)
        });
        result.unwrap_or_else(|| {
            let held: String = last
                .iter()
                .enumerate()
                .map(|(i, r)| format!("node {}: {r:?}\n", i + 1))
                .collect();
            panic!(
                "{table}.{column} did not converge within {timeout:?}:\n{held}{}",
                self.logs_tail()
            )
        })
    }
}

impl Cluster {
    /// Waits until no node holds staged pieces of large values ([`Node::staged_pieces`]): every value that
    /// arrived in pieces was assembled, and pieces nothing claims were cleaned up. Panics after `timeout`.
    pub fn no_pieces_staged(&self, timeout: Duration) {
        let mut last = Vec::new();
        let done = wait::poll(timeout, || {
            last = self.nodes.iter().map(Node::staged_pieces).collect();
            last.iter().all(|n| n.unwrap_or(0) == 0)
        });
        if done.is_none() {
            panic!(
                "pieces still staged after {timeout:?} (per node): {last:?}\n{}",
                self.logs_tail()
            );
        }
    }
}

/// Runs one query again and again on its own read-only connection from a thread (as another application
/// reading a node's database), recording each distinct first row it returns (values as text) and how often,
/// until stopped ([`Sampler::stop`], or dropped).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<Vec<String>, u64>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `query` on `db` about every `period`. A query that fails (a lock held past the busy
    /// timeout) is recorded as the row `["error: ..."]`.
    pub fn start(db: &Path, query: &str, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (flag, record, db, query) = (
            stop.clone(),
            seen.clone(),
            db.to_path_buf(),
            query.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let conn = sql::open_read_only(&db);
            while !flag.load(Ordering::Relaxed) {
                let row = conn
                    .query_row(&query, [], |r| {
                        (0..r.as_ref().column_count())
                            .map(|i| {
                                r.get_ref(i).map(|v| match v {
                                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                                    rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                                    rusqlite::types::ValueRef::Real(f) => f.to_string(),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        String::from_utf8_lossy(t).into_owned()
                                    }
                                    rusqlite::types::ValueRef::Blob(b) => {
                                        format!("blob {}", b.len())
                                    }
                                })
                            })
                            .collect::<rusqlite::Result<Vec<String>>>()
                    })
                    .unwrap_or_else(|e| vec![format!("error: {e}")]);
                *record.lock().unwrap().entry(row).or_insert(0) += 1;
                std::thread::sleep(period);
            }
        });
        Sampler {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// How many samples so far returned `row`.
    pub fn count_of(&self, row: &[&str]) -> u64 {
        let row: Vec<String> = row.iter().map(|s| s.to_string()).collect();
        self.seen.lock().unwrap().get(&row).copied().unwrap_or(0)
    }

    /// Stops the thread; returns every distinct row seen with how many samples returned it.
    pub fn stop(mut self) -> BTreeMap<Vec<String>, u64> {
        self.finish();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One row of a node's `__harmonylite__unpublished`: a change it could never publish, set aside.
#[derive(Debug, Clone)]
pub struct SetAside {
    pub id: i64,
    pub table_name: String,
    pub log_id: i64,
    pub reason: String,
}

impl Node {
    /// Every row of the node's `__harmonylite__unpublished`, oldest first (none while the table does not exist).
    pub fn set_aside(&self) -> Vec<SetAside> {
        let conn = sql::open_read_only(&self.db);
        let Ok(mut stmt) = conn.prepare(
            "SELECT id, table_name, log_id, reason FROM __harmonylite__unpublished ORDER BY id",
        ) else {
            return Vec::new();
        };
        stmt.query_map([], |r| {
            Ok(SetAside {
                id: r.get(0)?,
                table_name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                log_id: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                reason: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The operator's retry of a change set aside (`__harmonylite__unpublished` row `id`): its row goes back to
    /// the change log and the record goes, in one `sqlite3` CLI call.
    pub fn retry_set_aside(&self, id: i64) {
        self.sql(&format!(
            "INSERT INTO __harmonylite__change_log(tbl, k) SELECT tbl, k FROM __harmonylite__unpublished WHERE id = {id};\n\
             DELETE FROM __harmonylite__unpublished WHERE id = {id};"
        ));
    }

    /// How many pieces of large values the node holds staged (`__harmonylite__pieces`); `None` while the table
    /// does not exist.
    pub fn staged_pieces(&self) -> Option<u64> {
        sql::open_read_only(&self.db)
            .query_row("SELECT count(*) FROM __harmonylite__pieces", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
            .map(|n| n as u64)
    }

    /// Polls `stream`'s state through this node's nats-server every few milliseconds (one connection, so it
    /// sees a publish in progress) until `until` holds for it; returns that state. Panics after `timeout`
    /// with the last state and the node's last log lines.
    pub fn watch_stream(
        &self,
        stream: &str,
        timeout: Duration,
        mut until: impl FnMut(&async_nats::jetstream::stream::State) -> bool,
    ) -> async_nats::jetstream::stream::State {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut last = None;
        let found = rt.block_on(async {
            let deadline = Instant::now() + timeout;
            let client = async_nats::connect(format!("127.0.0.1:{}", self.client_port))
                .await
                .ok()?;
            let js = async_nats::jetstream::new(client);
            while Instant::now() < deadline {
                let info = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|s| s.cached_info().clone());
                if let Some(info) = info {
                    if until(&info.state) {
                        return Some(info.state);
                    }
                    last = Some(info.state);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        });
        found.unwrap_or_else(|| {
            panic!(
                "stream {stream} via node {}: condition not met within {timeout:?}; last state {last:?}\nnode log:\n{}",
                self.id,
                self.log_tail(60)
            )
        })
    }
}
