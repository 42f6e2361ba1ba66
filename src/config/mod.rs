//! HarmonyLite configuration: the TOML file keys of the original (same names, same defaults, same meaning),
//! the keys we add, validation with precise errors, and the merge of command-line overrides.
//!
//! Everything else in the crate reads settings from [`Config`]; nothing else parses TOML.
//!
//! This module owns loading: it reads the file, has [`compat`] normalise the table the way the original's Go
//! decoder reads it, deserialises it into the types of [`types`] (through the helpers of `de`, which give
//! type errors their wording), turns a failure into a [`ConfigError`] naming the dotted key and the value as
//! written, reports unknown keys, applies [`Overrides`] and runs [`validate`](validate::validate).

mod compat;
mod de;
mod types;
pub(crate) use types::redact_url;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;
use toml::{Table, Value};

pub use types::{
    Config, ConflictsConfig, DdlConfig, HealthCheckConfig, LogFormat, LoggingConfig,
    MIGRATION_RECORDS, NatsConfig, PrometheusConfig, ReplicationLogConfig, SnapshotConfig,
    SnapshotNatsConfig, SnapshotS3Config, SnapshotSftpConfig, SnapshotStore, SnapshotWebdavConfig,
};

/// Errors from loading or validating the configuration. Each names the key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {value} ({reason})")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Command-line values that override or complete the file (the flags of the original).
#[derive(Clone, Default, PartialEq)]
pub struct Overrides {
    pub node_id: Option<u64>,
    /// `HARMONYLITE_CLUSTER_SECRET`: replaces `nats.cluster_secret` (so the secret need not sit in a file).
    pub cluster_secret: Option<String>,
}

/// Room kept between a message's body and the server's `max_payload`, for headers and encoding.
pub const HEADROOM: u64 = 16 * 1024;

/// The environment variable that replaces `nats.cluster_secret`.
/// The path on which the health server answers write confirmation (`-wait-replicated` over HTTP); the health
/// paths may not take it.
pub const WAIT_REPLICATED_ROUTE: &str = "/wait-replicated";

/// The health server's fixed paths, which `path` and `ready_path` cannot take: write confirmation, the change
/// feed (`/changes`) and the live page (`/`).
pub const RESERVED_ROUTES: &[&str] = &[WAIT_REPLICATED_ROUTE, "/changes", "/"];

pub const CLUSTER_SECRET_ENV: &str = "HARMONYLITE_CLUSTER_SECRET";

impl Overrides {
    /// `-node-id` as given, and the cluster secret from the environment when it is set and not empty.
    pub fn from_env(node_id: Option<u64>) -> Overrides {
        Overrides {
            node_id,
            cluster_secret: std::env::var(CLUSTER_SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("node_id", &self.node_id)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Config {
    /// Directory of the database file (absolute): the original's `DataRootDir`.
    pub fn data_root_dir(&self) -> PathBuf {
        let abs = if self.db_path.is_absolute() {
            self.db_path.clone()
        } else {
            std::env::current_dir()
                .unwrap_or_default()
                .join(&self.db_path)
        };
        abs.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Name of the stream for shard `shard` (1-based): `<stream_prefix>[-c]-<shard>`.
    pub fn stream_name(&self, shard: u32) -> String {
        if self.replication_log.compress {
            format!("{}-c-{}", self.nats.stream_prefix, shard)
        } else {
            format!("{}-{}", self.nats.stream_prefix, shard)
        }
    }

    /// Subject of shard `shard` (1-based): `<subject_prefix>-<shard>`.
    pub fn subject_name(&self, shard: u32) -> String {
        format!("{}-{}", self.nats.subject_prefix, shard)
    }

    /// Name of the embedded server: `harmonylite-node-<id>`.
    pub fn server_name(&self) -> String {
        format!("harmonylite-node-{}", self.node_id)
    }
}

/// Loads the configuration file at `path` (all defaults when `None`), applies `overrides`, validates
/// everything, and returns the configuration with a list of warnings (unknown keys, capped values).
///
/// Unlike the original, a path that cannot be read is an error rather than a silent fall-back to defaults.
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
) -> Result<(Config, Vec<String>), ConfigError> {
    let table = match path {
        None => Table::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            text.parse::<Table>().map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?
        }
    };
    from_table(table, overrides)
}

/// The default `node_id`: FNV-1 64 of the machine id (`/var/lib/dbus/machine-id`, then `/etc/machine-id`,
/// trimmed, the order of the original's machine-id library); when neither is readable, the hash of 16 random
/// bytes. Never 0.
pub fn default_node_id() -> u64 {
    let machine_id = ["/var/lib/dbus/machine-id", "/etc/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty());
    let hash = match machine_id {
        Some(id) => crate::ids::fnv1_64(id.as_bytes()),
        None => crate::ids::fnv1_64(&crate::ids::random_bytes()),
    };
    if hash == 0 { 1 } else { hash }
}

fn invalid(
    key: impl Into<String>,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// A string rendered as it would be written in TOML (quoted and escaped).
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn from_table(table: Table, overrides: &Overrides) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let input = compat::normalize(table, &mut warnings);

    let mut ignored = Vec::new();
    let deserialized = {
        let mut on_ignored =
            |path: serde_ignored::Path<'_>| ignored.push(compat::KeyPath::of_ignored(&path));
        let de =
            serde_ignored::Deserializer::new(Value::Table(input.table.clone()), &mut on_ignored);
        serde_path_to_error::deserialize::<_, Config>(de)
    };
    let mut config = deserialized.map_err(|e| type_error(&input, &e))?;
    warnings.extend(input.unknown_key_warnings(&ignored));

    config.node_id = match (overrides.node_id, config.node_id) {
        (Some(0), _) => return Err(invalid("-node-id", "0", "must be non-zero")),
        (Some(id), _) => id,
        // The file has no `node_id` (a 0 in the file is refused while deserialising).
        (None, 0) => default_node_id(),
        (None, id) => id,
    };
    if let Some(secret) = &overrides.cluster_secret {
        config.nats.cluster_secret = secret.clone();
    }
    validate::validate(&config)?;
    if !config.ddl.enabled {
        // Migrations run node by node: each node's records of them stay its own.
        config
            .exclude_tables
            .extend(MIGRATION_RECORDS.iter().map(|p| p.to_string()));
    }
    if config.seq_map_path.as_os_str().is_empty() {
        config.seq_map_path = config.data_root_dir().join("seq-map.cbor");
    }
    Ok((config, warnings))
}

/// A deserialisation failure as [`ConfigError::Invalid`]: the dotted key from the error's path, the value as
/// written from the normalised table, and the helper's message (see `de`) as the reason.
fn type_error(
    input: &compat::Normalized,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let mut path = compat::KeyPath::default();
    for segment in e.path() {
        match segment {
            Segment::Map { key } => path.keys.push(key.clone()),
            Segment::Seq { index } => path.index = Some(*index),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    invalid(path.dotted(), input.render(&path), e.inner().message())
}
