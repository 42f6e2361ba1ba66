//! Where snapshots are kept: one small trait ([`Store`]) and one implementation per `[snapshot] store`:
//! the NATS object store (default), S3-compatible, WebDAV, SFTP. A store only moves named objects as byte
//! streams; what a snapshot is (its manifest, its hash, compression) is decided above it, in
//! [`crate::snapshot`], identically for every store.

mod nats;

use std::pin::Pin;

use futures::future::BoxFuture;
use tokio::io::AsyncRead;

use crate::config::{Config, SnapshotStore};

/// A byte stream read by a store (upload) or handed out by it (download).
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `[snapshot.<store>]` keys do not describe a usable store.
    #[error("snapshot store configuration: {0}")]
    Config(String),
    /// The store could not be reached or refused the operation.
    #[error("snapshot store {store}: {reason}")]
    Failed { store: String, reason: String },
}

impl StoreError {
    pub fn failed(store: &str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Failed {
            store: store.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A place that keeps named objects.
pub trait Store: Send + Sync {
    /// Where objects go, for logs and errors (never with credentials), e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Store `body` as object `name`, reading it to the end (streamed, never all in memory), replacing an
    /// existing object of that name. A reader sees either the old object or the complete new one.
    fn put<'a>(&'a self, name: &'a str, body: Reader) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Object `name` as a stream, or `None` when there is no such object.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Reader>, StoreError>>;

    /// Remove object `name`; removing an absent object is not an error.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The store `[snapshot] store` names. The NATS object store needs the node's JetStream context.
pub async fn open(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
) -> Result<Box<dyn Store>, StoreError> {
    match cfg.snapshot.store {
        SnapshotStore::Nats => Ok(Box::new(nats::NatsStore::open(cfg, js).await?)),
        other => Err(StoreError::Config(format!(
            "store {other:?} is not available in this build"
        ))),
    }
}

/// Read `r` to the end into memory (small objects such as manifests only).
pub async fn read_all(mut r: Reader, limit: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() > limit {
        return Err(std::io::Error::other(format!(
            "object larger than {limit} bytes"
        )));
    }
    Ok(buf)
}
