//! What passes between us and the nats-server child besides signals: its output (each line forwarded as a
//! tracing event at the level of its tag, repeated warnings summarised, the last lines kept for error messages),
//! the config file we write for it, and the ports file it writes back.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::Level;

use crate::logging::NATS_TARGET;
use crate::repeat::{Repeats, Report, first_address, normalise};

const RECENT_LINES: usize = 40;

/// Listen addresses of the running server, from its ports file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ports {
    pub client_port: u16,
    pub monitor_url: Option<String>,
}

/// The last lines nats-server printed, for start-up error messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecentLines(Arc<Mutex<VecDeque<String>>>);

impl RecentLines {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, line: String) {
        let mut lines = self.lock();
        if lines.len() == RECENT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The last error line (`[FTL]` or `[ERR]`, or an untagged line such as a parse error), else the last line.
    pub fn reason(&self) -> String {
        let lines = self.lock();
        let error = lines
            .iter()
            .rev()
            .find(|l| matches!(split_level(l).0, "FTL" | "ERR" | ""));
        error
            .or(lines.back())
            .map(|l| split_level(l).1.to_string())
            .unwrap_or_else(|| "no output".into())
    }

    /// The lines, indented, one per line.
    pub fn render(&self) -> String {
        self.lock()
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Starts a thread that forwards each line of `stream` to tracing through `log` and keeps it in `recent`.
/// The thread ends at end of file, i.e. when the child exited.
pub(crate) fn forward_lines(
    stream: impl Read + Send + 'static,
    recent: &RecentLines,
    log: &NatsLog,
    jetstream_disabled: &Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let recent = recent.clone();
    let log = log.clone();
    let disabled = jetstream_disabled.clone();
    std::thread::Builder::new()
        .name("nats-log".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if line.contains("Duplicate Server Name") || line.contains("duplicate name") {
                    super::DUPLICATE_NAME_REFUSALS
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                log.line(&line, Instant::now());
                if says_jetstream_disabled(&line) {
                    disabled.store(true, Ordering::SeqCst);
                }
                recent.push(line);
            }
        })
}

/// nats-server's line when it turns JetStream off for good (until restarted): its store could not be written
/// ("JetStream out of File resources, will be DISABLED"), typically a full disk.
pub(crate) fn says_jetstream_disabled(line: &str) -> bool {
    line.contains("JetStream out of") && line.contains("will be DISABLED")
}

/// An event with target [`NATS_TARGET`] at a level known only at run time.
macro_rules! nats_event {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!(target: NATS_TARGET, $($rest)+),
            Level::WARN => tracing::warn!(target: NATS_TARGET, $($rest)+),
            Level::INFO => tracing::info!(target: NATS_TARGET, $($rest)+),
            Level::DEBUG => tracing::debug!(target: NATS_TARGET, $($rest)+),
            _ => tracing::trace!(target: NATS_TARGET, $($rest)+),
        }
    };
}

/// Forwards nats-server's output lines as tracing events (target [`NATS_TARGET`]) at the level of their tag.
/// Warnings and errors that repeat (a peer that stays down makes nats-server retry its route every second) are
/// said once, then summarised every [`crate::repeat::PERIOD`], and their end is said once: when the line stops
/// coming back, or when a route to the same address is created. Shared by the child's two output streams and
/// its restarts.
///
/// nats-server's own informational lines (its banner, routes created and closed, leaders elected) go to DEBUG:
/// a healthy start says a few lines of ours, and `-v` shows the rest. While the cluster forms (until the
/// server has a route to every configured peer, at most [`FORMING_AT_MOST`]), its notes about peers not there
/// yet ([`forming_chatter`]) are DEBUG too; after that they are warnings again.
#[derive(Debug, Clone)]
pub(crate) struct NatsLog {
    repeats: Arc<Mutex<Repeats>>,
    forming: Arc<AtomicBool>,
    created: Instant,
    /// Repeated conditions whose start was said at DEBUG (while the cluster formed): their end is DEBUG too.
    quiet: Arc<Mutex<std::collections::HashSet<String>>>,
    /// We asked the server to stop: what it says from then on is about its own stop (snapshots cut short,
    /// routes closed under it), said at DEBUG.
    stopping: Arc<AtomicBool>,
}

impl Default for NatsLog {
    fn default() -> NatsLog {
        NatsLog {
            repeats: Arc::default(),
            forming: Arc::new(AtomicBool::new(true)),
            created: Instant::now(),
            quiet: Arc::default(),
            stopping: Arc::default(),
        }
    }
}

/// How long a server's start may count as its cluster forming, at most.
pub(crate) const FORMING_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// What nats-server says while its cluster forms: a peer's route refused or not answering, routing or a meta
/// leader not there yet.
fn forming_chatter(message: &str) -> bool {
    message.contains("Error trying to connect to route")
        || message.contains("Waiting for routing to be established")
        || message.contains("has not established contact with a meta leader")
        || message.contains("is not current with the meta leader")
}

impl NatsLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Repeats> {
        self.repeats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server is being stopped at our request.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The flag that ends the forming period when set to false (see [`super::ready::wait_ready`]).
    pub fn forming_flag(&self) -> Arc<AtomicBool> {
        self.forming.clone()
    }

    fn forming(&self, now: Instant) -> bool {
        self.forming.load(Ordering::Relaxed)
            && now.saturating_duration_since(self.created) < FORMING_AT_MOST
    }

    /// Forwards one output line, seen at `now`.
    pub fn line(&self, line: &str, now: Instant) {
        let (tag, message) = split_level(line);
        let chatter = forming_chatter(message);
        let level = if (chatter && self.forming(now)) || self.stopping.load(Ordering::Relaxed) {
            Level::DEBUG
        } else {
            level_of(tag, message)
        };
        let (ended, report) = {
            let mut repeats = self.lock();
            let ended = match first_address(message) {
                Some(addr) if tag == "INF" && message.contains("Route connection created") => {
                    repeats.resolve_where(|k| k.contains(addr), now)
                }
                _ => Vec::new(),
            };
            let report = if level <= Level::WARN || chatter {
                repeats.observe(&normalise(message), message, now)
            } else {
                Some(Report::Started {
                    text: message.to_string(),
                })
            };
            (ended, report)
        };
        if chatter && level == Level::DEBUG && matches!(report, Some(Report::Started { .. })) {
            self.quiet_set().insert(normalise(message));
        }
        for (key, r) in ended {
            log_report(level, self.end_level(&key), r);
        }
        if let Some(r) = report {
            log_report(level, Level::INFO, r);
        }
    }

    fn quiet_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.quiet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The level the end of condition `key` is said at: DEBUG when its start was.
    fn end_level(&self, key: &str) -> Level {
        if self.quiet_set().remove(key) {
            Level::DEBUG
        } else {
            Level::INFO
        }
    }

    /// Says which repeated conditions are over (quiet for [`crate::repeat::QUIET`]); called regularly.
    pub fn tick(&self, now: Instant) {
        let ended = self.lock().expire(now);
        for (key, r) in ended {
            log_report(Level::INFO, self.end_level(&key), r);
        }
    }
}

/// Logs `report` at `level`, or its end at `over`.
fn log_report(level: Level, over: Level, report: Report) {
    match report {
        Report::Started { text } => nats_event!(level, "{text}"),
        Report::Repeating {
            count,
            total,
            ongoing,
            text,
        } => nats_event!(
            level,
            repeats = count,
            total,
            ongoing_s = ongoing.as_secs(),
            "repeating ({count} more times, for {} s): {text}",
            ongoing.as_secs()
        ),
        Report::Ended {
            total,
            lasted,
            text,
            ..
        } => nats_event!(
            over,
            total,
            lasted_s = lasted.as_secs(),
            "over ({total} times in {} s): {text}",
            lasted.as_secs()
        ),
    }
}

/// The level a line is logged at: its tag's, but informational lines are DEBUG (see [`NatsLog`]), a route
/// that cannot be reached is a warning (readiness reports peers that stay away), and untagged lines (such as
/// a config parse error) are warnings.
fn level_of(tag: &str, message: &str) -> Level {
    match tag {
        "ERR" if message.contains("Error trying to connect to route") => Level::WARN,
        "ERR" | "FTL" => Level::ERROR,
        "WRN" => Level::WARN,
        "INF" => Level::DEBUG,
        "DBG" => Level::DEBUG,
        "TRC" => Level::TRACE,
        _ => Level::WARN,
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

/// Writes `text` to `path` atomically, readable by the owner only (it may hold passwords).
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    crate::atomic_file::write(path, text.as_bytes(), 0o600)
}

/// Removes ports files left by earlier runs of `binary` (nats-server names them `<program>_<pid>.ports`).
pub(crate) fn remove_stale_ports_files(dir: &Path, binary: &Path) {
    let prefix = format!(
        "{}_",
        binary.file_name().unwrap_or_default().to_string_lossy()
    );
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
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
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let first = |key: &str| {
        json.get(key)?
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_string)
    };
    let client = first("nats")?;
    let client_port = client
        .trim_end_matches('/')
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    Some(Ports {
        client_port,
        monitor_url: first("monitoring"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_disables_jetstream_is_recognised() {
        // The wordings of nats-server 2.12 (a file store that could not be written, and a resource limit).
        assert!(says_jetstream_disabled(
            "[42] 2026/01/01 00:00:00.000000 [ERR] JetStream out of resources, will be DISABLED"
        ));
        assert!(says_jetstream_disabled(
            "[42] [ERR] JetStream out of File resources, will be DISABLED"
        ));
        assert!(!says_jetstream_disabled("[42] [INF] Starting JetStream"));
    }

    #[test]
    fn splits_levels() {
        assert_eq!(
            split_level("[42] [INF] Server is ready"),
            ("INF", "Server is ready")
        );
        assert_eq!(
            split_level("[42] 2024/01/02 03:04:05.000000 [WRN] careful"),
            ("WRN", "careful")
        );
        assert_eq!(
            split_level("[1] [ERR] 127.0.0.1:1 - rid:2 - [x] bad"),
            ("ERR", "127.0.0.1:1 - rid:2 - [x] bad")
        );
        assert_eq!(
            split_level("nats-server: Parse error\n"),
            ("", "nats-server: Parse error")
        );
    }

    #[test]
    fn a_peer_that_stays_down_is_said_once_summarised_and_its_end_said() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let text = crate::logging::captured(|| {
            let log = NatsLog::default();
            // The cluster had formed: peers going away are warnings.
            log.forming_flag().store(false, Ordering::Relaxed);
            log.line("[7] [INF] Server is ready", at(0));
            // Two peers down for 70 s, each route retried every second (with a pool of connections per peer).
            for s in 0..70u64 {
                for (port, pool) in [(4248, 3), (4249, 1)] {
                    for _ in 0..pool {
                        log.line(&format!("[7] [ERR] Error trying to connect to route (attempt {s}): dial tcp 127.0.0.1:{port}: connect: connection refused"), at(s * 1000));
                    }
                }
                log.tick(at(s * 1000 + 500));
            }
            // Peer 4248 comes back; 4249 stays quiet from now on.
            log.line(
                "[7] [INF] 127.0.0.1:4248 - rid:9 - Route connection created",
                at(70_000),
            );
            log.tick(at(100_000));
        });
        let lines: Vec<&str> = text.lines().collect();
        let about = |port: u32| -> Vec<&str> {
            lines
                .iter()
                .copied()
                .filter(|l| l.contains(&format!("127.0.0.1:{port}")))
                .collect()
        };
        let a = about(4248);
        assert_eq!(a.len(), 5, "{text}");
        assert!(
            a[0].contains(" WARN node=1 nats-server: Error trying to connect to route (attempt 0)"),
            "{text}"
        );
        assert!(
            a[1].contains(
                "repeating (90 more times, for 30 s): Error trying to connect to route (attempt 30)"
            ),
            "{text}"
        );
        assert!(a[1].contains("repeats=90 total=91 ongoing_s=30"), "{text}");
        assert!(
            a[2].contains("repeating (90 more times, for 60 s)"),
            "{text}"
        );
        assert!(
            a[3].contains("INFO node=1 nats-server: over (210 times in 70 s): Error trying"),
            "{text}"
        );
        assert!(a[4].contains("Route connection created"), "{text}");
        let b = about(4249);
        assert_eq!(b.len(), 4, "{text}");
        assert!(
            b[3].contains("INFO node=1 nats-server: over (70 times in 69 s)"),
            "{text}"
        );
        assert!(
            lines[0].contains("DEBUG node=1 nats-server: Server is ready"),
            "{text}"
        );
        assert_eq!(lines.len(), 10, "{text}");
    }

    #[test]
    fn peers_not_there_yet_while_the_cluster_forms_are_debug_then_warnings_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let refused = |s: u64| {
            format!(
                "[7] [ERR] Error trying to connect to route (attempt {s}): dial tcp 127.0.0.1:4250: connect: connection refused"
            )
        };
        let text = crate::logging::captured(|| {
            let log = NatsLog::default();
            log.line("[7] [WRN] Waiting for routing to be established...", at(0));
            for s in 0..40u64 {
                log.line(&refused(s), at(s * 1000));
                log.tick(at(s * 1000 + 500));
            }
            log.line(
                "[7] [INF] 127.0.0.1:4250 - rid:9 - Route connection created",
                at(40_000),
            );
            // Formed; later the peer goes away.
            log.forming_flag().store(false, Ordering::Relaxed);
            log.line(&refused(41), at(41_000));
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            !lines[..lines.len() - 1]
                .iter()
                .any(|l| l.contains(" WARN ") || l.contains(" INFO ")),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("repeating (")),
            "a flood is summarised while the cluster forms too: {text}"
        );
        assert!(
            lines[lines.len() - 1].contains(
                " WARN node=1 nats-server: Error trying to connect to route (attempt 41)"
            ),
            "{text}"
        );
        // Once we stop the server, what it says about its own stop is DEBUG.
        let stopping = crate::logging::captured(|| {
            let log = NatsLog::default();
            log.forming_flag().store(false, Ordering::Relaxed);
            log.stopping();
            log.line(
                "[7] [WRN] Failed to install snapshot for 'x': store is closed",
                t0,
            );
            log.line(
                "[7] [ERR] 127.0.0.1:1 - rid:18 - Error flushing: broken pipe",
                t0,
            );
        });
        assert!(
            stopping.lines().count() == 2 && stopping.lines().all(|l| l.contains(" DEBUG ")),
            "{stopping}"
        );
        // Never past FORMING_AT_MOST, even without the flag.
        let late = crate::logging::captured(|| {
            let log = NatsLog::default();
            log.line(&refused(0), log.created + FORMING_AT_MOST);
        });
        assert!(late.contains(" WARN "), "{late}");
    }

    #[test]
    fn reason_is_the_last_error_line() {
        let recent = RecentLines::default();
        assert_eq!(recent.reason(), "no output");
        recent.push("[1] [INF] Starting".into());
        assert_eq!(recent.reason(), "Starting");
        recent.push("[1] [FTL] Can't start JetStream: boom".into());
        recent.push("[1] [INF] Server Exiting..".into());
        assert_eq!(recent.reason(), "Can't start JetStream: boom");
        recent.push("nats-server: x.conf:2:1: unknown field \"y\"".into());
        assert_eq!(
            recent.reason(),
            "nats-server: x.conf:2:1: unknown field \"y\""
        );
        for i in 0..100 {
            recent.push(format!("[1] [INF] line {i}"));
        }
        assert_eq!(recent.render().lines().count(), RECENT_LINES);
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
        assert_eq!(
            ports,
            Ports {
                client_port: 37125,
                monitor_url: Some("http://127.0.0.1:40009".into())
            }
        );
        assert!(read_ports_file(dir.path(), 78).is_none());
        remove_stale_ports_files(dir.path(), Path::new("/x/nats-server-abc"));
        assert!(read_ports_file(dir.path(), 77).is_none());
    }
}
