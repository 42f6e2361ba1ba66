//! One durable pull consumer per node per shard, feeding the applier in stream order.
//!
//! The applied position lives in the user's database (written with the rows), so the consumer is (re)created
//! at every start from that position, and again from the last delivered position whenever a gap in stream
//! sequences shows a lost delivery. Errors never end the task: it reconnects with backoff until cancelled.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ShardInput;
use crate::retry::Backoff;

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
}

pub struct ShardConsumer {
    js: jetstream::Context,
    durable: String,
    input: ShardInput,
}

impl ShardConsumer {
    /// The consumer named `durable` (this node's server name) feeding `input`.
    pub fn new(js: jetstream::Context, durable: String, input: ShardInput) -> ShardConsumer {
        ShardConsumer { js, durable, input }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.consume(&mut backoff) => r,
            };
            match result {
                Ok(()) => return, // applier gone
                Err(e) => {
                    tracing::warn!(shard = self.input.shard, stream = %self.input.stream, error = %e,
                        retry_in_ms = backoff.current().as_millis() as u64, "consumer interrupted; resuming");
                    if !backoff.sleep(&cancel).await {
                        return;
                    }
                }
            }
        }
    }

    async fn consume(&mut self, backoff: &mut Backoff) -> Result<(), ConsumeError> {
        let input = &mut self.input;
        let mut stream = self.js.get_stream(&input.stream).await?;
        let first = stream.info().await?.state.first_sequence;
        if input.next < first && first > 1 {
            tracing::error!(shard = input.shard, stream = %input.stream, missing_from = input.next, first_available = first,
                "changes this node has not applied were already removed from the stream (max_entries); \
                 continuing from the first available one — restore a snapshot to recover the missed changes");
            input.next = first;
        }
        let _ = stream.delete_consumer(&self.durable).await;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(self.durable.clone()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: input.next.max(1),
                },
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        tracing::debug!(shard = input.shard, from = input.next, "consumer started");
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
            let incoming = super::Incoming {
                seq,
                payload: m.message.payload.clone(),
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
