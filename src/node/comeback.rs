//! Coming back whole: finding the shards whose next needed change has left the stream, and restoring the latest
//! snapshot when it covers them. Used at start (before the engine runs) and when a running shard meets a gap
//! (the engine is stopped, recovered, and started again).

use std::collections::BTreeMap;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::apply::consumer::Gap;
use crate::capture;
use crate::cluster::positions;
use crate::config::Config;
use crate::snapshot::{self, Manifest, store};

/// Shards of `cfg` whose next needed change (after the database's applied position, or after the position
/// this node's retention entry certified) is no longer in the stream.
pub async fn gaps(
    js: &jetstream::Context,
    cfg: &Config,
    applied: &std::collections::HashMap<String, u64>,
    certified: &BTreeMap<String, u64>,
) -> Vec<Gap> {
    let mut out = Vec::new();
    for shard in 1..=cfg.replication_log.shards.get() {
        let stream = cfg.stream_name(shard);
        let Ok(mut s) = js.get_stream(&stream).await else {
            continue;
        };
        let Ok(info) = s.info().await else { continue };
        let first = info.state.first_sequence;
        let handled = applied
            .get(&stream)
            .copied()
            .unwrap_or(0)
            .max(certified.get(&stream).copied().unwrap_or(0));
        if handled + 1 < first {
            out.push(Gap {
                shard,
                stream,
                needed: applied.get(&cfg.stream_name(shard)).copied().unwrap_or(0) + 1,
                first_available: first,
            });
        }
    }
    out
}

/// The latest snapshot, when snapshots are enabled and it covers every gap in `gaps`.
pub async fn usable_snapshot(
    cfg: &Config,
    js: &jetstream::Context,
    gaps: &[Gap],
) -> Result<Option<(Box<dyn store::Store>, Manifest)>, snapshot::SnapshotError> {
    if !cfg.snapshot.enabled {
        return Ok(None);
    }
    let store = store::open(cfg, js).await?;
    let Some(m) = snapshot::latest(store.as_ref()).await? else {
        tracing::error!(store = %store.describe(), "no snapshot in the store; the shards stay stopped at their gaps");
        return Ok(None);
    };
    if let Some(g) = gaps
        .iter()
        .find(|g| !snapshot::covers(&m, &g.stream, g.first_available))
    {
        tracing::error!(stream = %g.stream, snapshot_position = m.positions.get(&g.stream).copied().unwrap_or(0),
            first_available = g.first_available, created_at = %m.created_at,
            "the latest snapshot is older than what the stream still has; the shard stays stopped at its gap");
        return Ok(None);
    }
    Ok(Some((store, m)))
}

/// Attempts at a restore while applications keep writing (each one publishes what they wrote first).
const MAX_RESTORE_ATTEMPTS: u32 = 50;

/// Restore snapshot `m` into the database, the node's local changes published first by `publisher` (again
/// when an application commits between that and the restore: the restore checks under the write lock).
/// This node's retention entry is lowered to the snapshot's positions before the database changes, so the
/// stream keeps what the restored database still needs.
pub async fn restore(
    cfg: &Config,
    js: &jetstream::Context,
    store: &dyn store::Store,
    m: &Manifest,
    replicas: usize,
    cancel: &CancellationToken,
    publisher: &mut crate::publish::Publisher,
) -> anyhow::Result<()> {
    tracing::info!(object = %m.object, saved_by = m.node_id, created_at = %m.created_at,
        bytes = m.database_bytes, "restoring snapshot");
    let kv = positions::bucket(js, replicas).await.map_err(|e| {
        anyhow::anyhow!("cannot record the snapshot's positions before restoring: {e}")
    })?;
    let entry = positions::Positions {
        node_id: cfg.node_id,
        incarnation: 0,
        positions: m.positions.clone(),
        published_upto: 0,
    };
    positions::write(&kv, &positions::node_key(cfg.node_id), &entry)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot record the snapshot's positions before restoring: {e}")
        })?;
    let (dir, copy) = tokio::select! {
        r = snapshot::fetch(cfg, store, m) => r?,
        _ = cancel.cancelled() => anyhow::bail!("restore cancelled"),
    };
    for attempt in 1.. {
        tracing::info!("publishing local changes before the restore");
        if !publisher.drain(cancel).await {
            anyhow::bail!("stopped before local changes were published; nothing restored");
        }
        let published_upto = publisher.published_upto();
        let (live, copy, m2, cfg2) = (cfg.db_path.clone(), copy.clone(), m.clone(), cfg.clone());
        match tokio::task::spawn_blocking(move || {
            snapshot::restore_into(&live, &copy, &m2, &cfg2, published_upto)
        })
        .await
        .expect("restore panicked")
        {
            Err(snapshot::SnapshotError::LocalChangesPending) if attempt < MAX_RESTORE_ATTEMPTS => {
                tracing::info!(
                    attempt,
                    "an application wrote while the restore began; publishing that first"
                );
            }
            r => {
                r?;
                break;
            }
        }
    }
    drop(dir);
    Ok(())
}

/// The database's applied positions (empty when capture was never installed).
pub fn applied_positions(conn: &rusqlite::Connection) -> std::collections::HashMap<String, u64> {
    capture::applied_positions(conn).unwrap_or_default()
}
