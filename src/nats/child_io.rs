//! What passes between us and the nats-server child besides signals: its output (each line forwarded as a
//! tracing event at the level of its tag, the last lines kept for error messages), the config file we write for
//! it, and the ports file it writes back.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// Starts a thread that forwards each line of `stream` to tracing (see [`log_line`]) and keeps it in `recent`.
/// The thread ends at end of file, i.e. when the child exited.
pub(crate) fn forward_lines(
    stream: impl Read + Send + 'static,
    recent: &RecentLines,
) -> std::io::Result<JoinHandle<()>> {
    let recent = recent.clone();
    std::thread::Builder::new()
        .name("nats-log".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                log_line(&line);
                recent.push(line);
            }
        })
}

/// Forwards one nats-server log line as a tracing event with `from = "nats"`, at the level of its tag.
pub(crate) fn log_line(line: &str) {
    let (level, message) = split_level(line);
    // A peer not (yet) reachable is routine while a cluster forms; readiness reports peers that stay away.
    let level = if level == "ERR" && message.contains("Error trying to connect to route") {
        "WRN"
    } else {
        level
    };
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
