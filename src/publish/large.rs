//! Large values, and changes that can never be published.
//!
//! A message must stay under the server's `max_payload`. The publisher aims for `max_message_bytes` per message
//! ([`Limits`]); a text or blob value longer than a quarter of it (or the largest values of a row whose values
//! together would fill half a message) does not travel inside the row: it is sent first, in *pieces* of about
//! `max_message_bytes`, each a message of its own on the row's stream, and the row carries a
//! [`StagedValue`] naming it. Receivers stage the pieces and assemble the value when they apply the row
//! (`apply::pieces`). The pieces are read from SQLite's copy of the value inside the pass's read transaction
//! and published one window at a time, so the publisher never holds more than a few pieces of its own.
//!
//! A change that still cannot fit (its key alone is larger than a message) or that the server refuses for good
//! is *set aside*: a row in [`UNPUBLISHED`] (the change-log row's table id and key, so an operator can put it
//! back into the change log), an ERROR, the counter `harmonylite_unpublished_rows`; the changes behind it go
//! on.

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream;
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::PublishError;
use crate::capture::{LOG, TABLES, TableInfo, UNPUBLISHED};
use crate::counters::{Counters, Total};
use crate::wire::{self, Message, Piece, StagedValue, Value};

/// Pieces published before their acknowledgements are awaited.
const WINDOW: usize = 8;
/// A value this short always travels inside its row.
const ALWAYS_INLINE: usize = 1024;

/// Message sizes, from `replication_log.max_message_bytes` and the server's `max_payload`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// What a message aims for (rows are packed up to it).
    pub message: usize,
    /// A value longer than this travels in pieces.
    pub large: usize,
    /// Bytes of a value per piece.
    pub piece: usize,
}

impl Limits {
    /// Limits for `configured` message bytes, kept [`HEADROOM`](crate::config::HEADROOM) under the server's
    /// `max_payload` (0: unknown).
    pub fn new(configured: u64, server_max_payload: u64) -> Limits {
        let mut message = configured;
        if server_max_payload > 0 {
            let most = server_max_payload.saturating_sub(crate::config::HEADROOM);
            message = message.min(most.max(4096));
        }
        let message = message as usize;
        Limits {
            message,
            large: (message / 4).max(ALWAYS_INLINE),
            piece: message.saturating_sub(1024).max(1024),
        }
    }
}

/// A row's values as read for publishing: the values to stage are placeholders ([`StagedValue`] with an empty
/// id), still in the database; their columns are listed in `large`.
pub struct ReadRow {
    pub values: Vec<Value>,
    pub large: Vec<usize>,
}

/// Positions of the key columns among the shipped columns.
fn key_positions(info: &TableInfo) -> Vec<usize> {
    let keys = info.key_names();
    info.shipped_columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| keys.contains(c))
        .map(|(i, _)| i)
        .collect()
}

fn len_of(v: &ValueRef<'_>) -> usize {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
        _ => 8,
    }
}

/// The current values of one row, by key (`None` when the row no longer exists); values to send in pieces are
/// left in the database.
pub fn read_row(
    conn: &Connection,
    info: &TableInfo,
    key: &[Value],
    limits: &Limits,
) -> rusqlite::Result<Option<ReadRow>> {
    let mut stmt = conn.prepare_cached(&info.select_sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(key.iter()))?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let mut total = 0usize;
    let mut big = false;
    for i in 0..n {
        let len = len_of(&r.get_ref(i)?);
        total += len;
        big |= len > limits.large;
    }
    if !big && total <= limits.message / 2 {
        let values = (0..n)
            .map(|i| Ok(Value::from_ref(r.get_ref(i)?)))
            .collect::<rusqlite::Result<_>>()?;
        return Ok(Some(ReadRow {
            values,
            large: Vec::new(),
        }));
    }
    // Stage every long value, then the longest others while the row would fill more than half a message.
    let keys = key_positions(info);
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        let v = r.get_ref(i)?;
        let stageable = matches!(v, ValueRef::Text(_) | ValueRef::Blob(_)) && !keys.contains(&i);
        lens.push((len_of(&v), stageable));
    }
    let mut staged = vec![false; n];
    for (i, &(len, ok)) in lens.iter().enumerate() {
        if ok && len > limits.large {
            staged[i] = true;
            total -= len;
        }
    }
    while total > limits.message / 2 {
        let next = (0..n)
            .filter(|&i| !staged[i] && lens[i].1 && lens[i].0 > ALWAYS_INLINE)
            .max_by_key(|&i| lens[i].0);
        let Some(i) = next else { break };
        staged[i] = true;
        total -= lens[i].0;
    }
    let mut values = Vec::with_capacity(n);
    let mut large = Vec::new();
    for i in 0..n {
        let v = r.get_ref(i)?;
        if staged[i] {
            large.push(i);
            values.push(Value::Staged(Box::new(StagedValue {
                id: String::new(),
                len: lens[i].0 as u64,
                text: matches!(v, ValueRef::Text(_)),
                hash: 0,
            })));
        } else {
            values.push(Value::from_ref(v));
        }
    }
    Ok(Some(ReadRow { values, large }))
}

/// Where the pieces of one pass go.
pub struct PieceSink<'a> {
    pub js: &'a jetstream::Context,
    pub counters: &'a Counters,
    pub limits: Limits,
    pub compress: bool,
    pub origin: u64,
    pub incarnation: u64,
    pub schema: u64,
    pub at_ms: u64,
    /// `<node>.<incarnation>.<pass end>`, as the pass's unit ids.
    pub prefix: &'a str,
}

impl PieceSink<'_> {
    /// Send column `col` of the row `key` (change-log id `log_id`) in pieces to `shard`'s subject; returns what
    /// the row carries in its place. Runs inside the pass's read transaction (blocking, in `block_in_place`).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        conn: &Connection,
        info: &TableInfo,
        key: &[Value],
        col: usize,
        log_id: i64,
        shard: u32,
        subject: &str,
    ) -> Result<StagedValue, PublishError> {
        // This column alone: SQLite reads every column a statement returns.
        let column = &info.shipped_columns()[col];
        let sql = format!(
            "SELECT {}{}",
            crate::capture::schema::ident(column),
            info.by_key_sql
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(key.iter()))?;
        let r = rows.next()?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let (bytes, text) = match r.get_ref(0)? {
            ValueRef::Text(t) => (t, true),
            ValueRef::Blob(b) => (b, false),
            _ => {
                return Err(rusqlite::Error::InvalidColumnType(
                    col,
                    "large value".into(),
                    rusqlite::types::Type::Null,
                )
                .into());
            }
        };
        let hash = wire::fnv1_64(bytes);
        let id = format!(
            "{:x}.{:x}.{:x}.{col}.{hash:x}",
            self.origin, self.incarnation, log_id
        );
        let handle = tokio::runtime::Handle::current();
        let mut acks: VecDeque<jetstream::context::PublishAckFuture> = VecDeque::new();
        let ack_err = |source| PublishError::Ack {
            subject: subject.to_string(),
            source,
        };
        for (k, chunk) in bytes.chunks(self.limits.piece).enumerate() {
            let msg = Message {
                origin: self.origin,
                unit: msg_unit(self.prefix, shard, log_id, col, k),
                part: 1,
                last: true,
                schema: self.schema,
                tables: Vec::new(),
                seen: None,
                at_ms: self.at_ms,
                conditional: Vec::new(),
                own_upto: 0,
                piece: Some(Piece {
                    id: id.clone(),
                    offset: (k * self.limits.piece) as u64,
                    len: bytes.len() as u64,
                    data: chunk.to_vec(),
                }),
                ddl: None,
                replayed: Vec::new(),
            };
            let payload = wire::encode(&msg, self.compress);
            drop(msg);
            // The content's hash is in the id: a retry with the same content is dropped by JetStream, one whose
            // row changed in between is not.
            let mut h = HeaderMap::new();
            let msg_id = format!("{}.{hash:x}", msg_unit(self.prefix, shard, log_id, col, k));
            h.insert("Nats-Msg-Id", msg_id.as_str());
            let fut = handle
                .block_on(
                    self.js
                        .publish_with_headers(subject.to_string(), h, payload.into()),
                )
                .map_err(ack_err)?;
            acks.push_back(fut);
            if acks.len() >= WINDOW {
                let oldest = acks.pop_front().expect("non-empty");
                handle.block_on(oldest.into_future()).map_err(ack_err)?;
            }
            self.counters.add(Total::PiecesPublished, 1);
        }
        for fut in acks {
            handle.block_on(fut.into_future()).map_err(ack_err)?;
        }
        Ok(StagedValue {
            id,
            len: bytes.len() as u64,
            text,
            hash,
        })
    }
}

fn msg_unit(prefix: &str, shard: u32, log_id: i64, col: usize, k: usize) -> String {
    format!("{prefix}.{shard}.v{log_id:x}.{col}.{k}")
}

/// A change that can never be published.
#[derive(Debug, Clone)]
pub struct Aside {
    pub log_id: i64,
    /// The row (for the conflict rule's tracking, which ends for it).
    pub key: crate::conflict::RowKey,
    pub reason: String,
}

/// Record changes set aside, in one write transaction, before the pass that skips them is acknowledged (so a
/// crash cannot lose them: the pass is read again and they are set aside again, once, by their log id).
pub fn set_aside(conn: &Connection, rows: &[Aside], counters: &Counters) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut added = 0u64;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {UNPUBLISHED}(set_aside_at, tbl, k, table_name, log_id, reason)
             SELECT ?1, l.tbl, l.k, t.name, l.id, ?2 FROM {LOG} l LEFT JOIN {TABLES} t ON t.id = abs(l.tbl)
             WHERE l.id = ?3"
        ))?;
        for a in rows {
            let n = stmt.execute(rusqlite::params![
                crate::counters::now_ms() as i64,
                a.reason,
                a.log_id
            ])?;
            if n > 0 {
                added += 1;
                let table =
                    String::from_utf8_lossy(a.key.split(|&b| b == 0).next().unwrap_or_default());
                tracing::error!(table = %table, change_log_id = a.log_id, reason = %a.reason,
                    "change set aside: it can never be published; the changes behind it go on (see {UNPUBLISHED})");
            }
        }
    }
    tx.commit()?;
    counters.add(Total::Unpublished, added);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_configuration_and_stay_under_the_server() {
        let l = Limits::new(512 * 1024, 1024 * 1024);
        assert_eq!(
            (l.message, l.large, l.piece),
            (512 * 1024, 128 * 1024, 511 * 1024)
        );
        // An external server taking 512 KB: messages stay HEADROOM under it.
        let l = Limits::new(512 * 1024, 512 * 1024);
        assert_eq!(l.message, 512 * 1024 - 16 * 1024);
        assert!(l.piece < l.message && l.large < l.message);
        // Unknown server limit: the configuration alone.
        assert_eq!(Limits::new(64 * 1024, 0).message, 64 * 1024);
    }
}
