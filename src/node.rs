//! A running node: start-up order, the state its parts share, and the shutdown tree.
//!
//! Start-up: check the database → install capture → start (or join) NATS and wait for JetStream → ensure the
//! streams → start the applier and one consumer per shard → start the publisher and the file watcher. Shutdown
//! (SIGTERM/SIGINT, or `sleep_timeout`): cancel the engine, let its tasks finish, then stop NATS.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use rusqlite::Connection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, consumer::ShardConsumer};
use crate::capture;
use crate::cli::Cli;
use crate::config::Config;
use crate::nats::{ClusterFlags, Nats};
use crate::pending::Pending;
use crate::publish::{Publisher, state::PublishState};
use crate::shared::{Shared, Stats, now_ms};

/// Open a connection to the user's database for our own use: WAL mode (needed so readers and the
/// application's writers do not block each other), a busy timeout, and `synchronous = NORMAL` (our applied
/// positions commit with the rows, so a lost tail is re-applied after a crash).
pub fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "database could not be switched to WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
    Ok(conn)
}

fn check_db(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.db_path.exists() {
        bail!(
            "database file {} does not exist; HarmonyLite replicates an existing database (create it first)",
            cfg.db_path.display()
        );
    }
    Ok(())
}

/// `-cleanup`: remove every trigger and table we created; user data stays.
pub fn cleanup(cfg: &Config) -> anyhow::Result<()> {
    check_db(cfg)?;
    let mut conn = open_db(&cfg.db_path)?;
    let n = capture::uninstall(&mut conn)?;
    tracing::info!(objects = n, db = %cfg.db_path.display(), "removed HarmonyLite triggers and tables");
    Ok(())
}

/// `-schema-status`: the local captured schema and its fingerprint (read-only).
pub fn schema_status(cfg: &Config) -> anyhow::Result<()> {
    check_db(cfg)?;
    let conn =
        Connection::open_with_flags(&cfg.db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut tables = Vec::new();
    for listed in capture::schema::user_tables(&conn)? {
        if capture::schema::selected(&listed.name, &cfg.include_tables, &cfg.exclude_tables) {
            let (columns, key) = capture::schema::describe(&conn, &listed)?;
            tables.push(capture::TableInfo::new(0, listed.name, columns, key));
        }
    }
    println!("Database: {}", cfg.db_path.display());
    println!(
        "Schema fingerprint: {:016x}",
        capture::schema::fingerprint(&tables)
    );
    for t in &tables {
        println!(
            "  {} ({} columns, key {:?})",
            t.name,
            t.columns.len(),
            t.key_names()
        );
    }
    Ok(())
}

/// Create (or check) one stream per shard.
async fn ensure_streams(
    js: &jetstream::Context,
    cfg: &Config,
    replicas: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    for shard in 1..=cfg.replication_log.shards.get() {
        let config = stream::Config {
            name: cfg.stream_name(shard),
            subjects: vec![cfg.subject_name(shard)],
            max_messages: cfg.replication_log.max_entries,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            num_replicas: replicas,
            allow_atomic_publish: true,
            ..Default::default()
        };
        let mut attempt = Duration::from_millis(500);
        loop {
            let r = async {
                match js.get_stream(&config.name).await {
                    Ok(mut s) => {
                        let info = s.info().await?.config.clone();
                        if cfg.replication_log.update_existing || !info.allow_atomic_publish {
                            js.update_stream(&config).await?;
                            tracing::info!(stream = %config.name, "stream configuration updated");
                        }
                        Ok::<_, anyhow::Error>(())
                    }
                    Err(_) => {
                        js.create_stream(config.clone()).await?;
                        tracing::info!(stream = %config.name, replicas, "stream created");
                        Ok(())
                    }
                }
            };
            // Nodes starting together create the same stream at once; a request caught in that race can go
            // unanswered, so each attempt is short and retried.
            let r = match tokio::time::timeout(attempt, r).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within {attempt:?}")),
            };
            attempt = (attempt * 2).min(Duration::from_secs(5));
            match r {
                Ok(()) => break,
                Err(e) if start.elapsed() < deadline => {
                    tracing::debug!(stream = %config.name, error = %e, "stream not ready yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create or open stream {}", config.name));
                }
            }
        }
    }
    Ok(())
}

/// Run a node until SIGTERM/SIGINT or `sleep_timeout`.
pub async fn run(cfg: Config, cli: &Cli) -> anyhow::Result<()> {
    check_db(&cfg)?;
    let mut wconn = open_db(&cfg.db_path).context("cannot open the database")?;
    let cap = tokio::task::block_in_place(|| {
        capture::install(&mut wconn, &cfg.include_tables, &cfg.exclude_tables, None)
    })
    .context("cannot install change capture")?;
    tracing::info!(tables = cap.tables.len(), names = ?cap.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "change capture installed");
    let state = PublishState::open(&cfg.seq_map_path, cfg.node_id, cap.incarnation)?;
    let published_upto = state.published_upto;

    let cfg_publish_and_replicate = cfg.publish && cfg.replicate;
    let flags = ClusterFlags {
        cluster_addr: cli.cluster_addr.clone(),
        cluster_peers: cli.cluster_peers.clone(),
        leaf_servers: cli.leaf_servers.clone(),
    };
    let nats = Nats::start(&cfg, &flags)
        .await
        .context("cannot start NATS")?;
    let replicas = cfg
        .replication_log
        .replicas
        .map(|r| r as usize)
        .unwrap_or_else(|| nats.cluster_size_hint().clamp(1, 3));
    ensure_streams(
        &nats.jetstream,
        &cfg,
        replicas,
        Duration::from_secs(cfg.nats.ready_timeout_seconds.get()),
    )
    .await?;

    let shared = Arc::new(Shared::new(
        cfg,
        cap,
        Pending::new(cfg_publish_and_replicate, published_upto),
    ));
    shared.stats.touch();
    let cfg = &shared.cfg;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if cfg.replicate {
        let wake = Arc::new(Notify::new());
        let mut receivers = Vec::new();
        let positions = capture::applied_positions(&wconn)?;
        for shard in 1..=cfg.replication_log.shards.get() {
            let (tx, rx) = mpsc::channel(256);
            receivers.push(rx);
            let stream = cfg.stream_name(shard);
            let next = positions.get(&stream).copied().unwrap_or(0) + 1;
            let c = ShardConsumer {
                js: nats.jetstream.clone(),
                stream,
                durable: cfg.server_name(),
                shard,
                next,
                tx,
                wake: wake.clone(),
            };
            tasks.spawn(c.run(cancel.clone()));
        }
        let applier = Applier::new(shared.clone(), wconn, receivers, wake)?;
        tasks.spawn(applier.run(cancel.clone()));
    } else {
        drop(wconn);
    }

    let wake = Arc::new(Notify::new());
    let pconn = open_db(&cfg.db_path)?;
    let publisher = Publisher::new(
        shared.clone(),
        pconn,
        state,
        nats.client.clone(),
        nats.jetstream.clone(),
        wake.clone(),
    )?;
    tasks.spawn(publisher.run(cancel.clone()));
    let _watch = capture::watch::start(
        &cfg.db_path,
        cfg.polling_interval_ms,
        wake.clone(),
        cancel.clone(),
    );
    wake.notify_one(); // publish what was committed while we were down
    // Give memory freed after bursts back to the system, so the resident size follows the load.
    let trim_cancel = cancel.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = trim_cancel.cancelled() => return,
                _ = tick.tick() => crate::shared::release_memory(),
            }
        }
    });
    tracing::info!(
        node_id = cfg.node_id,
        shards = cfg.replication_log.shards.get(),
        replicas,
        publish = cfg.publish,
        replicate = cfg.replicate,
        "node running"
    );

    wait_for_stop(cfg, &shared.stats).await;
    tracing::info!("stopping");
    cancel.cancel();
    let stop = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .is_err()
    {
        tracing::warn!("engine tasks did not stop within 10 s");
    }
    nats.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop(cfg: &Config, stats: &Stats) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let sleep_timeout = cfg.sleep_timeout_ms;
    let idle = async {
        if sleep_timeout == 0 {
            return std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(sleep_timeout.clamp(100, 1000))).await;
            let idle_for = now_ms().saturating_sub(stats.last_activity_ms.load(Ordering::Relaxed));
            if idle_for >= sleep_timeout {
                tracing::info!(idle_ms = idle_for, "no activity for sleep_timeout; exiting");
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = idle => {}
    }
}
