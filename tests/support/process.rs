//! Processes and files: temporary directories, child processes killed when the test ends (even by a panic),
//! signals, `/proc` look-ups (liveness, children, memory), re-running this test binary as a helper process, and
//! the repository's scripts run as a user runs them (the release archive).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

pub use nix::sys::signal::Signal;

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory")
}

/// Sends `signal` to process `pid` (errors ignored: the process may be gone already).
pub fn send_signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// True while process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Resident set size of process `pid` in KiB (0 when it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size of process `pid` in KiB (`VmHWM`: since it started, or since
/// [`reset_peak_rss`]; 0 when it is gone).
pub fn peak_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets process `pid`'s peak resident set size ([`peak_rss_kb`]) to its current one (`5` written to
/// `/proc/<pid>/clear_refs`); false when that was refused (another user's process, or it is gone).
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Nanoseconds the threads of process `pid` have run on a CPU and waited for one while runnable, summed over
/// its threads (`/proc/<pid>/task/*/schedstat`; threads that have ended are not counted; (0, 0) when it is
/// gone).
pub fn cpu_and_runqueue_ns(pid: u32) -> (u64, u64) {
    let mut sum = (0, 0);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let mut v = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
            sum.0 += v.next().unwrap_or(0);
            sum.1 += v.next().unwrap_or(0);
        }
    }
    sum
}

/// Direct children of process `pid` (e.g. a node's nats-server).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// `pid` and all its descendants, parents before children.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(child_pids(tree[i]));
        i += 1;
    }
    tree
}

/// The TCP addresses on which `pid` or any of its descendants listen (from `/proc`: their socket inodes, looked
/// up in the tables of their network namespace).
pub fn listening_sockets(pid: u32) -> Vec<std::net::SocketAddr> {
    let mut inodes = std::collections::HashSet::new();
    for p in process_tree(pid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                out.extend(parse_proc_address(f[1]));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): 32-bit words in the kernel's byte order.
fn parse_proc_address(field: &str) -> Option<std::net::SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => std::net::IpAddr::from(w.to_ne_bytes()),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout piped (read it with [`ChildGuard::wait_for_line`]) and stderr inherited.
    pub fn spawn(mut cmd: Command) -> ChildGuard {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child process");
        let stdout = child.stdout.take().map(BufReader::new);
        ChildGuard {
            child: Some(child),
            stdout,
        }
    }

    /// Spawns `cmd` with stdout and stderr appended to `log` (for servers that talk a lot; read the file on
    /// failure). Panics with `cmd` when it cannot start.
    pub fn spawn_logged(mut cmd: Command, log: &Path) -> ChildGuard {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the child's log file");
        let err = file.try_clone().expect("clone the log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard {
            child: Some(child),
            stdout: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Reads stdout lines until one contains `prefix`; returns the rest of that line after it. Panics at EOF. The read
    /// blocks: the child must print the line or exit (use a child-side timeout).
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        let stdout = self.stdout.as_mut().expect("stdout is piped");
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).expect("read child stdout");
            if n == 0 {
                panic!("child exited before printing `{prefix}`");
            }
            // The test harness may have printed `test name ... ` on the same line.
            if let Some(i) = line.find(prefix) {
                return line[i + prefix.len()..].trim_end().to_string();
            }
        }
    }

    /// The child's exit status when it has exited, without waiting (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("poll child")
    }

    /// Waits for the child to exit; returns its status and the rest of its piped stdout.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let mut out = String::new();
        if let Some(stdout) = self.stdout.as_mut() {
            use std::io::Read;
            stdout.read_to_string(&mut out).expect("read child stdout");
        }
        (self.wait_inner(), out)
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the child to exit and returns its status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> std::process::ExitStatus {
        self.child
            .take()
            .expect("child")
            .wait()
            .expect("wait for child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills process `pid` with SIGKILL when dropped if it is still alive and its command line contains `name`
/// (for processes the test did not spawn itself, such as grandchildren; the name check guards against a
/// recycled pid).
pub struct PidGuard {
    pub pid: u32,
    pub name: &'static str,
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        if pid_alive(self.pid) && String::from_utf8_lossy(&cmdline).contains(self.name) {
            send_signal(self.pid, Signal::SIGKILL);
        }
    }
}

/// A command re-running this test binary on just `test_name` (exact match), with the harness's output shown,
/// for tests that need a separate process running library code.
pub fn reexec_test(test_name: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// Runs `cmd` to completion, retrying while exec fails with ETXTBSY (a binary written moments ago can still be
/// open for writing in a concurrently forked child).
pub fn output_retrying(cmd: &mut Command) -> std::process::Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("run command"),
        }
    }
    panic!("{cmd:?} kept failing with ETXTBSY");
}

/// What `cargo test` adds to a test's environment for the test alone. A script that runs cargo gets none of it:
/// some build scripts track such variables (ring's `CARGO_MANIFEST_DIR`), and seeing them would rebuild the whole
/// release profile, once here and again at the next plain `cargo build --release`.
fn is_test_only_env(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
            "LD_LIBRARY_PATH",
            "HARMONYLITE_NATS_SHA256",
            "HARMONYLITE_NATS_SIZE",
            "HARMONYLITE_NATS_VERSION",
        ]
        .contains(&name)
}

/// Runs a script of the repository's `scripts/` with `args` (its stderr shown as it goes), in the environment a
/// user's shell would give it, and returns the last line of its stdout, where these scripts print their result.
pub fn script_result(name: &str, args: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("scripts").join(name);
    let mut cmd = Command::new(&path);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_test_only_env) {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{path:?} failed ({}); stdout:\n{stdout}",
        out.status
    );
    stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{path:?} printed nothing"))
        .trim()
        .to_string()
}

/// `scripts/release.sh`'s archive (`dist/harmonylite-v<version>-<platform>.tar.gz`, an absolute path), built
/// as a user's shell would build it.
pub fn release_archive() -> PathBuf {
    PathBuf::from(script_result("release.sh", &[]))
}

/// A finished command's stdout followed by its stderr (lossy UTF-8), for assertions and failure messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Size of a file, 0 when missing.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A whole file as a string (lossy UTF-8), empty when missing.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
