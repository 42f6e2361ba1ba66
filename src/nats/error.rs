//! Errors of the NATS subsystem: each names the file, address or peer at fault and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong while preparing, starting or connecting to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "the bundled nats-server is corrupt (expected sha256 {expected}, got {actual}); rebuild harmonylite"
    )]
    BundleCorrupt { expected: String, actual: String },

    #[error("cannot extract the bundled nats-server to {path}: {source}")]
    Extract {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("HARMONYLITE_NATS_BIN={path} cannot be used: {reason}")]
    ExternalBinary { path: PathBuf, reason: String },

    #[error("nats.server_config: {file}:{line}: {message}")]
    ServerConfig {
        file: PathBuf,
        line: usize,
        message: String,
    },

    /// Settings that cannot work together (named in the message).
    #[error("{0}")]
    Settings(String),

    #[error("nats.seed_file {path}: {reason}")]
    Seed { path: PathBuf, reason: String },

    #[error("invalid {what} `{value}`: {reason}")]
    InvalidAddress {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot start nats-server {path}: {source} (if its directory is mounted noexec, set XDG_CACHE_HOME to \
         another directory or HARMONYLITE_NATS_BIN to a nats-server binary)"
    )]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("nats-server exited during start-up ({status}): {reason}\nits last output:\n{output}")]
    ServerExited {
        status: String,
        /// Its last error line (`[FTL]`/`[ERR]`, or any last line).
        reason: String,
        output: String,
    },

    #[error(
        "nats-server did not report its client port within {seconds} s; its last output:\n{output}"
    )]
    ServerStartTimeout { seconds: u64, output: String },

    #[error("cannot connect to NATS at {urls} after {attempts} attempt(s): {reason}")]
    Connect {
        urls: String,
        attempts: u32,
        reason: String,
    },

    #[error(
        "cannot connect to NATS at {urls}: {reason}; not retried, as it would fail the same way"
    )]
    Refused { urls: String, reason: String },

    #[error(
        "JetStream was not ready after {waited_seconds} s (nats.ready_timeout_seconds): last answer: {last_error}; \
         {cluster}"
    )]
    NotReady {
        waited_seconds: u64,
        last_error: String,
        cluster: String,
    },
}

impl NatsError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> NatsError {
        NatsError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
