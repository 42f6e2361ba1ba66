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
    /// Change-log ids up to here have been handed to a publish pass: their rows are in `map` (or set aside).
    sent_upto: i64,
    map: HashMap<RowKey, Entry, FxBuildHasher>,
    /// Local changes no publish pass has reached yet, to rows not in `map`: the newest change-log id by the
    /// fingerprint of the row's key ([`fingerprint`]). A writer far ahead of the publisher leaves hundreds of
    /// thousands of them; 16 bytes each here instead of a key and an entry (48). Entries at or below
    /// `sent_upto` are out of date (the publisher has the keys now). A fingerprint is checked against the
    /// change log before it decides anything ([`ChangeLog`]), so two keys with one fingerprint cost a search,
    /// never a wrong decision.
    unsent: HashMap<u64, i64, FxBuildHasher>,
}

impl Inner {
    /// For a key whose fingerprint is held as a change no publish pass has reached: that change's log id, and the
    /// publisher's and the registration's horizons, for [`unsent_local`] to check.
    fn candidate(&self, key: &RowKey) -> Option<(i64, i64, i64)> {
        if self.unsent.is_empty() {
            return None;
        }
        self.unsent
            .get(&fingerprint(key))
            .filter(|&&id| id > self.sent_upto)
            .map(|&id| (id, self.sent_upto, self.scanned_upto))
    }
}

/// Whether `key` has a local change that no publish pass has reached, held by its fingerprint as `candidate`
/// ([`Inner::candidate`]): checked in the change log, without the table's lock.
fn unsent_local<L: ChangeLog>(
    key: &RowKey,
    candidate: Option<(i64, i64, i64)>,
    log: &L,
) -> Result<bool, L::Error> {
    let Some((id, sent, scanned)) = candidate else {
        return Ok(false);
    };
    // The newest change with this fingerprint is usually the key's own; otherwise another key shares the
    // fingerprint, and only a search of the changes not yet published tells.
    Ok(log.has_change_to(id - 1, id, key)? || log.has_change_to(sent, scanned, key)?)
}

/// A burst of local writes can leave a huge, mostly empty table behind: give it back.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V, FxBuildHasher>) {
    let cap = map.capacity();
    if cap > 4096 && map.len() * 8 < cap {
        map.shrink_to(map.len() * 2);
    }
}

/// A row key's 64-bit fingerprint, for the table of changes not yet published.
fn fingerprint(key: &RowKey) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(&key[..])
}

/// The change log, where the applier checks a local change the table of changes not yet published holds only
/// by its key's fingerprint. Read inside the applier's write transaction, so nothing the check reads can be
/// deleted or added meanwhile.
pub trait ChangeLog {
    type Error;
    /// Whether a change-log row in `(after, upto]` is a local change to `key` (not a backfill).
    fn has_change_to(&self, after: i64, upto: i64, key: &RowKey) -> Result<bool, Self::Error>;
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
                sent_upto: scanned_upto,
                map: HashMap::default(),
                unsent: HashMap::default(),
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
            if let Some(e) = inner.map.get_mut(&key) {
                if id > e.log_id {
                    *e = Entry {
                        log_id: id,
                        state: Packed::of(State::Unsent),
                        published_with: 0,
                    };
                }
                continue;
            }
            let newest = inner.unsent.entry(fingerprint(&key)).or_insert(id);
            *newest = (*newest).max(id);
        }
        inner.scanned_upto = inner.scanned_upto.max(upto);
    }

    /// Room for `rows` more rows in flight, made at once before a large pass is marked sent: the table grown
    /// in one step instead of doubling while the pass's rows go in, each doubling holding the old table and the
    /// new one at the same time (a 200,000-row transaction into a small table: 13 MB instead of 19 MB at the
    /// peak; a table already large still ends in one doubling with both held). `rows` may count keys already
    /// tracked: the table is then a little larger than needed, never grown twice.
    pub fn reserve(&self, rows: usize) {
        if self.enabled {
            self.inner.lock().unwrap().map.reserve(rows);
        }
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
        if upto > inner.sent_upto {
            inner.sent_upto = upto;
            if !inner.unsent.is_empty() {
                inner.unsent.retain(|_, id| *id > upto);
                shrink_if_sparse(&mut inner.unsent);
            }
        }
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

    /// What to do with an incoming change to `key` stored at stream position `seq`, changing nothing; and
    /// whether the change ends the tracking of our own (it is at or past our own stored one: [`InFlight::settle`]
    /// once the transaction that decided it committed, so a transaction rolled back and tried again decides the
    /// same). Called inside the applier's write transaction, after the local changes committed before it were
    /// registered; `log` reads that transaction's change log.
    pub fn peek<L: ChangeLog>(
        &self,
        key: &RowKey,
        seq: u64,
        log: &L,
    ) -> Result<(Decision, bool), L::Error> {
        if !self.enabled {
            return Ok((Decision::Apply, false));
        }
        let (state, candidate) = {
            let inner = self.inner.lock().unwrap();
            (
                inner.map.get(key).map(|e| e.state.get()),
                inner.candidate(key),
            )
        };
        // A local change no publish pass has reached: it will be stored after this change, which is stored
        // already, so it wins.
        if unsent_local(key, candidate, log)? {
            return Ok((Decision::Skip, false));
        }
        Ok(match state {
            Some(State::Unsent) => (Decision::Skip, false),
            Some(State::Sent) => (Decision::Wait, false),
            Some(State::Acked(a)) if seq < a => (Decision::Skip, false),
            Some(State::Acked(a)) if seq == a => (Decision::Skip, true),
            Some(State::Acked(_)) => (Decision::Apply, true),
            None => (Decision::Apply, false),
        })
    }

    /// A change to `key` at stream position `seq` was applied or skipped for good: when it is at or past our own
    /// stored change to the row, the tracking of that change ends.
    pub fn settle(&self, key: &RowKey, seq: u64) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(State::Acked(a)) = inner.map.get(key).map(|e| e.state.get())
            && seq >= a
        {
            inner.map.remove(key);
            shrink_if_sparse(&mut inner.map);
        }
    }

    /// True when [`InFlight::peek`] would certainly skip this change (without changing anything or reading the
    /// change log). Newer local writes found later can only turn an `Apply` into a `Skip`, never the reverse, so
    /// a batch whose rows all pass this test can be skipped without opening a write transaction. A local change
    /// held only by its fingerprint is not certain without the change log: false.
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
    /// JetStream or stored (its message carries the columns the table had then). `log` as for
    /// [`InFlight::peek`].
    pub fn published_with<L: ChangeLog>(
        &self,
        key: &RowKey,
        log: &L,
    ) -> Result<Option<i64>, L::Error> {
        let (with, candidate) = {
            let inner = self.inner.lock().unwrap();
            let with = inner
                .map
                .get(key)
                .filter(|e| e.state.get() != State::Unsent)
                .map(|e| e.published_with);
            (with, inner.candidate(key))
        };
        if unsent_local(key, candidate, log)? {
            return Ok(None);
        }
        Ok(with)
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

    /// Number of rows with a local change in flight (those no publish pass has reached counted by fingerprint).
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.map.len() + inner.unsent.len()
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

    /// The change log: (id, key) rows.
    #[derive(Default)]
    struct Log(std::cell::RefCell<Vec<(i64, RowKey)>>);

    impl ChangeLog for Log {
        type Error = std::convert::Infallible;
        fn has_change_to(&self, after: i64, upto: i64, key: &RowKey) -> Result<bool, Self::Error> {
            Ok(self
                .0
                .borrow()
                .iter()
                .any(|(i, k)| *i > after && *i <= upto && k == key))
        }
    }

    /// A node's table and its change log, which every registered change is in.
    struct Node {
        p: InFlight,
        log: Log,
    }

    impl std::ops::Deref for Node {
        type Target = InFlight;
        fn deref(&self) -> &InFlight {
            &self.p
        }
    }

    impl Node {
        fn new(enabled: bool, scanned_upto: i64) -> Node {
            Node {
                p: InFlight::new(enabled, scanned_upto),
                log: Log::default(),
            }
        }

        fn record<const N: usize>(&self, rows: [(RowKey, i64); N], upto: i64) {
            for (key, id) in &rows {
                let mut log = self.log.0.borrow_mut();
                if !log.iter().any(|(i, _)| i == id) {
                    log.push((*id, key.clone()));
                }
            }
            self.p.record_local(rows, upto);
        }

        /// What the applier decides, and the tracking it ends once its transaction committed.
        fn decide(&self, key: &RowKey, seq: u64) -> Decision {
            let Ok((d, settles)) = self.p.peek(key, seq, &self.log);
            if settles {
                self.p.settle(key, seq);
            }
            d
        }
    }

    /// Room made for a large pass before its rows go in: the table does not grow again while they do.
    #[test]
    fn a_reserved_table_takes_the_pass_without_growing() {
        let p = InFlight::new(true, 0);
        let rows: Vec<(RowKey, i64)> = (0..50_000i64)
            .map(|i| (row_key("t", &i.to_be_bytes()), i + 1))
            .collect();
        p.reserve(rows.len());
        let reserved = p.inner.lock().unwrap().map.capacity();
        assert!(reserved >= rows.len());
        p.mark_sent(rows.iter(), 50_000, 1);
        let inner = p.inner.lock().unwrap();
        assert_eq!(inner.map.len(), 50_000);
        assert_eq!(inner.map.capacity(), reserved);
    }

    #[test]
    fn unsent_local_change_beats_every_incoming_change() {
        let p = Node::new(true, 0);
        p.record([(k(1), 5)], 5);
        assert_eq!(p.decide(&k(1), 100), Decision::Skip);
        assert_eq!(p.decide(&k(2), 100), Decision::Apply);
    }

    #[test]
    fn acked_change_orders_by_stream_position() {
        let p = Node::new(true, 0);
        p.record([(k(1), 5)], 5);
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
        p.record([(k(1), 6)], 6);
        p.mark_sent(&[(k(1), 6)], 6, 0);
        p.mark_acked([(&k(1), 6, Some(20))]);
        assert_eq!(p.decide(&k(1), 21), Decision::Apply, "newer change wins");
        assert!(p.is_empty());
    }

    #[test]
    fn newer_local_write_keeps_the_key_unsent() {
        let p = Node::new(true, 0);
        p.record([(k(1), 5)], 5);
        p.mark_sent(&[(k(1), 5)], 5, 0);
        p.record([(k(1), 7)], 7);
        p.mark_acked([(&k(1), 5, Some(10))]);
        assert_eq!(p.decide(&k(1), 50), Decision::Skip);
        // a rescan of an older id does not downgrade the entry
        p.record([(k(1), 6)], 7);
        assert_eq!(p.decide(&k(1), 50), Decision::Skip);
    }

    #[test]
    fn a_completed_change_seen_again_by_a_scan_is_not_resurrected() {
        let p = Node::new(true, 0);
        p.mark_sent(&[(k(1), 1)], 1, 0); // the publisher got there before any scan
        p.mark_acked([(&k(1), 1, Some(1))]);
        assert_eq!(p.decide(&k(1), 1), Decision::Skip, "own message");
        p.record([(k(1), 1)], 1); // a late scan reads the same log row
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
    fn changes_no_publish_pass_reached_are_held_by_fingerprint_until_one_does() {
        let p = Node::new(true, 0);
        p.record([(k(1), 1), (k(2), 2), (k(3), 3)], 3);
        assert_eq!(p.inner.lock().unwrap().unsent.len(), 3);
        assert!(p.inner.lock().unwrap().map.is_empty());
        assert_eq!(p.decide(&k(2), 100), Decision::Skip);
        assert_eq!(p.decide(&k(4), 100), Decision::Apply);
        assert!(!p.would_skip(&k(2), 100), "not certain without the log");
        // A pass reaches ids 1 and 2: their keys move to the table, the fingerprints up to 2 go.
        p.mark_sent(&[(k(1), 1), (k(2), 2)], 2, 0);
        assert_eq!(p.inner.lock().unwrap().unsent.len(), 1);
        assert_eq!(p.decide(&k(2), 100), Decision::Wait);
        assert_eq!(p.decide(&k(3), 100), Decision::Skip);
        p.mark_acked([(&k(2), 2, Some(7))]);
        assert_eq!(p.decide(&k(2), 6), Decision::Skip);
        assert_eq!(p.decide(&k(2), 8), Decision::Apply);
        // A newer write to a key the publisher has, registered while it was in the table: kept there.
        p.record([(k(1), 4)], 4);
        assert_eq!(p.inner.lock().unwrap().unsent.len(), 1);
        assert_eq!(p.published_with(&k(1), &p.log), Ok(None));
    }

    #[test]
    fn a_key_sent_with_an_older_change_skips_while_its_newer_change_is_unsent() {
        let p = Node::new(true, 0);
        // The applier registers id 1 (key 1) and id 5 (key 1 again) before the publisher gets there.
        p.record([(k(1), 1), (k(2), 2), (k(1), 5)], 5);
        // A pass up to id 2 sends key 1's change at id 1 only.
        p.mark_sent(&[(k(1), 1), (k(2), 2)], 2, 0);
        p.mark_acked([(&k(1), 1, Some(10))]);
        assert_eq!(
            p.decide(&k(1), 11),
            Decision::Skip,
            "id 5 is not published yet: it will be stored after 11"
        );
        assert_eq!(p.published_with(&k(1), &p.log), Ok(None));
        p.mark_sent(&[(k(1), 5)], 5, 3);
        assert_eq!(p.decide(&k(1), 12), Decision::Wait);
        assert!(p.inner.lock().unwrap().unsent.is_empty());
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_told_apart_by_the_change_log() {
        let p = Node::new(true, 0);
        p.record([(k(1), 1), (k(2), 2)], 2);
        // Pretend key 3's fingerprint is key 2's, holding key 2's id, and key 1's is taken by id 2 as well.
        {
            let mut inner = p.inner.lock().unwrap();
            inner.unsent.insert(fingerprint(&k(3)), 2);
            inner.unsent.insert(fingerprint(&k(1)), 2);
        }
        assert_eq!(p.decide(&k(3), 100), Decision::Apply, "no change to key 3");
        assert_eq!(p.decide(&k(1), 100), Decision::Skip, "found in the log");
        assert_eq!(p.decide(&k(2), 100), Decision::Skip);
    }

    #[test]
    fn disabled_applies_everything() {
        let p = Node::new(false, 0);
        p.record([(k(1), 5)], 5);
        assert_eq!(p.decide(&k(1), 1), Decision::Apply);
    }
}
