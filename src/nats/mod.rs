//! NATS for HarmonyLite: the bundled nats-server (extract, configure, spawn, supervise, readiness) or an
//! external cluster, and the node's JetStream client.
//!
//! [`Nats::start`] is the entry point. With `nats.urls` empty it runs the embedded server:
//!
//! 1. [`extract`]: the binary embedded at build time is written once to the per-user cache;
//! 2. `conf` (with [`conf_syntax`] and `routes`): a config file is generated from `[nats]` and the
//!    `-cluster-addr`/`-cluster-peers`/`-leaf-servers` flags, and the user's `nats.server_config` merged in;
//! 3. `server` (with `child_io`): the child process is spawned and supervised (restarted when it dies,
//!    killed with us), its log lines forwarded to tracing with `from = "nats"`;
//! 4. `client`: the node connects to it on loopback;
//! 5. `ready`: start-up waits until JetStream answers (a meta leader exists).
//!
//! With `nats.urls` set, only steps 4 and 5 run, against the external servers.

mod child_io;

/// How many times the embedded nats-server said that a route was refused because the other side has the same
/// server name (`harmonylite-node-<id>`): another running node has this node's id.
pub static DUPLICATE_NAME_REFUSALS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
mod client;
mod conf;
pub mod conf_syntax;
mod embedded;
pub use embedded::NodeLock;
mod error;
pub mod exposure;
pub mod extract;
pub mod placement;
mod ready;
mod routes;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use conf::CLUSTER_NAME;
pub use error::{KvError, NatsError};

use crate::config::Config;
use server::ServerProcess;
pub use server::ServerWatch;

/// The cluster flags of the command line (`-cluster-addr`, `-cluster-peers`, `-leaf-servers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFlags {
    /// Route listen address `host:port`; without it the embedded server runs alone.
    pub cluster_addr: Option<String>,
    /// Route URLs (`nats://host:port/`, or `dns://host:port/?min=N&interval_ms=M`).
    pub cluster_peers: Vec<String>,
    /// Leaf-node remote URLs (`?hub=true` marks a hub; `dns://` is expanded too).
    pub leaf_servers: Vec<String>,
}

impl ClusterFlags {
    /// The flags as given on the command line.
    pub fn from_cli(cli: &crate::cli::Cli) -> ClusterFlags {
        ClusterFlags {
            cluster_addr: cli.cluster_addr.clone(),
            cluster_peers: cli.cluster_peers.clone(),
            leaf_servers: cli.leaf_servers.clone(),
        }
    }
}

/// Version of the bundled nats-server (e.g. `2.15.1`), for `harmonylite -version`.
pub fn bundled_version() -> &'static str {
    extract::BUNDLED_VERSION
}

/// A connected NATS: the client and JetStream context, and the embedded server when there is one.
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    server: Option<ServerProcess>,
    cluster_size_hint: usize,
    /// A command's hold on the node's lock while it runs the node's server itself.
    _lock: Option<embedded::NodeLock>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("embedded", &self.server.is_some())
            .field("server_pid", &self.server_pid())
            .field("cluster_size_hint", &self.cluster_size_hint)
            .finish()
    }
}

impl Nats {
    /// Starts the embedded server (when `nats.urls` is empty) or connects to the external one, and waits until
    /// JetStream is ready (bounded by `nats.ready_timeout_seconds`).
    pub async fn start(cfg: &Config, flags: &ClusterFlags) -> Result<Nats, NatsError> {
        if cfg.nats.urls.is_empty() {
            embedded::start(cfg, flags).await
        } else {
            start_external(cfg, flags).await
        }
    }

    /// For one-shot commands (`-schema-status-cluster`, ...): external NATS as [`Nats::start`]; embedded, the
    /// running node's server when the node of `cfg` runs on this machine, else the node's server started for
    /// the command (stop it with [`Nats::shutdown`]).
    pub async fn attach(cfg: &Config, flags: &ClusterFlags) -> Result<Nats, NatsError> {
        if cfg.nats.urls.is_empty() {
            embedded::attach(cfg, flags).await
        } else {
            start_external(cfg, flags).await
        }
    }

    /// Expected number of servers in the cluster: embedded, 1 + the route peers (after `dns://` expansion,
    /// not counting our own address); external, the servers the connected one advertises. At least 1.
    pub fn cluster_size_hint(&self) -> usize {
        self.cluster_size_hint
    }

    /// How many times the embedded server was restarted after it died (0 for external NATS).
    pub fn server_restarts(&self) -> u64 {
        self.server.as_ref().map_or(0, ServerProcess::restarts)
    }

    /// A handle on the embedded server's state (None with external NATS).
    pub fn server_watch(&self) -> Option<ServerWatch> {
        self.server.as_ref().map(ServerProcess::watch)
    }

    /// Pid of the embedded nats-server while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(ServerProcess::pid)
    }

    /// Client port of the embedded server while it runs.
    pub fn client_port(&self) -> Option<u16> {
        self.server
            .as_ref()
            .and_then(|s| s.ports())
            .map(|p| p.client_port)
    }

    /// Monitoring base URL of the embedded server (`http://127.0.0.1:<port>`), when it has one.
    pub fn monitor_url(&self) -> Option<String> {
        self.server
            .as_ref()
            .and_then(|s| s.ports())
            .and_then(|p| p.monitor_url)
    }

    /// True when this node runs its own nats-server.
    pub fn is_embedded(&self) -> bool {
        self.server.is_some()
    }

    /// Closes the client (flushing what it buffered), then stops the embedded server gracefully.
    pub async fn shutdown(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), self.client.drain())
            .await
            .is_err()
        {
            tracing::warn!("NATS client did not drain within 5 s");
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::task::spawn_blocking(move || server.stop()).await;
        }
    }
}

fn non_empty(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
}

/// The JetStream API of `client`: the domain's (`$JS.<domain>.API`) when `nats.jetstream_domain` is set.
pub fn jetstream_context(
    client: &async_nats::Client,
    domain: &str,
) -> async_nats::jetstream::Context {
    if domain.is_empty() {
        async_nats::jetstream::new(client.clone())
    } else {
        async_nats::jetstream::with_domain(client.clone(), domain)
    }
}

/// Connect the client and wait until JetStream answers (through `domain`'s API when it is not empty).
async fn connect_and_wait(
    settings: &client::ClientSettings,
    domain: &str,
    timeout: Duration,
    probe: &ready::Probe,
) -> Result<(async_nats::Client, async_nats::jetstream::Context), NatsError> {
    let client = client::connect(settings).await?;
    let jetstream = jetstream_context(&client, domain);
    ready::wait_ready(&jetstream, timeout, probe).await?;
    Ok((client, jetstream))
}

async fn start_external(cfg: &Config, flags: &ClusterFlags) -> Result<Nats, NatsError> {
    let n = &cfg.nats;
    if flags.cluster_addr.is_some()
        || !flags.cluster_peers.is_empty()
        || !flags.leaf_servers.is_empty()
    {
        tracing::warn!(
            "nats.urls is set: -cluster-addr, -cluster-peers and -leaf-servers are ignored"
        );
    }
    if non_empty(&n.cluster_cert_file).is_some() {
        tracing::warn!(
            "nats.urls is set: nats.cluster_cert_file, cluster_key_file and cluster_ca_file are ignored"
        );
    }
    let seed = match non_empty(&n.seed_file) {
        Some(path) => Some(conf::read_seed_file(&path)?.0),
        None => None,
    };
    let urls = n.urls.join(",");
    let client_cert = match (non_empty(&n.cert_file), non_empty(&n.key_file)) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    let settings = client::ClientSettings {
        require_tls: client_cert.is_some()
            || n.urls.iter().any(|u| u.trim_start().starts_with("tls://")),
        urls,
        name: cfg.server_name(),
        user: (!n.user_name.is_empty()).then(|| (n.user_name.clone(), n.user_password.clone())),
        nkey_seed: seed,
        ca_file: non_empty(&n.ca_file),
        client_cert,
        own_server_only: false,
        attempts: n.connect_retries.max(1),
        retry_wait: Duration::from_secs(n.reconnect_wait_seconds),
        reconnect_wait: Duration::from_secs(n.reconnect_wait_seconds.max(1)),
    };
    let probe = ready::Probe {
        peers: Vec::new(),
        monitor_url: None,
        forming: None,
    };
    let (client, jetstream) = connect_and_wait(
        &settings,
        &n.jetstream_domain,
        Duration::from_secs(n.ready_timeout_seconds.get()),
        &probe,
    )
    .await?;
    let cluster_size_hint = client::advertised_servers(&client);
    Ok(Nats {
        client,
        jetstream,
        server: None,
        cluster_size_hint,
        _lock: None,
    })
}
