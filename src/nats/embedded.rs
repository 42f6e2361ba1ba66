//! Starting the embedded nats-server, step by step: where it keeps its files, the user's config file, who may
//! connect, its routes and leaf remotes, the cluster block, the supervised child, then our client and readiness.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use super::client::ClientSettings;
use super::conf::{self, ClusterSpec, ServerSpec, TlsFiles, User};
use super::conf_syntax::Map as UserConf;
use super::server::{Launch, ServerProcess};
use super::{ClusterFlags, Nats, NatsError, connect_and_wait, extract, non_empty, ready, routes};
use crate::config::{Config, NatsConfig};

/// Start the embedded server for `cfg` and connect to it; on any error after the child started, it is stopped.
pub(super) async fn start(cfg: &Config, flags: &ClusterFlags) -> Result<Nats, NatsError> {
    open(cfg, flags, false).await
}

/// For one-shot commands: connect to the embedded server of `cfg`'s node when that node is running on this
/// machine, else start the server as the node would (it joins the cluster under the node's name).
pub(super) async fn attach(cfg: &Config, flags: &ClusterFlags) -> Result<Nats, NatsError> {
    open(cfg, flags, true).await
}

async fn open(cfg: &Config, flags: &ClusterFlags, reuse_running: bool) -> Result<Nats, NatsError> {
    let n = &cfg.nats;
    let server_name = cfg.server_name();
    let paths = Paths::create(cfg)?;
    let (client_host, client_port) = routes::parse_bind_address(&n.bind_address)?;
    let user_path = non_empty(&n.server_config);
    let user_conf = user_config(user_path.as_ref()).await?;
    let auth = Auth::from_config(n)?;
    let (peer_urls, leaf_remotes) = resolve_routes(flags).await?;
    let secret =
        (!n.cluster_secret.is_empty()).then(|| conf::RouteSecret(n.cluster_secret.clone()));
    let (cluster, other_peers) = cluster_block(flags, &peer_urls, auth.route_tls.clone(), secret)?;

    // A leaf node (a remote that is not marked `hub`) runs no JetStream of its own: the hub's streams are the
    // one order every node applies, and the node's change log keeps what it cannot publish while the leaf
    // connection is down.
    let leaf = leaf_remotes.iter().any(|r| !r.hub);
    check_leaf(n, leaf, reuse_running)?;
    let spec = ServerSpec {
        server_name: server_name.clone(),
        client_host: client_host.clone(),
        client_port,
        monitor: true,
        ports_file_dir: paths.store_dir.clone(),
        store_dir: paths.store_dir,
        jetstream: !leaf,
        domain: (!n.jetstream_domain.is_empty()).then(|| n.jetstream_domain.clone()),
        sync_always: n.sync_always,
        max_payload: n.max_payload,
        cluster,
        leaf_remotes,
        users: auth.users,
        tls: auth.tls.clone(),
    };
    let settings_for =
        |port: u16| client_settings(n, &client_host, port, server_name, auth.seed, auth.tls);
    let timeout = Duration::from_secs(n.ready_timeout_seconds.get());
    let cluster_size_hint = 1 + other_peers.len();
    let mut lock = None;
    if reuse_running {
        let ports_dir = conf::effective_ports_dir(&spec, user_conf.as_ref());
        let (running, taken) = running_server(cfg, ports_dir, timeout).await?;
        lock = taken;
        if let Some(port) = running {
            tracing::debug!(port, "using the running node's nats-server");
            let settings = settings_for(port);
            return connect_running(&settings, &n.jetstream_domain, timeout, cluster_size_hint)
                .await;
        }
    }
    let (server, ports) = launch(spec, user_conf, user_path, paths.conf_path).await?;
    let settings = settings_for(ports.client_port);
    let probe = launched_probe(&other_peers, &ports, &server);
    match connect_and_wait(&settings, &n.jetstream_domain, timeout, &probe).await {
        Ok((client, jetstream)) => Ok(Nats {
            client,
            jetstream,
            server: Some(server),
            cluster_size_hint,
            _lock: lock,
        }),
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || server.stop()).await;
            Err(e)
        }
    }
}

/// The user's `nats.server_config` file, when one is given, read in the blocking thread pool.
async fn user_config(path: Option<&PathBuf>) -> Result<Option<UserConf>, NatsError> {
    match path {
        Some(p) => {
            let p = p.clone();
            Ok(Some(blocking(move || conf::load_user_config(&p)).await?))
        }
        None => Ok(None),
    }
}

/// What readiness looks at for a server we started: the other peers' route ports, its monitoring port, and
/// whether its cluster is still forming.
fn launched_probe(
    other_peers: &[String],
    ports: &super::child_io::Ports,
    server: &ServerProcess,
) -> ready::Probe {
    ready::Probe {
        peers: other_peers
            .iter()
            .filter_map(|u| routes::probe_target(u, 6222))
            .collect(),
        monitor_url: ports.monitor_url.clone(),
        forming: Some(server.forming_flag()),
    }
}

/// A leaf node needs the hub's JetStream domain; said at INFO when it starts its own server.
fn check_leaf(n: &NatsConfig, leaf: bool, reuse_running: bool) -> Result<(), NatsError> {
    if leaf && n.jetstream_domain.is_empty() {
        return Err(NatsError::Settings(
            "a leaf node (-leaf-servers) uses the hub's JetStream, which it reaches only through a domain: \
             give the hub's JetStream a domain (`jetstream { domain: hub }` in its server config, or \
             nats.jetstream_domain = \"hub\" on HarmonyLite hub nodes) and set nats.jetstream_domain to it \
             on this node"
                .into(),
        ));
    }
    if leaf && !reuse_running {
        tracing::info!(
            "a leaf node: its nats-server runs without JetStream and the node uses the hub's streams; \
             changes made while the leaf connection is down wait in the change log"
        );
    }
    Ok(())
}

/// Our client's settings for the embedded server listening on `host:port`.
fn client_settings(
    n: &NatsConfig,
    host: &str,
    port: u16,
    name: String,
    nkey_seed: Option<String>,
    tls: Option<TlsFiles>,
) -> ClientSettings {
    ClientSettings {
        urls: client_url(host, port, tls.is_some()),
        name,
        user: (!n.user_name.is_empty()).then(|| (n.user_name.clone(), n.user_password.clone())),
        nkey_seed,
        ca_file: non_empty(&n.ca_file),
        client_cert: tls
            .as_ref()
            .map(|t| (t.cert_file.clone(), t.key_file.clone())),
        require_tls: tls.is_some(),
        own_server_only: true,
        attempts: 20,
        retry_wait: Duration::from_millis(250),
        reconnect_wait: Duration::from_secs(n.reconnect_wait_seconds.max(1)),
    }
}

/// For a command: the client port of the node's nats-server when it runs (waited for within `timeout` while the
/// node is starting), else `None` and the node's lock, taken for the server the command starts.
async fn running_server(
    cfg: &Config,
    ports_dir: PathBuf,
    timeout: Duration,
) -> Result<(Option<u16>, Option<NodeLock>), NatsError> {
    let mut running = {
        let dir = ports_dir.clone();
        blocking(move || running_client_port(&dir)).await
    };
    let mut lock = None;
    if running.is_none() {
        lock = NodeLock::try_take(cfg)?;
        if lock.is_none() {
            // The node runs or is starting: wait for its server rather than start a second one.
            tracing::debug!("the node is starting; waiting for its nats-server");
            let deadline = tokio::time::Instant::now() + timeout;
            while running.is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let dir = ports_dir.clone();
                running = blocking(move || running_client_port(&dir)).await;
            }
            if running.is_none() {
                return Err(NatsError::Settings(format!(
                    "the node of this configuration is starting (it holds {}) and its nats-server did \
                     not come up within {}s",
                    NodeLock::path(cfg).display(),
                    timeout.as_secs()
                )));
            }
        }
    }
    Ok((running, lock))
}

/// Connect to the running node's nats-server (the node holds the lock: none is kept).
async fn connect_running(
    settings: &ClientSettings,
    domain: &str,
    timeout: Duration,
    cluster_size_hint: usize,
) -> Result<Nats, NatsError> {
    let probe = ready::Probe {
        peers: Vec::new(),
        monitor_url: None,
        forming: None,
    };
    let (client, jetstream) = connect_and_wait(settings, domain, timeout, &probe).await?;
    Ok(Nats {
        client,
        jetstream,
        server: None,
        cluster_size_hint,
        _lock: None,
    })
}

/// An exclusive `flock` on `<data>/nats/<server name>.lock`: held by a running node for its whole life (taken
/// before it touches its database), and by a command that starts the node's server itself while the node is
/// not running. A command that finds it held knows the node runs or is starting, and waits for its server
/// instead of starting a second one on the node's ports.
#[derive(Debug)]
pub struct NodeLock {
    _file: std::fs::File,
}

impl NodeLock {
    fn path(cfg: &Config) -> PathBuf {
        cfg.data_root_dir()
            .join("nats")
            .join(format!("{}.lock", cfg.server_name()))
    }

    /// Takes the lock when it is free; `Ok(None)` when another process holds it.
    fn try_take(cfg: &Config) -> Result<Option<NodeLock>, NatsError> {
        let path = NodeLock::path(cfg);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| NatsError::io("cannot create", dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NatsError::io("cannot open", &path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open descriptor we own; it is released when the file is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(NodeLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(NatsError::io("cannot lock", &path, err))
        }
    }

    /// The node's lock, waited for while a command holds it (at most `nats.ready_timeout_seconds`). `None`
    /// with external NATS (`nats.urls`): there is no server of the node's to guard.
    pub async fn for_node(cfg: &Config) -> Result<Option<NodeLock>, NatsError> {
        if !cfg.nats.urls.is_empty() {
            return Ok(None);
        }
        let deadline =
            std::time::Instant::now() + Duration::from_secs(cfg.nats.ready_timeout_seconds.get());
        let mut said = false;
        loop {
            if let Some(lock) = NodeLock::try_take(cfg)? {
                return Ok(Some(lock));
            }
            if std::time::Instant::now() >= deadline {
                return Err(NatsError::Settings(format!(
                    "another process holds {} (this node already runs from this data directory, or a \
                     command started its server): stop it first",
                    NodeLock::path(cfg).display()
                )));
            }
            if !said {
                tracing::info!(lock = %NodeLock::path(cfg).display(),
                    "another process holds this node's lock (a command using its server?); waiting");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// The server's files: its JetStream store `<db dir>/nats/<server name>` and its generated config file beside.
struct Paths {
    store_dir: PathBuf,
    conf_path: PathBuf,
}

impl Paths {
    fn create(cfg: &Config) -> Result<Paths, NatsError> {
        let server_name = cfg.server_name();
        let nats_dir = cfg.data_root_dir().join("nats");
        let store_dir = nats_dir.join(&server_name);
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| NatsError::io("cannot create", &store_dir, e))?;
        Ok(Paths {
            store_dir,
            conf_path: nats_dir.join(format!("{server_name}.conf")),
        })
    }
}

/// Who may connect: the configured user and NKey, and the TLS files of the client and route ports.
struct Auth {
    users: Vec<User>,
    seed: Option<String>,
    tls: Option<TlsFiles>,
    route_tls: Option<TlsFiles>,
}

impl Auth {
    fn from_config(n: &NatsConfig) -> Result<Auth, NatsError> {
        let mut users = Vec::new();
        if !n.user_name.is_empty() {
            users.push(User::Password {
                user: n.user_name.clone(),
                password: n.user_password.clone(),
            });
        }
        let seed = match non_empty(&n.seed_file) {
            Some(path) => {
                let (seed, public_key) = conf::read_seed_file(&path)?;
                users.push(User::Nkey { public_key });
                Some(seed)
            }
            None => None,
        };
        let tls = match (non_empty(&n.cert_file), non_empty(&n.key_file)) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                ca_file: non_empty(&n.ca_file),
            }),
            _ => None,
        };
        // Validation made sure that the three come together.
        let route_tls = match (
            non_empty(&n.cluster_cert_file),
            non_empty(&n.cluster_key_file),
            non_empty(&n.cluster_ca_file),
        ) {
            (Some(cert_file), Some(key_file), Some(ca_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                ca_file: Some(ca_file),
            }),
            _ => None,
        };
        Ok(Auth {
            users,
            seed,
            tls,
            route_tls,
        })
    }
}

/// Route URLs and leaf remotes from the flags; `dns://` entries resolve in the blocking thread pool.
async fn resolve_routes(
    flags: &ClusterFlags,
) -> Result<(Vec<String>, Vec<routes::LeafRemote>), NatsError> {
    let peers = flags
        .cluster_peers
        .iter()
        .map(|p| routes::parse_peer(p))
        .collect::<Result<Vec<_>, _>>()?;
    let leaves = flags
        .leaf_servers
        .iter()
        .map(|l| routes::parse_leaf(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(blocking(move || {
        let peer_urls = routes::expand(&peers, routes::DNS_WAIT);
        let leaf_remotes = leaves
            .iter()
            .map(|(seed, hub)| routes::LeafRemote {
                urls: routes::expand(std::slice::from_ref(seed), routes::DNS_WAIT),
                hub: *hub,
            })
            .filter(|r| !r.urls.is_empty())
            .collect::<Vec<_>>();
        (peer_urls, leaf_remotes)
    })
    .await)
}

/// The cluster block (with `-cluster-addr`, its routes under `tls` when given) and the peers other than
/// ourselves.
fn cluster_block(
    flags: &ClusterFlags,
    peer_urls: &[String],
    tls: Option<TlsFiles>,
    secret: Option<conf::RouteSecret>,
) -> Result<(Option<ClusterSpec>, Vec<String>), NatsError> {
    let Some(addr) = flags.cluster_addr.as_deref().filter(|a| !a.is_empty()) else {
        if !peer_urls.is_empty() {
            tracing::warn!(
                "-cluster-peers given without -cluster-addr: the embedded server runs without a cluster"
            );
        }
        if tls.is_some() {
            tracing::warn!(
                "nats.cluster_cert_file is set without -cluster-addr: the embedded server has no route port"
            );
        }
        if secret.is_some() {
            tracing::warn!(
                "nats.cluster_secret is set without -cluster-addr: the embedded server has no route port"
            );
        }
        return Ok((None, Vec::new()));
    };
    let (host, port) = routes::parse_cluster_addr(addr)?;
    let others: Vec<String> = peer_urls
        .iter()
        .filter(|u| !routes::is_self(u, &host, port))
        .cloned()
        .collect();
    // nats-server refuses clustered JetStream without a route. A node started first, with no peers (as the
    // demo's node 1), routes to itself: the server starts, ignores the self-route, and forms the cluster when
    // peers connect to it.
    let routes = if peer_urls.is_empty() {
        let h = match host.as_str() {
            "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        tracing::info!("no -cluster-peers: waiting for peers to connect to {addr}");
        vec![format!("nats://{h}:{port}")]
    } else {
        peer_urls.to_vec()
    };
    let spec = ClusterSpec {
        listen: addr.to_string(),
        routes,
        tls,
        secret,
    };
    Ok((Some(spec), others))
}

/// Extract the binary, render its config (the user's file merged over ours) and start the supervised child.
async fn launch(
    spec: ServerSpec,
    user_conf: Option<UserConf>,
    user_path: Option<PathBuf>,
    conf_path: PathBuf,
) -> Result<(ServerProcess, super::child_io::Ports), NatsError> {
    let ports_dir = conf::effective_ports_dir(&spec, user_conf.as_ref());
    let binary = blocking(extract::server_binary).await?;
    let store_dir = spec.store_dir.clone();
    let render = Box::new(move |pinned: Option<u16>| {
        let mut spec = spec.clone();
        if let Some(port) = pinned {
            spec.client_port = i32::from(port);
        }
        conf::render(&spec, user_conf.as_ref(), user_path.as_deref())
    });
    let launch = Launch {
        binary,
        conf_path,
        ports_dir,
        store_dir,
        render,
    };
    ServerProcess::start(launch).await
}

/// Client port of a nats-server that runs now and wrote its ports file (`<program>_<pid>.ports`) in `dir`.
fn running_client_port(dir: &std::path::Path) -> Option<u16> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (program, pid) = name.strip_suffix(".ports")?.rsplit_once('_')?;
        let pid: u32 = pid.parse().ok()?;
        // The pid must still be that program (not a reused pid).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmdline.split(|&b| b == 0).next()?;
        let argv0 = std::path::Path::new(std::ffi::OsStr::from_bytes(argv0));
        if argv0.file_name()?.to_string_lossy() != program {
            return None;
        }
        super::child_io::read_ports_file(dir, pid).map(|p| p.client_port)
    })
}

/// Our client's URL for the server listening on `host:port`.
fn client_url(host: &str, port: u16, tls: bool) -> String {
    let connect_host = match host {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "[::1]".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    let scheme = if tls { "tls" } else { "nats" };
    format!("{scheme}://{connect_host}:{port}")
}
