//! Changes held because this node's schema is behind: a unit naming a table or column this node does not have
//! yet waits, whole, and so does every later unit touching a table a held unit touches (the order of each row's
//! changes is kept), while the shard's other changes go on.
//!
//! The shard's recorded position stays before the first held message, so retention keeps it in the stream, a
//! restart delivers it again, and `-verify`, `-wait-replicated` and snapshots see the node as not past it.
//! Held units are tried again once the local schema has been stable for a moment (`SCHEMA_SETTLE`), and every
//! second otherwise.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::Decoded;
use crate::wire::Message;

/// Most messages a shard holds; beyond it the shard stops taking new messages until some are released.
pub const MAX_HELD: usize = 10_000;

/// One held unit (all parts of one publish) and the tables it touches.
pub struct HeldUnit {
    pub msgs: Vec<Decoded>,
    pub tables: HashSet<String>,
}

impl HeldUnit {
    pub fn first_seq(&self) -> u64 {
        self.msgs.first().map_or(0, |d| d.seq)
    }
}

/// Why a table is held: the missing table (or column) first named, and since when.
#[derive(Debug, Clone)]
pub struct Cause {
    pub table: String,
    pub column: Option<String>,
    pub since: Instant,
    /// Unix ms of `since`, for the gauges.
    pub since_ms: u64,
    /// Said at ERROR once it lasted longer than `max_stuck_seconds`.
    pub said_error: bool,
}

/// Lower-cased names of every table `msgs` touch.
pub fn tables_of<'a>(msgs: impl IntoIterator<Item = &'a Decoded>) -> HashSet<String> {
    msgs.into_iter()
        .filter_map(|d| d.msg.as_ref().ok())
        .flat_map(|m: &Message| m.tables.iter().map(|t| t.table.to_lowercase()))
        .collect()
}

/// What a shard holds, per lower-cased table: (rows held, since when in unix ms).
pub fn gauges(
    units: &[HeldUnit],
    causes: &BTreeMap<String, Cause>,
) -> BTreeMap<String, (u64, u64)> {
    let since = causes.values().map(|c| c.since_ms).min().unwrap_or(0);
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for u in units {
        for d in &u.msgs {
            let Ok(m) = &d.msg else { continue };
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
