//! Publish progress found again after the state file was lost (a power loss can leave it empty, cut or
//! garbage; an operator may delete it).
//!
//! Starting from zero would publish again every change-log row not yet removed as published, under new message
//! ids (a unit's id holds its pass's end, which differs), so JetStream's duplicate window would not catch them.
//! Worse than the duplicates: a republished row carries the row's values *now*, and lands after changes other
//! nodes made since; the last change in stream order wins, so an old value could overwrite newer ones
//! everywhere. So, before publishing, the node looks for what it had acknowledged:
//!
//! - its entry in the positions bucket (written about once a second) holds `published_upto`;
//! - each shard's stream, read backwards from its end, holds its latest message (the message id
//!   `<node>.<incarnation>.<pass end>.<shard>.<unit>` names the pass's end); a message the trim already removed
//!   was covered by the bucket entry written before it.
//!
//! With several shards, a pass is acknowledged shard by shard; a shard whose latest message ends lower may have
//! missed the last pass, so the progress stops before the first row of that shard the stream does not hold.

use async_nats::jetstream;
use rusqlite::Connection;

use super::state::PublishState;
use crate::capture::{self, Capture};
use crate::config::Config;
use crate::wire;

/// Messages read back per shard at most, looking for this node's latest one.
const SCAN_LIMIT: u64 = 200_000;

/// The pass end in message id `id` when this node (`node_id`, change-log `incarnation`) published it as a unit
/// (`<node>.<incarnation>.<pass end>.<shard>.<unit>`). A piece of a large value (`...<shard>.v<log id>...`) goes
/// out before its pass's units, so it says nothing of the pass being stored.
fn own_pass_end(id: &str, node_id: u64, incarnation: u64) -> Option<i64> {
    let mut parts = id.split('.');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let inc = u64::from_str_radix(parts.next()?, 16).ok()?;
    let end = i64::from_str_radix(parts.next()?, 16).ok()?;
    let _shard = parts.next()?;
    parts.next()?.parse::<u64>().ok()?;
    (node == node_id && inc == incarnation).then_some(end)
}

/// The latest pass end of this node in `stream` (0: none found), or an error text when the stream cannot be
/// read.
async fn latest_in_stream(
    js: &jetstream::Context,
    stream: &str,
    node_id: u64,
    incarnation: u64,
) -> Result<i64, String> {
    let limit = std::time::Duration::from_secs(5);
    let s = match tokio::time::timeout(limit, js.get_stream(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer".into()),
    };
    let mut s = s;
    let info = match tokio::time::timeout(limit, s.info()).await {
        Ok(Ok(i)) => i.state.clone(),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer".into()),
    };
    if info.messages == 0 {
        return Ok(0);
    }
    let lowest = info
        .first_sequence
        .max(info.last_sequence.saturating_sub(SCAN_LIMIT))
        .max(1);
    let mut seq = info.last_sequence;
    while seq >= lowest {
        match tokio::time::timeout(limit, s.get_raw_message(seq)).await {
            Ok(Ok(m)) => {
                if let Some(end) = m
                    .headers
                    .get("Nats-Msg-Id")
                    .and_then(|id| own_pass_end(id.as_str(), node_id, incarnation))
                {
                    return Ok(end);
                }
            }
            Ok(Err(e))
                if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer".into()),
        }
        seq -= 1;
    }
    Ok(0)
}

/// The progress from the bucket entry's `published` and each shard's latest pass end `ends` (index 0 = shard
/// 1): the highest end such that every change-log row up to it is covered on its own shard.
fn combine(
    conn: &Connection,
    cap: &Capture,
    shards: u32,
    published: i64,
    ends: &[i64],
) -> Result<i64, capture::CaptureError> {
    let covered: Vec<i64> = ends.iter().map(|e| (*e).max(published)).collect();
    let top = covered.iter().copied().max().unwrap_or(published);
    let low = covered.iter().copied().min().unwrap_or(published);
    if low >= top {
        return Ok(top);
    }
    let mut upto = top;
    for row in capture::read_log(conn, cap, low, top)? {
        // A schema change goes to the first shard.
        let shard = match cap.table(row.table_id) {
            _ if row.ddl.is_some() => 1,
            Some(info) => wire::shard_of(&info.name, &wire::key_bytes(&row.key), shards),
            None => continue,
        };
        if row.id > covered[shard as usize - 1] {
            upto = upto.min(row.id - 1);
            break;
        }
    }
    Ok(upto)
}

/// When `state` was not read from its file and the change log holds rows, find the progress again (see the
/// module's text) and record it. Anything that cannot be read leaves the progress where it is (rows are then
/// published again: duplicates, never a loss), with a warning.
pub async fn progress(
    js: &jetstream::Context,
    cfg: &Config,
    conn: &Connection,
    cap: &Capture,
    state: &mut PublishState,
) {
    if state.from_file || !cfg.publish {
        return;
    }
    let max = match tokio::task::block_in_place(|| capture::max_log_id(conn)) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the change log to find the publish progress");
            return;
        }
    };
    if max <= state.published_upto {
        return;
    }
    let incarnation = state.incarnation();
    let published = crate::cluster::positions::entry(js, cfg.node_id)
        .await
        .filter(|p| p.incarnation == incarnation)
        .map_or(0, |p| p.published_upto as i64);
    let shards = cfg.replication_log.shards.get();
    let mut ends = Vec::new();
    for shard in 1..=shards {
        let stream = cfg.stream_name(shard);
        match latest_in_stream(js, &stream, cfg.node_id, incarnation).await {
            Ok(end) => ends.push(end),
            Err(e) => {
                tracing::warn!(stream, error = %e,
                    "publish progress lost, and the stream cannot be read to find it: unremoved change-log rows \
                     are published again");
                return;
            }
        }
    }
    let found = match tokio::task::block_in_place(|| combine(conn, cap, shards, published, &ends)) {
        Ok(f) => f.min(max),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the change log to find the publish progress");
            return;
        }
    };
    if found <= state.published_upto {
        tracing::warn!(
            path = %cfg.seq_map_path.display(),
            "publish progress lost and none of this node's changes found in the stream or the positions \
             bucket: unremoved change-log rows are published from the start"
        );
        return;
    }
    state.published_upto = found;
    state.inflight_end = found;
    match state.save() {
        Ok(()) => tracing::warn!(
            path = %cfg.seq_map_path.display(),
            published_upto = found,
            from_bucket = published,
            from_streams = ?ends,
            "publish progress lost with the state file; found again in the stream, so nothing is published twice"
        ),
        Err(e) => tracing::warn!(error = %e, published_upto = found,
            "publish progress found again but not recorded; it is used for this run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change log of 20 rows (ids 1..=20, one per key of table `t`), and each row's shard of 2.
    fn log_of_twenty() -> (tempfile::TempDir, Connection, Capture, Vec<u32>) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("a.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let cap = capture::install(&mut conn, &[], &[]).unwrap();
        for i in 1..=20 {
            conn.execute("INSERT INTO t VALUES (?1, 'x')", [i]).unwrap();
        }
        let shards = capture::read_log(&conn, &cap, 0, 20)
            .unwrap()
            .iter()
            .map(|r| wire::shard_of("t", &wire::key_bytes(&r.key), 2))
            .collect();
        (dir, conn, cap, shards)
    }

    #[test]
    fn progress_is_where_every_shard_has_its_rows() {
        let (_dir, conn, cap, shard_of_id) = log_of_twenty();
        assert_eq!(capture::max_log_id(&conn).unwrap(), 20);
        // One shard: its latest pass end, or the bucket's when higher.
        assert_eq!(combine(&conn, &cap, 1, 0, &[12]).unwrap(), 12);
        assert_eq!(combine(&conn, &cap, 1, 15, &[12]).unwrap(), 15);
        assert_eq!(combine(&conn, &cap, 1, 0, &[0]).unwrap(), 0);
        // Two shards: shard 1 has the pass ending at 18, shard 2's latest message ends at 10. The progress
        // stops before shard 2's first row after 10 (the last pass may not have reached shard 2).
        let first_of_2_after_10 = (11..=18)
            .find(|id| shard_of_id[*id as usize - 1] == 2)
            .unwrap();
        assert_eq!(
            combine(&conn, &cap, 2, 0, &[18, 10]).unwrap(),
            first_of_2_after_10 - 1
        );
        // With the bucket at 18 (every shard acknowledged), nothing is held back.
        assert_eq!(combine(&conn, &cap, 2, 18, &[18, 10]).unwrap(), 18);
        // Shard 2 with no row in (10, 18]: all of it is covered.
        let ids_of_1: Vec<i64> = (1..=20)
            .filter(|id| shard_of_id[*id as usize - 1] == 1)
            .collect();
        let last_of_1 = *ids_of_1.last().unwrap();
        let below_2: i64 = (1..=last_of_1)
            .rev()
            .find(|id| shard_of_id[*id as usize - 1] == 2)
            .unwrap();
        assert_eq!(
            combine(&conn, &cap, 2, 0, &[last_of_1, below_2]).unwrap(),
            last_of_1
        );
    }

    #[test]
    fn message_ids_name_their_origin_and_pass_end() {
        assert_eq!(own_pass_end("3.1f.2a.1.0", 3, 0x1f), Some(0x2a));
        assert_eq!(own_pass_end("3.1f.2a.1.0", 2, 0x1f), None);
        assert_eq!(own_pass_end("3.1e.2a.1.0", 3, 0x1f), None);
        assert_eq!(own_pass_end("garbage", 3, 0x1f), None);
        // A piece of a large value is not a unit: its pass may not be stored yet.
        assert_eq!(own_pass_end("3.1f.2a.1.v29.2.0.9c1f", 3, 0x1f), None);
    }
}
