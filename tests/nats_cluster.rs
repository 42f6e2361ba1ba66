//! The embedded NATS layer on real processes: a three-node JetStream cluster in one test process, restart of a
//! killed nats-server, concurrent extraction from several processes, and no nats-server left behind when its
//! parent is killed with SIGKILL.
//!
//! Some tests re-run this test binary as a helper process (`helper_*` tests, inert unless their environment
//! variable is set).

mod support;

use std::num::NonZeroU64;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use harmonylite::config::{self, Config, Overrides};
use harmonylite::nats::{ClusterFlags, Nats, extract};

use support::{
    ChildGuard, PidGuard, eventually, eventually_async, free_ports, output_retrying, pid_alive,
    reexec_test, temp_dir,
};

const ENV_EXTRACT_DIR: &str = "HARMONYLITE_TEST_EXTRACT_GO";
const ENV_PARENT_DIR: &str = "HARMONYLITE_TEST_PARENT_DIR";

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// Defaults of the real loader, with a database in `dir`, loopback-only client port and a shorter timeout.
fn node_config(dir: &Path, node_id: u64) -> Config {
    let (mut cfg, _) = config::load(None, &Overrides::default()).expect("default config");
    cfg.node_id = node_id;
    cfg.db_path = dir.join("node.db");
    cfg.nats.bind_address = "127.0.0.1:-1".into();
    cfg.nats.ready_timeout_seconds = NonZeroU64::new(40).unwrap();
    cfg
}

async fn publish_acked(nats: &Nats, subject: &str, payload: &'static str) -> Result<u64, String> {
    let ack = nats
        .jetstream
        .publish(subject.to_string(), payload.into())
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(3), ack)
        .await
        .map_err(|_| "no ack within 3 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_embedded_nodes_form_a_cluster_and_replicate() {
    init_logging();
    let dirs: Vec<_> = (0..3).map(|_| temp_dir("hl-nats-cluster-")).collect();
    let ports = free_ports(3);
    let flags: Vec<ClusterFlags> = (0..3)
        .map(|i| ClusterFlags {
            cluster_addr: Some(format!("127.0.0.1:{}", ports[i])),
            cluster_peers: (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}/", ports[j]))
                .collect(),
            leaf_servers: Vec::new(),
        })
        .collect();
    let cfgs: Vec<Config> = (0..3)
        .map(|i| node_config(dirs[i].path(), 101 + i as u64))
        .collect();

    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        Nats::start(&cfgs[0], &flags[0]),
        Nats::start(&cfgs[1], &flags[1]),
        Nats::start(&cfgs[2], &flags[2])
    );
    let nodes = [a.expect("node 1"), b.expect("node 2"), c.expect("node 3")];
    eprintln!("three-node cluster ready in {:?}", started.elapsed());
    for node in &nodes {
        assert!(node.is_embedded());
        assert_eq!(node.cluster_size_hint(), 3);
        assert!(node.server_pid().is_some_and(pid_alive));
        assert_eq!(node.server_restarts(), 0);
    }
    // The generated config landed beside the data, with our server name.
    let conf =
        std::fs::read_to_string(dirs[0].path().join("nats/harmonylite-node-101.conf")).unwrap();
    assert!(
        conf.contains("server_name: \"harmonylite-node-101\""),
        "{conf}"
    );

    // An R3 stream created through node 1, written through node 1, read back through node 3.
    let stream = nodes[0]
        .jetstream
        .create_stream(stream::Config {
            name: "nats-cluster-test".into(),
            subjects: vec!["nct.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create R3 stream");
    assert_eq!(stream.cached_info().config.num_replicas, 3);
    let seq = publish_acked(&nodes[0], "nct.1", "hello from node 1")
        .await
        .expect("publish");
    let mut on_node3 = nodes[2]
        .jetstream
        .get_stream("nats-cluster-test")
        .await
        .expect("stream via node 3");
    let info = on_node3.info().await.expect("stream info via node 3");
    let cluster = info.cluster.as_ref().expect("cluster info");
    assert_eq!(
        cluster.replicas.len(),
        2,
        "leader plus two replicas: {cluster:?}"
    );
    let msg = on_node3
        .get_last_raw_message_by_subject("nct.1")
        .await
        .expect("read via node 3");
    assert_eq!(msg.sequence, seq);
    assert_eq!(&msg.payload[..], b"hello from node 1");

    // External mode against node 2's client port: no server spawned, cluster size from the advertised URLs.
    let mut ext_cfg = node_config(dirs[1].path(), 999);
    ext_cfg.nats.urls = vec![format!(
        "nats://127.0.0.1:{}",
        nodes[1].client_port().unwrap()
    )];
    let external = Nats::start(&ext_cfg, &ClusterFlags::default())
        .await
        .expect("external connect");
    assert!(!external.is_embedded());
    assert_eq!(external.server_pid(), None);
    assert_eq!(external.cluster_size_hint(), 3);
    publish_acked(&external, "nct.2", "via external client")
        .await
        .expect("publish via external client");
    external.shutdown().await;

    let pids: Vec<u32> = nodes.iter().map(|n| n.server_pid().unwrap()).collect();
    let stopping = Instant::now();
    for node in nodes {
        node.shutdown().await;
    }
    for pid in pids {
        assert!(
            !pid_alive(pid),
            "nats-server {pid} still running after shutdown"
        );
    }
    eprintln!("three nodes stopped in {:?}", stopping.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_restarted_on_the_same_port() {
    init_logging();
    let dir = temp_dir("hl-nats-restart-");
    let nats = Nats::start(&node_config(dir.path(), 201), &ClusterFlags::default())
        .await
        .expect("start");
    assert_eq!(nats.cluster_size_hint(), 1);
    nats.jetstream
        .create_stream(stream::Config {
            name: "restart-test".into(),
            subjects: vec!["rt.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    publish_acked(&nats, "rt.1", "before")
        .await
        .expect("publish before the kill");

    let old_pid = nats.server_pid().expect("server pid");
    let port = nats.client_port().expect("client port");
    let _guard = PidGuard {
        pid: old_pid,
        name: "nats-server",
    };
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let new_pid = eventually(Duration::from_secs(15), "nats-server restarted", || {
        nats.server_pid()
            .filter(|&p| p != old_pid && nats.server_restarts() == 1)
    });
    let _guard2 = PidGuard {
        pid: new_pid,
        name: "nats-server",
    };
    let seq = eventually_async(
        Duration::from_secs(20),
        "a publish acknowledged after the restart",
        || {
            let nats = &nats;
            async move { publish_acked(nats, "rt.2", "after").await.ok() }
        },
    )
    .await;
    eprintln!(
        "restarted and publishing again after {:?}",
        killed.elapsed()
    );
    assert_eq!(seq, 2, "the message stored before the kill survived");
    assert_eq!(nats.server_restarts(), 1);
    assert_eq!(
        nats.client_port(),
        Some(port),
        "the client port is kept across restarts"
    );

    nats.shutdown().await;
    assert!(!pid_alive(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_requires_the_configured_credentials() {
    init_logging();
    let dir = temp_dir("hl-nats-auth-");
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let mut cfg = node_config(dir.path(), 601);
    cfg.nats.user_name = "harmonylite".into();
    cfg.nats.user_password = "s3cret \"#quoted".into();
    cfg.nats.seed_file = Some(seed_file);
    // The node itself connects with its NKey.
    let nats = Nats::start(&cfg, &ClusterFlags::default())
        .await
        .expect("start with auth");
    let url = format!("nats://127.0.0.1:{}", nats.client_port().unwrap());

    let anonymous = async_nats::ConnectOptions::new()
        .connect(url.as_str())
        .await;
    assert!(
        anonymous.is_err(),
        "a client without credentials is refused"
    );
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("harmonylite".into(), "nope".into())
            .connect(url.as_str())
            .await;
    assert!(wrong.is_err(), "a wrong password is refused");

    // External mode with user and password against the same server.
    let mut ext = node_config(dir.path(), 602);
    ext.nats.urls = vec![url.clone()];
    ext.nats.user_name = cfg.nats.user_name.clone();
    ext.nats.user_password = cfg.nats.user_password.clone();
    let external = Nats::start(&ext, &ClusterFlags::default())
        .await
        .expect("password login");
    external.shutdown().await;

    // External mode that cannot log in fails at once (retrying cannot help), naming the servers and the cause.
    ext.nats.user_password = "nope".into();
    ext.nats.connect_retries = 2;
    ext.nats.reconnect_wait_seconds = 0;
    let err = Nats::start(&ext, &ClusterFlags::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, harmonylite::nats::NatsError::Refused { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&url) && text.contains("authorization violation"),
        "{text}"
    );
    nats.shutdown().await;
}

/// Ctrl+C in a terminal reaches nats-server too: its clean exit must not race our own shutdown with a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_server_waits_for_our_shutdown_instead_of_restarting() {
    init_logging();
    let dir = temp_dir("hl-nats-sigint-");
    let nats = Nats::start(&node_config(dir.path(), 202), &ClusterFlags::default())
        .await
        .expect("start");
    let pid = nats.server_pid().expect("pid");
    let _guard = PidGuard {
        pid,
        name: "nats-server",
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the interrupted nats-server to exit",
        || nats.server_pid().is_none().then_some(()),
    );
    assert!(!pid_alive(pid));
    assert_eq!(
        nats.server_restarts(),
        0,
        "not restarted while the grace period runs"
    );
    let stopping = Instant::now();
    nats.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(7),
        "shutdown ends the grace period at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_times_out_naming_the_unreachable_peers() {
    init_logging();
    let dir = temp_dir("hl-nats-notready-");
    let ports = free_ports(3);
    let flags = ClusterFlags {
        cluster_addr: Some(format!("127.0.0.1:{}", ports[0])),
        cluster_peers: vec![
            format!("nats://127.0.0.1:{}/", ports[1]),
            format!("nats://127.0.0.1:{}/", ports[2]),
        ],
        leaf_servers: Vec::new(),
    };
    let mut cfg = node_config(dir.path(), 401);
    cfg.nats.ready_timeout_seconds = NonZeroU64::new(3).unwrap();
    let started = Instant::now();
    let err = Nats::start(&cfg, &flags)
        .await
        .expect_err("no quorum without peers");
    let elapsed = started.elapsed();
    let text = err.to_string();
    eprintln!("after {elapsed:?}: {text}");
    assert!(
        matches!(err, harmonylite::nats::NatsError::NotReady { .. }),
        "{text}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the timeout bounds start-up: {elapsed:?}"
    );
    for port in &ports[1..] {
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "names the unreachable peer {port}: {text}"
        );
    }
    assert!(text.contains("1 server(s) connected"), "{text}");
    // The failed start stopped its server: nothing listens on the cluster port any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_server_config_fails_start_with_a_precise_error() {
    init_logging();
    let dir = temp_dir("hl-nats-badconf-");
    let mut cfg = node_config(dir.path(), 501);

    // Our parser rejects broken syntax, naming the user's file and line.
    let broken = dir.path().join("broken.conf");
    std::fs::write(
        &broken,
        "monitor_port = 8222\njetstream {\n  store_dir: /x\n",
    )
    .unwrap();
    cfg.nats.server_config = Some(broken.clone());
    let err = Nats::start(&cfg, &ClusterFlags::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("broken.conf:4") && text.contains("missing `}`"),
        "{text}"
    );

    // nats-server rejects what it does not know: start-up fails with its own message, nothing left running.
    let unknown = dir.path().join("unknown.conf");
    std::fs::write(&unknown, "no_such_option: 1\n").unwrap();
    cfg.nats.server_config = Some(unknown);
    let err = Nats::start(&cfg, &ClusterFlags::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, harmonylite::nats::NatsError::ServerExited { .. }),
        "{text}"
    );
    assert!(
        text.contains("exit status 1") && text.contains("unknown field \"no_such_option\""),
        "{text}"
    );
}

/// `-cluster-addr` without peers (the demo's first node) starts, and forms a cluster once a peer that knows it
/// connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_node_without_peers_forms_a_cluster_when_a_peer_joins() {
    init_logging();
    let dir = temp_dir("hl-nats-first-");
    let cfg = node_config(dir.path(), 601);
    // -cluster-addr without peers (the demo's first node): it starts and forms a cluster once a peer that
    // knows it connects.
    let ports = free_ports(2);
    let first = ClusterFlags {
        cluster_addr: Some(format!("127.0.0.1:{}", ports[0])),
        ..Default::default()
    };
    let second = ClusterFlags {
        cluster_addr: Some(format!("127.0.0.1:{}", ports[1])),
        cluster_peers: vec![format!("nats://127.0.0.1:{}/", ports[0])],
        ..Default::default()
    };
    let dir2 = temp_dir("hl-nats-second-");
    let cfg2 = node_config(dir2.path(), 602);
    let (a, b) = tokio::join!(Nats::start(&cfg, &first), Nats::start(&cfg2, &second));
    let (a, b) = (
        a.expect("first node without peers"),
        b.expect("second node"),
    );
    assert_eq!(b.cluster_size_hint(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// Helper process for [`concurrent_extractions_yield_one_verified_binary`]: waits for a go file, then extracts
/// to `$XDG_CACHE_HOME/harmonylite` and prints the path.
#[test]
fn helper_process_extract() {
    let Some(go) = std::env::var_os(ENV_EXTRACT_DIR) else {
        return;
    };
    let go = Path::new(&go);
    eventually(Duration::from_secs(20), "the go file", || {
        go.exists().then_some(())
    });
    let path = extract::server_binary().expect("extract");
    println!("EXTRACTED={}", path.display());
}

#[test]
fn concurrent_extractions_yield_one_verified_binary() {
    let cache = temp_dir("hl-nats-xdg-");
    let go = cache.path().join("go");
    let mut helpers: Vec<ChildGuard> = (0..3)
        .map(|_| {
            let mut cmd = reexec_test("helper_process_extract");
            cmd.env(ENV_EXTRACT_DIR, &go)
                .env("XDG_CACHE_HOME", cache.path())
                .env_remove(extract::ENV_NATS_BIN);
            ChildGuard::spawn(cmd)
        })
        .collect();
    std::fs::write(&go, b"go").unwrap();
    // Threads of this process join in as well.
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let dir = cache.path().join("harmonylite");
            std::thread::spawn(move || extract::extract_to(&dir).expect("extract in a thread"))
        })
        .collect();

    let expected = cache
        .path()
        .join("harmonylite")
        .join(extract::binary_name());
    for helper in &mut helpers {
        assert_eq!(Path::new(&helper.wait_for_line("EXTRACTED=")), expected);
    }
    for helper in helpers {
        assert!(helper.wait().success());
    }
    for thread in threads {
        assert_eq!(thread.join().unwrap(), expected);
    }
    let bytes = std::fs::read(&expected).unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        extract::BUNDLED_SHA256
    );
    let out = output_retrying(std::process::Command::new(&expected).arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(extract::BUNDLED_VERSION));
    let names: Vec<String> = std::fs::read_dir(expected.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".nats-server-") || !n.ends_with(".lock"))
        .collect();
    assert_eq!(
        names,
        vec![extract::binary_name()],
        "only the binary (and its lock file) remain"
    );
}

#[test]
fn extraction_falls_back_to_the_temp_dir_when_the_cache_is_unusable() {
    let tmp = temp_dir("hl-nats-tmpdir-");
    let go = tmp.path().join("go");
    std::fs::write(&go, b"go").unwrap();
    let mut cmd = reexec_test("helper_process_extract");
    cmd.env(ENV_EXTRACT_DIR, &go)
        .env("XDG_CACHE_HOME", "/dev/null/cache")
        .env("TMPDIR", tmp.path())
        .env_remove(extract::ENV_NATS_BIN);
    let mut helper = ChildGuard::spawn(cmd);
    let path = helper.wait_for_line("EXTRACTED=");
    assert!(helper.wait().success());
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let expected = tmp
        .path()
        .join(format!("harmonylite-{uid}"))
        .join(extract::binary_name());
    assert_eq!(Path::new(&path), expected);
}

/// Helper process for [`killing_the_parent_leaves_no_nats_server`]: starts a single embedded node in the given
/// directory, prints the nats-server pid, then waits to be killed (exits by itself after 60 s).
#[test]
fn helper_process_embedded_parent() {
    let Some(dir) = std::env::var_os(ENV_PARENT_DIR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let nats = Nats::start(&node_config(Path::new(&dir), 301), &ClusterFlags::default())
            .await
            .expect("start");
        println!("NATS_PID={}", nats.server_pid().expect("pid"));
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn killing_the_parent_leaves_no_nats_server() {
    let dir = temp_dir("hl-nats-parent-");
    let mut cmd = reexec_test("helper_process_embedded_parent");
    cmd.env(ENV_PARENT_DIR, dir.path())
        .env_remove(extract::ENV_NATS_BIN);
    let mut parent = ChildGuard::spawn(cmd);
    let nats_pid: u32 = parent.wait_for_line("NATS_PID=").parse().expect("pid");
    let _guard = PidGuard {
        pid: nats_pid,
        name: "nats-server",
    };
    assert!(pid_alive(nats_pid));

    let killed = Instant::now();
    parent.kill(); // SIGKILL: no chance to clean up
    eventually(
        Duration::from_secs(10),
        "nats-server to die with its parent",
        || (!pid_alive(nats_pid)).then_some(()),
    );
    eprintln!(
        "nats-server gone {:?} after its parent was killed",
        killed.elapsed()
    );
}
