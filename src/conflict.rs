//! The conflict rule's bookkeeping: the node's own changes that have not come back through the stream yet.
//!
//! The rule itself (the last change in stream order wins; a node's own write in flight is never reverted by an
//! older change) is written once, in `docs/DESIGN.md`, section "The conflict rule". This module keeps, for each
//! row key with a local change in flight, which of that section's three states the change is in, and answers
//! the applier's question for every incoming change: apply it, skip it, or wait for our acknowledgement.
//! The publisher and the applier of a node share one [`InFlight`] table.

use std::collections::HashMap;
use std::sync::Mutex;

use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;

/// A row's identity: table name, a zero byte, canonical key bytes ([`crate::wire::key_bytes`]). Short ones
/// (most: a table name and an integer key) are held inline, with no allocation of their own; the table of rows
/// in flight holds one per row a writer has not yet seen come back through the stream.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// Up to [`INLINE`] bytes; the rest zero, so equal bytes are equal keys.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// Longer keys.
    Heap(Box<[u8]>),
}

/// The longest key held inline (the enum is then 24 bytes, the size of a boxed slice and a tag rounded up).
pub const INLINE: usize = 22;

impl std::ops::Deref for RowKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            RowKey::Inline { len, bytes } => &bytes[..*len as usize],
            RowKey::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowKey({:?})", String::from_utf8_lossy(self))
    }
}

/// The [`RowKey`] of a row of `table` with key bytes `key`.
pub fn row_key(table: &str, key: &[u8]) -> RowKey {
    let len = table.len() + 1 + key.len();
    if len <= INLINE {
        let mut bytes = [0u8; INLINE];
        bytes[..table.len()].copy_from_slice(table.as_bytes());
        bytes[table.len() + 1..len].copy_from_slice(key);
        return RowKey::Inline {
            len: len as u8,
            bytes,
        };
    }
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(table.as_bytes());
    b.push(0);
    b.extend_from_slice(key);
    RowKey::Heap(b.into_boxed_slice())
}

/// Where a local change is (the three states of the rule in `docs/DESIGN.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Committed locally, not yet handed to JetStream.
    Unsent,
    /// Handed to JetStream, acknowledgement outstanding.
    Sent,
    /// Stored at this stream sequence.
    Acked(u64),
}

/// A [`State`] in one word (an entry is then 24 bytes instead of 32): stream sequences never come near the
/// two values at the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed(u64);

impl Packed {
    const UNSENT: u64 = u64::MAX;
    const SENT: u64 = u64::MAX - 1;

    fn of(s: State) -> Packed {
        Packed(match s {
            State::Unsent => Self::UNSENT,
            State::Sent => Self::SENT,
            State::Acked(seq) => seq.min(Self::SENT - 1),
        })
    }

    fn get(self) -> State {
        match self.0 {
            Self::UNSENT => State::Unsent,
            Self::SENT => State::Sent,
            seq => State::Acked(seq),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Change-log id of the newest local change to the key that this entry describes.
    log_id: i64,
    state: Packed,
    /// Once sent: the schema version of the capture its message was built with.
    published_with: i64,
}

/// What the applier does with an incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Apply,
    Skip,
    /// Our own change to the row is being published; decide once its position is known.
    Wait,
}

#[derive(Default)]
struct Inner {
    /// Change-log ids up to here have been registered.
    scanned_upto: i64,
    map: HashMap<RowKey, Entry, FxBuildHasher>,
}

/// Shared between the publisher and the applier of one node.
pub struct InFlight {
    enabled: bool,
    inner: Mutex<Inner>,
    acked: Notify,
}

impl InFlight {
    /// `enabled = false` (when the node does not publish) makes every decision `Apply`.
    pub fn new(enabled: bool, scanned_upto: i64) -> InFlight {
        InFlight {
            enabled,
            inner: Mutex::new(Inner {
                scanned_upto,
                map: HashMap::default(),
            }),
            acked: Notify::new(),
        }
    }

    /// False when the node does not publish: every decision is `Apply` and nothing needs registering.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn scanned_upto(&self) -> i64 {
        self.inner.lock().unwrap().scanned_upto
    }

    /// Register local changes read from the change log (ids in `(scanned_upto, upto]`).
    pub fn record_local(&self, rows: impl IntoIterator<Item = (RowKey, i64)>, upto: i64) {
        let mut inner = self.inner.lock().unwrap();
        if !self.enabled {
            inner.scanned_upto = inner.scanned_upto.max(upto);
            return;
        }
        let horizon = inner.scanned_upto;
        for (key, id) in rows {
            // Rows up to the horizon are already registered (by an earlier scan or by the publisher); seeing
            // them again must not resurrect an entry whose change has completed.
            if id <= horizon {
                continue;
            }
            let e = inner.map.entry(key).or_insert(Entry {
                log_id: 0,
                state: Packed::of(State::Unsent),
                published_with: 0,
            });
            if id > e.log_id {
                *e = Entry {
                    log_id: id,
                    state: Packed::of(State::Unsent),
                    published_with: 0,
                };
            }
        }
        inner.scanned_upto = inner.scanned_upto.max(upto);
    }

    /// The publisher is about to hand these changes (key, newest log id in the publish) to JetStream; its pass
    /// covers every change-log row up to `upto`.
    pub fn mark_sent<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a (RowKey, i64)>,
        upto: i64,
        schema_version: i64,
    ) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.scanned_upto = inner.scanned_upto.max(upto);
        for (key, id) in rows {
            match inner.map.get_mut(key) {
                Some(e) if *id < e.log_id => {}
                Some(e) => {
                    *e = Entry {
                        log_id: *id,
                        state: Packed::of(State::Sent),
                        published_with: schema_version,
                    }
                }
                None => {
                    inner.map.insert(
                        key.clone(),
                        Entry {
                            log_id: *id,
                            state: Packed::of(State::Sent),
                            published_with: schema_version,
                        },
                    );
                }
            }
        }
    }

    /// JetStream stored these changes: (key, log id, stream sequence). `None` as sequence means stored earlier
    /// at an unknown position (a retried publish found to be a duplicate): the entry is dropped.
    pub fn mark_acked<'a>(&self, rows: impl IntoIterator<Item = (&'a RowKey, i64, Option<u64>)>) {
        if !self.enabled {
            return;
        }
        {
            let mut inner = self.inner.lock().unwrap();
            for (key, id, seq) in rows {
                if let Some(e) = inner.map.get_mut(key)
                    && e.log_id == id
                    && e.state.get() == State::Sent
                {
                    match seq {
                        Some(s) => e.state = Packed::of(State::Acked(s)),
                        None => {
                            inner.map.remove(key);
                        }
                    }
                }
            }
        }
        self.acked.notify_waiters();
    }

    /// Decide what to do with an incoming change to `key` stored at stream position `seq`.
    pub fn decide(&self, key: &RowKey, seq: u64) -> Decision {
        if !self.enabled {
            return Decision::Apply;
        }
        let mut inner = self.inner.lock().unwrap();
        let Some(e) = inner.map.get(key).copied() else {
            return Decision::Apply;
        };
        match e.state.get() {
            State::Unsent => Decision::Skip,
            State::Sent => Decision::Wait,
            State::Acked(a) if seq < a => Decision::Skip,
            State::Acked(a) => {
                inner.map.remove(key);
                // A burst of local writes can leave a huge, mostly empty table behind: give it back.
                let cap = inner.map.capacity();
                if cap > 4096 && inner.map.len() * 8 < cap {
                    let len = inner.map.len();
                    inner.map.shrink_to(len * 2);
                }
                if seq == a {
                    Decision::Skip
                } else {
                    Decision::Apply
                }
            }
        }
    }

    /// What [`InFlight::decide`] would answer now for a change to `key` at `seq`, changing nothing; and whether
    /// `decide` would end the tracking (the change is at or past our own stored one). The applier decides with
    /// this inside its transaction and ends the tracking with `decide` once the transaction committed, so a
    /// transaction rolled back and tried again decides the same.
    pub fn peek(&self, key: &RowKey, seq: u64) -> (Decision, bool) {
        if !self.enabled {
            return (Decision::Apply, false);
        }
        let inner = self.inner.lock().unwrap();
        match inner.map.get(key).map(|e| e.state.get()) {
            Some(State::Unsent) => (Decision::Skip, false),
            Some(State::Sent) => (Decision::Wait, false),
            Some(State::Acked(a)) if seq < a => (Decision::Skip, false),
            Some(State::Acked(a)) if seq == a => (Decision::Skip, true),
            Some(State::Acked(_)) => (Decision::Apply, true),
            None => (Decision::Apply, false),
        }
    }

    /// True when [`InFlight::decide`] would certainly skip this change (without changing anything). Newer local
    /// writes found later can only turn an `Apply` into a `Skip`, never the reverse, so a batch whose rows all
    /// pass this test can be skipped without opening a write transaction.
    pub fn would_skip(&self, key: &RowKey, seq: u64) -> bool {
        if !self.enabled {
            return false;
        }
        let inner = self.inner.lock().unwrap();
        match inner.map.get(key).map(|e| e.state.get()) {
            Some(State::Unsent) => true,
            Some(State::Acked(a)) => seq <= a,
            _ => false,
        }
    }

    /// The schema version of the capture `key`'s newest local change was published with, once it is handed to
    /// JetStream or stored (its message carries the columns the table had then).
    pub fn published_with(&self, key: &RowKey) -> Option<i64> {
        let inner = self.inner.lock().unwrap();
        inner
            .map
            .get(key)
            .filter(|e| e.state.get() != State::Unsent)
            .map(|e| e.published_with)
    }

    /// True when any of `keys` waits for an acknowledgement.
    pub fn any_sent<'a>(&self, mut keys: impl Iterator<Item = &'a RowKey>) -> bool {
        if !self.enabled {
            return false;
        }
        let inner = self.inner.lock().unwrap();
        keys.any(|k| {
            inner
                .map
                .get(k)
                .is_some_and(|e| e.state.get() == State::Sent)
        })
    }

    /// Wait until the next acknowledgement is recorded (or the timeout passes).
    pub async fn wait_acked(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.acked.notified()).await;
    }

    /// Number of rows with a local change in flight.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> RowKey {
        row_key("t", &[n])
    }

    #[test]
    fn unsent_local_change_beats_every_incoming_change() {
        let p = InFlight::new(true, 0);
        p.record_local([(k(1), 5)], 5);
        assert_eq!(p.decide(&k(1), 100), Decision::Skip);
        assert_eq!(p.decide(&k(2), 100), Decision::Apply);
    }

    #[test]
    fn acked_change_orders_by_stream_position() {
        let p = InFlight::new(true, 0);
        p.record_local([(k(1), 5)], 5);
        p.mark_sent(&[(k(1), 5)], 5, 0);
        assert_eq!(p.decide(&k(1), 3), Decision::Wait);
        p.mark_acked([(&k(1), 5, Some(10))]);
        assert_eq!(
            p.decide(&k(1), 9),
            Decision::Skip,
            "older change from elsewhere"
        );
        assert_eq!(p.decide(&k(1), 10), Decision::Skip, "our own message");
        assert_eq!(p.decide(&k(1), 11), Decision::Apply, "entry ended");
        p.record_local([(k(1), 6)], 6);
        p.mark_sent(&[(k(1), 6)], 6, 0);
        p.mark_acked([(&k(1), 6, Some(20))]);
        assert_eq!(p.decide(&k(1), 21), Decision::Apply, "newer change wins");
        assert!(p.is_empty());
    }

    #[test]
    fn newer_local_write_keeps_the_key_unsent() {
        let p = InFlight::new(true, 0);
        p.record_local([(k(1), 5)], 5);
        p.mark_sent(&[(k(1), 5)], 5, 0);
        p.record_local([(k(1), 7)], 7);
        p.mark_acked([(&k(1), 5, Some(10))]);
        assert_eq!(p.decide(&k(1), 50), Decision::Skip);
        // a rescan of an older id does not downgrade the entry
        p.record_local([(k(1), 6)], 7);
        assert_eq!(p.decide(&k(1), 50), Decision::Skip);
    }

    #[test]
    fn a_completed_change_seen_again_by_a_scan_is_not_resurrected() {
        let p = InFlight::new(true, 0);
        p.mark_sent(&[(k(1), 1)], 1, 0); // the publisher got there before any scan
        p.mark_acked([(&k(1), 1, Some(1))]);
        assert_eq!(p.decide(&k(1), 1), Decision::Skip, "own message");
        p.record_local([(k(1), 1)], 1); // a late scan reads the same log row
        assert_eq!(
            p.decide(&k(1), 2),
            Decision::Apply,
            "a newer change from elsewhere must win"
        );
    }

    #[test]
    fn keys_inline_and_on_the_heap_compare_by_their_bytes_and_states_pack_into_one_word() {
        let short = row_key("books", &[1, 0, 0, 0, 0, 0, 0, 0, 42]);
        assert!(matches!(short, RowKey::Inline { .. }));
        assert_eq!(&short[..], b"books\0\x01\0\0\0\0\0\0\0\x2a");
        let long = row_key("a_table_with_a_long_name", b"key");
        assert!(matches!(long, RowKey::Heap(_)));
        assert_eq!(&long[..], b"a_table_with_a_long_name\0key");
        assert_ne!(row_key("t", b"a"), row_key("t", b"a\0"));
        assert_eq!(row_key("t", b"ab"), row_key("t", b"ab"));
        assert_eq!(std::mem::size_of::<RowKey>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        for s in [
            State::Unsent,
            State::Sent,
            State::Acked(1),
            State::Acked(1 << 40),
        ] {
            assert_eq!(Packed::of(s).get(), s);
        }
    }

    #[test]
    fn disabled_applies_everything() {
        let p = InFlight::new(false, 0);
        p.record_local([(k(1), 5)], 5);
        assert_eq!(p.decide(&k(1), 1), Decision::Apply);
    }
}
