//! The `harmonylite` binary: parse flags, load the configuration, set up logging, run, map errors to exit
//! codes (0 success, 1 runtime failure, 2 bad flags or configuration). `-verify` has its own: 0 identical,
//! 1 some table differs, 2 not verified (a node did not answer, no common point, the cluster unreachable).

use std::process::ExitCode;

use harmonylite::config::{self, Overrides};
use harmonylite::{cli, nats, node, ops};

fn main() -> ExitCode {
    harmonylite::memory::limit_arenas();
    let cli = match cli::parse_from(std::env::args()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if cli.version {
        println!(
            "HarmonyLite {} (nats-server {}, {}/{})",
            env!("CARGO_PKG_VERSION"),
            nats::bundled_version(),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        return ExitCode::SUCCESS;
    }
    let (cfg, warnings) =
        match config::load(cli.config.as_deref(), &Overrides::from_env(cli.node_id)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("harmonylite: {e}");
                return ExitCode::from(2);
            }
        };
    harmonylite::logging::init(&cfg.logging, cfg.node_id);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(addr) = &cli.pprof {
        tracing::warn!(
            addr,
            "-pprof is accepted but this version serves no profiling endpoint; ignored"
        );
    }

    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let result = if cli.cleanup {
        node::cleanup(&cfg)
    } else if cli.schema_status {
        ops::schema::local_status(&cfg).map(|text| print!("{text}"))
    } else if cli.schema_status_cluster {
        match rt().block_on(node::schema_status_cluster(&cfg, &cli)) {
            Ok((text, consistent)) => {
                print!("{text}");
                if !consistent {
                    return ExitCode::from(1);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    } else if cli.status {
        rt().block_on(node::cluster_status(&cfg, &cli))
            .map(|report| {
                if cli.json {
                    print!("{}", report.json());
                } else {
                    print!("{}", report.text());
                }
            })
    } else if cli.verify {
        let timeout = std::time::Duration::from_secs(cli.timeout.unwrap_or(30));
        return match rt().block_on(ops::verify::command::verify(&cfg, &cli, timeout)) {
            Ok(outcome) => {
                println!("{}", outcome.text());
                ExitCode::from(outcome.exit_code())
            }
            Err(e) => {
                // Not verified: the cluster could not be asked.
                tracing::error!("{e}");
                ExitCode::from(2)
            }
        };
    } else if cli.wait_replicated {
        let timeout = cli.timeout.map_or(
            ops::replicated::DEFAULT_TIMEOUT,
            std::time::Duration::from_secs,
        );
        let flags = nats::ClusterFlags::from_cli(&cli);
        match rt().block_on(ops::replicated::command(&cfg, &flags, timeout)) {
            Ok(outcome) => {
                print!("{}", outcome.text());
                if !outcome.is_replicated() {
                    return ExitCode::from(1);
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    } else if let Some(n) = cli.remove_node {
        rt().block_on(node::remove_node(&cfg, &cli, n))
    } else if cli.save_snapshot {
        rt().block_on(node::save_snapshot(&cfg, &cli))
    } else {
        rt().block_on(node::run(cfg, &cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
