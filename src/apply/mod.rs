//! Applying: JetStream → SQLite.
//!
//! One consumer task per shard ([`consumer`]) feeds this module's single applier, which owns the write
//! connection. It applies many messages per SQLite transaction and writes each shard's applied stream position in
//! the same transaction, so a crash neither skips nor repeats a change. A unit (the parts of one publish) is
//! always inside one transaction, so readers never see half of a local transaction of another node.
//!
//! A message that cannot be applied rolls back only its unit and pauses its shard (the other shards go on); it
//! is counted, reported with its stream position, and retried. When the reason is that this node's schema is
//! behind (a table or column it does not have yet), its unit is held instead ([`held`]): it and every later
//! unit touching the tables it touches wait, the rest of the shard goes on, and the held units are tried again
//! once the local schema has been stable for [`SCHEMA_SETTLE`] (every second otherwise). A message that can never apply (undecodable,
//! malformed, or naming a reserved table: [`sql::ApplyError::is_poison`]) is not retried: it goes to the
//! [`quarantine`] with the rest of its unit and the shard goes on. Any other reason (a constraint, a busy or
//! failing database) is retried with backoff. Each apply transaction first checks that the capture in force matches the schema it
//! sees, and re-installs capture when it does not, so tables and columns are checked against the real schema.

pub mod consumer;
mod held;
pub mod journal;
mod pieces;
pub mod quarantine;
pub mod sql;
mod txn;
pub mod unique;
pub mod window;

#[cfg(test)]
mod engine_tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::capture::{self, APPLIED, CurrentCapture};
use crate::config::Config;
use crate::conflict::InFlight;
use crate::counters::{Counters, Total};
use crate::retry::Backoff;
use crate::wire::{self, Message};

/// Most rows applied in one SQLite transaction (a larger unit is still applied whole).
const MAX_TXN_ROWS: usize = 20_000;
/// Longest an apply transaction goes on taking units (it holds the write lock meanwhile): about 20,000 rows'
/// worth when catching up, still one unit at least.
const MAX_TXN_TIME: Duration = Duration::from_millis(100);
/// Most messages buffered per shard.
const MAX_QUEUED: usize = 1_000;
/// Most bytes (as received) buffered per shard: pieces of large values are large messages.
const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Most rows buffered per shard, decoded (a decoded row takes several times its compressed size): one
/// transaction's worth; the next ones wait undecoded between the consumer and the queue.
const MAX_QUEUED_ROWS: usize = MAX_TXN_ROWS;

/// A message delivered by a shard's consumer.
pub struct Incoming {
    pub seq: u64,
    pub payload: bytes::Bytes,
    /// Its share of the bytes a shard may have between its consumer and its queue (released once queued).
    pub _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// KiB a shard may have delivered and not yet queued (the channel holds up to 256 messages, which pieces of
/// large values would make hundreds of megabytes).
pub const IN_TRANSIT_KIB: u32 = 4 * 1024;

struct Decoded {
    seq: u64,
    /// The message; without its rows when they were put back in `body` (a unit larger than a transaction's
    /// worth of rows: see [`Decoded::message`]).
    msg: Result<Message, Arc<wire::WireError>>,
    /// The bytes received, kept only when they could not be decoded (for the quarantine).
    raw: Option<bytes::Bytes>,
    /// The bytes received, when `msg` holds the message without its rows.
    body: Option<Box<[u8]>>,
    /// Rows the message carries.
    rows: usize,
    /// For a message with conditional (backfill) rows: its window, once read (`window`).
    window: Option<Arc<window::Touched>>,
    /// Size as received.
    bytes: usize,
}

impl Decoded {
    /// The whole message: decoded again from its bytes when its rows were left there. A unit larger than
    /// the queue's row budget is held this way past the budget, as received (compressed), and each message
    /// is decoded when it is used and dropped after: a node holds one message's rows decoded, not the unit's.
    fn message(&self) -> Result<std::borrow::Cow<'_, Message>, Arc<wire::WireError>> {
        match (&self.msg, &self.body) {
            (Ok(_), Some(body)) => wire::decode(body)
                .map(std::borrow::Cow::Owned)
                .map_err(Arc::new),
            (Ok(m), None) => Ok(std::borrow::Cow::Borrowed(m)),
            (Err(e), _) => Err(e.clone()),
        }
    }

    /// `payload` as received at `seq`; its rows are left in the bytes when `past_budget` (see
    /// [`Decoded::message`]), unless the message needs them at hand (a backfill's, decided by its window).
    fn new(seq: u64, payload: bytes::Bytes, past_budget: bool) -> Decoded {
        let size = payload.len();
        let mut msg = wire::decode(&payload).map_err(Arc::new);
        let rows = msg.as_ref().map_or(0, row_count);
        let mut body = None;
        if let Ok(m) = &mut msg
            && past_budget
            && rows > 0
            && m.conditional.is_empty()
        {
            for t in &mut m.tables {
                t.rows = Vec::new();
            }
            body = Some(payload.to_vec().into_boxed_slice());
        }
        let raw = msg.is_err().then_some(payload);
        Decoded {
            seq,
            msg,
            raw,
            body,
            rows,
            window: None,
            bytes: size,
        }
    }
}

/// What a shard's consumer needs to feed the applier: where to start and where to deliver.
pub struct ShardInput {
    pub shard: u32,
    pub stream: String,
    /// First stream sequence to deliver (the applied position + 1).
    pub next: u64,
    pub tx: mpsc::Sender<Incoming>,
    /// Bounds the bytes in `tx` ([`IN_TRANSIT_KIB`]).
    pub room: Arc<tokio::sync::Semaphore>,
    /// Wakes the applier after a delivery.
    pub wake: Arc<Notify>,
}

/// A message its shard could not apply: where it is and why.
#[derive(Debug)]
struct Stuck {
    stream: String,
    seq: u64,
    error: sql::ApplyError,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream {} sequence {}: {}",
            self.stream, self.seq, self.error
        )
    }
}

struct ShardState {
    shard: u32,
    stream: String,
    rx: mpsc::Receiver<Incoming>,
    queue: VecDeque<Decoded>,
    /// Last stream position handled (applied or skipped) with nothing held before it: the position reported
    /// and recorded.
    applied: u64,
    /// Last stream position taken from the queue (applied, skipped, quarantined or held).
    processed: u64,
    /// Units held because this node's schema is behind ([`held`]), in stream order.
    held: Vec<held::HeldUnit>,
    /// Lower-cased tables the held units touch: later changes to them are held too.
    held_tables: HashSet<String>,
    /// Why: the missing table (lower-cased) → what was missing and since when.
    causes: BTreeMap<String, held::Cause>,
    /// When the held units are tried again.
    held_retry: Option<Instant>,
    /// Last stream position written to the database.
    persisted: u64,
    paused_until: Option<Instant>,
    backoff: Backoff,
    closed: bool,
}

#[derive(Debug, thiserror::Error)]
enum TxnError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error("a local change is being published for a row in this batch")]
    MustWait,
    #[error("the schema changed since capture was installed")]
    SchemaChanged,
}

pub struct Applier {
    cfg: Arc<Config>,
    /// Reads backfill windows from the streams.
    js: async_nats::jetstream::Context,
    capture: CurrentCapture,
    in_flight: Arc<InFlight>,
    counters: Arc<Counters>,
    conn: Connection,
    shards: Vec<ShardState>,
    wake: Arc<Notify>,
    /// Which position last set each recently written row (the conflict journal), unique indexes by table.
    mem: sql::Memory,
}

/// How long the applier waits for the write lock before its transaction fails as busy (and is tried again).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often it asks for the lock meanwhile.
const LOCK_POLL: Duration = Duration::from_millis(1);

/// The applier's busy handler: ask for the write lock again every [`LOCK_POLL`] for [`LOCK_WAIT`]. SQLite's own
/// waits grow to 100 ms between tries, and an application committing one transaction after another leaves the
/// lock free for moments that long sleeps miss: the applier fell behind for as long as the application wrote.
fn wait_for_the_lock(tries: i32) -> bool {
    if LOCK_POLL * tries.max(0) as u32 >= LOCK_WAIT {
        return false;
    }
    std::thread::sleep(LOCK_POLL);
    true
}

/// How long a paused shard waits before it tries its message again: 0.5 s, doubling up to 30 s.
const PAUSE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// How often a shard waiting for the local schema looks again, when no schema change woke it first.
const SCHEMA_RECHECK: Duration = Duration::from_secs(1);
/// How long the local schema must stay unchanged before a shard waiting for it tries again.
const SCHEMA_SETTLE: Duration = Duration::from_millis(500);

impl Applier {
    /// The applier owning the write connection `conn`, and one input per shard for its consumers, starting
    /// after each shard's applied position recorded in the database.
    pub fn new(
        cfg: Arc<Config>,
        js: async_nats::jetstream::Context,
        capture: CurrentCapture,
        in_flight: Arc<InFlight>,
        counters: Arc<Counters>,
        mut conn: Connection,
    ) -> Result<(Applier, Vec<ShardInput>), rusqlite::Error> {
        conn.busy_handler(Some(wait_for_the_lock))?;
        let positions = capture::applied_positions(&conn)?;
        let expired = pieces::expire(
            &conn,
            cfg.replication_log
                .max_age_seconds
                .get()
                .saturating_mul(1000),
        )?;
        if expired > 0 {
            tracing::warn!(
                pieces = expired,
                "removed pieces of large values staged longer than the streams keep changes; no row claimed them"
            );
        }
        let wake = Arc::new(Notify::new());
        let mut shards = Vec::new();
        let mut inputs = Vec::new();
        for shard in 1..=cfg.replication_log.shards.get() {
            let stream = cfg.stream_name(shard);
            let applied = positions.get(&stream).copied().unwrap_or(0);
            counters.set_applied(shard, applied);
            let (tx, rx) = mpsc::channel(256);
            inputs.push(ShardInput {
                room: Arc::new(tokio::sync::Semaphore::new(IN_TRANSIT_KIB as usize)),
                shard,
                stream: stream.clone(),
                next: applied + 1,
                tx,
                wake: wake.clone(),
            });
            shards.push(ShardState {
                shard,
                stream,
                rx,
                queue: VecDeque::new(),
                applied,
                processed: applied,
                held: Vec::new(),
                held_tables: HashSet::new(),
                causes: BTreeMap::new(),
                held_retry: None,
                persisted: applied,
                paused_until: None,
                backoff: PAUSE_BACKOFF,
                closed: false,
            });
        }
        let applier = Applier {
            cfg,
            js,
            capture,
            in_flight,
            counters,
            conn,
            shards,
            wake,
            mem: sql::Memory::default(),
        };
        Ok((applier, inputs))
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        self.run_loop(&cancel).await;
        tokio::task::block_in_place(|| self.flush_positions());
    }

    async fn run_loop(&mut self, cancel: &CancellationToken) {
        let mut busy = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut disk = crate::disk_full::DiskFull::new("applying");
        let mut schema = self.capture.subscribe();
        loop {
            // The local schema changed: shards waiting for it try again now.
            if schema.has_changed().unwrap_or(false) {
                schema.borrow_and_update();
                self.schema_changed();
            }
            if cancel.is_cancelled() {
                return;
            }
            self.fill();
            let now = Instant::now();
            for s in &mut self.shards {
                if s.paused_until.is_some_and(|t| t <= now) {
                    s.paused_until = None;
                }
            }
            let plan = self.plan();
            let held_due = self
                .shards
                .iter()
                .any(|s| !s.held.is_empty() && s.held_retry.is_some_and(|t| t <= now));
            if plan.iter().all(|&n| n == 0) && !held_due {
                if self.shards.iter().all(|s| s.closed && s.queue.is_empty())
                    || !self.idle(now, cancel, &mut schema).await
                {
                    return;
                }
                continue;
            }
            // A backfill's rows are decided by its stream window, read now (no lock held).
            if let Err(e) = self.read_windows(&plan).await {
                self.counters.error("apply", "backfill_window");
                tracing::warn!(error = %e, retry_in_ms = busy.current().as_millis() as u64,
                    "cannot read a backfill's window from the stream; retrying");
                if !busy.sleep(cancel).await {
                    return;
                }
                continue;
            }
            // Our own change to one of these rows is being published: wait for its position (no lock held).
            // Asked before whether everything is skipped: an acknowledgement arriving between the two questions
            // (our echo and its acknowledgement come at the same moment) would otherwise find the rows neither
            // waiting nor skipped, and open a write transaction for nothing.
            if self.must_wait(&plan) {
                self.in_flight.wait_acked(Duration::from_millis(20)).await;
                continue;
            }
            // Nothing to write (typically our own messages coming back): no write transaction at all, so an
            // application writing without a busy timeout does not meet our lock.
            if !held_due && self.all_skipped(&plan) {
                self.skip(&plan);
                continue;
            }
            let started = Instant::now();
            let r = tokio::task::block_in_place(|| self.apply(&plan));
            if !self.settle(r, started, &mut busy, &mut disk, cancel).await {
                return;
            }
        }
    }

    /// Nothing to apply: wait for a delivery, a schema change, the next retry due, or cancellation (false).
    async fn idle(
        &mut self,
        now: Instant,
        cancel: &CancellationToken,
        schema: &mut tokio::sync::watch::Receiver<i64>,
    ) -> bool {
        let next_retry = self
            .shards
            .iter()
            .filter_map(|s| s.paused_until)
            .chain(self.shards.iter().filter_map(|s| s.held_retry))
            .min();
        let sleep = next_retry
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = self.wake.notified() => {}
            r = schema.changed() => if r.is_ok() { self.schema_changed() },
            _ = tokio::time::sleep(sleep) => {}
        }
        true
    }

    /// After an apply transaction: what its outcome asks for (waiting for an own change's acknowledgement,
    /// re-installing capture, backing off). False when cancelled meanwhile.
    async fn settle(
        &mut self,
        r: Result<(), TxnError>,
        started: Instant,
        busy: &mut Backoff,
        disk: &mut crate::disk_full::DiskFull,
        cancel: &CancellationToken,
    ) -> bool {
        match r {
            Ok(()) => {
                busy.reset();
                disk.succeeded();
                metrics::histogram!("harmonylite_apply_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(TxnError::MustWait) => self.in_flight.wait_acked(Duration::from_millis(20)).await,
            Err(TxnError::SchemaChanged) => {
                let cfg = &*self.cfg;
                let r = tokio::task::block_in_place(|| {
                    self.capture
                        .refresh(&mut self.conn, &cfg.include_tables, &cfg.exclude_tables)
                });
                if let Err(e) = r {
                    tracing::warn!(error = %e, retry_in_ms = busy.current().as_millis() as u64,
                        "cannot re-install capture after a schema change; retrying");
                    return busy.sleep(cancel).await;
                }
            }
            Err(e @ (TxnError::Sqlite(_) | TxnError::Capture(_))) => {
                // Busy or I/O trouble (a full disk said once, loudly): nothing was applied; try again shortly.
                self.counters.error("apply", "transaction");
                if !disk.failed(&e) {
                    tracing::warn!(error = %e, retry_in_ms = busy.current().as_millis() as u64,
                        "apply transaction failed; retrying");
                }
                return busy.sleep(cancel).await;
            }
        }
        true
    }

    /// Read the window of every planned message with conditional rows that has none yet. A unit's later parts
    /// extend the window read for its earlier ones.
    async fn read_windows(&mut self, plan: &[usize]) -> Result<(), String> {
        for (s, &n) in self.shards.iter_mut().zip(plan) {
            let mut prev: Option<Arc<window::Touched>> = None;
            for d in s.queue.iter_mut().take(n) {
                if let Some(w) = &d.window {
                    prev = Some(w.clone());
                    continue;
                }
                let Ok(m) = &d.msg else { continue };
                if m.conditional.is_empty() {
                    continue;
                }
                let tables = window::conditional_tables(m);
                let b = window::Backfill::of(m);
                let w = match &prev {
                    Some(p) if p.covers(&b, d.seq, &tables) => p.clone(),
                    _ => Arc::new(
                        window::read(&self.js, &s.stream, b, d.seq, tables, prev.as_deref())
                            .await?,
                    ),
                };
                let (decided, superseded) = window::decide(m, &w);
                if superseded > 0 {
                    self.counters.add(Total::BackfillSuperseded, superseded);
                    tracing::info!(stream = %s.stream, seq = d.seq, rows = superseded,
                        "backfill rows superseded: the stream changed them after their node read them; \
                         their newer values stay");
                }
                d.msg = Ok(decided);
                d.window = Some(w.clone());
                prev = Some(w);
            }
        }
        Ok(())
    }

    /// Shards waiting for the local schema try again once it has been stable for [`SCHEMA_SETTLE`]: a
    /// migration tool that is still creating tables or writing its own rows finishes first.
    fn schema_changed(&mut self) {
        let at = Instant::now() + SCHEMA_SETTLE;
        for s in &mut self.shards {
            if !s.held.is_empty() {
                s.held_retry = Some(at);
            }
        }
    }

    /// Move delivered messages into the per-shard queues, decoding them.
    fn fill(&mut self) {
        for s in &mut self.shards {
            let mut bytes: usize = s.queue.iter().map(|d| d.bytes).sum();
            let mut rows: usize = s.queue.iter().map(|d| d.rows).sum();
            // The byte bound holds between units only: a unit is applied whole, so it must fit whole.
            let between_units = |q: &VecDeque<Decoded>| {
                q.back()
                    .is_none_or(|d| d.msg.as_ref().map_or(true, |m| m.last))
            };
            while s.queue.len() < MAX_QUEUED
                && ((bytes < MAX_QUEUED_BYTES && rows < MAX_QUEUED_ROWS)
                    || !between_units(&s.queue))
            {
                match s.rx.try_recv() {
                    Ok(inc) => {
                        if inc.seq <= s.processed
                            || s.queue.back().is_some_and(|d| d.seq >= inc.seq)
                        {
                            continue;
                        }
                        bytes += inc.payload.len();
                        let d = Decoded::new(inc.seq, inc.payload, rows >= MAX_QUEUED_ROWS);
                        rows += d.rows;
                        s.queue.push_back(d);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        s.closed = true;
                        break;
                    }
                }
            }
        }
    }

    /// How many queued messages of each shard go into the next transaction: whole units only, within the
    /// row budget (a single unit larger than the budget still goes whole).
    fn plan(&self) -> Vec<usize> {
        // Another node's schema change is applied alone, once every shard is past what its node had published
        // or applied when it made it; until then its shard stops before it and the others go on.
        let me = self.cfg.node_id;
        fn ddl_at(s: &ShardState, i: usize, me: u64) -> Option<&wire::Ddl> {
            let m = s.queue[i].msg.as_ref().ok()?;
            m.ddl.as_ref().filter(|_| m.origin != me)
        }
        for (si, s) in self.shards.iter().enumerate() {
            if s.paused_until.is_some() || s.queue.is_empty() {
                continue;
            }
            if let Some(ddl) = ddl_at(s, 0, me)
                && self.cfg.ddl.enabled
                && self
                    .shards
                    .iter()
                    .enumerate()
                    .all(|(k, o)| k == si || o.processed >= ddl.after.get(k).copied().unwrap_or(0))
            {
                let mut plan = vec![0; self.shards.len()];
                plan[si] = 1;
                return plan;
            }
        }
        let mut budget = MAX_TXN_ROWS;
        self.shards
            .iter()
            .map(|s| {
                if s.paused_until.is_some() {
                    return 0;
                }
                if s.held.iter().map(|u| u.msgs.len()).sum::<usize>() >= held::MAX_HELD {
                    // Holding too much: take nothing new until held changes are released.
                    return 0;
                }
                let mut take = 0;
                let mut i = 0;
                while i < s.queue.len() {
                    let Some(len) = unit_len(&s.queue, i) else {
                        break;
                    };
                    if self.cfg.ddl.enabled && ddl_at(s, i, me).is_some() {
                        break;
                    }
                    let rows = s.queue.range(i..i + len).map(|d| d.rows).sum();
                    if take > 0 && rows > budget {
                        break;
                    }
                    budget = budget.saturating_sub(rows);
                    take += len;
                    i += len;
                    if budget == 0 {
                        break;
                    }
                }
                take
            })
            .collect()
    }

    fn must_wait(&self, plan: &[usize]) -> bool {
        if self.in_flight.is_empty() {
            return false;
        }
        self.shards.iter().zip(plan).any(|(s, &n)| {
            s.queue.iter().take(n).any(|d| {
                d.message()
                    .is_ok_and(|m| self.in_flight.any_sent(sql::row_keys(&m).iter()))
            })
        })
    }

    fn all_skipped(&self, plan: &[usize]) -> bool {
        let cfg = &self.cfg;
        self.shards.iter().zip(plan).all(|(s, &n)| {
            s.queue.iter().take(n).all(|d| match &d.msg {
                // A change to a held table is held, never skipped ahead of what is held.
                Ok(m)
                    if !s.held_tables.is_empty()
                        && m.tables
                            .iter()
                            .any(|t| s.held_tables.contains(&t.table.to_lowercase())) =>
                {
                    false
                }
                // A schema change, also our own coming back (it is no longer pending here).
                Ok(m) if m.ddl.is_some() => false,
                // Another node's change skipped for our newer write may still take a unique value from
                // another row (DESIGN.md, "Unique collisions"): only our own changes skip the transaction.
                Ok(m) if m.origin != cfg.node_id => false,
                Ok(m) if m.piece.is_some() => pieces::own_now(m, cfg, &self.capture.get()),
                // Our own change skipped for a newer write of ours may still take a unique value from a row
                // another node wrote meanwhile: only tables known to have no unique index skip the
                // transaction.
                Ok(_) => d.message().is_ok_and(|m| {
                    m.tables.iter().all(|t| {
                        !capture::schema::selected(
                            &t.table,
                            &cfg.include_tables,
                            &cfg.exclude_tables,
                        ) || (self
                            .mem
                            .uniques
                            .known_without(self.capture.get().schema_version, &t.table)
                            && sql::row_keys_of(t).is_some_and(|keys| {
                                keys.iter().all(|k| self.in_flight.would_skip(k, d.seq))
                            }))
                    })
                }),
                Err(_) => false,
            })
        })
    }

    /// Handle planned messages whose rows are all skipped: positions advance in memory only; they are written
    /// with the next applied transaction (after a crash these messages are simply read and skipped again).
    fn skip(&mut self, plan: &[usize]) {
        let stats = &*self.counters;
        for (s, &n) in self.shards.iter_mut().zip(plan) {
            if n == 0 {
                continue;
            }
            let mut rows = 0u64;
            let mut dropped = 0u64;
            for d in s.queue.drain(..n) {
                if let Ok(m) = d.message() {
                    let cfg = &self.cfg;
                    dropped += m
                        .tables
                        .iter()
                        .filter(|t| {
                            !capture::schema::selected(
                                &t.table,
                                &cfg.include_tables,
                                &cfg.exclude_tables,
                            )
                        })
                        .map(|t| t.rows.len() as u64)
                        .sum::<u64>();
                    let own = m.origin == self.cfg.node_id;
                    for key in sql::row_keys(&m) {
                        self.in_flight.settle(&key, d.seq);
                        if own {
                            let last = journal::Last {
                                seq: d.seq,
                                origin: m.origin,
                                at_ms: m.at_ms,
                            };
                            self.mem.recent.note(key, last);
                        }
                        rows += 1;
                    }
                }
                s.processed = d.seq;
            }
            s.applied = match s.held.first() {
                Some(u) => s.processed.min(u.first_seq() - 1),
                None => s.processed,
            };
            stats.add(Total::SkippedRows, rows);
            stats.add(Total::DroppedRows, dropped);
            stats.add(Total::AppliedMessages, n as u64);
            stats.set_applied(s.shard, s.applied);
        }
    }

    /// Write positions advanced by skipped messages (at shutdown).
    fn flush_positions(&mut self) {
        if self.shards.iter().all(|s| s.applied == s.persisted) {
            return;
        }
        let r = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for s in &self.shards {
                if s.applied > s.persisted {
                    write_position(&tx, &s.stream, s.applied)?;
                }
            }
            tx.commit()
        })();
        match r {
            Ok(()) => self.shards.iter_mut().for_each(|s| s.persisted = s.applied),
            Err(e) => tracing::warn!(error = %e, "cannot record applied positions"),
        }
    }
}

fn write_position(tx: &rusqlite::Transaction<'_>, stream: &str, seq: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO {APPLIED}(stream, seq) VALUES(?1, ?2) ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq"
    ))?
    .execute(rusqlite::params![stream, seq as i64])?;
    Ok(())
}

/// Number of messages of the unit starting at `queue[i]`, or `None` while its last part has not arrived.
/// A part that does not start a unit (its unit was cut by a restart) counts as a unit of its own.
fn unit_len(queue: &VecDeque<Decoded>, i: usize) -> Option<usize> {
    let Ok(first) = &queue[i].msg else {
        return Some(1);
    };
    if first.last || first.part != 1 {
        return Some(1);
    }
    for (j, d) in queue.iter().enumerate().skip(i + 1) {
        match &d.msg {
            Ok(m) if m.unit == first.unit && m.part as usize == j - i + 1 => {
                if m.last {
                    return Some(j - i + 1);
                }
            }
            _ => return Some(1),
        }
    }
    None
}

fn row_count(m: &Message) -> usize {
    m.tables.iter().map(|t| t.rows.len()).sum()
}
