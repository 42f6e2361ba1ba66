//! The `harmonylite` binary: parse flags, load the configuration, set up logging, run the mode (a node or one
//! command, see `commands`). Exit codes: 0 success, 1 runtime failure, 2 bad flags or configuration; `-verify`
//! has its own (0 identical, 1 some table differs, 2 not verified).

use std::process::ExitCode;

use harmonylite::cli::{self, Mode};
use harmonylite::commands;
use harmonylite::config::{self, Overrides};

fn main() -> ExitCode {
    harmonylite::memory::limit_arenas();
    let cli = match cli::parse_from(std::env::args()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.mode {
        Mode::Version => commands::version(),
        mode => {
            let (cfg, warnings) =
                match config::load(cli.config.as_deref(), &Overrides::from_env(cli.node_id)) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("harmonylite: {e}");
                        return ExitCode::from(2);
                    }
                };
            let verbose = cli.verbose || cfg.logging.verbose;
            harmonylite::logging::init(
                &cfg.logging,
                cfg.node_id,
                verbose,
                commands::is_command(mode),
            );
            for w in warnings {
                tracing::warn!("{w}");
            }
            if let Some(addr) = &cli.pprof {
                tracing::warn!(
                    addr,
                    "-pprof is accepted but this version serves no profiling endpoint; ignored"
                );
            }
            commands::run(mode, cfg, &cli)
        }
    }
}
