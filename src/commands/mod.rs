//! Every mode of the binary, one function each: the node's run, and the one-shot commands. A command reaches
//! the cluster through the running node's NATS (or the node's server started for it), prints its answer on
//! stdout and nothing else (log lines below WARN only with `-v` or `logging.verbose`), and returns the exit
//! code: 0 done, 1 failed (the error at ERROR on stderr), and each command's own codes beside (`-verify`:
//! 1 some table differs, 2 not verified; `-wait-replicated` and `-schema-status-cluster`: 1 not yet).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{Cli, Mode};
use crate::config::Config;
use crate::nats::{ClusterFlags, Nats};
use crate::{db, node, ops};

/// `-version`: answered before any configuration is read.
pub fn version() -> ExitCode {
    println!(
        "HarmonyLite {} (nats-server {}, {}/{})",
        env!("CARGO_PKG_VERSION"),
        crate::nats::bundled_version(),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    ExitCode::SUCCESS
}

/// Run `mode` with its configuration.
pub fn run(mode: Mode, cfg: Config, cli: &Cli) -> ExitCode {
    let result = match mode {
        Mode::Version => Ok(version()),
        Mode::Run => runtime()
            .block_on(node::run(cfg, cli))
            .map(|()| ExitCode::SUCCESS),
        Mode::Cleanup => cleanup(&cfg),
        Mode::SchemaStatus => ops::schema::local_status(&cfg).map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Mode::SchemaStatusCluster => runtime().block_on(schema_status_cluster(&cfg, cli)),
        Mode::Status => runtime().block_on(status(&cfg, cli)),
        Mode::Verify => return runtime().block_on(verify(&cfg, cli)),
        Mode::WaitReplicated => runtime().block_on(wait_replicated(&cfg, cli)),
        Mode::RemoveNode(n) => runtime().block_on(remove_node(&cfg, cli, n)),
        Mode::SaveSnapshot => runtime().block_on(save_snapshot(&cfg, cli)),
        Mode::Changes => return runtime().block_on(changes(&cfg, cli)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Whether `mode` is a one-shot command (quiet by default) rather than a node's run.
pub fn is_command(mode: Mode) -> bool {
    !matches!(mode, Mode::Run | Mode::Version)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The answer was printed: exit 0, or `code` when `ok` is false.
fn exit(ok: bool, code: u8) -> anyhow::Result<ExitCode> {
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    })
}

async fn attach(cfg: &Config, cli: &Cli) -> anyhow::Result<Nats> {
    Nats::attach(cfg, &ClusterFlags::from_cli(cli))
        .await
        .context("cannot reach the cluster's NATS")
}

/// `-cleanup`: remove every trigger and table HarmonyLite created; the user's data stays.
fn cleanup(cfg: &Config) -> anyhow::Result<ExitCode> {
    let n = db::cleanup(cfg)?;
    println!(
        "Removed {n} HarmonyLite objects (triggers and tables) from {}; the data is kept.",
        cfg.db_path.display()
    );
    exit(true, 1)
}

/// `-schema-status-cluster`: every node's schema from the registry; 1 when the nodes' schemas differ.
async fn schema_status_cluster(cfg: &Config, cli: &Cli) -> anyhow::Result<ExitCode> {
    let nats = attach(cfg, cli).await?;
    let entries = tokio::time::timeout(
        Duration::from_secs(cfg.nats.ready_timeout_seconds.get()),
        ops::schema::read_entries(&nats.jetstream),
    )
    .await;
    nats.shutdown().await;
    let entries = entries
        .context("timed out reading the schema registry")?
        .context("cannot read the schema registry")?;
    let (text, consistent) = ops::schema::cluster_report(&entries);
    print!("{text}");
    exit(consistent, 1)
}

/// `-status` (`-json`): every node's status and lag; fails when the cluster's JetStream does not answer within
/// `nats.ready_timeout_seconds`.
async fn status(cfg: &Config, cli: &Cli) -> anyhow::Result<ExitCode> {
    let nats = attach(cfg, cli).await?;
    let within = Duration::from_secs(cfg.nats.ready_timeout_seconds.get());
    let report = ops::status::command(&nats.jetstream, cfg, within).await;
    nats.shutdown().await;
    let report = report?;
    if cli.json {
        print!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    exit(true, 1)
}

/// `-changes` (`-from`, `-tables`, `-follow`): the change feed as NDJSON on stdout; 1 when the feed is not
/// enabled, the cursor is older than what the feed holds, or the cluster cannot be read; 2 for a cursor that
/// is not one.
async fn changes(cfg: &Config, cli: &Cli) -> ExitCode {
    use crate::feed::read::{Reader, Start};
    use std::io::Write;
    let start = match cli.from.as_deref().map(str::parse::<Start>) {
        None => Start::Oldest,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            tracing::error!("-from: {e}");
            return ExitCode::from(2);
        }
    };
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!("{e}");
        ExitCode::from(1)
    };
    if !cfg.feed.enabled {
        return failed(&crate::feed::read::ReadError::NotEnabled);
    }
    let nats = match attach(cfg, cli).await {
        Ok(n) => n,
        Err(e) => return failed(&format!("{e:#}")),
    };
    let code = async {
        let mut reader =
            match Reader::open(&nats.jetstream, cfg, start, &cli.tables, cli.follow).await {
                Ok(r) => r,
                Err(e) => return failed(&e),
            };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            let next = tokio::select! {
                _ = &mut interrupted => break,
                n = reader.next() => n,
            };
            let line = match next {
                None => break,
                Some(Ok((line, _))) => line,
                Some(Err(e)) => return failed(&e),
            };
            let written = out
                .write_all(&line)
                .and_then(|()| out.write_all(b"\n"))
                // Following, what was read goes out before waiting for more.
                .and_then(|()| {
                    if cli.follow && !reader.has_buffered() {
                        out.flush()
                    } else {
                        Ok(())
                    }
                });
            if written.is_err() {
                // The reader of our output went away (a closed pipe): nothing more to say.
                return ExitCode::SUCCESS;
            }
        }
        let _ = out.flush();
        ExitCode::SUCCESS
    }
    .await;
    nats.shutdown().await;
    code
}

/// `-verify`: 0 identical, 1 some table differs, 2 not verified (a node did not answer, no common point, the
/// cluster unreachable).
async fn verify(cfg: &Config, cli: &Cli) -> ExitCode {
    let timeout = Duration::from_secs(cli.timeout.unwrap_or(30));
    match ops::verify::command::verify(cfg, cli, timeout).await {
        Ok(outcome) => {
            println!("{}", outcome.text());
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `-wait-replicated`: 0 once every change committed here before the call is applied everywhere; 1 on
/// timeout (naming the nodes behind).
async fn wait_replicated(cfg: &Config, cli: &Cli) -> anyhow::Result<ExitCode> {
    let timeout = cli
        .timeout
        .map_or(ops::wait::DEFAULT_TIMEOUT, Duration::from_secs);
    let outcome = ops::wait::command(cfg, &ClusterFlags::from_cli(cli), timeout).await?;
    print!("{}", outcome.text());
    exit(outcome.is_replicated(), 1)
}

/// `-remove-node N`: forget node N cluster-wide (see `node::membership`); prints what it did.
async fn remove_node(cfg: &Config, cli: &Cli, n: u64) -> anyhow::Result<ExitCode> {
    let nats = attach(cfg, cli).await?;
    let size = nats.cluster_size_hint();
    let replicas = size.clamp(1, 3);
    let result = node::membership::remove(&nats.jetstream, cfg, n, size, replicas, cli.force).await;
    nats.shutdown().await;
    let mut outcome = result?;
    outcome.peers_now = cli.cluster_peers.clone();
    print!("{}", outcome.text());
    exit(true, 1)
}

/// `-save-snapshot`: a snapshot of this node's database to the configured store. The running node is not
/// disturbed: the copy is one read transaction.
async fn save_snapshot(cfg: &Config, cli: &Cli) -> anyhow::Result<ExitCode> {
    if !cfg.snapshot.enabled {
        anyhow::bail!("snapshots are disabled in this configuration ([snapshot] enabled = false)");
    }
    db::check_db(cfg)?;
    let nats = attach(cfg, cli).await?;
    let replicas = nats.cluster_size_hint().clamp(1, 3);
    let result = node::save_snapshot(cfg, &nats.jetstream, replicas).await;
    nats.shutdown().await;
    let (m, store) = result?;
    println!(
        "Snapshot saved to {store}: {} ({} bytes, {} compressed), positions {:?}",
        m.object, m.database_bytes, m.compressed_bytes, m.positions
    );
    exit(true, 1)
}
