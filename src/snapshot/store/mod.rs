//! Where snapshots are kept: one small trait ([`Store`]) and one implementation per `[snapshot] store`:
//! the NATS object store (default), S3-compatible, WebDAV, SFTP. A store only moves named objects as byte
//! streams; what a snapshot is (its manifest, its hash, compression) is decided above it, in
//! [`crate::snapshot`], identically for every store.
//!
//! Every store streams: an upload reads its body in bounded parts ([`PART_SIZE`] at most held per part), a
//! download hands out the object as it arrives.

pub mod nats;
mod s3;
mod sftp;
mod webdav;

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
        _ => open_external(cfg).await,
    }
}

/// The store `[snapshot] store` names when it lives outside NATS (S3, WebDAV, SFTP); the NATS object store
/// needs [`open`]. Checks the configuration and reaches the store once (creating its bucket or directory when
/// missing), so a bad setting fails here rather than at the first snapshot.
pub async fn open_external(cfg: &Config) -> Result<Box<dyn Store>, StoreError> {
    match cfg.snapshot.store {
        SnapshotStore::Nats => Err(StoreError::Config(
            "the NATS object store needs a JetStream connection".into(),
        )),
        SnapshotStore::S3 => Ok(Box::new(s3::S3Store::open(&cfg.snapshot.s3).await?)),
        SnapshotStore::Webdav => Ok(Box::new(
            webdav::WebdavStore::open(&cfg.snapshot.webdav).await?,
        )),
        SnapshotStore::Sftp => Ok(Box::new(sftp::SftpStore::open(&cfg.snapshot.sftp).await?)),
    }
}

/// The most an upload holds in memory per part (S3 multipart parts; the read buffer of the other stores is
/// smaller).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// A unique suffix for temporary object names (`<name>.tmp-<hex>`), so concurrent writers never share one.
fn temp_suffix() -> String {
    format!("tmp-{}", hex::encode(&crate::ids::random_bytes()[..8]))
}

/// `e` and its causes, `: `-separated (an HTTP client's error alone often says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The TLS crypto provider of the HTTP clients (S3, WebDAV): ring, the one the NATS client already uses.
/// Installed once as the process default; an already installed default is kept.
fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
