//! The publisher's progress, kept in the node-local state file (`seq_map_path`), outside the user's database so
//! that recording progress never takes the database's write lock.
//!
//! `published_upto`: change-log ids up to here are acknowledged by JetStream. `inflight_end`: the end of the
//! range being published; after a crash the first publish covers exactly that range again, so it carries the
//! same message ids and JetStream drops what it already stored.

use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is in use by another running node; give each node its own `seq_map_path`"
    )]
    Locked { path: PathBuf },
}

#[derive(Debug)]
pub struct PublishState {
    path: PathBuf,
    _lock: File,
    node_id: u64,
    incarnation: u64,
    pub published_upto: i64,
    pub inflight_end: i64,
    /// The progress was read from the file (else it starts from zero: a first start, or a file lost, damaged,
    /// or another node's; see `publish::recover`).
    pub from_file: bool,
}

const MAGIC: &str = "harmonylite-publish-state-v1";

impl PublishState {
    /// Open (and lock) the state file. Progress recorded for another node or another change-log incarnation
    /// is ignored: it starts from zero.
    pub fn open(path: &Path, node_id: u64, incarnation: u64) -> Result<PublishState, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut st = PublishState {
            path: path.to_path_buf(),
            _lock: lock,
            node_id,
            incarnation,
            published_upto: 0,
            inflight_end: 0,
            from_file: false,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let f: Vec<&str> = text.split_whitespace().collect();
                let parsed = (f.len() == 5 && f[0] == MAGIC)
                    .then(|| {
                        Some((
                            f[1].parse::<u64>().ok()?,
                            f[2].parse::<u64>().ok()?,
                            f[3].parse().ok()?,
                            f[4].parse().ok()?,
                        ))
                    })
                    .flatten();
                match parsed {
                    Some((n, i, p, e)) if n == node_id && i == incarnation => {
                        st.published_upto = p;
                        st.inflight_end = e;
                        st.from_file = true;
                    }
                    Some(_) => {
                        tracing::info!(path = %path.display(), "state file belongs to another node or change log; starting afresh")
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "state file not recognised (an old sequence map?); it will be replaced")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(st)
    }

    /// The node's incarnation of the change log this state is for.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Write the state atomically and durably (it survives a crash or a power loss whole).
    pub fn save(&self) -> Result<(), StateError> {
        let text = format!(
            "{MAGIC} {} {} {} {}\n",
            self.node_id, self.incarnation, self.published_upto, self.inflight_end
        );
        crate::atomic_file::write(&self.path, text.as_bytes(), 0o644).map_err(|source| {
            StateError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_state_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        {
            let mut s = PublishState::open(&p, 1, 9).unwrap();
            assert_eq!((s.published_upto, s.inflight_end), (0, 0));
            s.published_upto = 40;
            s.inflight_end = 50;
            s.save().unwrap();
            assert!(matches!(
                PublishState::open(&p, 1, 9),
                Err(StateError::Locked { .. })
            ));
        }
        let s = PublishState::open(&p, 1, 9).unwrap();
        assert_eq!((s.published_upto, s.inflight_end), (40, 50));
        assert!(s.from_file);
        drop(s);
        let s = PublishState::open(&p, 1, 10).unwrap();
        assert_eq!(
            s.published_upto, 0,
            "another change-log incarnation starts afresh"
        );
        drop(s);
        std::fs::write(&p, [0xa1, 0x00]).unwrap();
        let s = PublishState::open(&p, 1, 9).unwrap();
        assert_eq!(s.published_upto, 0);
        assert!(!s.from_file);
    }
}
