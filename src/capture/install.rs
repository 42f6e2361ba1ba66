//! Installing capture: our bookkeeping tables, the triggers of every selected table, and what the node must
//! remember about tables and columns it captured once (so a table dropped here is told apart from one this
//! node has not created yet).
//!
//! One install is one `IMMEDIATE` transaction, and the schema version it records is read inside it, so no
//! schema change can slip between the install and the version it is compared with later.
//!
//! A table whose three triggers were not all there when the install began (created since the last install,
//! re-created by a rebuild, or captured for the first time on a database that was captured before) gets every
//! existing row recorded in the change log: rows written before its triggers existed are published too. A table
//! renamed since the last install keeps its triggers (SQLite moves them with the table), so it is not
//! backfilled; its change-log rows are moved to the new name and the old name is remembered as an alias.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::schema::{self, TableInfo};
use super::{
    APPLIED, COLUMNS, CONFLICTS, Capture, CaptureError, LOG, META, PIECES, PREFIX, QUARANTINE,
    RENAMES, TABLES, UNPUBLISHED, ident, key_expr,
};

/// The trigger operations, as they end our trigger names (`__harmonylite__<table>_<op>`).
const OPS: [&str; 3] = ["insert", "update", "delete"];

/// Create our bookkeeping tables (if missing) and (re)create the triggers of every selected table, in one
/// transaction. Safe to run at every start and at any time while applications write.
pub fn install(
    conn: &mut Connection,
    include: &[String],
    exclude: &[String],
) -> Result<Capture, CaptureError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let cap = install_in(&tx, include, exclude, &HashSet::new())?;
    tx.commit()?;
    Ok(cap)
}

/// [`install`] inside the caller's write transaction `tx`. Tables named in `reshaped` (lower-cased: brought to
/// another node's schema change in this transaction) are not backfilled: their rows are the stream's.
pub fn install_in(
    tx: &Transaction<'_>,
    include: &[String],
    exclude: &[String],
    reshaped: &HashSet<String>,
) -> Result<Capture, CaptureError> {
    let captured_before = table_exists(tx, TABLES)?;
    create_tables(tx)?;
    let incarnation = incarnation(tx)?;

    // Our triggers as they are now, by the table they are attached to; then drop them all and re-create those
    // of the selected tables below.
    let triggers = drop_triggers(tx)?;

    let listed_tables = schema::user_tables(tx)?;
    let rebuilding = listed_tables
        .iter()
        .any(|t| super::local::is_rebuild_temporary(&t.name));
    let log_before: i64 = tx.query_row(
        &format!("SELECT coalesce(max(id), 0) FROM {LOG}"),
        [],
        |r| r.get(0),
    )?;
    let (floor, rebuild_log) = rebuild_floor(tx, rebuilding, log_before)?;
    // A schema change made here is logged before any backfill: the rows it reads have the new shape.
    super::ddl::log_local(tx, include, exclude)?;
    let mut backfilled = false;
    let mut tables = Vec::new();
    for listed in listed_tables {
        if !schema::selected(&listed.name, include, exclude) {
            continue;
        }
        let quiet = reshaped.contains(&listed.name.to_lowercase());
        let (info, filled) = capture_table(tx, listed, &triggers, captured_before && !quiet)?;
        backfilled |= filled;
        tables.push(info);
    }
    if backfilled {
        record_backfill(tx, &floor, rebuild_log.unwrap_or(log_before))?;
    }
    if !rebuilding {
        tx.execute(
            &format!("DELETE FROM {META} WHERE key LIKE 'rebuild_floor:%' OR key = 'rebuild_log'"),
            [],
        )?;
    }
    let known = known(tx)?;
    let schema_version = super::schema_version(tx)?;
    Ok(Capture::new(tables, known, incarnation, schema_version))
}

/// Create our bookkeeping tables when missing, and add the columns an earlier version's journal lacks.
fn create_tables(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {LOG} (id INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k);
         CREATE TABLE IF NOT EXISTS {TABLES} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS {COLUMNS} (tbl INTEGER NOT NULL, name TEXT NOT NULL,
             PRIMARY KEY (tbl, name)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {RENAMES} (old TEXT PRIMARY KEY, new TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {APPLIED} (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {CONFLICTS} (id INTEGER PRIMARY KEY, recorded_at INTEGER NOT NULL,
             tbl TEXT NOT NULL, row_key TEXT NOT NULL, lost_row TEXT, lost_origin INTEGER NOT NULL,
             lost_seq INTEGER NOT NULL, lost_at INTEGER NOT NULL, winner_origin INTEGER NOT NULL,
             winner_seq INTEGER NOT NULL, winner_at INTEGER NOT NULL, winner_seen INTEGER NOT NULL,
             reason TEXT NOT NULL DEFAULT 'concurrent', index_name TEXT, winner_key TEXT);
         CREATE TABLE IF NOT EXISTS {QUARANTINE} (id INTEGER PRIMARY KEY, quarantined_at INTEGER NOT NULL,
             stream TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL, payload BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS {PIECES} (id INTEGER PRIMARY KEY, value TEXT NOT NULL, off INTEGER NOT NULL,
             origin INTEGER NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, pass INTEGER NOT NULL,
             staged_at INTEGER NOT NULL, data BLOB NOT NULL);
         CREATE UNIQUE INDEX IF NOT EXISTS {PIECES}_value ON {PIECES}(value, off);
         CREATE TABLE IF NOT EXISTS {UNPUBLISHED} (id INTEGER PRIMARY KEY, set_aside_at INTEGER NOT NULL,
             tbl INTEGER NOT NULL, k, table_name TEXT, log_id INTEGER NOT NULL UNIQUE, reason TEXT NOT NULL);"
    ))?;
    // A journal made by an earlier version lacks the columns of unique collisions.
    let has_reason: i64 = tx.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{CONFLICTS}') WHERE name = 'reason'"),
        [],
        |r| r.get(0),
    )?;
    if has_reason == 0 {
        tx.execute_batch(&format!(
            "ALTER TABLE {CONFLICTS} ADD COLUMN reason TEXT NOT NULL DEFAULT 'concurrent';
             ALTER TABLE {CONFLICTS} ADD COLUMN index_name TEXT;
             ALTER TABLE {CONFLICTS} ADD COLUMN winner_key TEXT;"
        ))?;
    }
    Ok(())
}

/// Our triggers as they are now, by the (lowercased) table they are attached to; every one of them dropped.
fn drop_triggers(tx: &Transaction<'_>) -> rusqlite::Result<HashMap<String, Vec<String>>> {
    let mut triggers: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut stmt = tx.prepare(
            "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 15) = ?1",
        )?;
        let rows = stmt.query_map([PREFIX], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (name, table) = row?;
            triggers.entry(table.to_lowercase()).or_default().push(name);
        }
    }
    for name in triggers.values().flatten() {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(name)))?;
    }
    Ok(triggers)
}

/// Capture one selected table: described, its rename followed or its rows backfilled (as the `triggers` it had
/// tell), its columns remembered, its triggers created. Also whether it was backfilled.
fn capture_table(
    tx: &Transaction<'_>,
    listed: schema::ListedTable,
    triggers: &HashMap<String, Vec<String>>,
    captured_before: bool,
) -> Result<(TableInfo, bool), CaptureError> {
    let (columns, key) = schema::describe(tx, &listed)?;
    let id = table_id(tx, &listed.name)?;
    let info = TableInfo::new(id, listed.name, columns, key);
    let had = triggers
        .get(&info.name.to_lowercase())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut backfilled = false;
    match continuous_origin(had) {
        Some(origin) if !origin.eq_ignore_ascii_case(&info.name) => {
            adopt_renamed(tx, &origin, &info)?;
        }
        Some(_) => {}
        None if captured_before => {
            backfill(tx, &info)?;
            backfilled = true;
        }
        None => {}
    }
    for c in &info.columns {
        tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {COLUMNS}(tbl, name) VALUES(?1, ?2)"
        ))?
        .execute(rusqlite::params![id, c])?;
    }
    tx.execute_batch(&trigger_sql(&info))?;
    Ok((info, backfilled))
}

/// After a backfill, what its rows hold: the node's own changes up to change-log id `own_upto`, and per stream
/// the applied positions of `floor`.
fn record_backfill(
    tx: &Transaction<'_>,
    floor: &std::collections::BTreeMap<String, u64>,
    own_upto: i64,
) -> rusqlite::Result<()> {
    // What the backfilled rows' values hold at least: the applied positions now, or, for a rebuild made in
    // steps, when its temporary table was first seen (the copy then made misses what was applied since).
    tx.execute(
        &format!("DELETE FROM {META} WHERE key LIKE 'backfill_seen:%'"),
        [],
    )?;
    // And the node's own changes they hold: those logged before the rebuild (before its temporary table
    // was first seen, for a rebuild in steps).
    tx.execute(
        &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES('backfill_own_upto', ?1)"),
        [own_upto],
    )?;
    for (stream, seq) in floor {
        tx.execute(
            &format!("INSERT INTO {META}(key, value) VALUES(?1, ?2)"),
            rusqlite::params![format!("backfill_seen:{stream}"), *seq as i64],
        )?;
    }
    Ok(())
}

fn table_exists(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The change log's incarnation: read, or created on the first install.
fn incarnation(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    let found: Option<i64> = tx
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'incarnation'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = found {
        return Ok(v as u64);
    }
    let r = crate::ids::random_bytes();
    let v = (u64::from_le_bytes(r[..8].try_into().expect("8 bytes")) >> 1) as i64;
    tx.execute(
        &format!("INSERT INTO {META}(key, value) VALUES('incarnation', ?1)"),
        [v],
    )?;
    Ok(v as u64)
}

/// Per stream, the lowest applied position a backfill made now may rely on: the applied positions, lowered to
/// those recorded when a rebuild's temporary table was first seen (`rebuilding`: one exists now, so its
/// position is recorded, or kept when lower). A rebuild in separate steps (Alembic's batch mode) copies the
/// rows in its first step: changes applied after that copy are not in the table it renames into place. Also
/// the change log's highest id when the temporary table was first seen (`log_now` at that install): the node's
/// own changes up to it are in the copy.
fn rebuild_floor(
    tx: &Transaction<'_>,
    rebuilding: bool,
    log_now: i64,
) -> rusqlite::Result<(std::collections::BTreeMap<String, u64>, Option<i64>)> {
    let mut floor: std::collections::BTreeMap<String, u64> = tx
        .prepare(&format!("SELECT stream, seq FROM {APPLIED}"))?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    let recorded: Vec<(String, i64)> = tx
        .prepare(&format!(
            "SELECT substr(key, 15), value FROM {META} WHERE key LIKE 'rebuild_floor:%'"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (stream, seq) in recorded {
        let f = floor.entry(stream).or_insert(u64::MAX);
        *f = (*f).min(seq.max(0) as u64);
    }
    floor.retain(|_, v| *v != u64::MAX);
    let mut rebuild_log: Option<i64> = tx
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'rebuild_log'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    if rebuilding && rebuild_log.is_none() {
        tx.execute(
            &format!("INSERT INTO {META}(key, value) VALUES('rebuild_log', ?1)"),
            [log_now],
        )?;
        rebuild_log = Some(log_now);
    }
    if rebuilding {
        for (stream, seq) in &floor {
            tx.execute(
                &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES(?1, ?2)"),
                rusqlite::params![format!("rebuild_floor:{stream}"), *seq as i64],
            )?;
        }
    }
    Ok((floor, rebuild_log))
}

/// The stable id of table `name`, assigned on first sight.
fn table_id(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached(&format!("INSERT OR IGNORE INTO {TABLES}(name) VALUES(?1)"))?
        .execute([name])?;
    tx.prepare_cached(&format!("SELECT id FROM {TABLES} WHERE name = ?1"))?
        .query_row([name], |r| r.get(0))
}

/// When a table carried all three of our triggers, the table name they were made for (the table's current name,
/// or its name before a rename). `None` when capture was not continuous.
fn continuous_origin(triggers: &[String]) -> Option<String> {
    let mut origin: Option<&str> = None;
    for op in OPS {
        let suffix = format!("_{op}");
        let name = triggers
            .iter()
            .filter_map(|t| t.strip_prefix(PREFIX)?.strip_suffix(&suffix))
            .next()?;
        match origin {
            Some(o) if o != name => return None,
            _ => origin = Some(name),
        }
    }
    origin.map(str::to_string)
}

/// `info` was renamed from `origin` with its triggers attached: its pending change-log rows, written under the
/// old name's id, move to the new id, and the old name becomes an alias for changes still named after it.
fn adopt_renamed(tx: &Transaction<'_>, origin: &str, info: &TableInfo) -> rusqlite::Result<()> {
    let old_id: Option<i64> = tx
        .query_row(
            &format!("SELECT id FROM {TABLES} WHERE name = ?1"),
            [origin],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(old_id) = old_id.filter(|&o| o != info.id) {
        tx.execute(
            &format!("UPDATE {LOG} SET tbl = ?1 WHERE tbl = ?2"),
            [info.id, old_id],
        )?;
        // Backfill rows (negated ids) stay backfill rows.
        tx.execute(
            &format!("UPDATE {LOG} SET tbl = ?1 WHERE tbl = ?2"),
            [-info.id, -old_id],
        )?;
    }
    tx.execute(
        &format!("INSERT OR REPLACE INTO {RENAMES}(old, new) VALUES(?1, ?2)"),
        [origin, &info.name],
    )?;
    tracing::info!(from = origin, to = %info.name, "captured table was renamed; capture follows it");
    Ok(())
}

/// Record every row of `info` in the change log, so rows written while it had no triggers are published. The
/// rows are recorded under the table's id negated: they are a *backfill*, published as conditional rows that
/// cannot win over a newer change from another node (see `docs/DESIGN.md`, "Schema changes").
fn backfill(tx: &Transaction<'_>, info: &TableInfo) -> rusqlite::Result<()> {
    let n = tx.execute(
        &format!(
            "INSERT INTO {LOG}(tbl, k) SELECT {}, {} FROM {}",
            -info.id,
            key_expr(info, &ident(&info.name)),
            ident(&info.name)
        ),
        [],
    )?;
    tracing::info!(table = %info.name, rows = n,
        "table captured (new, or re-created since capture was installed); its existing rows are published \
         as a backfill, which never replaces a newer change from another node");
    Ok(())
}

/// What this database captured at some point: every table name, every column per table name, and renames.
pub struct Known {
    pub tables: HashSet<String>,
    pub columns: HashMap<String, HashSet<String>>,
    pub renames: HashMap<String, String>,
}

fn known(tx: &Transaction<'_>) -> rusqlite::Result<Known> {
    let mut tables = HashSet::new();
    let mut columns: HashMap<String, HashSet<String>> = HashMap::new();
    let mut stmt = tx.prepare(&format!(
        "SELECT t.name, c.name FROM {TABLES} t LEFT JOIN {COLUMNS} c ON c.tbl = t.id"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for row in rows {
        let (t, c) = row?;
        let t = t.to_lowercase();
        if let Some(c) = c {
            columns
                .entry(t.clone())
                .or_default()
                .insert(c.to_lowercase());
        }
        tables.insert(t);
    }
    let mut stmt = tx.prepare(&format!("SELECT old, new FROM {RENAMES}"))?;
    let renames = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?.to_lowercase(),
                r.get::<_, String>(1)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Known {
        tables,
        columns,
        renames,
    })
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
        ins = name(OPS[0]),
        upd = name(OPS[1]),
        del = name(OPS[2]),
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
