//! A lease held by one node at a time in a KV bucket of its own: which node takes the periodic snapshots, which
//! writes the change feed. Clock-skew-proof: the bucket's `max_age` is the lease time, so the server alone
//! expires an unrenewed lease; taking it is a `create` (only when no one holds it), renewing it an `update` at
//! the revision the holder last wrote (refused if anyone else wrote since). No node's clock decides.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::nats::KvError;

/// Where a lease lives and what it is for (said in the bucket's description and in the log).
pub struct Kind {
    pub bucket: &'static str,
    pub key: &'static str,
    pub description: &'static str,
    /// What the holder does, for the log: "takes the periodic snapshots".
    pub role: &'static str,
}

/// The lease as this node sees it.
pub struct Lease {
    kind: &'static Kind,
    store: kv::Store,
    node_id: u64,
    /// The revision this node last wrote while holding the lease.
    revision: Option<u64>,
}

impl Lease {
    /// Open the lease's bucket (created when missing, `ttl` its lease time).
    pub async fn open(
        kind: &'static Kind,
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
        node_id: u64,
    ) -> Result<Lease, KvError> {
        let store =
            crate::nats::placement::kv_bucket(js, kind.bucket, kind.description, replicas, ttl)
                .await?;
        Ok(Lease {
            kind,
            store,
            node_id,
            revision: None,
        })
    }

    /// Take or renew the lease; true while this node holds it.
    pub async fn hold(&mut self) -> bool {
        let (bucket, key) = (self.kind.bucket, self.kind.key);
        let value = bytes::Bytes::from(self.node_id.to_string());
        let r = match self.revision {
            Some(rev) => self
                .store
                .update(key, value, rev)
                .await
                .map_err(|e| KvError::write(bucket, key, e)),
            None => self
                .store
                .create(key, value)
                .await
                .map_err(|e| KvError::write(bucket, key, e)),
        };
        match r {
            Ok(rev) => {
                if self.revision.is_none() {
                    tracing::info!("this node {} (lease acquired)", self.kind.role);
                }
                self.revision = Some(rev);
                true
            }
            Err(e) => {
                if self.revision.take().is_some() {
                    tracing::info!(error = %e, "lease lost: this node no longer {}", self.kind.role);
                }
                false
            }
        }
    }

    /// Whether this node held the lease at its last [`Lease::hold`].
    pub fn held(&self) -> bool {
        self.revision.is_some()
    }

    /// The node holding the lease now, as the bucket says (`None`: no one, or the bucket did not answer).
    pub async fn holder(&self) -> Option<u64> {
        let v = self.store.get(self.kind.key).await.ok()??;
        std::str::from_utf8(&v).ok()?.parse().ok()
    }
}
