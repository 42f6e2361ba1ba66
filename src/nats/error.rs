//! Errors of the NATS subsystem: each names the file, address or peer at fault and what to do about it; and
//! [`KvError`], the bucket and key a key-value helper could not open, read or write.

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

/// A key-value bucket that could not be opened, read or written: the bucket (and key) and why.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket could not be opened, or created when missing.
    #[error("cannot open bucket {bucket}: {reason}")]
    Open { bucket: String, reason: String },

    #[error("cannot list the keys of bucket {bucket}: {reason}")]
    Keys { bucket: String, reason: String },

    #[error("cannot read {key} in bucket {bucket}: {reason}")]
    Read {
        bucket: String,
        key: String,
        reason: String,
    },

    #[error("cannot write {key} in bucket {bucket}: {reason}")]
    Write {
        bucket: String,
        key: String,
        reason: String,
    },
}

impl KvError {
    /// `bucket` could not be opened or created (`reason`: the source error).
    pub fn open(bucket: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Open {
            bucket: bucket.to_string(),
            reason: reason.to_string(),
        }
    }

    /// `bucket`'s keys could not be listed.
    pub fn keys(bucket: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Keys {
            bucket: bucket.to_string(),
            reason: reason.to_string(),
        }
    }

    /// `key` of `bucket` could not be read.
    pub fn read(bucket: &str, key: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Read {
            bucket: bucket.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// `key` of `bucket` could not be written.
    pub fn write(bucket: &str, key: &str, reason: impl std::fmt::Display) -> KvError {
        KvError::Write {
            bucket: bucket.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kv_error_names_its_bucket_and_key() {
        assert_eq!(
            KvError::open("harmonylite-removed", "timed out").to_string(),
            "cannot open bucket harmonylite-removed: timed out"
        );
        assert_eq!(
            KvError::keys("harmonylite-positions", "timed out").to_string(),
            "cannot list the keys of bucket harmonylite-positions: timed out"
        );
        assert_eq!(
            KvError::read("harmonylite-status", "node-2", "no answer within 5 s").to_string(),
            "cannot read node-2 in bucket harmonylite-status: no answer within 5 s"
        );
        assert_eq!(
            KvError::write("e-harmonylite", "snapshot-leader", "wrong last sequence").to_string(),
            "cannot write snapshot-leader in bucket e-harmonylite: wrong last sequence"
        );
    }
}
