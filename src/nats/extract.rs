//! The nats-server binary embedded by `build.rs`, and its extraction to a per-user cache at run time.
//!
//! The binary is written once to `<cache>/harmonylite/nats-server-<sha256 prefix>` and reused while its hash
//! matches. A fresh copy is written to a unique temporary file in the same directory, fsynced, made executable,
//! verified and renamed over the final name, so nodes started at the same instant never see a partial file.
//! An `flock` on a lock file beside it keeps concurrent extractions from doing the work twice.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::NatsError;

/// Environment variable naming an external nats-server binary to run instead of the bundled one.
pub const ENV_NATS_BIN: &str = "HARMONYLITE_NATS_BIN";

static BUNDLE_ZST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nats-server.zst"));

/// Version of the bundled nats-server, e.g. `2.15.1`.
pub const BUNDLED_VERSION: &str = env!("HARMONYLITE_NATS_VERSION");

/// sha256 (hex) of the bundled nats-server binary.
pub const BUNDLED_SHA256: &str = env!("HARMONYLITE_NATS_SHA256");

const BUNDLED_SIZE: &str = env!("HARMONYLITE_NATS_SIZE");

/// Default extraction directory: `$XDG_CACHE_HOME/harmonylite`, else `$HOME/.cache/harmonylite`, else
/// `<temp dir>/harmonylite`.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = non_empty("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("harmonylite")
}

/// The nats-server binary to run: `HARMONYLITE_NATS_BIN` if set, else the bundled one extracted to
/// [`default_cache_dir`]. Extraction happens at most once per process and directory.
pub fn server_binary() -> Result<PathBuf, NatsError> {
    if let Some(path) = std::env::var_os(ENV_NATS_BIN).filter(|v| !v.is_empty()) {
        return external_binary(PathBuf::from(path));
    }
    let dir = default_cache_dir();
    match extract_to(&dir) {
        Err(NatsError::Extract { path, source }) => {
            // A read-only or full home directory: fall back on the temporary directory.
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            let fallback = std::env::temp_dir().join(format!("harmonylite-{uid}"));
            tracing::warn!(path = %path.display(), error = %source, fallback = %fallback.display(),
                "cannot extract nats-server to the cache directory; using the temporary directory");
            // Refuse a directory that someone else could swap the binary in.
            let _ = std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
                .create(&fallback);
            match fs::metadata(&fallback) {
                Ok(m)
                    if std::os::unix::fs::MetadataExt::uid(&m) == uid
                        && m.permissions().mode() & 0o022 == 0 =>
                {
                    extract_to(&fallback)
                }
                _ => Err(NatsError::Extract {
                    path,
                    source: std::io::Error::other(format!(
                        "{source}; and {} is not a directory owned by this user and writable only by it",
                        fallback.display()
                    )),
                }),
            }
        }
        other => other,
    }
}

fn external_binary(path: PathBuf) -> Result<PathBuf, NatsError> {
    let meta = fs::metadata(&path).map_err(|e| NatsError::ExternalBinary {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(NatsError::ExternalBinary {
            path,
            reason: "not an executable file".into(),
        });
    }
    tracing::warn!(path = %path.display(), "using an external nats-server ({ENV_NATS_BIN}), not the bundled {BUNDLED_VERSION}");
    Ok(path)
}

/// Extracts the bundled binary into `dir` (created if needed) unless a verified copy is already there, and
/// returns its path. Safe to call concurrently from threads and processes.
pub fn extract_to(dir: &Path) -> Result<PathBuf, NatsError> {
    // One extraction per directory and process; the flock below handles other processes.
    static DONE: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = done.get(dir)
        && is_verified(path)
    {
        return Ok(path.clone());
    }
    let path = extract_locked(dir)?;
    done.insert(dir.to_path_buf(), path.clone());
    Ok(path)
}

/// Name of the extracted binary: `nats-server-<first 16 hex digits of its sha256>`.
pub fn binary_name() -> String {
    format!("nats-server-{}", &BUNDLED_SHA256[..16])
}

fn extract_locked(dir: &Path) -> Result<PathBuf, NatsError> {
    let target = dir.join(binary_name());
    let extract_err = |source| NatsError::Extract {
        path: target.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(extract_err)?;

    // Fast path without the lock: a verified binary is never modified in place, only replaced.
    if is_verified(&target) {
        return Ok(target);
    }
    let lock_path = dir.join(format!(".{}.lock", binary_name()));
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(extract_err)?;
    // Released when `lock_file` is closed, at the end of this function.
    lock_file.lock().map_err(extract_err)?;
    if is_verified(&target) {
        return Ok(target);
    }

    let bytes = decompress()?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", binary_name()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(extract_err)?;
    tmp.write_all(&bytes).map_err(extract_err)?;
    tmp.as_file().sync_all().map_err(extract_err)?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).map_err(extract_err)?;
    let written = hash_file(tmp.path()).map_err(extract_err)?;
    if written != BUNDLED_SHA256 {
        return Err(extract_err(std::io::Error::other(format!(
            "the written file has sha256 {written}, expected {BUNDLED_SHA256}"
        ))));
    }
    // Close before the rename: a binary still open for writing cannot be executed (ETXTBSY).
    let tmp_path = tmp.into_temp_path();
    tmp_path
        .persist(&target)
        .map_err(|e| extract_err(e.error))?;
    let _ = crate::atomic_file::sync_dir(dir);
    tracing::info!(path = %target.display(), version = BUNDLED_VERSION, "extracted the bundled nats-server");
    Ok(target)
}

/// The embedded binary, decompressed and checked against its recorded hash.
fn decompress() -> Result<Vec<u8>, NatsError> {
    let mut bytes = Vec::with_capacity(BUNDLED_SIZE.parse().unwrap_or(0));
    zstd::stream::read::Decoder::new(BUNDLE_ZST)
        .and_then(|mut d| d.read_to_end(&mut bytes))
        .map_err(|e| NatsError::BundleCorrupt {
            expected: BUNDLED_SHA256.into(),
            actual: format!("unreadable: {e}"),
        })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != BUNDLED_SHA256 {
        return Err(NatsError::BundleCorrupt {
            expected: BUNDLED_SHA256.into(),
            actual,
        });
    }
    Ok(bytes)
}

/// True when `path` is an executable regular file whose content hashes to the bundled sha256.
fn is_verified(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 == 0o111 => {}
        _ => return false,
    }
    hash_file(path).is_ok_and(|h| h == BUNDLED_SHA256)
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs the bundled nats-server (extracted into `dir`) with `args`, retrying while a concurrent fork
/// briefly holds the freshly written binary open (ETXTBSY).
#[cfg(test)]
pub(crate) fn run_bundled(dir: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let path = extract_to(dir).unwrap();
    for _ in 0..100 {
        match std::process::Command::new(&path).args(args).output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} kept failing with ETXTBSY", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_once_and_replaces_a_corrupt_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = extract_locked(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(binary_name()));
        assert!(is_verified(&path));
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());

        // A verified copy is reused as is.
        let again = extract_locked(dir.path()).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&again).unwrap()),
            inode
        );

        // A copy whose hash does not match is replaced.
        fs::write(&path, b"not nats-server").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!is_verified(&path));
        let fixed = extract_locked(dir.path()).unwrap();
        assert!(is_verified(&fixed));
        assert_eq!(
            fs::metadata(&fixed).unwrap().len(),
            BUNDLED_SIZE.parse::<u64>().unwrap()
        );
        assert_eq!(
            fs::metadata(&fixed).unwrap().permissions().mode() & 0o777,
            0o755
        );

        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn extracted_binary_runs_and_reports_the_bundled_version() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_bundled(dir.path(), &["--version".as_ref()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("v{BUNDLED_VERSION}")), "{text}");
    }
}
