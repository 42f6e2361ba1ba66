//! A full disk, said loudly but once: the publisher cannot record its progress, the applier cannot write the
//! database. Each keeps retrying with its backoff; this tracker turns the retries into one ERROR when the
//! condition starts, a summary at most every [`crate::repeat::PERIOD`] while it lasts, and one INFO line when a
//! retry succeeds again (see [`crate::repeat`]).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use crate::repeat::{Repeats, Report};

/// The parts of this node stopped by a full disk now (`/health` `disk_full`, `harmonylite_disk_full`).
static FULL: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Records whether part `what` is stopped by a full disk.
pub fn set_full(what: &'static str, full: bool) {
    let mut parts = FULL.lock().unwrap_or_else(|e| e.into_inner());
    if full {
        parts.insert(what);
    } else {
        parts.remove(what);
    }
}

/// The parts of this node stopped by a full disk now (empty when none).
pub fn full_parts() -> Vec<&'static str> {
    FULL.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect()
}

/// True when `e` (or an error it was caused by) is SQLite's "database or disk is full" or the system's "no space
/// left on device".
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = err.downcast_ref::<rusqlite::Error>()
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.raw_os_error() == Some(libc::ENOSPC)
                || io.kind() == std::io::ErrorKind::StorageFull)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// One component's full-disk condition (`what`: e.g. "publishing", "applying").
#[derive(Debug)]
pub struct DiskFull {
    what: &'static str,
    repeats: Repeats,
}

const KEY: &str = "disk full";

impl DiskFull {
    pub fn new(what: &'static str) -> DiskFull {
        DiskFull {
            what,
            repeats: Repeats::default(),
        }
    }

    /// An attempt failed with `e`. True when it was a full disk (then logged here: ERROR at the start, a summary
    /// while it lasts); false for any other error, which the caller reports its own way.
    pub fn failed(&mut self, e: &(dyn std::error::Error + 'static)) -> bool {
        if !is_disk_full(e) {
            return false;
        }
        set_full(self.what, true);
        let text = e.to_string();
        match self.repeats.observe(KEY, &text, Instant::now()) {
            Some(Report::Started { text }) => tracing::error!(
                error = %text,
                "{} stopped: the disk is full; nothing is lost, retrying until space is free",
                self.what
            ),
            Some(Report::Repeating {
                count,
                total,
                ongoing,
                text,
            }) => tracing::error!(
                error = %text,
                failures = count,
                total,
                ongoing_s = ongoing.as_secs(),
                "{} still stopped: the disk is full",
                self.what
            ),
            _ => {}
        }
        true
    }

    /// An attempt succeeded: the end of the condition is said, if it was going on.
    pub fn succeeded(&mut self) {
        set_full(self.what, false);
        if let Some(Report::Ended { total, lasted, .. }) = self.repeats.resolve(KEY, Instant::now())
        {
            tracing::info!(
                failures = total,
                lasted_s = lasted.as_secs(),
                "{} resumed: disk space is available again",
                self.what
            );
        }
    }

    /// True while the disk is known to be full.
    #[cfg(test)]
    fn is_full(&self) -> bool {
        self.repeats.is_active(KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_recognised_through_their_causes() {
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        assert!(is_disk_full(&sqlite));
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_disk_full(&io));
        #[derive(Debug, thiserror::Error)]
        #[error("state file: {source}")]
        struct Wrapped {
            source: std::io::Error,
        }
        assert!(is_disk_full(&Wrapped {
            source: std::io::Error::from_raw_os_error(libc::ENOSPC)
        }));
        assert!(!is_disk_full(&Wrapped {
            source: std::io::Error::from_raw_os_error(libc::EACCES)
        }));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(!is_disk_full(&busy));

        let mut d = DiskFull::new("applying");
        assert!(!d.failed(&busy));
        assert!(!d.is_full());
        assert!(d.failed(&sqlite));
        assert!(d.is_full());
        d.succeeded();
        assert!(!d.is_full());
    }
}
