//! Tests of the generated nats-server configuration and of the merge with the user's file.

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
        jetstream: true,
        domain: None,
        sync_always: true,
        max_payload: 1024 * 1024,
        cluster: Some(ClusterSpec {
            listen: "localhost:4221".into(),
            routes: vec![
                "nats://localhost:4222/".into(),
                "nats://127.0.0.1:4223/".into(),
            ],
            tls: None,
            secret: None,
        }),
        leaf_remotes: vec![LeafRemote {
            urls: vec!["nats://hub:7422/".into()],
            hub: true,
        }],
        users: vec![
            User::Password {
                user: "harmonylite".into(),
                password: "p\"w#1".into(),
            },
            User::Nkey {
                public_key: "UABC".into(),
            },
        ],
        tls: Some(TlsFiles {
            cert_file: "/c.pem".into(),
            key_file: "/k.pem".into(),
            ca_file: None,
        }),
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
    assert_eq!(
        text(&map, "ports_file_dir").unwrap(),
        "/data/nats/harmonylite-node-7"
    );
    assert_eq!(
        text(&map, "jetstream.store_dir").unwrap(),
        "/data/nats/harmonylite-node-7"
    );
    assert_eq!(text(&map, "jetstream.sync_interval").unwrap(), "always");
    assert!(get(&map, "jetstream.max_memory_store").is_none());
    assert_eq!(text(&map, "cluster.name").unwrap(), "e-harmonylite");
    assert_eq!(text(&map, "cluster.listen").unwrap(), "localhost:4221");
    let Some(Value::Array(routes)) = get(&map, "cluster.routes") else {
        panic!()
    };
    assert_eq!(routes.len(), 2);
    let Some(Value::Array(remotes)) = get(&map, "leafnodes.remotes") else {
        panic!()
    };
    let Value::Map(remote) = &remotes[0] else {
        panic!()
    };
    assert_eq!(remote.get("hub"), Some(&Value::raw("true")));
    let Some(Value::Array(users)) = get(&map, "authorization.users") else {
        panic!()
    };
    let Value::Map(u0) = &users[0] else { panic!() };
    assert_eq!(
        conf_syntax::unquote(u0.get("password").unwrap()).unwrap(),
        "p\"w#1"
    );
    assert_eq!(text(&map, "tls.cert_file").unwrap(), "/c.pem");
    assert!(get(&map, "tls.ca_file").is_none());
    assert!(
        get(&map, "cluster.tls").is_none(),
        "no route TLS unless set"
    );
}

#[test]
fn a_leaf_nodes_server_runs_without_jetstream() {
    let mut hub = spec();
    hub.domain = Some("hub".into());
    let map = reparse(&render(&hub, None, None));
    assert_eq!(text(&map, "jetstream.domain").unwrap(), "hub");
    let mut leaf = spec();
    leaf.jetstream = false;
    leaf.domain = Some("hub".into());
    leaf.leaf_remotes[0].hub = false;
    let map = reparse(&render(&leaf, None, None));
    assert!(get(&map, "jetstream").is_none(), "no jetstream block");
    assert!(get(&map, "leafnodes.remotes").is_some());
    assert_eq!(
        text(&map, "ports_file_dir").unwrap(),
        "/data/nats/harmonylite-node-7"
    );
}

#[test]
fn route_tls_verifies_peers_against_the_cluster_ca() {
    let mut s = spec();
    if let Some(cluster) = s.cluster.as_mut() {
        cluster.tls = Some(TlsFiles {
            cert_file: "/route.pem".into(),
            key_file: "/route.key".into(),
            ca_file: Some("/route-ca.pem".into()),
        });
    }
    let map = reparse(&render(&s, None, None));
    assert_eq!(text(&map, "cluster.tls.cert_file").unwrap(), "/route.pem");
    assert_eq!(text(&map, "cluster.tls.key_file").unwrap(), "/route.key");
    assert_eq!(text(&map, "cluster.tls.ca_file").unwrap(), "/route-ca.pem");
    assert_eq!(get(&map, "cluster.tls.verify"), Some(&Value::raw("true")));
    // The client port keeps its own files.
    assert_eq!(text(&map, "tls.cert_file").unwrap(), "/c.pem");
    assert!(get(&map, "tls.verify").is_none());
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
    for absent in [
        "cluster",
        "leafnodes",
        "authorization",
        "tls",
        "jetstream.sync_interval",
    ] {
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
    let map = reparse(&render(
        &spec(),
        Some(&user),
        Some(Path::new("/etc/n.conf")),
    ));
    assert_eq!(
        text(&map, "jetstream.store_dir").unwrap(),
        "/tmp/nats-1/jetstream/"
    );
    assert_eq!(
        text(&map, "jetstream.sync_interval").unwrap(),
        "always",
        "ours kept"
    );
    assert_eq!(
        get(&map, "jetstream.max_memory_store"),
        Some(&Value::raw("50M"))
    );
    assert_eq!(
        get(&map, "jetstream.max_file_store"),
        Some(&Value::raw("5G"))
    );
    assert_eq!(get(&map, "monitor_port"), Some(&Value::raw("8222")));
    assert!(
        get(&map, "http").is_none(),
        "monitor_port replaces our http listener"
    );
    assert_eq!(text(&map, "listen").unwrap(), "0.0.0.0:-1");
}

#[test]
fn aliases_replace_ours_and_case_is_ignored() {
    let user = reparse(
        "PORT: 4333\nJetStream { store: /x, sync: 1s }\ncluster { routes: [nats://other:1] }\nleaf { listen: 0.0.0.0:7422 }\n",
    );
    let map = reparse(&render(&spec(), Some(&user), None));
    assert!(get(&map, "listen").is_none());
    assert_eq!(get(&map, "port"), Some(&Value::raw("4333")));
    assert!(get(&map, "jetstream.store_dir").is_none());
    assert!(get(&map, "jetstream.sync_interval").is_none());
    assert_eq!(get(&map, "jetstream.store"), Some(&Value::raw("/x")));
    let Some(Value::Array(routes)) = get(&map, "cluster.routes") else {
        panic!()
    };
    assert_eq!(
        routes,
        &vec![Value::raw("nats://other:1")],
        "arrays are replaced, not appended"
    );
    assert_eq!(text(&map, "cluster.name").unwrap(), "e-harmonylite");
    assert!(
        get(&map, "leafnodes").is_none(),
        "`leaf` replaces our `leafnodes`"
    );
    assert!(get(&map, "leaf.listen").is_some());
}

#[test]
fn jetstream_scalars() {
    let enabled = reparse("jetstream: enabled\n");
    let map = reparse(&render(&spec(), Some(&enabled), None));
    assert_eq!(
        text(&map, "jetstream.store_dir").unwrap(),
        "/data/nats/harmonylite-node-7"
    );
    let disabled = reparse("jetstream: false\n");
    let map = reparse(&render(&spec(), Some(&disabled), None));
    assert_eq!(get(&map, "jetstream"), Some(&Value::raw("false")));
}

#[test]
fn ports_dir_follows_the_user() {
    assert_eq!(
        effective_ports_dir(&spec(), None),
        PathBuf::from("/data/nats/harmonylite-node-7")
    );
    let user = reparse("ports_file_dir: \"/run/p\"\n");
    assert_eq!(
        effective_ports_dir(&spec(), Some(&user)),
        PathBuf::from("/run/p")
    );
}

/// nats-server itself accepts what we generate (`-t` checks a config file and exits).
#[test]
fn nats_server_accepts_the_generated_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.tls = None; // `-t` would need real certificate files
    s.store_dir = dir.path().join("store");
    s.ports_file_dir = dir.path().to_path_buf();
    s.users.push(User::Nkey {
        public_key: nkeys::KeyPair::new_user().public_key(),
    });
    s.users
        .retain(|u| !matches!(u, User::Nkey { public_key } if public_key == "UABC"));
    let user = reparse(
        "monitor_port = 8222\njetstream { store_dir = \"/tmp/nats-1/jetstream/\"  max_memory_store = 50M  max_file_store = 5G }",
    );
    for user in [None, Some(&user)] {
        let path = dir.path().join("n.conf");
        std::fs::write(&path, render(&s, user, None)).unwrap();
        let out = crate::nats::extract::run_bundled(
            &dir.path().join("bin"),
            &["-t".as_ref(), "-c".as_ref(), path.as_os_str()],
        );
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
    assert_eq!(
        read_seed_file(&plain).unwrap(),
        (seed.clone(), pair.public_key())
    );
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

#[test]
fn user_debug_shows_no_password() {
    let u = User::Password {
        user: "harmonylite".into(),
        password: "hunter2-secret".into(),
    };
    let text = format!("{u:?}");
    assert!(
        text.contains("harmonylite") && !text.contains("hunter2-secret"),
        "{text}"
    );
}

#[test]
fn cluster_secret_is_the_route_authorization_and_every_route_presents_it() {
    let mut s = spec();
    if let Some(cluster) = s.cluster.as_mut() {
        cluster.secret = Some(RouteSecret("p@ss w/rd:\"x\"".into()));
    }
    let rendered = render(&s, None, None);
    let map = reparse(&rendered);
    assert_eq!(
        text(&map, "cluster.authorization.user").unwrap(),
        ROUTE_USER
    );
    assert_eq!(
        text(&map, "cluster.authorization.password").unwrap(),
        "p@ss w/rd:\"x\""
    );
    let Some(Value::Array(routes)) = get(&map, "cluster.routes") else {
        panic!("no routes in {rendered}");
    };
    let routes: Vec<String> = routes.iter().filter_map(conf_syntax::unquote).collect();
    assert_eq!(
        routes,
        [
            "nats://harmonylite-route:p%40ss%20w%2Frd%3A%22x%22@localhost:4222/",
            "nats://harmonylite-route:p%40ss%20w%2Frd%3A%22x%22@127.0.0.1:4223/",
        ]
    );
    assert!(!format!("{s:?}").contains("p@ss"), "Debug shows the secret");
}

#[test]
fn client_tls_with_a_ca_verifies_clients() {
    let mut s = spec();
    if let Some(tls) = s.tls.as_mut() {
        tls.ca_file = Some("/ca.pem".into());
    }
    let map = reparse(&render(&s, None, None));
    assert_eq!(get(&map, "tls.verify"), Some(&Value::raw("true")));
}
