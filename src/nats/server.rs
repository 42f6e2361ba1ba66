//! The nats-server child process: spawn, log forwarding, supervision with restarts, graceful stop.
//!
//! One dedicated OS thread owns the child for its whole life. It spawns it (so the parent-death signal, which
//! Linux ties to the spawning *thread*, stays armed until we stop), reaps it, restarts it with exponential
//! backoff when it dies, and stops it on request: SIGTERM, up to [`STOP_GRACE`], then SIGKILL. The child gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with us even on `kill -9`.
//!
//! The client port is read from the ports file nats-server writes into `ports_file_dir` after each start. A
//! random client port (`:-1`) is pinned after the first start, so that restarts keep the address our client
//! reconnects to.
//!
//! Ctrl+C in a terminal reaches the child too (same process group). nats-server exits with status 0 only when
//! told to stop by a signal, so after such an exit the supervisor waits [`CLEAN_EXIT_GRACE`] for our own
//! shutdown before restarting, instead of fighting it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::NatsError;

pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
pub(crate) const CLEAN_EXIT_GRACE: Duration = Duration::from_secs(15);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
const RECENT_LINES: usize = 40;

/// How to start the server; `render` produces the config text, given the client port to pin (after the first
/// start).
pub(crate) struct Launch {
    pub binary: PathBuf,
    pub conf_path: PathBuf,
    pub ports_dir: PathBuf,
    pub render: Box<dyn Fn(Option<u16>) -> String + Send>,
}

/// Listen addresses of the running server, from its ports file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ports {
    pub client_port: u16,
    pub monitor_url: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Set while the server runs and has written its ports file.
    pub ports: Option<Ports>,
    /// Start-up failed (only before the first successful start).
    pub failed: Option<Arc<NatsError>>,
    /// Number of successful (re)starts.
    pub starts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Graceful,
    Kill,
}

struct Shared {
    stop: Mutex<Option<Stop>>,
    wake: Condvar,
    pid: AtomicI32,
    restarts: AtomicU64,
    recent: Mutex<VecDeque<String>>,
}

impl Shared {
    /// Waits up to `timeout` for a stop request; returns it if there is one.
    fn wait_stop(&self, timeout: Duration) -> Option<Stop> {
        let guard = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn recent_output(&self) -> String {
        let lines = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    }
}

/// A supervised nats-server. Dropping it kills the server at once; [`ServerProcess::stop`] stops it gracefully.
pub(crate) struct ServerProcess {
    shared: Arc<Shared>,
    status: watch::Receiver<Status>,
    thread: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts the server and waits until it reported its ports (or failed).
    pub async fn start(launch: Launch) -> Result<(ServerProcess, Ports), NatsError> {
        let shared = Arc::new(Shared {
            stop: Mutex::new(None),
            wake: Condvar::new(),
            pid: AtomicI32::new(0),
            restarts: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        });
        let (tx, mut rx) = watch::channel(Status::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nats-supervisor".into())
            .spawn(move || supervise(&thread_shared, &launch, &tx))
            .map_err(|e| NatsError::Spawn { path: "nats-supervisor thread".into(), source: e })?;
        let mut process = ServerProcess { shared, status: rx.clone(), thread: Some(thread) };
        let outcome = rx.wait_for(|s| s.ports.is_some() || s.failed.is_some()).await.map(|s| s.clone());
        match outcome {
            Ok(Status { ports: Some(ports), .. }) => Ok((process, ports)),
            Ok(Status { failed: Some(err), .. }) => {
                process.join();
                Err(Arc::try_unwrap(err).unwrap_or_else(|e| NatsError::ServerExited {
                    status: "failed".into(),
                    output: e.to_string(),
                }))
            }
            _ => {
                process.join();
                Err(NatsError::ServerExited { status: "supervisor ended".into(), output: String::new() })
            }
        }
    }

    /// Pid of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid as u32),
        }
    }

    /// How many times the server was restarted after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Current ports (None while the server is down).
    pub fn ports(&self) -> Option<Ports> {
        self.status.borrow().ports.clone()
    }

    /// Stops the server: SIGTERM, then SIGKILL after [`STOP_GRACE`]. Blocks; call from a blocking context.
    pub fn stop(mut self) {
        self.request(Stop::Graceful);
        self.join();
    }

    fn request(&self, stop: Stop) {
        let mut guard = self.shared.stop.lock().unwrap_or_else(|e| e.into_inner());
        if *guard != Some(Stop::Kill) {
            *guard = Some(stop);
        }
        self.shared.wake.notify_all();
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.request(Stop::Kill);
            self.join();
        }
    }
}

fn supervise(shared: &Arc<Shared>, launch: &Launch, status: &watch::Sender<Status>) {
    let fail = |err: NatsError| {
        status.send_modify(|s| s.failed = Some(Arc::new(err)));
    };
    let mut pinned: Option<u16> = None;
    let mut backoff = BACKOFF_INITIAL;
    let mut first = true;
    loop {
        remove_stale_ports_files(&launch.ports_dir, &launch.binary);
        if let Err(e) = write_private(&launch.conf_path, &(launch.render)(pinned)) {
            let err = NatsError::io("cannot write the nats-server config", &launch.conf_path, e);
            if first {
                return fail(err);
            }
            tracing::error!(error = %err, "nats-server not restarted");
        } else {
            match spawn(launch, shared) {
                Err(err) if first => return fail(err),
                Err(err) => tracing::error!(error = %err, "nats-server not restarted"),
                Ok(mut running) => {
                    let started = Instant::now();
                    match watch_child(shared, launch, status, &mut running, &mut pinned, &mut first) {
                        Watch::Stopped => return,
                        Watch::StartFailed(err) => return fail(err),
                        Watch::Exited(exit) => {
                            let ran = started.elapsed();
                            if first {
                                return fail(NatsError::ServerExited {
                                    status: describe(exit),
                                    output: shared.recent_output(),
                                });
                            }
                            status.send_modify(|s| s.ports = None);
                            if exit.success() {
                                tracing::warn!(
                                    from = "nats",
                                    "nats-server exited on its own with status 0 (a signal such as Ctrl+C?); \
                                     restarting it unless harmonylite stops within {CLEAN_EXIT_GRACE:?}"
                                );
                                if shared.wait_stop(CLEAN_EXIT_GRACE).is_some() {
                                    return;
                                }
                            } else {
                                if ran >= BACKOFF_RESET_AFTER {
                                    backoff = BACKOFF_INITIAL;
                                }
                                tracing::warn!(
                                    from = "nats",
                                    status = %describe(exit),
                                    ran_ms = ran.as_millis() as u64,
                                    "nats-server exited unexpectedly; restarting in {backoff:?}"
                                );
                                if shared.wait_stop(backoff).is_some() {
                                    return;
                                }
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                            shared.restarts.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    }
                }
            }
        }
        // Could not (re)start: wait and try again.
        if shared.wait_stop(backoff).is_some() {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Running {
    child: Child,
    readers: Vec<JoinHandle<()>>,
}

enum Watch {
    Stopped,
    StartFailed(NatsError),
    Exited(ExitStatus),
}

/// Polls the child until it exits or a stop is requested; publishes its ports once they appear.
fn watch_child(
    shared: &Shared,
    launch: &Launch,
    status: &watch::Sender<Status>,
    running: &mut Running,
    pinned: &mut Option<u16>,
    first: &mut bool,
) -> Watch {
    let pid = running.child.id();
    let started = Instant::now();
    let mut reported = false;
    loop {
        if let Some(stop) = shared.wait_stop(if reported { POLL * 4 } else { POLL }) {
            stop_child(running, stop);
            shared.pid.store(0, Ordering::SeqCst);
            status.send_modify(|s| s.ports = None);
            return Watch::Stopped;
        }
        match running.child.try_wait() {
            Ok(Some(exit)) => {
                shared.pid.store(0, Ordering::SeqCst);
                // The pipes are closed now: collect the last lines before reporting.
                for reader in running.readers.drain(..) {
                    let _ = reader.join();
                }
                return Watch::Exited(exit);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot poll nats-server"),
        }
        if reported {
            continue;
        }
        if let Some(ports) = read_ports_file(&launch.ports_dir, pid) {
            reported = true;
            *first = false;
            pinned.get_or_insert(ports.client_port);
            tracing::info!(from = "nats", pid, client_port = ports.client_port, "nats-server is up");
            status.send_modify(|s| {
                s.ports = Some(ports);
                s.starts += 1;
            });
        } else if *first && started.elapsed() > START_TIMEOUT {
            stop_child(running, Stop::Kill);
            shared.pid.store(0, Ordering::SeqCst);
            return Watch::StartFailed(NatsError::ServerStartTimeout {
                seconds: START_TIMEOUT.as_secs(),
                output: shared.recent_output(),
            });
        }
    }
}

fn stop_child(running: &mut Running, stop: Stop) {
    let pid = Pid::from_raw(running.child.id() as i32);
    if stop == Stop::Graceful {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = running.child.try_wait() {
                tracing::info!(from = "nats", "nats-server stopped");
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!(from = "nats", "nats-server did not stop within {STOP_GRACE:?}; killing it");
    }
    let _ = running.child.kill();
    let _ = running.child.wait();
}

fn describe(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => exit.to_string(),
    }
}

fn spawn(launch: &Launch, shared: &Arc<Shared>) -> Result<Running, NatsError> {
    shared.recent.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let parent = std::process::id() as i32;
    let mut attempts = 0;
    let mut child = loop {
        let mut cmd = Command::new(&launch.binary);
        cmd.arg("-c").arg(&launch.conf_path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // The parent may have died before the line above: then nobody would kill us later.
                if nix::unistd::getppid().as_raw() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => break child,
            // A concurrent fork may briefly hold a just-extracted binary open for writing.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 40 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(NatsError::Spawn { path: launch.binary.clone(), source: e }),
        }
    };
    shared.pid.store(child.id() as i32, Ordering::SeqCst);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(forward_lines(out, shared));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(forward_lines(err, shared));
    }
    Ok(Running { child, readers })
}

fn forward_lines(stream: impl Read + Send + 'static, shared: &Arc<Shared>) -> JoinHandle<()> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("nats-log".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                log_line(&line);
                let mut recent = shared.recent.lock().unwrap_or_else(|e| e.into_inner());
                if recent.len() == RECENT_LINES {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
        })
        .expect("cannot start the nats-log thread")
}

/// Forwards one nats-server log line as a tracing event with `from = "nats"`, at the level of its tag.
pub(crate) fn log_line(line: &str) {
    let (level, message) = split_level(line);
    match level {
        "ERR" | "FTL" => tracing::error!(from = "nats", "{message}"),
        "WRN" => tracing::warn!(from = "nats", "{message}"),
        "DBG" => tracing::debug!(from = "nats", "{message}"),
        "TRC" => tracing::trace!(from = "nats", "{message}"),
        "INF" => tracing::info!(from = "nats", "{message}"),
        _ => tracing::warn!(from = "nats", "{message}"),
    }
}

/// `[123] 2024/01/02 03:04:05.000000 [INF] text` → (`INF`, `text`); untagged lines → (`""`, line).
pub(crate) fn split_level(line: &str) -> (&str, &str) {
    for tag in ["INF", "WRN", "ERR", "FTL", "DBG", "TRC"] {
        let marker = format!("[{tag}]");
        if let Some(i) = line.find(&marker) {
            let rest = &line[i + marker.len()..];
            return (tag, rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    ("", line.trim_end())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("conf.tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn remove_stale_ports_files(dir: &Path, binary: &Path) {
    let prefix = format!("{}_", binary.file_name().unwrap_or_default().to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".ports") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads `<dir>/<program>_<pid>.ports` (JSON with `nats` and `monitoring` URL lists).
pub(crate) fn read_ports_file(dir: &Path, pid: u32) -> Option<Ports> {
    let suffix = format!("_{pid}.ports");
    let entry = std::fs::read_dir(dir).ok()?.flatten().find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let first = |key: &str| json.get(key)?.as_array()?.first()?.as_str().map(str::to_string);
    let client = first("nats")?;
    let client_port = client.trim_end_matches('/').rsplit(':').next()?.parse().ok()?;
    Some(Ports { client_port, monitor_url: first("monitoring") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_levels() {
        assert_eq!(split_level("[42] [INF] Server is ready"), ("INF", "Server is ready"));
        assert_eq!(split_level("[42] 2024/01/02 03:04:05.000000 [WRN] careful"), ("WRN", "careful"));
        assert_eq!(split_level("[1] [ERR] 127.0.0.1:1 - rid:2 - [x] bad"), ("ERR", "127.0.0.1:1 - rid:2 - [x] bad"));
        assert_eq!(split_level("nats-server: Parse error\n"), ("", "nats-server: Parse error"));
    }

    #[test]
    fn reads_ports_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nats-server-abc_77.ports"),
            r#"{"nats":["nats://127.0.0.1:37125","nats://10.0.0.2:37125"],"monitoring":["http://127.0.0.1:40009"]}"#,
        )
        .unwrap();
        let ports = read_ports_file(dir.path(), 77).unwrap();
        assert_eq!(ports, Ports { client_port: 37125, monitor_url: Some("http://127.0.0.1:40009".into()) });
        assert!(read_ports_file(dir.path(), 78).is_none());
        remove_stale_ports_files(dir.path(), Path::new("/x/nats-server-abc"));
        assert!(read_ports_file(dir.path(), 77).is_none());
    }
}
