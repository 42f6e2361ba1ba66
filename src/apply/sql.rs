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

use super::journal::{self, Last, Recent, Winner};
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
    #[error(
        "refused message: table {table:?} is reserved (HarmonyLite's or SQLite's own); no change from the stream may write it"
    )]
    ReservedTable { table: String },
    #[error("{}", schema_behind_text(.table, .column.as_deref()))]
    SchemaBehind {
        table: String,
        column: Option<String>,
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
            ApplyError::SchemaBehind { .. } => "schema_behind",
            ApplyError::ReservedTable { .. } => "reserved_table",
        }
    }

    /// Whether the message can never apply, on any node, whatever happens later: undecodable (but for a wire
    /// version newer than ours, up to [`crate::wire::NEWEST_PLAUSIBLE_VERSION`], which an upgrade will read),
    /// malformed, or naming a reserved table. Such a
    /// message is quarantined; any other error is waited out.
    pub fn is_poison(&self) -> bool {
        match self {
            ApplyError::Decode(e) => !matches!(**e, WireError::Version(v)
                    if v > crate::wire::VERSION && v <= crate::wire::NEWEST_PLAUSIBLE_VERSION),
            ApplyError::KeyNotShipped { .. }
            | ApplyError::RowWidth { .. }
            | ApplyError::KeyWidth { .. }
            | ApplyError::ReservedTable { .. } => true,
            ApplyError::Sqlite(_) | ApplyError::MustWait | ApplyError::SchemaBehind { .. } => false,
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
    delete: String,
}

fn statements(table: &str, t: &TableChanges, pos: &[usize]) -> Statements {
    let rowid_keyed = t.key.len() == 1 && t.key[0] == "rowid";
    let table = ident(table);
    let cond: Vec<String> = t
        .key
        .iter()
        .zip(pos)
        .map(|(k, p)| format!("{} IS ?{}", col(k, rowid_keyed), p + 1))
        .collect();
    let sets: Vec<String> = (0..t.columns.len())
        .filter(|i| !pos.contains(i))
        .map(|i| format!("{} = ?{}", col(&t.columns[i], rowid_keyed), i + 1))
        .collect();
    let update = (!sets.is_empty()).then(|| {
        format!(
            "UPDATE OR REPLACE {table} SET {} WHERE {}",
            sets.join(", "),
            cond.join(" AND ")
        )
    });
    let cols: Vec<String> = t.columns.iter().map(|c| col(c, rowid_keyed)).collect();
    let params: Vec<String> = (1..=t.columns.len()).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INSERT OR REPLACE INTO {table} ({}) VALUES ({})",
        cols.join(", "),
        params.join(", ")
    );
    let dcond: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} IS ?{}", col(k, rowid_keyed), i + 1))
        .collect();
    let delete = format!("DELETE FROM {table} WHERE {}", dcond.join(" AND "));
    Statements {
        update,
        insert,
        delete,
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
    recent: &mut Recent,
) -> Result<Applied, ApplyError> {
    let set_by = Last {
        seq,
        origin: m.origin,
        at_ms: m.at_ms,
    };
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
        let replayed = m.replayed.contains(&(ti as u32));
        if !selected(&t.table, &cfg.include_tables, &cfg.exclude_tables) {
            // A table this node does not replicate (excluded, or node-local): dropped here.
            out.skipped += t.rows.len() as u64;
            out.dropped += t.rows.len() as u64;
            continue;
        }
        let (local, drop) = match cap.target(&t.table, &t.columns) {
            Target::Table { info, drop } => (info.name.as_str(), drop),
            Target::Dropped => {
                out.skipped += t.rows.len() as u64;
                out.dropped += t.rows.len() as u64;
                continue;
            }
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
            out.skipped += t.rows.len() as u64;
            out.dropped += t.rows.len() as u64;
            continue;
        }
        let t = without_columns(t, &drop);
        let pos = key_positions(&t)?;
        let st = statements(local, &t, &pos);
        for row in &t.rows {
            let key = key_of(&t, &pos, row)?;
            let rk = row_key(&t.table, &key);
            match in_flight.decide(&rk, seq) {
                Decision::Skip => {
                    if m.origin == cfg.node_id {
                        // Our own change, back from the stream: the row's value is the one stored at `seq`.
                        recent.note(rk, set_by);
                    }
                    out.skipped += 1;
                    continue;
                }
                Decision::Wait => return Err(ApplyError::MustWait),
                Decision::Apply => {}
            }
            if let Some(lost) = recent
                .concurrent(&rk, m.origin, m.seen)
                .filter(|_| !replayed)
            {
                let winner = Winner {
                    origin: m.origin,
                    seq,
                    at_ms: m.at_ms,
                    seen: m.seen.unwrap_or(0),
                };
                journal::record(tx, local, &t.key, &key, lost, &winner)?;
                out.conflicts += 1;
            }
            recent.note(rk, set_by);
            match row {
                Row::Upsert(values) => {
                    let changed = match &st.update {
                        Some(u) => tx
                            .prepare_cached(u)?
                            .execute(rusqlite::params_from_iter(values.iter()))?,
                        None => 0,
                    };
                    if changed == 0 {
                        tx.prepare_cached(&st.insert)?
                            .execute(rusqlite::params_from_iter(values.iter()))?;
                    }
                }
                Row::Delete(k) => {
                    tx.prepare_cached(&st.delete)?
                        .execute(rusqlite::params_from_iter(k.iter()))?;
                }
            }
            out.rows += 1;
        }
    }
    Ok(out)
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
