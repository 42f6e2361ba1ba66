//! HarmonyLite configuration: the TOML file keys of the original (same names, same defaults, same meaning),
//! the keys we add, validation with precise errors, and the merge of command-line overrides.
//!
//! Everything else in the crate reads settings from [`Config`]; nothing else parses TOML.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

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

/// The whole configuration, after defaults, command-line overrides and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `db_path`: the SQLite database to replicate.
    pub db_path: PathBuf,
    /// `node_id`: this node's identity (default: FNV-1 64 of the machine id).
    pub node_id: u64,
    /// `seq_map_path`: the node-local state file (publisher progress).
    pub seq_map_path: PathBuf,
    /// `publish`: send local changes.
    pub publish: bool,
    /// `replicate`: apply changes from the stream.
    pub replicate: bool,
    /// `scan_max_changes`: most row changes carried by one message.
    pub scan_max_changes: u32,
    /// `cleanup_interval` (ms): published change-log rows are removed after this long. Must be > 0.
    pub cleanup_interval_ms: u64,
    /// `sleep_timeout` (ms, 0 = off): exit after this long without local or remote activity.
    pub sleep_timeout_ms: u64,
    /// `polling_interval` (ms, 0 = off): extra periodic scan besides file events.
    pub polling_interval_ms: u64,
    /// `include_tables`: when non-empty, only these tables are captured and applied.
    pub include_tables: Vec<String>,
    /// `exclude_tables`: these tables are never captured or applied.
    pub exclude_tables: Vec<String>,
    pub replication_log: ReplicationLogConfig,
    pub snapshot: SnapshotConfig,
    pub nats: NatsConfig,
    pub logging: LoggingConfig,
    pub prometheus: PrometheusConfig,
    pub health_check: HealthCheckConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationLogConfig {
    /// `shards` (>= 1): number of subjects/streams.
    pub shards: u32,
    /// `max_entries`: JetStream MaxMsgs per stream.
    pub max_entries: i64,
    /// `replicas`: stream replicas; `None` when the key is absent (then min(3, cluster size)).
    pub replicas: Option<u32>,
    /// `compress`: zstd payloads and the `-c` stream name infix.
    pub compress: bool,
    /// `update_existing`: update an existing stream whose config differs.
    pub update_existing: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// `store`: one of nats, s3, webdav, sftp.
    pub store: SnapshotStore,
    /// `interval` (ms, 0 = off).
    pub interval_ms: u64,
    /// `leader_ttl` (ms; 0 in the file means 30000).
    pub leader_ttl_ms: u64,
    pub nats: SnapshotNatsConfig,
    pub s3: SnapshotS3Config,
    pub webdav: SnapshotWebdavConfig,
    pub sftp: SnapshotSftpConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStore {
    Nats,
    S3,
    Webdav,
    Sftp,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotNatsConfig {
    pub replicas: u32,
    /// Empty means `<stream_prefix>-snapshot-store`.
    pub bucket: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotS3Config {
    pub endpoint: String,
    pub path: String,
    pub bucket: String,
    pub use_ssl: bool,
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotWebdavConfig {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotSftpConfig {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// `urls`: external servers; empty means the embedded server is spawned.
    pub urls: Vec<String>,
    pub subject_prefix: String,
    pub stream_prefix: String,
    /// `server_config`: nats-server config file merged into the embedded server's (the user's file wins).
    pub server_config: Option<PathBuf>,
    /// `bind_address`: embedded server client listen address (`host:port`, port -1 = random).
    pub bind_address: String,
    pub seed_file: Option<PathBuf>,
    pub user_name: String,
    pub user_password: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub connect_retries: u32,
    pub reconnect_wait_seconds: u64,
    /// `sync_always` (ours, default true): embedded JetStream fsyncs before acknowledging.
    pub sync_always: bool,
    /// `ready_timeout_seconds` (ours, default 60): how long start-up waits for JetStream and a meta leader.
    pub ready_timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    pub verbose: bool,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusConfig {
    pub enable: bool,
    pub bind: String,
    pub namespace: String,
    pub subsystem: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub enable: bool,
    pub bind: String,
    pub path: String,
    pub detailed: bool,
}

/// Command-line values that override or complete the file (the flags of the original).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub node_id: Option<u64>,
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

/// Largest value accepted by the keys that are `uint32` in the original.
const U32_MAX: u64 = u32::MAX as u64;
/// JetStream refuses more than five replicas.
const MAX_REPLICAS: u32 = 5;

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
        Some(id) => crate::wire::fnv1_64(id.as_bytes()),
        None => crate::wire::fnv1_64(&random_bytes()),
    };
    if hash == 0 { 1 } else { hash }
}

/// 16 random bytes from the OS (with a time- and process-based fallback should the OS refuse).
pub fn random_bytes() -> [u8; 16] {
    let mut buf = [0u8; 16];
    if getrandom::fill(&mut buf).is_err() {
        // Fall back on the randomly keyed std hasher, mixed with the time and the process id.
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    buf
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

/// One table of the file. Known keys are taken out as they are read; what is left over is reported as unknown.
struct Section {
    prefix: String,
    table: Table,
    known: Vec<&'static str>,
}

impl Section {
    fn new(prefix: &str, table: Table) -> Self {
        Section {
            prefix: prefix.to_string(),
            table,
            known: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.prefix, key)
        }
    }

    /// Removes `key`; like the original's TOML decoder, falls back on a case-insensitive match.
    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.known.push(key);
        if let Some(v) = self.table.remove(key) {
            return Some(v);
        }
        let alt = self
            .table
            .keys()
            .find(|k| k.eq_ignore_ascii_case(key))
            .cloned()?;
        self.table.remove(&alt)
    }

    fn type_error(&self, key: &str, value: &Value, expected: &str) -> ConfigError {
        invalid(
            self.path(key),
            value.to_string(),
            format!("expected {expected}"),
        )
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(b),
            Some(v) => Err(self.type_error(key, &v, "true or false")),
        }
    }

    fn opt_string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, &v, "a string")),
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// A path; absent or `""` give `None`. Relative paths are kept as written.
    fn opt_path(&mut self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .opt_string(key)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }

    fn opt_int(&mut self, key: &'static str, expected: &str) -> Result<Option<i64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(i)),
            Some(v) => Err(self.type_error(key, &v, expected)),
        }
    }

    /// An unsigned integer in `min..=max`.
    fn uint(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let expected = match min {
            0 => "a non-negative integer".to_string(),
            1 => "a positive integer".to_string(),
            m => format!("an integer of at least {m}"),
        };
        let Some(i) = self.opt_int(key, &expected)? else {
            return Ok(default);
        };
        match u64::try_from(i) {
            Ok(u) if u < min => Err(invalid(
                self.path(key),
                i.to_string(),
                format!("expected {expected}"),
            )),
            Ok(u) if u > max => Err(invalid(
                self.path(key),
                i.to_string(),
                format!("expected an integer no greater than {max}"),
            )),
            Ok(u) => Ok(u),
            Err(_) => Err(invalid(
                self.path(key),
                i.to_string(),
                format!("expected {expected}"),
            )),
        }
    }

    fn uint32(&mut self, key: &'static str, default: u32, min: u64) -> Result<u32, ConfigError> {
        // The range check guarantees the conversion.
        Ok(self.uint(key, u64::from(default), min, U32_MAX)? as u32)
    }

    /// An array of non-empty strings.
    fn strings(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        const EXPECTED: &str = "an array of strings";
        let items = match self.take(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(v) => return Err(self.type_error(key, &v, EXPECTED)),
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) if s.trim().is_empty() => {
                    return Err(invalid(
                        self.path(key),
                        quoted(&s),
                        "entries must not be empty",
                    ));
                }
                Value::String(s) => out.push(s),
                v => return Err(self.type_error(key, &v, EXPECTED)),
            }
        }
        Ok(out)
    }

    /// A sub-table; absent gives an empty one.
    fn section(&mut self, key: &'static str) -> Result<Section, ConfigError> {
        let path = self.path(key);
        match self.take(key) {
            None => Ok(Section::new(&path, Table::new())),
            Some(Value::Table(t)) => Ok(Section::new(&path, t)),
            Some(v) => Err(self.type_error(key, &v, "a table")),
        }
    }

    /// Reports every key that was not read.
    fn finish(self, warnings: &mut Vec<String>) {
        for key in self.table.keys() {
            let full = self.path(key);
            match self.known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                Some(known) => warnings.push(format!(
                    "configuration key \"{full}\" repeats \"{}\" in another letter case (ignored)",
                    self.path(known)
                )),
                None => warnings.push(format!("unknown configuration key \"{full}\" (ignored)")),
            }
        }
    }
}

fn from_table(table: Table, overrides: &Overrides) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let mut root = Section::new("", table);
    let tmp = std::env::temp_dir();

    let db_path = match root.opt_string("db_path")? {
        None => tmp.join("harmonylite.db"),
        Some(s) if s.trim().is_empty() => {
            return Err(invalid("db_path", quoted(&s), "must not be empty"));
        }
        Some(s) => PathBuf::from(s),
    };

    let file_node_id = match root.opt_int("node_id", "a positive integer")? {
        None => None,
        Some(0) => return Err(invalid("node_id", "0", "must be non-zero")),
        Some(i) if i < 0 => {
            return Err(invalid(
                "node_id",
                i.to_string(),
                "expected a positive integer",
            ));
        }
        Some(i) => Some(i as u64),
    };
    let node_id = match (overrides.node_id, file_node_id) {
        (Some(0), _) => return Err(invalid("-node-id", "0", "must be non-zero")),
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => default_node_id(),
    };

    let seq_map_path = root.opt_string("seq_map_path")?;
    let publish = root.bool("publish", true)?;
    let replicate = root.bool("replicate", true)?;
    let scan_max_changes = root.uint32("scan_max_changes", 512, 1)?;
    let cleanup_interval_ms = root.uint("cleanup_interval", 5000, 1, U32_MAX)?;
    let sleep_timeout_ms = root.uint("sleep_timeout", 0, 0, U32_MAX)?;
    let polling_interval_ms = root.uint("polling_interval", 0, 0, U32_MAX)?;
    let include_tables = root.strings("include_tables")?;
    let exclude_tables = root.strings("exclude_tables")?;
    if let Some(t) = exclude_tables
        .iter()
        .find(|t| include_tables.iter().any(|i| i.eq_ignore_ascii_case(t)))
    {
        return Err(invalid(
            "exclude_tables",
            quoted(t),
            "table is also listed in include_tables",
        ));
    }

    let replication_log = read_replication_log(root.section("replication_log")?, &mut warnings)?;
    let snapshot = read_snapshot(root.section("snapshot")?, &mut warnings)?;
    let nats = read_nats(root.section("nats")?, &mut warnings)?;
    let logging = read_logging(root.section("logging")?, &mut warnings)?;
    let prometheus = read_prometheus(root.section("prometheus")?, &mut warnings)?;
    let health_check = read_health_check(root.section("health_check")?, &mut warnings)?;

    // Unknown top-level keys are reported after those of the sections.
    root.finish(&mut warnings);

    let mut config = Config {
        db_path,
        node_id,
        seq_map_path: PathBuf::new(),
        publish,
        replicate,
        scan_max_changes,
        cleanup_interval_ms,
        sleep_timeout_ms,
        polling_interval_ms,
        include_tables,
        exclude_tables,
        replication_log,
        snapshot,
        nats,
        logging,
        prometheus,
        health_check,
    };
    config.seq_map_path = match seq_map_path {
        None => tmp.join("seq-map.cbor"),
        Some(s) if s.is_empty() => config.data_root_dir().join("seq-map.cbor"),
        Some(s) => PathBuf::from(s),
    };
    Ok((config, warnings))
}

fn read_replication_log(
    mut s: Section,
    warnings: &mut Vec<String>,
) -> Result<ReplicationLogConfig, ConfigError> {
    let shards = s.uint32("shards", 1, 1)?;
    let max_entries = match s.opt_int("max_entries", "-1 (unlimited) or a positive integer")? {
        None => 1024,
        Some(v) if v == -1 || v >= 1 => v,
        Some(v) => {
            return Err(invalid(
                s.path("max_entries"),
                v.to_string(),
                "expected -1 (unlimited) or a positive integer",
            ));
        }
    };
    let replicas = match s.opt_int("replicas", "an integer")? {
        None => None,
        Some(v) if v < 1 => Some((shards / 2 + 1).min(MAX_REPLICAS)),
        Some(v) if v > i64::from(MAX_REPLICAS) => {
            warnings.push(format!(
                "{} = {v} is more than JetStream allows; using {MAX_REPLICAS}",
                s.path("replicas")
            ));
            Some(MAX_REPLICAS)
        }
        Some(v) => Some(v as u32),
    };
    let compress = s.bool("compress", true)?;
    let update_existing = s.bool("update_existing", false)?;
    s.finish(warnings);
    Ok(ReplicationLogConfig {
        shards,
        max_entries,
        replicas,
        compress,
        update_existing,
    })
}

fn read_snapshot(
    mut s: Section,
    warnings: &mut Vec<String>,
) -> Result<SnapshotConfig, ConfigError> {
    let enabled = s.bool("enabled", true)?;
    let store = match s.opt_string("store")?.as_deref() {
        None | Some("nats") => SnapshotStore::Nats,
        Some("s3") => SnapshotStore::S3,
        Some("webdav") => SnapshotStore::Webdav,
        Some("sftp") => SnapshotStore::Sftp,
        Some(other) => {
            return Err(invalid(
                s.path("store"),
                quoted(other),
                "expected one of \"nats\", \"s3\", \"webdav\", \"sftp\"",
            ));
        }
    };
    let interval_ms = s.uint("interval", 0, 0, U32_MAX)?;
    let leader_ttl_ms = match s.uint("leader_ttl", 0, 0, U32_MAX)? {
        0 => 30_000,
        ttl => ttl,
    };

    let mut n = s.section("nats")?;
    let nats = SnapshotNatsConfig {
        // JetStream treats 0 replicas as 1.
        replicas: (n.uint("replicas", 1, 0, u64::from(MAX_REPLICAS))? as u32).max(1),
        bucket: n.string("bucket", "")?,
    };
    n.finish(warnings);

    let mut s3s = s.section("s3")?;
    let s3 = SnapshotS3Config {
        endpoint: s3s.string("endpoint", "")?,
        path: s3s.string("path", "")?,
        bucket: s3s.string("bucket", "")?,
        use_ssl: s3s.bool("use_ssl", false)?,
        access_key: s3s.string("access_key", "")?,
        secret: s3s.string("secret", "")?,
        session_token: s3s.string("session_token", "")?,
    };
    s3s.finish(warnings);

    let mut w = s.section("webdav")?;
    let webdav = SnapshotWebdavConfig {
        url: w.string("url", "")?,
    };
    w.finish(warnings);

    let mut f = s.section("sftp")?;
    let sftp = SnapshotSftpConfig {
        url: f.string("url", "")?,
    };
    f.finish(warnings);

    s.finish(warnings);
    Ok(SnapshotConfig {
        enabled,
        store,
        interval_ms,
        leader_ttl_ms,
        nats,
        s3,
        webdav,
        sftp,
    })
}

fn read_nats(mut s: Section, warnings: &mut Vec<String>) -> Result<NatsConfig, ConfigError> {
    let mut urls = Vec::new();
    // The original joins the entries into one comma-separated connect string, so an entry may hold several URLs.
    for entry in s.strings("urls")? {
        for url in entry.split(',').map(str::trim) {
            check_nats_url(url).map_err(|reason| invalid(s.path("urls"), quoted(url), reason))?;
            urls.push(url.to_string());
        }
    }
    let subject_prefix = s.string("subject_prefix", "harmonylite-change-log")?;
    check_subject_prefix(&subject_prefix)
        .map_err(|r| invalid(s.path("subject_prefix"), quoted(&subject_prefix), r))?;
    let stream_prefix = s.string("stream_prefix", "harmonylite-changes")?;
    check_stream_prefix(&stream_prefix)
        .map_err(|r| invalid(s.path("stream_prefix"), quoted(&stream_prefix), r))?;
    let server_config = s.opt_path("server_config")?;
    let bind_address = s.string("bind_address", ":-1")?;
    check_host_port(&bind_address, true)
        .map_err(|r| invalid(s.path("bind_address"), quoted(&bind_address), r))?;
    let seed_file = s.opt_path("seed_file")?;
    let user_name = s.string("user_name", "")?;
    let user_password = s.string("user_password", "")?;
    let ca_file = s.opt_path("ca_file")?;
    let cert_file = s.opt_path("cert_file")?;
    let key_file = s.opt_path("key_file")?;
    let connect_retries = s.uint32("connect_retries", 5, 0)?;
    let reconnect_wait_seconds = s.uint("reconnect_wait_seconds", 2, 0, U32_MAX)?;
    let sync_always = s.bool("sync_always", true)?;
    let ready_timeout_seconds = s.uint("ready_timeout_seconds", 60, 1, U32_MAX)?;
    s.finish(warnings);
    Ok(NatsConfig {
        urls,
        subject_prefix,
        stream_prefix,
        server_config,
        bind_address,
        seed_file,
        user_name,
        user_password,
        ca_file,
        cert_file,
        key_file,
        connect_retries,
        reconnect_wait_seconds,
        sync_always,
        ready_timeout_seconds,
    })
}

fn read_logging(mut s: Section, warnings: &mut Vec<String>) -> Result<LoggingConfig, ConfigError> {
    let verbose = s.bool("verbose", false)?;
    let format = match s.opt_string("format")?.as_deref() {
        None | Some("console") => LogFormat::Console,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                s.path("format"),
                quoted(other),
                "expected \"console\" or \"json\"",
            ));
        }
    };
    s.finish(warnings);
    Ok(LoggingConfig { verbose, format })
}

fn read_prometheus(
    mut s: Section,
    warnings: &mut Vec<String>,
) -> Result<PrometheusConfig, ConfigError> {
    let enable = s.bool("enable", false)?;
    let bind = s.string("bind", ":3010")?;
    check_host_port(&bind, false).map_err(|r| invalid(s.path("bind"), quoted(&bind), r))?;
    let namespace = s.string("namespace", "harmonylite")?;
    let subsystem = s.string("subsystem", "")?;
    if enable {
        // Metric names are `<namespace>_<subsystem>_<name>` and must match [a-zA-Z_:][a-zA-Z0-9_:]*.
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if !namespace.chars().all(name_char) || namespace.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(invalid(
                s.path("namespace"),
                quoted(&namespace),
                "expected letters, digits, '_' or ':', not starting with a digit",
            ));
        }
        if !subsystem.chars().all(name_char)
            || (namespace.is_empty() && subsystem.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(invalid(
                s.path("subsystem"),
                quoted(&subsystem),
                "expected letters, digits, '_' or ':'",
            ));
        }
    }
    s.finish(warnings);
    Ok(PrometheusConfig {
        enable,
        bind,
        namespace,
        subsystem,
    })
}

fn read_health_check(
    mut s: Section,
    warnings: &mut Vec<String>,
) -> Result<HealthCheckConfig, ConfigError> {
    let enable = s.bool("enable", false)?;
    let bind = s.string("bind", "0.0.0.0:8090")?;
    check_host_port(&bind, false).map_err(|r| invalid(s.path("bind"), quoted(&bind), r))?;
    let path = s.string("path", "/health")?;
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(invalid(
            s.path("path"),
            quoted(&path),
            "expected an HTTP path starting with \"/\"",
        ));
    }
    let detailed = s.bool("detailed", true)?;
    s.finish(warnings);
    Ok(HealthCheckConfig {
        enable,
        bind,
        path,
        detailed,
    })
}

/// Checks a host name or an IPv4 address (not empty), or a bracketed IPv6 address.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("unbalanced '[' in the host")?;
        // A zone (`%eth0`) is allowed after a link-local address.
        let addr = inner.split_once('%').map_or(inner, |(a, _)| a);
        return addr
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{inner:?} is not an IPv6 address"));
    }
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name or IP address"))
    }
}

/// Checks `host:port` or `:port`; port 0-65535, or -1 (random) when `allow_random`.
fn check_host_port(addr: &str, allow_random: bool) -> Result<(), String> {
    let expected = if allow_random {
        "expected \"host:port\" or \":port\" with a port from 0 to 65535, or -1 for a random port"
    } else {
        "expected \"host:port\" or \":port\" with a port from 0 to 65535"
    };
    let (host, port) = if addr.starts_with('[') {
        let end = addr.find(']').ok_or(expected)?;
        let port = addr[end + 1..].strip_prefix(':').ok_or(expected)?;
        (&addr[..=end], port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or(expected)?;
        if host.contains(':') {
            return Err(format!("{expected}; put an IPv6 host in brackets"));
        }
        (host, port)
    };
    let port_ok = (allow_random && port == "-1")
        || (!port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535));
    if !port_ok {
        return Err(expected.to_string());
    }
    if !host.is_empty() {
        check_host(host).map_err(|e| format!("{expected}: {e}"))?;
    }
    Ok(())
}

/// Checks one server URL: `nats://`, `tls://`, `ws://` or `wss://`, or a bare `host[:port]`, optionally with
/// `user:password@`.
fn check_nats_url(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected a nats://, tls://, ws:// or wss:// URL, or host:port";
    if url.is_empty() {
        return Err("entries must not be empty".to_string());
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{EXPECTED} without spaces"));
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !["nats", "tls", "ws", "wss"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(scheme))
            {
                return Err(format!("{EXPECTED}; scheme {scheme:?} is not supported"));
            }
            rest
        }
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(end) => {
                let tail = &hostport[end + 1..];
                if !tail.is_empty() && !tail.starts_with(':') {
                    return Err(EXPECTED.to_string());
                }
                (&hostport[..=end], tail.strip_prefix(':'))
            }
            None => return Err(EXPECTED.to_string()),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    check_host(host).map_err(|e| format!("{EXPECTED}: {e}"))?;
    if let Some(port) = port
        && !(port.len() <= 5
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535))
    {
        return Err(format!("{EXPECTED}: bad port {port:?}"));
    }
    Ok(())
}

/// Stream names may not contain whitespace, `.`, `*`, `>`, or path separators.
fn check_stream_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    match prefix
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some(c) => Err(format!("a JetStream stream name may not contain {c:?}")),
        None => Ok(()),
    }
}

/// Subjects may not contain whitespace or wildcards, nor empty `.`-separated tokens.
fn check_subject_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '*' | '>'))
    {
        return Err(format!("a NATS subject may not contain {c:?}"));
    }
    if prefix.split('.').any(str::is_empty) {
        return Err("a NATS subject may not have empty '.'-separated parts".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.flush().unwrap();
        f
    }

    fn load_str(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let f = write(text);
        load(Some(f.path()), &Overrides::default())
    }

    fn load_ok(text: &str) -> (Config, Vec<String>) {
        load_str(text).unwrap_or_else(|e| panic!("{text:?} should load: {e}"))
    }

    /// Loads `text`, expects `ConfigError::Invalid`, and checks its message names `key` and `value`.
    fn assert_invalid(text: &str, key: &str, value: &str) {
        match load_str(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("`{key}`")),
                    "{text:?}: {msg:?} should name `{key}`"
                );
                assert!(
                    msg.contains(value),
                    "{text:?}: {msg:?} should show {value:?}"
                );
            }
            other => panic!("{text:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn fnv1_known_values() {
        use crate::wire::fnv1_64;
        assert_eq!(fnv1_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1_64(b"a"), 0xaf63_bd4c_8601_b7be);
        assert_eq!(fnv1_64(b"foobar"), 0x340d_8765_a4dd_a9c2);
    }

    #[test]
    fn defaults_without_file() {
        let (c, w) = load(None, &Overrides::default()).unwrap();
        assert!(w.is_empty());
        let tmp = std::env::temp_dir();
        assert_eq!(c.db_path, tmp.join("harmonylite.db"));
        assert_eq!(c.seq_map_path, tmp.join("seq-map.cbor"));
        assert_eq!(c.node_id, default_node_id());
        assert_ne!(c.node_id, 0);
        assert!(c.publish && c.replicate);
        assert_eq!(c.scan_max_changes, 512);
        assert_eq!(c.cleanup_interval_ms, 5000);
        assert_eq!((c.sleep_timeout_ms, c.polling_interval_ms), (0, 0));
        assert!(c.include_tables.is_empty() && c.exclude_tables.is_empty());
        assert_eq!(
            c.replication_log,
            ReplicationLogConfig {
                shards: 1,
                max_entries: 1024,
                replicas: None,
                compress: true,
                update_existing: false
            }
        );
        let s = &c.snapshot;
        assert!(s.enabled);
        assert_eq!(s.store, SnapshotStore::Nats);
        assert_eq!((s.interval_ms, s.leader_ttl_ms), (0, 30_000));
        assert_eq!(
            s.nats,
            SnapshotNatsConfig {
                replicas: 1,
                bucket: String::new()
            }
        );
        assert_eq!(s.s3, SnapshotS3Config::default());
        assert_eq!(s.webdav.url, "");
        assert_eq!(s.sftp.url, "");
        let n = &c.nats;
        assert!(n.urls.is_empty());
        assert_eq!(n.subject_prefix, "harmonylite-change-log");
        assert_eq!(n.stream_prefix, "harmonylite-changes");
        assert_eq!(n.server_config, None);
        assert_eq!(n.bind_address, ":-1");
        assert_eq!(
            (&n.seed_file, &n.ca_file, &n.cert_file, &n.key_file),
            (&None, &None, &None, &None)
        );
        assert_eq!((n.user_name.as_str(), n.user_password.as_str()), ("", ""));
        assert_eq!((n.connect_retries, n.reconnect_wait_seconds), (5, 2));
        assert!(n.sync_always);
        assert_eq!(n.ready_timeout_seconds, 60);
        assert_eq!(
            c.logging,
            LoggingConfig {
                verbose: false,
                format: LogFormat::Console
            }
        );
        assert_eq!(
            c.prometheus,
            PrometheusConfig {
                enable: false,
                bind: ":3010".into(),
                namespace: "harmonylite".into(),
                subsystem: String::new()
            }
        );
        assert_eq!(
            c.health_check,
            HealthCheckConfig {
                enable: false,
                bind: "0.0.0.0:8090".into(),
                path: "/health".into(),
                detailed: true
            }
        );
        assert_eq!(c.stream_name(1), "harmonylite-changes-c-1");
        assert_eq!(c.subject_name(2), "harmonylite-change-log-2");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let (c, w) = load_ok("");
        assert!(w.is_empty());
        assert_eq!(c, load(None, &Overrides::default()).unwrap().0);
    }

    #[test]
    fn example_node_config() {
        let text = r#"
seq_map_path="/tmp/harmonylite-1-sm.cbor"
db_path="/tmp/harmonylite-1.db"
[replication_log]
shards=2
max_entries=2048
replicas=1
compress=true
[nats]
user_name="harmonylite"
user_password="secure-password-here"
reconnect_wait_seconds=5
server_config="examples/nats-server-1.conf"
[logging]
verbose=false
format="console"
[prometheus]
enable=true
bind="0.0.0.0:3010"
[snapshot]
enabled=true
interval=60000
leader_ttl=30000
[health_check]
enable=true
bind="0.0.0.0:8090"
path="/health"
detailed=true
"#;
        let (c, w) = load_ok(text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.db_path, PathBuf::from("/tmp/harmonylite-1.db"));
        assert_eq!(c.seq_map_path, PathBuf::from("/tmp/harmonylite-1-sm.cbor"));
        assert_eq!(c.replication_log.shards, 2);
        assert_eq!(c.replication_log.max_entries, 2048);
        assert_eq!(c.replication_log.replicas, Some(1));
        assert_eq!(c.nats.user_name, "harmonylite");
        assert_eq!(c.nats.user_password, "secure-password-here");
        assert_eq!(c.nats.reconnect_wait_seconds, 5);
        // Relative paths are kept as written.
        assert_eq!(
            c.nats.server_config,
            Some(PathBuf::from("examples/nats-server-1.conf"))
        );
        assert!(c.prometheus.enable);
        assert_eq!(c.prometheus.bind, "0.0.0.0:3010");
        assert_eq!(
            (c.snapshot.interval_ms, c.snapshot.leader_ttl_ms),
            (60_000, 30_000)
        );
        assert!(c.health_check.enable);
    }

    #[test]
    fn every_key_set() {
        let text = r#"
db_path = "data/app.db"
node_id = 42
seq_map_path = "state/seq.cbor"
publish = false
replicate = false
scan_max_changes = 100
cleanup_interval = 1000
sleep_timeout = 9000
polling_interval = 250
include_tables = ["a", "b"]
exclude_tables = ["c"]
[replication_log]
shards = 3
max_entries = -1
replicas = 3
compress = false
update_existing = true
[snapshot]
enabled = false
store = "s3"
interval = 5
leader_ttl = 7
[snapshot.nats]
replicas = 3
bucket = "snaps"
[snapshot.s3]
endpoint = "127.0.0.1:9000"
path = "snapshots/harmonylite"
bucket = "harmonylite"
use_ssl = true
access_key = "ak"
secret = "sk"
session_token = "tok"
[snapshot.webdav]
url = "https://h/p?dir=/s&login=u&secret=p"
[snapshot.sftp]
url = "sftp://u:p@h:22/x"
[nats]
urls = ["nats://a:4222", "tls://user:pw@b:4223/", "ws://[::1]:8080", "c:4222", "d"]
subject_prefix = "app.changes"
stream_prefix = "app-changes"
server_config = "nats.conf"
bind_address = "[::]:4222"
seed_file = "seed.nk"
user_name = "u"
user_password = "p"
ca_file = "ca.pem"
cert_file = "cert.pem"
key_file = "key.pem"
connect_retries = 0
reconnect_wait_seconds = 10
sync_always = false
ready_timeout_seconds = 5
[logging]
verbose = true
format = "json"
[prometheus]
enable = true
bind = "127.0.0.1:0"
namespace = "my_app"
subsystem = "repl"
[health_check]
enable = true
bind = ":8091"
path = "/healthz"
detailed = false
"#;
        let (c, w) = load_ok(text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.db_path, PathBuf::from("data/app.db"));
        assert_eq!(c.node_id, 42);
        assert_eq!(c.seq_map_path, PathBuf::from("state/seq.cbor"));
        assert!(!c.publish && !c.replicate);
        assert_eq!(
            (
                c.scan_max_changes,
                c.cleanup_interval_ms,
                c.sleep_timeout_ms,
                c.polling_interval_ms
            ),
            (100, 1000, 9000, 250)
        );
        assert_eq!(c.include_tables, ["a", "b"]);
        assert_eq!(c.exclude_tables, ["c"]);
        assert_eq!(
            c.replication_log,
            ReplicationLogConfig {
                shards: 3,
                max_entries: -1,
                replicas: Some(3),
                compress: false,
                update_existing: true
            }
        );
        assert!(!c.snapshot.enabled);
        assert_eq!(c.snapshot.store, SnapshotStore::S3);
        assert_eq!((c.snapshot.interval_ms, c.snapshot.leader_ttl_ms), (5, 7));
        assert_eq!(
            c.snapshot.nats,
            SnapshotNatsConfig {
                replicas: 3,
                bucket: "snaps".into()
            }
        );
        assert_eq!(
            c.snapshot.s3,
            SnapshotS3Config {
                endpoint: "127.0.0.1:9000".into(),
                path: "snapshots/harmonylite".into(),
                bucket: "harmonylite".into(),
                use_ssl: true,
                access_key: "ak".into(),
                secret: "sk".into(),
                session_token: "tok".into(),
            }
        );
        assert_eq!(c.snapshot.webdav.url, "https://h/p?dir=/s&login=u&secret=p");
        assert_eq!(c.snapshot.sftp.url, "sftp://u:p@h:22/x");
        let n = &c.nats;
        assert_eq!(
            n.urls,
            [
                "nats://a:4222",
                "tls://user:pw@b:4223/",
                "ws://[::1]:8080",
                "c:4222",
                "d"
            ]
        );
        assert_eq!(
            (n.subject_prefix.as_str(), n.stream_prefix.as_str()),
            ("app.changes", "app-changes")
        );
        assert_eq!(n.server_config, Some(PathBuf::from("nats.conf")));
        assert_eq!(n.bind_address, "[::]:4222");
        assert_eq!(n.seed_file, Some(PathBuf::from("seed.nk")));
        assert_eq!((n.user_name.as_str(), n.user_password.as_str()), ("u", "p"));
        assert_eq!(n.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(n.cert_file, Some(PathBuf::from("cert.pem")));
        assert_eq!(n.key_file, Some(PathBuf::from("key.pem")));
        assert_eq!((n.connect_retries, n.reconnect_wait_seconds), (0, 10));
        assert!(!n.sync_always);
        assert_eq!(n.ready_timeout_seconds, 5);
        assert_eq!(
            c.logging,
            LoggingConfig {
                verbose: true,
                format: LogFormat::Json
            }
        );
        assert_eq!(
            c.prometheus,
            PrometheusConfig {
                enable: true,
                bind: "127.0.0.1:0".into(),
                namespace: "my_app".into(),
                subsystem: "repl".into()
            }
        );
        assert_eq!(
            c.health_check,
            HealthCheckConfig {
                enable: true,
                bind: ":8091".into(),
                path: "/healthz".into(),
                detailed: false
            }
        );
        assert_eq!(c.stream_name(2), "app-changes-2");
    }

    #[test]
    fn empty_optional_paths_are_none() {
        let (c, _) = load_ok(
            "[nats]\nserver_config = \"\"\nseed_file = \"\"\nca_file = \"\"\ncert_file = \"\"\nkey_file = \"\"\n",
        );
        let n = &c.nats;
        assert_eq!(
            (
                &n.server_config,
                &n.seed_file,
                &n.ca_file,
                &n.cert_file,
                &n.key_file
            ),
            (&None, &None, &None, &None, &None)
        );
    }

    #[test]
    fn urls_entry_with_commas_is_split() {
        let (c, _) = load_ok("[nats]\nurls = [\"nats://a:4222, nats://b:4222\"]\n");
        assert_eq!(c.nats.urls, ["nats://a:4222", "nats://b:4222"]);
    }

    #[test]
    fn bad_values_are_invalid() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[replication_log]\nshards = \"two\"",
                "replication_log.shards",
                "\"two\"",
            ),
            (
                "[replication_log]\nshards = 0",
                "replication_log.shards",
                "0",
            ),
            (
                "[replication_log]\nshards = -3",
                "replication_log.shards",
                "-3",
            ),
            (
                "[replication_log]\nmax_entries = 0",
                "replication_log.max_entries",
                "0",
            ),
            (
                "[replication_log]\nmax_entries = -2",
                "replication_log.max_entries",
                "-2",
            ),
            (
                "[replication_log]\nreplicas = \"x\"",
                "replication_log.replicas",
                "\"x\"",
            ),
            (
                "[replication_log]\ncompress = \"yes\"",
                "replication_log.compress",
                "\"yes\"",
            ),
            ("scan_max_changes = 0", "scan_max_changes", "0"),
            (
                "scan_max_changes = 4294967296",
                "scan_max_changes",
                "4294967296",
            ),
            ("cleanup_interval = 0", "cleanup_interval", "0"),
            ("cleanup_interval = -5", "cleanup_interval", "-5"),
            ("sleep_timeout = -1", "sleep_timeout", "-1"),
            ("polling_interval = 1.5", "polling_interval", "1.5"),
            ("publish = 1", "publish", "1"),
            ("node_id = 0", "node_id", "0"),
            ("node_id = -7", "node_id", "-7"),
            ("node_id = \"abc\"", "node_id", "\"abc\""),
            ("db_path = \"\"", "db_path", "\"\""),
            ("db_path = 5", "db_path", "5"),
            ("include_tables = \"a\"", "include_tables", "\"a\""),
            ("include_tables = [1]", "include_tables", "1"),
            ("include_tables = [\"\"]", "include_tables", "\"\""),
            (
                "include_tables = [\"t\"]\nexclude_tables = [\"T\"]",
                "exclude_tables",
                "\"T\"",
            ),
            ("[snapshot]\nstore = \"ftp\"", "snapshot.store", "\"ftp\""),
            ("[snapshot]\ninterval = -1", "snapshot.interval", "-1"),
            (
                "[snapshot.nats]\nreplicas = 9",
                "snapshot.nats.replicas",
                "9",
            ),
            (
                "[snapshot.s3]\nuse_ssl = \"true\"",
                "snapshot.s3.use_ssl",
                "\"true\"",
            ),
            ("snapshot = 3", "snapshot", "3"),
            ("[nats]\nurls = [\"\"]", "nats.urls", "\"\""),
            (
                "[nats]\nurls = [\"http://a:80\"]",
                "nats.urls",
                "\"http://a:80\"",
            ),
            (
                "[nats]\nurls = [\"nats://a:99999\"]",
                "nats.urls",
                "\"nats://a:99999\"",
            ),
            (
                "[nats]\nurls = [\"nats://a b\"]",
                "nats.urls",
                "\"nats://a b\"",
            ),
            ("[nats]\nurls = [\"nats://a,\"]", "nats.urls", "\"\""),
            ("[nats]\nurls = \"nats://a\"", "nats.urls", "\"nats://a\""),
            (
                "[nats]\nbind_address = \"4222\"",
                "nats.bind_address",
                "\"4222\"",
            ),
            (
                "[nats]\nbind_address = \"host:-2\"",
                "nats.bind_address",
                "\"host:-2\"",
            ),
            (
                "[nats]\nbind_address = \"host:65536\"",
                "nats.bind_address",
                "\"host:65536\"",
            ),
            (
                "[nats]\nbind_address = \"::1:4222\"",
                "nats.bind_address",
                "\"::1:4222\"",
            ),
            (
                "[nats]\nbind_address = \"bad host:4222\"",
                "nats.bind_address",
                "\"bad host:4222\"",
            ),
            ("[nats]\nconnect_retries = -1", "nats.connect_retries", "-1"),
            (
                "[nats]\nreconnect_wait_seconds = -1",
                "nats.reconnect_wait_seconds",
                "-1",
            ),
            (
                "[nats]\nready_timeout_seconds = 0",
                "nats.ready_timeout_seconds",
                "0",
            ),
            ("[nats]\nsync_always = \"no\"", "nats.sync_always", "\"no\""),
            (
                "[nats]\nstream_prefix = \"a.b\"",
                "nats.stream_prefix",
                "\"a.b\"",
            ),
            (
                "[nats]\nsubject_prefix = \"a.*\"",
                "nats.subject_prefix",
                "\"a.*\"",
            ),
            (
                "[nats]\nsubject_prefix = \"\"",
                "nats.subject_prefix",
                "\"\"",
            ),
            ("[logging]\nformat = \"xml\"", "logging.format", "\"xml\""),
            ("[prometheus]\nbind = \":-1\"", "prometheus.bind", "\":-1\""),
            (
                "[prometheus]\nbind = \"localhost\"",
                "prometheus.bind",
                "\"localhost\"",
            ),
            (
                "[prometheus]\nenable = true\nnamespace = \"my-app\"",
                "prometheus.namespace",
                "\"my-app\"",
            ),
            (
                "[health_check]\nbind = \"0.0.0.0:\"",
                "health_check.bind",
                "\"0.0.0.0:\"",
            ),
            (
                "[health_check]\npath = \"health\"",
                "health_check.path",
                "\"health\"",
            ),
            ("[health_check]\ndetailed = 0", "health_check.detailed", "0"),
        ];
        for (text, key, value) in cases {
            assert_invalid(text, key, value);
        }
    }

    #[test]
    fn wrong_type_message_names_expected_type() {
        let err = load_str("[replication_log]\nshards = \"two\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `replication_log.shards`: \"two\" (expected a positive integer)"
        );
    }

    #[test]
    fn prometheus_names_checked_only_when_enabled() {
        let (c, _) = load_ok("[prometheus]\nnamespace = \"my-app\"");
        assert_eq!(c.prometheus.namespace, "my-app");
    }

    #[test]
    fn unknown_keys_warn() {
        let (_, w) = load_ok(
            "foo = 1\n[nats]\nfoo = 1\n[bogus]\nx = 2\n[snapshot.s3]\nregion = \"eu\"\n[snapshot.extra]\n[replication_log]\nshards = 1\nwat = true\n",
        );
        for key in [
            "foo",
            "nats.foo",
            "bogus",
            "snapshot.s3.region",
            "snapshot.extra",
            "replication_log.wat",
        ] {
            let expected = format!("unknown configuration key \"{key}\" (ignored)");
            assert!(w.contains(&expected), "missing {expected:?} in {w:?}");
        }
        assert_eq!(w.len(), 6, "{w:?}");
    }

    #[test]
    fn keys_match_case_insensitively_like_the_original() {
        let (c, w) = load_ok("DB_Path = \"/x.db\"\n[NATS]\nURLs = [\"nats://a:1\"]\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.db_path, PathBuf::from("/x.db"));
        assert_eq!(c.nats.urls, ["nats://a:1"]);
        let (c, w) = load_ok("db_path = \"/a.db\"\nDB_PATH = \"/b.db\"\n");
        assert_eq!(c.db_path, PathBuf::from("/a.db"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"DB_PATH\""), "{w:?}");
    }

    #[test]
    fn node_id_override() {
        let o = Overrides { node_id: Some(7) };
        let (c, _) = load(None, &o).unwrap();
        assert_eq!(c.node_id, 7);
        let f = write("node_id = 3\n");
        assert_eq!(
            load(Some(f.path()), &Overrides::default())
                .unwrap()
                .0
                .node_id,
            3
        );
        assert_eq!(load(Some(f.path()), &o).unwrap().0.node_id, 7);
        let err = load(None, &Overrides { node_id: Some(0) }).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert!(
            err.to_string().contains("node-id") && err.to_string().contains(": 0 "),
            "{err}"
        );
    }

    #[test]
    fn replicas_rules() {
        assert_eq!(
            load_ok("[replication_log]\nshards = 4")
                .0
                .replication_log
                .replicas,
            None
        );
        assert_eq!(
            load_ok("[replication_log]\nshards = 4\nreplicas = 0")
                .0
                .replication_log
                .replicas,
            Some(3)
        );
        assert_eq!(
            load_ok("[replication_log]\nshards = 4\nreplicas = -1")
                .0
                .replication_log
                .replicas,
            Some(3)
        );
        assert_eq!(
            load_ok("[replication_log]\nshards = 20\nreplicas = 0")
                .0
                .replication_log
                .replicas,
            Some(5)
        );
        let (c, w) = load_ok("[replication_log]\nreplicas = 7");
        assert_eq!(c.replication_log.replicas, Some(5));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("replication_log.replicas"));
    }

    #[test]
    fn leader_ttl_zero_means_default() {
        assert_eq!(
            load_ok("[snapshot]\nleader_ttl = 0")
                .0
                .snapshot
                .leader_ttl_ms,
            30_000
        );
    }

    #[test]
    fn seq_map_path_empty_means_db_dir() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let (c, _) = load_ok(&format!(
            "db_path = {}\nseq_map_path = \"\"\n",
            quoted(db.to_str().unwrap())
        ));
        assert_eq!(c.seq_map_path, dir.path().join("seq-map.cbor"));
        let (c, _) = load_ok("db_path = \"rel/app.db\"\nseq_map_path = \"\"\n");
        assert!(c.seq_map_path.is_absolute());
        assert_eq!(
            c.seq_map_path,
            std::env::current_dir()
                .unwrap()
                .join("rel")
                .join("seq-map.cbor")
        );
    }

    #[test]
    fn missing_file_is_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(Some(&dir.path().join("nope.toml")), &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn bad_toml_is_parse_error() {
        let err = load_str("db_path = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    }

    #[test]
    fn address_checks() {
        for ok in [
            ":4222",
            "0.0.0.0:4222",
            "localhost:0",
            "[::]:1",
            "[fe80::1%eth0]:2",
            "my-host.example:65535",
        ] {
            assert!(check_host_port(ok, false).is_ok(), "{ok}");
        }
        assert!(check_host_port(":-1", true).is_ok());
        for bad in [
            ":-1",
            "",
            ":",
            "h",
            "h:x",
            "[::1]",
            "[::1]4222",
            "[zz]:1",
            "h:+1",
            "h: 1",
        ] {
            assert!(check_host_port(bad, false).is_err(), "{bad}");
        }
        for ok in [
            "nats://h",
            "NATS://h:1",
            "wss://u:p@h:443/path?q",
            "h:4222",
            "10.0.0.1",
            "[::1]:4222",
        ] {
            assert!(check_nats_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "nats://",
            "nats://:4222",
            "http://h",
            "h:",
            "h:abc",
            "nats://[::1",
        ] {
            assert!(check_nats_url(bad).is_err(), "{bad}");
        }
    }
}
