//! Publishing: change log → messages → JetStream.
//!
//! A *pass* reads, inside one read transaction, every change-log row committed since the last acknowledged
//! one (so only whole local transactions), coalesces them by row, reads each row's current values, splits them
//! by shard and packs them into messages of at most `scan_max_changes` rows. Each shard's messages of a pass
//! form one *unit*: one message, or a JetStream atomic batch of several, so a peer applies the unit in one
//! SQLite transaction. All shards of a pass are published concurrently; the pass is recorded as published
//! only when every shard is acknowledged. On any error the same messages are retried with backoff under the
//! same message ids, so nothing is lost and nothing is stored twice.

pub mod ends;
pub mod large;
pub mod recover;
pub mod state;

#[cfg(test)]
mod engine_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use rusqlite::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, CurrentCapture, TableInfo};
use crate::config::Config;
use crate::conflict::{InFlight, RowKey};
use crate::counters::{Counters, Total};
use crate::retry::Backoff;
use crate::wire::{self, Message, Row, TableChanges, Value};
use state::PublishState;

/// Most change-log rows one pass reads; a larger backlog is published over several passes.
pub const MAX_PASS_ROWS: i64 = 100_000;
/// JetStream's limit on messages per atomic batch.
const MAX_BATCH_MESSAGES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("publish to {subject}: {source}")]
    Send {
        subject: String,
        source: async_nats::PublishError,
    },
    #[error("publish to {subject}: {source}")]
    Ack {
        subject: String,
        source: jetstream::context::PublishError,
    },
}

/// JetStream's error code for an atomic batch whose message id it has already stored.
const BATCH_DUPLICATE_MESSAGE_ID: jetstream::ErrorCode = jetstream::ErrorCode(10201);

impl PublishError {
    /// A short name of the kind, for the error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Sqlite(_) => "sqlite",
            PublishError::Capture(_) => "capture",
            PublishError::State(_) => "state",
            PublishError::Send { .. } => "send",
            PublishError::Ack { .. } => "ack",
        }
    }
}

impl PublishError {
    /// True when the server (or the client, before sending) refuses the message for good: it is too large for
    /// this server or stream. Retrying the same bytes cannot help.
    pub fn is_permanent(&self) -> bool {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(&s.to_string());
            source = s.source();
        }
        let text = text.to_ascii_lowercase();
        [
            "max payload",
            "maximum payload",
            "exceeds maximum",
            "message size exceeds",
        ]
        .iter()
        .any(|p| text.contains(p))
    }
}

/// True when a batch commit was refused because an earlier attempt already stored the batch.
fn is_duplicate_batch(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| js.error_code() == BATCH_DUPLICATE_MESSAGE_ID)
}

/// One shard's share of a pass.
struct ShardUnit {
    shard: u32,
    msg_id: String,
    payloads: Vec<Vec<u8>>,
    /// Per message: the rows it carries (key, newest log id), conditional rows left out (they are not local
    /// writes in flight: see `conflict`).
    rows: Vec<Vec<(RowKey, i64)>>,
    /// Whether the unit carries conditional (backfill) rows.
    conditional: bool,
}

struct Pass {
    end: i64,
    rows: usize,
    units: Vec<ShardUnit>,
    /// Changes that can never be published (see [`large`]).
    aside: Vec<large::Aside>,
    /// The schema version of the capture the rows were read with (their columns).
    schema_version: i64,
}

pub struct Publisher {
    cfg: Arc<Config>,
    conn: Connection,
    state: PublishState,
    capture: CurrentCapture,
    in_flight: Arc<InFlight>,
    counters: Arc<Counters>,
    js: jetstream::Context,
    client: async_nats::Client,
    wake: Arc<Notify>,
    limits: large::Limits,
    /// Where local transactions end, as far as seen: passes under a backlog end at one.
    ends: Arc<ends::CommitEnds>,
}

impl Publisher {
    /// A publisher reading the change log through `conn` from `state`'s position; it re-installs `capture`
    /// when the schema changes and records its changes in flight in `in_flight`.
    pub fn new(
        cfg: Arc<Config>,
        conn: Connection,
        state: PublishState,
        capture: CurrentCapture,
        in_flight: Arc<InFlight>,
        counters: Arc<Counters>,
        client: async_nats::Client,
    ) -> Result<Publisher, PublishError> {
        // What earlier runs had acknowledged counts from the start, not only after this run's first pass.
        if cfg.publish {
            counters.set_published_upto(state.published_upto.max(0) as u64);
        }
        let server_max = client.server_info().max_payload as u64;
        let limits = large::Limits::new(cfg.replication_log.max_message_bytes, server_max);
        if (limits.message as u64) < cfg.replication_log.max_message_bytes {
            tracing::info!(
                max_payload = server_max,
                max_message_bytes = limits.message,
                "messages kept under the server's max_payload (replication_log.max_message_bytes is larger)"
            );
        }
        let js = crate::nats::jetstream_context(&client, &cfg.nats.jetstream_domain);
        Ok(Publisher {
            limits,
            cfg,
            conn,
            state,
            capture,
            in_flight,
            counters,
            js,
            client,
            wake: Arc::new(Notify::new()),
            ends: Arc::default(),
        })
    }

    /// Where local transactions end, as seen by the sampler ([`ends::start_sampler`]) that feeds it.
    pub fn commit_ends(&self) -> Arc<ends::CommitEnds> {
        self.ends.clone()
    }

    /// Wakes the publisher for a pass (file events, start-up).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The change log's ids up to here are acknowledged by JetStream.
    pub fn published_upto(&self) -> i64 {
        self.state.published_upto
    }

    /// Publish everything the change log holds, retrying failures, until it is empty (true) or `cancel` fires
    /// (false). Used before a snapshot replaces the database, so no local change is thrown away.
    pub async fn drain(&mut self, cancel: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            match self.pass(cancel).await {
                Ok(true) => backoff.reset(),
                Ok(false) if !cancel.is_cancelled() => return true,
                Ok(false) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish local changes before the restore; retrying");
                    if !backoff.sleep(cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Publish until cancelled: a pass at every wake-up, and published rows removed every `cleanup_interval`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let cleanup_every = Duration::from_millis(self.cfg.cleanup_interval_ms.get());
        let mut cleanup =
            tokio::time::interval_at(tokio::time::Instant::now() + cleanup_every, cleanup_every);
        let mut delete_below = self.state.published_upto;
        let mut deleted_below = 0i64;
        let mut last_delete = std::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut disk = crate::disk_full::DiskFull::new("publishing");
        // A file event can arrive before the commit that caused it is visible (SQLite updates the WAL index
        // through shared memory, which raises no event): after a wake that found nothing, look again shortly.
        let mut recheck: Option<Duration> = None;
        loop {
            match self.pass(&cancel).await {
                Ok(true) => {
                    backoff.reset();
                    disk.succeeded();
                    continue;
                }
                Ok(false) => {
                    backoff.reset();
                    disk.succeeded();
                }
                Err(e) => {
                    self.counters.error("publish", e.kind());
                    if !disk.failed(&e) {
                        tracing::warn!(error = %e, retry_in_ms = backoff.current().as_millis() as u64, "publish pass failed; changes stay pending");
                    }
                    if !backoff.sleep(&cancel).await {
                        return;
                    }
                    continue;
                }
            }
            let recheck_sleep = async {
                match recheck {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => recheck = Some(Duration::from_millis(1)),
                _ = recheck_sleep => {
                    recheck = recheck.map(|d| d * 2).filter(|d| *d <= Duration::from_millis(128));
                }
                _ = cleanup.tick() => {
                    // Rows acknowledged at the previous tick have been published for at least one interval.
                    // Deleting takes the database's write lock, which an application without a busy timeout
                    // would meet: delete in batches (1024 rows or more), or once a minute for a trickle.
                    let due = delete_below - deleted_below >= 1024
                        || (delete_below > deleted_below && last_delete.elapsed() >= Duration::from_secs(60));
                    if due {
                        let below = delete_below;
                        match tokio::task::block_in_place(|| capture::delete_published(&self.conn, below)) {
                            Ok(n) => {
                                tracing::debug!(rows = n, "removed published change-log rows");
                                deleted_below = below;
                                last_delete = std::time::Instant::now();
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot remove published change-log rows"),
                        }
                    }
                    delete_below = self.state.published_upto;
                }
            }
        }
    }

    /// One pass. Returns true when something was published (there may be more).
    async fn pass(&mut self, cancel: &CancellationToken) -> Result<bool, PublishError> {
        let scan = std::time::Instant::now();
        let Some(pass) = tokio::task::block_in_place(|| self.build())? else {
            return Ok(false);
        };
        metrics::histogram!("harmonylite_scan_changes").record(scan.elapsed().as_micros() as f64);
        let started = std::time::Instant::now();
        let stats = &*self.counters;
        if !self.cfg.publish {
            // publish = false: changes are read and discarded.
            self.state.published_upto = pass.end;
            self.state.inflight_end = pass.end;
            self.state.save()?;
            stats.add(Total::DiscardedRows, pass.rows as u64);
            return Ok(true);
        }
        if !pass.aside.is_empty() {
            tokio::task::block_in_place(|| large::set_aside(&self.conn, &pass.aside, stats))?;
            self.forget(
                pass.aside.iter().map(|a| (a.key.clone(), a.log_id)),
                pass.end,
            );
        }
        self.in_flight.reserve(pass.rows);
        self.in_flight.mark_sent(
            pass.units.iter().flat_map(|u| u.rows.iter().flatten()),
            pass.end,
            pass.schema_version,
        );

        let Some(acks) = self.send(&pass, cancel).await? else {
            return Ok(false);
        };
        self.acknowledged(&pass, &acks)?;
        metrics::histogram!("harmonylite_publish_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        let large = pass.rows > 10_000;
        drop(pass);
        if large {
            crate::memory::release();
        }
        Ok(true)
    }

    /// Publish every unit of `pass`, all shards at once, retrying the failed ones under the same message ids
    /// until each is acknowledged (its messages' stream positions) or refused for good (set aside, no
    /// positions). `None` when cancelled first.
    async fn send(
        &mut self,
        pass: &Pass,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<Option<Vec<u64>>>>, PublishError> {
        let stats = &*self.counters;
        let mut acks: Vec<Option<Vec<u64>>> = vec![None; pass.units.len()];
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let todo: Vec<usize> = (0..pass.units.len())
                .filter(|&i| acks[i].is_none())
                .collect();
            let (js, client, cfg) = (&self.js, &self.client, &*self.cfg);
            let results = futures::future::join_all(
                todo.iter()
                    .map(|&i| publish_unit(js, client, cfg, &pass.units[i], attempt)),
            )
            .await;
            let mut failed = None;
            for (i, r) in todo.into_iter().zip(results) {
                match r {
                    Ok(seqs) => acks[i] = Some(seqs),
                    Err(e) if e.is_permanent() => {
                        // Refused for good: retrying cannot help, and the changes behind must not wait for it.
                        self.refused(&pass.units[i], pass.end, &e)?;
                        acks[i] = Some(Vec::new());
                    }
                    Err(e) => failed = Some(e),
                }
            }
            let Some(err) = failed else {
                return Ok(Some(acks));
            };
            stats.add(Total::PublishErrors, 1);
            stats.error("publish", err.kind());
            tracing::warn!(error = %err, retry_in_ms = backoff.current().as_millis() as u64, "publish failed; retrying the same messages");
            if !backoff.sleep(cancel).await {
                return Ok(None);
            }
            attempt += 1;
        }
    }

    /// Set aside the rows of `unit`, which the server refused for good with `e`.
    fn refused(&self, unit: &ShardUnit, end: i64, e: &PublishError) -> Result<(), PublishError> {
        let reason = format!("the server refused its message for good: {e}");
        let aside: Vec<large::Aside> = unit
            .rows
            .iter()
            .flatten()
            .map(|(key, log_id)| large::Aside {
                log_id: *log_id,
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect();
        tokio::task::block_in_place(|| large::set_aside(&self.conn, &aside, &self.counters))?;
        self.forget(aside.into_iter().map(|a| (a.key, a.log_id)), end);
        Ok(())
    }

    /// Every unit of `pass` acknowledged (`acks`, per unit): its rows leave the conflict rule's tracking with
    /// their positions, the pass is recorded as published, the counters move.
    fn acknowledged(&mut self, pass: &Pass, acks: &[Option<Vec<u64>>]) -> Result<(), PublishError> {
        let stats = &*self.counters;
        let acked = pass.units.iter().zip(acks).flat_map(|(unit, seqs)| {
            unit.rows.iter().enumerate().flat_map(move |(i, rows)| {
                let seq = seqs
                    .as_ref()
                    .and_then(|s| s.get(i).copied())
                    .filter(|&s| s > 0);
                rows.iter().map(move |(k, id)| (k, *id, seq))
            })
        });
        self.in_flight.mark_acked(acked);
        for (unit, seqs) in pass.units.iter().zip(acks) {
            if let Some(top) = seqs.as_ref().and_then(|s| s.iter().max()) {
                stats.set_published_seq(unit.shard, *top);
            }
            if unit.conditional {
                // Stored at these positions (0: stored by an earlier attempt, position unknown: the hold then
                // ends once every node is past the stream's end as it is now).
                let top = seqs
                    .as_ref()
                    .and_then(|s| s.iter().max())
                    .copied()
                    .unwrap_or(0);
                stats.hold_until(unit.shard, top);
            }
        }
        let msgs: usize = pass.units.iter().map(|u| u.payloads.len()).sum();
        stats.add(Total::PublishedMessages, msgs as u64);
        self.state.published_upto = pass.end;
        self.state.inflight_end = pass.end;
        self.state.save()?;
        stats.set_published_upto(pass.end.max(0) as u64);
        tracing::debug!(
            rows = pass.rows,
            units = pass.units.len(),
            upto = pass.end,
            in_flight = self.in_flight.len(),
            "published"
        );
        stats.add(Total::PublishedRows, pass.rows as u64);
        stats.touch();
        stats
            .last_published_ms
            .store(crate::counters::now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// End the conflict rule's tracking of rows set aside: no echo of them will come back, so newer changes
    /// from the stream may land on them.
    fn forget(&self, rows: impl Iterator<Item = (crate::conflict::RowKey, i64)>, upto: i64) {
        let rows: Vec<(crate::conflict::RowKey, i64)> = rows.collect();
        self.in_flight.mark_sent(rows.iter(), upto, 0);
        self.in_flight
            .mark_acked(rows.iter().map(|(k, id)| (k, *id, None)));
    }

    /// Read the next pass from the change log (blocking; runs inside `block_in_place`).
    ///
    /// The pass is read in one read transaction whose schema version is the one the capture in force was
    /// installed against: when the schema changed (a new table, a new column), capture is installed again
    /// first, so every row is read with the columns its table has now.
    fn build(&mut self) -> Result<Option<Pass>, PublishError> {
        // The server's limit as it says now (it may have changed with a reconnect).
        self.limits = large::Limits::new(
            self.cfg.replication_log.max_message_bytes,
            self.client.server_info().max_payload as u64,
        );
        let cfg = &*self.cfg;
        let (cap, tx) = loop {
            let cap = self.capture.get();
            let tx = self.conn.transaction()?;
            if capture::schema_version(&tx)? == cap.schema_version {
                break (cap, tx);
            }
            drop(tx);
            self.capture
                .refresh(&mut self.conn, &cfg.include_tables, &cfg.exclude_tables)?;
        };
        let max = capture::max_log_id(&tx)?;
        let from = self.state.published_upto;
        if max <= from {
            return Ok(None);
        }
        self.ends.note(max);
        self.ends.set_behind(max - from > ends::TARGET_PASS_ROWS);
        let end = if self.state.inflight_end > from {
            self.state.inflight_end.min(max)
        } else {
            self.ends.cut(from, max)
        };
        // A schema change made here goes alone in a pass of its own; the changes before it go first.
        let mut end = end;
        if let Some(d) = capture::first_schema_change(&tx, from, end)? {
            if capture::any_captured(&tx, &cap, from, d - 1)? {
                end = d - 1;
            } else {
                let ctx = unit_context(&tx, cfg, &cap, false, d, self.limits)?;
                let changes = capture::read_log(&tx, &cap, d - 1, d)?
                    .pop()
                    .and_then(|r| r.ddl)
                    .unwrap_or_default();
                tx.commit()?;
                return self.schema_pass(&ctx, changes, d).map(Some);
            }
        }
        let backfill = capture::any_backfill(&tx, from, end)?;
        let ctx = unit_context(&tx, cfg, &cap, backfill, end, self.limits)?;
        let sink = large::PieceSink {
            js: &self.js,
            counters: &self.counters,
            limits: self.limits,
            compress: cfg.replication_log.compress,
            origin: cfg.node_id,
            incarnation: cap.incarnation,
            schema: cap.fingerprint,
            at_ms: ctx.at_ms,
            prefix: &ctx.prefix,
        };
        let mut aside = Vec::new();
        let mut shards: HashMap<u32, ShardBuild> = HashMap::new();
        // Each row is read and encoded as its change comes: a pass holds its encoded messages, not its rows.
        let rows = capture::for_each_newest(&tx, &cap, from, end, |lr| {
            let Some(info) = cap.table(lr.table_id) else {
                return Ok(());
            };
            let conditional = lr.backfill;
            let kb = wire::key_bytes(&lr.key);
            let shard = wire::shard_of(&info.name, &kb, cfg.replication_log.shards.get());
            let key = crate::conflict::row_key(&info.name, &kb);
            match read_change(&tx, cfg, &sink, info, &lr, shard)? {
                Ok(row) => shards
                    .entry(shard)
                    .or_insert_with(|| ShardBuild::new(shard))
                    .push(&ctx, info, row, (key, lr.id), conditional),
                Err(reason) => aside.push(large::Aside {
                    log_id: lr.id,
                    key,
                    reason,
                }),
            }
            Ok::<(), PublishError>(())
        })?;
        tx.commit()?;
        let mut builds: Vec<ShardBuild> = shards.into_values().collect();
        builds.sort_unstable_by_key(|b| b.shard);
        let units: Vec<ShardUnit> = builds.into_iter().flat_map(|b| b.finish(&ctx)).collect();
        // A backfill's window (after `seen`, before its own position) stays in the stream until every node has
        // handled the backfill: see `Counters::hold`.
        for u in units.iter().filter(|u| u.conditional && cfg.publish) {
            let seen = ctx
                .backfill_seen
                .get(u.shard as usize - 1)
                .copied()
                .unwrap_or(0);
            self.counters.hold(u.shard, seen);
        }
        if self.state.inflight_end != end {
            self.state.inflight_end = end;
            self.state.save()?;
        }
        Ok(Some(Pass {
            end,
            rows,
            units,
            aside,
            schema_version: cap.schema_version,
        }))
    }
}

impl Publisher {
    /// The pass of a schema change made here: one message on the first shard's stream, saying how far each
    /// shard was published or applied here when it was made (a node applies it once each shard is past that).
    fn schema_pass(
        &mut self,
        ctx: &UnitContext,
        changes: Vec<wire::SchemaChange>,
        end: i64,
    ) -> Result<Pass, PublishError> {
        let published = self.counters.published_seqs();
        let after = ctx
            .seen
            .iter()
            .enumerate()
            .map(|(i, &seen)| seen.max(published.get(i).copied().unwrap_or(0)))
            .collect();
        let unit = format!("{}.1.0", ctx.prefix);
        let msg = Message {
            origin: ctx.origin,
            unit: unit.clone(),
            part: 1,
            last: true,
            schema: ctx.schema,
            tables: Vec::new(),
            seen: ctx.seen.first().copied(),
            at_ms: ctx.at_ms,
            conditional: Vec::new(),
            own_upto: 0,
            piece: None,
            ddl: Some(wire::Ddl { changes, after }),
            replayed: Vec::new(),
        };
        let payload = wire::encode(&msg, ctx.compress);
        if self.state.inflight_end != end {
            self.state.inflight_end = end;
            self.state.save()?;
        }
        Ok(Pass {
            end,
            rows: 1,
            units: vec![ShardUnit {
                shard: 1,
                msg_id: unit,
                payloads: vec![payload],
                rows: vec![Vec::new()],
                conditional: false,
            }],
            aside: Vec::new(),
            schema_version: 0,
        })
    }
}

/// What every message of the pass ending at change-log id `end` shares, read in its transaction `tx`.
fn unit_context(
    tx: &rusqlite::Transaction<'_>,
    cfg: &Config,
    cap: &capture::Capture,
    backfill: bool,
    end: i64,
    limits: large::Limits,
) -> Result<UnitContext, PublishError> {
    // What this node had applied when it read these values: the conflict journal's `seen`.
    let applied = capture::applied_positions(tx)?;
    // A backfill's values may hold less (a rebuild in steps): its conditional rows' `seen`.
    let (backfill_seen, own_upto) = if backfill {
        (capture::backfill_seen(tx)?, capture::backfill_own_upto(tx)?)
    } else {
        (HashMap::new(), 0)
    };
    Ok(UnitContext {
        prefix: format!("{:x}.{:x}.{:x}", cfg.node_id, cap.incarnation, end),
        origin: cfg.node_id,
        schema: cap.fingerprint,
        compress: cfg.replication_log.compress,
        max_rows: cfg.scan_max_changes.get() as usize,
        seen: (1..=cfg.replication_log.shards.get())
            .map(|s| applied.get(&cfg.stream_name(s)).copied().unwrap_or(0))
            .collect(),
        backfill_seen: (1..=cfg.replication_log.shards.get())
            .map(|s| {
                let stream = cfg.stream_name(s);
                let a = applied.get(&stream).copied().unwrap_or(0);
                backfill_seen.get(&stream).map_or(a, |&b| b.min(a))
            })
            .collect(),
        own_upto,
        at_ms: crate::counters::now_ms(),
        limits,
    })
}

/// The change `lr` as it goes out to `shard`: the row's current values (its large values sent ahead as pieces)
/// or its deletion; `Err` with the reason when it can never be published.
fn read_change(
    tx: &rusqlite::Transaction<'_>,
    cfg: &Config,
    sink: &large::PieceSink<'_>,
    info: &TableInfo,
    lr: &capture::LogRow,
    shard: u32,
) -> Result<Result<Row, String>, PublishError> {
    let row = match large::read_row(tx, info, &lr.key, &sink.limits)? {
        Some(mut read) => {
            if cfg.publish {
                let subject = cfg.subject_name(shard);
                for &col in &read.large {
                    match sink.send(tx, info, &lr.key, col, lr.id, shard, &subject) {
                        Ok(v) => read.values[col] = Value::Staged(Box::new(v)),
                        Err(e) if e.is_permanent() => {
                            return Ok(Err(format!(
                                "the server refused a piece of its large value for good: {e}"
                            )));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Row::Upsert(read.values)
        }
        None => Row::Delete(lr.key.clone()),
    };
    let size = row.approx_size();
    if size > sink.limits.message {
        return Ok(Err(format!(
            "the change of {size} bytes does not fit a message of {} bytes even with its long values sent apart (its key is too long); replication_log.max_message_bytes and nats.max_payload bound it",
            sink.limits.message
        )));
    }
    Ok(Ok(row))
}

/// Publish one unit; returns the stream sequence of each of its messages (0 where unknown: a retry found
/// the unit already stored).
async fn publish_unit(
    js: &jetstream::Context,
    client: &async_nats::Client,
    cfg: &Config,
    unit: &ShardUnit,
    attempt: u32,
) -> Result<Vec<u64>, PublishError> {
    let subject = cfg.subject_name(unit.shard);
    let send = |source| PublishError::Send {
        subject: subject.clone(),
        source,
    };
    let acked = |source| PublishError::Ack {
        subject: subject.clone(),
        source,
    };
    let n = unit.payloads.len();
    if n == 1 {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", unit.msg_id.as_str());
        let ack = js
            .publish_with_headers(subject.clone(), h, unit.payloads[0].clone().into())
            .await
            .map_err(acked)?
            .await
            .map_err(acked)?;
        return Ok(vec![ack.sequence]);
    }
    let batch_id = format!("{:016x}-{attempt}", wire::fnv1_64(unit.msg_id.as_bytes()));
    for (i, payload) in unit.payloads[..n - 1].iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Batch-Id", batch_id.as_str());
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        client
            .publish_with_headers(subject.clone(), h, payload.clone().into())
            .await
            .map_err(send)?;
    }
    let mut h = HeaderMap::new();
    h.insert("Nats-Batch-Id", batch_id.as_str());
    h.insert("Nats-Batch-Sequence", n.to_string().as_str());
    h.insert("Nats-Batch-Commit", "1");
    h.insert("Nats-Msg-Id", unit.msg_id.as_str());
    let ack = js
        .publish_with_headers(subject.clone(), h, unit.payloads[n - 1].clone().into())
        .await
        .map_err(acked)?
        .await;
    match ack {
        Ok(ack) => {
            let last = ack.sequence;
            Ok((0..n as u64).map(|i| last - (n as u64 - 1 - i)).collect())
        }
        Err(e) if is_duplicate_batch(&e) => {
            tracing::info!(unit = %unit.msg_id, "unit was stored by an earlier attempt");
            Ok(vec![0; n])
        }
        Err(e) => Err(acked(e)),
    }
}

/// What every message of a pass shares.
struct UnitContext {
    /// `<node>.<incarnation>.<pass end>`: with the shard and unit index, the message id of a unit.
    prefix: String,
    origin: u64,
    schema: u64,
    compress: bool,
    max_rows: usize,
    /// This node's applied position per shard (index 0 = shard 1) in the pass's read transaction.
    seen: Vec<u64>,
    /// What a backfill's values hold at least, per shard: `seen`, or lower after a rebuild made in steps. A
    /// message with conditional rows carries it as its `seen`.
    backfill_seen: Vec<u64>,
    /// This node's own change-log ids up to which a backfill's values hold its own changes.
    own_upto: u64,
    /// When the pass was read (unix ms).
    at_ms: u64,
    limits: large::Limits,
}

/// The message being filled: the message, its rows (key, newest log id), row count, approximate bytes.
type Filling = (Message, Vec<(RowKey, i64)>, usize, usize);

/// One shard's messages of a pass, encoded as soon as each is full so a pass holds payloads, not rows.
struct ShardBuild {
    shard: u32,
    unit_index: usize,
    current: Option<Filling>,
    payloads: Vec<Vec<u8>>,
    rows: Vec<Vec<(RowKey, i64)>>,
    /// Whether the unit being filled carries conditional rows.
    conditional: bool,
    units: Vec<ShardUnit>,
}

impl ShardBuild {
    fn new(shard: u32) -> ShardBuild {
        ShardBuild {
            shard,
            unit_index: 0,
            current: None,
            payloads: Vec::new(),
            rows: Vec::new(),
            conditional: false,
            units: Vec::new(),
        }
    }

    fn msg_id(&self, ctx: &UnitContext) -> String {
        format!("{}.{}.{}", ctx.prefix, self.shard, self.unit_index)
    }

    fn push(
        &mut self,
        ctx: &UnitContext,
        info: &TableInfo,
        row: Row,
        key: (RowKey, i64),
        conditional: bool,
    ) {
        let size = row.approx_size();
        if let Some((_, _, count, bytes)) = &self.current
            && (*count >= ctx.max_rows || *bytes + size > ctx.limits.message)
        {
            // Another row follows, so this message ends the unit only when the unit is full.
            let last = self.payloads.len() + 1 == MAX_BATCH_MESSAGES;
            self.seal(ctx, last);
            if last {
                tracing::warn!(
                    shard = self.shard,
                    "pass larger than one atomic batch; split into several units"
                );
            }
        }
        let (msg, rows, count, bytes) = self.current.get_or_insert_with(|| {
            let msg = Message {
                origin: ctx.origin,
                unit: String::new(),
                part: 0,
                last: false,
                schema: ctx.schema,
                tables: Vec::new(),
                seen: Some(ctx.seen.get(self.shard as usize - 1).copied().unwrap_or(0)),
                at_ms: ctx.at_ms,
                conditional: Vec::new(),
                own_upto: 0,
                piece: None,
                ddl: None,
                replayed: Vec::new(),
            };
            (msg, Vec::new(), 0, 0)
        });
        *count += 1;
        *bytes += size;
        let last = msg.tables.len().checked_sub(1);
        match msg.tables.last_mut() {
            Some(t)
                if t.table == info.name
                    && last.is_some_and(|i| msg.conditional.contains(&(i as u32)))
                        == conditional =>
            {
                t.rows.push(row)
            }
            _ => {
                if conditional {
                    msg.conditional.push(msg.tables.len() as u32);
                }
                msg.tables.push(TableChanges {
                    table: info.name.clone(),
                    columns: info.shipped_columns(),
                    key: info.key_names(),
                    rows: vec![row],
                })
            }
        }
        if conditional {
            self.conditional = true;
            let b = ctx.backfill_seen.get(self.shard as usize - 1).copied();
            msg.seen = msg.seen.min(b).or(b);
            msg.own_upto = ctx.own_upto;
        } else {
            rows.push(key);
        }
    }

    /// Encode the message being filled; with `last`, close the unit.
    fn seal(&mut self, ctx: &UnitContext, last: bool) {
        let Some((mut msg, rows, _, _)) = self.current.take() else {
            return;
        };
        msg.unit = self.msg_id(ctx);
        msg.part = self.payloads.len() as u32 + 1;
        msg.last = last;
        self.payloads.push(wire::encode(&msg, ctx.compress));
        self.rows.push(rows);
        if last {
            self.units.push(ShardUnit {
                shard: self.shard,
                msg_id: msg.unit,
                payloads: std::mem::take(&mut self.payloads),
                rows: std::mem::take(&mut self.rows),
                conditional: std::mem::take(&mut self.conditional),
            });
            self.unit_index += 1;
        }
    }

    fn finish(mut self, ctx: &UnitContext) -> Vec<ShardUnit> {
        self.seal(ctx, true);
        self.units
    }
}
