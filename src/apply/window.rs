//! A backfill's window: the rows a stream changed after a backfill's origin read its values and before the
//! backfill itself.
//!
//! A rebuilt table's rows are published as *conditional* rows (`wire::Message::conditional`). Each node applies
//! such a row only when no change to the same row lies in the window `(seen, s)` of its stream, where `seen` is
//! the origin's applied position when it read the values and `s` the backfill's own position; otherwise the row
//! is replaced by the window's last change to it (which every node but the origin holds already, and which the
//! origin may have lost in its own rebuild). Every node reads the same window from the same stream, so every
//! node decides the same; the rule and why it reverts nothing is in `docs/DESIGN.md`, "Schema changes". The
//! window is read once per backfill message, before the apply transaction begins (no lock is held while
//! reading); the origin holds it in the stream until every node has handled the backfill (`Counters::hold`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::sql;
use crate::conflict::RowKey;
use crate::wire::{self, Message, Row, TableChanges};

/// How long one window read may take before it is tried again.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a window holds for the tables of one backfill.
#[derive(Debug, Default)]
pub struct Touched {
    /// The window's stream positions read: `(seen, upto)` (exclusive at both ends).
    pub seen: u64,
    pub upto: u64,
    /// Lower-cased names of the tables whose rows are collected.
    pub tables: HashSet<String>,
    /// Row keys (lower-cased table name) changed in the window, with the last change to each.
    pub last: HashMap<RowKey, Change>,
    /// False when part of the window had already left the stream: nothing can be proven, so no conditional row
    /// of the backfill is applied (said at WARN).
    pub complete: bool,
}

/// A change in a window: the row, and its group's table, columns and key columns (without rows).
#[derive(Debug, Clone)]
pub struct Change {
    pub group: Arc<TableChanges>,
    pub row: Row,
}

impl Touched {
    /// Whether this window answers for a backfill message at `seq` whose origin had seen `seen`, for `tables`.
    pub fn covers(&self, seen: u64, seq: u64, tables: &HashSet<String>) -> bool {
        self.seen == seen && self.upto == seq && tables.is_subset(&self.tables)
    }
}

/// Lower-cased names of the conditional groups' tables of `m`.
pub fn conditional_tables(m: &Message) -> HashSet<String> {
    m.tables
        .iter()
        .enumerate()
        .filter(|(i, _)| m.is_conditional(*i))
        .map(|(_, t)| t.table.to_lowercase())
        .collect()
}

/// The last change `m` makes to each row of `tables` (table names lower-cased), over what `into` holds.
pub fn collect(m: Message, tables: &HashSet<String>, into: &mut HashMap<RowKey, Change>) {
    for mut t in m.tables {
        let name = t.table.to_lowercase();
        if !tables.contains(&name) {
            continue;
        }
        let Some(keys) = sql::row_keys_named(&t, &name) else {
            continue;
        };
        let rows = std::mem::take(&mut t.rows);
        let group = Arc::new(t);
        for (k, row) in keys.into_iter().zip(rows) {
            into.insert(
                k,
                Change {
                    group: group.clone(),
                    row,
                },
            );
        }
    }
}

/// `m` with its conditional rows decided by window `w`: a row no change in the window touched stays (as an
/// ordinary row); a row the window changed is replaced by the window's last change to it (none at all when the
/// window is incomplete). Returns the message, now without conditional groups, and how many rows were
/// superseded. Replacement groups are listed in the message's `replayed` (not journaled as conflicts: every
/// node but the origin holds those values already).
pub fn decide(m: &Message, w: &Touched) -> (Message, u64) {
    let mut out = m.clone();
    out.tables = Vec::with_capacity(m.tables.len());
    out.conditional = Vec::new();
    out.replayed = Vec::new();
    let mut superseded = 0u64;
    let mut replacements: Vec<(Arc<TableChanges>, Vec<Row>)> = Vec::new();
    for (i, t) in m.tables.iter().enumerate() {
        if !m.is_conditional(i) {
            out.tables.push(t.clone());
            continue;
        }
        let keys = sql::row_keys_named(t, &t.table.to_lowercase());
        let mut kept = Vec::new();
        for (j, row) in t.rows.iter().enumerate() {
            let key = keys.as_ref().map(|k| &k[j]);
            let change = key.and_then(|k| w.last.get(k));
            if w.complete && key.is_some() && change.is_none() {
                kept.push(row.clone());
                continue;
            }
            superseded += 1;
            if let Some(c) = change.filter(|_| w.complete) {
                match replacements
                    .iter_mut()
                    .find(|(g, _)| Arc::ptr_eq(g, &c.group))
                {
                    Some((_, rows)) => rows.push(c.row.clone()),
                    None => replacements.push((c.group.clone(), vec![c.row.clone()])),
                }
            }
        }
        if !kept.is_empty() {
            out.tables.push(TableChanges {
                table: t.table.clone(),
                columns: t.columns.clone(),
                key: t.key.clone(),
                rows: kept,
            });
        }
    }
    for (g, rows) in replacements {
        out.replayed.push(out.tables.len() as u32);
        out.tables.push(TableChanges {
            table: g.table.clone(),
            columns: g.columns.clone(),
            key: g.key.clone(),
            rows,
        });
    }
    (out, superseded)
}

/// Read the window `(seen, before)` of `stream` for `tables`, extending `prev` when it is the same backfill's
/// window read up to an earlier message.
pub async fn read(
    js: &jetstream::Context,
    stream_name: &str,
    seen: u64,
    before: u64,
    tables: HashSet<String>,
    prev: Option<&Touched>,
) -> Result<Touched, String> {
    let mut out = match prev {
        Some(p) if p.seen == seen && p.upto <= before && tables.is_subset(&p.tables) => Touched {
            seen,
            upto: p.upto,
            tables: p.tables.clone(),
            last: p.last.clone(),
            complete: p.complete,
        },
        _ => Touched {
            seen,
            upto: seen + 1,
            tables,
            last: HashMap::new(),
            complete: true,
        },
    };
    // Positions `out.upto ..before` remain to be read (`seen + 1 ..` at first).
    let from = out.upto;
    out.upto = before;
    if from >= before || !out.complete {
        return Ok(out);
    }
    tokio::time::timeout(
        READ_TIMEOUT,
        read_range(js, stream_name, from, before, &mut out),
    )
    .await
    .map_err(|_| format!("no answer within {} s", READ_TIMEOUT.as_secs()))??;
    Ok(out)
}

async fn read_range(
    js: &jetstream::Context,
    stream_name: &str,
    from: u64,
    before: u64,
    out: &mut Touched,
) -> Result<(), String> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| e.to_string())?;
    let first = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .first_sequence;
    if first > from {
        tracing::warn!(
            stream = stream_name,
            needed = from,
            first_available = first,
            "part of a backfill's window has left the stream; its rows are not applied on this node"
        );
        out.complete = false;
        return Ok(());
    }
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let name = c.cached_info().name.clone();
    let r = async {
        let mut messages = c
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut read = 0u64;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq >= before {
                break;
            }
            read += 1;
            if let Ok(msg) = wire::decode(&m.message.payload) {
                collect(msg, &out.tables, &mut out.last);
            }
            if seq + 1 >= before {
                break;
            }
        }
        tracing::debug!(
            stream = stream_name,
            from,
            before,
            messages = read,
            rows = out.last.len(),
            "backfill window read"
        );
        Ok::<(), String>(())
    }
    .await;
    let _ = stream.delete_consumer(&name).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Value;

    fn group(table: &str, rows: Vec<Row>) -> TableChanges {
        TableChanges {
            table: table.into(),
            columns: vec!["id".into(), "v".into()],
            key: vec!["id".into()],
            rows,
        }
    }

    fn up(id: i64, v: &str) -> Row {
        Row::Upsert(vec![Value::Integer(id), Value::Text(v.into())])
    }

    fn message(tables: Vec<TableChanges>, conditional: Vec<u32>) -> Message {
        Message {
            origin: 3,
            unit: "u".into(),
            part: 1,
            last: true,
            schema: 0,
            tables,
            seen: Some(10),
            at_ms: 0,
            conditional,
            replayed: Vec::new(),
        }
    }

    /// The window saw row 1 updated and row 2 deleted (under another letter case of the table's name): the
    /// backfill keeps only row 3, and rows 1 and 2 become the window's last changes.
    #[test]
    fn rows_the_window_changed_are_replaced_by_its_last_change() {
        let tables: HashSet<String> = ["items".to_string()].into();
        let mut w = Touched {
            seen: 10,
            upto: 20,
            tables: tables.clone(),
            complete: true,
            ..Touched::default()
        };
        collect(
            message(
                vec![group("Items", vec![up(1, "newer"), up(2, "x")])],
                vec![],
            ),
            &tables,
            &mut w.last,
        );
        collect(
            message(
                vec![
                    TableChanges {
                        key: vec!["id".into()],
                        columns: vec!["id".into()],
                        table: "items".into(),
                        rows: vec![Row::Delete(vec![Value::Integer(2)])],
                    },
                    group("other", vec![up(3, "elsewhere")]),
                ],
                vec![],
            ),
            &tables,
            &mut w.last,
        );
        assert_eq!(w.last.len(), 2);
        let backfill = message(
            vec![
                group("other", vec![up(9, "plain")]),
                group("items", vec![up(1, "stale"), up(2, "stale"), up(3, "kept")]),
            ],
            vec![1],
        );
        let (out, superseded) = decide(&backfill, &w);
        assert_eq!(superseded, 2);
        assert!(out.conditional.is_empty());
        assert_eq!(out.tables[0], group("other", vec![up(9, "plain")]));
        assert_eq!(out.tables[1], group("items", vec![up(3, "kept")]));
        let replaced: Vec<&Row> = out.tables[2..].iter().flat_map(|t| &t.rows).collect();
        assert_eq!(replaced.len(), 2);
        assert!(replaced.contains(&&up(1, "newer")));
        assert!(replaced.contains(&&Row::Delete(vec![Value::Integer(2)])));
        assert_eq!(out.replayed.len(), 2);

        // A window partly gone from the stream proves nothing: no backfill row is applied.
        w.complete = false;
        let (out, superseded) = decide(&backfill, &w);
        assert_eq!(superseded, 3);
        assert_eq!(out.tables, vec![group("other", vec![up(9, "plain")])]);
    }
}
