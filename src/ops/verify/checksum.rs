//! Table checksums for `-verify`: per user table an order-independent checksum and a row count, read in one
//! read transaction together with the node's applied positions, so the data and the positions describe the
//! same moment.
//!
//! A row's digest is the first 128 bits of SHA-256 over its values, columns taken in sorted-name order (two
//! nodes whose columns were added in a different order agree), each value written as its column name, a
//! storage-class tag and, for TEXT and BLOB, its length and bytes; INTEGER as its 8 bytes, REAL as the bits of
//! the double (so `-0.0` and `0.0` differ, and `1`, `1.0` and `'1'` all differ). A table's checksum is the
//! wrapping sum of its rows' digests: independent of row order, sensitive to every row and to how many times
//! it occurs. Rows are streamed, never collected. Rowid tables without a declared primary key include the
//! rowid (it is their key across nodes).
//!
//! The tables are those capture selects under `include_tables` / `exclude_tables`: never HarmonyLite's own
//! (`__harmonylite__*`), SQLite's (`sqlite_*`), virtual tables or their shadow tables.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::capture::{self, ident};

/// Why the checksums could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Capture(#[from] capture::CaptureError),
    #[error("the checksum task failed: {0}")]
    Task(String),
}

/// One table's checksum and row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSum {
    pub rows: u64,
    pub checksum: u128,
}

impl TableSum {
    /// The checksum as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.checksum)
    }
}

/// What one read transaction saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `__harmonylite__applied`: stream → applied position.
    pub applied: BTreeMap<String, u64>,
    /// The highest change-log id (0 when the log is empty).
    pub max_log_id: u64,
    /// Table name → checksum and rows.
    pub tables: BTreeMap<String, TableSum>,
}

/// Open the database read-only (the node's connections keep it in WAL mode, so reading never blocks writers).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// The highest change-log id now (0 when the log is empty or missing): a cheap look before a snapshot.
pub fn max_log_id(conn: &Connection) -> rusqlite::Result<u64> {
    if !table_exists(conn, capture::LOG)? {
        return Ok(0);
    }
    capture::max_log_id(conn).map(|n| n.max(0) as u64)
}

/// Checksums of every selected table, the applied positions and the change log's highest id, in one read
/// transaction (`BEGIN` deferred: the snapshot starts at the first read and never blocks a writer).
pub fn snapshot(
    conn: &Connection,
    include: &[String],
    exclude: &[String],
) -> Result<Snapshot, ChecksumError> {
    conn.execute_batch("BEGIN")?;
    let r = read(conn, include, exclude);
    // A read transaction holds nothing worth keeping: end it whatever happened.
    let _ = conn.execute_batch("ROLLBACK");
    r
}

fn read(
    conn: &Connection,
    include: &[String],
    exclude: &[String],
) -> Result<Snapshot, ChecksumError> {
    let mut snap = Snapshot::default();
    if table_exists(conn, capture::APPLIED)? {
        snap.applied = capture::applied_positions(conn)?.into_iter().collect();
    }
    snap.max_log_id = max_log_id(conn)?;
    for t in capture::schema::user_tables(conn)? {
        if !capture::schema::selected(&t.name, include, exclude) {
            continue;
        }
        let sum = table_sum(conn, &t.name, t.without_rowid)?;
        snap.tables.insert(t.name, sum);
    }
    Ok(snap)
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// The columns hashed, in sorted-name order: every visible column, plus `rowid` for a rowid table without a
/// declared primary key (and without a column of that name).
fn columns(conn: &Connection, table: &str, without_rowid: bool) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name, pk, hidden FROM pragma_table_xinfo(?1)")?;
    let mut cols = Vec::new();
    let mut has_pk = false;
    let mut rows = stmt.query([table])?;
    while let Some(r) = rows.next()? {
        let (name, pk, hidden): (String, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        has_pk |= pk > 0;
        if hidden == 0 {
            cols.push(name);
        }
    }
    if !has_pk && !without_rowid && !cols.iter().any(|c| c.eq_ignore_ascii_case("rowid")) {
        cols.push("rowid".to_string());
    }
    cols.sort();
    Ok(cols)
}

/// One table's checksum and row count, rows streamed.
pub fn table_sum(
    conn: &Connection,
    table: &str,
    without_rowid: bool,
) -> rusqlite::Result<TableSum> {
    let cols = columns(conn, table, without_rowid)?;
    if cols.is_empty() {
        return Ok(TableSum::default());
    }
    let list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    let mut stmt = conn.prepare(&format!("SELECT {} FROM {}", list.join(", "), ident(table)))?;
    let mut rows = stmt.query([])?;
    let mut sum = TableSum::default();
    while let Some(r) = rows.next()? {
        let mut h = Sha256::new();
        for (i, name) in cols.iter().enumerate() {
            hash_value(&mut h, name, r.get_ref(i)?);
        }
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        sum.checksum = sum.checksum.wrapping_add(u128::from_le_bytes(first));
        sum.rows += 1;
    }
    Ok(sum)
}

/// One value: its column's name (length-prefixed), a storage-class tag, then the value (TEXT and BLOB with
/// their length), so no two different values, of one type or of two, are written alike.
fn hash_value(h: &mut Sha256, column: &str, v: ValueRef<'_>) {
    h.update((column.len() as u64).to_le_bytes());
    h.update(column.as_bytes());
    match v {
        ValueRef::Null => h.update([0u8]),
        ValueRef::Integer(i) => {
            h.update([1u8]);
            h.update(i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            h.update([2u8]);
            h.update(f.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            h.update([3u8]);
            h.update((t.len() as u64).to_le_bytes());
            h.update(t);
        }
        ValueRef::Blob(b) => {
            h.update([4u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    fn sum(c: &Connection, table: &str) -> TableSum {
        snapshot(c, &[], &[]).unwrap().tables[table]
    }

    #[test]
    fn row_order_does_not_matter() {
        let a = db("CREATE TABLE t (id INTEGER PRIMARY KEY, v);
                    INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL);");
        let b = db("CREATE TABLE t (id INTEGER PRIMARY KEY, v);
                    INSERT INTO t VALUES (3, NULL), (1, 'a'), (2, 'b');");
        assert_eq!(sum(&a, "t"), sum(&b, "t"));
        assert_eq!(sum(&a, "t").rows, 3);
    }

    #[test]
    fn a_changed_value_changes_the_checksum() {
        let a = db(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        );
        let before = sum(&a, "t");
        a.execute_batch("UPDATE t SET v = 'c' WHERE id = 2")
            .unwrap();
        let after = sum(&a, "t");
        assert_eq!(before.rows, after.rows);
        assert_ne!(before.checksum, after.checksum);
    }

    #[test]
    fn storage_classes_and_signed_zero_differ() {
        let values = [
            "1", "'1'", "1.0", "0.0", "-0.0", "NULL", "x'31'", "''", "x''",
        ];
        let sums: Vec<u128> = values
            .iter()
            .map(|v| {
                let c = db(&format!("CREATE TABLE t (v); INSERT INTO t VALUES ({v});"));
                sum(&c, "t").checksum
            })
            .collect();
        for i in 0..sums.len() {
            for j in i + 1..sums.len() {
                assert_ne!(sums[i], sums[j], "{} vs {}", values[i], values[j]);
            }
        }
    }

    #[test]
    fn values_do_not_run_into_each_other() {
        let a = db("CREATE TABLE t (a, b); INSERT INTO t VALUES ('ab', 'c');");
        let b = db("CREATE TABLE t (a, b); INSERT INTO t VALUES ('a', 'bc');");
        assert_ne!(sum(&a, "t"), sum(&b, "t"));
    }

    #[test]
    fn column_order_does_not_matter() {
        let a = db(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, x, y); INSERT INTO t VALUES (1, 'x', 2.5);",
        );
        let b = db("CREATE TABLE t (id INTEGER PRIMARY KEY, y);
                    ALTER TABLE t ADD COLUMN x;
                    INSERT INTO t (id, x, y) VALUES (1, 'x', 2.5);");
        assert_eq!(sum(&a, "t"), sum(&b, "t"));
    }

    #[test]
    fn duplicate_rows_count() {
        let a = db("CREATE TABLE t (v); INSERT INTO t VALUES (1), (1);");
        let b = db("CREATE TABLE t (v); INSERT INTO t VALUES (1);");
        assert_ne!(sum(&a, "t").checksum, sum(&b, "t").checksum);
    }

    #[test]
    fn only_selected_user_tables_and_positions_in_the_same_read() {
        let c = db(&format!(
            "CREATE TABLE a (v); CREATE TABLE b (v); CREATE TABLE {p}x (v);
             CREATE TABLE {applied} (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO {applied} VALUES ('s-1', 42);
             CREATE TABLE {log} (id INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k);
             INSERT INTO {log} VALUES (7, 1, 1);",
            p = capture::PREFIX,
            applied = capture::APPLIED,
            log = capture::LOG,
        ));
        let all = snapshot(&c, &[], &[]).unwrap();
        assert_eq!(all.tables.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(all.applied, BTreeMap::from([("s-1".to_string(), 42)]));
        assert_eq!(all.max_log_id, 7);
        let only_b = snapshot(&c, &[], &["a".to_string()]).unwrap();
        assert_eq!(only_b.tables.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn rowid_counts_for_tables_without_a_primary_key() {
        let a = db("CREATE TABLE t (v); INSERT INTO t(rowid, v) VALUES (1, 'x');");
        let b = db("CREATE TABLE t (v); INSERT INTO t(rowid, v) VALUES (2, 'x');");
        assert_ne!(sum(&a, "t"), sum(&b, "t"));
    }
}
