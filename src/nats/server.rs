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

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::NatsError;
use super::child_io::{
    NatsLog, Ports, RecentLines, forward_lines, read_ports_file, remove_stale_ports_files,
    write_private,
};
use crate::retry::Backoff;

pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
pub(crate) const CLEAN_EXIT_GRACE: Duration = Duration::from_secs(15);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
/// Free space the store's file system needs before a server that disabled JetStream (a full disk) is restarted.
const MIN_FREE_TO_RESTART: u64 = 16 << 20;

/// The part named in `/health` `disk_full` while nats-server's JetStream is disabled by its store.
const NATS_STORE: &str = "nats-server JetStream store";

/// How to start the server; `render` produces the config text, given the client port to pin (after the first
/// start).
pub(crate) struct Launch {
    pub binary: PathBuf,
    pub conf_path: PathBuf,
    pub ports_dir: PathBuf,
    /// The JetStream store (`store_dir`), watched for free space after a full disk.
    pub store_dir: PathBuf,
    pub render: Box<dyn Fn(Option<u16>) -> String + Send>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Set while the server runs and has written its ports file.
    pub ports: Option<Ports>,
    /// Start-up failed (only before the first successful start); the error is in `Shared::failure`.
    pub failed: bool,
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
    /// The running server said it disabled JetStream (its store could not be written).
    jetstream_disabled: Arc<AtomicBool>,
    recent: RecentLines,
    log: NatsLog,
    failure: Mutex<Option<NatsError>>,
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
        self.recent.render()
    }
}

/// Whether a supervised nats-server runs, and how often it was restarted (see [`ServerProcess::watch`]).
#[derive(Clone)]
pub struct ServerWatch(Arc<Shared>);

impl ServerWatch {
    /// The child process runs.
    pub fn running(&self) -> bool {
        self.0.pid.load(Ordering::SeqCst) != 0
    }

    /// Restarts after the server exited on its own.
    pub fn restarts(&self) -> u64 {
        self.0.restarts.load(Ordering::SeqCst)
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
            jetstream_disabled: Arc::default(),
            recent: RecentLines::default(),
            log: NatsLog::default(),
            failure: Mutex::new(None),
        });
        let (tx, mut rx) = watch::channel(Status::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nats-supervisor".into())
            .spawn(move || supervise(&thread_shared, &launch, &tx))
            .map_err(|e| NatsError::Spawn {
                path: "nats-supervisor thread".into(),
                source: e,
            })?;
        let mut process = ServerProcess {
            shared,
            status: rx.clone(),
            thread: Some(thread),
        };
        let outcome = rx
            .wait_for(|s| s.ports.is_some() || s.failed)
            .await
            .map(|s| s.clone());
        match outcome {
            Ok(Status {
                ports: Some(ports), ..
            }) => Ok((process, ports)),
            _ => {
                process.join();
                let failure = process
                    .shared
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(failure.unwrap_or_else(|| NatsError::ServerExited {
                    status: "the supervisor ended".into(),
                    reason: process.shared.recent.reason(),
                    output: process.shared.recent_output(),
                }))
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

    /// A handle that tells, later and from anywhere, whether the server runs and how often it restarted.
    pub fn watch(&self) -> ServerWatch {
        ServerWatch(self.shared.clone())
    }

    /// How many times the server was restarted after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// The flag that ends its log's "cluster forming" period (see `child_io::NatsLog`).
    pub fn forming_flag(&self) -> Arc<AtomicBool> {
        self.shared.log.forming_flag()
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
        self.shared.log.stopping();
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
        *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        status.send_modify(|s| s.failed = true);
    };
    let mut pinned: Option<u16> = None;
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
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
                    match watch_child(
                        shared,
                        launch,
                        status,
                        &mut running,
                        &mut pinned,
                        &mut first,
                    ) {
                        Watch::Stopped => return,
                        Watch::StartFailed(err) => return fail(err),
                        Watch::Restart => {
                            status.send_modify(|s| s.ports = None);
                            if started.elapsed() >= BACKOFF_RESET_AFTER {
                                backoff.reset();
                            }
                            if shared.wait_stop(backoff.next_delay()).is_some() {
                                return;
                            }
                            shared.restarts.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Watch::Exited(exit) => {
                            let ran = started.elapsed();
                            if first {
                                return fail(NatsError::ServerExited {
                                    status: describe(exit),
                                    reason: shared.recent.reason(),
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
                                    backoff.reset();
                                }
                                let delay = backoff.next_delay();
                                tracing::warn!(
                                    from = "nats",
                                    status = %describe(exit),
                                    ran_ms = ran.as_millis() as u64,
                                    "nats-server exited unexpectedly; restarting in {delay:?}"
                                );
                                if shared.wait_stop(delay).is_some() {
                                    return;
                                }
                            }
                            shared.restarts.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    }
                }
            }
        }
        // Could not (re)start: wait and try again.
        if shared.wait_stop(backoff.next_delay()).is_some() {
            return;
        }
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
    /// Stopped on purpose, to be started again: it had disabled JetStream, and its disk has room again.
    Restart,
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
        shared.log.tick(Instant::now());
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
            if shared.jetstream_disabled.load(Ordering::SeqCst) {
                return restart_when_space_is_free(shared, launch, status, running);
            }
            continue;
        }
        if let Some(ports) = read_ports_file(&launch.ports_dir, pid) {
            reported = true;
            *first = false;
            pinned.get_or_insert(ports.client_port);
            tracing::info!(
                from = "nats",
                pid,
                client_port = ports.client_port,
                "nats-server is up"
            );
            status.send_modify(|s| s.ports = Some(ports));
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

/// nats-server disabled JetStream (its store could not be written: a full disk) and does not enable it again by
/// itself. Said once, loudly; once the store's file system has [`MIN_FREE_TO_RESTART`] free, the server is
/// stopped gracefully so that the supervisor starts it again with JetStream.
fn restart_when_space_is_free(
    shared: &Shared,
    launch: &Launch,
    status: &watch::Sender<Status>,
    running: &mut Running,
) -> Watch {
    tracing::error!(
        from = "nats",
        store = %launch.store_dir.display(),
        "nats-server disabled JetStream: its store could not be written (is the disk full?); this node's \
         replicas stay behind until it is restarted, which happens once {} MiB are free there",
        MIN_FREE_TO_RESTART >> 20
    );
    crate::disk_full::set_full(NATS_STORE, true);
    // Whichever way the watch ends, the store is no longer the part stopped.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            crate::disk_full::set_full(NATS_STORE, false);
        }
    }
    let _clear = Clear;
    loop {
        if let Some(stop) = shared.wait_stop(Duration::from_secs(1)) {
            stop_child(running, stop);
            shared.pid.store(0, Ordering::SeqCst);
            status.send_modify(|s| s.ports = None);
            return Watch::Stopped;
        }
        if let Ok(Some(exit)) = running.child.try_wait() {
            shared.pid.store(0, Ordering::SeqCst);
            for reader in running.readers.drain(..) {
                let _ = reader.join();
            }
            return Watch::Exited(exit);
        }
        if free_bytes(&launch.store_dir).is_some_and(|f| f >= MIN_FREE_TO_RESTART) {
            break;
        }
    }
    tracing::warn!(
        from = "nats",
        "space is free again in the nats-server store; restarting nats-server so that JetStream runs again"
    );
    stop_child(running, Stop::Graceful);
    shared.pid.store(0, Ordering::SeqCst);
    for reader in running.readers.drain(..) {
        let _ = reader.join();
    }
    Watch::Restart
}

/// Bytes available to us on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid C string and a zeroed out-struct that statvfs fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
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
        tracing::warn!(
            from = "nats",
            "nats-server did not stop within {STOP_GRACE:?}; killing it"
        );
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
    shared.recent.clear();
    shared.jetstream_disabled.store(false, Ordering::SeqCst);
    let parent = std::process::id() as i32;
    let mut attempts = 0;
    let mut child = loop {
        let mut cmd = Command::new(&launch.binary);
        cmd.arg("-c")
            .arg(&launch.conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
            Err(e) => {
                return Err(NatsError::Spawn {
                    path: launch.binary.clone(),
                    source: e,
                });
            }
        }
    };
    shared.pid.store(child.id() as i32, Ordering::SeqCst);
    let mut readers = Vec::new();
    let out = child
        .stdout
        .take()
        .map(|s| forward_lines(s, &shared.recent, &shared.log, &shared.jetstream_disabled));
    let err = child
        .stderr
        .take()
        .map(|s| forward_lines(s, &shared.recent, &shared.log, &shared.jetstream_disabled));
    for reader in [out, err].into_iter().flatten() {
        match reader {
            Ok(handle) => readers.push(handle),
            Err(e) => {
                // Nobody would drain its output: do not leave it running.
                let _ = child.kill();
                let _ = child.wait();
                shared.pid.store(0, Ordering::SeqCst);
                return Err(NatsError::Spawn {
                    path: launch.binary.clone(),
                    source: e,
                });
            }
        }
    }
    Ok(Running { child, readers })
}
