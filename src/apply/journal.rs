//! The conflict journal: when a change from another node overwrites a row whose value came from a write that
//! node had not seen, the overwritten value is kept in `__harmonylite__conflicts` before it is replaced.
//!
//! Every message carries `seen`, its origin's applied position on the message's stream in the read
//! transaction its values came from (`wire::Message`). The applier remembers, for rows it wrote or skipped as
//! its own echo recently, which stream position last set the row, from which node ([`Recent`]). An incoming
//! change from node X to a row last set at position `p` by another node is *concurrent* when `p > seen`: X
//! wrote without having that value; the value at `p` is lost by last-writer-wins and is journaled. When
//! `p <= seen`, X had the value and replaced it on purpose: a sequential overwrite, not journaled.
//!
//! [`Recent`] is bounded: two generations of at most [`GENERATION_ROWS`] rows, each at most
//! [`GENERATION_AGE`] old. A concurrent overwrite is recognised while its origin was behind by less than that
//! window (milliseconds in practice), and not right after this node restarted. The journal itself keeps
//! `[conflicts] max_rows` entries for `max_age_seconds`. DESIGN.md, "The conflict rule", shows how to read it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::{Transaction, types::ValueRef};
use rustc_hash::FxBuildHasher;

use crate::capture::{CONFLICTS, ident};
use crate::config::ConflictsConfig;
use crate::conflict::RowKey;
use crate::wire::Value;

/// Rows per generation of [`Recent`].
pub const GENERATION_ROWS: usize = 16_384;
/// Age of a generation of [`Recent`] before it is retired.
pub const GENERATION_AGE: Duration = Duration::from_secs(30);

/// Who last set a row, as this node applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub seq: u64,
    pub origin: u64,
    /// When the origin read the value (unix ms by its clock; 0 when unknown).
    pub at_ms: u64,
}

/// The stream position that last set each recently written row.
pub struct Recent {
    current: HashMap<RowKey, Last, FxBuildHasher>,
    previous: HashMap<RowKey, Last, FxBuildHasher>,
    since: Instant,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            current: HashMap::default(),
            previous: HashMap::default(),
            since: Instant::now(),
        }
    }
}

impl Recent {
    pub fn get(&self, key: &RowKey) -> Option<Last> {
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .copied()
    }

    /// `key` was set by `last`.
    pub fn note(&mut self, key: RowKey, last: Last) {
        if self.current.len() >= GENERATION_ROWS || self.since.elapsed() >= GENERATION_AGE {
            self.previous = std::mem::take(&mut self.current);
            self.since = Instant::now();
        }
        self.current.insert(key, last);
    }

    /// Forget what was noted of `key`.
    pub fn forget(&mut self, key: &RowKey) {
        self.current.remove(key);
        self.previous.remove(key);
    }

    /// Whether a change from `origin` that had seen positions up to `seen` overwrites a value it had not seen:
    /// the value's [`Last`] when it does.
    pub fn concurrent(&self, key: &RowKey, origin: u64, seen: Option<u64>) -> Option<Last> {
        let seen = seen?;
        self.get(key)
            .filter(|last| last.origin != origin && last.seq > seen)
    }
}

/// The winning change, for a journal entry.
pub struct Winner {
    pub origin: u64,
    pub seq: u64,
    pub at_ms: u64,
    pub seen: u64,
}

/// Journal the current value of the row of `table` with key columns `key_cols` = `key` (as this transaction
/// sees it; `NULL` when the row does not exist: the lost write was a deletion), which `winner` is about to
/// replace.
#[allow(clippy::too_many_arguments)]
pub fn record(
    tx: &Transaction<'_>,
    table: &str,
    key_cols: &[String],
    key: &[&Value],
    lost: Last,
    winner: &Winner,
) -> rusqlite::Result<()> {
    let rowid_keyed = key_cols.len() == 1 && key_cols[0] == "rowid";
    let cond: Vec<String> = key_cols
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let c = if rowid_keyed {
                "rowid".to_string()
            } else {
                ident(k)
            };
            format!("{c} IS ?{}", i + 1)
        })
        .collect();
    let select = format!(
        "SELECT {}* FROM {} WHERE {}",
        if rowid_keyed { "rowid, " } else { "" },
        ident(table),
        cond.join(" AND ")
    );
    let mut stmt = tx.prepare_cached(&select)?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(key.iter()))?;
    let lost_row = match rows.next()? {
        Some(r) => {
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                obj.insert(n.clone(), json_value(r.get_ref(i)?));
            }
            Some(serde_json::Value::Object(obj).to_string())
        }
        None => None,
    };
    drop(rows);
    let key_json =
        serde_json::Value::Array(key.iter().map(|v| json_of(v)).collect::<Vec<_>>()).to_string();
    insert(
        tx,
        table,
        &key_json,
        lost_row.as_deref(),
        lost,
        winner,
        &Reason::Concurrent,
    )
}

/// Why an entry was journaled (column `reason`).
pub enum Reason<'a> {
    /// A same-key overwrite by a change that had not seen the value.
    Concurrent,
    /// A row of another key took this row's value on a unique index: `index` (its name) and the row that took
    /// it (`by`, a JSON array of its key values).
    Unique { index: &'a str, by: String },
}

/// The JSON array of key values, as the journal's `row_key` holds them.
pub fn key_json<'a>(key: impl IntoIterator<Item = &'a Value>) -> String {
    serde_json::Value::Array(key.into_iter().map(json_of).collect::<Vec<_>>()).to_string()
}

/// A row's values as a JSON object of column → value, as the journal's `lost_row` holds them.
pub fn row_json(columns: &[String], values: &[Value]) -> String {
    let mut obj = serde_json::Map::new();
    for (c, v) in columns.iter().zip(values) {
        obj.insert(c.clone(), json_of(v));
    }
    serde_json::Value::Object(obj).to_string()
}

/// Write one journal entry.
pub fn insert(
    tx: &Transaction<'_>,
    table: &str,
    key_json: &str,
    lost_row: Option<&str>,
    lost: Last,
    winner: &Winner,
    reason: &Reason<'_>,
) -> rusqlite::Result<()> {
    let (why, index, by) = match reason {
        Reason::Concurrent => ("concurrent", None, None),
        Reason::Unique { index, by } => ("unique", Some(*index), Some(by.as_str())),
    };
    tx.prepare_cached(&format!(
        "INSERT INTO {CONFLICTS} (recorded_at, tbl, row_key, lost_row, lost_origin, lost_seq, lost_at, \
         winner_origin, winner_seq, winner_at, winner_seen, reason, index_name, winner_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?
    .execute(rusqlite::params![
        crate::counters::now_ms() as i64,
        table,
        key_json,
        lost_row,
        lost.origin as i64,
        lost.seq as i64,
        lost.at_ms as i64,
        winner.origin as i64,
        winner.seq as i64,
        winner.at_ms as i64,
        winner.seen as i64,
        why,
        index,
        by,
    ])?;
    Ok(())
}

/// Keep the journal within `[conflicts]`: entries older than `max_age_seconds`, and all but the newest
/// `max_rows`, go.
pub fn prune(tx: &Transaction<'_>, cfg: &ConflictsConfig) -> rusqlite::Result<()> {
    let oldest = crate::counters::now_ms().saturating_sub(cfg.max_age_seconds.saturating_mul(1000));
    tx.prepare_cached(&format!(
        "DELETE FROM {CONFLICTS} WHERE recorded_at < ?1 \
         OR id <= (SELECT max(id) FROM {CONFLICTS}) - ?2"
    ))?
    .execute(rusqlite::params![oldest as i64, cfg.max_rows as i64])?;
    Ok(())
}

/// A SQLite value as JSON: numbers and text as themselves, a blob as `{"blob": "<hex>"}`, text that is not
/// UTF-8 as `{"text_hex": "<hex>"}`.
pub(super) fn json_value(v: ValueRef<'_>) -> serde_json::Value {
    use serde_json::{Value as J, json};
    match v {
        ValueRef::Null => J::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => json!(s),
            Err(_) => json!({ "text_hex": hex::encode(t) }),
        },
        ValueRef::Blob(b) => json!({ "blob": hex::encode(b) }),
    }
}

fn json_of(v: &Value) -> serde_json::Value {
    use rusqlite::ToSql;
    match v.to_sql() {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(r)) => json_value(r),
        _ => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> RowKey {
        crate::conflict::row_key("t", &[n])
    }

    #[test]
    fn concurrent_only_when_the_value_was_not_seen_and_came_from_another_node() {
        let mut r = Recent::default();
        r.note(
            key(1),
            Last {
                seq: 10,
                origin: 1,
                at_ms: 5,
            },
        );
        // Node 2 had applied up to 9: it did not have the value from 10.
        assert_eq!(r.concurrent(&key(1), 2, Some(9)).map(|l| l.seq), Some(10));
        // Node 2 had applied 10: a sequential overwrite.
        assert_eq!(r.concurrent(&key(1), 2, Some(10)), None);
        // Node 1 overwriting its own value.
        assert_eq!(r.concurrent(&key(1), 1, Some(3)), None);
        // Unknown `seen` (an old message), unknown row.
        assert_eq!(r.concurrent(&key(1), 2, None), None);
        assert_eq!(r.concurrent(&key(2), 2, Some(0)), None);
    }

    #[test]
    fn generations_bound_what_is_remembered() {
        let mut r = Recent::default();
        let last = Last {
            seq: 1,
            origin: 1,
            at_ms: 0,
        };
        for i in 0..(2 * GENERATION_ROWS + 10) as u32 {
            r.note(crate::conflict::row_key("t", &i.to_le_bytes()), last);
        }
        assert!(r.current.len() + r.previous.len() <= 2 * GENERATION_ROWS);
        // The newest are remembered, the oldest not.
        let newest = (2 * GENERATION_ROWS + 9) as u32;
        assert!(
            r.get(&crate::conflict::row_key("t", &newest.to_le_bytes()))
                .is_some()
        );
        assert!(
            r.get(&crate::conflict::row_key("t", &0u32.to_le_bytes()))
                .is_none()
        );
    }

    #[test]
    fn journal_keeps_the_lost_row_and_prunes() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB);
             INSERT INTO t VALUES (1, 'mine', x'00ff');
             CREATE TABLE {CONFLICTS} (id INTEGER PRIMARY KEY, recorded_at INTEGER NOT NULL,
             tbl TEXT NOT NULL, row_key TEXT NOT NULL, lost_row TEXT, lost_origin INTEGER NOT NULL,
             lost_seq INTEGER NOT NULL, lost_at INTEGER NOT NULL, winner_origin INTEGER NOT NULL,
             winner_seq INTEGER NOT NULL, winner_at INTEGER NOT NULL, winner_seen INTEGER NOT NULL,
             reason TEXT NOT NULL DEFAULT 'concurrent', index_name TEXT, winner_key TEXT);"
        ))
        .unwrap();
        let tx = conn.transaction().unwrap();
        let lost = Last {
            seq: 7,
            origin: 1,
            at_ms: 1000,
        };
        let winner = Winner {
            origin: 2,
            seq: 8,
            at_ms: 1001,
            seen: 6,
        };
        for id in [1, 2] {
            record(
                &tx,
                "t",
                &["id".to_string()],
                &[&Value::Integer(id)],
                lost,
                &winner,
            )
            .unwrap();
        }
        let rows: Vec<(String, Option<String>)> = tx
            .prepare(&format!(
                "SELECT row_key, lost_row FROM {CONFLICTS} ORDER BY id"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[0].0, "[1]");
        assert_eq!(
            rows[0].1.as_deref(),
            Some(r#"{"b":{"blob":"00ff"},"id":1,"v":"mine"}"#)
        );
        assert_eq!(rows[1], ("[2]".to_string(), None), "a lost deletion");
        prune(
            &tx,
            &ConflictsConfig {
                max_age_seconds: 3600,
                max_rows: 1,
            },
        )
        .unwrap();
        let n: i64 = tx
            .query_row(&format!("SELECT count(*) FROM {CONFLICTS}"), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1);
    }
}
