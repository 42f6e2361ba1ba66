//! The node's view of itself for operators, refreshed about once a second by [`run`]: whether its database
//! opens and has capture installed, how many change-log rows wait to be published, whether JetStream answers
//! for every shard's stream with a leader (quorum), each stream's last sequence and the age of the oldest
//! message this node has not handled yet (lag), and the embedded nats-server's state. The metrics and health
//! endpoints read what [`Observed`] and the [`Counters`] hold; they never wait on the network themselves.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::counters::{Counters, now_ms};
use crate::nats::ServerWatch;

/// How often the view is refreshed.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long one look at a stream may take before it counts as "no quorum".
const STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node's NATS side gives the observer once it is up.
#[derive(Clone)]
pub struct NatsView {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    /// The embedded server, when this node runs one.
    pub server: Option<ServerWatch>,
    /// How many nodes the cluster should have: with the embedded server, 1 + its route peers; else 1.
    pub expected_nodes: usize,
}

/// The database as seen at the last look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbView {
    pub connected: bool,
    /// Why the database could not be opened or read, when it could not.
    pub error: Option<String>,
    /// Capture triggers present.
    pub cdc_installed: bool,
    /// Tables with capture triggers.
    pub tables_tracked: usize,
}

/// Everything the endpoints show, shared by the node's tasks.
pub struct Observed {
    pub cfg: Arc<Config>,
    pub counters: Arc<Counters>,
    pub started: Instant,
    nats: ArcSwapOption<NatsView>,
    db: Mutex<DbView>,
}

impl Observed {
    pub fn new(cfg: Arc<Config>, counters: Arc<Counters>) -> Arc<Observed> {
        Arc::new(Observed {
            cfg,
            counters,
            started: Instant::now(),
            nats: ArcSwapOption::empty(),
            db: Mutex::new(DbView::default()),
        })
    }

    /// NATS is up: from now on its streams are looked at.
    pub fn set_nats(&self, view: NatsView) {
        self.nats.store(Some(Arc::new(view)));
    }

    pub fn nats(&self) -> Option<Arc<NatsView>> {
        self.nats.load_full()
    }

    pub fn db(&self) -> DbView {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The NATS client is connected.
    pub fn nats_connected(&self) -> bool {
        self.nats().is_some_and(|n| {
            n.client.connection_state() == async_nats::connection::State::Connected
        })
    }

    /// The embedded nats-server runs (always true with external NATS once connected).
    pub fn nats_server_running(&self) -> bool {
        match self.nats() {
            Some(n) => n.server.as_ref().is_none_or(ServerWatch::running),
            None => false,
        }
    }

    /// Restarts of the embedded nats-server after it died.
    pub fn nats_server_restarts(&self) -> u64 {
        self.nats()
            .and_then(|n| n.server.as_ref().map(ServerWatch::restarts))
            .unwrap_or(0)
    }
}

/// Refresh the view every [`PERIOD`] until cancelled.
pub async fn run(observed: Arc<Observed>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut catching_up = super::catch_up::Tracker::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let path = observed.cfg.db_path.clone();
        let published_upto = observed.counters.published_upto.load(Ordering::Relaxed);
        let db = tokio::task::spawn_blocking(move || look_at_db(&path, published_upto))
            .await
            .unwrap_or_else(|e| {
                (
                    DbView {
                        error: Some(e.to_string()),
                        ..Default::default()
                    },
                    None,
                )
            });
        if let Some(pending) = db.1 {
            observed
                .counters
                .pending_rows
                .store(pending, Ordering::Relaxed);
        }
        *observed.db.lock().unwrap_or_else(|e| e.into_inner()) = db.0;
        if let Some(nats) = observed.nats() {
            look_at_streams(&observed, &nats).await;
            catching_up.look(&observed.counters);
        }
    }
}

/// Open the database read-only and look at it: capture triggers, and change-log rows above `published_upto`
/// (with the time the count took, the original's `count_changes`).
fn look_at_db(path: &Path, published_upto: u64) -> (DbView, Option<u64>) {
    use rusqlite::OpenFlags;
    let r = (|| -> rusqlite::Result<(DbView, Option<u64>)> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        let (triggers, tables): (i64, i64) = conn.query_row(
            "SELECT count(*), count(DISTINCT tbl_name) FROM sqlite_master \
             WHERE type = 'trigger' AND name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let started = Instant::now();
        let pending = conn
            .query_row(
                &format!("SELECT count(*) FROM {} WHERE id > ?1", crate::capture::LOG),
                [published_upto as i64],
                |r| r.get::<_, i64>(0),
            )
            .ok()
            .map(|n| n.max(0) as u64);
        if pending.is_some() {
            metrics::histogram!("harmonylite_count_changes")
                .record(started.elapsed().as_micros() as f64);
        }
        Ok((
            DbView {
                connected: true,
                error: None,
                cdc_installed: triggers > 0,
                tables_tracked: tables.max(0) as usize,
            },
            pending,
        ))
    })();
    r.unwrap_or_else(|e| {
        (
            DbView {
                error: Some(e.to_string()),
                ..Default::default()
            },
            None,
        )
    })
}

/// Look at every shard's stream: last sequence, leader, and the age of the oldest message not handled yet.
async fn look_at_streams(observed: &Observed, nats: &NatsView) {
    let cfg = &observed.cfg;
    let counters = &observed.counters;
    let applied = counters.applied();
    let mut quorum = true;
    let mut all_exist = true;
    for shard in 1..=cfg.replication_log.shards.get() {
        let name = cfg.stream_name(shard);
        let look = async {
            let stream = nats.jetstream.get_stream(&name).await?;
            let info = stream.cached_info().clone();
            let handled = applied.get(shard as usize - 1).copied().unwrap_or(0);
            let mut age_ms = 0;
            if info.state.last_sequence > handled {
                let next = (handled + 1).max(info.state.first_sequence);
                if let Ok(m) = stream.get_raw_message(next).await {
                    let at_ms = (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                    age_ms = now_ms().saturating_sub(at_ms).max(1);
                }
            }
            anyhow::Ok((info, age_ms))
        };
        match tokio::time::timeout(STREAM_TIMEOUT, look).await {
            Ok(Ok((info, age_ms))) => {
                counters.set_stream(shard, info.state.last_sequence, age_ms);
                if info.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
                    quorum = false;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(stream = %name, error = %e, "stream not available");
                quorum = false;
                all_exist = false;
            }
            Err(_) => {
                quorum = false;
                all_exist = false;
            }
        }
    }
    counters.quorum.store(quorum, Ordering::Relaxed);
    if all_exist {
        counters.streams_ready.store(true, Ordering::Relaxed);
    }
}
