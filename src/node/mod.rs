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

mod comeback;
mod join;
pub mod membership;
mod retention;
mod saves;
pub(crate) mod streams;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::db::{check_db, open_db};
pub use saves::save_now as save_snapshot;

use crate::apply::{
    Applier,
    consumer::{Gap, ShardConsumer},
};
use crate::capture::{self, CurrentCapture};
use crate::cli::Cli;
use crate::cluster::positions;
use crate::config::Config;
use crate::conflict::InFlight;
use crate::counters::Counters;
use crate::nats::{ClusterFlags, Nats};
use crate::ops::observe::{NatsView, Observed};
use crate::publish::{Publisher, state::PublishState};

/// How long shutdown waits for the engine's tasks before stopping NATS anyway.
const ENGINE_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a start waits for its shard consumers to pull before it says "node running" (a consumer is made
/// again until it lands on the node's own server: a few milliseconds each time here).
const FIRST_PULL_WAIT: Duration = Duration::from_secs(3);

/// Run a node until SIGTERM/SIGINT or `sleep_timeout`. The metrics and health endpoints (when enabled) start
/// first and answer while the node waits for its cluster.
pub async fn run(cfg: Config, cli: &Cli) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let counters = Arc::new(Counters::default());
    let observed = Observed::new(cfg.clone(), counters.clone());
    let ops = CancellationToken::new();
    let _stop_ops = ops.clone().drop_guard();
    let served = crate::ops::http::start(&cfg, observed.clone(), ops.clone()).await?;
    if !served.is_empty() {
        tokio::spawn(crate::ops::observe::run(observed.clone(), ops.clone()));
    }
    let mut node =
        RunningNode::start(cfg, ClusterFlags::from_cli(cli), counters, Some(observed)).await?;
    crate::sd_notify::notify("READY=1");
    if let Some(period) = crate::sd_notify::watchdog_period() {
        tokio::spawn(crate::sd_notify::watchdog(period, ops.clone()));
    }
    let result = loop {
        match node.next_event().await {
            Event::Stop => break Ok(()),
            Event::Gap(gap) => {
                if let Err(e) = node.recover_gap(gap).await {
                    break Err(e);
                }
            }
        }
    };
    crate::sd_notify::notify("STOPPING=1");
    node.shutdown().await;
    result
}

/// What ends [`RunningNode::next_event`].
pub enum Event {
    /// SIGTERM, SIGINT, or `sleep_timeout` without activity.
    Stop,
    /// A shard's next needed change has left the stream.
    Gap(Gap),
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
    /// When the last gap was handled (gaps of several shards arrive together; one recovery serves them).
    last_recovery: Option<std::time::Instant>,
    /// A snapshot whose restore failed (say, its hash did not match): not tried again.
    failed_snapshot: Option<String>,
    /// This node's database (its change-log incarnation), in its status entry.
    incarnation: u64,
    /// The node's lock (see [`crate::nats::NodeLock`]), released when the node is dropped.
    _lock: Option<crate::nats::NodeLock>,
}

/// What the engine starts from: the write connection, the capture installed on it, the publisher's progress.
struct Prepared {
    conn: rusqlite::Connection,
    capture: capture::Capture,
    state: PublishState,
    /// Capture was installed now for the first time on this database.
    first: bool,
    /// `[ddl] enabled` is on but schema changes do not replicate for this database yet: they start once
    /// [`enable_schema_changes`] has checked this node's records of applied migrations against the cluster's.
    ddl_pending: bool,
}

/// What the start found or did before the engine's tasks run (see [`RunningNode::recover_before_start`]).
struct Recovered {
    prepared: Prepared,
    /// The positions this node's entry certifies for its database, per stream.
    certified: std::collections::BTreeMap<String, u64>,
    /// The entry could not be read: the retention task reads it before it writes.
    certified_unknown: bool,
    /// The node still waits to join the cluster's data.
    join_pending: bool,
}

/// What a node's start may create beside its database and did not find there (the data folder's server
/// files, the publish state, the pre-join copy): removed again when the node is refused at start, so a
/// refused node leaves nothing behind.
struct Footprint {
    new: Vec<std::path::PathBuf>,
}

impl Footprint {
    fn before_start(cfg: &Config) -> Footprint {
        let nats = cfg.data_root_dir().join("nats");
        let server = cfg.server_name();
        let candidates = [
            nats.join(&server),
            nats.join(format!("{server}.conf")),
            nats.join(format!("{server}.lock")),
            nats.clone(),
            cfg.seq_map_path.clone(),
            join::pre_join_path(&cfg.db_path),
        ];
        Footprint {
            new: candidates.into_iter().filter(|p| !p.exists()).collect(),
        }
    }

    /// Takes back a refused start: capture uninstalled when this start installed it, then the new paths
    /// removed (the `nats` folder only when empty).
    fn take_back(self, prepared: Prepared, lock: Option<crate::nats::NodeLock>) {
        let Prepared {
            mut conn, first, ..
        } = prepared;
        if first && let Err(e) = capture::uninstall(&mut conn) {
            tracing::warn!(error = %e, "cannot remove the capture this refused start installed");
        }
        drop(conn);
        self.remove_new(lock);
    }

    /// Removes the paths this start made (the lock released first).
    fn remove_new(self, lock: Option<crate::nats::NodeLock>) {
        drop(lock);
        for p in &self.new {
            let r = if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "nats") {
                    std::fs::remove_dir(p)
                } else {
                    std::fs::remove_dir_all(p)
                }
            } else if p.exists() {
                std::fs::remove_file(p)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::debug!(path = %p.display(), error = %e, "not removed after a refused start");
            }
        }
    }
}

impl RunningNode {
    /// Start a node: capture, NATS, streams, engine. On error nothing keeps running. `observed` (the
    /// endpoints' view) learns of NATS as soon as it is up.
    pub async fn start(
        cfg: Arc<Config>,
        flags: ClusterFlags,
        counters: Arc<Counters>,
        observed: Option<Arc<Observed>>,
    ) -> anyhow::Result<RunningNode> {
        let footprint = Footprint::before_start(&cfg);
        // Before the database is touched: a command run meanwhile waits for this node's server.
        let lock = crate::nats::NodeLock::for_node(&cfg).await?;
        let prepared = match prepare_with(&cfg, true) {
            Ok(p) => p,
            Err(e) => {
                footprint.remove_new(lock);
                return Err(e);
            }
        };
        let exposed = crate::nats::exposure::warnings(&cfg, &flags);
        for w in &exposed {
            tracing::warn!("{w}");
        }
        counters.set_security_warnings(exposed);
        let nats = Nats::start(&cfg, &flags)
            .await
            .context("cannot start NATS")?;
        let incarnation = prepared.capture.incarnation;
        let refused = match crate::ops::status::refuse_twin(
            &nats.jetstream,
            cfg.node_id,
            incarnation,
        )
        .await
        {
            Ok(()) => membership::refuse_removed(&nats.jetstream, cfg.node_id).await,
            Err(e) => Err(e),
        };
        let (refused, prepared) = match refused {
            Ok(()) => enable_schema_changes(&cfg, &nats.jetstream, prepared).await,
            Err(e) => (Err(anyhow::anyhow!(e)), prepared),
        };
        if let Err(e) = refused {
            nats.shutdown().await;
            tokio::task::block_in_place(|| footprint.take_back(prepared, lock));
            anyhow::bail!(e);
        }
        if let Some(o) = &observed {
            o.set_nats(NatsView {
                client: nats.client.clone(),
                jetstream: nats.jetstream.clone(),
                server: nats.server_watch(),
                expected_nodes: if nats.is_embedded() {
                    nats.cluster_size_hint()
                } else {
                    1
                },
            });
        }
        let (gaps_tx, gaps) = tokio::sync::mpsc::unbounded_channel();
        let mut node = RunningNode {
            cfg,
            nats,
            counters,
            gaps_tx,
            gaps,
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
            _watch: None,
            last_recovery: None,
            failed_snapshot: None,
            incarnation,
            _lock: lock,
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
        tokio::spawn(streams::prepare_buckets(
            self.nats.jetstream.clone(),
            cfg.clone(),
            replicas,
        ));
        streams::ensure(
            &self.nats.jetstream,
            &cfg,
            replicas,
            Duration::from_secs(cfg.nats.ready_timeout_seconds.get()),
        )
        .await?;
        tracing::debug!("start: change streams ready");

        let Recovered {
            prepared,
            certified,
            certified_unknown,
            join_pending,
        } = self.recover_before_start(prepared, replicas).await?;
        let Prepared {
            conn,
            capture,
            state,
            ..
        } = prepared;
        let in_flight = Arc::new(InFlight::new(
            cfg.publish && cfg.replicate,
            state.published_upto,
        ));
        let current = CurrentCapture::new(capture);
        self.counters.touch();
        self.spawn_cluster_tasks(replicas, &current, join_pending);
        let pulling = if cfg.replicate {
            self.start_applier(conn, &current, &in_flight, &certified)?
        } else {
            drop(conn);
            Vec::new()
        };
        self.spawn_bookkeeping(replicas, current.get().incarnation, certified_unknown);
        self.start_publisher(state, current, in_flight)?;
        // "Running" means receiving too: a change a peer writes from now on is on its way here. A consumer
        // whose first attempt failed (no quorum, a gap) goes on trying in the background; the start does not
        // wait for it, nor longer than FIRST_PULL_WAIT for one that neither pulls nor fails.
        let waited = std::time::Instant::now();
        let receiving = tokio::time::timeout(FIRST_PULL_WAIT, futures::future::join_all(pulling))
            .await
            .is_ok_and(|firsts| firsts.iter().all(Result::is_ok));
        tracing::debug!(
            receiving,
            waited_ms = waited.elapsed().as_millis() as u64,
            "start: shard consumers asked to pull"
        );
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

    /// The tasks that keep the cluster's shared state: stream and bucket replicas raised, this node's schema
    /// entry, snapshots served to joining nodes.
    fn spawn_cluster_tasks(
        &mut self,
        replicas: usize,
        current: &CurrentCapture,
        join_pending: bool,
    ) {
        let cfg = &self.cfg;
        self.tasks.spawn(crate::nats::placement::raise(
            self.nats.jetstream.clone(),
            streams::wanted_replicas(cfg, replicas),
            self.cancel.clone(),
        ));
        self.tasks.spawn(crate::ops::schema::publish_entries(
            self.nats.jetstream.clone(),
            cfg.clone(),
            current.clone(),
            replicas,
            self.cancel.clone(),
        ));
        if cfg.replicate && cfg.snapshot.enabled && !join_pending {
            self.tasks.spawn(join::serve(
                self.nats.client.clone(),
                self.nats.jetstream.clone(),
                cfg.clone(),
                self.counters.clone(),
                replicas,
                self.cancel.clone(),
            ));
        }
    }

    /// The tasks that write what this node is and holds: its status entry, its snapshots, its positions entry
    /// and the streams' trim; and, with `[feed] enabled`, the change feed while this node holds its lease.
    fn spawn_bookkeeping(&mut self, replicas: usize, incarnation: u64, certified_unknown: bool) {
        let cfg = &self.cfg;
        let expected_nodes = if self.nats.is_embedded() {
            self.nats.cluster_size_hint()
        } else {
            1
        };
        self.tasks.spawn(crate::ops::status::run(
            self.nats.jetstream.clone(),
            cfg.clone(),
            self.counters.clone(),
            replicas,
            expected_nodes,
            self.incarnation,
            self.cancel.clone(),
        ));
        self.tasks.spawn(saves::run(
            self.nats.jetstream.clone(),
            cfg.clone(),
            self.counters.clone(),
            replicas,
            self.cancel.clone(),
        ));
        self.tasks.spawn(retention::run(
            self.nats.jetstream.clone(),
            cfg.clone(),
            self.counters.clone(),
            incarnation,
            replicas,
            expected_nodes,
            certified_unknown,
            self.cancel.clone(),
        ));
        if cfg.feed.enabled {
            self.tasks.spawn(crate::feed::writer::run(
                self.nats.jetstream.clone(),
                cfg.clone(),
                replicas,
                self.cancel.clone(),
            ));
        }
    }

    /// The publisher on its own connection, the `-verify` answers that rely on its position, the watch on the
    /// database's files that wakes it, and a first pass for what was committed while the node was down.
    fn start_publisher(
        &mut self,
        state: PublishState,
        current: CurrentCapture,
        in_flight: Arc<InFlight>,
    ) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
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
        crate::publish::ends::start_sampler(
            &cfg.db_path,
            publisher.commit_ends(),
            self.cancel.clone(),
        );
        self.tasks.spawn(publisher.run(self.cancel.clone()));
        // After the publisher: it sets the published position the answers rely on.
        self.tasks.spawn(crate::ops::verify::serve(
            self.nats.client.clone(),
            cfg.clone(),
            self.counters.clone(),
            self.cancel.clone(),
        ));
        self._watch = Some(capture::watch::start(
            &cfg.db_path,
            cfg.polling_interval_ms,
            wake.clone(),
            self.cancel.clone(),
        ));
        wake.notify_one(); // publish what was committed while we were down
        self.tasks.spawn(trim_memory(self.cancel.clone()));
        Ok(())
    }

    /// What must happen before the engine's tasks start: the publish progress found again when the state file
    /// was lost, the positions this node's entry certifies read, a pending join finished, and a shard at a gap
    /// brought back from a snapshot when one can be.
    async fn recover_before_start(
        &mut self,
        prepared: Prepared,
        replicas: usize,
    ) -> anyhow::Result<Recovered> {
        let cfg = self.cfg.clone();
        let mut prepared = prepared;
        // A lost state file: find the publish progress again before anything is published or applied.
        crate::publish::recover::progress(
            &self.nats.jetstream,
            &cfg,
            &prepared.conn,
            &prepared.capture,
            &mut prepared.state,
        )
        .await;
        if cfg.publish {
            self.counters
                .set_published_upto(prepared.state.published_upto.max(0) as u64);
        }
        let (mut certified, mut certified_unknown) = self.certified(&cfg, &prepared).await;
        tracing::debug!(certified_unknown, "start: positions entry read");
        let mut join_pending = cfg.replicate
            && capture::join_pending(&prepared.conn)
                .context("cannot read the database's join state")?;
        if join_pending {
            match self.join(prepared, replicas).await? {
                (p, true) => {
                    prepared = p;
                    join_pending = false;
                    // The restored database is not the one the entry spoke for.
                    certified = Default::default();
                    certified_unknown = false;
                }
                (p, false) => {
                    prepared = p;
                    join_pending = capture::join_pending(&prepared.conn)
                        .context("cannot read the database's join state")?;
                }
            }
        }
        if cfg.replicate {
            let restored;
            (prepared, restored) = self.restore_at_gaps(prepared, &certified, replicas).await?;
            if restored {
                // The restored database is not the one the entry spoke for.
                certified = Default::default();
                certified_unknown = false;
            }
        }
        Ok(Recovered {
            prepared,
            certified,
            certified_unknown,
            join_pending,
        })
    }

    /// The positions this node's entry certifies, read before this run writes the entry again; when it cannot
    /// be read, none and `true` (the retention task reads it before it writes).
    async fn certified(
        &self,
        cfg: &Config,
        prepared: &Prepared,
    ) -> (std::collections::BTreeMap<String, u64>, bool) {
        // An entry certifies only the database it was written for (its change log's incarnation): a capture
        // installed now has a new incarnation that no entry can name, so there is nothing to read.
        if !cfg.replicate || prepared.first {
            return Default::default();
        }
        match positions::certified(
            &self.nats.jetstream,
            cfg.node_id,
            prepared.capture.incarnation,
        )
        .await
        {
            Ok(c) => (c, false),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "cannot read this node's positions entry; it is read again in the background (a shard \
                     that seems to be at a gap meanwhile waits for it)"
                );
                (Default::default(), true)
            }
        }
    }

    /// A shard at a gap (the stream no longer holds what it needs next) brought back from a snapshot when a
    /// usable one exists and did not fail before; true when the database was restored.
    async fn restore_at_gaps(
        &mut self,
        prepared: Prepared,
        certified: &std::collections::BTreeMap<String, u64>,
        replicas: usize,
    ) -> anyhow::Result<(Prepared, bool)> {
        let cfg = self.cfg.clone();
        let applied = comeback::applied_positions(&prepared.conn);
        let gaps = comeback::gaps(&self.nats.jetstream, &cfg, &applied, certified).await;
        tracing::debug!(gaps = gaps.len(), "start: streams checked for gaps");
        if gaps.is_empty() {
            return Ok((prepared, false));
        }
        match comeback::usable_snapshot(&cfg, &self.nats.jetstream, &gaps).await {
            Ok(Some((_, m))) if self.failed_snapshot.as_deref() == Some(m.object.as_str()) => {}
            Ok(Some((store, m))) => {
                return match self
                    .drain_and_restore(prepared, store.as_ref(), &m, replicas)
                    .await
                {
                    Ok(p) => Ok((p, true)),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"),
                            "snapshot not restored; the shards stay stopped at their gaps");
                        self.failed_snapshot = Some(m.object.clone());
                        Ok((prepare(&cfg)?, false))
                    }
                };
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the snapshot store"),
        }
        Ok((prepared, false))
    }

    /// The applier on the write connection, fed by one consumer per shard from its applied position.
    fn start_applier(
        &mut self,
        conn: rusqlite::Connection,
        current: &CurrentCapture,
        in_flight: &Arc<InFlight>,
        certified: &std::collections::BTreeMap<String, u64>,
    ) -> anyhow::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
        let (applier, inputs) = Applier::new(
            self.cfg.clone(),
            self.nats.jetstream.clone(),
            current.clone(),
            in_flight.clone(),
            self.counters.clone(),
            conn,
        )?;
        let mut pulling = Vec::with_capacity(inputs.len());
        for input in inputs {
            self.counters.set_certified(
                input.shard,
                certified.get(&input.stream).copied().unwrap_or(0),
            );
            let (c, first_pull) = ShardConsumer::new(
                self.nats.jetstream.clone(),
                self.cfg.server_name(),
                input,
                self.counters.clone(),
                self.gaps_tx.clone(),
            );
            self.tasks.spawn(c.run(self.cancel.clone()));
            pulling.push(first_pull);
        }
        self.tasks.spawn(applier.run(self.cancel.clone()));
        Ok(pulling)
    }

    /// Publish the local changes still in the change log, then restore snapshot `m`, then prepare again
    /// from the restored database.
    async fn drain_and_restore(
        &mut self,
        prepared: Prepared,
        store: &dyn crate::snapshot::store::Store,
        m: &crate::snapshot::Manifest,
        replicas: usize,
    ) -> anyhow::Result<Prepared> {
        let cfg = self.cfg.clone();
        let Prepared {
            conn,
            capture,
            state,
            ..
        } = prepared;
        drop(conn);
        let mut publisher = Publisher::new(
            cfg.clone(),
            open_db(&cfg.db_path)?,
            state,
            CurrentCapture::new(capture),
            Arc::new(InFlight::new(false, 0)),
            self.counters.clone(),
            self.nats.client.clone(),
        )?;
        let started = std::time::Instant::now();
        comeback::restore(
            &cfg,
            &self.nats.jetstream,
            store,
            m,
            replicas,
            &self.cancel,
            &mut publisher,
        )
        .await?;
        drop(publisher);
        self.counters.snapshot_done(started.elapsed());
        prepare(&cfg)
    }

    /// A joining node (its database captured for the first time, `join`): restore the cluster's snapshot when
    /// there is one, else ask a peer for one and restore it, or settle that there is nothing to join; all of it
    /// before the engine applies anything (a restore later would replace what the node did meanwhile). Returns
    /// what the engine starts from, and whether a snapshot was restored. When no peer gives a snapshot within
    /// [`join::PATIENCE`], or the store cannot be read, the node starts without the cluster's base data (said
    /// at WARN) and the database stays marked: its next start tries again.
    async fn join(
        &mut self,
        prepared: Prepared,
        replicas: usize,
    ) -> anyhow::Result<(Prepared, bool)> {
        let cfg = self.cfg.clone();
        let settled = |p: &Prepared| -> anyhow::Result<()> {
            capture::set_join_pending(&p.conn, false)
                .context("cannot record the database's join state")?;
            join::drop_pre_join(&cfg);
            Ok(())
        };
        let patience = std::time::Instant::now() + join::PATIENCE;
        let mut prepared = prepared;
        // The snapshot a peer gave last, when this node asks again.
        let mut given: Option<String> = None;
        loop {
            let decision = self.join_decision(replicas).await?;
            let ask = match decision {
                join::Decision::FirstStart => {
                    tracing::debug!(
                        "the streams are empty, no node has handled a change and there is no snapshot: the cluster's first start, nothing to join"
                    );
                    settled(&prepared)?;
                    return Ok((prepared, false));
                }
                join::Decision::CannotSeed => {
                    tracing::warn!(
                        "this node joins a cluster that already holds data, but snapshots are disabled ([snapshot] \
                         enabled = false): the rows the other nodes held before their capture began, and changes \
                         already trimmed from the streams, will not reach it. Seed its database with a copy of a \
                         peer's (sqlite3 <peer db> \".backup <file>\") before its first start, or enable snapshots"
                    );
                    settled(&prepared)?;
                    return Ok((prepared, false));
                }
                join::Decision::StoreUnreadable(e) => {
                    tracing::warn!(error = %e,
                        "this node joins a cluster that holds data but cannot read the snapshot store: it applies the \
                         stream without the rows that predate capture, and tries again at its next start");
                    return Ok((prepared, false));
                }
                join::Decision::Restore(_, m)
                    if self.failed_snapshot.as_deref() == Some(m.object.as_str()) =>
                {
                    true
                }
                join::Decision::Restore(store, m) => {
                    let pre = join::pre_join_path(&cfg.db_path);
                    if pre.exists() {
                        tracing::warn!(copy = %pre.display(),
                            "this node joins a cluster that holds data: the snapshot replaces the rows its database \
                             held before its first capture (they are never published); the file as it was is kept");
                    }
                    tracing::info!(object = %m.object,
                        "this node joins a cluster that holds data: restoring the latest snapshot before applying the stream");
                    match self
                        .drain_and_restore(prepared, store.as_ref(), &m, replicas)
                        .await
                    {
                        Ok(p) => {
                            capture::set_join_pending(&p.conn, false)
                                .context("cannot record the database's join state")?;
                            return Ok((p, true));
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"),
                                "snapshot not restored; this joining node asks a peer for another");
                            self.failed_snapshot = Some(m.object.clone());
                            prepared = prepare(&cfg)?;
                            true
                        }
                    }
                }
                join::Decision::AskPeer => true,
            };
            if !ask {
                continue;
            }
            given = self.ask_peer(patience, given.take()).await?;
            if given.is_none() {
                tracing::warn!(
                    "no peer gave this joining node a snapshot within {:?}: it applies the stream without the rows \
                     that predate capture, and asks again at its next start (a node with snapshots enabled must be \
                     running)",
                    join::PATIENCE
                );
                return Ok((prepared, false));
            }
        }
    }

    /// [`join::ask_peer`]; `given`: the snapshot a peer gave last time, which did not cover the streams here
    /// (a new one is wanted, asked for after a moment so the streams' view settles).
    async fn ask_peer(
        &self,
        patience: std::time::Instant,
        given: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        if given.is_some() {
            tokio::select! {
                _ = self.cancel.cancelled() => anyhow::bail!("stopped"),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        Ok(join::ask_peer(
            self.nats.client.clone(),
            self.cfg.clone(),
            patience,
            given,
            self.cancel.clone(),
        )
        .await)
    }

    /// [`join::decide`], asked again for a minute while the cluster's JetStream does not answer (a cluster
    /// starting for the first time elects its buckets' leaders meanwhile); then the start fails rather than
    /// guess.
    async fn join_decision(&self, replicas: usize) -> anyhow::Result<join::Decision> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // A request sent while the cluster forms (a bucket just created, its leader just elected) can go
        // unanswered for the client's whole request timeout: tries overlap, each with a short time of its own.
        let decided = tokio::select! {
            _ = self.cancel.cancelled() => anyhow::bail!("stopped"),
            d = crate::retry::ask(
                crate::retry::Asking::FORMING,
                deadline,
                || join::decide(&self.cfg, &self.nats.jetstream, replicas),
                |t| format!("no answer within {t:?}"),
                |e| tracing::debug!(error = %e, "join: the cluster does not answer yet"),
            ) => d,
        };
        decided.map_err(|e| {
            anyhow::anyhow!(
                "cannot tell whether this node joins a cluster that holds data (its database was never \
                 captured before): {e}"
            )
        })
    }

    /// A shard met a gap while running: when the latest snapshot covers it, stop the engine, restore, and
    /// start again; otherwise the shard stays stopped (its consumer reports the gap again later).
    async fn recover_gap(&mut self, gap: Gap) -> anyhow::Result<()> {
        if self
            .last_recovery
            .is_some_and(|t| t.elapsed() < crate::apply::consumer::GAP_RECHECK)
        {
            return Ok(());
        }
        self.last_recovery = Some(std::time::Instant::now());
        match comeback::usable_snapshot(&self.cfg, &self.nats.jetstream, std::slice::from_ref(&gap))
            .await
        {
            Ok(Some((_, m))) if self.failed_snapshot.as_deref() == Some(m.object.as_str()) => {
                return Ok(());
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the snapshot store");
                return Ok(());
            }
        }
        tracing::info!(
            shard = gap.shard,
            "stopping the engine to restore a snapshot"
        );
        self.stop_engine().await;
        let prepared = prepare(&self.cfg)?;
        self.start_engine(prepared).await
    }

    /// Cancel the engine's tasks and wait for them (NATS keeps running).
    async fn stop_engine(&mut self) {
        self.cancel.cancel();
        let tasks = &mut self.tasks;
        let stop = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(ENGINE_STOP_GRACE, stop).await.is_err() {
            tracing::warn!("engine tasks did not stop within {ENGINE_STOP_GRACE:?}");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        drop(self._watch.take());
        self.cancel = CancellationToken::new();
    }

    /// The node's counters and gauges.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Wait for SIGTERM, SIGINT, `sleep_timeout` without activity, or a shard stopped at a gap.
    pub async fn next_event(&mut self) -> Event {
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
        tokio::select! {
            _ = term.recv() => Event::Stop,
            _ = int.recv() => Event::Stop,
            _ = idle => Event::Stop,
            Some(gap) = gaps.recv() => Event::Gap(gap),
        }
    }

    /// Stop in the order the design says: the engine (its tasks finish their work and record their positions),
    /// then NATS (the client drains, the embedded server stops gracefully).
    pub async fn shutdown(mut self) {
        tracing::info!("stopping");
        self.stop_engine().await;
        self.nats.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Check the database, install capture, open the publisher's state: everything that needs no network.
fn prepare(cfg: &Config) -> anyhow::Result<Prepared> {
    prepare_with(cfg, false)
}

/// [`prepare`]; `check_records`: when `[ddl] enabled` is turned on for this database now, leave the records of
/// applied migrations node-local until [`enable_schema_changes`] has checked them against the cluster's.
fn prepare_with(cfg: &Config, check_records: bool) -> anyhow::Result<Prepared> {
    check_db(cfg)?;
    let mut conn = open_db(&cfg.db_path).context("cannot open the database")?;
    // A database captured for the first time may be joining a cluster that holds data (`join`).
    let first = !capture::installed(&conn).context("cannot read the database")?;
    if first && cfg.replicate {
        tokio::task::block_in_place(|| join::keep_pre_join(&conn, cfg))?;
    }
    let ddl_pending = check_records
        && cfg.ddl.enabled
        && !(capture::installed(&conn)? && capture::ddl::enabled(&conn)?);
    let mut exclude = cfg.exclude_tables.clone();
    if ddl_pending {
        exclude.extend(
            crate::config::MIGRATION_RECORDS
                .iter()
                .map(|p| p.to_string()),
        );
    }
    let capture =
        tokio::task::block_in_place(|| capture::install(&mut conn, &cfg.include_tables, &exclude))
            .context("cannot install change capture")?;
    if !ddl_pending {
        tokio::task::block_in_place(|| {
            capture::ddl::set_enabled(
                &conn,
                cfg.ddl.enabled,
                &cfg.include_tables,
                &cfg.exclude_tables,
            )
        })
        .context("cannot record whether schema changes replicate")?;
    }
    if first && cfg.replicate {
        capture::set_join_pending(&conn, true)
            .context("cannot record the database's join state")?;
    }
    tracing::info!(tables = capture.tables.len(), names = ?capture.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "change capture installed");
    let state = PublishState::open(&cfg.seq_map_path, cfg.node_id, capture.incarnation)?;
    Ok(Prepared {
        conn,
        capture,
        state,
        first,
        ddl_pending,
    })
}

/// `[ddl] enabled` turned on for this database: refused when this node's records of applied migrations differ
/// from those of a node where schema changes already replicate; otherwise schema changes replicate from now on
/// and the records are captured like any shared table (their rows published, so every node ends with the same).
async fn enable_schema_changes(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
    mut prepared: Prepared,
) -> (anyhow::Result<()>, Prepared) {
    if !prepared.ddl_pending {
        return (Ok(()), prepared);
    }
    if let Err(e) =
        crate::ops::schema::refuse_diverged_records(js, cfg.node_id, &prepared.conn).await
    {
        return (Err(e), prepared);
    }
    let enabled = tokio::task::block_in_place(|| {
        capture::ddl::set_enabled(
            &prepared.conn,
            true,
            &cfg.include_tables,
            &cfg.exclude_tables,
        )?;
        capture::install(&mut prepared.conn, &cfg.include_tables, &cfg.exclude_tables)
            .map_err(anyhow::Error::from)
    });
    match enabled {
        Ok(capture) => {
            tracing::info!("schema changes replicate from now on ([ddl] enabled)");
            prepared.capture = capture;
            prepared.ddl_pending = false;
            (Ok(()), prepared)
        }
        Err(e) => (
            Err(e.context("cannot turn on schema replication")),
            prepared,
        ),
    }
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
