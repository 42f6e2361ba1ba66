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

pub mod ddl;
pub mod ddl_hold;
mod install;
pub mod keys;
pub mod local;
pub mod schema;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{Connection, params};

pub use install::{install, install_in, uninstall};
pub use schema::{KeyKind, TableInfo, ident, literal};

use crate::wire::Value;

/// Prefix of every object we create in the user's database.
pub const PREFIX: &str = "__harmonylite__";
/// The change log: one row per changed row key.
pub const LOG: &str = "__harmonylite__change_log";
/// Captured tables and their stable ids (every table ever captured here, dropped ones included).
pub const TABLES: &str = "__harmonylite__tables";
/// Every column ever captured, per table id: a column named by a change but absent here was dropped here.
pub const COLUMNS: &str = "__harmonylite__columns";
/// Captured tables renamed here: changes still named after the old name go to the new one.
pub const RENAMES: &str = "__harmonylite__renames";
/// Key/value bookkeeping (the change-log incarnation).
pub const META: &str = "__harmonylite__meta";
/// Applied stream position per stream, written in the same transaction as the applied rows.
pub const APPLIED: &str = "__harmonylite__applied";
/// The conflict journal: values that a concurrent change from another node overwrote (see `apply::journal`).
pub const CONFLICTS: &str = "__harmonylite__conflicts";
/// Messages from the stream that can never be applied (undecodable, malformed, or naming a table no stream may
/// write), kept for an operator to read; see `apply::quarantine`.
pub const QUARANTINE: &str = "__harmonylite__quarantine";
/// Pieces of other nodes' large values, staged until the row that holds the value is applied (`apply::pieces`).
pub const PIECES: &str = "__harmonylite__pieces";
/// Local changes that can never be published, set aside for an operator (`publish::large`).
pub const UNPUBLISHED: &str = "__harmonylite__unpublished";

/// Whether `table` is one no change from the stream may write: ours (`__harmonylite__*`) or SQLite's own
/// (`sqlite_*`: `sqlite_sequence`, `sqlite_stat1`, ...), in any letter case.
pub fn is_reserved_table(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower.starts_with(PREFIX) || lower.starts_with("sqlite_")
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("table {table:?} cannot be captured: {reason}")]
    Unsupported { table: String, reason: String },
    #[error("bad key in change log for table id {table_id}: {text}")]
    BadKey { table_id: i64, text: String },
}

/// What is captured: the tables, by id and by name, the schema fingerprint, and the schema version the capture
/// was installed against.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub tables: Vec<TableInfo>,
    pub by_id: HashMap<i64, usize>,
    /// Lower-cased table name → index in `tables` (SQLite names are case-insensitive).
    by_name: HashMap<String, usize>,
    pub fingerprint: u64,
    /// Random id of this change log's life; a new one after `-cleanup` so message ids never repeat.
    pub incarnation: u64,
    /// `PRAGMA schema_version`, read in the install's own transaction. Any other value means the schema
    /// changed since, and capture must be installed again before it is trusted.
    pub schema_version: i64,
    /// Lower-cased names of every table captured here at some point.
    known_tables: HashSet<String>,
    /// Lower-cased table name → lower-cased names of every column it had when captured.
    known_columns: HashMap<String, HashSet<String>>,
    /// Lower-cased old name → new name, for captured tables renamed here.
    renames: HashMap<String, String>,
}

/// Where the rows of an incoming table go, as the local schema says.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Into this captured table; `drop` lists positions of shipped columns this node dropped (their values are
    /// not written). Empty in the ordinary case.
    Table {
        info: &'a TableInfo,
        drop: Vec<usize>,
    },
    /// The table was captured here once and has been dropped here: its changes have nowhere to go.
    Dropped,
    /// The local schema is behind: this table, or this column of it, does not exist here yet.
    Behind { column: Option<String> },
}

impl Capture {
    pub(crate) fn new(
        tables: Vec<TableInfo>,
        known: install::Known,
        incarnation: u64,
        schema_version: i64,
    ) -> Capture {
        let by_id = tables.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.to_lowercase(), i))
            .collect();
        let fingerprint = schema::fingerprint(&tables);
        Capture {
            tables,
            by_id,
            by_name,
            fingerprint,
            incarnation,
            schema_version,
            known_tables: known.tables,
            known_columns: known.columns,
            renames: known.renames,
        }
    }

    pub fn table(&self, id: i64) -> Option<&TableInfo> {
        self.by_id.get(&id).map(|&i| &self.tables[i])
    }

    /// The captured table called `name` (any case), following renames made here.
    pub fn table_named(&self, name: &str) -> Option<&TableInfo> {
        let mut name = name.to_lowercase();
        for _ in 0..=self.renames.len() {
            if let Some(&i) = self.by_name.get(&name) {
                return Some(&self.tables[i]);
            }
            name = self.renames.get(&name)?.to_lowercase();
        }
        None
    }

    /// Where changes to `table` with the shipped `columns` go on this node.
    pub fn target(&self, table: &str, columns: &[String]) -> Target<'_> {
        let Some(info) = self.table_named(table) else {
            return if self.known_tables.contains(&table.to_lowercase()) {
                Target::Dropped
            } else {
                Target::Behind { column: None }
            };
        };
        let rowid_keyed = info.key == KeyKind::Rowid;
        let known = self.known_columns.get(&info.name.to_lowercase());
        let mut drop = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            if (rowid_keyed && c == "rowid")
                || info.columns.iter().any(|h| h.eq_ignore_ascii_case(c))
            {
                continue;
            }
            if known.is_some_and(|k| k.contains(&c.to_lowercase())) {
                drop.push(i);
            } else {
                return Target::Behind {
                    column: Some(c.clone()),
                };
            }
        }
        Target::Table { info, drop }
    }
}

/// The capture in force, shared by the publisher and the applier (either re-installs it when it finds the
/// schema changed) and by whoever follows schema changes ([`CurrentCapture::subscribe`]). Cloning the handle
/// shares it; reading never blocks a writer.
#[derive(Clone)]
pub struct CurrentCapture {
    cap: Arc<arc_swap::ArcSwap<Capture>>,
    version: Arc<tokio::sync::watch::Sender<i64>>,
}

impl CurrentCapture {
    pub fn new(cap: Capture) -> CurrentCapture {
        let (version, _) = tokio::sync::watch::channel(cap.schema_version);
        CurrentCapture {
            cap: Arc::new(arc_swap::ArcSwap::from_pointee(cap)),
            version: Arc::new(version),
        }
    }

    /// The capture now in force.
    pub fn get(&self) -> Arc<Capture> {
        self.cap.load_full()
    }

    /// Put `cap` in force and tell the subscribers when its schema version is new.
    ///
    /// Two installs that race (the publisher's and the applier's) are serialised by SQLite, and each reads its
    /// version in its own transaction; if the older one is stored last, the next check finds the database's
    /// version different and installs once more. A version lower than the one in force (a database replaced
    /// by a restore) is stored like any other.
    pub fn set(&self, cap: Capture) {
        let v = cap.schema_version;
        self.cap.store(Arc::new(cap));
        self.version.send_if_modified(|cur| {
            let changed = v != *cur;
            *cur = v;
            changed
        });
    }

    /// A receiver that sees every schema version put in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// Re-install capture through `conn` when the database's schema is no longer the one the capture in force
    /// was installed against. Returns true when it re-installed.
    pub fn refresh(
        &self,
        conn: &mut Connection,
        include: &[String],
        exclude: &[String],
    ) -> Result<bool, CaptureError> {
        if schema_version(conn)? == self.get().schema_version {
            return Ok(false);
        }
        let cap = install(conn, include, exclude)?;
        tracing::info!(
            tables = cap.tables.len(),
            schema_version = cap.schema_version,
            "schema changed; capture re-installed"
        );
        self.set(cap);
        Ok(true)
    }
}

/// The database's schema version (`PRAGMA schema_version`) with `PRAGMA user_version` in its high 32 bits (some
/// migration tools record their migrations there, and a change of it replicates with the schema); inside a
/// transaction, the one that transaction sees. Compared only for equality.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT s.schema_version, u.user_version FROM pragma_schema_version AS s, pragma_user_version AS u",
        [],
        |r| {
            let (schema, user): (i64, i64) = (r.get(0)?, r.get(1)?);
            Ok(((user as u32 as u64) << 32 | schema as u32 as u64) as i64)
        },
    )
}

/// The SQL expression a trigger writes as the key, for `NEW` or `OLD`.
pub(crate) fn key_expr(info: &TableInfo, row: &str) -> String {
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

/// One change-log row: a changed row's key.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub id: i64,
    pub table_id: i64,
    pub key: Vec<Value>,
    /// Recorded by a rebuilt (or newly captured) table's backfill, not by a trigger: the log holds the table's
    /// id negated.
    pub backfill: bool,
    /// A schema change made here ([`ddl::log_local`]): table id [`ddl::LOGGED`], no key.
    pub ddl: Option<Vec<ddl::Change>>,
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
        if let Some(row) = log_row(cap, r.get(0)?, r.get(1)?, r.get_ref(2)?)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// The change-log row `id` as logged (`logged`: the table id, negated for a backfill; [`ddl::LOGGED`] for a
/// schema change) with key `k`; `None` for a table no longer captured.
fn log_row(
    cap: &Capture,
    id: i64,
    logged: i64,
    k: rusqlite::types::ValueRef<'_>,
) -> Result<Option<LogRow>, CaptureError> {
    let (table_id, backfill) = (logged.abs(), logged < 0);
    if logged == ddl::LOGGED {
        let text = k.as_str().map_err(rusqlite::Error::from)?;
        let changes = serde_json::from_str(text).map_err(|_| CaptureError::BadKey {
            table_id,
            text: text.to_string(),
        })?;
        return Ok(Some(LogRow {
            id,
            table_id,
            key: Vec::new(),
            backfill: false,
            ddl: Some(changes),
        }));
    }
    let Some(info) = cap.table(table_id) else {
        return Ok(None);
    };
    let raw = Value::from_ref(k);
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
    Ok(Some(LogRow {
        id,
        table_id,
        key,
        backfill,
        ddl: None,
    }))
}

/// Id of the first schema change logged with `after < id <= upto`.
pub fn first_schema_change(
    conn: &Connection,
    after: i64,
    upto: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(&format!(
        "SELECT min(id) FROM {LOG} WHERE id > ?1 AND id <= ?2 AND tbl = {}",
        ddl::LOGGED
    ))?
    .query_row(params![after, upto], |r| r.get(0))
}

/// Whether a captured table has a change logged with `after < id <= upto` (schema changes aside).
pub fn any_captured(
    conn: &Connection,
    cap: &Capture,
    after: i64,
    upto: i64,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT DISTINCT abs(tbl) FROM {LOG} WHERE id > ?1 AND id <= ?2 AND tbl <> {}",
        ddl::LOGGED
    ))?;
    let mut rows = stmt.query(params![after, upto])?;
    while let Some(r) = rows.next()? {
        if cap.table(r.get(0)?).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a backfill wrote change-log rows with `after < id <= upto`.
pub fn any_backfill(conn: &Connection, after: i64, upto: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM {LOG} WHERE id > ?1 AND id <= ?2 AND tbl < 0)"
    ))?
    .query_row(params![after, upto], |r| r.get(0))
}

/// Ranges of up to this many change-log ids are grouped in memory from one plain read (the small passes of
/// steady replication: cheaper than SQLite's sort); longer ones by SQLite, so they are never held whole.
const GROUP_IN_MEMORY: i64 = 20_000;

/// The rows of captured tables changed with `after < id <= upto` (a range without schema changes), each once,
/// in the order of its newest change there: `f` gets that change, marked `backfill` only when every change of
/// the row in the range is a backfill's (one change by a trigger makes it an ordinary write). A long range is
/// grouped by SQLite, so it is never held in memory here. Returns how many change-log rows of captured tables
/// the range holds.
pub fn for_each_newest<E: From<CaptureError>>(
    conn: &Connection,
    cap: &Capture,
    after: i64,
    upto: i64,
    mut f: impl FnMut(LogRow) -> Result<(), E>,
) -> Result<usize, E> {
    if upto - after > GROUP_IN_MEMORY {
        return newest_by_sqlite(conn, cap, after, upto, &mut f);
    }
    let (rows, logged) = newest_in_memory(conn, cap, after, upto)?;
    rows.into_iter().try_for_each(f)?;
    Ok(logged)
}

/// [`for_each_newest`]'s rows in their order, from the range read whole, and the count of its change-log rows.
fn newest_in_memory(
    conn: &Connection,
    cap: &Capture,
    after: i64,
    upto: i64,
) -> Result<(Vec<LogRow>, usize), CaptureError> {
    let mut log = read_log(conn, cap, after, upto)?;
    log.retain(|r| r.ddl.is_none());
    let mut newest: HashMap<(i64, Vec<u8>), (usize, bool)> = HashMap::with_capacity(log.len());
    for (i, r) in log.iter().enumerate() {
        let e = newest
            .entry((r.table_id, crate::wire::key_bytes(&r.key)))
            .or_insert((i, true));
        *e = (i, e.1 && r.backfill);
    }
    let mut order: Vec<(usize, bool)> = newest.into_values().collect();
    order.sort_unstable();
    let rows = order
        .into_iter()
        .map(|(i, backfill)| {
            let r = &mut log[i];
            LogRow {
                id: r.id,
                table_id: r.table_id,
                key: std::mem::take(&mut r.key),
                backfill,
                ddl: None,
            }
        })
        .collect();
    Ok((rows, log.len()))
}

/// [`for_each_newest`] grouped by SQLite.
fn newest_by_sqlite<E: From<CaptureError>>(
    conn: &Connection,
    cap: &Capture,
    after: i64,
    upto: i64,
    mut f: impl FnMut(LogRow) -> Result<(), E>,
) -> Result<usize, E> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT max(id), abs(tbl), k, max(tbl) < 0, count(*) FROM {LOG} \
             WHERE id > ?1 AND id <= ?2 AND tbl <> {} GROUP BY abs(tbl), k ORDER BY 1",
            ddl::LOGGED
        ))
        .map_err(CaptureError::from)?;
    let mut rows = stmt
        .query(params![after, upto])
        .map_err(CaptureError::from)?;
    let mut logged = 0usize;
    while let Some(r) = rows.next().map_err(CaptureError::from)? {
        let (id, table_id, backfill, n): (i64, i64, bool, i64) =
            (|| Ok::<_, rusqlite::Error>((r.get(0)?, r.get(1)?, r.get(3)?, r.get(4)?)))()
                .map_err(CaptureError::from)?;
        let k = r.get_ref(2).map_err(CaptureError::from)?;
        let signed = if backfill { -table_id } else { table_id };
        if let Some(row) = log_row(cap, id, signed, k)? {
            logged += n as usize;
            f(row)?;
        }
    }
    Ok(logged)
}

/// Delete published change-log rows with `id < below`. The row at `below` itself stays, so ids never go
/// back and a message id is never reused.
pub fn delete_published(conn: &Connection, below: i64) -> rusqlite::Result<usize> {
    conn.execute(&format!("DELETE FROM {LOG} WHERE id < ?1"), [below])
}

/// Per stream, the applied position the latest backfill's values hold at least (written by the install that
/// recorded it; see `install::rebuild_floor`). A stream missing means nothing applied yet.
pub fn backfill_seen(conn: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT substr(key, 15), value FROM {META} WHERE key LIKE 'backfill_seen:%'"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    rows.collect()
}

/// The node's own change-log ids up to which the latest backfill's values hold its own changes (0: none).
pub fn backfill_own_upto(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        &format!("SELECT coalesce(max(value), 0) FROM {META} WHERE key = 'backfill_own_upto'"),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v.max(0) as u64)
}

/// Whether capture was ever installed on this database (its bookkeeping tables exist).
pub fn installed(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [TABLES],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Whether any table `include`/`exclude` select holds a row (what an application or a copy put in a database
/// before capture was first installed on it).
pub fn has_user_rows(
    conn: &Connection,
    include: &[String],
    exclude: &[String],
) -> Result<bool, CaptureError> {
    for t in schema::user_tables(conn)? {
        if !schema::selected(&t.name, include, exclude) || is_reserved_table(&t.name) {
            continue;
        }
        let found: bool = conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {})", ident(&t.name)),
            [],
            |r| r.get(0),
        )?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The META key saying that this database was captured for the first time and has not yet been given the
/// cluster's data (see `node::join`).
const JOIN_PENDING: &str = "join_pending";

/// Whether this database still has to join its cluster's data.
pub fn join_pending(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT count(*) FROM {META} WHERE key = ?1"),
        [JOIN_PENDING],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Record (or forget) that this database has to join its cluster's data.
pub fn set_join_pending(conn: &Connection, pending: bool) -> rusqlite::Result<()> {
    if pending {
        conn.execute(
            &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES(?1, 1)"),
            [JOIN_PENDING],
        )?;
    } else {
        conn.execute(
            &format!("DELETE FROM {META} WHERE key = ?1"),
            [JOIN_PENDING],
        )?;
    }
    Ok(())
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
