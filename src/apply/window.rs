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
    /// The backfill `m` belongs to (meaningful for messages with conditional rows).
    pub fn of(m: &Message) -> Backfill {
        Backfill {
            seen: m.seen.unwrap_or(0),
            origin: m.origin,
            incarnation: wire::unit_pass(&m.unit).map(|(i, _)| i),
            own_upto: m.own_upto,
        }
    }

    /// Whether a change of the window is one of the origin's own changes already in the backfill's values.
    fn holds(&self, e: &Entry) -> bool {
        e.origin == self.origin
            && e.pass
                .is_some_and(|(inc, end)| Some(inc) == self.incarnation && end <= self.own_upto)
    }
}

/// One change to a row at a stream position: who made it, in which pass (what [`Backfill::holds`] looks at).
#[derive(Debug, Clone, Copy)]
struct Entry {
    pos: u64,
    origin: u64,
    pass: Option<(u64, u64)>,
}

impl Entry {
    fn of(pos: u64, m: &Message) -> Entry {
        Entry {
            pos,
            origin: m.origin,
            pass: wire::unit_pass(&m.unit),
        }
    }
}

/// What a window holds for the tables of one backfill.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub backfill: Backfill,
    /// The window's stream positions read: `(backfill.seen, upto)` (exclusive at both ends).
    pub upto: u64,
    /// The lowest position read: other backfills in the window are decided from what changed after their own
    /// `seen`, which may lie below this backfill's.
    pub from: u64,
    /// Lower-cased names of the tables whose rows are collected.
    pub tables: HashSet<String>,
    /// Row keys (lower-cased table name) changed in the window, with the last change to each.
    pub last: HashMap<RowKey, Change>,
    /// Every change read since `from`, per row key, in stream order.
    history: HashMap<RowKey, Vec<Entry>>,
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

impl Touched {
    /// An empty window for backfill `b` over `tables`, to be read from its `seen`.
    pub fn new(b: Backfill, tables: HashSet<String>) -> Touched {
        Touched {
            backfill: b,
            upto: b.seen + 1,
            from: b.seen + 1,
            tables,
            last: HashMap::new(),
            history: HashMap::new(),
            complete: true,
        }
    }

    /// Take in the message at stream position `pos` (positions come in stream order, from `from` on). Each row
    /// of `tables` it changes is a change, with two exceptions:
    ///
    /// - another backfill's conditional row is a change only where that backfill applied it: where nothing it
    ///   counts changed the row between its own `seen` and its position (then its value may be a write made
    ///   between a rebuild and the re-install, which only that backfill carries); a row it superseded changed
    ///   nothing (its replacement is an earlier change, already read). This backfill's own other messages are
    ///   skipped;
    /// - the origin's own changes already in this backfill's values (`Backfill::holds`) are not changes: the
    ///   values are at least as new as they are, so one of them coming after a change makes the values win
    ///   again (the stream's later write wins, as everywhere). Anything at or before `seen` is remembered only
    ///   for deciding other backfills.
    pub fn absorb(&mut self, pos: u64, m: Message) {
        let entry = Entry::of(pos, &m);
        let other = (!m.conditional.is_empty()).then(|| Backfill::of(&m));
        let in_window = pos > self.backfill.seen;
        let held = self.backfill.holds(&entry);
        let conditional = m.conditional.clone();
        for (i, mut t) in m.tables.into_iter().enumerate() {
            let name = t.table.to_lowercase();
            let is_conditional = conditional.contains(&(i as u32));
            if !self.tables.contains(&name) {
                continue;
            }
            if is_conditional && other == Some(self.backfill) {
                continue;
            }
            let Some(keys) = sql::row_keys_named(&t, &name) else {
                continue;
            };
            let rows = std::mem::take(&mut t.rows);
            let group = Arc::new(t);
            for (k, row) in keys.into_iter().zip(rows) {
                if is_conditional
                    && let Some(o) = &other
                    && !self.applied(o, pos, &k)
                {
                    continue;
                }
                self.history.entry(k.clone()).or_default().push(entry);
                if in_window && held {
                    // The origin's values hold this change, newer than any before it.
                    self.last.remove(&k);
                } else if in_window {
                    self.last.insert(
                        k,
                        Change {
                            group: group.clone(),
                            row,
                        },
                    );
                }
            }
        }
    }

    /// Whether backfill `o`, at position `pos`, applied its conditional row `k`: the last change to the row in
    /// `(o.seen, pos)`, if any, is one of its origin's own that its values hold (and that range was all read).
    fn applied(&self, o: &Backfill, pos: u64, k: &RowKey) -> bool {
        self.complete
            && self.from <= o.seen + 1
            && self.history.get(k).is_none_or(|h| {
                h.iter()
                    .rev()
                    .find(|e| e.pos > o.seen && e.pos < pos)
                    .is_none_or(|e| o.holds(e))
            })
    }
}

/// The lowest position other backfills among `batch` need read (their `seen + 1`), if below `from`.
fn needed_from(batch: &[(u64, Message)], b: &Backfill, from: u64) -> Option<u64> {
    batch
        .iter()
        .filter(|(_, m)| !m.conditional.is_empty() && Backfill::of(m) != *b)
        .map(|(_, m)| m.seen.unwrap_or(0) + 1)
        .min()
        .filter(|&f| f < from)
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
        piece: None,
        ddl: None,
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
    let mut out = match prev {
        Some(p) if p.backfill == backfill && p.upto <= before && tables.is_subset(&p.tables) => {
            p.clone()
        }
        _ => Touched::new(backfill, tables),
    };
    if out.upto >= before || !out.complete {
        out.upto = out.upto.max(before);
        return Ok(out);
    }
    tokio::time::timeout(READ_TIMEOUT, extend(js, stream_name, &mut out, before))
        .await
        .map_err(|_| format!("no answer within {} s", READ_TIMEOUT.as_secs()))??;
    Ok(out)
}

/// Read `[t.upto, before)` into `t`, after whatever earlier range the other backfills in it need.
async fn extend(
    js: &jetstream::Context,
    stream_name: &str,
    t: &mut Touched,
    before: u64,
) -> Result<(), String> {
    let batch = fetch(js, stream_name, t.upto, before, &t.tables).await?;
    t.upto = before;
    let Some(batch) = batch else {
        t.complete = false;
        return Ok(());
    };
    if let Some(lo) = needed_from(&batch, &t.backfill, t.from) {
        prepend(js, stream_name, t, lo).await?;
    }
    for (pos, m) in batch {
        t.absorb(pos, m);
    }
    Ok(())
}

/// Read `[lo, t.from)` (changes before everything `t` holds, none of them this backfill's) into `t`.
fn prepend<'a>(
    js: &'a jetstream::Context,
    stream_name: &'a str,
    t: &'a mut Touched,
    lo: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
    Box::pin(async move {
        let mut earlier = Touched {
            backfill: t.backfill,
            upto: lo,
            from: lo,
            tables: t.tables.clone(),
            last: HashMap::new(),
            history: HashMap::new(),
            complete: true,
        };
        extend(js, stream_name, &mut earlier, t.from).await?;
        t.from = earlier.from;
        t.complete &= earlier.complete;
        for (k, mut h) in earlier.history {
            if let Some(later) = t.history.remove(&k) {
                h.extend(later);
            }
            t.history.insert(k, h);
        }
        Ok(())
    })
}

/// The messages of `[from, before)` (decoded, only their groups of `tables`), or `None` when part of the range
/// has left the stream (said at WARN).
async fn fetch(
    js: &jetstream::Context,
    stream_name: &str,
    from: u64,
    before: u64,
    tables: &HashSet<String>,
) -> Result<Option<Vec<(u64, Message)>>, String> {
    if from >= before {
        return Ok(Some(Vec::new()));
    }
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
        return Ok(None);
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
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq >= before {
                break;
            }
            if let Ok(mut msg) = wire::decode(&m.message.payload) {
                // Keep only the groups of the window's tables (and which of them are conditional).
                let mut kept = Vec::new();
                let mut conditional = Vec::new();
                for (i, g) in std::mem::take(&mut msg.tables).into_iter().enumerate() {
                    if tables.contains(&g.table.to_lowercase()) {
                        if msg.conditional.contains(&(i as u32)) {
                            conditional.push(kept.len() as u32);
                        }
                        kept.push(g);
                    }
                }
                if !kept.is_empty() {
                    msg.tables = kept;
                    msg.conditional = conditional;
                    out.push((seq, msg));
                }
            }
            if seq + 1 >= before {
                break;
            }
        }
        tracing::debug!(
            stream = stream_name,
            from,
            before,
            messages = out.len(),
            "backfill window read"
        );
        Ok::<_, String>(Some(out))
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
            piece: None,
            ddl: None,
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
        let mut w = Touched::new(b, tables.clone());
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
        for (pos, m) in (11..).zip(msgs) {
            w.absorb(pos, m);
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
        w.absorb(
            15,
            message(
                3,
                "3.1f.41.1.0",
                vec![group("items", vec![up(3, "own, later")])],
                vec![],
            ),
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

    /// Another backfill's conditional row that nothing changed in its own window was applied: it is a change
    /// (it may carry a write made between that node's rebuild and its re-install, which only it holds), so a
    /// later backfill's stale row of the same key is replaced by it, not by an older ordinary change. Where
    /// its own window changed the row, it was superseded and is no change.
    #[test]
    fn another_backfills_applied_row_is_a_change() {
        let tables: HashSet<String> = ["items".to_string()].into();
        let stale = message(
            3,
            "3.1f.50.1.0",
            vec![group("items", vec![up(1, "stale"), up(2, "stale")])],
            vec![0],
        );
        let b = Backfill::of(&stale);
        let mut w = Touched::new(b, tables.clone());
        // Position 11: node 2 updates rows 1 and 2 (an ordinary write, before its own rebuild).
        w.absorb(
            11,
            message(
                2,
                "2.7.8.1.0",
                vec![group("items", vec![up(1, "older"), up(2, "older")])],
                vec![],
            ),
        );
        // Position 12: node 1 updates row 2 again.
        w.absorb(
            12,
            message(
                1,
                "1.5.9.1.0",
                vec![group("items", vec![up(2, "node 1")])],
                vec![],
            ),
        );
        // Position 13: node 2's backfill (seen 10, its own changes up to pass 8 held): row 1 carries a value
        // written after its rebuild; row 2 was changed by node 1 in its window, so it was superseded.
        let mut other = message(
            2,
            "2.7.9.1.0",
            vec![group("items", vec![up(1, "gap write"), up(2, "stale too")])],
            vec![0],
        );
        other.own_upto = 8;
        w.absorb(13, other);
        let (out, superseded) = decide(&stale, &w);
        assert_eq!(superseded, 2);
        let rows: Vec<&Row> = out.tables.iter().flat_map(|t| &t.rows).collect();
        assert!(rows.contains(&&up(1, "gap write")), "{rows:?}");
        assert!(rows.contains(&&up(2, "node 1")), "{rows:?}");
    }

    /// A change from another node followed, later in the stream, by one of the origin's own changes its values
    /// hold: the later write wins, as it does everywhere, so the values stay. A stale row another backfill
    /// applied before that own change does not win either.
    #[test]
    fn an_own_change_after_a_change_keeps_the_values() {
        let tables: HashSet<String> = ["items".to_string()].into();
        let mine = message(
            3,
            "3.1f.50.1.0",
            vec![group("items", vec![up(1, "mine"), up(2, "mine")])],
            vec![0],
        );
        let b = Backfill::of(&mine);
        let mut w = Touched::new(b, tables.clone());
        w.absorb(
            11,
            message(
                1,
                "1.5.9.1.0",
                vec![group("items", vec![up(1, "node 1")])],
                vec![],
            ),
        );
        let mut stale = message(
            1,
            "1.5.a.1.0",
            vec![group("items", vec![up(2, "stale copy")])],
            vec![0],
        );
        stale.own_upto = 9;
        w.absorb(12, stale);
        w.absorb(
            13,
            message(
                3,
                "3.1f.3f.1.0",
                vec![group("items", vec![up(1, "own"), up(2, "own")])],
                vec![],
            ),
        );
        let (out, superseded) = decide(&mine, &w);
        assert_eq!(superseded, 0);
        assert_eq!(
            out.tables,
            vec![group("items", vec![up(1, "mine"), up(2, "mine")])]
        );
    }
}
