//! The quarantine: messages from the stream that can never be applied ([`ApplyError::is_poison`]) are kept in
//! `__harmonylite__quarantine` for an operator to read, in the transaction that moves the shard's applied
//! position past them, so the shard goes on and nothing is lost from view. A message is quarantined with the
//! other messages of its unit (one transaction of its origin node), so no transaction is applied in part.
//!
//! Columns: `quarantined_at` (Unix ms), `stream`, `seq`, `reason`, and `payload`: the bytes as received when
//! they could not be decoded, else the decoded message encoded again in the wire format (uncompressed). The
//! newest [`KEEP`] rows are kept.
//!
//! [`ApplyError::is_poison`]: super::sql::ApplyError::is_poison

use rusqlite::Transaction;

use crate::capture::QUARANTINE;
use crate::wire::{self, Message};

/// How many quarantined messages are kept (the oldest go first).
pub const KEEP: i64 = 10_000;

/// Records one message.
pub(super) fn record(
    tx: &Transaction<'_>,
    stream: &str,
    seq: u64,
    reason: &str,
    msg: Result<&Message, &[u8]>,
) -> rusqlite::Result<()> {
    let payload = match msg {
        Ok(m) => wire::encode(m, false),
        Err(raw) => raw.to_vec(),
    };
    tx.prepare_cached(&format!(
        "INSERT INTO {QUARANTINE}(quarantined_at, stream, seq, reason, payload) VALUES(?1, ?2, ?3, ?4, ?5)"
    ))?
    .execute(rusqlite::params![
        crate::counters::now_ms() as i64,
        stream,
        seq as i64,
        reason,
        payload
    ])?;
    Ok(())
}

/// Keeps the newest [`KEEP`] rows.
pub(super) fn prune(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        &format!("DELETE FROM {QUARANTINE} WHERE id <= (SELECT max(id) FROM {QUARANTINE}) - ?1"),
        [KEEP],
    )?;
    Ok(())
}
