//! Real hosts for partition tests: one network namespace per node, joined by veth pairs to a bridge in a hub
//! namespace, and partitions made by moving nodes' ports to a second, separate bridge. Every namespace is
//! removed when the [`Network`] is dropped (also when the test panics).
//!
//! Names are unique per run: `hl-<tag>-1`, `hl-<tag>-2`, ... and `hl-<tag>-hub`, with a random tag; node `i`
//! has the address `10.<a>.<b>.<i>/24` (`a`, `b` random too) on its `eth0`, and `lo` up (the node's client
//! port stays on loopback inside its namespace). Needs root (`CAP_NET_ADMIN`) and the `ip` tool.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Command;

use super::cluster::Cluster;

/// `ip ARGS`; its stderr as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, panicking on failure.
fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Random bytes from the kernel.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// The network namespaces whose names start with `prefix` (from `ip netns list`).
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// N nodes' namespaces on one hub; see the module's documentation.
pub struct Network {
    /// `hl-<tag>-`: every namespace of this network starts with it.
    prefix: String,
    hub: String,
    /// Node namespaces, node 1 first.
    nodes: Vec<String>,
    /// The first two bytes after `10.` of every node's address.
    subnet: [u8; 2],
    /// Nodes whose port sits on the hub's second bridge (cut off from the others).
    cut: BTreeSet<usize>,
    /// Every namespace created so far (removed on drop).
    created: Vec<String>,
}

impl Network {
    /// Creates the hub and `n` node namespaces, all connected. `Err` with a reason to skip when the test cannot
    /// make namespaces here (not root, no `ip`, `ip netns add` refused); panics when a later step fails.
    pub fn create(n: usize) -> Result<Network, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        let [t0, t1, t2, a, b] = random::<5>();
        let prefix = format!("hl-{t0:02x}{t1:02x}{t2:02x}-");
        let mut net = Network {
            hub: format!("{prefix}hub"),
            nodes: (1..=n).map(|i| format!("{prefix}{i}")).collect(),
            prefix,
            subnet: [a, b],
            cut: BTreeSet::new(),
            created: Vec::new(),
        };
        let hub = net.hub.clone();
        ip(&["netns", "add", &hub])
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        net.created.push(hub.clone());
        for br in ["br0", "br1"] {
            must(&["-n", &hub, "link", "add", br, "type", "bridge"]);
            must(&["-n", &hub, "link", "set", br, "up"]);
        }
        for i in 1..=n {
            let ns = net.nodes[i - 1].clone();
            let port = format!("v{i}");
            let addr = format!("{}/24", net.addr(i));
            must(&["netns", "add", &ns]);
            net.created.push(ns.clone());
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            must(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        Ok(net)
    }

    /// [`Network::create`], or `None` after printing `SKIPPED: <reason>` (the test then passes without running).
    pub fn create_or_skip(n: usize) -> Option<Network> {
        match Network::create(n) {
            Ok(net) => Some(net),
            Err(reason) => {
                println!("SKIPPED: {reason}");
                None
            }
        }
    }

    /// Ends a test: the applications stopped, the cluster's nodes killed, then every namespace removed; panics
    /// when one is left behind.
    pub fn remove_after(self, apps: super::oracle::Apps, c: Cluster) {
        let prefix = self.prefix.clone();
        drop(apps);
        drop(c);
        drop(self);
        let left = namespaces_with_prefix(&prefix);
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }

    /// `hl-<tag>-`: the start of every namespace name of this network (see [`namespaces_with_prefix`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node `i`'s namespace (1-based).
    pub fn namespace(&self, i: usize) -> &str {
        &self.nodes[i - 1]
    }

    /// Node `i`'s address (1-based), without the prefix length.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.{}.{i}", self.subnet[0], self.subnet[1])
    }

    /// Puts the stopped nodes of `c` on this network: node `i` runs in namespace `i`, its `-cluster-addr` on its
    /// address, its `-cluster-peers` the others' addresses (ports as the cluster chose them).
    pub fn place(&self, c: &mut Cluster) {
        assert_eq!(c.nodes.len(), self.nodes.len(), "one namespace per node");
        let ports: Vec<u16> = c.nodes.iter().map(|n| n.cluster_port).collect();
        for (k, node) in c.nodes.iter_mut().enumerate() {
            assert!(node.pid().is_none(), "node {} is running", node.id);
            let i = k + 1;
            node.netns = Some(self.namespace(i).to_string());
            node.cluster_host = self.addr(i);
            node.peers = (1..=ports.len())
                .filter(|j| *j != i)
                .map(|j| ports[j - 1])
                .collect();
            node.peer_hosts = (1..=ports.len())
                .filter(|j| *j != i)
                .map(|j| self.addr(j))
                .collect();
            node.write_config();
        }
    }

    /// Splits the network in two: the nodes in `side` (1-based) reach each other only, the rest each other
    /// only (their hub ports move to a second bridge; packets between the sides are dropped, nothing is reset).
    pub fn partition(&mut self, side: &[usize]) {
        self.heal();
        for &i in side {
            self.attach(i, "br1");
            self.cut.insert(i);
        }
    }

    /// Joins every node again (all hub ports on the first bridge).
    pub fn heal(&mut self) {
        for i in std::mem::take(&mut self.cut) {
            self.attach(i, "br0");
        }
    }

    /// Moves node `i`'s hub port to `bridge`.
    fn attach(&self, i: usize, bridge: &str) {
        let port = format!("v{i}");
        must(&["-n", &self.hub, "link", "set", &port, "master", bridge]);
    }

    /// Runs `f` on a thread inside node `i`'s namespace (1-based), e.g. [`super::Node::stream_info`], which
    /// reaches the node's client port on that namespace's loopback.
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.namespace(i));
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: `ns` is an open namespace file; setns moves this thread only.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether process `pid` runs in node `i`'s namespace (1-based).
    pub fn holds(&self, i: usize, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let theirs = ino(format!("/proc/{pid}/ns/net"));
        theirs.is_some() && theirs == ino(format!("/run/netns/{}", self.namespace(i)))
    }

    /// The nodes cut off by the last [`Network::partition`] (empty when healed).
    pub fn cut_off(&self) -> Vec<usize> {
        self.cut.iter().copied().collect()
    }
}

impl Drop for Network {
    /// Removes every namespace (their veth pairs and bridges go with them). A namespace still holding a process
    /// lives on until that process ends, but under no name.
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("network namespace {ns} not removed: {e}");
            }
        }
    }
}
