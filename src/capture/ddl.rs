//! Schema changes as they replicate: the shared schema objects of a database, what changed between two looks at
//! them, and bringing another database's objects to the changed shape.
//!
//! SQLite has no hook for DDL, and the statements that made a change (typed in the `sqlite3` CLI, run by a
//! migration tool, split over several transactions) are not known afterwards: what is known is `sqlite_master`
//! before and after. So a change is described by its result, object by object ([`diff`]): an object created
//! (its SQL as `sqlite_master` holds it), dropped, a table renamed, or a table whose SQL went from one text to
//! another. A receiver brings its own objects to that result ([`apply`]) with the statements SQLite itself would
//! have used where it can tell them (`ADD COLUMN`, `RENAME COLUMN`, `DROP COLUMN`, `RENAME TO`), so its rows stay
//! in place and the text in its `sqlite_master` ends identical; otherwise (a table rebuilt by a migration tool,
//! a constraint changed) it rebuilds the table with the exact SQL and copies the columns both shapes share.
//! Every object a change touches is then compared with the result; a difference is an error, never a silent
//! split.
//!
//! Shared objects are the tables that replicate ([`super::local::selected`]), their indexes and user triggers,
//! and views; never SQLite's own objects, ours (`__harmonylite__*`), or those of node-local tables.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::schema::ident;
use super::{LOG, META, PREFIX, TABLES};

pub use crate::wire::{ObjectKind as Kind, SchemaChange as Change, SchemaObject as Object};

impl Kind {
    fn keyword(self) -> &'static str {
        match self {
            Kind::Table => "TABLE",
            Kind::Index => "INDEX",
            Kind::View => "VIEW",
            Kind::Trigger => "TRIGGER",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "table" => Some(Kind::Table),
            "index" => Some(Kind::Index),
            "view" => Some(Kind::View),
            "trigger" => Some(Kind::Trigger),
            _ => None,
        }
    }
}

/// The shared schema of a database: its objects and `PRAGMA user_version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub objects: Vec<Object>,
    pub user_version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{kind:?} {name} names a reserved object (sqlite_* or {PREFIX}*)")]
    Reserved { kind: Kind, name: String },
    #[error("not one CREATE statement: {0:?}")]
    NotCreate(String),
    #[error("{what}: this node's schema ends as {here:?}, the change made it {wanted:?}")]
    Differs {
        what: String,
        here: Option<String>,
        wanted: Option<String>,
    },
}

/// The change log's table id of a row that is a schema change (its key column holds the changes as JSON).
pub const LOGGED: i64 = 0;

/// Whether schema changes replicate for this database (`[ddl] enabled`, recorded by [`set_enabled`]).
pub fn enabled(conn: &Connection) -> rusqlite::Result<bool> {
    let v: Option<i64> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'ddl'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v == Some(1))
}

/// The shared schema last replicated (sent or applied), when recorded.
fn recorded(conn: &Connection) -> rusqlite::Result<Option<Shared>> {
    let text: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'ddl_schema'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Record `conn`'s shared schema as the one last replicated.
pub fn record(conn: &Connection, include: &[String], exclude: &[String]) -> rusqlite::Result<()> {
    let now = shared(conn, include, exclude)?;
    conn.execute(
        &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES('ddl_schema', ?1)"),
        [serde_json::to_string(&now).expect("a schema serialises")],
    )?;
    Ok(())
}

/// Turn schema replication on or off for this database (at start, from `[ddl] enabled`). Turned on, the schema
/// as it is now is where changes are counted from; turned off, nothing is remembered.
pub fn set_enabled(
    conn: &Connection,
    on: bool,
    include: &[String],
    exclude: &[String],
) -> rusqlite::Result<()> {
    if !on {
        conn.execute(
            &format!("DELETE FROM {META} WHERE key IN ('ddl', 'ddl_schema', 'ddl_own')"),
            [],
        )?;
        return super::ddl_hold::forget(conn);
    }
    if recorded(conn)?.is_none() || !enabled(conn)? {
        record(conn, include, exclude)?;
    }
    conn.execute(
        &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES('ddl', 1)"),
        [],
    )?;
    Ok(())
}

/// With schema replication on: the changes made here since the schema last replicated, logged as one change-log
/// row (published in order with the rows around it), and the schema recorded as replicated. Runs inside every
/// install, before any backfill.
pub fn log_local(
    conn: &Connection,
    include: &[String],
    exclude: &[String],
) -> rusqlite::Result<()> {
    if !enabled(conn)? {
        return Ok(());
    }
    let now = shared(conn, include, exclude)?;
    let Some(before) = recorded(conn)? else {
        return record(conn, include, exclude);
    };
    let (changes, local) = super::ddl_hold::kept_local(conn, diff(&before, &now))?;
    if changes.is_empty() && local.is_empty() {
        return Ok(());
    }
    if !local.is_empty() {
        tracing::info!(
            changes = %super::ddl_hold::describe(&local),
            "schema changed here on a table a schema change from another node is held on: this node's fix, \
             kept local (the held change is tried again)"
        );
    }
    if !changes.is_empty() {
        tracing::info!(
            changes = changes.len(),
            "schema changed here; the change is sent to every node"
        );
        conn.execute(
            &format!("INSERT INTO {LOG}(tbl, k) VALUES({LOGGED}, ?1)"),
            [serde_json::to_string(&changes).expect("changes serialise")],
        )?;
        records_after(conn, conn.last_insert_rowid())?;
        let mut own = own_pending(conn)?;
        own.push(changes);
        set_own_pending(conn, &own)?;
    }
    conn.execute(
        &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES('ddl_schema', ?1)"),
        [serde_json::to_string(&now).expect("a schema serialises")],
    )?;
    Ok(())
}

/// This node's own schema changes that have not come back from the stream yet, in the order it made them: in
/// stream order they come after any change from another node that arrives now.
fn own_pending(conn: &Connection) -> rusqlite::Result<Vec<Vec<Change>>> {
    let text: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'ddl_own'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

fn set_own_pending(conn: &Connection, own: &[Vec<Change>]) -> rusqlite::Result<()> {
    if own.is_empty() {
        conn.execute(&format!("DELETE FROM {META} WHERE key = 'ddl_own'"), [])?;
    } else {
        conn.execute(
            &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES('ddl_own', ?1)"),
            [serde_json::to_string(own).expect("changes serialise")],
        )?;
    }
    Ok(())
}

/// This node's oldest own schema change came back from the stream (they come back in the order they were
/// made, all on the first shard): no longer pending. `changes` is the change as it was sent; the pending one
/// may have been rebased since (see [`rebased`]).
pub fn own_returned(conn: &Connection, changes: &[Change]) -> rusqlite::Result<()> {
    let mut own = own_pending(conn)?;
    if own.is_empty() {
        return Ok(());
    }
    let first = own.remove(0);
    if first.len() != changes.len() {
        tracing::debug!(
            pending = first.len(),
            returned = changes.len(),
            "an own schema change came back other than the oldest pending one"
        );
    }
    set_own_pending(conn, &own)
}

/// Move the change-log rows of the records of applied migrations logged before the schema change `ddl` (a log
/// id) to after it. A migration tool records a migration in the transaction that changes the schema, so its
/// triggers log the record before the install that notices the change logs the change: moved, the record
/// reaches every node with the change, never before it.
fn records_after(conn: &Connection, ddl: i64) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT id, name FROM {TABLES}"))?;
    let ids: Vec<i64> = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .filter_map(|r| match r {
            Ok((id, name)) if super::local::is_migration_record(&name) => Some(Ok(id)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<_>>()?;
    for id in ids {
        let moved = conn.execute(
            &format!(
                "INSERT INTO {LOG}(tbl, k) SELECT tbl, k FROM {LOG} WHERE tbl = ?1 AND id < ?2 ORDER BY id"
            ),
            [id, ddl],
        )?;
        if moved > 0 {
            conn.execute(
                &format!("DELETE FROM {LOG} WHERE tbl = ?1 AND id < ?2"),
                [id, ddl],
            )?;
        }
    }
    Ok(())
}

/// The tables (lower-cased) `changes` create or reshape here: their rows come from the stream.
pub fn reshaped(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Create(o) if o.kind == Kind::Table => Some(o.name.to_lowercase()),
            Change::Rename { to, .. } => Some(to.to_lowercase()),
            Change::Alter { table, .. } => Some(table.to_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether an object name is SQLite's or ours: nothing from another node may create, alter or drop it.
pub fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("sqlite_") || lower.starts_with(PREFIX)
}

/// The shared objects of `conn`'s main schema under `include` / `exclude`, in a stable order.
pub fn shared(
    conn: &Connection,
    include: &[String],
    exclude: &[String],
) -> rusqlite::Result<Shared> {
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut objects = Vec::new();
    for row in rows {
        let (kind, name, table, sql) = row?;
        let Some(kind) = Kind::parse(&kind) else {
            continue;
        };
        if is_reserved(&name) || is_reserved(&table) {
            continue;
        }
        // A view is shared unless its own name is node-local; everything else follows its table.
        let owner = if kind == Kind::View { &name } else { &table };
        if !super::local::selected(owner, include, exclude) {
            continue;
        }
        objects.push(Object {
            kind,
            name,
            table,
            sql,
        });
    }
    let user_version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(Shared {
        objects,
        user_version,
    })
}

/// What changed from `before` to `after`, in the order a receiver applies it.
pub fn diff(before: &Shared, after: &Shared) -> Vec<Change> {
    let key = |o: &Object| (o.kind, o.name.to_ascii_lowercase());
    let old: BTreeMap<_, &Object> = before.objects.iter().map(|o| (key(o), o)).collect();
    let new: BTreeMap<_, &Object> = after.objects.iter().map(|o| (key(o), o)).collect();
    let mut gone: Vec<&Object> = old
        .iter()
        .filter(|(k, _)| !new.contains_key(k))
        .map(|(_, o)| *o)
        .collect();
    let mut created: Vec<&Object> = new
        .iter()
        .filter(|(k, _)| !old.contains_key(k))
        .map(|(_, o)| *o)
        .collect();
    let mut out = Vec::new();
    // A table gone and one created whose SQL is the same but for the name: renamed. (Its indexes and triggers
    // keep their names; their SQL, naming the new table, is replaced where the rename did not already.)
    gone.retain(|g| {
        if g.kind != Kind::Table {
            return true;
        }
        let Some(i) = created
            .iter()
            .position(|c| c.kind == Kind::Table && without_name(&c.sql) == without_name(&g.sql))
        else {
            return true;
        };
        let c = created.remove(i);
        out.push(Change::Rename {
            from: g.name.clone(),
            to: c.name.clone(),
            sql: c.sql.clone(),
        });
        false
    });
    // Indexes, views and triggers first dropped, then tables; created in the opposite order.
    gone.sort_by_key(|o| std::cmp::Reverse(o.kind));
    for g in gone {
        out.push(Change::Drop {
            kind: g.kind,
            name: g.name.clone(),
        });
    }
    for (k, o) in &new {
        let Some(was) = old.get(k) else {
            continue;
        };
        if was.sql == o.sql {
            continue;
        }
        out.push(match o.kind {
            Kind::Table => Change::Alter {
                table: o.name.clone(),
                from: was.sql.clone(),
                to: o.sql.clone(),
            },
            _ => Change::Replace((*o).clone()),
        });
    }
    created.sort_by_key(|o| o.kind);
    for c in created {
        out.push(Change::Create(c.clone()));
    }
    if before.user_version != after.user_version {
        out.push(Change::UserVersion(after.user_version));
    }
    out
}

/// Bring `conn`'s objects to the result of `changes` (inside the caller's transaction). Fails, changing
/// nothing the caller keeps, when a change names a reserved object or when an object ends other than the
/// change made it.
pub fn apply(conn: &Connection, changes: &[Change]) -> Result<(), DdlError> {
    for c in changes {
        let (kind, name) = match c {
            Change::Create(o) | Change::Replace(o) => (o.kind, o.name.as_str()),
            Change::Drop { kind, name } => (*kind, name.as_str()),
            Change::Rename { to, .. } => (Kind::Table, to.as_str()),
            Change::Alter { table, .. } => (Kind::Table, table.as_str()),
            Change::UserVersion(_) => continue,
        };
        let from = match c {
            Change::Rename { from, .. } => Some(from.as_str()),
            _ => None,
        };
        for n in std::iter::once(name).chain(from) {
            if is_reserved(n) {
                return Err(DdlError::Reserved {
                    kind,
                    name: n.to_string(),
                });
            }
        }
    }
    // SQLite's current rules for ALTER TABLE (references in triggers, views and foreign keys follow a rename).
    conn.execute_batch("PRAGMA legacy_alter_table = OFF")?;
    let mut own = own_pending(conn)?;
    let own_before = own.clone();
    // Tables brought to another SQL than the change's own result (rebased, see [`alter`]).
    let mut rebased: HashMap<String, String> = HashMap::new();
    for c in changes {
        match c {
            Change::Create(o) => match sql_of(conn, o.kind, &o.name)? {
                None => create(conn, &o.sql)?,
                Some(here) if here == o.sql => {}
                // A table of that name made otherwise here: its rows are not thrown away.
                Some(here) if o.kind == Kind::Table => {
                    return Err(DdlError::Differs {
                        what: format!("table {} (created on another node)", o.name),
                        here: Some(here),
                        wanted: Some(o.sql.clone()),
                    });
                }
                Some(_) => {
                    drop_object(conn, o.kind, &o.name)?;
                    create(conn, &o.sql)?;
                }
            },
            Change::Replace(o) => {
                if sql_of(conn, o.kind, &o.name)?.as_deref() != Some(o.sql.as_str()) {
                    drop_object(conn, o.kind, &o.name)?;
                    create(conn, &o.sql)?;
                }
            }
            Change::Drop { kind, name } => drop_object(conn, *kind, name)?,
            Change::Rename { from, to, .. } => {
                if sql_of(conn, Kind::Table, from)?.is_some()
                    && sql_of(conn, Kind::Table, to)?.is_none()
                {
                    conn.execute_batch(&format!(
                        "ALTER TABLE {} RENAME TO {}",
                        ident(from),
                        ident(to)
                    ))?;
                }
            }
            Change::Alter { table, from, to } => {
                let (ended, chain) = alter(conn, table, from, to, &own_alters(&own, table))?;
                if let Some(chain) = chain {
                    set_own_alters(&mut own, table, chain);
                }
                if ended != *to {
                    rebased.insert(table.to_lowercase(), ended);
                }
            }
            Change::UserVersion(v) => conn.execute_batch(&format!("PRAGMA user_version = {v}"))?,
        }
    }
    check(conn, changes, &rebased)?;
    if own != own_before {
        set_own_pending(conn, &own)?;
    }
    Ok(())
}

/// The (from, to) SQL of this node's own pending changes to `table`, in order.
fn own_alters(own: &[Vec<Change>], table: &str) -> Vec<(String, String)> {
    own.iter()
        .flatten()
        .filter_map(|c| match c {
            Change::Alter { table: t, from, to } if t.eq_ignore_ascii_case(table) => {
                Some((from.clone(), to.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Replace this node's own pending changes to `table` by `chain` (rebased on a change from another node: one
/// per change, in order; `None` for one that no longer applies, taken out).
fn set_own_alters(own: &mut [Vec<Change>], table: &str, chain: Vec<Option<(String, String)>>) {
    let mut chain = chain.into_iter();
    for changes in own.iter_mut() {
        changes.retain_mut(|c| match c {
            Change::Alter { table: t, from, to } if t.eq_ignore_ascii_case(table) => {
                match chain.next().flatten() {
                    Some((f, n)) => {
                        (*from, *to) = (f, n);
                        true
                    }
                    None => false,
                }
            }
            _ => true,
        });
    }
}

/// Every object `changes` touch is as they made it (a table in `rebased`: as its rebased SQL).
fn check(
    conn: &Connection,
    changes: &[Change],
    rebased: &HashMap<String, String>,
) -> Result<(), DdlError> {
    let mut wanted: HashMap<(Kind, String), Option<&str>> = HashMap::new();
    for c in changes {
        match c {
            Change::Create(o) | Change::Replace(o) => {
                wanted.insert((o.kind, o.name.clone()), Some(&o.sql));
            }
            Change::Drop { kind, name } => {
                wanted.insert((*kind, name.clone()), None);
            }
            Change::Rename { from, to, sql } => {
                wanted.insert((Kind::Table, from.clone()), None);
                wanted.insert((Kind::Table, to.clone()), Some(sql));
            }
            Change::Alter { table, to, .. } => {
                let sql = rebased.get(&table.to_lowercase()).unwrap_or(to);
                wanted.insert((Kind::Table, table.clone()), Some(sql));
            }
            Change::UserVersion(_) => {}
        }
    }
    for ((kind, name), want) in wanted {
        let here = sql_of(conn, kind, &name)?;
        if here.as_deref() != want {
            return Err(DdlError::Differs {
                what: format!("{kind:?} {name}"),
                here,
                wanted: want.map(str::to_string),
            });
        }
    }
    Ok(())
}

/// Run the SQL of an object from `sqlite_master`: exactly one `CREATE` statement (a message carrying anything
/// else is refused, never run).
fn create(conn: &Connection, sql: &str) -> Result<(), DdlError> {
    let head: String = sql
        .trim_start()
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_uppercase();
    if head != "CREATE" {
        return Err(DdlError::NotCreate(sql.to_string()));
    }
    // `prepare` refuses a text of more than one statement.
    conn.prepare(sql)?.execute([])?;
    Ok(())
}

/// The SQL of object `name` of `kind`, when it exists.
fn sql_of(conn: &Connection, kind: Kind, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = ?1 AND name = ?2 COLLATE NOCASE",
        [kind.keyword().to_ascii_lowercase(), name.to_string()],
        |r| r.get(0),
    )
    .optional()
}

fn drop_object(conn: &Connection, kind: Kind, name: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "DROP {} IF EXISTS {}",
        kind.keyword(),
        ident(name)
    ))
}

/// Bring table `table` from the SQL `from` to `to`, with the `ALTER TABLE` statements that make it when they
/// do, or by rebuilding it; returns the SQL it ends with. A table that is no longer `from` here was changed by
/// a change before this one in stream order (another node's, applied here) or by one of this node's own that
/// comes after it (`own`, not back from the stream yet): the change is rebased ([`rebased`]). Where it cannot
/// be, the table is not touched and the caller learns how it differs.
///
/// Also returns, when this node's own pending changes were made again on top of it, their rebased chain.
fn alter(
    conn: &Connection,
    table: &str,
    from: &str,
    to: &str,
    own: &[(String, String)],
) -> Result<(String, Option<Chain>), DdlError> {
    let Some(here) = sql_of(conn, Kind::Table, table)? else {
        return Err(DdlError::Differs {
            what: format!("table {table} (not here: dropped or never created)"),
            here: None,
            wanted: Some(from.to_string()),
        });
    };
    if here == to {
        return Ok((here, None));
    }
    let (target, chain) = if here == from {
        (to.to_string(), None)
    } else {
        rebased(table, from, to, &here, own)?
    };
    reshape(conn, table, &here, &target)?;
    Ok((target, chain))
}

/// This node's own pending changes to one table, rebased: (from, to) each, `None` where one no longer applies.
type Chain = Vec<Option<(String, String)>>;

/// Where a change of `table` from `from` to `to` takes the table that is `here`, which is not `from`. Every
/// node ends the same, in stream order: this node's own pending changes (`own`, from `from` to `here`) come
/// after it, so they are made again on top of `to` (each that no longer applies is left out: every other node
/// quarantines it); otherwise the changes before it are already in `here`, and its statements run on it.
fn rebased(
    table: &str,
    from: &str,
    to: &str,
    here: &str,
    own: &[(String, String)],
) -> Result<(String, Option<Chain>), DdlError> {
    let differs = |why: &str| DdlError::Differs {
        what: format!("table {table} ({why})"),
        here: Some(here.to_string()),
        wanted: Some(from.to_string()),
    };
    let chained = own.first().is_some_and(|(f, _)| f == from)
        && own.last().is_some_and(|(_, t)| t == here)
        && own.windows(2).all(|w| w[0].1 == w[1].0);
    if chained {
        let mut sql = to.to_string();
        let mut chain = Vec::with_capacity(own.len());
        for (f, t) in own {
            match statements_between(table, f, t).and_then(|s| run_on(table, &sql, &s)) {
                Some(next) => {
                    chain.push(Some((sql.clone(), next.clone())));
                    sql = next;
                }
                None => {
                    chain.push(None);
                    tracing::warn!(
                    table,
                    from = %f,
                    to = %t,
                    "this node's own schema change no longer applies after an earlier one from another node: \
                     undone here, and quarantined on every other node"
                    );
                }
            }
        }
        return Ok((sql, Some(chain)));
    }
    let statements = statements_between(table, from, to).ok_or_else(|| {
        differs(
            "changed since the change was made, which rebuilt it: it cannot be made again on top",
        )
    })?;
    let sql = run_on(table, here, &statements).ok_or_else(|| {
        differs("changed since the change was made: its statements no longer apply")
    })?;
    Ok((sql, None))
}

/// The `ALTER TABLE` statements that take `table` from the SQL `from` to exactly `to`, when there are.
fn statements_between(table: &str, from: &str, to: &str) -> Option<Vec<String>> {
    let cols_from = columns_of_sql(from).ok()?;
    let cols_to = columns_of_sql(to).ok()?;
    alter_statements(table, from, to, &cols_from, &cols_to)
        .into_iter()
        .find(|way| run_on(table, from, way).as_deref() == Some(to))
}

/// The SQL of `table` made with `sql` after `statements`, on a scratch database; `None` when one fails.
fn run_on(table: &str, sql: &str, statements: &[String]) -> Option<String> {
    let scratch = Connection::open_in_memory().ok()?;
    create(&scratch, sql).ok()?;
    for s in statements {
        scratch.execute_batch(s).ok()?;
    }
    sql_of(&scratch, Kind::Table, table).ok().flatten()
}

/// Bring `table`, whose SQL is `here`, to the SQL `to`: each way of [`alter_statements`] is tried in a
/// savepoint and kept only when the table's SQL ends exactly as `to`; otherwise the table is rebuilt.
fn reshape(conn: &Connection, table: &str, here: &str, to: &str) -> Result<(), DdlError> {
    let cols_here = columns_of(conn, table)?;
    let cols_to = columns_of_sql(to)?;
    for statements in alter_statements(table, here, to, &cols_here, &cols_to) {
        conn.execute_batch("SAVEPOINT hl_alter")?;
        let done = statements.iter().try_for_each(|s| conn.execute_batch(s));
        if done.is_ok() && sql_of(conn, Kind::Table, table)?.as_deref() == Some(to) {
            conn.execute_batch("RELEASE hl_alter")?;
            return Ok(());
        }
        conn.execute_batch("ROLLBACK TO hl_alter; RELEASE hl_alter")?;
    }
    rebuild(conn, table, to, &cols_here, &cols_to)
}

/// The ways (each a list of `ALTER TABLE` statements) that may take a table from `here` to `to`, when the
/// difference is columns added at the end (SQLite appends `, <definition>` before the closing parenthesis), one
/// column renamed (SQLite writes the new name as the statement spells it: bare or quoted), or one dropped; none
/// otherwise.
fn alter_statements(
    table: &str,
    here: &str,
    to: &str,
    cols_here: &[String],
    cols_to: &[String],
) -> Vec<Vec<String>> {
    let t = ident(table);
    if cols_to.len() > cols_here.len() && cols_to[..cols_here.len()] == *cols_here {
        if let Some(close) = here.rfind(')')
            && to.len() > here.len()
            && to.starts_with(&here[..close])
            && to.ends_with(&here[close..])
        {
            let added = &to[close..to.len() - (here.len() - close)];
            if let Some(defs) = added.strip_prefix(", ") {
                return vec![
                    split_top_level(defs)
                        .into_iter()
                        .map(|d| format!("ALTER TABLE {t} ADD COLUMN {d}"))
                        .collect(),
                ];
            }
        }
        return Vec::new();
    }
    if cols_to.len() == cols_here.len() {
        let differ: Vec<usize> = (0..cols_to.len())
            .filter(|&i| cols_to[i] != cols_here[i])
            .collect();
        let [i] = differ[..] else {
            return Vec::new();
        };
        let old = ident(&cols_here[i]);
        let mut ways = Vec::new();
        let bare = &cols_to[i];
        if !bare.is_empty()
            && !bare.starts_with(|c: char| c.is_ascii_digit())
            && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            ways.push(vec![format!(
                "ALTER TABLE {t} RENAME COLUMN {old} TO {bare}"
            )]);
        }
        ways.push(vec![format!(
            "ALTER TABLE {t} RENAME COLUMN {old} TO {}",
            ident(bare)
        )]);
        return ways;
    }
    if cols_to.len() + 1 == cols_here.len()
        && let Some(i) = (0..cols_here.len()).find(|&i| {
            let mut rest = cols_here.to_vec();
            rest.remove(i);
            rest == cols_to
        })
    {
        return vec![vec![format!(
            "ALTER TABLE {t} DROP COLUMN {}",
            ident(&cols_here[i])
        )]];
    }
    Vec::new()
}

/// Rebuild `table` with the SQL `to`: the old table moved aside (references elsewhere left naming `table`),
/// the new one created with the exact SQL, the columns both have copied (rowids too), the old one dropped,
/// and its indexes and triggers that are not part of the change created again.
fn rebuild(
    conn: &Connection,
    table: &str,
    to: &str,
    cols_here: &[String],
    cols_to: &[String],
) -> Result<(), DdlError> {
    let aside = format!("{PREFIX}rebuild");
    let mut stmt = conn.prepare(
        "SELECT sql FROM sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE AND type IN ('index', 'trigger')
         AND sql IS NOT NULL AND name NOT LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'",
    )?;
    let dependents: Vec<String> = stmt
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let keeps_rowid = !to.to_ascii_uppercase().contains("WITHOUT ROWID")
        && conn
            .query_row(
                "SELECT count(*) FROM pragma_table_list WHERE name = ?1 AND wr = 0",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
    conn.execute_batch("PRAGMA legacy_alter_table = ON")?;
    let moved = conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {a}; ALTER TABLE {t} RENAME TO {a}",
        a = ident(&aside),
        t = ident(table)
    ));
    conn.execute_batch("PRAGMA legacy_alter_table = OFF")?;
    moved?;
    create(conn, to)?;
    let common: Vec<String> = cols_to
        .iter()
        .filter(|c| cols_here.iter().any(|h| h.eq_ignore_ascii_case(c)))
        .map(|c| ident(c))
        .collect();
    if !common.is_empty() {
        let list = common.join(", ");
        let (rowid, rowid_sel) = if keeps_rowid {
            ("rowid, ", "rowid, ")
        } else {
            ("", "")
        };
        conn.execute_batch(&format!(
            "INSERT INTO {t} ({rowid}{list}) SELECT {rowid_sel}{list} FROM {a}",
            t = ident(table),
            a = ident(&aside)
        ))?;
    }
    conn.execute_batch(&format!("DROP TABLE {}", ident(&aside)))?;
    for sql in dependents {
        // Those the change replaces are created by its own step; the others come back as they were.
        if let Err(e) = conn.execute_batch(&sql) {
            tracing::debug!(error = %e, sql, "an index or trigger of a rebuilt table was not created again");
        }
    }
    Ok(())
}

/// Column names of table `table` in `conn`, in order.
fn columns_of(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    stmt.query_map([table], |r| r.get(0))?.collect()
}

/// Column names of the table a `CREATE TABLE` statement makes, in order (read from a scratch database).
fn columns_of_sql(sql: &str) -> Result<Vec<String>, DdlError> {
    let scratch = Connection::open_in_memory()?;
    create(&scratch, sql)?;
    let name: String = scratch.query_row(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY rowid LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    Ok(columns_of(&scratch, &name)?)
}

/// A `CREATE TABLE` statement with its table name taken out (to tell a renamed table by its unchanged SQL).
fn without_name(sql: &str) -> String {
    let s = sql.trim_start();
    let Some(after) = strip_keyword(s, "CREATE").and_then(|r| strip_keyword(r, "TABLE")) else {
        return sql.to_string();
    };
    let after = strip_keyword(after, "IF")
        .and_then(|r| strip_keyword(r, "NOT"))
        .and_then(|r| strip_keyword(r, "EXISTS"))
        .unwrap_or(after);
    let rest = skip_name(after.trim_start());
    format!("CREATE TABLE ?{rest}")
}

fn strip_keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let s = s.trim_start();
    let head = s.get(..word.len())?;
    let next = s[word.len()..].chars().next();
    (head.eq_ignore_ascii_case(word) && next.is_none_or(|c| !c.is_alphanumeric() && c != '_'))
        .then(|| &s[word.len()..])
}

/// `s` after the (possibly quoted, possibly schema-qualified) name it starts with.
fn skip_name(s: &str) -> &str {
    let mut rest = s;
    loop {
        let b = rest.as_bytes();
        let end = match b.first() {
            Some(&q @ (b'"' | b'`' | b'\'')) => {
                let mut i = 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                (i + 1).min(b.len())
            }
            Some(b'[') => rest.find(']').map_or(b.len(), |i| i + 1),
            _ => b
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                .unwrap_or(b.len()),
        };
        rest = &rest[end..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => return rest,
        }
    }
}

/// `s` split at its commas outside parentheses and quotes, each part trimmed.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(s[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim().to_string());
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
#[path = "ddl_tests.rs"]
mod tests;
