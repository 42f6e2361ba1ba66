//! One durable pull consumer per node per shard, feeding the applier in stream order.
//!
//! The applied position lives in the user's database (written with the rows), so the consumer is (re)created
//! at every start from that position, and again from the last delivered position whenever a gap in stream
//! sequences shows a lost delivery. Errors never end the task: it reconnects with backoff until cancelled. While
//! it keeps failing (the stream has no leader, NATS is away), the warning is said when the trouble starts, then
//! summarised every [`crate::repeat::PERIOD`], and the recovery is said once (see [`crate::repeat`]).
//!
//! When the next change this node needs has already left the stream (it was away longer than the retention
//! caps), the consumer never delivers past the hole: it reports the gap (error line, the shard's gap gauge, and
//! a [`Gap`] to the node, which can restore a snapshot) and looks again every [`GAP_RECHECK`].

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ShardInput;
use crate::counters::Counters;
use crate::repeat::{Repeats, Report};
use crate::retry::Backoff;

/// How long a start waits for the last run's consumer to answer a reset before it makes a new one.
const RESET_WAIT: Duration = Duration::from_millis(100);

/// How often a shard stopped at a gap looks at the stream again.
pub const GAP_RECHECK: Duration = Duration::from_secs(30);

/// A shard whose next needed change is no longer in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub shard: u32,
    pub stream: String,
    /// The first sequence this node needs.
    pub needed: u64,
    /// The first sequence the stream still has.
    pub first_available: u64,
}

/// Why a consumer stopped delivering; it is re-created from its position after any of these.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("cannot open the stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot read the stream's state: {0}")]
    Info(#[from] jetstream::stream::InfoError),
    #[error("cannot create the consumer: {0}")]
    Create(#[from] jetstream::stream::ConsumerError),
    #[error("cannot start fetching: {0}")]
    Fetch(#[from] jetstream::consumer::StreamError),
    #[error("delivery failed: {0}")]
    Delivery(#[from] jetstream::consumer::pull::MessagesError),
    #[error("delivered message without JetStream metadata: {0}")]
    Metadata(Box<dyn std::error::Error + Send + Sync>),
    #[error("delivery gap: expected sequence {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("message stream ended")]
    Ended,
    #[error("stopped at a gap: needed sequence {}, the stream starts at {}", .0.needed, .0.first_available)]
    AtGap(Gap),
}

pub struct ShardConsumer {
    js: jetstream::Context,
    durable: String,
    input: ShardInput,
    counters: std::sync::Arc<Counters>,
    gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    /// The interruptions going on (one condition: this consumer cannot deliver).
    trouble: Repeats,
    /// Until the consumer first delivers: an interruption then is routine (a stream whose replicas are being
    /// raised as the cluster forms answers "insufficient resources" for a moment), said at DEBUG unless it
    /// lasts past [`STARTING`] (then at WARN, as the repeat).
    starting: Option<Instant>,
    /// Told once: sent when the consumer first pulls, dropped when its first attempt fails.
    first_pull: Option<tokio::sync::oneshot::Sender<()>>,
    /// Until the first attempt to consume: the last run's consumer may be reused.
    first_attempt: bool,
}

/// How long interruptions before the first delivery count as part of the start.
const STARTING: Duration = Duration::from_secs(30);

/// The key of [`ShardConsumer::trouble`]'s only condition.
const INTERRUPTED: &str = "interrupted";

impl ShardConsumer {
    /// The consumer named `durable` (this node's server name) feeding `input`; gaps are reported on `gaps`.
    /// The receiver resolves when the consumer first pulls, or fails when its first attempt does.
    pub fn new(
        js: jetstream::Context,
        durable: String,
        input: ShardInput,
        counters: std::sync::Arc<Counters>,
        gaps: tokio::sync::mpsc::UnboundedSender<Gap>,
    ) -> (ShardConsumer, tokio::sync::oneshot::Receiver<()>) {
        let (first_pull, pulling) = tokio::sync::oneshot::channel();
        let c = ShardConsumer {
            js,
            durable,
            input,
            counters,
            gaps,
            trouble: Repeats::default(),
            starting: Some(Instant::now()),
            first_pull: Some(first_pull),
            first_attempt: true,
        };
        (c, pulling)
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.consume(&mut backoff) => r,
            };
            // Whatever the first attempt ended with, the start waits no longer.
            self.first_pull = None;
            match result {
                Ok(()) => return, // applier gone
                Err(ConsumeError::AtGap(gap)) => {
                    tracing::error!(shard = gap.shard, stream = %gap.stream, needed = gap.needed,
                        first_available = gap.first_available, recheck_s = GAP_RECHECK.as_secs(),
                        "stopped at a gap: changes this node has not applied were removed from the stream \
                         (it was away longer than the retention caps); nothing newer is applied over the hole. \
                         A snapshot restore brings the node back");
                    self.counters.set_gap(gap.shard, Some(gap.needed));
                    let _ = self.gaps.send(gap);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(GAP_RECHECK) => {}
                    }
                }
                Err(e) => {
                    self.counters.error("consume", "interrupted");
                    let (shard, stream) = (self.input.shard, &self.input.stream);
                    let retry_in_ms = backoff.current().as_millis() as u64;
                    match self
                        .trouble
                        .observe(INTERRUPTED, &e.to_string(), Instant::now())
                    {
                        Some(Report::Started { .. })
                            if self.starting.is_some_and(|t| t.elapsed() < STARTING) =>
                        {
                            tracing::debug!(shard, stream = %stream, error = %e,
                            retry_in_ms, "consumer interrupted while starting; resuming")
                        }
                        Some(Report::Started { .. }) => {
                            tracing::warn!(shard, stream = %stream, error = %e,
                            retry_in_ms, "consumer interrupted; resuming")
                        }
                        Some(Report::Repeating { count, ongoing, .. }) => tracing::warn!(shard,
                            stream = %stream, error = %e, retry_in_ms, interruptions = count,
                            ongoing_s = ongoing.as_secs(), "consumer still interrupted; resuming"),
                        _ => tracing::debug!(shard, stream = %stream, error = %e, retry_in_ms,
                            "consumer interrupted; resuming"),
                    }
                    if !backoff.sleep(&cancel).await {
                        return;
                    }
                }
            }
        }
    }

    async fn consume(&mut self, backoff: &mut Backoff) -> Result<(), ConsumeError> {
        let input = &mut self.input;
        let began = Instant::now();
        let mut stream = self.js.get_stream(&input.stream).await?;
        let first = stream.info().await?.state.first_sequence;
        let looked = began.elapsed();
        // Certified: read from this node's positions entry at start, or later when it did not answer then.
        let certified = self
            .counters
            .certified()
            .get(input.shard as usize - 1)
            .copied()
            .unwrap_or(0);
        if input.next < first && first <= certified + 1 {
            tracing::info!(shard = input.shard, stream = %input.stream, from = input.next, to = first,
                "stepping over a purged range this node had handled before it stopped (its own changes)");
            input.next = first;
        }
        if input.next < first {
            return Err(ConsumeError::AtGap(Gap {
                shard: input.shard,
                stream: input.stream.clone(),
                needed: input.next,
                first_available: first,
            }));
        }
        self.counters.set_gap(input.shard, None);
        let next = input.next.max(1);
        // At a process start, the consumer left by the last run (its pull requests gone with that run's
        // connection) is moved to this start's position: one request its leader answers. A new consumer waits
        // for its replicas' election, longer when they are placed on a server still catching up the stream.
        let reset = if self.first_attempt {
            reset_existing(&self.js, &mut stream, &self.durable, next).await
        } else {
            None
        };
        self.first_attempt = false;
        let reused = reset.is_some();
        let deleted;
        let consumer: consumer::PullConsumer = match reset {
            Some(c) => {
                deleted = began.elapsed();
                c
            }
            None => {
                let _ = stream.delete_consumer(&self.durable).await;
                deleted = began.elapsed();
                stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some(self.durable.clone()),
                        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: next,
                        },
                        ack_policy: consumer::AckPolicy::None,
                        num_replicas: 1,
                        memory_storage: true,
                        ..Default::default()
                    })
                    .await?
            }
        };
        let created = began.elapsed();
        // Pieces of large values are large messages: a pull brings two megabytes at once, at least two of the
        // largest messages the server takes.
        let pull_bytes = (2usize << 20).max(2 * self.js.client().server_info().max_payload);
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .max_bytes_per_batch(pull_bytes)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        tracing::debug!(
            shard = input.shard,
            from = input.next,
            stream_info_ms = looked.as_millis() as u64,
            old_deleted_ms = deleted.as_millis() as u64,
            created_ms = created.as_millis() as u64,
            pulling_ms = began.elapsed().as_millis() as u64,
            reused,
            "consumer started"
        );
        if let Some(told) = self.first_pull.take() {
            let _ = told.send(());
        }
        let starting = self.starting.take().is_some();
        if let Some(Report::Ended { total, lasted, .. }) =
            self.trouble.resolve(INTERRUPTED, Instant::now())
        {
            if starting && lasted < STARTING {
                tracing::debug!(shard = input.shard, stream = %input.stream, interruptions = total,
                    after_s = lasted.as_secs(), "consumer started after interruptions");
            } else {
                tracing::info!(shard = input.shard, stream = %input.stream, interruptions = total,
                    after_s = lasted.as_secs(), "consumer resumed");
            }
        }
        backoff.reset();
        while let Some(m) = messages.next().await {
            let m = m?;
            let seq = m.info().map_err(ConsumeError::Metadata)?.stream_sequence;
            if seq < input.next {
                continue;
            }
            if seq > input.next {
                return Err(ConsumeError::Gap {
                    expected: input.next,
                    got: seq,
                });
            }
            tracing::trace!(shard = input.shard, seq, "delivered");
            let kib = (m.message.payload.len() / 1024 + 1).min(super::IN_TRANSIT_KIB as usize);
            let Ok(room) = input.room.clone().acquire_many_owned(kib as u32).await else {
                return Ok(());
            };
            let incoming = super::Incoming {
                seq,
                payload: m.message.payload.clone(),
                _room: Some(room),
            };
            if input.tx.send(incoming).await.is_err() {
                return Ok(());
            }
            input.wake.notify_one();
            input.next = seq + 1;
        }
        Err(ConsumeError::Ended)
    }
}

/// This node's consumer on `stream` as the last run left it, moved to deliver from `next` on
/// (`$JS.API.CONSUMER.RESET`, nats-server 2.14 and later): `None` when there is none, its configuration is
/// not the one a start gives (a position below the one it was made with included), or it does not answer
/// within [`RESET_WAIT`] (its one replica is on this node's own server, which has just started and is still
/// catching up; then a new one is made).
async fn reset_existing(
    js: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    durable: &str,
    next: u64,
) -> Option<consumer::PullConsumer> {
    #[derive(serde::Deserialize)]
    struct Reset {
        reset_seq: u64,
        #[serde(flatten)]
        info: consumer::Info,
    }
    let name = stream.cached_info().config.name.clone();
    let same = |c: &consumer::Config| {
        c.durable_name.as_deref() == Some(durable)
            && c.ack_policy == consumer::AckPolicy::None
            && c.num_replicas == 1
            && c.memory_storage
            && matches!(
                c.deliver_policy,
                consumer::DeliverPolicy::ByStartSequence { start_sequence } if start_sequence <= next
            )
            && c.filter_subject.is_empty()
            && c.filter_subjects.is_empty()
    };
    let reset = async {
        // The server answers a reset of a consumer that does not exist with silence: ask about it first (the
        // stream's leader says "not found" at once).
        let info = stream
            .consumer_info(durable)
            .await
            .map_err(|e| e.to_string())?;
        if !same(&info.config) {
            return Err("other settings".to_string());
        }
        let subject = format!("CONSUMER.RESET.{name}.{durable}");
        let body = serde_json::json!({ "seq": next });
        match js
            .request::<_, _, jetstream::response::Response<Reset>>(subject, &body)
            .await
        {
            Ok(jetstream::response::Response::Ok(a))
                if a.reset_seq == next && same(&a.info.config) =>
            {
                Ok(a)
            }
            Ok(jetstream::response::Response::Ok(a)) => {
                Err(format!("reset to {} instead of {next}", a.reset_seq))
            }
            Ok(jetstream::response::Response::Err { error }) => Err(error.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let answer = match tokio::time::timeout(RESET_WAIT, reset).await {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => {
            tracing::debug!(stream = %name, why, "the last run's consumer not reused");
            return None;
        }
        Err(_) => {
            tracing::debug!(stream = %name, wait_ms = RESET_WAIT.as_millis() as u64,
                "the last run's consumer not reused: no answer");
            return None;
        }
    };
    let config = <consumer::pull::Config as consumer::FromConsumer>::try_from_consumer_config(
        answer.info.config.clone(),
    )
    .ok()?;
    Some(consumer::Consumer::new(config, answer.info, js.clone()))
}
