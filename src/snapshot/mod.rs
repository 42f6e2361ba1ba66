//! Snapshots: a consistent copy of the user's tables with each shard's applied stream position, saved to and
//! restored from a [`store`].
//!
//! A snapshot is two objects: the data, `harmonylite-snapshot-<node>-<ms>.db.zst` (the database copy without
//! our triggers and tables, zstd-compressed), and the manifest [`MANIFEST`] (JSON: the data object's name, its
//! sha256 and sizes, the applied positions, who saved it and when). The manifest is written after the data, so
//! a reader never finds a manifest naming a partial object; the previous data object is removed afterwards.
//!
//! Saving reads the database with `VACUUM INTO` (one read transaction: a consistent copy, no write lock), so it
//! works beside a running node. Restoring checks the sha256 before anything else, prepares the copy as this
//! node's database (capture installed, the snapshot's positions as applied positions, a new change-log
//! incarnation), and writes it into the live database with SQLite's backup API in one step: one write
//! transaction, so applications with the file open see the old content or the new, never a mix.

pub mod store;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::capture;
use crate::config::Config;
use store::{Store, StoreError};

/// The manifest's object name.
pub const MANIFEST: &str = "harmonylite-snapshot.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("capture: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot manifest is unreadable: {0}")]
    Manifest(String),
    /// An application committed local changes after they were published and before the restore took the
    /// database's write lock: nothing was restored; publish them and restore again.
    #[error("local changes were written since they were published; nothing was restored")]
    LocalChangesPending,
    /// This node has handled less of some stream than the latest snapshot holds: its copy would replace a newer
    /// snapshot with an older one (and a node catching up from it would find the stream trimmed past it).
    #[error(
        "this node has handled {stream} only up to {have}, the latest snapshot up to {latest}; the newer snapshot is kept"
    )]
    Behind {
        stream: String,
        have: u64,
        latest: u64,
    },
    #[error(
        "snapshot {object} is corrupt: sha256 {actual} does not match the manifest's {expected}; nothing was restored"
    )]
    HashMismatch {
        object: String,
        expected: String,
        actual: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + use<> {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// What a snapshot holds, beside its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The data object's name.
    pub object: String,
    /// sha256 of the data object (the compressed bytes), hex.
    pub sha256: String,
    pub compressed_bytes: u64,
    pub database_bytes: u64,
    /// Applied stream position per stream at the moment of the copy.
    pub positions: BTreeMap<String, u64>,
    pub node_id: u64,
    pub created_at: String,
}

/// A temporary directory beside the database (same file system, so nothing large goes to `/tmp`).
fn work_dir(cfg: &Config) -> Result<tempfile::TempDir, SnapshotError> {
    let root = cfg.data_root_dir();
    tempfile::Builder::new()
        .prefix(".harmonylite-snapshot-")
        .tempdir_in(&root)
        .map_err(io("cannot create a directory in", &root))
}

/// The transfer under way in this process (a snapshot saved or restored), for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    /// What is being done, e.g. "downloading snapshot".
    pub what: &'static str,
    pub bytes: u64,
    pub total: u64,
    pub mb_per_s: f64,
    /// Estimated from the rate so far (`None` before anything moved).
    pub seconds_left: Option<f64>,
}

static TRANSFER: std::sync::Mutex<Option<Transfer>> = std::sync::Mutex::new(None);

/// The transfer under way, if any.
pub fn transfer() -> Option<Transfer> {
    TRANSFER.lock().map(|t| t.clone()).unwrap_or(None)
}

/// A long transfer's progress: a bar when stderr is a terminal (a `-save-snapshot` typed by someone), else a
/// log line with bytes, rate and time left every few seconds.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        });
        let p = Progress {
            what,
            total,
            done: 0,
            start: now,
            last: now,
            bar,
        };
        p.publish();
        p
    }

    /// Make this transfer the one `/health` shows.
    fn publish(&self) {
        let rate = self.rate();
        let t = Transfer {
            what: self.what,
            bytes: self.done,
            total: self.total,
            mb_per_s: (rate / 1e4).round() / 100.0,
            seconds_left: (self.done > 0 && rate > 0.0)
                .then(|| (self.total.saturating_sub(self.done) as f64 / rate).round()),
        };
        if let Ok(mut g) = TRANSFER.lock() {
            *g = Some(t);
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        self.publish();
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        if self.last.elapsed().as_secs() >= 3 {
            self.last = Instant::now();
            let rate = self.rate();
            let left = if self.total > self.done && rate > 0.0 {
                (self.total - self.done) as f64 / rate
            } else {
                0.0
            };
            tracing::info!(
                bytes = self.done,
                total = self.total,
                mb_per_s = format!("{:.1}", rate / 1e6),
                seconds_left = format!("{left:.0}"),
                "{}",
                self.what
            );
        }
    }

    /// Bytes per second over the whole transfer.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.start.elapsed().as_secs_f64().max(0.001)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Ok(mut g) = TRANSFER.lock() {
            *g = None;
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Positions a node has handled beyond those written in its database (messages it skipped as its own echoes
/// leave no trace there), and the change-log incarnation of the database they belong to.
#[derive(Debug, Clone, Default)]
pub struct Handled {
    pub incarnation: u64,
    pub positions: BTreeMap<String, u64>,
}

/// Copy the database consistently into `dir`, without our objects; returns the copy and its positions: the
/// applied positions in the copy, raised to `handled` when those belong to this database (every message up
/// to them was handled before the copy began, so its effect is in the copy).
fn copy_database(
    db: &Path,
    dir: &Path,
    handled: &Handled,
    selection: &(Vec<String>, Vec<String>),
) -> Result<(PathBuf, BTreeMap<String, u64>), SnapshotError> {
    let copy = dir.join("snapshot.db");
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(30))?;
    src.execute("VACUUM main INTO ?1", [copy.to_string_lossy().as_ref()])?;
    drop(src);
    let mut c = Connection::open(&copy)?;
    let has_applied = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [capture::APPLIED],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    let mut positions: BTreeMap<String, u64> = if has_applied {
        capture::applied_positions(&c)?.into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let incarnation: Option<i64> = c
        .query_row(
            &format!(
                "SELECT value FROM {} WHERE key = 'incarnation'",
                capture::META
            ),
            [],
            |r| r.get(0),
        )
        .ok();
    if handled.incarnation != 0 && incarnation == Some(handled.incarnation as i64) {
        for (stream, &seq) in &handled.positions {
            let p = positions.entry(stream.clone()).or_insert(0);
            *p = (*p).max(seq);
        }
    }
    // Pieces of large values staged for rows not applied yet are not kept in a snapshot: a node restoring it
    // reads them again from the stream.
    let has_pieces: bool = c.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [capture::PIECES],
        |r| r.get(0),
    )?;
    if has_pieces {
        let mut stmt = c.prepare(&format!(
            "SELECT stream, min(seq) FROM {} GROUP BY stream",
            capture::PIECES
        ))?;
        let firsts: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        for (stream, first) in firsts {
            if let Some(p) = positions.get_mut(&stream) {
                *p = (*p).min(first.saturating_sub(1).max(0) as u64);
            }
        }
    }
    capture::uninstall(&mut c)?;
    // Node-local tables (a tool's bookkeeping, `exclude_tables`) are this node's, not the cluster's.
    drop_local_tables(&c, selection)?;
    drop(c);
    Ok((copy, positions))
}

/// Bytes of compressed data handed to the upload at a time.
const PIECE: usize = 1 << 20;

/// A writer that hands what is written to it to the upload, [`PIECE`] bytes at a time (blocking while the
/// upload is that far behind: the channel holds a few pieces).
struct ToUpload {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ToUpload {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended"))
    }
}

impl Write for ToUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Compress `src` with zstd into `out` (the upload), hashing the compressed bytes: (sha256 hex, compressed
/// size). A read error is also handed to the upload, so that it fails rather than store a partial object.
fn compress(src: &Path, out: ToUpload) -> Result<(String, u64), SnapshotError> {
    let tx = out.tx.clone();
    let result = compress_inner(src, out);
    if let Err(e) = &result {
        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
    }
    result
}

fn compress_inner(src: &Path, out: ToUpload) -> Result<(String, u64), SnapshotError> {
    let upload = Path::new("the upload");
    let input = std::fs::File::open(src).map_err(io("cannot read", src))?;
    let total = input.metadata().map(|m| m.len()).unwrap_or(0);
    let mut hashing = Hashing {
        inner: out,
        hash: Sha256::new(),
        bytes: 0,
    };
    {
        let mut enc = zstd::stream::Encoder::new(&mut hashing, 1).map_err(io("zstd", src))?;
        let mut progress = Progress::new("saving snapshot", total);
        let mut input = std::io::BufReader::with_capacity(1 << 20, input);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(io("cannot read", src))?;
            if n == 0 {
                break;
            }
            enc.write_all(&buf[..n])
                .map_err(io("cannot write", upload))?;
            progress.add(n as u64);
        }
        enc.finish().map_err(io("cannot write", upload))?;
    }
    hashing.flush().map_err(io("cannot write", upload))?;
    Ok((hex::encode(hashing.hash.finalize()), hashing.bytes))
}

/// Save a snapshot of `cfg`'s database to `store`. Works beside a running node. `handled` is what the node's
/// retention entry said just before (read before the copy begins).
pub async fn save(
    cfg: &Config,
    store: &dyn Store,
    handled: Handled,
) -> Result<Manifest, SnapshotError> {
    let started = Instant::now();
    let dir = work_dir(cfg)?;
    let (db, d) = (cfg.db_path.clone(), dir.path().to_path_buf());
    let selection = (cfg.include_tables.clone(), cfg.exclude_tables.clone());
    let previous = latest(store).await.ok().flatten();
    let (copy, positions) =
        tokio::task::spawn_blocking(move || copy_database(&db, &d, &handled, &selection))
            .await
            .expect("snapshot copy panicked")?;
    if let Some(prev) = &previous
        && let Some((stream, have, latest)) = behind(&positions, prev)
    {
        return Err(SnapshotError::Behind {
            stream,
            have,
            latest,
        });
    }
    let database_bytes = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    let copied = started.elapsed();
    let now = std::time::SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let object = format!("harmonylite-snapshot-{}-{ms}.db.zst", cfg.node_id);
    // Compressed while it is uploaded: no compressed file on disk, and the compression (one core) and the
    // store's writing (the network, the store's disk) overlap.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let out = ToUpload {
        tx,
        buf: Vec::with_capacity(PIECE),
    };
    let c = copy.clone();
    let packing = tokio::task::spawn_blocking(move || compress(&c, out));
    let pieces =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let stored = store
        .put(&object, Box::pin(tokio_util::io::StreamReader::new(pieces)))
        .await;
    let packed = packing.await.expect("snapshot compression panicked");
    let (sha256, compressed_bytes) = match (stored, packed) {
        (Ok(()), packed) => packed?,
        // The compression stopped because the upload did: the upload's error says why.
        (Err(e), Err(SnapshotError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Err(e.into());
        }
        (Err(_), Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e.into()),
    };
    tracing::debug!(
        copy_s = format!("{:.2}", copied.as_secs_f64()),
        compress_and_upload_s = format!("{:.2}", (started.elapsed() - copied).as_secs_f64()),
        "snapshot data stored"
    );
    let manifest = Manifest {
        format: 1,
        object: object.clone(),
        sha256,
        compressed_bytes,
        database_bytes,
        positions,
        node_id: cfg.node_id,
        created_at: humantime::format_rfc3339_seconds(now).to_string(),
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    store
        .put(MANIFEST, Box::pin(std::io::Cursor::new(body)))
        .await?;
    if let Some(prev) = previous.filter(|p| p.object != object)
        && let Err(e) = store.delete(&prev.object).await
    {
        tracing::warn!(object = %prev.object, error = %e, "cannot remove the previous snapshot's data");
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(object, store = %store.describe(), database_bytes, compressed_bytes,
        seconds = format!("{secs:.2}"), mb_per_s = format!("{:.1}", database_bytes as f64 / 1e6 / secs.max(0.001)),
        "snapshot saved");
    Ok(manifest)
}

/// The first stream in which `positions` fall short of snapshot `m`'s: (stream, ours, the snapshot's).
pub fn behind(positions: &BTreeMap<String, u64>, m: &Manifest) -> Option<(String, u64, u64)> {
    m.positions.iter().find_map(|(stream, &latest)| {
        let have = positions.get(stream).copied().unwrap_or(0);
        (have < latest).then(|| (stream.clone(), have, latest))
    })
}

/// The latest snapshot's manifest, if the store has one.
pub async fn latest(store: &dyn Store) -> Result<Option<Manifest>, SnapshotError> {
    let Some(r) = store.get(MANIFEST).await? else {
        return Ok(None);
    };
    let bytes = store::read_all(r, 1 << 20)
        .await
        .map_err(|e| SnapshotError::Manifest(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SnapshotError::Manifest(e.to_string()))
}

/// Download the snapshot `m` into a work directory, check its sha256, and decompress it. Nothing is changed
/// in the database. Returns the directory (kept while the caller needs the file) and the decompressed copy.
pub async fn fetch(
    cfg: &Config,
    store: &dyn Store,
    m: &Manifest,
) -> Result<(tempfile::TempDir, PathBuf), SnapshotError> {
    let dir = work_dir(cfg)?;
    let packed = dir.path().join("snapshot.db.zst");
    let Some(mut r) = store.get(&m.object).await? else {
        return Err(StoreError::failed(
            &store.describe(),
            format!("object {} is missing", m.object),
        )
        .into());
    };
    let mut out = tokio::fs::File::create(&packed)
        .await
        .map_err(io("cannot create", &packed))?;
    let mut hash = Sha256::new();
    let mut progress = Progress::new("downloading snapshot", m.compressed_bytes);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use tokio::io::AsyncReadExt;
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| StoreError::failed(&store.describe(), e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .map_err(io("cannot write", &packed))?;
        progress.add(n as u64);
    }
    out.flush().await.map_err(io("cannot write", &packed))?;
    drop(out);
    let actual = hex::encode(hash.finalize());
    if actual != m.sha256 {
        return Err(SnapshotError::HashMismatch {
            object: m.object.clone(),
            expected: m.sha256.clone(),
            actual,
        });
    }
    let copy = dir.path().join("snapshot.db");
    let (p, c) = (packed.clone(), copy.clone());
    tokio::task::spawn_blocking(move || -> Result<(), SnapshotError> {
        let input = std::fs::File::open(&p).map_err(io("cannot read", &p))?;
        let mut output =
            std::io::BufWriter::new(std::fs::File::create(&c).map_err(io("cannot create", &c))?);
        zstd::stream::copy_decode(std::io::BufReader::new(input), &mut output)
            .map_err(io("cannot decompress", &p))?;
        output.flush().map_err(io("cannot write", &c))?;
        Ok(())
    })
    .await
    .expect("snapshot decompression panicked")?;
    let _ = std::fs::remove_file(&packed);
    Ok((dir, copy))
}

/// Make the fetched copy this node's database: capture installed on it (a first install: nothing backfilled),
/// the snapshot's positions as applied positions, a new change-log incarnation, the live database's page
/// size; then write it into the live database with the backup API, in one step.
///
/// `published_upto`: the change log's ids up to here are published. Once the restore holds the live
/// database's write lock (no application can commit), it checks that the change log holds nothing newer: a
/// change committed meanwhile would be overwritten before it was ever published, so the restore is then
/// abandoned (nothing changed) with [`SnapshotError::LocalChangesPending`].
pub fn restore_into(
    live: &Path,
    copy: &Path,
    m: &Manifest,
    cfg: &Config,
    published_upto: i64,
) -> Result<(), SnapshotError> {
    let started = Instant::now();
    let mut dst = crate::db::open_db(live)?;
    let page_size: i64 = dst.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    {
        let mut c = Connection::open(copy)?;
        let theirs: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        if theirs != page_size {
            c.execute_batch(&format!("PRAGMA page_size = {page_size}; VACUUM;"))?;
        }
        // The node keeps its own local tables: Litestream's stay Litestream's.
        let selection = (cfg.include_tables.clone(), cfg.exclude_tables.clone());
        drop_local_tables(&c, &selection)?;
        keep_local_tables(&c, live, &selection)?;
        capture::install(&mut c, &cfg.include_tables, &cfg.exclude_tables)?;
        let tx = c.transaction()?;
        for (stream, seq) in &m.positions {
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO {}(stream, seq) VALUES(?1, ?2)",
                    capture::APPLIED
                ),
                rusqlite::params![stream, *seq as i64],
            )?;
        }
        tx.commit()?;
    }
    let src = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    {
        use rusqlite::backup::StepResult;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // All pages in one step: one write transaction on the live database (retried while it is busy).
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut checked = false;
        loop {
            // The first page taken holds the write lock until the backup ends; then the check, then the rest.
            match backup.step(if checked { -1 } else { 1 })? {
                StepResult::Done => break,
                StepResult::More if !checked => {
                    if local_changes_after(live, published_upto)? {
                        // Dropping the unfinished backup rolls the live database back.
                        return Err(SnapshotError::LocalChangesPending);
                    }
                    checked = true;
                }
                StepResult::More => {}
                _ if Instant::now() > deadline => {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked for 60 s; snapshot not restored".into()),
                    )
                    .into());
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    let mode: String = dst.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        dst.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    }
    tracing::info!(object = %m.object, saved_by = m.node_id, created_at = %m.created_at,
        bytes = m.database_bytes, seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "snapshot restored into the database");
    Ok(())
}

/// Drop the tables that do not replicate (built-in local tables, `exclude_tables`, tables outside
/// `include_tables`) from a snapshot copy.
fn drop_local_tables(
    c: &Connection,
    selection: &(Vec<String>, Vec<String>),
) -> rusqlite::Result<()> {
    for t in local_tables(c, "main", selection)? {
        c.execute_batch(&format!("DROP TABLE IF EXISTS main.{}", capture::ident(&t)))?;
    }
    Ok(())
}

/// User tables of `schema` that do not replicate.
fn local_tables(
    c: &Connection,
    schema: &str,
    (include, exclude): &(Vec<String>, Vec<String>),
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(&format!(
        "SELECT name FROM {schema}.sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE TABLE%'"
    ))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for n in names {
        let n = n?;
        if !capture::is_reserved_table(&n) && !capture::schema::selected(&n, include, exclude) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Copy the live database's node-local tables (with their indexes) into the snapshot copy `c`.
fn keep_local_tables(
    c: &Connection,
    live: &Path,
    selection: &(Vec<String>, Vec<String>),
) -> rusqlite::Result<()> {
    c.execute("ATTACH DATABASE ?1 AS live", [live.to_string_lossy()])?;
    let r = (|| {
        for t in local_tables(c, "live", selection)? {
            let objects: Vec<String> = c
                .prepare(
                    "SELECT sql FROM live.sqlite_schema WHERE tbl_name = ?1 AND sql IS NOT NULL
                     AND type IN ('table', 'index') ORDER BY type = 'index'",
                )?
                .query_map([&t], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for sql in &objects {
                c.execute_batch(sql)?;
            }
            let q = capture::ident(&t);
            c.execute_batch(&format!("INSERT INTO main.{q} SELECT * FROM live.{q}"))?;
            tracing::debug!(table = %t, "node-local table kept through the restore");
        }
        Ok(())
    })();
    c.execute_batch("DETACH DATABASE live")?;
    r
}

/// Whether the live database's committed change log holds ids above `published_upto` (read on a connection
/// of its own, which WAL lets read while the restore holds the write lock).
fn local_changes_after(live: &Path, published_upto: i64) -> Result<bool, SnapshotError> {
    let c = Connection::open_with_flags(live, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_log: bool = c.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [capture::LOG],
        |r| r.get(0),
    )?;
    if !has_log {
        return Ok(false);
    }
    Ok(c.query_row(
        &format!(
            "SELECT EXISTS(SELECT 1 FROM {} WHERE id > ?1)",
            capture::LOG
        ),
        [published_upto],
        |r| r.get(0),
    )?)
}

/// True when the snapshot can bring a shard needing `needed` (its first available being `first`) back: its
/// position for that stream is still in the stream (or right before its first message).
pub fn covers(m: &Manifest, stream: &str, first_available: u64) -> bool {
    m.positions.get(stream).copied().unwrap_or(0) + 1 >= first_available
}
