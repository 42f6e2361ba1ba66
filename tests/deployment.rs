//! Deployment as users do it: the release archive, from `scripts/release.sh` to the quick start, and the
//! systemd notification protocol the example unit relies on.
//!
//! The quick-start test runs the README's steps 2–5 word for word: `cd examples && ./run-cluster.sh` from the
//! extracted archive, with a PATH that holds no cargo and a directory that holds no source. The demo uses fixed
//! paths (`/tmp/harmonylite-N.db`) and ports (4221–4223, 3010–3012, 8090–8092), so it runs in a network and
//! mount namespace of its own (`unshare`, root only) with a private `/tmp`: it cannot meet a demo or a test
//! running beside it. Where namespaces cannot be made, the archive is still built and checked, and the test
//! says that the quick start was skipped.

mod support;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    ChildGuard, Node, Signal, eventually, eventually_or, last_lines, output_text, pid_alive, poll,
    process_tree, read_lossy, send_signal, temp_dir,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Directories a Debian system keeps its programs in: no cargo, no checkout.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `scripts/release.sh` once and returns the archive it made.
fn release_archive() -> PathBuf {
    let archive = support::release_archive();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        archive.file_name().unwrap().to_str().unwrap(),
        format!("harmonylite-v{version}-linux-amd64.tar.gz")
    );
    archive
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a command");
    let text = output_text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The demo started from the extracted archive, in namespaces of its own; its processes are killed on drop.
struct Demo {
    script: ChildGuard,
    log: PathBuf,
}

impl Demo {
    /// Whether this process may make network and mount namespaces.
    fn possible() -> Result<(), String> {
        let out = Command::new("unshare")
            .args(["--net", "--mount", "true"])
            .output()
            .map_err(|e| format!("unshare: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(output_text(&out).trim().to_string())
        }
    }

    /// Step 2: `cd examples && ./run-cluster.sh`, in `dir` (seen as `/mnt` inside), with loopback up and an empty
    /// private `/tmp`.
    fn start(dir: &Path) -> Demo {
        let log = dir.join("run-cluster.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--mount", "--propagation", "private", "--"])
            .args(["bash", "-c"])
            // The extracted directory may itself be under /tmp (a checkout there): it is bind-mounted on /mnt
            // first, so that the private /tmp does not hide it.
            .arg(
                "set -e; ip link set lo up; mount --bind \"$DEMO_DIR\" /mnt; mount -t tmpfs tmpfs /tmp; \
                 cd /mnt/examples; exec ./run-cluster.sh",
            )
            .env_clear()
            .env("DEMO_DIR", dir)
            .env("PATH", SYSTEM_PATH)
            .env("HOME", "/mnt/home")
            .env("HARMONYLITE_LOG", "info");
        // As in a terminal, Ctrl+C must reach the script: a process started in the background of a
        // non-interactive shell (a CI runner's job) inherits SIGINT ignored, and bash cannot trap a signal
        // ignored on entry.
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl)
                    .map(|_| ())
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            });
        }
        Demo {
            script: ChildGuard::spawn_logged(cmd, &log),
            log,
        }
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    fn tail(&self) -> String {
        last_lines(&self.log_text(), 60)
    }

    /// `sqlite3 <db>` inside the demo's namespaces, `input` on its standard input (as typed in the shell).
    fn sqlite3(&self, db: &str, input: &str) -> Result<String, String> {
        let mut child = Command::new("nsenter")
            .args([
                "--target",
                &self.script.pid().to_string(),
                "--mount",
                "--net",
                "--",
            ])
            .args(["sqlite3", db])
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(output_text(&out))
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The script, its nodes and their nats-servers; the namespaces and the tmpfs go with the last of them.
        let tree = process_tree(self.script.pid());
        for &pid in tree.iter().rev() {
            send_signal(pid, Signal::SIGKILL);
        }
        poll(Duration::from_secs(10), || {
            tree[1..].iter().all(|&pid| !pid_alive(pid))
        });
    }
}

/// The release archive holds what the quick start expects, and its quick start (steps 2–5) works from it.
#[test]
fn release_archive_runs_the_quick_start() {
    let archive = release_archive();
    let dist = archive.parent().unwrap();
    let name = archive.file_name().unwrap().to_str().unwrap();
    run(Command::new("sha256sum")
        .args(["--check", &format!("{name}.sha256")])
        .current_dir(dist));

    let listing = run(Command::new("tar").arg("tzf").arg(&archive));
    let mut entries: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "LICENSE",
            "README.md",
            "config.toml",
            "examples",
            "examples/demo-books.sql",
            "examples/harmonylite.service",
            "examples/nats-server-1.conf",
            "examples/nats-server-2.conf",
            "examples/nats-server-3.conf",
            "examples/node-1-config.toml",
            "examples/node-2-config.toml",
            "examples/node-3-config.toml",
            "examples/run-cluster.sh",
            "harmonylite",
        ]
    );

    // Step 1 (after the download): extract into an empty directory outside the checkout (under /tmp, which
    // the demo's private /tmp hides: Demo::start reaches it through /mnt).
    let scratch = temp_dir("hl-release-");
    let dir = scratch.path();
    run(Command::new("tar")
        .args(["vxzf"])
        .arg(&archive)
        .current_dir(dir));
    let binary = dir.join("harmonylite");
    let symbols = output_text(&Command::new("nm").arg(&binary).output().unwrap());
    assert!(
        symbols.contains("no symbols"),
        "the archive's binary is not stripped: {}",
        last_lines(&symbols, 3)
    );
    let version = run(Command::new(&binary)
        .arg("-version")
        .env_clear()
        .env("PATH", SYSTEM_PATH));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "-version printed {version:?}"
    );

    if let Err(why) = Demo::possible() {
        println!(
            "SKIPPED the quick start from the archive: cannot make network and mount namespaces \
             (run as root): {why}"
        );
        return;
    }
    let demo = Demo::start(dir);
    eventually_or(
        Duration::from_secs(120),
        "the three demo nodes run",
        || demo.tail(),
        || demo.log_text().matches("node running").count() >= 3,
    );
    // Step 3, as typed in the sqlite3 shell.
    demo.sqlite3(
        "/tmp/harmonylite-1.db",
        "PRAGMA trusted_schema = ON; -- Enables triggers required by HarmonyLite\n\
         INSERT INTO Books (title, author, publication_year) VALUES ('Pride and Prejudice', 'Jane Austen', 1813);\n\
         .exit\n",
    )
    .unwrap_or_else(|e| panic!("step 3 failed: {e}\n{}", demo.tail()));
    // Steps 4 and 5.
    for db in ["/tmp/harmonylite-2.db", "/tmp/harmonylite-3.db"] {
        let row = eventually_or(
            Duration::from_secs(30),
            &format!("the new book in {db}"),
            || demo.tail(),
            || {
                demo.sqlite3(
                    db,
                    "SELECT * FROM Books WHERE title = 'Pride and Prejudice';\n.exit\n",
                )
                .ok()
                .filter(|out| !out.trim().is_empty())
            },
        );
        assert_eq!(row.trim(), "8|Pride and Prejudice|Jane Austen|1813", "{db}");
    }
    // Ctrl+C stops every node.
    let script = demo.script.pid();
    let nodes = support::child_pids(script);
    assert_eq!(nodes.len(), 3, "run-cluster.sh runs three nodes: {nodes:?}");
    send_signal(script, Signal::SIGINT);
    eventually_or(
        Duration::from_secs(60),
        "Ctrl+C stops the demo",
        || demo.tail(),
        || demo.log_text().contains("All nodes stopped.") && nodes.iter().all(|&p| !pid_alive(p)),
    );
}

/// A target without a pinned nats-server is refused before anything is built, with how to provide one.
#[test]
fn release_for_an_unpinned_target_says_how_to_provide_nats_server() {
    let out = Command::new(Path::new(ROOT).join("scripts/release.sh"))
        .args(["--target", "riscv64gc-unknown-linux-gnu"])
        .env_remove("HARMONYLITE_NATS_SERVER")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("pins no nats-server for target riscv64gc-unknown-linux-gnu")
            && text.contains("HARMONYLITE_NATS_SERVER=/path/to/nats-server"),
        "{text}"
    );
    assert!(
        !text.contains("Compiling"),
        "it built before refusing: {text}"
    );
}

/// Under systemd (`Type=notify`, `WatchdogSec`): READY=1 once the node runs, WATCHDOG=1 while it does,
/// STOPPING=1 on SIGTERM.
#[test]
fn node_notifies_systemd_ready_watchdog_and_stopping() {
    let dir = temp_dir("hl-notify-");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // What has arrived is read without waiting: the node pings every 200 ms, so a read that waits for a
    // quiet moment of that length may never see one.
    socket.set_nonblocking(true).unwrap();
    let received = std::cell::RefCell::new(Vec::<String>::new());
    let receive = || {
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.recv(&mut buf) {
            received
                .borrow_mut()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let count = |what: &str| received.borrow().iter().filter(|m| *m == what).count();

    let ports = support::free_ports(2);
    let mut node = Node::new(dir.path(), 1, ports[0], ports[1], Vec::new());
    node.env
        .push(("NOTIFY_SOCKET".into(), socket_path.to_str().unwrap().into()));
    // 400 ms: a ping every 200 ms.
    node.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    support::sqlite3(&node.db, support::BOOKS);
    node.start();
    eventually_or(
        Duration::from_secs(60),
        "READY=1",
        || node.log_tail(30),
        || {
            assert!(node.is_alive(), "the node exited:\n{}", node.log_tail(30));
            receive();
            count("READY=1") == 1
        },
    );
    assert_eq!(
        node.running_count(),
        1,
        "READY=1 came before the node ran:\n{}",
        node.log_tail(20)
    );
    let pings = count("WATCHDOG=1");
    eventually(Duration::from_secs(10), "five more watchdog pings", || {
        receive();
        count("WATCHDOG=1") >= pings + 5
    });
    assert_eq!(count("STOPPING=1"), 0);
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(60)), Some(0));
    receive();
    assert_eq!(count("STOPPING=1"), 1, "messages: {:?}", received.borrow());
    assert_eq!(count("READY=1"), 1);
}
