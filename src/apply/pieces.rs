//! Large values arriving in pieces (see `publish::large`).
//!
//! Each piece is a message of its own, ahead of the unit whose row names the value ([`StagedValue`]). The
//! applier stages a piece in [`PIECES`] in the transaction that moves its shard past it, so a crash neither
//! loses nor repeats one, and the shard's position (hence the stream's retention) never waits for the row. When
//! a row holding a staged value is written, the value is assembled from its pieces (checked: every byte there
//! once, the length and hash the origin sent) and its pieces are deleted in the same transaction.
//!
//! Pieces nothing will claim (their row was skipped here, or the origin stopped between the pieces and the
//! unit, then published the pass again) are deleted when a later pass of their origin is applied on the same
//! stream, and, as a last resort, once older than the stream's `max_age_seconds`.

use rusqlite::{OptionalExtension, Transaction};

use super::sql::ApplyError;
use crate::capture::PIECES;
use crate::wire::{self, Message, Piece, Row, StagedValue, Value};

/// Whether anything is staged (`None`: not looked yet), so the clean-up costs nothing while nothing is.
#[derive(Debug, Default)]
pub struct Staged(Option<bool>);

impl Staged {
    fn any(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<bool> {
        if self.0.is_none() {
            let any: bool = tx.query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {PIECES})"),
                [],
                |r| r.get(0),
            )?;
            self.0 = Some(any);
        }
        Ok(self.0 == Some(true))
    }

    /// A transaction rolled back: what it staged or removed is unknown again.
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

/// Stage one piece of another node's value.
pub fn stage(
    tx: &Transaction<'_>,
    m: &Message,
    p: &Piece,
    stream: &str,
    seq: u64,
    staged: &mut Staged,
) -> rusqlite::Result<()> {
    let pass = wire::unit_pass(&m.unit).map_or(0, |(_, end)| end);
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {PIECES}(value, off, origin, stream, seq, pass, staged_at, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(rusqlite::params![
        p.id,
        p.offset as i64,
        m.origin as i64,
        stream,
        seq as i64,
        pass as i64,
        crate::counters::now_ms() as i64,
        p.data,
    ])?;
    staged.0 = Some(true);
    Ok(())
}

/// Whether `m` is this node's own piece, from this database's change log (its value is here). After a restore
/// (a new incarnation) the node's earlier pieces are staged like any other node's.
pub fn own_now(m: &Message, cfg: &crate::config::Config, cap: &crate::capture::Capture) -> bool {
    m.origin == cfg.node_id
        && wire::unit_pass(&m.unit).is_some_and(|(inc, _)| inc == cap.incarnation)
}

/// Whether a row carries a staged value.
pub fn has_staged(row: &Row) -> bool {
    match row {
        Row::Upsert(v) => v.iter().any(|v| matches!(v, Value::Staged(_))),
        Row::Delete(_) => false,
    }
}

/// The row's values with every staged value assembled; the pieces used are deleted.
pub fn resolve(
    tx: &Transaction<'_>,
    values: &[Value],
    staged: &mut Staged,
) -> Result<Vec<Value>, ApplyError> {
    // Whether anything is left is looked at again (once) by the next clean-up.
    staged.0 = None;
    values
        .iter()
        .map(|v| match v {
            Value::Staged(s) => assemble(tx, s),
            v => Ok(v.clone()),
        })
        .collect()
}

fn assemble(tx: &Transaction<'_>, s: &StagedValue) -> Result<Value, ApplyError> {
    let missing = |have: u64| ApplyError::PiecesMissing {
        id: s.id.clone(),
        have,
        len: s.len,
    };
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(s.len as usize)
        .map_err(|_| missing(0))?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT off, data FROM {PIECES} WHERE value = ?1 ORDER BY off"
        ))?;
        let mut rows = stmt.query([&s.id])?;
        while let Some(r) = rows.next()? {
            let off: i64 = r.get(0)?;
            let data = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if off as u64 != out.len() as u64 || out.len() as u64 + data.len() as u64 > s.len {
                return Err(missing(out.len() as u64));
            }
            out.extend_from_slice(data);
        }
    }
    if out.len() as u64 != s.len || wire::fnv1_64(&out) != s.hash {
        return Err(missing(out.len() as u64));
    }
    tx.prepare_cached(&format!("DELETE FROM {PIECES} WHERE value = ?1"))?
        .execute([&s.id])?;
    Ok(if s.text {
        Value::Text(out)
    } else {
        Value::Blob(out)
    })
}

/// A unit of `origin`'s pass `m.unit` was handled on `stream`: pieces of its earlier passes on that stream will
/// never be claimed (an origin publishes a pass's pieces right before the pass's units).
pub fn passed(
    tx: &Transaction<'_>,
    m: &Message,
    stream: &str,
    staged: &mut Staged,
) -> rusqlite::Result<()> {
    if !staged.any(tx)? {
        return Ok(());
    }
    let Some((_, end)) = wire::unit_pass(&m.unit) else {
        return Ok(());
    };
    let n = tx
        .prepare_cached(&format!(
            "DELETE FROM {PIECES} WHERE origin = ?1 AND stream = ?2 AND pass < ?3"
        ))?
        .execute(rusqlite::params![m.origin as i64, stream, end as i64])?;
    if n > 0 {
        tracing::debug!(
            pieces = n,
            origin = m.origin,
            stream,
            "removed pieces no row claimed"
        );
        staged.0 = None;
    }
    Ok(())
}

/// Remove pieces staged longer ago than `max_age_ms` (the stream no longer holds their row either).
pub fn expire(conn: &rusqlite::Connection, max_age_ms: u64) -> rusqlite::Result<usize> {
    let before = crate::counters::now_ms().saturating_sub(max_age_ms) as i64;
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [PIECES],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(0);
    }
    conn.execute(
        &format!("DELETE FROM {PIECES} WHERE staged_at < ?1"),
        [before],
    )
}
