//! Change capture inside the user's database: the change-log table, the triggers that fill it, the
//! bookkeeping tables, and reading the log back.
//!
//! Triggers record only *which* row changed — a table id and the row's key — never its values. The publisher
//! reads the row's current values later, inside one read transaction, so a publish holds whole committed
//! transactions, picks up new columns without re-installing anything, and coalesces repeated updates.
//! Triggers use no custom SQL function and no pragma table, so they work for every SQLite client with
//! `PRAGMA trusted_schema = OFF`. The node's own applies are not re-captured: the applier deletes, inside its
//! own write transaction, the log rows its writes produced (SQLite's single writer makes them invisible to
//! everyone else).

pub mod keys;
pub mod schema;
pub mod watch;

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

pub use schema::{KeyKind, TableInfo, ident, literal};

use crate::wire::Value;

/// Prefix of every object we create in the user's database.
pub const PREFIX: &str = "__harmonylite__";
/// The change log: one row per changed row key.
pub const LOG: &str = "__harmonylite__change_log";
/// Captured tables and their stable ids.
pub const TABLES: &str = "__harmonylite__tables";
/// Key/value bookkeeping (the change-log incarnation).
pub const META: &str = "__harmonylite__meta";
/// Applied stream position per stream, written in the same transaction as the applied rows.
pub const APPLIED: &str = "__harmonylite__applied";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("table {table:?} cannot be captured: {reason}")]
    Unsupported { table: String, reason: String },
    #[error("bad key in change log for table id {table_id}: {text}")]
    BadKey { table_id: i64, text: String },
}

/// What is captured: the tables, by id and by name, and the schema fingerprint.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub tables: Vec<TableInfo>,
    pub by_id: HashMap<i64, usize>,
    pub fingerprint: u64,
    /// Random id of this change log's life; a new one after `-cleanup` so message ids never repeat.
    pub incarnation: u64,
}

impl Capture {
    pub fn table(&self, id: i64) -> Option<&TableInfo> {
        self.by_id.get(&id).map(|&i| &self.tables[i])
    }
}

/// The capture in force, shared by the publisher (which re-installs it when the schema changes) and the
/// applier (which reads it). Cloning the handle shares it; reading never blocks a writer.
#[derive(Clone, Default)]
pub struct CurrentCapture(std::sync::Arc<arc_swap::ArcSwap<Capture>>);

impl CurrentCapture {
    pub fn new(cap: Capture) -> CurrentCapture {
        CurrentCapture(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(cap)))
    }
    /// The capture now in force.
    pub fn get(&self) -> std::sync::Arc<Capture> {
        self.0.load_full()
    }
    pub fn set(&self, cap: Capture) {
        self.0.store(std::sync::Arc::new(cap));
    }
}

/// Create our bookkeeping tables (if missing) and (re)create the triggers of every selected table, in one
/// transaction. Safe to run at every start and at any time while applications write.
///
/// With `previous` (a re-install while running), tables captured for the first time get every existing row
/// recorded in the change log, so rows written between their creation and this install are published too.
pub fn install(
    conn: &mut Connection,
    include: &[String],
    exclude: &[String],
    previous: Option<&Capture>,
) -> Result<Capture, CaptureError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {LOG} (id INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k);
         CREATE TABLE IF NOT EXISTS {TABLES} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {APPLIED} (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;"
    ))?;
    let incarnation: Option<i64> = tx
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'incarnation'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    let incarnation = match incarnation {
        Some(v) => v as u64,
        None => {
            let r = crate::config::random_bytes();
            let v = (u64::from_le_bytes(r[..8].try_into().expect("8 bytes")) >> 1) as i64;
            tx.execute(
                &format!("INSERT INTO {META}(key, value) VALUES('incarnation', ?1)"),
                [v],
            )?;
            v as u64
        }
    };

    // Drop every trigger of ours; re-create those of the selected tables below.
    let old: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 15) = '__harmonylite__'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in old {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(&name)))?;
    }

    let mut tables = Vec::new();
    for listed in schema::user_tables(&tx)? {
        if !schema::selected(&listed.name, include, exclude) {
            continue;
        }
        let (columns, key) = schema::describe(&tx, &listed)?;
        tx.execute(
            &format!("INSERT OR IGNORE INTO {TABLES}(name) VALUES(?1)"),
            [&listed.name],
        )?;
        let id: i64 = tx.query_row(
            &format!("SELECT id FROM {TABLES} WHERE name = ?1"),
            [&listed.name],
            |r| r.get(0),
        )?;
        let info = TableInfo::new(id, listed.name, columns, key);
        tx.execute_batch(&trigger_sql(&info))?;
        if previous.is_some_and(|p| !p.tables.iter().any(|t| t.name == info.name)) {
            let n = tx.execute(
                &format!(
                    "INSERT INTO {LOG}(tbl, k) SELECT {}, {} FROM {}",
                    info.id,
                    key_expr(&info, &ident(&info.name)),
                    ident(&info.name)
                ),
                [],
            )?;
            tracing::info!(table = %info.name, rows = n, "new table captured");
        }
        tables.push(info);
    }
    tx.commit()?;
    let by_id = tables.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let fingerprint = schema::fingerprint(&tables);
    Ok(Capture {
        tables,
        by_id,
        fingerprint,
        incarnation,
    })
}

/// The SQL expression a trigger writes as the key, for `NEW` or `OLD`.
fn key_expr(info: &TableInfo, row: &str) -> String {
    match &info.key {
        KeyKind::RowidAlias(c) => format!("{row}.{}", ident(c)),
        KeyKind::Rowid => format!("{row}.rowid"),
        KeyKind::Columns(cols) if cols.len() == 1 => format!("{row}.{}", ident(&cols[0])),
        KeyKind::Columns(cols) => cols
            .iter()
            .map(|c| format!("quote({row}.{})", ident(c)))
            .collect::<Vec<_>>()
            .join(" || ',' || "),
    }
}

fn trigger_sql(info: &TableInfo) -> String {
    let t = ident(&info.name);
    let id = info.id;
    let new = key_expr(info, "NEW");
    let old = key_expr(info, "OLD");
    let name = |op: &str| ident(&format!("{PREFIX}{}_{op}", info.name));
    format!(
        "CREATE TRIGGER {ins} AFTER INSERT ON {t} BEGIN INSERT INTO {LOG}(tbl, k) VALUES({id}, {new}); END;
         CREATE TRIGGER {upd} AFTER UPDATE ON {t} BEGIN
           INSERT INTO {LOG}(tbl, k) SELECT {id}, {old} WHERE ({old}) IS NOT ({new});
           INSERT INTO {LOG}(tbl, k) VALUES({id}, {new}); END;
         CREATE TRIGGER {del} AFTER DELETE ON {t} BEGIN INSERT INTO {LOG}(tbl, k) VALUES({id}, {old}); END;",
        ins = name("insert"),
        upd = name("update"),
        del = name("delete"),
    )
}

/// Remove every trigger and table we created (`-cleanup`). User data is untouched.
pub fn uninstall(conn: &mut Connection) -> Result<usize, CaptureError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let objects: Vec<(String, String)> = tx
        .prepare(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'table')
             AND substr(name, 1, 15) = '__harmonylite__' ORDER BY type = 'table'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (kind, name) in &objects {
        let kind = if kind == "trigger" {
            "TRIGGER"
        } else {
            "TABLE"
        };
        tx.execute_batch(&format!("DROP {kind} IF EXISTS {}", ident(name)))?;
    }
    tx.commit()?;
    Ok(objects.len())
}

/// One change-log row: a changed row's key.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub id: i64,
    pub table_id: i64,
    pub key: Vec<Value>,
}

/// Highest change-log id (0 when empty).
pub fn max_log_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!("SELECT coalesce(max(id), 0) FROM {LOG}"),
        [],
        |r| r.get(0),
    )
}

/// Change-log rows with `after < id <= upto`, in id order. Rows of tables no longer captured are skipped.
pub fn read_log(
    conn: &Connection,
    cap: &Capture,
    after: i64,
    upto: i64,
) -> Result<Vec<LogRow>, CaptureError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, tbl, k FROM {LOG} WHERE id > ?1 AND id <= ?2 ORDER BY id"
    ))?;
    let mut rows = stmt.query(params![after, upto])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let table_id: i64 = r.get(1)?;
        let Some(info) = cap.table(table_id) else {
            continue;
        };
        let raw = Value::from_ref(r.get_ref(2)?);
        let key = match &info.key {
            KeyKind::Columns(cols) if cols.len() > 1 => match &raw {
                Value::Text(t) => {
                    keys::parse_quoted_list(t, cols.len()).ok_or_else(|| CaptureError::BadKey {
                        table_id,
                        text: String::from_utf8_lossy(t).into(),
                    })?
                }
                other => {
                    return Err(CaptureError::BadKey {
                        table_id,
                        text: format!("{other:?}"),
                    });
                }
            },
            _ => vec![raw],
        };
        out.push(LogRow { id, table_id, key });
    }
    Ok(out)
}

/// Delete published change-log rows with `id < below`. The row at `below` itself stays, so ids never go
/// back and a message id is never reused.
pub fn delete_published(conn: &Connection, below: i64) -> rusqlite::Result<usize> {
    conn.execute(&format!("DELETE FROM {LOG} WHERE id < ?1"), [below])
}

/// Applied stream positions, by stream name.
pub fn applied_positions(conn: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare(&format!("SELECT stream, seq FROM {APPLIED}"))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests;
