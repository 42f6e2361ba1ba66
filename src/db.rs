//! The node's connections to the user's database, and the one-shot command that only touches the database
//! (`-cleanup`).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use rusqlite::Connection;

use crate::capture;
use crate::config::Config;

/// Open a connection to the user's database for our own use: WAL mode (needed so readers and the
/// application's writers do not block each other), a busy timeout, and `synchronous = NORMAL` (our applied
/// positions commit with the rows, so a lost tail is re-applied after a crash).
pub fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "database could not be switched to WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
    Ok(conn)
}

/// The database must exist: HarmonyLite replicates an existing database.
pub fn check_db(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.db_path.exists() {
        bail!(
            "database file {} does not exist; HarmonyLite replicates an existing database (create it first)",
            cfg.db_path.display()
        );
    }
    Ok(())
}

/// `-cleanup`: remove every trigger and table we created; user data stays.
pub fn cleanup(cfg: &Config) -> anyhow::Result<()> {
    check_db(cfg)?;
    let mut conn = open_db(&cfg.db_path)?;
    let n = capture::uninstall(&mut conn)?;
    tracing::info!(objects = n, db = %cfg.db_path.display(), "removed HarmonyLite triggers and tables");
    Ok(())
}
