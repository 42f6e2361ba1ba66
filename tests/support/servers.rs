//! Real servers for the snapshot-store tests, each on a free loopback port in its own temporary directory,
//! killed (SIGKILL, by pid) when its guard drops, also when the test panics. Each start waits for readiness by
//! polling the port, and panics with the server's log when it does not come up.
//!
//! | server           | what runs |
//! |------------------|-----------|
//! | [`S3Server`]     | moto in server mode (`python3 -m moto.server`), any key pair accepted |
//! | [`WebDavServer`] | wsgidav on cheroot (`python3 -m wsgidav.server.server_cli`), one user with basic authentication, its root folder in the temporary directory |
//! | [`SftpServer`]   | OpenSSH's `sshd -D -e -f <generated config>` (run as root), password authentication for the dedicated user [`SFTP_USER`], `internal-sftp` only |
//! | [`NatsServer`]   | the bundled nats-server with JetStream, alone or three in a cluster, with extra config text (users, NKeys, TLS, leaf nodes) |
//!
//! scripts/test.sh installs what these need (pip: `moto[server]`, `wsgidav`, `cheroot`; apt: `openssh-server`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::{
    ChildGuard, Signal, child_pids, free_port, free_ports, pid_alive, poll, process_tree,
    read_lossy, send_signal, temp_dir,
};

/// How long a server may take to start.
const START: Duration = Duration::from_secs(60);

/// A server process with its directory and log.
struct Running {
    child: ChildGuard,
    dir: tempfile::TempDir,
    log: PathBuf,
    what: &'static str,
}

impl Running {
    fn spawn(what: &'static str, dir: tempfile::TempDir, cmd: Command) -> Running {
        let log = dir.path().join("server.log");
        let child = ChildGuard::spawn_logged(cmd, &log);
        Running {
            child,
            dir,
            log,
            what,
        }
    }

    /// Polls `ready` until it holds; panics with the log when the server exits or the time runs out.
    fn wait(&self, ready: impl Fn() -> bool) {
        let pid = self.child.pid();
        let up = poll(START, || {
            if !pid_alive(pid) {
                return Some(false);
            }
            ready().then_some(true)
        });
        match up {
            Some(true) => {}
            Some(false) => panic!("{} exited at start:\n{}", self.what, read_lossy(&self.log)),
            None => panic!(
                "{} not ready after {START:?}:\n{}",
                self.what,
                read_lossy(&self.log)
            ),
        }
    }
}

/// The status code of `GET path` on loopback `port`, if an HTTP server answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// The first line a server sends on connect on loopback `port` (SSH, NATS greet first).
fn greeting(port: u16) -> Option<String> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line)
}

/// Panics with the install command unless `python3` can import `module`.
fn need_python_module(module: &str, package: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python3 cannot import {module}: run scripts/test.sh, or python3 -m pip install '{package}'"
    );
}

fn random_word(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

/// moto's S3 API on `http://127.0.0.1:<port>`; it accepts any key pair.
pub struct S3Server {
    /// `host:port`, the `[snapshot.s3] endpoint`.
    pub endpoint: String,
    pub access_key: String,
    pub secret: String,
    run: Running,
}

impl S3Server {
    pub fn start() -> S3Server {
        need_python_module("moto.server", "moto[server]");
        let port = free_port();
        let dir = temp_dir("hl-s3-");
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .current_dir(dir.path());
        let run = Running::spawn("moto server", dir, cmd);
        run.wait(|| http_status(port, "/") == Some(200));
        S3Server {
            endpoint: format!("127.0.0.1:{port}"),
            access_key: format!("AKIA{}", random_word(16)),
            secret: random_word(40),
            run,
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.run.log)
    }
}

/// wsgidav serving its temporary directory at `http://127.0.0.1:<port>/dav`, for one user.
pub struct WebDavServer {
    /// `http://127.0.0.1:<port>/dav`.
    pub url: String,
    pub user: String,
    pub password: String,
    run: Running,
}

impl WebDavServer {
    pub fn start() -> WebDavServer {
        need_python_module("wsgidav, cheroot", "wsgidav cheroot");
        let port = free_port();
        let dir = temp_dir("hl-webdav-");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("create the WebDAV root");
        let (user, password) = ("hltest".to_string(), random_word(20));
        let config = serde_json::json!({
            "host": "127.0.0.1",
            "port": port,
            "server": "cheroot",
            "provider_mapping": { "/dav": root },
            "http_authenticator": {
                "domain_controller": null,
                "accept_basic": true,
                "accept_digest": false,
                "default_to_digest": false,
            },
            "simple_dc": { "user_mapping": { "*": { &user: { "password": &password } } } },
            "verbose": 1,
        });
        let config_path = dir.path().join("wsgidav.json");
        std::fs::write(&config_path, config.to_string()).expect("write the wsgidav config");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "wsgidav.server.server_cli", "-c"])
            .arg(&config_path)
            .current_dir(dir.path());
        let run = Running::spawn("wsgidav", dir, cmd);
        // Unauthenticated: 401 once it serves.
        run.wait(|| http_status(port, "/dav/").is_some());
        WebDavServer {
            url: format!("http://127.0.0.1:{port}/dav"),
            user,
            password,
            run,
        }
    }

    /// The folder served at `/dav`.
    pub fn root(&self) -> PathBuf {
        self.run.dir.path().join("root")
    }

    pub fn log(&self) -> String {
        read_lossy(&self.run.log)
    }
}

/// The account [`SftpServer`] logs in with: created when missing (a system user with no home and no shell,
/// marked by its comment [`SFTP_USER_COMMENT`]), given a new random password per test process, and deleted
/// when the last server of the process stops. An account of that name without the mark is never touched.
pub const SFTP_USER: &str = "hlsftp";
pub const SFTP_USER_COMMENT: &str = "HarmonyLite SFTP test user";

/// Users of the account in this process, and its password.
static SFTP_ACCOUNT: Mutex<(usize, String)> = Mutex::new((0, String::new()));

/// OpenSSH's sshd on `127.0.0.1:<port>`, SFTP only, password authentication for [`SFTP_USER`]. Needs root (to
/// create the account and to check passwords).
pub struct SftpServer {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// A directory owned by [`SFTP_USER`], removed with the server.
    pub home: PathBuf,
    /// The host key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    run: Running,
    /// Dropped after `run` (fields drop in order), once [`SftpServer`]'s `drop` has ended the sessions.
    _account: AccountShare,
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A share of the test account: taken by [`AccountShare::acquire`], given back when dropped (the last share
/// deletes the account).
struct AccountShare {
    password: String,
}

impl AccountShare {
    fn acquire() -> AccountShare {
        AccountShare {
            password: acquire_sftp_account(),
        }
    }
}

impl Drop for AccountShare {
    fn drop(&mut self) {
        release_sftp_account();
    }
}

/// Takes a share of the test account, creating it (and setting its password) for the first share.
fn acquire_sftp_account() -> String {
    let mut account = SFTP_ACCOUNT.lock().unwrap_or_else(|e| e.into_inner());
    if account.0 == 0 {
        match Command::new("getent").args(["passwd", SFTP_USER]).output() {
            Ok(o) if o.status.success() => {
                let entry = String::from_utf8_lossy(&o.stdout);
                assert!(
                    entry.split(':').nth(4) == Some(SFTP_USER_COMMENT),
                    "a user {SFTP_USER} exists that the tests did not create: {entry}"
                );
            }
            _ => {
                run_ok(Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    SFTP_USER_COMMENT,
                    SFTP_USER,
                ]));
            }
        }
        let password = random_word(24);
        let mut chpasswd = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        writeln!(chpasswd.stdin.take().unwrap(), "{SFTP_USER}:{password}").unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
        account.1 = password;
    }
    account.0 += 1;
    account.1.clone()
}

fn release_sftp_account() {
    let mut account = SFTP_ACCOUNT.lock().unwrap_or_else(|e| e.into_inner());
    account.0 -= 1;
    if account.0 == 0 {
        account.1.clear();
        // userdel refuses while a process of the user runs: the sessions' last processes may still be exiting.
        let mut last = String::new();
        let deleted = poll(Duration::from_secs(10), || {
            match Command::new("userdel").arg(SFTP_USER).output() {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    last = String::from_utf8_lossy(&o.stderr).into_owned();
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        if deleted.is_none() {
            eprintln!("could not delete the test user {SFTP_USER}: {last}");
        }
    }
}

impl SftpServer {
    pub fn start() -> SftpServer {
        SftpServer::start_with("")
    }

    /// With `sftp_args` for `internal-sftp` (see sftp-server(8)), e.g. `-P posix-rename` to deny a request.
    pub fn start_with(sftp_args: &str) -> SftpServer {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "no {}: run scripts/test.sh, or apt-get install openssh-server",
            sshd.display()
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the SFTP test runs sshd as root (password authentication of a dedicated user)"
        );
        // sshd's privilege separation directory, made by its service unit when there is one.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        // Declared before the server: on a panic below, sshd is killed first, then the share given back.
        let account = AccountShare::acquire();
        let dir = temp_dir("hl-sftp-");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("create the SFTP directory");
        let uid: u32 = run_ok(Command::new("id").args(["-u", SFTP_USER]))
            .trim()
            .parse()
            .expect("uid");
        std::os::unix::fs::chown(&home, Some(uid), None).expect("chown the SFTP directory");
        // The temporary directory is root's and 0700: let the user through to `home`.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o711);
        std::fs::set_permissions(dir.path(), perms).unwrap();

        let key = dir.path().join("host_ed25519_key");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let fingerprint = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(key.with_extension("pub")),
        )
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();

        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {key}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 PasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication no\n\
                 AuthorizedKeysFile none\n\
                 PermitRootLogin no\n\
                 AllowUsers {SFTP_USER}\n\
                 Subsystem sftp internal-sftp {sftp_args}\n\
                 ForceCommand internal-sftp {sftp_args}\n\
                 AllowTcpForwarding no\n\
                 X11Forwarding no\n\
                 PermitTTY no\n\
                 LogLevel INFO\n",
                key = key.display()
            ),
        )
        .expect("write sshd_config");
        run_ok(Command::new(sshd).arg("-t").arg("-f").arg(&config));
        let mut cmd = Command::new(sshd);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let run = Running::spawn("sshd", dir, cmd);
        run.wait(|| greeting(port).is_some_and(|l| l.starts_with("SSH-2.0-")));
        SftpServer {
            port,
            user: SFTP_USER.to_string(),
            password: account.password.clone(),
            home,
            fingerprint,
            run,
            _account: account,
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.run.log)
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        // sshd and its session processes (which run as the user).
        let tree = process_tree(self.run.child.pid());
        self.run.child.kill();
        for &pid in &tree[1..] {
            send_signal(pid, Signal::SIGKILL);
        }
        poll(Duration::from_secs(10), || {
            tree[1..].iter().all(|&pid| !pid_alive(pid))
        });
        // Then `_account` is dropped: the last share deletes the account.
    }
}

/// A standalone nats-server with JetStream (the bundled binary): alone for the NATS object store, or one of a
/// three-server cluster ([`NatsServer::cluster`]) standing for an existing NATS deployment. Its config file is
/// written by the kit, with the caller's extra text (users, NKeys, TLS, a leaf-node listener) appended.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// The client port.
    pub port: u16,
    run: Running,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// One server with `conf` (nats-server config text, e.g. `authorization { ... }` or `tls { ... }`) appended
    /// to the kit's (server name, loopback client port, JetStream in its temporary directory).
    pub fn start_with(conf: &str) -> NatsServer {
        let server = NatsServer::spawn(free_port(), conf, None);
        server.wait_listening();
        server
    }

    /// [`NatsServer::start_with`] with its JetStream in `domain` (what a leaf node reaches it through).
    pub fn start_in_domain(domain: &str, conf: &str) -> NatsServer {
        let server = NatsServer::spawn(free_port(), conf, Some(domain));
        server.wait_listening();
        server
    }

    /// Three servers in one JetStream cluster on loopback (random client and route ports), each with `conf`
    /// appended as in [`NatsServer::start_with`]. Returns once each accepts clients; JetStream elects its meta
    /// leader soon after (clients wait for it: a node's start-up does).
    pub fn cluster(conf: &str) -> Vec<NatsServer> {
        let routes = free_ports(3);
        let list = routes
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let servers: Vec<NatsServer> = routes
            .iter()
            .map(|route| {
                let cluster = format!(
                    "cluster {{\n  name: hl-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{list}]\n}}\n"
                );
                NatsServer::spawn(free_port(), &format!("{cluster}{conf}"), None)
            })
            .collect();
        for server in &servers {
            server.wait_listening();
        }
        servers
    }

    fn spawn(port: u16, conf: &str, domain: Option<&str>) -> NatsServer {
        let bin = harmonylite::nats::extract::server_binary().expect("extract nats-server");
        let dir = temp_dir("hl-nats-");
        let store = dir.path().join("js");
        let config = dir.path().join("nats-server.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: \"hl-test-{port}\"\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n{}}}\n{conf}\n",
                store.display(),
                domain
                    .map(|d| format!("  domain: \"{d}\"\n"))
                    .unwrap_or_default()
            ),
        )
        .expect("write the nats-server config");
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config);
        NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            run: Running::spawn("nats-server", dir, cmd),
        }
    }

    /// Waits until the server greets clients (also with TLS on: its INFO comes first, in clear).
    fn wait_listening(&self) {
        self.run
            .wait(|| greeting(self.port).is_some_and(|l| l.starts_with("INFO ")));
    }

    pub fn log(&self) -> String {
        read_lossy(&self.run.log)
    }
}

impl super::Cluster {
    /// Nodes on an existing NATS deployment: [`super::Cluster::new`] with `opts`, then node i joined to server
    /// i of `servers` (round robin) through `[nats] urls`, with short connection retries and no cluster flags
    /// (nothing embedded is spawned). Starts nothing.
    pub fn on_nats(servers: &[NatsServer], opts: super::Options) -> super::Cluster {
        let mut cluster = super::Cluster::new(opts);
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            node.peers.clear();
            node.add_toml(&format!(
                "[nats]\nurls = [\"{}\"]\nconnect_retries = 3\nreconnect_wait_seconds = 1\n",
                servers[i % servers.len()].url
            ));
        }
        cluster
    }
}
