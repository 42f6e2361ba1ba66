//! Change detection: file events on the database and its WAL wake the publisher; a timer catches what events
//! miss (file systems whose events are unreliable, a schema change whose event came before it was visible):
//! every `polling_interval`, or every second when it is 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Keeps the file watcher alive; drop it to stop watching.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Watch `db_path`, `db_path-wal` and `db_path-shm` (through their directory, so files created later are
/// seen too) and wake `wake` on every modification; also wake every `polling_ms` (every second when 0).
pub fn start(
    db_path: &Path,
    polling_ms: u64,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> Watch {
    let names: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut p = db_path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default()
        })
        .collect();
    let dir = db_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let w = wake.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Reads and opens are noise; writes, and closing a file written to, may mean a commit.
        if matches!(ev.kind, EventKind::Access(a) if !matches!(a, notify::event::AccessKind::Close(notify::event::AccessMode::Write)))
        {
            return;
        }
        if ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f)))
        {
            w.notify_one();
        }
    });
    let watcher = match watcher {
        Ok(mut watcher) => match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch database directory; relying on polling");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file watcher unavailable; relying on polling");
            None
        }
    };
    // At least once a second, so no change and no schema change is ever stranded.
    let period = if polling_ms == 0 { 1000 } else { polling_ms };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(period));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => wake.notify_one(),
            }
        }
    });
    Watch { _watcher: watcher }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_by_another_process_wakes_the_publisher() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        // an hour between timer wake-ups: only the file event can wake it in time
        let _w = start(&db, 3_600_000, wake.clone(), cancel.clone());
        // drain the wake-ups caused by the set-up
        while tokio::time::timeout(Duration::from_millis(200), wake.notified())
            .await
            .is_ok()
        {}
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg("INSERT INTO t VALUES (1);")
            .output()
            .unwrap();
        assert!(out.status.success());
        tokio::time::timeout(Duration::from_millis(500), wake.notified())
            .await
            .expect("no wake-up after a commit");
        cancel.cancel();
    }
}
