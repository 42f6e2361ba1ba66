//! The node's connections to the user's database, and the one-shot command that only touches the database
//! (`-cleanup`).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use rusqlite::Connection;

use crate::capture;
use crate::config::Config;

/// Open a connection to the user's database for our own use: WAL mode (needed so readers and the
/// application's writers do not block each other), a busy timeout, `synchronous = NORMAL` (our applied
/// positions commit with the rows, so a lost tail is re-applied after a crash), and `temp_store = MEMORY`: the
/// applier writes each unit inside a savepoint, whose statement journal SQLite otherwise spills to a temporary
/// file past 64 KiB, one `pwrite` per journaled page (half the applier's time when catching up).
pub fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "database could not be switched to WAL mode");
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Make every transaction committed so far durable: our connections commit with `synchronous = NORMAL`, which
/// writes a commit to the WAL without syncing it, so a power loss can take the last ones back. The positions a
/// node reports to the cluster let the streams be trimmed below them: they are read first and reported only
/// after this (`node::retention`), so a stream never loses a change the node's disk does not hold.
///
/// Only the WAL is synced: a checkpoint that copied every frame into the database file syncs that file before
/// the WAL can start over, and a WAL that does not exist (every connection closed) was checkpointed and synced
/// whole. The database file itself is never opened here: closing a descriptor of it would drop every POSIX lock
/// this process holds on it, SQLite's included, and another process closing its connection would then take
/// itself for the last one and remove the WAL under ours (SQLite's documentation, "How To Corrupt").
pub fn sync_committed(db: &Path) -> std::io::Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The database must exist and be a file: HarmonyLite replicates an existing database. The node's state file
/// must not be a directory, and the NATS files the configuration names must be readable files: all checked
/// before anything is written, so a wrong path changes nothing.
pub fn check_db(cfg: &Config) -> anyhow::Result<()> {
    match std::fs::metadata(&cfg.db_path) {
        Ok(m) if m.is_dir() => bail!(
            "db_path {} is a directory, not a database file",
            cfg.db_path.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "db_path: database file {} does not exist; HarmonyLite replicates an existing database (create it first)",
            cfg.db_path.display()
        ),
        Err(e) => bail!("db_path: cannot read {}: {e}", cfg.db_path.display()),
    }
    if cfg.seq_map_path.is_dir() {
        bail!(
            "seq_map_path {} is a directory, not a file",
            cfg.seq_map_path.display()
        );
    }
    let n = &cfg.nats;
    for (key, path) in [
        ("nats.server_config", &n.server_config),
        ("nats.seed_file", &n.seed_file),
        ("nats.ca_file", &n.ca_file),
        ("nats.cert_file", &n.cert_file),
        ("nats.key_file", &n.key_file),
    ] {
        let Some(path) = path else { continue };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => bail!("{key} {} is not a file", path.display()),
            Err(e) => bail!("{key}: cannot read {}: {e}", path.display()),
        }
    }
    Ok(())
}

/// `-cleanup`: remove every trigger and table we created; user data stays. Returns how many were removed.
pub fn cleanup(cfg: &Config) -> anyhow::Result<usize> {
    check_db(cfg)?;
    let mut conn = open_db(&cfg.db_path)?;
    let n = capture::uninstall(&mut conn)?;
    tracing::debug!(objects = n, db = %cfg.db_path.display(), "removed HarmonyLite triggers and tables");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncing_keeps_sqlites_locks_so_another_process_closing_leaves_the_wal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = open_db(&path).unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        assert!(
            wal.exists(),
            "a WAL database with a connection open has its WAL"
        );
        sync_committed(&path).unwrap();
        // Another process opens the database and closes it: it is not the last connection (ours holds its
        // shared lock still), so it leaves the WAL in place.
        let out = std::process::Command::new("sqlite3")
            .arg(&path)
            .arg("SELECT count(*) FROM t;")
            .output()
            .expect("the sqlite3 command-line tool runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
        assert!(
            wal.exists(),
            "the other process removed the WAL: our locks were dropped"
        );
        c.execute("INSERT INTO t VALUES (2)", []).unwrap();
        drop(c);
        assert!(!wal.exists(), "the last connection closed removes the WAL");
        sync_committed(&path).unwrap();
        // No WAL: nothing to sync.
        sync_committed(&dir.path().join("missing.db")).unwrap();
    }
}
