//! Changes held because this node's schema is behind: a unit naming a table or column this node does not have
//! yet waits, whole, and so does every later unit touching a table a held unit touches (the order of each row's
//! changes is kept), while the shard's other changes go on.
//!
//! The shard's recorded position stays before the first held message, so retention keeps it in the stream, a
//! restart delivers it again, and `-verify`, `-wait-replicated` and snapshots see the node as not past it.
//! Held units are tried again once the local schema has been stable for a moment (`SCHEMA_SETTLE`), and every
//! second otherwise.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::{Decoded, ShardState, Stuck, sql};
use crate::counters::{Counters, Total};
use crate::wire::Message;

/// Most messages a shard holds; beyond it the shard stops taking new messages until some are released.
pub const MAX_HELD: usize = 10_000;

/// One held unit (all parts of one publish) and the tables it touches.
pub struct HeldUnit {
    pub msgs: Vec<Decoded>,
    pub tables: HashSet<String>,
    /// Whether it is a schema change (it waits only behind held schema changes, never behind rows).
    pub ddl: bool,
}

impl HeldUnit {
    pub fn first_seq(&self) -> u64 {
        self.msgs.first().map_or(0, |d| d.seq)
    }
}

/// Why a table is held: the missing table (or column) first named, or the schema change that does not apply
/// here, and since when.
#[derive(Debug, Clone)]
pub struct Cause {
    pub table: String,
    pub column: Option<String>,
    /// A held schema change: what it is and why it does not apply.
    pub change: Option<String>,
    pub since: Instant,
    /// Unix ms of `since`, for the gauges.
    pub since_ms: u64,
    /// Said at ERROR once it lasted longer than `max_stuck_seconds`.
    pub said_error: bool,
}

/// Lower-cased names of every table `msgs` touch (with a schema change, the tables it touches).
pub fn tables_of<'a>(msgs: impl IntoIterator<Item = &'a Decoded>) -> HashSet<String> {
    let mut out = HashSet::new();
    for m in msgs.into_iter().filter_map(|d| d.msg.as_ref().ok()) {
        out.extend(m.tables.iter().map(|t| t.table.to_lowercase()));
        if let Some(ddl) = &m.ddl {
            out.extend(crate::capture::ddl_hold::tables_of(&ddl.changes));
        }
    }
    out
}

/// Whether `msgs` carry a schema change.
pub fn is_ddl<'a>(msgs: impl IntoIterator<Item = &'a Decoded>) -> bool {
    msgs.into_iter()
        .any(|d| d.msg.as_ref().is_ok_and(|m: &Message| m.ddl.is_some()))
}

/// What a shard holds, per lower-cased table: (rows held, since when in unix ms).
pub fn gauges(
    units: &[HeldUnit],
    causes: &BTreeMap<String, Cause>,
) -> BTreeMap<String, (u64, u64)> {
    let since = causes.values().map(|c| c.since_ms).min().unwrap_or(0);
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for u in units {
        if u.ddl {
            // A held schema change shows under its tables even before a row waits behind it.
            for t in &u.tables {
                out.entry(t.clone()).or_insert((0, since));
            }
        }
        for d in &u.msgs {
            let Ok(m) = d.message() else { continue };
            for t in &m.tables {
                let e = out.entry(t.table.to_lowercase()).or_insert((0, since));
                e.0 += t.rows.len() as u64;
            }
        }
    }
    for (t, c) in causes {
        if let Some(e) = out.get_mut(t) {
            e.1 = c.since_ms;
        }
    }
    out
}

/// A unit of `s` is held at `f` (a table or column this node lacks, or a schema change that does not apply
/// here): said once per table.
pub(super) fn note(s: &mut ShardState, stats: &Counters, f: &Stuck) {
    if let sql::ApplyError::SchemaHeld { .. } = &f.error {
        return note_change(s, stats, f);
    }
    let sql::ApplyError::SchemaBehind { table, column } = &f.error else {
        tracing::warn!(shard = s.shard, error = %f, "held changes could not be applied yet; retrying");
        return;
    };
    let key = table.to_lowercase();
    if s.causes.contains_key(&key) {
        return;
    }
    stats.add(Total::SchemaPauses, 1);
    stats.error("apply", "schema_behind");
    tracing::warn!(shard = s.shard, stream = %f.stream, seq = f.seq, table = %table,
        column = %column.as_deref().unwrap_or(""),
        "changes held: a change names a table or column this node does not have yet; it and every later change \
         to the tables its transaction touches wait, the rest of the shard goes on. They are applied as soon as \
         the local schema has it");
    s.causes.insert(
        key,
        Cause {
            table: table.clone(),
            column: column.clone(),
            change: None,
            since: Instant::now(),
            since_ms: crate::counters::now_ms(),
            said_error: false,
        },
    );
}

/// A schema change from another node held at `f`: said once per table it touches, with the change and why.
fn note_change(s: &mut ShardState, stats: &Counters, f: &Stuck) {
    let tables: Vec<String> = s
        .held
        .iter()
        .filter(|u| u.ddl && u.msgs.iter().any(|d| d.seq == f.seq))
        .flat_map(|u| u.tables.iter().cloned())
        .filter(|t| !s.causes.contains_key(t))
        .collect();
    if tables.is_empty() {
        return;
    }
    stats.add(Total::SchemaPauses, 1);
    stats.error("apply", f.error.kind());
    tracing::warn!(shard = s.shard, stream = %f.stream, seq = f.seq, tables = %tables.join(","),
        error = %f.error,
        "changes held: a schema change does not apply to this node's schema; it and every later change to the \
         tables it touches wait, the rest goes on. Bring this node's schema (or rows) to what the change \
         expects: a schema change made here to these tables meanwhile is this node's fix and stays local. \
         The held change is tried again every second");
    let since_ms = crate::counters::now_ms();
    for t in tables {
        s.causes.insert(
            t.clone(),
            Cause {
                table: t,
                column: None,
                change: Some(f.error.to_string()),
                since: Instant::now(),
                since_ms,
                said_error: false,
            },
        );
    }
}

/// The shard's pause reason while it holds changes (health and status read it).
pub(super) fn reason(s: &ShardState) -> Option<String> {
    if s.held.is_empty() {
        return None;
    }
    let missing: Vec<String> = s
        .causes
        .values()
        .filter(|c| c.change.is_none())
        .map(|c| match &c.column {
            Some(col) => format!("{}.{col}", c.table),
            None => c.table.clone(),
        })
        .collect();
    let mut why: Vec<String> = Vec::new();
    if !missing.is_empty() {
        why.push(format!("this node has no {} yet", missing.join(", ")));
    }
    let changes: std::collections::BTreeSet<&String> = s
        .causes
        .values()
        .filter_map(|c| c.change.as_ref())
        .collect();
    why.extend(changes.into_iter().cloned());
    let mut tables: Vec<&String> = s.held_tables.iter().collect();
    tables.sort();
    Some(format!(
        "changes held: {}; held tables: {}",
        why.join("; "),
        tables
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The shard's held gauges for metrics, health and status.
pub(super) fn publish(s: &ShardState, stats: &Counters) {
    stats.set_held(s.shard, gauges(&s.held, &s.causes));
    stats.set_schema_paused(s.shard, !s.held.is_empty());
}

/// Say at ERROR, once per missing table, that changes have been held for longer than `max_stuck`.
pub(super) fn say_long(s: &mut ShardState, max_stuck: Duration) {
    for c in s.causes.values_mut() {
        if !c.said_error && c.since.elapsed() > max_stuck {
            c.said_error = true;
            if let Some(change) = &c.change {
                tracing::error!(shard = s.shard, stream = %s.stream, table = %c.table,
                    held_s = c.since.elapsed().as_secs(), error = %change,
                    "changes held for long: a schema change from another node still does not apply to this \
                     node's schema; the stream keeps everything from it on. Bring the table to what the change \
                     expects (see OPERATIONS.md, \"A held schema change\")");
                continue;
            }
            tracing::error!(shard = s.shard, stream = %s.stream, table = %c.table,
                column = %c.column.as_deref().unwrap_or(""), held_s = c.since.elapsed().as_secs(),
                "changes held for long: this node still lacks a table or column other nodes write; \
                 the stream keeps everything from the first held change. Create it, or add the table \
                 to exclude_tables (the held changes are then dropped)");
        }
    }
}
