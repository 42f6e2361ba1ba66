//! Snapshots in a JetStream object store: bucket `[snapshot.nats] bucket`, by default
//! `<stream_prefix>-snapshot-store` (the original's `harmonylite-changes-snapshot-store`), created on demand
//! with `[snapshot.nats] replicas`, or when that is not set with as many replicas as the change streams have
//! (a single copy would live on one node, and no snapshot could be saved while that node is away).

use async_nats::jetstream::{self, object_store};
use futures::future::BoxFuture;

use super::{Reader, Store, StoreError};
use crate::config::Config;

/// The replica count of the first change stream (1 when it cannot be read).
async fn streams_replicas(cfg: &Config, js: &jetstream::Context) -> usize {
    match js.get_stream(cfg.stream_name(1)).await {
        Ok(s) => s.cached_info().config.num_replicas.max(1),
        Err(_) => 1,
    }
}

/// The object store's bucket: `[snapshot.nats] bucket`, else `<stream_prefix>-snapshot-store`.
pub fn bucket_name(cfg: &Config) -> String {
    if cfg.snapshot.nats.bucket.is_empty() {
        format!("{}-snapshot-store", cfg.nats.stream_prefix)
    } else {
        cfg.snapshot.nats.bucket.clone()
    }
}

pub struct NatsStore {
    bucket: String,
    js: jetstream::Context,
    store: object_store::ObjectStore,
    /// Bytes per chunk of an object put here: [`CHUNK`], or less where the server takes smaller messages.
    chunk: usize,
}

/// Bytes per chunk of an object: each chunk is one message, acknowledged after the servers store it (with
/// `sync_interval: always`, after an fsync): the client's default of 128 KiB took eight times as many.
const CHUNK: usize = 1 << 20;

/// The chunk size for a server taking messages of up to `max_payload` bytes (headers included).
fn chunk_size(max_payload: usize) -> usize {
    let room = crate::config::HEADROOM as usize;
    CHUNK.min(max_payload.saturating_sub(room)).max(room)
}

impl NatsStore {
    pub async fn open(cfg: &Config, js: &jetstream::Context) -> Result<NatsStore, StoreError> {
        let bucket = bucket_name(cfg);
        // The bucket is created on first use; while the cluster elects a leader (a node just went away) the
        // request can time out: retry within the node's readiness timeout.
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(cfg.nats.ready_timeout_seconds.get());
        // A request sent while the cluster forms can go unanswered for the client's whole request timeout
        // (seconds): tries overlap, each with a short time of its own.
        let store = crate::retry::ask(
            crate::retry::Asking::FORMING,
            deadline,
            || open_once(cfg, js, &bucket, None),
            |t| format!("no answer within {t:?}"),
            |e| tracing::debug!(bucket, error = %e, "snapshot bucket not reachable yet"),
        )
        .await
        .map_err(|e| StoreError::failed(&format!("nats object store {bucket}"), e))?;
        let chunk = chunk_size(js.client().server_info().max_payload);
        Ok(NatsStore {
            bucket,
            js: js.clone(),
            store,
            chunk,
        })
    }
}

/// Longest wait for the next chunk of an object being read.
const CHUNK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Bytes of an object's chunks asked for at a time when it is read (the client's own reader lets the server
/// send up to 64 MiB ahead of the reader).
const READ_AHEAD: usize = 8 << 20;

impl NatsStore {
    /// The object `info` describes, read chunk by chunk with a pull consumer asking for [`READ_AHEAD`] bytes'
    /// worth of chunks at a time. Its size is checked at the end (the caller checks its content's hash).
    async fn chunks(&self, info: object_store::ObjectInfo) -> Result<Reader, String> {
        use futures::StreamExt;
        let chunk = info
            .options
            .as_ref()
            .and_then(|o| o.max_chunk_size)
            .unwrap_or(128 << 10)
            .max(1);
        let stream = self
            .js
            .get_stream(format!("OBJ_{}", self.bucket))
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("$O.{}.C.{}", self.bucket, info.nuid),
                max_batch: (READ_AHEAD / chunk).clamp(2, 500) as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let messages = if info.chunks == 0 {
            None
        } else {
            Some(consumer.messages().await.map_err(|e| e.to_string())?)
        };
        let (size, chunks) = (info.size, info.chunks);
        let state = (messages, 0usize, 0usize);
        let pieces = futures::stream::unfold(state, move |(messages, read, bytes)| async move {
            let mut messages = messages?;
            if read == chunks {
                return (bytes != size).then(|| {
                    let e = std::io::Error::other(format!(
                        "the object has {bytes} bytes in {chunks} chunks, its description says {size}"
                    ));
                    (Err(e), (None, read, bytes))
                });
            }
            // A consumer whose server is not current (just restarted, catching up with its cluster) can be
            // created and then deliver nothing: a chunk that does not come is an error, not a wait without end.
            let next = match tokio::time::timeout(CHUNK_WAIT, messages.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = std::io::Error::other(format!(
                        "chunk {} of {chunks} did not come within {CHUNK_WAIT:?}",
                        read + 1
                    ));
                    return Some((Err(e), (None, read, bytes)));
                }
            };
            match next {
                Some(Ok(m)) => {
                    let payload = m.payload.clone();
                    let bytes = bytes + payload.len();
                    Some((Ok(payload), (Some(messages), read + 1, bytes)))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), (None, read, bytes))),
                None => Some((
                    Err(std::io::Error::other(format!(
                        "the object ended after {read} of its {chunks} chunks"
                    ))),
                    (None, read, bytes),
                )),
            }
        });
        Ok(Box::pin(tokio_util::io::StreamReader::new(pieces)) as Reader)
    }
}

/// One try: the bucket opened, or created (with `[snapshot.nats] replicas`, else `streams` replicas, else as
/// many as the change streams have), read through its leader.
async fn open_once(
    cfg: &Config,
    js: &jetstream::Context,
    bucket: &str,
    streams: Option<usize>,
) -> Result<object_store::ObjectStore, String> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return read_through_leader(js, bucket, store).await;
    }
    let replicas = match (cfg.snapshot.nats.replicas, streams) {
        (0, Some(r)) => r,
        (0, None) => streams_replicas(cfg, js).await,
        (n, _) => n as usize,
    };
    create(js, bucket, replicas).await?;
    js.get_object_store(bucket).await.map_err(|e| e.to_string())
}

/// Creates the bucket's stream as the client's object store would, except that its reads go through the leader
/// from the start (see [`read_through_leader`]): on a cluster's first start a change of the stream right after
/// its creation could go unanswered while its group settles. Succeeds when another node created it meanwhile.
async fn create(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<(), String> {
    let config = jetstream::stream::Config {
        name: format!("OBJ_{bucket}"),
        description: Some("HarmonyLite snapshots".into()),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        max_bytes: -1,
        max_messages: -1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: false,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already in use") => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The bucket opened or created, the change streams having `replicas` replicas (they may not exist yet), one try
/// within `within`: what a node's start does while it creates the change streams, so that the join decision
/// finds the bucket's group elected. Errors are left to [`NatsStore::open`].
pub async fn prepare(
    cfg: &Config,
    js: &jetstream::Context,
    replicas: usize,
    within: std::time::Duration,
) {
    let bucket = bucket_name(cfg);
    let error =
        match tokio::time::timeout(within, open_once(cfg, js, &bucket, Some(replicas))).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {within:?}"),
        };
    tracing::debug!(bucket, error = %error, "snapshot bucket not created ahead; opened when needed");
}

/// The bucket's objects read through its stream's leader, never a replica: a direct get (what the client
/// asks for by default) may be answered by a replica that has not stored the latest manifest yet, and a node
/// joining right after `-save-snapshot` would then find no snapshot. Buckets created with direct gets on are
/// changed once; snapshots are read seldom, so the leader carries the reads.
async fn read_through_leader(
    js: &jetstream::Context,
    bucket: &str,
    store: object_store::ObjectStore,
) -> Result<object_store::ObjectStore, String> {
    let mut stream = js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|e| e.to_string())?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .config
        .clone();
    if !config.allow_direct {
        return Ok(store);
    }
    config.allow_direct = false;
    js.update_stream(&config).await.map_err(|e| e.to_string())?;
    js.get_object_store(bucket).await.map_err(|e| e.to_string())
}

impl Store for NatsStore {
    fn describe(&self) -> String {
        format!("nats object store {}", self.bucket)
    }

    fn put<'a>(&'a self, name: &'a str, mut body: Reader) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let meta = object_store::ObjectMetadata {
                name: name.to_string(),
                chunk_size: Some(self.chunk),
                ..Default::default()
            };
            self.store
                .put(meta, &mut body)
                .await
                .map_err(|e| StoreError::failed(&self.describe(), e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Reader>, StoreError>> {
        Box::pin(async move {
            let info = match self.store.info(name).await {
                Ok(info) if !info.deleted => info,
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::failed(&self.describe(), e)),
            };
            self.chunks(info)
                .await
                .map(Some)
                .map_err(|e| StoreError::failed(&self.describe(), e))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self.store.delete(name).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::failed(&self.describe(), e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_servers_largest_message() {
        assert_eq!(chunk_size(8 << 20), CHUNK);
        assert_eq!(chunk_size(1 << 20), (1 << 20) - 16384);
        assert_eq!(chunk_size(64 << 10), (64 << 10) - 16384);
    }
}
