//! The SQL of applying one message's rows, and the conflict decision per row.
//!
//! An upsert first updates the row by key (`UPDATE OR REPLACE`, only the shipped columns, so a local extra
//! column keeps its value) and inserts it (`INSERT OR REPLACE`) when no row was there. A delete removes the row
//! by key. Rows of tables excluded by `include_tables`/`exclude_tables` are skipped. A message naming one of
//! our own tables (`__harmonylite__*`) or SQLite's (`sqlite_*`) writes nothing: it is refused whole
//! ([`ApplyError::ReservedTable`]) and the applier quarantines it.
//!
//! Every incoming table is first resolved against the local captured schema ([`Capture::target`]): a table or
//! column this node does not have yet stops the message ([`ApplyError::SchemaBehind`]); a table or column
//! this node captured once and has dropped since takes no values; a table renamed here takes the changes still
//! named after its old name.

use std::borrow::Cow;

use rusqlite::Transaction;

use super::journal::{self, Last, Reason, Recent, Winner};
use super::unique::{self, Incoming};
use crate::capture::{Capture, Target, ident, is_reserved_table, schema::selected};
use crate::config::Config;
use crate::conflict::{Decision, InFlight, RowKey};
use crate::wire::{Message, Row, TableChanges, Value, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("malformed message: table {table:?}: key column {column:?} not among the columns")]
    KeyNotShipped { table: String, column: String },
    #[error("malformed message: table {table:?}: row has {values} values for {columns} columns")]
    RowWidth {
        table: String,
        values: usize,
        columns: usize,
    },
    #[error(
        "malformed message: table {table:?}: delete has {values} key values for {columns} key columns"
    )]
    KeyWidth {
        table: String,
        values: usize,
        columns: usize,
    },
    #[error("undecodable message: {0}")]
    Decode(#[source] std::sync::Arc<WireError>),
    #[error("must wait for a local publish")]
    MustWait,
    #[error("reading the change log: {0}")]
    Capture(#[from] crate::capture::CaptureError),
    #[error(
        "refused message: table {table:?} is reserved (HarmonyLite's or SQLite's own); no change from the stream may write it"
    )]
    ReservedTable { table: String },
    #[error("{}", schema_behind_text(.table, .column.as_deref()))]
    SchemaBehind {
        table: String,
        column: Option<String>,
    },
    #[error(
        "large value {id} cannot be assembled: {have} of its {len} bytes are staged here in order, or they do not match what the origin sent"
    )]
    PiecesMissing { id: String, have: u64, len: u64 },
    #[error("schema change from node {origin} does not apply here: {reason}")]
    SchemaChange { origin: u64, reason: String },
    #[error(
        "schema change from node {origin} does not apply to this node's schema, which differs from the one it was made on: {reason}; the change: {statement}"
    )]
    SchemaHeld {
        origin: u64,
        statement: String,
        reason: String,
    },
}

impl ApplyError {
    /// A short name of the kind, for the error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::Sqlite(_) => "sqlite",
            ApplyError::KeyNotShipped { .. } => "key_not_shipped",
            ApplyError::RowWidth { .. } => "row_width",
            ApplyError::KeyWidth { .. } => "key_width",
            ApplyError::Decode(_) => "decode",
            ApplyError::MustWait => "must_wait",
            ApplyError::Capture(_) => "change_log",
            ApplyError::SchemaBehind { .. } => "schema_behind",
            ApplyError::ReservedTable { .. } => "reserved_table",
            ApplyError::PiecesMissing { .. } => "pieces_missing",
            ApplyError::SchemaChange { .. } => "schema_change",
            ApplyError::SchemaHeld { .. } => "schema_change_held",
        }
    }

    /// Whether the message can never apply, whatever happens later: undecodable (but for a wire version newer
    /// than ours, up to [`crate::wire::NEWEST_PLAUSIBLE_VERSION`], which an upgrade will read), malformed,
    /// naming a reserved table, or failing a `CHECK`, `NOT NULL` or trigger `RAISE` of this node's schema. Such a
    /// message is quarantined; any other error is waited out.
    pub fn is_poison(&self) -> bool {
        match self {
            ApplyError::Decode(e) => !matches!(**e, WireError::Version(v)
                    if v > crate::wire::VERSION && v <= crate::wire::NEWEST_PLAUSIBLE_VERSION),
            ApplyError::KeyNotShipped { .. }
            | ApplyError::RowWidth { .. }
            | ApplyError::KeyWidth { .. }
            | ApplyError::ReservedTable { .. }
            | ApplyError::PiecesMissing { .. }
            | ApplyError::SchemaChange { .. } => true,
            // A CHECK, NOT NULL or trigger RAISE this node's schema has and the origin's had not: these values
            // can never be written here.
            ApplyError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_CHECK
                    | rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL
                    | rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER
            ),
            ApplyError::Sqlite(_)
            | ApplyError::MustWait
            | ApplyError::Capture(_)
            | ApplyError::SchemaBehind { .. }
            | ApplyError::SchemaHeld { .. } => false,
        }
    }
}

fn schema_behind_text(table: &str, column: Option<&str>) -> String {
    match column {
        Some(c) => format!(
            "this node's schema is behind: table {table:?} has no column {c:?} here (waiting for the local schema to catch up)"
        ),
        None => format!(
            "this node's schema is behind: no table {table:?} here (waiting for the local schema to catch up)"
        ),
    }
}

/// What applying one message did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub rows: u64,
    /// Own echoes and rows of excluded tables.
    pub skipped: u64,
    /// Rows of tables dropped here (already counted in `skipped`).
    pub dropped: u64,
    /// Overwritten values journaled as conflicts.
    pub conflicts: u64,
}

impl Applied {
    pub fn add(&mut self, o: Applied) {
        self.rows += o.rows;
        self.skipped += o.skipped;
        self.dropped += o.dropped;
        self.conflicts += o.conflicts;
    }
}

/// Positions of the key columns within `columns`.
fn key_positions(t: &TableChanges) -> Result<Vec<usize>, ApplyError> {
    t.key
        .iter()
        .map(|k| {
            t.columns
                .iter()
                .position(|c| c == k)
                .ok_or_else(|| ApplyError::KeyNotShipped {
                    table: t.table.clone(),
                    column: k.clone(),
                })
        })
        .collect()
}

fn key_of<'a>(t: &TableChanges, pos: &[usize], row: &'a Row) -> Result<Vec<&'a Value>, ApplyError> {
    match row {
        Row::Upsert(v) => {
            if v.len() != t.columns.len() {
                return Err(ApplyError::RowWidth {
                    table: t.table.clone(),
                    values: v.len(),
                    columns: t.columns.len(),
                });
            }
            Ok(pos.iter().map(|&p| &v[p]).collect())
        }
        Row::Delete(k) => {
            if k.len() != t.key.len() {
                return Err(ApplyError::KeyWidth {
                    table: t.table.clone(),
                    values: k.len(),
                    columns: t.key.len(),
                });
            }
            Ok(k.iter().collect())
        }
    }
}

fn row_key(table: &str, key: &[&Value]) -> RowKey {
    let mut b = Vec::new();
    for v in key {
        v.write_key_bytes(&mut b);
    }
    crate::conflict::row_key(table, &b)
}

/// Every row key of one table's changes, or `None` when any row is malformed.
pub fn row_keys_of(t: &TableChanges) -> Option<Vec<RowKey>> {
    row_keys_named(t, &t.table)
}

/// [`row_keys_of`], with the keys made under the table name `table`.
pub fn row_keys_named(t: &TableChanges, table: &str) -> Option<Vec<RowKey>> {
    let pos = key_positions(t).ok()?;
    t.rows
        .iter()
        .map(|r| key_of(t, &pos, r).ok().map(|k| row_key(table, &k)))
        .collect()
}

/// Every row key a message touches (malformed rows are left out; applying reports them).
pub fn row_keys(m: &Message) -> Vec<RowKey> {
    let mut out = Vec::new();
    for t in &m.tables {
        let Ok(pos) = key_positions(t) else { continue };
        for r in &t.rows {
            if let Ok(k) = key_of(t, &pos, r) {
                out.push(row_key(&t.table, &k));
            }
        }
    }
    out
}

fn col(name: &str, rowid_keyed: bool) -> String {
    if rowid_keyed && name == "rowid" {
        "rowid".to_string()
    } else {
        ident(name)
    }
}

struct Statements {
    update: Option<String>,
    insert: String,
    /// `INSERT OR ABORT`: fails on any constraint, whatever the table declares.
    insert_abort: String,
    /// With `OR REPLACE`: only when a collision could not be resolved row by row.
    update_replace: Option<String>,
    insert_replace: String,
    delete: String,
    /// Whether the row exists (for tables whose columns are all key columns).
    exists: String,
}

fn statements(table: &str, t: &TableChanges, pos: &[usize], collated: bool) -> Statements {
    let rowid_keyed = t.key.len() == 1 && t.key[0] == "rowid";
    let table = ident(table);
    // The row by its key's exact bytes: under a collated key (`NOCASE`) another spelling is another row.
    let exact = |first: &dyn Fn(usize) -> usize| -> String {
        t.key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let c = col(k, rowid_keyed);
                let p = first(i);
                if collated {
                    format!("{c} IS ?{p} AND {c} IS ?{p} COLLATE BINARY")
                } else {
                    format!("{c} IS ?{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let cond = exact(&|i| pos[i] + 1);
    let sets: Vec<String> = (0..t.columns.len())
        .filter(|i| !pos.contains(i))
        .map(|i| format!("{} = ?{}", col(&t.columns[i], rowid_keyed), i + 1))
        .collect();
    let update = |or: &str| {
        (!sets.is_empty())
            .then(|| format!("UPDATE{or} {table} SET {} WHERE {cond}", sets.join(", ")))
    };
    let cols: Vec<String> = t.columns.iter().map(|c| col(c, rowid_keyed)).collect();
    let params: Vec<String> = (1..=t.columns.len()).map(|i| format!("?{i}")).collect();
    let insert = |or: &str| {
        format!(
            "INSERT{or} INTO {table} ({}) VALUES ({})",
            cols.join(", "),
            params.join(", ")
        )
    };
    let dcond = exact(&|i| i + 1);
    Statements {
        update: update(""),
        insert: insert(""),
        insert_abort: insert(" OR ABORT"),
        update_replace: update(" OR REPLACE"),
        insert_replace: insert(" OR REPLACE"),
        delete: format!("DELETE FROM {table} WHERE {dcond}"),
        exists: format!("SELECT count(*) FROM {table} WHERE {cond}"),
    }
}

/// `t` without the shipped columns at positions `drop` (columns this node dropped).
fn without_columns<'a>(t: &'a TableChanges, drop: &[usize]) -> Cow<'a, TableChanges> {
    if drop.is_empty() {
        return Cow::Borrowed(t);
    }
    let keep = |i: &usize| !drop.contains(i);
    let pick = |v: &[String]| -> Vec<String> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| keep(i))
            .map(|(_, c)| c.clone())
            .collect()
    };
    Cow::Owned(TableChanges {
        table: t.table.clone(),
        columns: pick(&t.columns),
        key: t.key.clone(),
        rows: t
            .rows
            .iter()
            .map(|r| match r {
                Row::Upsert(v) => Row::Upsert(
                    v.iter()
                        .enumerate()
                        .filter(|(i, _)| keep(i))
                        .map(|(_, x)| x.clone())
                        .collect(),
                ),
                Row::Delete(k) => Row::Delete(k.clone()),
            })
            .collect(),
    })
}

/// What the applier keeps between messages.
#[derive(Default)]
pub struct Memory {
    /// Who last set each recently written row (the conflict journal).
    pub recent: Recent,
    /// Unique indexes by table (unique collisions).
    pub uniques: unique::Cache,
    /// Rows whose own change came back (or was passed) in the open transaction: their tracking in
    /// [`InFlight`] ends once it commits ([`Memory::committed`]).
    pub settled: Vec<(RowKey, u64)>,
    /// Whether pieces of large values are staged.
    pub staged: super::pieces::Staged,
    /// Per lower-cased table, the columns schema changes from other nodes added to it here, each with the
    /// schema version of the capture before: a write of ours published with that capture or an older one went
    /// out without them ([`narrowed`]).
    pub narrow: std::collections::HashMap<String, Vec<(i64, Vec<String>)>>,
}

/// Another node's schema change reshaped `tables` here (`old` → `new` capture): writes of ours published with
/// the old capture go out without the columns it added, so in stream order those columns keep what an older
/// change from another node sets, also where that change is skipped for our write: remember them
/// ([`Memory::narrow`]; the last few changes per table).
pub fn narrowed(
    old: &Capture,
    new: &Capture,
    tables: &std::collections::HashSet<String>,
    mem: &mut Memory,
) {
    for t in tables {
        let (Some(before), Some(now)) = (old.table_named(t), new.table_named(t)) else {
            continue;
        };
        let added: Vec<String> = now
            .columns
            .iter()
            .filter(|c| !before.columns.iter().any(|b| b.eq_ignore_ascii_case(c)))
            .cloned()
            .collect();
        if added.is_empty() {
            continue;
        }
        let list = mem.narrow.entry(t.to_lowercase()).or_default();
        list.push((old.schema_version, added));
        if list.len() > 16 {
            list.remove(0);
        }
    }
}

impl Memory {
    /// The open transaction committed: end the tracking of the rows it settled.
    pub fn committed(&mut self, in_flight: &InFlight) {
        for (k, seq) in self.settled.drain(..) {
            in_flight.settle(&k, seq);
        }
    }

    /// The open transaction was rolled back: what it settled is still in flight, and what it noted of the
    /// messages `rolled_back` is forgotten (they are applied again later).
    pub fn rolled_back<M: std::ops::Deref<Target = Message>>(
        &mut self,
        rolled_back: impl IntoIterator<Item = M>,
    ) {
        self.settled.clear();
        self.staged.forget();
        for m in rolled_back {
            for k in row_keys(&m) {
                self.recent.forget(&k);
            }
        }
    }
}

/// Apply one message inside the caller's transaction, against the local schema `cap` (which must be the one
/// this transaction sees). A message with conditional (backfill) rows must have been decided by its window first
/// (`apply::window::decide`).
pub fn apply_message(
    tx: &Transaction<'_>,
    m: &Message,
    seq: u64,
    in_flight: &InFlight,
    cfg: &Config,
    cap: &Capture,
    mem: &mut Memory,
) -> Result<Applied, ApplyError> {
    let mut out = Applied::default();
    // Refused whole, before any row is written.
    if let Some(t) = m.tables.iter().find(|t| is_reserved_table(&t.table)) {
        return Err(ApplyError::ReservedTable {
            table: t.table.clone(),
        });
    }
    if !m.conditional.is_empty() {
        // The applier decides a backfill by its window first; until then nothing can be applied.
        return Err(ApplyError::MustWait);
    }
    for (ti, t) in m.tables.iter().enumerate() {
        let Some((local, t)) = local_table(t, cfg, cap)? else {
            out.skipped += t.rows.len() as u64;
            out.dropped += t.rows.len() as u64;
            continue;
        };
        let pos = key_positions(&t)?;
        // The table's unique indexes are read once per schema version; they are searched only on a collision.
        let uniques = mem.uniques.get(tx, cap.schema_version, local, &t.key)?;
        let st = statements(local, &t, &pos, uniques.key_collated);
        let here = Here {
            tx,
            local,
            t: &t,
            st: &st,
            m,
            seq,
            in_flight,
            cfg,
            cap,
            insert_first: std::cell::Cell::new(false),
        };
        let replayed = m.replayed.contains(&(ti as u32));
        for row in &t.rows {
            here.row(row, &pos, &uniques, replayed, mem, &mut out)?;
        }
    }
    Ok(out)
}

/// Where the changes `t` go here: the local table's name and the changes without the columns this node has
/// dropped; `None` when they have nowhere to go (a table not replicated or dropped here, a key column dropped
/// here), an error when this node's schema is behind.
fn local_table<'a>(
    t: &'a TableChanges,
    cfg: &Config,
    cap: &'a Capture,
) -> Result<Option<(&'a str, Cow<'a, TableChanges>)>, ApplyError> {
    if !selected(&t.table, &cfg.include_tables, &cfg.exclude_tables) {
        // A table this node does not replicate (excluded, or node-local): dropped here.
        return Ok(None);
    }
    let (local, drop) = match cap.target(&t.table, &t.columns) {
        Target::Table { info, drop } => (info.name.as_str(), drop),
        Target::Dropped => return Ok(None),
        Target::Behind { column } => {
            return Err(ApplyError::SchemaBehind {
                table: t.table.clone(),
                column,
            });
        }
    };
    // A key column dropped here: the rows cannot be found, so they have nowhere to go.
    if t.key
        .iter()
        .any(|k| drop.iter().any(|&d| &t.columns[d] == k))
    {
        return Ok(None);
    }
    Ok(Some((local, without_columns(t, &drop))))
}

/// A unique or primary key violation (SQLite undid the statement).
fn is_collision(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// One table's changes of one message, being applied.
struct Here<'a> {
    tx: &'a Transaction<'a>,
    local: &'a str,
    t: &'a TableChanges,
    st: &'a Statements,
    m: &'a Message,
    seq: u64,
    in_flight: &'a InFlight,
    cfg: &'a Config,
    cap: &'a Capture,
    /// Whether the last row written was new here: the next one is then tried as an insert first (one statement
    /// for a new row instead of an update that finds nothing and an insert).
    insert_first: std::cell::Cell<bool>,
}

impl Here<'_> {
    /// The change log this transaction sees, for the conflict rule.
    fn log(&self) -> super::txn::LocalLog<'_> {
        super::txn::LocalLog {
            tx: self.tx,
            cap: self.cap,
        }
    }

    /// One row of the message: skipped (a newer write here, or our own change back), waited for (our own change
    /// to it is being published), or written, with what it overwrote or collided with kept in the journal.
    fn row(
        &self,
        row: &Row,
        pos: &[usize],
        uniques: &unique::TableUniques,
        replayed: bool,
        mem: &mut Memory,
        out: &mut Applied,
    ) -> Result<(), ApplyError> {
        let (tx, t, m, seq, cfg) = (self.tx, self.t, self.m, self.seq, self.cfg);
        let set_by = Last {
            seq,
            origin: m.origin,
            at_ms: m.at_ms,
        };
        let key = key_of(t, pos, row)?;
        let rk = row_key(&t.table, &key);
        let (decision, settles) = self.in_flight.peek(&rk, seq, &self.log())?;
        if settles {
            mem.settled.push((rk.clone(), seq));
        }
        // A large value is assembled only for a row whose values are used here.
        let assembled;
        let row = match row {
            Row::Upsert(values)
                if super::pieces::has_staged(row)
                    && (decision == Decision::Apply
                        || (decision == Decision::Skip
                            && m.origin != cfg.node_id
                            && uniques.any())) =>
            {
                assembled = Row::Upsert(super::pieces::resolve(tx, values, &mut mem.staged)?);
                &assembled
            }
            row => row,
        };
        match decision {
            Decision::Skip => {
                if m.origin == cfg.node_id {
                    // Our own change, back from the stream: the row's value is the one stored at `seq`.
                    mem.recent.note(rk, set_by);
                    // A newer write of ours may have moved the row off a unique value meanwhile, and another
                    // node's row, earlier in the stream, taken it here: in stream order this change takes
                    // the value from that row, so it does here too (the origin's own large values are not
                    // staged here: such a row is left as it is).
                    if let Row::Upsert(values) = row
                        && uniques.any()
                        && !super::pieces::has_staged(row)
                    {
                        out.conflicts += self.displace(uniques, values, &mut mem.recent, None)?;
                    }
                } else if let Row::Upsert(values) = row {
                    if !mem.narrow.is_empty()
                        && let Some(list) = mem.narrow.get(&t.table.to_lowercase())
                        && let Some(v) = self.in_flight.published_with(&rk, &self.log())?
                    {
                        let added: Vec<&String> = list
                            .iter()
                            .filter(|(before, _)| v <= *before)
                            .flat_map(|(_, a)| a)
                            .collect();
                        self.merge_columns(values, pos, &added)?;
                    }
                    if uniques.any() {
                        // Our newer write keeps the row, but what this change took from other rows in stream
                        // order it takes here too.
                        out.conflicts += self.displace(uniques, values, &mut mem.recent, None)?;
                    }
                }
                out.skipped += 1;
                return Ok(());
            }
            Decision::Wait => return Err(ApplyError::MustWait),
            Decision::Apply => {}
        }
        if let Some(lost) = mem
            .recent
            .concurrent(&rk, m.origin, m.seen)
            .filter(|_| !replayed)
        {
            journal::record(tx, self.local, &t.key, &key, lost, &self.winner())?;
            out.conflicts += 1;
        }
        mem.recent.note(rk, set_by);
        match row {
            Row::Upsert(values) => match self.upsert(values) {
                Ok(()) => {}
                Err(e) if is_collision(&e) => {
                    out.conflicts += self.collided(uniques, values, &key, &mut mem.recent)?;
                }
                Err(e) => return Err(e.into()),
            },
            Row::Delete(k) => {
                tx.prepare_cached(&self.st.delete)?
                    .execute(rusqlite::params_from_iter(k.iter()))?;
            }
        }
        out.rows += 1;
        Ok(())
    }

    fn winner(&self) -> Winner {
        Winner {
            origin: self.m.origin,
            seq: self.seq,
            at_ms: self.m.at_ms,
            seen: self.m.seen.unwrap_or(0),
        }
    }

    /// Write the columns `added` of an incoming row skipped for our own newer write, which was published
    /// before this node had them (see [`narrowed`]): in stream order that write left them as this change set
    /// them, as on every other node.
    fn merge_columns(
        &self,
        values: &[Value],
        pos: &[usize],
        added: &[&String],
    ) -> rusqlite::Result<()> {
        let mut sets = Vec::new();
        let mut params: Vec<&Value> = Vec::new();
        for (i, c) in self.t.columns.iter().enumerate() {
            if added.iter().any(|a| a.eq_ignore_ascii_case(c)) {
                params.push(&values[i]);
                sets.push(format!("{} = ?{}", ident(c), params.len()));
            }
        }
        if sets.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::new();
        for &p in pos {
            params.push(&values[p]);
            keys.push(format!("{} = ?{}", ident(&self.t.columns[p]), params.len()));
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            ident(self.local),
            sets.join(", "),
            keys.join(" AND ")
        );
        self.tx.execute(&sql, rusqlite::params_from_iter(params))?;
        Ok(())
    }

    /// Write a row by its key: update it, or insert it when absent. Plain statements: a collision is an error.
    /// After a new row, the next is tried first with `INSERT OR ABORT` (which overrides any `ON CONFLICT`
    /// clause of the table, so it changes nothing when the row is there); when that meets any constraint, the
    /// row is written as before, update first.
    fn upsert(&self, values: &[Value]) -> rusqlite::Result<()> {
        let p = || rusqlite::params_from_iter(values.iter());
        if self.insert_first.get() {
            match self.tx.prepare_cached(&self.st.insert_abort)?.execute(p()) {
                Ok(_) => return Ok(()),
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    self.insert_first.set(false);
                }
                Err(e) => return Err(e),
            }
        }
        let there = match &self.st.update {
            Some(u) => self.tx.prepare_cached(u)?.execute(p())? > 0,
            None => {
                self.tx
                    .prepare_cached(&self.st.exists)?
                    .query_row(p(), |r| r.get::<_, i64>(0))?
                    > 0
            }
        };
        if !there {
            self.tx.prepare_cached(&self.st.insert)?.execute(p())?;
            self.insert_first.set(true);
        }
        Ok(())
    }

    /// The incoming row collides on a unique index with rows of other keys (DESIGN.md, "Unique
    /// collisions"). Rows whose last change is in the stream lose to it: journaled and removed, then the row is
    /// written. A row with our own newer write in flight wins: the incoming row is journaled and its key
    /// removed here, as that write will remove it everywhere. Returns the journal entries written.
    fn collided(
        &self,
        uniques: &unique::TableUniques,
        values: &[Value],
        key: &[&Value],
        recent: &mut Recent,
    ) -> Result<u64, ApplyError> {
        let mut ours = None;
        let n = self.displace(uniques, values, recent, Some(&mut ours))?;
        if let Some((index, by)) = ours {
            let lost = Last {
                seq: self.seq,
                origin: self.m.origin,
                at_ms: self.m.at_ms,
            };
            let winner = Winner {
                origin: self.cfg.node_id,
                seq: 0,
                at_ms: crate::counters::now_ms(),
                seen: 0,
            };
            journal::insert(
                self.tx,
                self.local,
                &journal::key_json(key.iter().copied()),
                Some(&journal::row_json(&self.t.columns, values)),
                lost,
                &winner,
                &Reason::Unique { index: &index, by },
            )?;
            self.tx
                .prepare_cached(&self.st.delete)?
                .execute(rusqlite::params_from_iter(key.iter()))?;
            return Ok(n + 1);
        }
        match self.upsert(values) {
            Ok(()) => Ok(n),
            Err(e) if is_collision(&e) => {
                // A collision the indexes did not show: SQLite resolves it (the row it removes is not journaled).
                tracing::warn!(table = self.local, error = %e,
                    "a unique collision could not be resolved row by row; the incoming row replaces what it collides with");
                let p = || rusqlite::params_from_iter(values.iter());
                let changed = match &self.st.update_replace {
                    Some(u) => self.tx.prepare_cached(u)?.execute(p())?,
                    None => 0,
                };
                if changed == 0 {
                    self.tx
                        .prepare_cached(&self.st.insert_replace)?
                        .execute(p())?;
                }
                Ok(n)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remove (and journal) the rows of other keys the incoming values collide with, but those with our own
    /// newer write in flight: the first of them goes to `ours` (index, its key as JSON) when asked, else they
    /// are left alone. Rows this message writes itself are removed without an entry (a transaction that
    /// swapped two values). Returns the journal entries written.
    fn displace(
        &self,
        uniques: &unique::TableUniques,
        values: &[Value],
        recent: &mut Recent,
        mut ours: Option<&mut Option<(String, String)>>,
    ) -> Result<u64, ApplyError> {
        let row = Incoming {
            columns: &self.t.columns,
            key_cols: &self.t.key,
            values,
        };
        let Some(found) = unique::collisions(self.tx, self.local, uniques, &row)? else {
            return Ok(0);
        };
        let mut n = 0;
        let mut own_rows: Option<Vec<RowKey>> = None;
        for c in &found {
            let refs: Vec<&Value> = c.key.iter().collect();
            let rk = row_key(&self.t.table, &refs);
            match self.in_flight.peek(&rk, self.seq, &self.log())?.0 {
                Decision::Wait => return Err(ApplyError::MustWait),
                Decision::Skip => {
                    if let Some(o) = ours.as_deref_mut()
                        && o.is_none()
                    {
                        *o = Some((c.index.clone(), journal::key_json(c.key.iter())));
                    }
                    continue;
                }
                Decision::Apply => {}
            }
            let written_here = own_rows
                .get_or_insert_with(|| row_keys_named(self.t, &self.t.table).unwrap_or_default())
                .contains(&rk);
            if !written_here {
                let lost = recent.get(&rk).unwrap_or(Last {
                    seq: 0,
                    origin: 0,
                    at_ms: 0,
                });
                journal::insert(
                    self.tx,
                    self.local,
                    &journal::key_json(c.key.iter()),
                    Some(&c.row),
                    lost,
                    &self.winner(),
                    &Reason::Unique {
                        index: &c.index,
                        by: journal::key_json(row.key()),
                    },
                )?;
                n += 1;
            }
            self.tx
                .prepare_cached(&self.st.delete)?
                .execute(rusqlite::params_from_iter(c.key.iter()))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::ApplyError;
    use crate::wire::{self, WireError};

    fn version(v: u8) -> ApplyError {
        ApplyError::Decode(Arc::new(WireError::Version(v)))
    }

    /// A newer wire version waits for an upgrade; a first byte no release will write (garbage such as text)
    /// and an older one are poison.
    #[test]
    fn only_plausible_newer_versions_wait() {
        assert!(!version(wire::VERSION + 1).is_poison());
        assert!(!version(wire::NEWEST_PLAUSIBLE_VERSION).is_poison());
        assert!(version(wire::NEWEST_PLAUSIBLE_VERSION + 1).is_poison());
        assert!(version(b'G').is_poison());
        assert!(version(0).is_poison());
        let garbage = wire::decode(b"GARBAGE, not a message").unwrap_err();
        assert!(ApplyError::Decode(Arc::new(garbage)).is_poison());
    }
}
