//! One apply transaction: the planned messages of every shard, each unit inside its own savepoint.
//!
//! In order: the change-log rows committed locally since the last look are registered as in flight (before our
//! own writes add echo rows); per shard, the held units whose retry is due are tried again, then the queued units
//! are applied, held (schema behind), quarantined (poison) or stop the shard (an error to retry); each shard's
//! position is written before the first message still held; the echo rows our applies left in the change log
//! are deleted; the transaction commits. Only then are the shards' states, the counters and the logs updated:
//! a transaction rolled back changes nothing but what [`Applier::apply`] undoes.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::TransactionBehavior;

use super::{
    Applier, Decoded, SCHEMA_RECHECK, ShardState, Stuck, TxnError, held, journal, pieces,
    quarantine, sql, unit_len, write_position,
};
use crate::capture;
use crate::config::Config;
use crate::conflict::InFlight;
use crate::counters::{Counters, Total};
use crate::wire;

impl Applier {
    /// Apply the planned messages in one transaction (blocking). When it is rolled back, what it decided about
    /// our own changes in flight is undone too, so trying again decides the same.
    pub(super) fn apply(&mut self, plan: &[usize]) -> Result<(), TxnError> {
        self.mem.settled.clear();
        let r = self.apply_txn(plan);
        if r.is_err() {
            let shards = &self.shards;
            let msgs = shards.iter().zip(plan).flat_map(|(s, &n)| {
                s.held
                    .iter()
                    .flat_map(|u| u.msgs.iter())
                    .chain(s.queue.range(..n))
                    .filter_map(|d| d.message().ok())
            });
            self.mem.rolled_back(msgs);
        }
        r
    }

    fn apply_txn(&mut self, plan: &[usize]) -> Result<(), TxnError> {
        {
            // Most of the local changes to register, read before the write lock is taken.
            let cap = self.capture.get();
            let read = self.conn.transaction()?;
            if capture::schema_version(&read)? == cap.schema_version {
                register_local(&read, &cap, &self.in_flight)?;
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Tables and columns are checked against the capture: it must describe the schema this transaction sees.
        let cap = self.capture.get();
        if capture::schema_version(&tx)? != cap.schema_version {
            return Err(TxnError::SchemaChanged);
        }
        let before = register_local(&tx, &cap, &self.in_flight)?;
        let mut txn = Txn {
            tx: &tx,
            in_flight: &self.in_flight,
            cfg: &self.cfg,
            cap: &cap,
            mem: &mut self.mem,
            total: sql::Applied::default(),
            quarantined: Vec::new(),
            reshaped: None,
            ddl_held: HashSet::new(),
            began: Instant::now(),
        };
        let now = Instant::now();
        let mut outcome = Vec::with_capacity(plan.len());
        for (s, &n) in self.shards.iter().zip(plan) {
            let o = txn.shard(s, n, now)?;
            if outcome.is_empty() {
                // Schema changes travel on the first shard: the tables one held there holds in every shard.
                txn.ddl_held = o.ddl_still.clone();
            }
            outcome.push(o);
        }
        let Txn {
            total,
            quarantined,
            reshaped,
            ..
        } = txn;
        // A schema change applied: capture installed again in this transaction, the tables it reshaped not
        // backfilled (their rows are the stream's).
        let installed = match &reshaped {
            Some(r) => Some(capture::install_in(
                &tx,
                &self.cfg.include_tables,
                &self.cfg.exclude_tables,
                r,
            )?),
            None => None,
        };
        if total.conflicts > 0 {
            journal::prune(&tx, &self.cfg.conflicts)?;
        }
        if !quarantined.is_empty() {
            quarantine::prune(&tx)?;
        }
        // Our applies fired the capture triggers: drop those rows so they are never published back.
        tx.execute(
            &format!("DELETE FROM {} WHERE id > ?1", capture::LOG),
            [before],
        )?;
        tx.commit()?;
        self.mem.committed(&self.in_flight);
        if let Some(cap) = installed {
            if let Some(r) = &reshaped {
                sql::narrowed(&self.capture.get(), &cap, r, &mut self.mem);
            }
            tracing::info!(
                tables = cap.tables.len(),
                "schema change from another node applied; capture re-installed"
            );
            self.capture.set(cap);
        }

        let stats = &*self.counters;
        count(stats, &total, &quarantined);
        let max_stuck = Duration::from_secs(self.cfg.health_check.max_stuck_seconds);
        for (s, o) in self.shards.iter_mut().zip(outcome) {
            settle_shard(s, o, stats, max_stuck);
        }
        Ok(())
    }
}

/// Change-log rows read at a time when registering local changes: a writer far ahead of the publisher leaves
/// hundreds of thousands, which read at once took tens of megabytes for a moment.
const REGISTER_CHUNK: i64 = 8192;

/// Register the local changes committed since the last look, before our own writes add echo rows; returns the
/// change log's last id, above which the rows are our applies' echoes. Also called before the write
/// transaction (on a read transaction), so that inside it, with the write lock held, only the few rows committed
/// in between are left to read.
fn register_local(
    tx: &rusqlite::Transaction<'_>,
    cap: &capture::Capture,
    in_flight: &InFlight,
) -> Result<i64, TxnError> {
    let before = capture::max_log_id(tx)?;
    // A node that does not publish decides nothing by its own writes: nothing to read.
    while in_flight.enabled() {
        // The publisher may have registered further meanwhile (as sent): start from wherever the table is.
        let scanned = in_flight.scanned_upto();
        if scanned >= before {
            break;
        }
        let upto = before.min(scanned + REGISTER_CHUNK);
        let rows = capture::read_log(tx, cap, scanned, upto)?;
        // A backfill is not a local write: newer changes from the stream must land over it (see
        // `window`), so it is not tracked as one.
        in_flight.record_local(
            rows.iter()
                .filter_map(|r| local_key(cap, r).map(|k| (k, r.id))),
            upto,
        );
    }
    Ok(before)
}

/// The row a change-log row records a local change to; `None` for a backfill (not a local write: newer changes
/// from the stream must land over it, see `window`), a schema change, or a table no longer captured.
fn local_key(cap: &capture::Capture, r: &capture::LogRow) -> Option<crate::conflict::RowKey> {
    if r.backfill || r.ddl.is_some() {
        return None;
    }
    cap.table(r.table_id)
        .map(|t| crate::conflict::row_key(&t.name, &wire::key_bytes(&r.key)))
}

/// The change log as the applier's write transaction sees it, for the conflict rule's local changes held only
/// by fingerprint.
pub(super) struct LocalLog<'a> {
    pub tx: &'a rusqlite::Connection,
    pub cap: &'a capture::Capture,
}

impl crate::conflict::ChangeLog for LocalLog<'_> {
    type Error = capture::CaptureError;

    fn has_change_to(
        &self,
        after: i64,
        upto: i64,
        key: &crate::conflict::RowKey,
    ) -> Result<bool, Self::Error> {
        let mut from = after;
        while from < upto {
            let to = upto.min(from + REGISTER_CHUNK);
            let rows = capture::read_log(self.tx, self.cap, from, to)?;
            if rows
                .iter()
                .any(|r| local_key(self.cap, r).is_some_and(|k| &k == key))
            {
                return Ok(true);
            }
            from = to;
        }
        Ok(false)
    }
}

/// What the transaction works with, and what it did over all shards.
struct Txn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    in_flight: &'a InFlight,
    cfg: &'a Config,
    cap: &'a capture::Capture,
    mem: &'a mut sql::Memory,
    total: sql::Applied,
    /// The poison of each quarantined unit, and the unit's number of messages.
    quarantined: Vec<(Stuck, usize)>,
    /// Tables (lower-cased) another node's schema change created or reshaped here, once one was applied.
    reshaped: Option<HashSet<String>>,
    /// Tables (lower-cased) a schema change held on the first shard touches: the other shards' changes to them
    /// wait too.
    ddl_held: HashSet<String>,
    /// When the transaction began: past [`super::MAX_TXN_TIME`] it takes no further unit.
    began: Instant,
}

impl Txn<'_> {
    /// Shard `s`'s part: its held units when their retry is due, then its first `n` queued messages, then its
    /// position.
    fn shard(&mut self, s: &ShardState, n: usize, now: Instant) -> Result<Outcome, TxnError> {
        let mut o = Outcome {
            last: s.processed,
            ..Outcome::default()
        };
        // Held units first (they are older than anything queued), once their retry is due.
        o.retried = !s.held.is_empty() && s.held_retry.is_some_and(|t| t <= now);
        if o.retried {
            self.retry_held(s, &mut o)?;
        } else {
            o.still = s.held_tables.clone();
            o.ddl_still = s
                .held
                .iter()
                .filter(|u| u.ddl)
                .flat_map(|u| u.tables.iter().cloned())
                .collect();
        }
        self.queued(s, n, &mut o)?;
        // The recorded position stays before the first message still held.
        let first_held = s
            .held
            .iter()
            .enumerate()
            .filter(|(ui, _)| !o.released.contains(ui))
            .map(|(_, u)| u.first_seq())
            .chain(o.newly_held.first().map(|&(i, _)| s.queue[i].seq))
            .min();
        o.position = match first_held {
            Some(f) => o.last.min(f - 1),
            None => o.last,
        };
        if o.position > s.persisted {
            write_position(self.tx, &s.stream, o.position)?;
        }
        Ok(o)
    }

    /// Try the held units again, oldest first; one whose tables are still held behind an older one waits.
    fn retry_held(&mut self, s: &ShardState, o: &mut Outcome) -> Result<(), TxnError> {
        for (ui, u) in s.held.iter().enumerate() {
            // After a schema change, the next transaction (its capture describes the new schema) goes on.
            if self.reshaped.is_some() {
                o.hold(&u.tables, u.ddl);
                continue;
            }
            if self.waits(&u.tables, u.ddl, o) {
                if u.ddl {
                    o.hold(&u.tables, true);
                }
                continue;
            }
            match self.unit(s, &u.msgs)? {
                None => {
                    o.released.push(ui);
                    if u.ddl {
                        capture::ddl_hold::release(self.tx, &u.tables)?;
                    }
                }
                Some(f) => {
                    if let sql::ApplyError::SchemaHeld { .. } = f.error {
                        capture::ddl_hold::hold(self.tx, &u.tables)?;
                    }
                    o.hold(&u.tables, u.ddl);
                    o.causes.push(f);
                }
            }
        }
        Ok(())
    }

    /// Whether a unit touching `tables` waits behind a held one: a schema change behind a held schema change
    /// to one of its tables, any other unit behind any held unit touching one of them (in any shard, for a held
    /// schema change).
    fn waits(&self, tables: &HashSet<String>, ddl: bool, o: &Outcome) -> bool {
        if ddl {
            !tables.is_disjoint(&o.ddl_still)
        } else {
            !tables.is_disjoint(&o.still) || !tables.is_disjoint(&self.ddl_held)
        }
    }

    /// The first `n` queued messages, unit by unit: applied, held (behind a held unit, or naming what the local
    /// schema lacks), quarantined (never applicable); the first other failure stops the shard there.
    fn queued(&mut self, s: &ShardState, n: usize, o: &mut Outcome) -> Result<(), TxnError> {
        let mut i = 0;
        // After a schema change, the next transaction (its capture describes the new schema) goes on; past its
        // time, the write lock is let go and the rest waits for the next one (the first unit always goes).
        while i < n
            && self.reshaped.is_none()
            && (i == 0 || self.began.elapsed() < super::MAX_TXN_TIME)
        {
            let unit_len = unit_len(&s.queue, i).unwrap_or(1).min(n - i);
            let last_seq = s.queue[i + unit_len - 1].seq;
            // The tables a unit touches matter only while something is held (or once it is).
            let unit = || s.queue.range(i..i + unit_len);
            let holding = !o.still.is_empty() || !self.ddl_held.is_empty();
            if holding && self.waits(&held::tables_of(unit()), held::is_ddl(unit()), o) {
                // A held unit touches these tables: this one waits behind it.
                o.hold(&held::tables_of(unit()), held::is_ddl(unit()));
                o.newly_held.push((i, unit_len));
            } else if let Some(f) = self.unit(s, unit())? {
                if let sql::ApplyError::SchemaHeld { .. } = f.error {
                    let tables = held::tables_of(unit());
                    capture::ddl_hold::hold(self.tx, &tables)?;
                    o.hold(&tables, true);
                    o.newly_held.push((i, unit_len));
                    o.causes.push(f);
                } else if matches!(f.error, sql::ApplyError::SchemaBehind { .. }) {
                    o.hold(&held::tables_of(unit()), false);
                    o.newly_held.push((i, unit_len));
                    o.causes.push(f);
                } else if !f.error.is_poison() {
                    o.error = Some(f);
                    break;
                } else {
                    // Never applicable: the unit goes to the quarantine and the shard goes on.
                    self.quarantine(s, i, unit_len, &f)?;
                    self.quarantined.push((f, unit_len));
                }
            }
            o.last = last_seq;
            o.taken += unit_len;
            i += unit_len;
        }
        Ok(())
    }

    /// One unit inside its savepoint: `None` when applied, the failure when rolled back to the savepoint.
    fn unit<'m>(
        &mut self,
        s: &ShardState,
        msgs: impl IntoIterator<Item = &'m Decoded>,
    ) -> Result<Option<Stuck>, TxnError> {
        self.tx.execute_batch("SAVEPOINT unit")?;
        let mark = self.mem.settled.len();
        let (tx, in_flight, cfg, cap) = (self.tx, self.in_flight, self.cfg, self.cap);
        let msgs: Vec<&Decoded> = msgs.into_iter().collect();
        match apply_unit(tx, msgs.iter().copied(), s, in_flight, cfg, cap, self.mem) {
            Ok(a) => {
                self.tx.execute_batch("RELEASE unit")?;
                self.total.add(a);
                for m in msgs.iter().filter_map(|d| d.msg.as_ref().ok()) {
                    if let Some(ddl) = m.ddl.as_ref().filter(|_| applies_ddl(m, cfg)) {
                        self.reshaped
                            .get_or_insert_default()
                            .extend(capture::ddl::reshaped(&ddl.changes));
                    }
                }
                Ok(None)
            }
            Err(UnitError::MustWait) => Err(TxnError::MustWait),
            Err(UnitError::Failed(f)) => {
                self.tx.execute_batch("ROLLBACK TO unit; RELEASE unit")?;
                self.mem.settled.truncate(mark);
                Ok(Some(f))
            }
        }
    }

    /// Record the unit at `queue[i..i + len]` in the quarantine, `f` naming its poison.
    fn quarantine(&self, s: &ShardState, i: usize, len: usize, f: &Stuck) -> Result<(), TxnError> {
        for d in s.queue.range(i..i + len) {
            let reason = if d.seq == f.seq {
                f.error.to_string()
            } else {
                format!("same transaction as message {} ({})", f.seq, f.error)
            };
            let whole = d.message();
            let msg = match (&whole, &d.raw) {
                (Ok(m), _) => Ok(&**m),
                (Err(_), raw) => Err(raw.as_deref().unwrap_or_default()),
            };
            quarantine::record(self.tx, &s.stream, d.seq, &reason, msg)?;
        }
        Ok(())
    }
}

/// The counters and log lines of a committed transaction's totals.
fn count(stats: &Counters, total: &sql::Applied, quarantined: &[(Stuck, usize)]) {
    if total.rows + total.skipped > 0 {
        tracing::debug!(
            applied_rows = total.rows,
            skipped_rows = total.skipped,
            "applied"
        );
    }
    stats.add(Total::AppliedRows, total.rows);
    for (f, messages) in quarantined {
        stats.add(Total::Quarantined, *messages as u64);
        stats.error("apply", f.error.kind());
        if matches!(f.error, sql::ApplyError::SchemaChange { .. }) {
            // Another node's schema change that no longer applies after an earlier one (or to this node's
            // table as it is): every node that applies it refuses it the same way.
            tracing::warn!(stream = %f.stream, seq = f.seq, error = %f.error,
                "schema change quarantined in __harmonylite__quarantine; the shard goes on");
        } else {
            tracing::error!(stream = %f.stream, seq = f.seq, messages, error = %f.error,
                "message can never be applied: quarantined in __harmonylite__quarantine with the rest of its transaction; the shard goes on");
        }
    }
    if total.conflicts > 0 {
        stats.add(Total::Conflicts, total.conflicts);
        tracing::info!(
            rows = total.conflicts,
            "conflicting writes: lost values (concurrent overwrites, unique collisions) kept in __harmonylite__conflicts"
        );
    }
    if total.rows > 10_000 {
        crate::memory::release();
    }
    stats.add(Total::SkippedRows, total.skipped);
    if total.dropped > 0 {
        stats.add(Total::DroppedRows, total.dropped);
        tracing::debug!(
            rows = total.dropped,
            "changes to tables or key columns this node does not replicate were not applied"
        );
    }
}

/// Shard `s` after a committed transaction: its queue drained, held units kept or released, its positions,
/// the counters, and a pause at its error if it met one.
fn settle_shard(s: &mut ShardState, o: Outcome, stats: &Counters, max_stuck: Duration) {
    s.persisted = s.persisted.max(o.position);
    let drained: Vec<Decoded> = s.queue.drain(..o.taken).collect();
    let mut drained: Vec<Option<Decoded>> = drained.into_iter().map(Some).collect();
    if o.retried {
        let mut ui = 0;
        s.held.retain(|_| {
            ui += 1;
            !o.released.contains(&(ui - 1))
        });
    }
    for &(i, len) in &o.newly_held {
        let msgs: Vec<Decoded> = drained[i..i + len]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        let tables = held::tables_of(msgs.iter());
        let ddl = held::is_ddl(msgs.iter());
        s.held.push(held::HeldUnit { msgs, tables, ddl });
    }
    let was_holding = !s.held_tables.is_empty();
    s.held_tables = o.still;
    s.processed = o.last;
    s.applied = o.position;
    if o.taken > 0 || !o.released.is_empty() {
        s.backoff.reset();
        stats.add(Total::AppliedMessages, o.taken as u64);
        stats.set_applied(s.shard, s.applied);
        stats.touch();
        stats
            .last_applied_ms
            .store(crate::counters::now_ms(), Ordering::Relaxed);
    }
    for f in &o.causes {
        held::note(s, stats, f);
    }
    let tables = &s.held_tables;
    s.causes.retain(|t, _| tables.contains(t));
    if s.held.is_empty() {
        s.held_retry = None;
        if was_holding || o.retried {
            tracing::info!(shard = s.shard, stream = %s.stream,
                "local schema caught up; shard resumed (held changes applied)");
        }
    } else if o.retried || s.held_retry.is_none() {
        s.held_retry = Some(Instant::now() + SCHEMA_RECHECK);
    }
    held::say_long(s, max_stuck);
    held::publish(s, stats);
    match o.error {
        Some(err) => pause(s, stats, err),
        // Not paused at an error: the pause reason is what it holds, if anything.
        None if s.paused_until.is_none() => stats.set_paused(s.shard, held::reason(s)),
        None => {}
    }
}

/// One unit's messages applied in order; the first failure ends it.
#[allow(clippy::too_many_arguments)]
fn apply_unit<'a>(
    tx: &rusqlite::Transaction<'_>,
    msgs: impl IntoIterator<Item = &'a Decoded>,
    s: &ShardState,
    in_flight: &InFlight,
    cfg: &Config,
    cap: &capture::Capture,
    mem: &mut sql::Memory,
) -> Result<sql::Applied, UnitError> {
    let mut total = sql::Applied::default();
    for d in msgs {
        let whole = d.message();
        let r = match &whole {
            Ok(m) if m.ddl.is_some() => schema_change(tx, m, d.seq, cfg),
            Ok(m) => match &m.piece {
                // Our own pieces come back: this database has the value.
                Some(_) if pieces::own_now(m, cfg, cap) => Ok(sql::Applied::default()),
                Some(p) => pieces::stage(tx, m, p, &s.stream, d.seq, &mut mem.staged)
                    .map(|()| sql::Applied::default())
                    .map_err(sql::ApplyError::from),
                None => sql::apply_message(tx, m, d.seq, in_flight, cfg, cap, mem).and_then(|a| {
                    if s.held.is_empty() {
                        pieces::passed(tx, m, &s.stream, &mut mem.staged)?;
                    }
                    Ok(a)
                }),
            },
            Err(e) => Err(sql::ApplyError::Decode(e.clone())),
        };
        match r {
            Ok(a) => total.add(a),
            Err(sql::ApplyError::MustWait) => return Err(UnitError::MustWait),
            Err(error) => {
                return Err(UnitError::Failed(Stuck {
                    stream: s.stream.clone(),
                    seq: d.seq,
                    error,
                }));
            }
        }
    }
    Ok(total)
}

/// Whether this node applies the schema change `m` carries: another node's, with schema replication on here.
fn applies_ddl(m: &wire::Message, cfg: &Config) -> bool {
    m.origin != cfg.node_id && cfg.ddl.enabled
}

/// Another node's schema change brought to this database, and the schema recorded as replicated (so it is not
/// sent back). Our own comes back to a database that has it; with schema replication off here it is not
/// applied (changes that need it are held until this node's own migration).
fn schema_change(
    tx: &rusqlite::Transaction<'_>,
    m: &wire::Message,
    seq: u64,
    cfg: &Config,
) -> Result<sql::Applied, sql::ApplyError> {
    let Some(ddl) = &m.ddl else {
        return Ok(sql::Applied::default());
    };
    if !applies_ddl(m, cfg) {
        if m.origin == cfg.node_id && cfg.ddl.enabled {
            // Ours, back: every change after it in stream order is applied on top of it.
            capture::ddl::own_returned(tx, &ddl.changes)?;
            capture::ddl_hold::applied(tx, &ddl.changes, seq)?;
        } else if m.origin != cfg.node_id {
            tracing::info!(
                origin = m.origin,
                changes = ddl.changes.len(),
                "schema change from another node not applied: [ddl] enabled is off here"
            );
        }
        return Ok(sql::Applied::default());
    }
    if let Err(e) = capture::ddl::apply(tx, &ddl.changes) {
        let reason = e.to_string();
        let after = ddl.after.first().copied().unwrap_or(0);
        // Made without knowing a change applied here before it in stream order: it no longer applies anywhere,
        // quarantined. Nor does one naming a reserved object or carrying anything but a schema statement.
        // Otherwise this node's schema differs for a reason of its own: held until fixed.
        let holdable = matches!(
            e,
            capture::ddl::DdlError::Sqlite(_) | capture::ddl::DdlError::Differs { .. }
        );
        if !holdable || capture::ddl_hold::concurrent(tx, &ddl.changes, after)? {
            return Err(sql::ApplyError::SchemaChange {
                origin: m.origin,
                reason,
            });
        }
        return Err(sql::ApplyError::SchemaHeld {
            origin: m.origin,
            statement: capture::ddl_hold::describe(&ddl.changes),
            reason,
        });
    }
    capture::ddl::record(tx, &cfg.include_tables, &cfg.exclude_tables)?;
    capture::ddl_hold::applied(tx, &ddl.changes, seq)?;
    tracing::info!(
        origin = m.origin,
        changes = ddl.changes.len(),
        "schema change from another node applied"
    );
    Ok(sql::Applied::default())
}

enum UnitError {
    MustWait,
    Failed(Stuck),
}

/// What one apply transaction did to one shard.
#[derive(Default)]
struct Outcome {
    /// Messages taken from the queue (applied, quarantined or held).
    taken: usize,
    /// The last of them (or the shard's processed position).
    last: u64,
    /// The position recorded: `last`, or before the first message still held.
    position: u64,
    error: Option<Stuck>,
    /// Whether the held units were tried again, and which of them (indexes) were applied.
    retried: bool,
    released: Vec<usize>,
    /// Queue ranges (start, length) held in this transaction.
    newly_held: Vec<(usize, usize)>,
    /// Lower-cased tables still held after it.
    still: HashSet<String>,
    /// Those of them a held schema change touches.
    ddl_still: HashSet<String>,
    /// Why units are held (the missing table or column each one named).
    causes: Vec<Stuck>,
}

impl Outcome {
    /// A unit touching `tables` (a schema change: `ddl`) is held.
    fn hold(&mut self, tables: &HashSet<String>, ddl: bool) {
        self.still.extend(tables.iter().cloned());
        if ddl {
            self.ddl_still.extend(tables.iter().cloned());
        }
    }
}

/// Pause shard `s` at the message it could not apply (a change naming a table or column this node lacks is held
/// instead, never paused at: see [`held`]).
fn pause(s: &mut ShardState, stats: &Counters, err: Stuck) {
    stats.add(Total::ApplyErrors, 1);
    stats.error("apply", err.error.kind());
    let delay = s.backoff.next_delay();
    tracing::error!(shard = s.shard, error = %err, retry_in_ms = delay.as_millis() as u64,
        "cannot apply message; shard paused, will retry");
    s.paused_until = Some(Instant::now() + delay);
    stats.set_paused(s.shard, Some(err.to_string()));
}
