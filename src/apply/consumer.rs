//! One durable pull consumer per node per shard, feeding the applier in stream order.
//!
//! The applied position lives in the user's database (written with the rows), so the consumer is (re)created
//! at every start from that position, and again from the last delivered position whenever a gap in stream
//! sequences shows a lost delivery. Errors never end the task: it reconnects with backoff until cancelled.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Incoming;

pub struct ShardConsumer {
    pub js: jetstream::Context,
    pub stream: String,
    pub durable: String,
    pub shard: u32,
    /// First stream sequence to deliver.
    pub next: u64,
    pub tx: mpsc::Sender<Incoming>,
    pub wake: Arc<Notify>,
}

impl ShardConsumer {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.consume() => r,
            };
            match result {
                Ok(()) => return, // applier gone
                Err(e) => {
                    tracing::warn!(shard = self.shard, stream = %self.stream, error = %e,
                        retry_in_ms = backoff.as_millis() as u64, "consumer interrupted; resuming");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume(&mut self) -> Result<(), String> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let first = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .first_sequence;
        if self.next < first && first > 1 {
            tracing::error!(shard = self.shard, stream = %self.stream, missing_from = self.next, first_available = first,
                "changes this node has not applied were already removed from the stream (max_entries); \
                 continuing from the first available one — restore a snapshot to recover the missed changes");
            self.next = first;
        }
        let _ = stream.delete_consumer(&self.durable).await;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(self.durable.clone()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.next.max(1),
                },
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(shard = self.shard, from = self.next, "consumer started");
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq < self.next {
                continue;
            }
            if seq > self.next {
                return Err(format!(
                    "delivery gap: expected sequence {}, got {seq}",
                    self.next
                ));
            }
            tracing::trace!(shard = self.shard, seq, "delivered");
            if self
                .tx
                .send(Incoming {
                    seq,
                    payload: m.message.payload.clone(),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            self.wake.notify_one();
            self.next = seq + 1;
        }
        Err("message stream ended".into())
    }
}
