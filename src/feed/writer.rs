//! The feed's writer: one node at a time (a lease, [`LEASE`]) reads every change stream from where the feed
//! ends and publishes one record per row change: the records of one table in one change-stream message go out
//! together, one per line, in one feed message (several when they would not fit in one).
//!
//! Each feed message carries, in headers, its source (`Nats-Msg-Id`: `<shard>:<stream sequence>:<first row>`)
//! and where the writer goes on after it on every change stream ([`NEXT`]). It expects the feed's last sequence
//! to be the one before its own (`Nats-Expected-Last-Sequence`: the stream's last at the start, one more per
//! message published), so a message the server did not store stops every message after it, and so does a
//! message another program published on the feed's subjects: the writer then starts again from its own last
//! message in the feed (readers pass over messages without [`NEXT`]). An expected last message id would not do:
//! the stream's leader accepts a message expecting the writer's last id although a message without an id was
//! stored after it, and applying it stops the stream ("critical write error", 503 from then on). A writer that
//! takes over does the same, and a message published twice in a handover is dropped by its id. Messages are
//! published without waiting for each acknowledgement, up to [`IN_FLIGHT`] (and [`IN_FLIGHT_BYTES`]) at once.
//!
//! What the feed has written is recorded in the positions bucket under [`super::POSITIONS_KEY`], so the
//! change streams are not trimmed below it (`node::retention`).
//!
//! Left out of the feed: schema changes, pieces of large values (their values appear whole in the rows that
//! carry them), and the conditional rows of a rebuilt table's backfill (`docs/FEED.md`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::record::{self, Origin};
use crate::cluster::lease::{Kind, Lease};
use crate::cluster::positions::{self, Positions};
use crate::config::Config;
use crate::wire::{self, Message, Row, Value};

/// The feed writer's lease bucket: its own, so its lease time is its own.
pub const LEASE_BUCKET: &str = "harmonylite-feed-lease";

static LEASE: Kind = Kind {
    bucket: LEASE_BUCKET,
    key: "feed-writer",
    description: "HarmonyLite: which node writes the change feed",
    role: "writes the change feed",
};

/// How long an unrenewed lease lasts; it is renewed every third of it.
const LEASE_TIME: Duration = Duration::from_secs(6);

/// Header of every feed message: where the writer goes on after it, per change stream (`<shard>:<seq>.<row>`,
/// comma-separated).
pub const NEXT: &str = "Harmonylite-Feed-Next";

/// How often the writer checks that each change stream's reader still delivers.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// Feed messages published and not yet acknowledged, at most, and their bytes at most (a message more may go
/// beyond).
const IN_FLIGHT: usize = 2048;
const IN_FLIGHT_BYTES: usize = 8 << 20;

/// A feed message's records, at most (bytes; fewer when the server's `max_payload` is smaller). Fewer, larger
/// messages cost the servers less: each is written, replicated and synced to disk on its own.
const BATCH_BYTES: usize = 256 * 1024;

/// Change-stream messages whose records are gathered together, at most.
const ROUND: usize = 256;

/// How many messages back from the feed's end the writer looks for its own last one, past messages another
/// program published on the feed's subjects.
const FOREIGN_BACK: u64 = 10_000;

/// Bytes of assembled large values held at most; beyond, they are dropped (looked up again when needed).
const PIECES_HELD: usize = 256 << 20;

/// How far back from where it starts the writer looks for the pieces of a large value it needs.
const PIECES_BACK: u64 = 100_000;

/// Write the feed while this node holds the lease, until cancelled.
pub async fn run(
    js: jetstream::Context,
    cfg: Arc<Config>,
    replicas: usize,
    cancel: CancellationToken,
) {
    let mut lease: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LEASE_TIME / 3) => {}
        }
        if lease.is_none() {
            match Lease::open(&LEASE, &js, LEASE_TIME, replicas, cfg.node_id).await {
                Ok(l) => lease = Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "feed lease bucket not reachable yet");
                    continue;
                }
            }
        }
        let l = lease.as_mut().expect("set above");
        if !l.hold().await {
            continue;
        }
        let mut w = Writer::new(&js, &cfg);
        if let Err(e) = w.write_while_held(l, replicas, &cancel).await {
            tracing::warn!(error = %e, "the feed's writer stopped; it starts again from the feed's last record");
        }
    }
}

/// Where the writer is on one change stream: the next message to read, and its first row not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Next {
    pub seq: u64,
    pub row: u32,
}

/// [`NEXT`]'s value for `next` (index 0 = shard 1).
fn next_header(next: &[Next]) -> String {
    next.iter()
        .enumerate()
        .map(|(i, n)| format!("{}:{}.{}", i + 1, n.seq, n.row))
        .collect::<Vec<_>>()
        .join(",")
}

/// [`NEXT`]'s value read back, for `shards` streams (a stream missing from it starts at 0).
pub fn parse_next(value: &str, shards: usize) -> Option<Vec<Next>> {
    let mut next = vec![Next::default(); shards];
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (shard, pos) = part.split_once(':')?;
        let (seq, row) = pos.split_once('.')?;
        let shard: usize = shard.parse().ok()?;
        if shard >= 1 && shard <= shards {
            next[shard - 1] = Next {
                seq: seq.parse().ok()?,
                row: row.parse().ok()?,
            };
        }
    }
    Some(next)
}

/// A record published and not yet acknowledged, and where the writer stands once it is stored.
type Pending = (
    <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    Vec<Next>,
    usize,
);

/// Consecutive records of one table from one change stream, gathered for one feed message; its id names
/// where its first record comes from.
#[derive(Default)]
struct Batch {
    /// The records, one per line.
    body: Vec<u8>,
    /// The change stream (its shard), message (stream sequence) and row (index in it) of the first record.
    shard: u32,
    seq: u64,
    first: u32,
    /// The table's subject.
    subject: String,
}

struct Writer<'a> {
    js: &'a jetstream::Context,
    cfg: &'a Config,
    shards: usize,
    /// Where reading goes on, per stream.
    next: Vec<Next>,
    /// Where the feed stands once every record published is stored.
    stored: Vec<Next>,
    /// The feed stream's last sequence as the next message expects it: the stream's last at the start, then one
    /// more for each message published.
    last_seq: u64,
    /// Large values assembled from their pieces, by id, until the unit that carries them has been written.
    pieces: HashMap<String, Vec<u8>>,
    /// The positions entry last written.
    recorded: Option<Positions>,
    /// Bytes of the feed messages published and not yet acknowledged.
    in_flight: usize,
}

impl<'a> Writer<'a> {
    fn new(js: &'a jetstream::Context, cfg: &'a Config) -> Writer<'a> {
        let shards = cfg.replication_log.shards.get() as usize;
        Writer {
            js,
            cfg,
            shards,
            next: vec![Next::default(); shards],
            stored: vec![Next::default(); shards],
            last_seq: 0,
            pieces: HashMap::new(),
            recorded: None,
            in_flight: 0,
        }
    }

    /// Whether more feed messages may be published before acknowledgements come back.
    fn room(&self, pending: &VecDeque<Pending>) -> bool {
        pending.len() < IN_FLIGHT && self.in_flight < IN_FLIGHT_BYTES
    }

    /// Write until the lease is lost (Ok), cancelled (Ok) or something fails (Err).
    async fn write_while_held(
        &mut self,
        lease: &mut Lease,
        replicas: usize,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut feed = super::ensure_stream(self.js, self.cfg, replicas)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create or open the feed stream: {e}"))?;
        let kv = positions::bucket(self.js, replicas)
            .await
            .map_err(|e| anyhow::anyhow!("opening the positions bucket: {e}"))?;
        self.resume(&mut feed, &kv).await?;
        let mut sources = Vec::new();
        for shard in 1..=self.shards as u32 {
            sources.push(self.open_source(shard).await?);
        }
        let mut merged = futures::stream::select_all(sources);
        let mut renew = tokio::time::interval(LEASE_TIME / 3);
        let mut record = tokio::time::interval(Duration::from_secs(1));
        let mut stalled = tokio::time::interval(STALL_CHECK);
        stalled.tick().await;
        tracing::info!(next = %next_header(&self.next), "writing the change feed");
        let mut pending: VecDeque<Pending> = VecDeque::new();
        // Where reading stood at the last stall check.
        let mut checked = self.next.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = stalled.tick() => {
                    // Reading waits while the acknowledgements are behind: not a stall.
                    if pending.len() < IN_FLIGHT / 2 && self.in_flight < IN_FLIGHT_BYTES / 2 {
                        self.stalled(&checked).await?;
                    }
                    checked = self.next.clone();
                }
                _ = renew.tick() => {
                    if !lease.hold().await {
                        return Ok(());
                    }
                }
                _ = record.tick() => self.record(&kv).await,
                acked = front(&mut pending), if !pending.is_empty() => {
                    let (_, at, bytes) = pending.pop_front().expect("not empty");
                    self.in_flight -= bytes;
                    acked.map_err(|e| anyhow::anyhow!("a feed record was not stored: {e}"))?;
                    self.stored = at;
                    if pending.is_empty() {
                        self.stored = self.next.clone();
                    }
                }
                m = merged.next(), if self.room(&pending) => {
                    // This message and those already there behind it, up to a round's worth: their records
                    // gathered in as few feed messages as they fit in.
                    let mut m = m;
                    let mut batch = Batch::default();
                    for taken in 1..=ROUND {
                        let Some((shard, got)) = m else {
                            anyhow::bail!("a change stream's reader ended");
                        };
                        let got = got.map_err(|e| anyhow::anyhow!("reading change stream {shard}: {e}"))?;
                        let seq = got.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                        self.message(shard, seq, &got.payload, &mut batch, &mut pending).await?;
                        // (A message taken from the stream is always handled: none is dropped.)
                        if taken == ROUND || !self.room(&pending) {
                            break;
                        }
                        // Only what has arrived already: waiting for more would delay every record, and
                        // gathering within a wait of 20 ms changed nothing of the feed's cost on the bench.
                        match merged.next().now_or_never() {
                            Some(next) => m = next,
                            None => break,
                        }
                    }
                    if !batch.body.is_empty() {
                        self.publish(&mut batch, &mut pending).await?;
                    }
                    if pending.is_empty() {
                        self.stored = self.next.clone();
                    }
                }
            }
        }
    }

    /// Fails when a change stream holds messages past where reading stood at the last check (`checked`) and
    /// reading has not moved since: its reader (an ordered consumer, whose one replica may have been on a server
    /// that stopped) no longer delivers, and the writer starts again.
    async fn stalled(&self, checked: &[Next]) -> anyhow::Result<()> {
        for (i, (now, before)) in self.next.iter().zip(checked).enumerate() {
            if now != before {
                continue;
            }
            let name = self.cfg.stream_name(i as u32 + 1);
            let mut s = self.js.get_stream(&name).await?;
            let last = s.info().await?.state.last_sequence;
            if last >= now.seq {
                anyhow::bail!(
                    "the reader of {name} delivered nothing for {STALL_CHECK:?} while the stream holds messages \
                     from {} to {last}",
                    now.seq
                );
            }
        }
        Ok(())
    }

    /// Where the feed ends: its last record's [`NEXT`]. A feed that holds no record goes on from what its
    /// positions entry says it wrote (its records left with the feed's caps), or, never written, from each change
    /// stream's first message.
    async fn resume(
        &mut self,
        feed: &mut stream::Stream,
        kv: &async_nats::jetstream::kv::Store,
    ) -> anyhow::Result<()> {
        let info = feed
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("reading the feed stream's state: {e}"))?
            .state
            .clone();
        self.last_seq = info.last_sequence;
        if info.messages == 0 {
            if let Some(e) = kv.get(super::POSITIONS_KEY).await?
                && let Ok(p) = serde_json::from_slice::<Positions>(&e)
            {
                for (i, n) in self.next.iter_mut().enumerate() {
                    if let Some(&pos) = p.positions.get(&self.cfg.stream_name(i as u32 + 1)) {
                        *n = Next {
                            seq: pos + 1,
                            row: 0,
                        };
                    }
                }
            }
        } else {
            // The feed's last message written by its writer; messages another program published on the feed's
            // subjects after it are passed over (readers skip them too).
            let mut at = info.last_sequence;
            let next = loop {
                let m = match feed.get_raw_message(at).await {
                    Ok(m) => Some(m),
                    // A message deleted from the middle of the feed.
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => None,
                    Err(e) => anyhow::bail!("reading the feed's message {at}: {e}"),
                };
                if let Some(next) = m.as_ref().and_then(|m| {
                    m.headers
                        .get(NEXT)
                        .and_then(|v| parse_next(v.as_str(), self.shards))
                }) {
                    break next;
                }
                if at <= info.first_sequence || info.last_sequence - at >= FOREIGN_BACK {
                    anyhow::bail!(
                        "none of the feed's last messages (sequences {at} to {}) was written by the feed's \
                         writer: another program publishes on the feed's subjects",
                        info.last_sequence
                    );
                }
                at -= 1;
            };
            if at < info.last_sequence {
                tracing::warn!(
                    from = at + 1,
                    to = info.last_sequence,
                    "the feed holds messages its writer did not write (another program published on the feed's \
                     subjects): readers pass over them, and the feed goes on after them"
                );
            }
            self.next = next;
        }
        for shard in 1..=self.shards as u32 {
            let mut s = self.js.get_stream(self.cfg.stream_name(shard)).await?;
            let first = s.info().await?.state.first_sequence.max(1);
            let n = &mut self.next[shard as usize - 1];
            if n.seq == 0 {
                *n = Next { seq: first, row: 0 };
            } else if n.seq < first {
                tracing::error!(
                    stream = %self.cfg.stream_name(shard),
                    from = n.seq,
                    to = first - 1,
                    "the change feed misses changes: they left the change stream before the feed wrote them \
                     (the feed's writer was away longer than the stream keeps changes)"
                );
                *n = Next { seq: first, row: 0 };
            }
        }
        self.stored = self.next.clone();
        Ok(())
    }

    /// An ordered reader of shard `shard`'s change stream from where the writer goes on.
    async fn open_source(
        &self,
        shard: u32,
    ) -> anyhow::Result<
        futures::stream::BoxStream<
            'static,
            (
                u32,
                Result<jetstream::Message, consumer::pull::OrderedError>,
            ),
        >,
    > {
        let s = self.js.get_stream(self.cfg.stream_name(shard)).await?;
        let c = s
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.next[shard as usize - 1].seq,
                },
                ..Default::default()
            })
            .await?;
        let messages = c.messages().await?;
        Ok(messages.map(move |m| (shard, m)).boxed())
    }

    /// One change-stream message: its records published (those past where the writer goes on).
    async fn message(
        &mut self,
        shard: u32,
        seq: u64,
        payload: &[u8],
        batch: &mut Batch,
        pending: &mut VecDeque<Pending>,
    ) -> anyhow::Result<()> {
        let i = shard as usize - 1;
        let from = self.next[i];
        if seq < from.seq {
            return Ok(());
        }
        if seq > from.seq && from.row > 0 {
            tracing::error!(
                shard,
                seq = from.seq,
                "the change feed misses the rest of a message: it left the change stream"
            );
        }
        let mut m = match wire::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                // The appliers park such a message; the feed has nothing it could say of it.
                tracing::warn!(shard, seq, error = %e, "a change-stream message the feed cannot read is left out");
                self.next[i] = Next {
                    seq: seq + 1,
                    row: 0,
                };
                return Ok(());
            }
        };
        if let Some(p) = m.piece.take() {
            let v = self
                .pieces
                .entry(p.id)
                .or_insert_with(|| vec![0; p.len as usize]);
            let end = (p.offset as usize + p.data.len()).min(v.len());
            if (p.offset as usize) < end {
                v[p.offset as usize..end].copy_from_slice(&p.data[..end - p.offset as usize]);
            }
            self.next[i] = Next {
                seq: seq + 1,
                row: 0,
            };
            return Ok(());
        }
        let skip_rows = if seq == from.seq { from.row } else { 0 };
        let total: usize = m.tables.iter().map(|t| t.rows.len()).sum();
        if m.has_staged() {
            self.fill_staged(shard, seq, &mut m).await;
        }
        let origin = Origin {
            node: m.origin,
            at_ms: m.at_ms,
            unit: &m.unit,
        };
        // Room for the headers under the server's largest message.
        let max_record = self
            .js
            .client()
            .server_info()
            .max_payload
            .saturating_sub(16 * 1024);
        // Consecutive records of one table (of one change stream) go out together, one per line, in feed messages
        // of at most [`BATCH_BYTES`].
        let limit = max_record.min(BATCH_BYTES);
        let mut index = 0u32;
        for (ti, t) in m.tables.iter().enumerate() {
            let conditional = m.is_conditional(ti);
            let subject = super::subject(self.cfg, &t.table);
            for row in &t.rows {
                let here = index;
                index += 1;
                if here < skip_rows || conditional {
                    continue;
                }
                let mut body = Vec::with_capacity(128);
                if record::open(t, row, &origin, &mut body).is_none() {
                    tracing::error!(shard, seq, table = %t.table, "a large value of this change could not be assembled: left out of the feed");
                    continue;
                }
                body.push(b'}');
                if body.len() > max_record {
                    // More than a message may carry: the record says so, with the row's key, rather than
                    // stop the feed.
                    tracing::error!(shard, seq, table = %t.table, bytes = body.len(),
                        "a change's feed record is larger than the server's max_payload: written without its row");
                    let bytes = body.len();
                    body.clear();
                    record::open_omitted(t, row, &origin, bytes, &mut body);
                    body.push(b'}');
                }
                if !batch.body.is_empty()
                    && (batch.shard != shard
                        || batch.subject != subject
                        || batch.body.len() + 1 + body.len() > limit)
                {
                    self.publish(batch, pending).await?;
                }
                if batch.body.is_empty() {
                    *batch = Batch {
                        body: Vec::with_capacity(limit.min(64 * 1024)),
                        shard,
                        seq,
                        first: here,
                        subject: subject.clone(),
                    };
                } else {
                    batch.body.push(b'\n');
                }
                batch.body.extend_from_slice(&body);
                self.next[i] = if index as usize >= total {
                    Next {
                        seq: seq + 1,
                        row: 0,
                    }
                } else {
                    Next { seq, row: index }
                };
            }
        }
        self.next[i] = Next {
            seq: seq + 1,
            row: 0,
        };
        // Pieces no row used (their unit refused by the server) are not kept for long.
        if self.pieces.values().map(Vec::len).sum::<usize>() > PIECES_HELD {
            self.pieces.clear();
        }
        Ok(())
    }

    /// Publish `batch`, expecting the last message published as the feed's last, and where reading stands
    /// (`self.next`, just past its last record) as where the writer goes on after it; `batch` is left empty.
    async fn publish(
        &mut self,
        batch: &mut Batch,
        pending: &mut VecDeque<Pending>,
    ) -> anyhow::Result<()> {
        let id = format!("{}:{}:{}", batch.shard, batch.seq, batch.first);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id.as_str());
        h.insert(
            "Nats-Expected-Last-Sequence",
            self.last_seq.to_string().as_str(),
        );
        h.insert(NEXT, next_header(&self.next).as_str());
        let body = std::mem::take(&mut batch.body);
        let bytes = body.len();
        let ack = self
            .js
            .publish_with_headers(batch.subject.clone(), h, body.into())
            .await
            .map_err(|e| anyhow::anyhow!("publishing feed records: {e}"))?;
        pending.push_back((
            std::future::IntoFuture::into_future(ack),
            self.next.clone(),
            bytes,
        ));
        self.in_flight += bytes;
        self.last_seq += 1;
        Ok(())
    }

    /// Put the large values of `m` in place, from the pieces read before it (or, after a start, looked up
    /// behind it in the change stream).
    async fn fill_staged(&mut self, shard: u32, seq: u64, m: &mut Message) {
        let missing: Vec<String> = staged_ids(m)
            .filter(|id| !self.pieces.contains_key(*id))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            self.find_pieces(shard, seq, missing).await;
        }
        // Each value's pieces serve one row change: taken out as they are used.
        for t in &mut m.tables {
            for row in &mut t.rows {
                let (Row::Upsert(values) | Row::Delete(values)) = row;
                for v in values.iter_mut() {
                    if let Value::Staged(s) = v
                        && let Some(bytes) = self.pieces.remove(&s.id)
                        && bytes.len() as u64 == s.len
                        && wire::fnv1_64(&bytes) == s.hash
                    {
                        *v = if s.text {
                            Value::Text(bytes)
                        } else {
                            Value::Blob(bytes)
                        };
                    }
                }
            }
        }
    }

    /// Read back from `seq` the pieces of the values `ids`.
    async fn find_pieces(&mut self, shard: u32, seq: u64, mut ids: Vec<String>) {
        let Ok(s) = self.js.get_stream(self.cfg.stream_name(shard)).await else {
            return;
        };
        let mut at = seq;
        while !ids.is_empty() && at > 1 && seq - at < PIECES_BACK {
            at -= 1;
            let Ok(raw) = s.get_raw_message(at).await else {
                continue;
            };
            let Ok(m) = wire::decode(&raw.payload) else {
                continue;
            };
            if let Some(p) = m.piece
                && ids.contains(&p.id)
            {
                let v = self
                    .pieces
                    .entry(p.id.clone())
                    .or_insert_with(|| vec![0; p.len as usize]);
                let end = (p.offset as usize + p.data.len()).min(v.len());
                if (p.offset as usize) < end {
                    v[p.offset as usize..end].copy_from_slice(&p.data[..end - p.offset as usize]);
                }
                if p.offset == 0 {
                    ids.retain(|i| *i != p.id);
                }
            }
        }
    }

    /// Record in the positions bucket what the feed holds (when it moved), so the trim keeps the rest.
    async fn record(&mut self, kv: &async_nats::jetstream::kv::Store) {
        let entry = Positions {
            node_id: self.cfg.node_id,
            incarnation: 0,
            positions: self
                .stored
                .iter()
                .enumerate()
                .map(|(i, n)| (self.cfg.stream_name(i as u32 + 1), n.seq.saturating_sub(1)))
                .collect::<BTreeMap<_, _>>(),
            published_upto: 0,
        };
        if self.recorded.as_ref() == Some(&entry) {
            return;
        }
        match positions::write(kv, super::POSITIONS_KEY, &entry).await {
            Ok(()) => self.recorded = Some(entry),
            Err(e) => {
                tracing::debug!(error = %e, "the feed's positions were not recorded; trying again")
            }
        }
    }
}

/// Wait for the oldest acknowledgement (left in place; the caller pops it).
async fn front(
    pending: &mut VecDeque<Pending>,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let (ack, _, _) = pending.front_mut().expect("not empty");
    ack.as_mut().await
}

/// The ids of the large values `m` carries.
fn staged_ids(m: &Message) -> impl Iterator<Item = &str> {
    m.tables.iter().flat_map(|t| {
        t.rows.iter().flat_map(|r| {
            let (Row::Upsert(v) | Row::Delete(v)) = r;
            v.iter().filter_map(|v| match v {
                Value::Staged(s) => Some(s.id.as_str()),
                _ => None,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_the_writer_goes_on_round_trips() {
        let next = vec![Next { seq: 12, row: 3 }, Next { seq: 7, row: 0 }];
        let h = next_header(&next);
        assert_eq!(h, "1:12.3,2:7.0");
        assert_eq!(parse_next(&h, 2), Some(next.clone()));
        assert_eq!(
            parse_next(&h, 3),
            Some(vec![next[0], next[1], Next::default()]),
            "a stream added since starts from its beginning"
        );
        assert_eq!(parse_next("1:x.0", 1), None);
    }
}
