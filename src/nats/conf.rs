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
    pub sync_always: bool,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum User {
    Password { user: String, password: String },
    Nkey { public_key: String },
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

        let mut js = Map::new().with("store_dir", path_value(&self.store_dir));
        if self.sync_always {
            js.insert("sync_interval", Value::raw("always"));
        }
        map.insert("jetstream", Value::Map(js));

        if let Some(cluster) = &self.cluster {
            let routes = cluster.routes.iter().map(Value::string).collect();
            map.insert(
                "cluster",
                Value::Map(
                    Map::new()
                        .with("name", Value::string(CLUSTER_NAME))
                        .with("listen", Value::string(&cluster.listen))
                        .with("routes", Value::Array(routes)),
                ),
            );
        }

        if !self.leaf_remotes.is_empty() {
            let remotes = self
                .leaf_remotes
                .iter()
                .map(|r| {
                    let mut remote = Map::new().with("urls", Value::Array(r.urls.iter().map(Value::string).collect()));
                    if r.hub {
                        remote.insert("hub", Value::raw("true"));
                    }
                    Value::Map(remote)
                })
                .collect();
            map.insert("leafnodes", Value::Map(Map::new().with("remotes", Value::Array(remotes))));
        }

        if !self.users.is_empty() {
            let users = self
                .users
                .iter()
                .map(|u| {
                    Value::Map(match u {
                        User::Password { user, password } => {
                            Map::new().with("user", Value::string(user)).with("password", Value::string(password))
                        }
                        User::Nkey { public_key } => Map::new().with("nkey", Value::string(public_key)),
                    })
                })
                .collect();
            map.insert("authorization", Value::Map(Map::new().with("users", Value::Array(users))));
        }

        if let Some(tls) = &self.tls {
            let mut t = Map::new().with("cert_file", path_value(&tls.cert_file)).with("key_file", path_value(&tls.key_file));
            if let Some(ca) = &tls.ca_file {
                t.insert("ca_file", path_value(ca));
            }
            map.insert("tls", Value::Map(t));
        }
        map
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
    if key == "leaf" { "leafnodes".into() } else { key }
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
        let child_path = if path.is_empty() { canonical(key) } else { format!("{path}.{}", canonical(key)) };
        match (ours.get_mut(key), value) {
            (Some(Value::Map(mine)), Value::Map(their_map)) => merge_at(mine, their_map, &child_path),
            (Some(Value::Map(_)), Value::Scalar(raw))
                if path.is_empty()
                    && key.eq_ignore_ascii_case("jetstream")
                    && ["enabled", "enable", "true", "on", "yes"].iter().any(|t| raw.trim_matches('"').eq_ignore_ascii_case(t)) => {}
            _ => ours.insert(key.clone(), value.clone()),
        }
    }
}

/// Reads and parses the user's `nats.server_config` file (includes resolved).
pub(crate) fn load_user_config(path: &Path) -> Result<Map, NatsError> {
    conf_syntax::parse_file(path).map_err(|e| NatsError::ServerConfig { file: e.file, line: e.line, message: e.message })
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
        out.push_str(&format!("# Merged with nats.server_config {} (its keys win).\n", p.display()));
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
    let text = std::fs::read_to_string(path)
        .map_err(|e| NatsError::Seed { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    let seed = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() == 58 && w.starts_with('S') && w.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)))
        .ok_or_else(|| NatsError::Seed { path: path.to_path_buf(), reason: "no NKey seed (58 characters starting with `S`) found".into() })?;
    let pair = nkeys::KeyPair::from_seed(seed)
        .map_err(|e| NatsError::Seed { path: path.to_path_buf(), reason: format!("invalid seed: {e}") })?;
    Ok((seed.to_string(), pair.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::conf_syntax::parse_str;

    fn spec() -> ServerSpec {
        ServerSpec {
            server_name: "harmonylite-node-7".into(),
            client_host: "0.0.0.0".into(),
            client_port: -1,
            monitor: true,
            ports_file_dir: "/data/nats/harmonylite-node-7".into(),
            store_dir: "/data/nats/harmonylite-node-7".into(),
            sync_always: true,
            cluster: Some(ClusterSpec {
                listen: "localhost:4221".into(),
                routes: vec!["nats://localhost:4222/".into(), "nats://127.0.0.1:4223/".into()],
            }),
            leaf_remotes: vec![LeafRemote { urls: vec!["nats://hub:7422/".into()], hub: true }],
            users: vec![
                User::Password { user: "harmonylite".into(), password: "p\"w#1".into() },
                User::Nkey { public_key: "UABC".into() },
            ],
            tls: Some(TlsFiles { cert_file: "/c.pem".into(), key_file: "/k.pem".into(), ca_file: None }),
        }
    }

    fn reparse(text: &str) -> Map {
        parse_str(text, Path::new("generated.conf")).unwrap()
    }

    fn get<'a>(map: &'a Map, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut cur = map.get(parts.next()?)?;
        for p in parts {
            let Value::Map(m) = cur else { return None };
            cur = m.get(p)?;
        }
        Some(cur)
    }

    fn text(map: &Map, path: &str) -> Option<String> {
        get(map, path).and_then(conf_syntax::unquote)
    }

    #[test]
    fn generates_every_setting() {
        let map = reparse(&render(&spec(), None, None));
        assert_eq!(text(&map, "server_name").unwrap(), "harmonylite-node-7");
        assert_eq!(text(&map, "listen").unwrap(), "0.0.0.0:-1");
        assert_eq!(text(&map, "http").unwrap(), "127.0.0.1:-1");
        assert_eq!(text(&map, "ports_file_dir").unwrap(), "/data/nats/harmonylite-node-7");
        assert_eq!(text(&map, "jetstream.store_dir").unwrap(), "/data/nats/harmonylite-node-7");
        assert_eq!(text(&map, "jetstream.sync_interval").unwrap(), "always");
        assert!(get(&map, "jetstream.max_memory_store").is_none());
        assert_eq!(text(&map, "cluster.name").unwrap(), "e-harmonylite");
        assert_eq!(text(&map, "cluster.listen").unwrap(), "localhost:4221");
        let Some(Value::Array(routes)) = get(&map, "cluster.routes") else { panic!() };
        assert_eq!(routes.len(), 2);
        let Some(Value::Array(remotes)) = get(&map, "leafnodes.remotes") else { panic!() };
        let Value::Map(remote) = &remotes[0] else { panic!() };
        assert_eq!(remote.get("hub"), Some(&Value::raw("true")));
        let Some(Value::Array(users)) = get(&map, "authorization.users") else { panic!() };
        let Value::Map(u0) = &users[0] else { panic!() };
        assert_eq!(conf_syntax::unquote(u0.get("password").unwrap()).unwrap(), "p\"w#1");
        assert_eq!(text(&map, "tls.cert_file").unwrap(), "/c.pem");
        assert!(get(&map, "tls.ca_file").is_none());
    }

    #[test]
    fn minimal_spec_has_no_cluster_leaf_auth_or_tls_and_no_sync_when_off() {
        let mut s = spec();
        s.cluster = None;
        s.leaf_remotes.clear();
        s.users.clear();
        s.tls = None;
        s.sync_always = false;
        s.client_host = "::".into();
        s.client_port = 4222;
        let map = reparse(&render(&s, None, None));
        for absent in ["cluster", "leafnodes", "authorization", "tls", "jetstream.sync_interval"] {
            assert!(get(&map, absent).is_none(), "{absent}");
        }
        assert_eq!(text(&map, "listen").unwrap(), "[::]:4222");
    }

    #[test]
    fn user_file_wins_key_by_key_and_merges_maps() {
        // The original's example file.
        let user = reparse(
            "monitor_port = 8222\njetstream { store_dir = \"/tmp/nats-1/jetstream/\"  max_memory_store = 50M  max_file_store = 5G }",
        );
        let map = reparse(&render(&spec(), Some(&user), Some(Path::new("/etc/n.conf"))));
        assert_eq!(text(&map, "jetstream.store_dir").unwrap(), "/tmp/nats-1/jetstream/");
        assert_eq!(text(&map, "jetstream.sync_interval").unwrap(), "always", "ours kept");
        assert_eq!(get(&map, "jetstream.max_memory_store"), Some(&Value::raw("50M")));
        assert_eq!(get(&map, "jetstream.max_file_store"), Some(&Value::raw("5G")));
        assert_eq!(get(&map, "monitor_port"), Some(&Value::raw("8222")));
        assert!(get(&map, "http").is_none(), "monitor_port replaces our http listener");
        assert_eq!(text(&map, "listen").unwrap(), "0.0.0.0:-1");
    }

    #[test]
    fn aliases_replace_ours_and_case_is_ignored() {
        let user = reparse("PORT: 4333\nJetStream { store: /x, sync: 1s }\ncluster { routes: [nats://other:1] }\nleaf { listen: 0.0.0.0:7422 }\n");
        let map = reparse(&render(&spec(), Some(&user), None));
        assert!(get(&map, "listen").is_none());
        assert_eq!(get(&map, "port"), Some(&Value::raw("4333")));
        assert!(get(&map, "jetstream.store_dir").is_none());
        assert!(get(&map, "jetstream.sync_interval").is_none());
        assert_eq!(get(&map, "jetstream.store"), Some(&Value::raw("/x")));
        let Some(Value::Array(routes)) = get(&map, "cluster.routes") else { panic!() };
        assert_eq!(routes, &vec![Value::raw("nats://other:1")], "arrays are replaced, not appended");
        assert_eq!(text(&map, "cluster.name").unwrap(), "e-harmonylite");
        assert!(get(&map, "leafnodes").is_none(), "`leaf` replaces our `leafnodes`");
        assert!(get(&map, "leaf.listen").is_some());
    }

    #[test]
    fn jetstream_scalars() {
        let enabled = reparse("jetstream: enabled\n");
        let map = reparse(&render(&spec(), Some(&enabled), None));
        assert_eq!(text(&map, "jetstream.store_dir").unwrap(), "/data/nats/harmonylite-node-7");
        let disabled = reparse("jetstream: false\n");
        let map = reparse(&render(&spec(), Some(&disabled), None));
        assert_eq!(get(&map, "jetstream"), Some(&Value::raw("false")));
    }

    #[test]
    fn ports_dir_follows_the_user() {
        assert_eq!(effective_ports_dir(&spec(), None), PathBuf::from("/data/nats/harmonylite-node-7"));
        let user = reparse("ports_file_dir: \"/run/p\"\n");
        assert_eq!(effective_ports_dir(&spec(), Some(&user)), PathBuf::from("/run/p"));
    }

    /// nats-server itself accepts what we generate (`-t` checks a config file and exits).
    #[test]
    fn nats_server_accepts_the_generated_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.tls = None; // `-t` would need real certificate files
        s.store_dir = dir.path().join("store");
        s.ports_file_dir = dir.path().to_path_buf();
        s.users.push(User::Nkey { public_key: nkeys::KeyPair::new_user().public_key() });
        s.users.retain(|u| !matches!(u, User::Nkey { public_key } if public_key == "UABC"));
        let user = reparse(
            "monitor_port = 8222\njetstream { store_dir = \"/tmp/nats-1/jetstream/\"  max_memory_store = 50M  max_file_store = 5G }",
        );
        for user in [None, Some(&user)] {
            let path = dir.path().join("n.conf");
            std::fs::write(&path, render(&s, user, None)).unwrap();
            let out = crate::nats::extract::run_bundled(&dir.path().join("bin"), &["-t".as_ref(), "-c".as_ref(), path.as_os_str()]);
            assert!(
                out.status.success(),
                "{}\n{}\n{}",
                render(&s, user, None),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn seed_files_plain_and_decorated() {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("user.nk");
        std::fs::write(&plain, format!("{seed}\n")).unwrap();
        assert_eq!(read_seed_file(&plain).unwrap(), (seed.clone(), pair.public_key()));
        let decorated = dir.path().join("user.creds");
        std::fs::write(
            &decorated,
            format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
        )
        .unwrap();
        assert_eq!(read_seed_file(&decorated).unwrap().1, pair.public_key());
        let bad = dir.path().join("bad.nk");
        std::fs::write(&bad, "hello").unwrap();
        assert!(matches!(read_seed_file(&bad), Err(NatsError::Seed { .. })));
    }
}
