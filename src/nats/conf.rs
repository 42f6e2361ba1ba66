//! The embedded nats-server's configuration file: generated from HarmonyLite's settings and flags, then merged
//! with the user's `nats.server_config` file, which wins key by key (recursively into maps).
//!
//! Keys that nats-server treats as the same setting under different names (`store_dir`/`store`,
//! `listen`/`port`, `http`/`monitor_port`, ...) are handled as one: when the user sets any of them, ours is
//! dropped, so the server never sees two competing values.

use std::path::{Path, PathBuf};

use super::NatsError;
use super::conf_syntax::{self, Map, Value};
use super::routes::LeafRemote;

/// Name of the NATS cluster, as in the original.
pub const CLUSTER_NAME: &str = "e-harmonylite";

/// Everything we put into the generated configuration.
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    pub server_name: String,
    pub client_host: String,
    /// -1: a random port.
    pub client_port: i32,
    /// Monitoring listener on loopback with a random port (used for diagnostics such as `/routez`).
    pub monitor: bool,
    pub ports_file_dir: PathBuf,
    pub store_dir: PathBuf,
    /// Whether the server runs JetStream. A leaf node's does not: its node uses the hub's streams (see
    /// DESIGN.md "Leaf nodes").
    pub jetstream: bool,
    /// `nats.jetstream_domain`, set in the `jetstream` block when the server runs JetStream.
    pub domain: Option<String>,
    pub sync_always: bool,
    /// `nats.max_payload`.
    pub max_payload: u64,
    pub cluster: Option<ClusterSpec>,
    pub leaf_remotes: Vec<LeafRemote>,
    pub users: Vec<User>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    /// `-cluster-addr` as given.
    pub listen: String,
    /// Route URLs, `dns://` entries already expanded.
    pub routes: Vec<String>,
    /// TLS on the route port (`nats.cluster_*_file`): both ends of every route show a certificate that the
    /// other verifies against its CA (`verify: true`).
    pub tls: Option<TlsFiles>,
    /// `nats.cluster_secret`: the cluster's `authorization` (user [`ROUTE_USER`]), presented in every route URL.
    pub secret: Option<RouteSecret>,
}

/// The user name of route authorization; the password is the cluster secret.
pub const ROUTE_USER: &str = "harmonylite-route";

/// The cluster secret. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RouteSecret(pub String);

impl std::fmt::Debug for RouteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteSecret(<redacted>)")
    }
}

/// `url` (`nats://host:port[/]`) with the route credentials as its user info, the secret percent-encoded.
/// A URL that already has user info is left as it is.
fn with_route_credentials(url: &str, secret: &RouteSecret) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if rest.split('/').next().unwrap_or("").contains('@') {
        return url.to_string();
    }
    let mut password = String::new();
    for b in secret.0.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            password.push(b as char);
        } else {
            password.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{scheme}://{ROUTE_USER}:{password}@{rest}")
}

/// Its `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum User {
    Password { user: String, password: String },
    Nkey { public_key: String },
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            User::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            User::Nkey { public_key } => f
                .debug_struct("Nkey")
                .field("public_key", public_key)
                .finish(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

fn path_value(p: &Path) -> Value {
    Value::string(p.to_string_lossy())
}

fn listen_value(host: &str, port: i32) -> Value {
    if host.contains(':') {
        Value::string(format!("[{host}]:{port}"))
    } else {
        Value::string(format!("{host}:{port}"))
    }
}

impl ServerSpec {
    /// Our part of the configuration, before the user's file is merged in.
    pub fn to_map(&self) -> Map {
        let mut map = Map::new()
            .with("server_name", Value::string(&self.server_name))
            .with("listen", listen_value(&self.client_host, self.client_port));
        if self.monitor {
            map.insert("http", Value::string("127.0.0.1:-1"));
        }
        map.insert("ports_file_dir", path_value(&self.ports_file_dir));
        // Our log lines get their own timestamps.
        map.insert("logtime", Value::raw("false"));
        map.insert("max_payload", Value::raw(self.max_payload.to_string()));

        if self.jetstream {
            map.insert("jetstream", Value::Map(self.jetstream_map()));
        }

        if let Some(cluster) = &self.cluster {
            map.insert("cluster", Value::Map(cluster.to_map()));
        }

        if !self.leaf_remotes.is_empty() {
            map.insert("leafnodes", Value::Map(leafnodes_map(&self.leaf_remotes)));
        }

        if !self.users.is_empty() {
            map.insert("authorization", Value::Map(users_map(&self.users)));
        }

        if let Some(tls) = &self.tls {
            // With a CA, clients must show a certificate it signed (the node's own client shows cert_file).
            let mut block = tls.to_map();
            if tls.ca_file.is_some() {
                block.insert("verify", Value::raw("true"));
            }
            map.insert("tls", Value::Map(block));
        }
        map
    }

    /// The `jetstream` block: its store, how often it syncs, its domain.
    fn jetstream_map(&self) -> Map {
        let mut js = Map::new().with("store_dir", path_value(&self.store_dir));
        if self.sync_always {
            js.insert("sync_interval", Value::raw("always"));
        }
        if let Some(domain) = &self.domain {
            js.insert("domain", Value::string(domain));
        }
        js
    }
}

impl ClusterSpec {
    /// The `cluster` block: its name, route port and routes (with the secret's credentials), authorization and
    /// TLS.
    fn to_map(&self) -> Map {
        let routes = self
            .routes
            .iter()
            .map(|u| match &self.secret {
                Some(secret) => Value::string(with_route_credentials(u, secret)),
                None => Value::string(u),
            })
            .collect();
        let mut block = Map::new()
            .with("name", Value::string(CLUSTER_NAME))
            .with("listen", Value::string(&self.listen))
            .with("routes", Value::Array(routes));
        if let Some(secret) = &self.secret {
            block.insert(
                "authorization",
                Value::Map(
                    Map::new()
                        .with("user", Value::string(ROUTE_USER))
                        .with("password", Value::string(&secret.0)),
                ),
            );
        }
        if let Some(tls) = &self.tls {
            block.insert(
                "tls",
                Value::Map(tls.to_map().with("verify", Value::raw("true"))),
            );
        }
        block
    }
}

/// The `leafnodes` block: one remote per entry of `remotes`.
fn leafnodes_map(remotes: &[LeafRemote]) -> Map {
    let remotes = remotes
        .iter()
        .map(|r| {
            let mut remote = Map::new().with(
                "urls",
                Value::Array(r.urls.iter().map(Value::string).collect()),
            );
            if r.hub {
                remote.insert("hub", Value::raw("true"));
            }
            Value::Map(remote)
        })
        .collect();
    Map::new().with("remotes", Value::Array(remotes))
}

/// The `authorization` block of the client port: one entry per user.
fn users_map(users: &[User]) -> Map {
    let users = users
        .iter()
        .map(|u| {
            Value::Map(match u {
                User::Password { user, password } => Map::new()
                    .with("user", Value::string(user))
                    .with("password", Value::string(password)),
                User::Nkey { public_key } => Map::new().with("nkey", Value::string(public_key)),
            })
        })
        .collect();
    Map::new().with("users", Value::Array(users))
}

impl TlsFiles {
    /// A nats-server `tls` block with these files.
    fn to_map(&self) -> Map {
        let mut t = Map::new()
            .with("cert_file", path_value(&self.cert_file))
            .with("key_file", path_value(&self.key_file));
        if let Some(ca) = &self.ca_file {
            t.insert("ca_file", path_value(ca));
        }
        t
    }
}

/// Groups of keys that nats-server reads as one setting, per map path ("" is the top level).
fn alias_groups(path: &str) -> &'static [&'static [&'static str]] {
    match path {
        "" => &[
            &["listen", "host", "net", "port"],
            &["http", "http_port", "monitor_port", "https", "https_port"],
            &["leafnodes", "leaf"],
        ],
        "jetstream" => &[
            &["store_dir", "store", "storedir"],
            &["sync_interval", "sync"],
            &["max_memory_store", "max_mem_store", "max_mem"],
            &["max_file_store", "max_file"],
        ],
        "cluster" | "leafnodes" => &[&["listen", "host", "net", "port"]],
        _ => &[],
    }
}

fn canonical(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if key == "leaf" {
        "leafnodes".into()
    } else {
        key
    }
}

/// Merges `theirs` into `ours`: their scalars and arrays replace ours, maps merge recursively, and setting
/// one key of an alias group removes our other spellings of it. `jetstream: enabled` (or true/on/yes) keeps
/// our JetStream settings; `jetstream: false` disables JetStream.
pub(crate) fn merge(ours: &mut Map, theirs: &Map) {
    merge_at(ours, theirs, "");
}

fn merge_at(ours: &mut Map, theirs: &Map, path: &str) {
    for (key, value) in theirs.entries() {
        for group in alias_groups(path) {
            if group.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                for alias in group.iter().filter(|k| !k.eq_ignore_ascii_case(key)) {
                    ours.remove(alias);
                }
            }
        }
        let child_path = if path.is_empty() {
            canonical(key)
        } else {
            format!("{path}.{}", canonical(key))
        };
        match (ours.get_mut(key), value) {
            (Some(Value::Map(mine)), Value::Map(their_map)) => {
                merge_at(mine, their_map, &child_path)
            }
            (Some(Value::Map(_)), Value::Scalar(raw))
                if path.is_empty()
                    && key.eq_ignore_ascii_case("jetstream")
                    && ["enabled", "enable", "true", "on", "yes"]
                        .iter()
                        .any(|t| raw.trim_matches('"').eq_ignore_ascii_case(t)) => {}
            _ => ours.insert(key.clone(), value.clone()),
        }
    }
}

/// Reads and parses the user's `nats.server_config` file (includes resolved).
pub(crate) fn load_user_config(path: &Path) -> Result<Map, NatsError> {
    conf_syntax::parse_file(path).map_err(|e| NatsError::ServerConfig {
        file: e.file,
        line: e.line,
        message: e.message,
    })
}

/// The final configuration text: ours merged with the user's.
pub(crate) fn render(spec: &ServerSpec, user: Option<&Map>, user_path: Option<&Path>) -> String {
    let mut map = spec.to_map();
    if let Some(user) = user {
        merge(&mut map, user);
    }
    let mut out = format!(
        "# Generated by harmonylite for {}; rewritten at every start of nats-server, do not edit.\n",
        spec.server_name
    );
    if let Some(p) = user_path {
        out.push_str(&format!(
            "# Merged with nats.server_config {} (its keys win).\n",
            p.display()
        ));
    }
    out.push_str(&map.render());
    out
}

/// Effective `ports_file_dir` of a rendered map (the user may have moved it).
pub(crate) fn effective_ports_dir(spec: &ServerSpec, user: Option<&Map>) -> PathBuf {
    user.and_then(|m| m.get("ports_file_dir"))
        .and_then(conf_syntax::unquote)
        .map(PathBuf::from)
        .unwrap_or_else(|| spec.ports_file_dir.clone())
}

/// Reads an NKey seed file (a bare seed, or a decorated file such as a `.creds`/`.nk` file) and returns the
/// seed and its public key.
pub(crate) fn read_seed_file(path: &Path) -> Result<(String, String), NatsError> {
    let text = std::fs::read_to_string(path).map_err(|e| NatsError::Seed {
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    let seed = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| {
            w.len() == 58
                && w.starts_with('S')
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        })
        .ok_or_else(|| NatsError::Seed {
            path: path.to_path_buf(),
            reason: "no NKey seed (58 characters starting with `S`) found".into(),
        })?;
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| NatsError::Seed {
        path: path.to_path_buf(),
        reason: format!("invalid seed: {e}"),
    })?;
    Ok((seed.to_string(), pair.public_key()))
}

#[cfg(test)]
#[path = "conf_tests.rs"]
mod tests;
