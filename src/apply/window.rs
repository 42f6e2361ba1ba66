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

/// Which backfill a window is read for: its `seen`, and the origin's own changes its values already hold
/// (messages of the origin's incarnation whose pass ended at or below `own_upto`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    pub seen: u64,
    pub origin: u64,
    pub incarnation: Option<u64>,
    pub own_upto: u64,
}

impl Backfill {
    pub fn of(m: &Message) -> Backfill {
        Backfill {
            seen: m.seen.unwrap_or(0),
            origin: m.origin,
            incarnation: wire::unit_pass(&m.unit).map(|(i, _)| i),
            own_upto: m.own_upto,
        }
    }

    /// Whether a message of the window is one of the origin's own changes already in the backfill's values.
    fn holds(&self, m: &Message) -> bool {
        m.origin == self.origin
            && wire::unit_pass(&m.unit)
                .is_some_and(|(inc, end)| Some(inc) == self.incarnation && end <= self.own_upto)
    }
}

/// What a window holds for the tables of one backfill.
#[derive(Debug, Default)]
pub struct Touched {
    pub backfill: Backfill,
    /// The window's stream positions read: `(backfill.seen, upto)` (exclusive at both ends).
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
    /// Whether this window answers for backfill `b`'s message at `seq`, for `tables`.
    pub fn covers(&self, b: &Backfill, seq: u64, tables: &HashSet<String>) -> bool {
        self.backfill == *b && self.upto == seq && tables.is_subset(&self.tables)
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

/// The last change `m` makes to each row of `tables` (table names lower-cased), over what `into` holds. The
/// conditional rows of other backfills do not count (each either changed nothing, or equals a value the stream
/// already held), nor do the backfill's origin's own changes its values already hold.
pub fn collect(
    m: Message,
    b: &Backfill,
    tables: &HashSet<String>,
    into: &mut HashMap<RowKey, Change>,
) {
    if b.holds(&m) {
        return;
    }
    let conditional = m.conditional.clone();
    for (i, mut t) in m.tables.into_iter().enumerate() {
        let name = t.table.to_lowercase();
        if !tables.contains(&name) || conditional.contains(&(i as u32)) {
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
    let mut out = Message {
        origin: m.origin,
        unit: m.unit.clone(),
        part: m.part,
        last: m.last,
        schema: m.schema,
        tables: Vec::with_capacity(m.tables.len()),
        seen: m.seen,
        at_ms: m.at_ms,
        conditional: Vec::new(),
        own_upto: m.own_upto,
        replayed: Vec::new(),
    };
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
    backfill: Backfill,
    before: u64,
    tables: HashSet<String>,
    prev: Option<&Touched>,
) -> Result<Touched, String> {
    let seen = backfill.seen;
    let mut out = match prev {
        Some(p) if p.backfill == backfill && p.upto <= before && tables.is_subset(&p.tables) => {
            Touched {
                backfill,
                upto: p.upto,
                tables: p.tables.clone(),
                last: p.last.clone(),
                complete: p.complete,
            }
        }
        _ => Touched {
            backfill,
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
                collect(msg, &out.backfill, &out.tables, &mut out.last);
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

    fn message(
        origin: u64,
        unit: &str,
        tables: Vec<TableChanges>,
        conditional: Vec<u32>,
    ) -> Message {
        Message {
            origin,
            unit: unit.into(),
            part: 1,
            last: true,
            schema: 0,
            tables,
            seen: Some(10),
            at_ms: 0,
            conditional,
            own_upto: 0x40,
            replayed: Vec::new(),
        }
    }

    /// The window saw row 1 updated and row 2 deleted (under another letter case of the table's name): the
    /// backfill keeps only row 3, and rows 1 and 2 become the window's last changes. Another backfill's
    /// conditional row and the origin's own change already in the values are not changes; the origin's own
    /// change of a later pass is.
    #[test]
    fn rows_the_window_changed_are_replaced_by_its_last_change() {
        let tables: HashSet<String> = ["items".to_string()].into();
        let backfill = message(
            3,
            "3.1f.50.1.0",
            vec![
                group("other", vec![up(9, "plain")]),
                group("items", vec![up(1, "stale"), up(2, "stale"), up(3, "kept")]),
            ],
            vec![1],
        );
        let b = Backfill::of(&backfill);
        assert_eq!(b.incarnation, Some(0x1f));
        let mut w = Touched {
            backfill: b,
            upto: 20,
            tables: tables.clone(),
            complete: true,
            ..Touched::default()
        };
        let msgs = [
            message(
                1,
                "1.5.9.1.0",
                vec![group("Items", vec![up(1, "newer"), up(2, "x")])],
                vec![],
            ),
            message(
                3,
                "3.1f.40.1.0",
                vec![group("items", vec![up(3, "own, in the values")])],
                vec![],
            ),
            message(
                2,
                "2.7.8.1.0",
                vec![group("items", vec![up(3, "other backfill")])],
                vec![0],
            ),
            message(
                1,
                "1.5.a.1.0",
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
        ];
        for m in msgs {
            collect(m, &b, &tables, &mut w.last);
        }
        assert_eq!(w.last.len(), 2, "{:?}", w.last.keys());
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

        // The origin's own change of a pass after the values were read counts.
        collect(
            message(
                3,
                "3.1f.41.1.0",
                vec![group("items", vec![up(3, "own, later")])],
                vec![],
            ),
            &b,
            &tables,
            &mut w.last,
        );
        let (out, superseded) = decide(&backfill, &w);
        assert_eq!(superseded, 3);
        assert!(
            out.tables
                .iter()
                .flat_map(|t| &t.rows)
                .any(|r| *r == up(3, "own, later"))
        );

        // A window partly gone from the stream proves nothing: no backfill row is applied.
        w.complete = false;
        let (out, superseded) = decide(&backfill, &w);
        assert_eq!(superseded, 3);
        assert_eq!(out.tables, vec![group("other", vec![up(9, "plain")])]);
    }
}
