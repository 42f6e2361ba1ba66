//! A running node: start-up order, the handles its tasks share, and the shutdown that runs on every path.
//!
//! Start-up: check the database → install capture → start (or join) NATS and wait for JetStream → ensure the
//! streams → start the applier and one consumer per shard → start the publisher and the file watcher. Once NATS
//! runs, the node is a [`RunningNode`] value, and every later step that fails goes through
//! [`RunningNode::shutdown`] before the error is returned. Shutdown (SIGTERM/SIGINT, `sleep_timeout`, or a
//! failed start): cancel the engine, let its tasks finish, then stop NATS.
//!
//! Each task gets the handles it uses and nothing else: the configuration, the capture in force
//! ([`CurrentCapture`]), the conflict rule's table of in-flight local changes ([`InFlight`]) and the
//! [`Counters`].

mod db;
pub mod retention;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use db::{check_db, cleanup, open_db};

use crate::apply::{
    Applier,
    consumer::{Gap, ShardConsumer},
};
use crate::capture::{self, CurrentCapture};
use crate::cli::Cli;
use crate::config::Config;
use crate::conflict::InFlight;
use crate::counters::Counters;
use crate::nats::{ClusterFlags, Nats};
use crate::publish::{Publisher, state::PublishState};

/// How long shutdown waits for the engine's tasks before stopping NATS anyway.
const ENGINE_STOP_GRACE: Duration = Duration::from_secs(10);

/// `-schema-status-cluster`: every node's schema from the registry, through the running node's NATS (or the
/// node's server started for the command). Returns the report and whether all nodes agree.
pub async fn schema_status_cluster(cfg: &Config, cli: &Cli) -> anyhow::Result<(String, bool)> {
    let nats = Nats::attach(cfg, &ClusterFlags::from_cli(cli))
        .await
        .context("cannot reach the cluster's NATS")?;
    let entries = tokio::time::timeout(
        Duration::from_secs(cfg.nats.ready_timeout_seconds.get()),
        crate::ops::schema::read_entries(&nats.jetstream),
    )
    .await;
    nats.shutdown().await;
    let entries = entries
        .context("timed out reading the schema registry")?
        .context("cannot read the schema registry")?;
    Ok(crate::ops::schema::cluster_report(&entries))
}

/// Run a node until SIGTERM/SIGINT or `sleep_timeout`.
pub async fn run(cfg: Config, cli: &Cli) -> anyhow::Result<()> {
    let mut node = RunningNode::start(cfg, ClusterFlags::from_cli(cli)).await?;
    node.wait_for_stop().await;
    node.shutdown().await;
    Ok(())
}

/// A node whose NATS is up: the engine's tasks and what stops them.
pub struct RunningNode {
    cfg: Arc<Config>,
    nats: Nats,
    counters: Arc<Counters>,
    /// Shards whose consumers stopped at a gap report here.
    gaps_tx: tokio::sync::mpsc::UnboundedSender<Gap>,
    gaps: tokio::sync::mpsc::UnboundedReceiver<Gap>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    _watch: Option<capture::watch::Watch>,
}

/// What the engine starts from: the write connection, the capture installed on it, the publisher's progress.
struct Prepared {
    conn: rusqlite::Connection,
    capture: capture::Capture,
    state: PublishState,
}

impl RunningNode {
    /// Start a node: capture, NATS, streams, engine. On error nothing keeps running.
    pub async fn start(cfg: Config, flags: ClusterFlags) -> anyhow::Result<RunningNode> {
        let cfg = Arc::new(cfg);
        let prepared = prepare(&cfg)?;
        let nats = Nats::start(&cfg, &flags)
            .await
            .context("cannot start NATS")?;
        let (gaps_tx, gaps) = tokio::sync::mpsc::unbounded_channel();
        let mut node = RunningNode {
            cfg,
            nats,
            counters: Arc::new(Counters::default()),
            gaps_tx,
            gaps,
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
            _watch: None,
        };
        match node.start_engine(prepared).await {
            Ok(()) => Ok(node),
            Err(e) => {
                node.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_engine(&mut self, prepared: Prepared) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
        let replicas = cfg
            .replication_log
            .replicas
            .map(|r| r as usize)
            .unwrap_or_else(|| self.nats.cluster_size_hint().clamp(1, 3));
        streams::explain_caps(&cfg);
        streams::ensure(
            &self.nats.jetstream,
            &cfg,
            replicas,
            Duration::from_secs(cfg.nats.ready_timeout_seconds.get()),
        )
        .await?;

        let Prepared {
            conn,
            capture,
            state,
        } = prepared;
        let in_flight = Arc::new(InFlight::new(
            cfg.publish && cfg.replicate,
            state.published_upto,
        ));
        let current = CurrentCapture::new(capture);
        self.counters.touch();
        self.tasks.spawn(crate::ops::schema::publish_entries(
            self.nats.jetstream.clone(),
            cfg.clone(),
            current.clone(),
            replicas,
            self.cancel.clone(),
        ));

        // What this node's retention entry certified is read before the entry is written again.
        if cfg.replicate {
            let certified = retention::certified(&self.nats.jetstream, cfg.node_id).await;
            self.start_applier(conn, &current, &in_flight, &certified)?;
        } else {
            drop(conn);
        }
        let expected_nodes = if self.nats.is_embedded() {
            self.nats.cluster_size_hint()
        } else {
            1
        };
        self.tasks.spawn(retention::run(
            self.nats.jetstream.clone(),
            cfg.clone(),
            self.counters.clone(),
            replicas,
            expected_nodes,
            self.cancel.clone(),
        ));

        let publisher = Publisher::new(
            cfg.clone(),
            open_db(&cfg.db_path)?,
            state,
            current,
            in_flight,
            self.counters.clone(),
            self.nats.client.clone(),
        )?;
        let wake = publisher.waker();
        self.tasks.spawn(publisher.run(self.cancel.clone()));
        self._watch = Some(capture::watch::start(
            &cfg.db_path,
            cfg.polling_interval_ms,
            wake.clone(),
            self.cancel.clone(),
        ));
        wake.notify_one(); // publish what was committed while we were down
        self.tasks.spawn(trim_memory(self.cancel.clone()));
        tracing::info!(
            node_id = cfg.node_id,
            shards = cfg.replication_log.shards,
            replicas,
            publish = cfg.publish,
            replicate = cfg.replicate,
            "node running"
        );
        Ok(())
    }

    /// The applier on the write connection, fed by one consumer per shard from its applied position.
    fn start_applier(
        &mut self,
        conn: rusqlite::Connection,
        current: &CurrentCapture,
        in_flight: &Arc<InFlight>,
        certified: &std::collections::BTreeMap<String, u64>,
    ) -> anyhow::Result<()> {
        let (applier, inputs) = Applier::new(
            self.cfg.clone(),
            current.clone(),
            in_flight.clone(),
            self.counters.clone(),
            conn,
        )?;
        for mut input in inputs {
            input.certified = certified.get(&input.stream).copied().unwrap_or(0);
            let c = ShardConsumer::new(
                self.nats.jetstream.clone(),
                self.cfg.server_name(),
                input,
                self.counters.clone(),
                self.gaps_tx.clone(),
            );
            self.tasks.spawn(c.run(self.cancel.clone()));
        }
        self.tasks.spawn(applier.run(self.cancel.clone()));
        Ok(())
    }

    /// The node's counters and gauges.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Wait for SIGTERM, SIGINT, or `sleep_timeout` without activity. Gaps reported meanwhile are kept in
    /// the counters (and logged by the shard that met them).
    pub async fn wait_for_stop(&mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let sleep_timeout = self.cfg.sleep_timeout_ms;
        let counters = &self.counters;
        let idle = async {
            if sleep_timeout == 0 {
                return std::future::pending::<()>().await;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(sleep_timeout.clamp(100, 1000))).await;
                let idle_for = counters.idle_ms();
                if idle_for >= sleep_timeout {
                    tracing::info!(idle_ms = idle_for, "no activity for sleep_timeout; exiting");
                    return;
                }
            }
        };
        let gaps = &mut self.gaps;
        let drain_gaps = async {
            while let Some(gap) = gaps.recv().await {
                tracing::debug!(shard = gap.shard, needed = gap.needed, "gap reported");
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = idle => {}
            _ = drain_gaps => {}
        }
    }

    /// Stop in the order the design says: the engine (its tasks finish their work and record their positions),
    /// then NATS (the client drains, the embedded server stops gracefully).
    pub async fn shutdown(mut self) {
        tracing::info!("stopping");
        self.cancel.cancel();
        let tasks = &mut self.tasks;
        let stop = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(ENGINE_STOP_GRACE, stop).await.is_err() {
            tracing::warn!("engine tasks did not stop within {ENGINE_STOP_GRACE:?}");
            self.tasks.abort_all();
        }
        drop(self._watch.take());
        self.nats.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Check the database, install capture, open the publisher's state: everything that needs no network.
fn prepare(cfg: &Config) -> anyhow::Result<Prepared> {
    check_db(cfg)?;
    let mut conn = open_db(&cfg.db_path).context("cannot open the database")?;
    let capture = tokio::task::block_in_place(|| {
        capture::install(&mut conn, &cfg.include_tables, &cfg.exclude_tables)
    })
    .context("cannot install change capture")?;
    tracing::info!(tables = capture.tables.len(), names = ?capture.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "change capture installed");
    let state = PublishState::open(&cfg.seq_map_path, cfg.node_id, capture.incarnation)?;
    Ok(Prepared {
        conn,
        capture,
        state,
    })
}

/// Give memory freed after bursts back to the system, so the resident size follows the load.
async fn trim_memory(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => crate::memory::release(),
        }
    }
}
