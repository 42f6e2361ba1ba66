//! SQL from the test process: the real `sqlite3` CLI (as an application or an operator would), rusqlite
//! connections (a second writer), and the convergence oracle's order-independent table checksums.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A table's order-independent checksum and its row count.
pub type Checksum = (u64, u64);

/// Runs SQL through the `sqlite3` CLI; `busy_ms` sets `.timeout` (none: fail at once on a lock, as an
/// application without a busy timeout would). Stdout, or stderr as the error.
pub fn try_sqlite3(db: &Path, sql: &str, busy_ms: Option<u32>) -> Result<String, String> {
    let mut cmd = Command::new("sqlite3");
    if let Some(ms) = busy_ms {
        cmd.arg("-cmd").arg(format!(".timeout {ms}"));
    }
    let out = cmd
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI must be installed");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs SQL through the real `sqlite3` CLI (no busy timeout, as an application would); returns stdout.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    try_sqlite3(db, sql, None).unwrap_or_else(|e| panic!("sqlite3 {sql:?} failed: {e}"))
}

/// A rusqlite connection from the test process (a second writer besides the CLI), with a 10 s busy timeout.
pub fn open(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// A read-only rusqlite connection with a 5 s busy timeout.
pub fn open_read_only(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// The user's tables, by name: every table in `sqlite_master` but HarmonyLite's own (`__harmonylite%`) and
/// SQLite's (`sqlite_%`).
pub fn try_user_tables(db: &Path) -> rusqlite::Result<Vec<String>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = c.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE '\\_\\_harmonylite%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY name",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// [`try_user_tables`], panicking on an error.
pub fn user_tables(db: &Path) -> Vec<String> {
    try_user_tables(db).unwrap()
}

/// Order-independent checksum of a table's rows (every value by storage class, exact), and its row count.
pub fn try_checksum(db: &Path, table: &str) -> rusqlite::Result<Checksum> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = c.prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))?;
    let n = stmt.column_count();
    let mut rows = stmt.query([])?;
    let (mut sum, mut count) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in 0..n {
            use rusqlite::types::ValueRef::*;
            use std::hash::Hash;
            match r.get_ref(i)? {
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
    Ok((sum, count))
}

/// Every row of `table` as text (its values in column order, as SQLite's `quote()` shows them), for saying
/// which rows differ between nodes.
pub fn try_row_texts(
    db: &Path,
    table: &str,
) -> rusqlite::Result<std::collections::BTreeSet<String>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(5))?;
    let q = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let columns: Vec<String> = c
        .prepare(&format!(
            "SELECT name FROM pragma_table_info({})",
            sql_text(table)
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if columns.is_empty() {
        return Ok(Default::default());
    }
    let select = columns
        .iter()
        .map(|c| format!("quote({})", q(c)))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let mut stmt = c.prepare(&format!("SELECT {select} FROM {}", q(table)))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// `s` as an SQL string literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// [`try_checksum`], panicking on an error.
pub fn checksum(db: &Path, table: &str) -> Checksum {
    try_checksum(db, table).unwrap_or_else(|e| panic!("checksum of {table} in {db:?}: {e}"))
}

/// [`try_checksum`] of every user table ([`try_user_tables`]), by name.
pub fn try_checksums(db: &Path) -> rusqlite::Result<BTreeMap<String, Checksum>> {
    try_user_tables(db)?
        .into_iter()
        .map(|t| try_checksum(db, &t).map(|c| (t, c)))
        .collect()
}

/// Light write load: a thread running `sql(i)` (i = 0, 1, ...) through rusqlite on `db` about every `period`
/// until stopped ([`Writer::stop`], or dropped). Writes that fail (say, a lock held too long) are counted and
/// not retried.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Writer {
    pub fn start(
        db: &Path,
        period: Duration,
        sql: impl Fn(u64) -> String + Send + 'static,
    ) -> Writer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let db = db.to_path_buf();
        let handle = std::thread::spawn(move || {
            let conn = open(&db);
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                match conn.execute_batch(&sql(i)) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
                i += 1;
                std::thread::sleep(period);
            }
            (ok, failed)
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; returns how many writes succeeded and how many failed.
    pub fn stop(mut self) -> (u64, u64) {
        self.finish()
    }

    fn finish(&mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}
