//! The configuration's types, deserialised from the (normalised) TOML table: one struct per section, the
//! keys' names, the original's defaults (`Default`), and a `Debug` that never prints a credential.
//!
//! Field names are those the rest of the crate reads; a `rename` gives the TOML key where they differ. Every
//! key goes through a helper of `de`, which decides which values its kind accepts and how a refusal reads.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;

use serde::Deserialize;

use super::de;

/// The whole configuration, after defaults, command-line overrides and validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `db_path`: the SQLite database to replicate.
    #[serde(deserialize_with = "de::path")]
    pub db_path: PathBuf,
    /// `node_id`: this node's identity (default: FNV-1 64 of the machine id). Only while loading, 0 stands for
    /// "not in the file".
    #[serde(deserialize_with = "de::node_id")]
    pub node_id: u64,
    /// `seq_map_path`: the node-local state file (publisher progress). While loading, an empty path stands
    /// for "beside the database".
    #[serde(deserialize_with = "de::path")]
    pub seq_map_path: PathBuf,
    /// `publish`: send local changes.
    #[serde(deserialize_with = "de::boolean")]
    pub publish: bool,
    /// `replicate`: apply changes from the stream.
    #[serde(deserialize_with = "de::boolean")]
    pub replicate: bool,
    /// `scan_max_changes`: most row changes carried by one message.
    #[serde(deserialize_with = "de::positive_u32")]
    pub scan_max_changes: NonZeroU32,
    /// `cleanup_interval` (ms): published change-log rows are removed after this long.
    #[serde(rename = "cleanup_interval", deserialize_with = "de::positive_u64")]
    pub cleanup_interval_ms: NonZeroU64,
    /// `sleep_timeout` (ms, 0 = off): exit after this long without local or remote activity.
    #[serde(rename = "sleep_timeout", deserialize_with = "de::uint32_range")]
    pub sleep_timeout_ms: u64,
    /// `polling_interval` (ms, 0 = off): extra periodic scan besides file events.
    #[serde(rename = "polling_interval", deserialize_with = "de::uint32_range")]
    pub polling_interval_ms: u64,
    /// `include_tables`: when non-empty, only these tables are captured and applied.
    #[serde(deserialize_with = "de::strings")]
    pub include_tables: Vec<String>,
    /// `exclude_tables`: these tables are never captured or applied. With `[ddl] enabled` off, the records of
    /// applied migrations ([`MIGRATION_RECORDS`]) are added to the user's list when the configuration is loaded.
    #[serde(deserialize_with = "de::strings")]
    pub exclude_tables: Vec<String>,
    #[serde(deserialize_with = "de::table")]
    pub replication_log: ReplicationLogConfig,
    #[serde(deserialize_with = "de::table")]
    pub snapshot: SnapshotConfig,
    #[serde(deserialize_with = "de::table")]
    pub nats: NatsConfig,
    #[serde(deserialize_with = "de::table")]
    pub logging: LoggingConfig,
    #[serde(deserialize_with = "de::table")]
    pub prometheus: PrometheusConfig,
    #[serde(deserialize_with = "de::table")]
    pub health_check: HealthCheckConfig,
    #[serde(deserialize_with = "de::table")]
    pub conflicts: ConflictsConfig,
    #[serde(deserialize_with = "de::table")]
    pub ddl: DdlConfig,
    #[serde(deserialize_with = "de::table")]
    pub feed: FeedConfig,
}

impl Default for Config {
    fn default() -> Self {
        let tmp = std::env::temp_dir();
        Config {
            db_path: tmp.join("harmonylite.db"),
            node_id: 0,
            seq_map_path: tmp.join("seq-map.cbor"),
            publish: true,
            replicate: true,
            scan_max_changes: NonZeroU32::new(512).expect("non-zero"),
            cleanup_interval_ms: NonZeroU64::new(5000).expect("non-zero"),
            sleep_timeout_ms: 0,
            polling_interval_ms: 0,
            include_tables: Vec::new(),
            exclude_tables: Vec::new(),
            replication_log: ReplicationLogConfig::default(),
            snapshot: SnapshotConfig::default(),
            nats: NatsConfig::default(),
            logging: LoggingConfig::default(),
            prometheus: PrometheusConfig::default(),
            health_check: HealthCheckConfig::default(),
            conflicts: ConflictsConfig::default(),
            ddl: DdlConfig::default(),
            feed: FeedConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReplicationLogConfig {
    /// `shards`: number of subjects/streams.
    #[serde(deserialize_with = "de::positive_u32")]
    pub shards: NonZeroU32,
    /// `max_entries`: JetStream MaxMsgs per stream, -1 (the default) for none. When set, a cap that can remove
    /// changes some node still needs.
    #[serde(deserialize_with = "de::max_entries")]
    pub max_entries: i64,
    /// `max_age_seconds`: a change older than this leaves the stream even if a node has not applied it.
    #[serde(deserialize_with = "de::positive_u64_any")]
    pub max_age_seconds: NonZeroU64,
    /// `max_bytes`: per-stream size cap (-1: none); the oldest changes leave the stream beyond it.
    #[serde(deserialize_with = "de::max_entries")]
    pub max_bytes: i64,
    /// `replicas`: stream replicas; `None` when the key is absent (then min(3, cluster size)).
    #[serde(deserialize_with = "de::replicas")]
    pub replicas: Option<u32>,
    /// `compress`: zstd payloads and the `-c` stream name infix.
    #[serde(deserialize_with = "de::boolean")]
    pub compress: bool,
    /// `update_existing`: update an existing stream whose config differs.
    #[serde(deserialize_with = "de::boolean")]
    pub update_existing: bool,
    /// `max_message_bytes` (ours, default 512 KiB): the size the publisher aims for per message; a value longer
    /// than a quarter of it travels in pieces of this size. At most `nats.max_payload` − [`HEADROOM`], and kept
    /// under an external server's own `max_payload`, read at start.
    ///
    /// [`HEADROOM`]: crate::config::HEADROOM
    #[serde(deserialize_with = "de::max_message_bytes")]
    pub max_message_bytes: u64,
    /// `stale_node_seconds` (ours, default 3600): a node not heard of for this long whose position is a stream's
    /// lowest (it holds the stream's retention) is named at WARN once per this period, in `/health` and in
    /// `-status`.
    #[serde(deserialize_with = "de::positive_u64")]
    pub stale_node_seconds: NonZeroU64,
}

impl Default for ReplicationLogConfig {
    fn default() -> Self {
        ReplicationLogConfig {
            shards: NonZeroU32::MIN,
            max_entries: -1,
            max_age_seconds: NonZeroU64::new(7 * 24 * 3600).expect("non-zero"),
            max_bytes: 1 << 30,
            replicas: None,
            compress: true,
            update_existing: false,
            max_message_bytes: 512 * 1024,
            stale_node_seconds: NonZeroU64::new(3600).expect("non-zero"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SnapshotConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    /// `store`: one of nats, s3, webdav, sftp.
    #[serde(deserialize_with = "snapshot_store")]
    pub store: SnapshotStore,
    /// `interval` (ms, 0 = off).
    #[serde(rename = "interval", deserialize_with = "de::uint32_range")]
    pub interval_ms: u64,
    /// `leader_ttl` (ms; 0 in the file means 30000).
    #[serde(rename = "leader_ttl", deserialize_with = "de::uint32_range")]
    pub leader_ttl_ms: u64,
    #[serde(deserialize_with = "de::table")]
    pub nats: SnapshotNatsConfig,
    #[serde(deserialize_with = "de::table")]
    pub s3: SnapshotS3Config,
    #[serde(deserialize_with = "de::table")]
    pub webdav: SnapshotWebdavConfig,
    #[serde(deserialize_with = "de::table")]
    pub sftp: SnapshotSftpConfig,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            store: SnapshotStore::Nats,
            interval_ms: 0,
            leader_ttl_ms: 30_000,
            nats: SnapshotNatsConfig::default(),
            s3: SnapshotS3Config::default(),
            webdav: SnapshotWebdavConfig::default(),
            sftp: SnapshotSftpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStore {
    Nats,
    S3,
    Webdav,
    Sftp,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SnapshotNatsConfig {
    /// `replicas` (0 in the file means 1). Absent: 0 here, which means as many as the change streams have.
    #[serde(deserialize_with = "de::snapshot_replicas")]
    pub replicas: u32,
    /// Empty means `<stream_prefix>-snapshot-store`.
    #[serde(deserialize_with = "de::string")]
    pub bucket: String,
}

#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotS3Config {
    #[serde(deserialize_with = "de::string")]
    pub endpoint: String,
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    #[serde(deserialize_with = "de::string")]
    pub bucket: String,
    #[serde(deserialize_with = "de::boolean")]
    pub use_ssl: bool,
    #[serde(deserialize_with = "de::string")]
    pub access_key: String,
    #[serde(deserialize_with = "de::string")]
    pub secret: String,
    #[serde(deserialize_with = "de::string")]
    pub session_token: String,
}

#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotWebdavConfig {
    /// May carry the password in its query (`secret=`).
    #[serde(deserialize_with = "de::string")]
    pub url: String,
}

#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotSftpConfig {
    /// May carry the password (`sftp://user:password@host`).
    #[serde(deserialize_with = "de::string")]
    pub url: String,
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// `urls`: external servers; empty means the embedded server is spawned.
    #[serde(deserialize_with = "de::strings")]
    pub urls: Vec<String>,
    #[serde(deserialize_with = "de::string")]
    pub subject_prefix: String,
    #[serde(deserialize_with = "de::string")]
    pub stream_prefix: String,
    /// `server_config`: nats-server config file merged into the embedded server's (the user's file wins).
    #[serde(deserialize_with = "de::opt_path")]
    pub server_config: Option<PathBuf>,
    /// `bind_address`: embedded server client listen address (`host:port`, port -1 = random; no host: loopback).
    #[serde(deserialize_with = "de::string")]
    pub bind_address: String,
    #[serde(deserialize_with = "de::opt_path")]
    pub seed_file: Option<PathBuf>,
    #[serde(deserialize_with = "de::string")]
    pub user_name: String,
    #[serde(deserialize_with = "de::string")]
    pub user_password: String,
    #[serde(deserialize_with = "de::opt_path")]
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "de::opt_path")]
    pub cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "de::opt_path")]
    pub key_file: Option<PathBuf>,
    /// `cluster_cert_file` (ours): the embedded server's certificate on its route port (`-cluster-addr`).
    #[serde(deserialize_with = "de::opt_path")]
    pub cluster_cert_file: Option<PathBuf>,
    /// `cluster_key_file` (ours): the key of `cluster_cert_file`.
    #[serde(deserialize_with = "de::opt_path")]
    pub cluster_key_file: Option<PathBuf>,
    /// `cluster_ca_file` (ours): the CA that must have signed every route peer's certificate (both ways).
    #[serde(deserialize_with = "de::opt_path")]
    pub cluster_ca_file: Option<PathBuf>,
    /// `cluster_secret` (ours): the shared secret every embedded server demands of a route (its cluster
    /// authorization); `HARMONYLITE_CLUSTER_SECRET` overrides it. Empty: routes are not authenticated.
    #[serde(deserialize_with = "de::string")]
    pub cluster_secret: String,
    #[serde(deserialize_with = "de::uint32")]
    pub connect_retries: u32,
    #[serde(deserialize_with = "de::uint32_range")]
    pub reconnect_wait_seconds: u64,
    /// `sync_always` (ours, default true): embedded JetStream fsyncs before acknowledging.
    #[serde(deserialize_with = "de::boolean")]
    pub sync_always: bool,
    /// `ready_timeout_seconds` (ours, default 60): how long start-up waits for JetStream and a meta leader.
    #[serde(deserialize_with = "de::positive_u64")]
    pub ready_timeout_seconds: NonZeroU64,
    /// `max_payload` (ours, default 1 MiB): the embedded server's largest message, 64 KiB to 64 MiB. An
    /// external server's own limit is read at start instead.
    #[serde(deserialize_with = "de::max_payload")]
    pub max_payload: u64,
    /// `jetstream_domain` (ours, default empty): the cluster's JetStream domain. Every node's JetStream client
    /// uses it (`$JS.<domain>.API`), and an embedded server that runs JetStream gets it in its `jetstream`
    /// block. A leaf node (`-leaf-servers`) needs it: its server runs no JetStream and reaches the hub's
    /// through the leaf connection, where only a domain's API crosses.
    #[serde(deserialize_with = "de::string")]
    pub jetstream_domain: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            subject_prefix: "harmonylite-change-log".into(),
            stream_prefix: "harmonylite-changes".into(),
            server_config: None,
            bind_address: ":-1".into(),
            seed_file: None,
            user_name: String::new(),
            user_password: String::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            cluster_cert_file: None,
            cluster_key_file: None,
            cluster_ca_file: None,
            cluster_secret: String::new(),
            connect_retries: 5,
            reconnect_wait_seconds: 2,
            sync_always: true,
            ready_timeout_seconds: NonZeroU64::new(60).expect("non-zero"),
            max_payload: 1024 * 1024,
            jetstream_domain: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub verbose: bool,
    #[serde(deserialize_with = "log_format")]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            verbose: false,
            format: LogFormat::Console,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub enable: bool,
    #[serde(deserialize_with = "de::string")]
    pub bind: String,
    #[serde(deserialize_with = "de::string")]
    pub namespace: String,
    #[serde(deserialize_with = "de::string")]
    pub subsystem: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enable: false,
            bind: ":3010".into(),
            namespace: "harmonylite".into(),
            subsystem: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HealthCheckConfig {
    #[serde(deserialize_with = "de::boolean")]
    pub enable: bool,
    #[serde(deserialize_with = "de::string")]
    pub bind: String,
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    #[serde(deserialize_with = "de::boolean")]
    pub detailed: bool,
    /// `ready_path` (ours, default `/ready`): the readiness path on the same server.
    #[serde(deserialize_with = "de::string")]
    pub ready_path: String,
    /// `ready_max_lag` (ours, default 100): readiness needs every shard within this many stream messages.
    #[serde(deserialize_with = "de::uint32_range")]
    pub ready_max_lag: u64,
    /// `max_stuck_seconds` (ours, default 60): a shard paused or stopped at a gap for longer makes the node
    /// unhealthy.
    #[serde(deserialize_with = "de::uint32_range")]
    pub max_stuck_seconds: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enable: false,
            bind: "0.0.0.0:8090".into(),
            path: "/health".into(),
            detailed: true,
            ready_path: "/ready".into(),
            ready_max_lag: 100,
            max_stuck_seconds: 60,
        }
    }
}

/// `[conflicts]` (ours): how much of the conflict journal is kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConflictsConfig {
    /// `max_age_seconds` (default 30 days): older entries are removed.
    #[serde(deserialize_with = "de::uint32_range")]
    pub max_age_seconds: u64,
    /// `max_rows` (default 10,000): only the newest entries are kept.
    #[serde(deserialize_with = "de::uint32_range")]
    pub max_rows: u64,
}

impl Default for ConflictsConfig {
    fn default() -> Self {
        ConflictsConfig {
            max_age_seconds: 30 * 24 * 3600,
            max_rows: 10_000,
        }
    }
}

/// The tables where migration tools record the migrations they applied (patterns, compared without regard to
/// case). Node-local with `[ddl] enabled` off (each node's tool must see what ran on that node); shared with it
/// on, so a migration run on one node is recorded as applied on every node that applies its schema change.
pub const MIGRATION_RECORDS: &[&str] = &[
    "django_migrations",
    "alembic_version",
    // Rails, and golang-migrate.
    "schema_migrations",
    "ar_internal_metadata",
    "knex_migrations",
    "knex_migrations_lock",
    "goose_db_version",
    "_prisma_migrations",
    "__diesel_schema_migrations",
    "flyway_schema_history",
    "sequelize_meta",
    "SequelizeMeta",
    "typeorm_migrations",
    "__efmigrationshistory",
    "_sqlx_migrations",
    "seaql_migrations",
    "refinery_schema_history",
    "atlas_schema_revisions",
    "gorp_migrations",
];

/// `[ddl]` (ours): schema changes replicated.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DdlConfig {
    /// `enabled` (default false): a schema change made on this node (any client, any migration tool) is sent to
    /// every node, and schema changes from other nodes are applied here.
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
}

/// `[feed]` (ours): the change feed for other programs (`docs/FEED.md`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FeedConfig {
    /// `enabled` (default false): keep the feed stream, written by one node at a time, and serve it.
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    /// `max_age_seconds` (default 7 days): a record older than this leaves the feed.
    #[serde(deserialize_with = "de::positive_u64_any")]
    pub max_age_seconds: NonZeroU64,
    /// `max_bytes` (default 1 GiB, -1: none): the oldest records leave the feed beyond this size.
    #[serde(deserialize_with = "de::max_entries")]
    pub max_bytes: i64,
    /// `http_token` (default none): when set, `/changes` also answers other hosts than loopback that present
    /// it as a bearer token.
    #[serde(deserialize_with = "de::string")]
    pub http_token: String,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            enabled: false,
            max_age_seconds: NonZeroU64::new(7 * 24 * 3600).expect("non-zero"),
            max_bytes: 1 << 30,
            http_token: String::new(),
        }
    }
}

impl fmt::Debug for FeedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedConfig")
            .field("enabled", &self.enabled)
            .field("max_age_seconds", &self.max_age_seconds)
            .field("max_bytes", &self.max_bytes)
            .field("http_token", &Secret(&self.http_token))
            .finish()
    }
}

// Debug of what may hold credentials: passwords, keys, tokens and the passwords inside URLs print as
// "<redacted>" (an empty one prints as "", which tells that it is not set without telling anything else).

/// The text `Debug` shows in place of a secret.
const REDACTED: &str = "<redacted>";

/// Debug-prints a secret string as `"<redacted>"` (or `""` when empty).
struct Secret<'a>(&'a str);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_empty() { "" } else { REDACTED };
        fmt::Debug::fmt(shown, f)
    }
}

/// Debug-prints a URL with the password of its user info (or a lone token) and the values of its
/// credential-like query parameters (`secret=`, `password=`, `token=`, ...) redacted.
struct Url<'a>(&'a str);

impl fmt::Debug for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

/// `url` with any password, token or secret query value replaced (for logs and `Debug`).
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            // A lone user info is a token to NATS.
            None => format!("{REDACTED}@{host}"),
        },
        None => authority.to_string(),
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, format!("#{fragment}")),
        None => (tail, String::new()),
    };
    let tail = match before_fragment.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret_name(key) => format!("{key}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => before_fragment.to_string(),
    };
    format!("{scheme}{authority}{tail}{fragment}")
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["secret", "pass", "pwd", "token", "key", "auth", "signature"]
        .iter()
        .any(|word| name.contains(word))
}

impl fmt::Debug for SnapshotS3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotS3Config")
            .field("endpoint", &Url(&self.endpoint))
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("use_ssl", &self.use_ssl)
            .field("access_key", &Secret(&self.access_key))
            .field("secret", &Secret(&self.secret))
            .field("session_token", &Secret(&self.session_token))
            .finish()
    }
}

impl fmt::Debug for SnapshotWebdavConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWebdavConfig")
            .field("url", &Url(&self.url))
            .finish()
    }
}

impl fmt::Debug for SnapshotSftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSftpConfig")
            .field("url", &Url(&self.url))
            .finish()
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<Url<'_>> = self.urls.iter().map(|u| Url(u)).collect();
        f.debug_struct("NatsConfig")
            .field("urls", &urls)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream_prefix", &self.stream_prefix)
            .field("server_config", &self.server_config)
            .field("bind_address", &self.bind_address)
            .field("seed_file", &self.seed_file)
            .field("user_name", &self.user_name)
            .field("user_password", &Secret(&self.user_password))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("cluster_cert_file", &self.cluster_cert_file)
            .field("cluster_key_file", &self.cluster_key_file)
            .field("cluster_ca_file", &self.cluster_ca_file)
            .field("cluster_secret", &Secret(&self.cluster_secret))
            .field("connect_retries", &self.connect_retries)
            .field("reconnect_wait_seconds", &self.reconnect_wait_seconds)
            .field("sync_always", &self.sync_always)
            .field("ready_timeout_seconds", &self.ready_timeout_seconds)
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

/// `snapshot.store` by name.
fn snapshot_store<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SnapshotStore, D::Error> {
    match de::string(d)?.as_str() {
        "nats" => Ok(SnapshotStore::Nats),
        "s3" => Ok(SnapshotStore::S3),
        "webdav" => Ok(SnapshotStore::Webdav),
        "sftp" => Ok(SnapshotStore::Sftp),
        _ => Err(de::fail(
            "expected one of \"nats\", \"s3\", \"webdav\", \"sftp\"",
        )),
    }
}

/// `logging.format` by name.
fn log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    match de::string(d)?.as_str() {
        "console" => Ok(LogFormat::Console),
        "json" => Ok(LogFormat::Json),
        _ => Err(de::fail("expected \"console\" or \"json\"")),
    }
}
