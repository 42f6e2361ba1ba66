//! Where local transactions end in the change log, as far as this node has seen.
//!
//! A read transaction sees whole committed transactions only, so the change log's last id in any read is the
//! end of one. While a backlog waits (an application writing faster than the cluster takes its changes), a
//! sampler thread reads that last id every millisecond, and a pass ends at one of the ends it saw: the pass
//! stays small (a pass is one unit, held whole by the publisher while it builds it and by every applier before
//! it applies it) and no transaction is cut in two. Without an end seen in range (the backlog was written while
//! the node was stopped) a pass takes [`MAX_PASS_ROWS`] rows, as before.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::MAX_PASS_ROWS;
use crate::capture;

/// The size a pass aims at when ends are known: one applier transaction's worth and less.
pub const TARGET_PASS_ROWS: i64 = 10_000;

/// Ends kept (the oldest go first): at one a millisecond, four seconds of them.
const KEEP: usize = 4096;

/// How often the sampler reads the change log's last id while a backlog waits.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// The transaction ends seen, shared by the publisher and its sampler.
#[derive(Default)]
pub struct CommitEnds {
    seen: Mutex<VecDeque<i64>>,
    /// More than [`TARGET_PASS_ROWS`] rows wait: the sampler reads.
    behind: AtomicBool,
    sampler: OnceLock<std::thread::Thread>,
}

impl CommitEnds {
    /// A change-log id that ends a committed transaction.
    pub fn note(&self, id: i64) {
        let mut q = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if q.back().is_none_or(|&b| id > b) {
            q.push_back(id);
            if q.len() > KEEP {
                q.pop_front();
            }
        }
    }

    /// Whether more than [`TARGET_PASS_ROWS`] rows wait; wakes the sampler when they start to.
    pub fn set_behind(&self, behind: bool) {
        if !self.behind.swap(behind, Ordering::Relaxed)
            && behind
            && let Some(t) = self.sampler.get()
        {
            t.unpark();
        }
    }

    /// Where the pass after `from` ends, `max` being the change log's last id now (a transaction's end itself):
    /// `max` when the rows fit a small pass; otherwise the last end seen within [`TARGET_PASS_ROWS`] rows, or
    /// else the first one after; without any within [`MAX_PASS_ROWS`] rows, `MAX_PASS_ROWS` rows on.
    pub fn cut(&self, from: i64, max: i64) -> i64 {
        if max - from <= TARGET_PASS_ROWS {
            return max;
        }
        let hard = max.min(from + MAX_PASS_ROWS);
        let target = from + TARGET_PASS_ROWS;
        let mut q = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|&b| b <= from) {
            q.pop_front();
        }
        let ends = q
            .iter()
            .copied()
            .chain((max <= hard).then_some(max))
            .take_while(|&b| b <= hard);
        let mut below = None;
        for b in ends {
            if b <= target {
                below = Some(b);
            } else {
                return below.unwrap_or(b);
            }
        }
        below.unwrap_or(hard)
    }
}

/// Starts the sampler: a thread with its own connection to `db` that reads the change log's last id every
/// millisecond while [`CommitEnds::set_behind`] says a backlog waits, and sleeps otherwise. It ends with
/// `cancel` (within a second).
pub fn start_sampler(db: &Path, ends: Arc<CommitEnds>, cancel: CancellationToken) {
    let conn = match crate::db::open_db(db) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the database to watch where transactions end; passes under a backlog take up to 100,000 rows");
            return;
        }
    };
    let shared = ends.clone();
    let spawned = std::thread::Builder::new()
        .name("commit-ends".into())
        .spawn(move || {
            while !cancel.is_cancelled() {
                if ends.behind.load(Ordering::Relaxed) {
                    if let Ok(id) = capture::max_log_id(&conn) {
                        ends.note(id);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                } else {
                    std::thread::park_timeout(Duration::from_secs(1));
                }
            }
        });
    match spawned {
        // Told to read when a backlog starts.
        Ok(h) => {
            let _ = shared.sampler.set(h.thread().clone());
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the thread that watches where transactions end")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(ids: &[i64]) -> CommitEnds {
        let e = CommitEnds::default();
        for &i in ids {
            e.note(i);
        }
        e
    }

    #[test]
    fn a_small_backlog_is_one_pass() {
        assert_eq!(
            ends(&[]).cut(100, 100 + TARGET_PASS_ROWS),
            100 + TARGET_PASS_ROWS
        );
    }

    #[test]
    fn a_pass_ends_at_the_last_end_seen_within_the_target() {
        let e = ends(&[50, 3_000, 7_000, 12_000, 40_000]);
        assert_eq!(e.cut(1_000, 500_000), 7_000);
        // The next pass goes on from there; ends at or below its start are dropped.
        assert_eq!(e.cut(7_000, 500_000), 12_000);
        assert_eq!(e.cut(12_000, 500_000), 40_000);
    }

    #[test]
    fn without_an_end_within_the_target_the_first_one_after_it() {
        let e = ends(&[90_000]);
        assert_eq!(e.cut(0, 500_000), 90_000);
        // The log's last id is an end too.
        assert_eq!(ends(&[]).cut(0, 60_000), 60_000);
    }

    #[test]
    fn without_any_end_in_reach_a_pass_takes_the_most_rows() {
        let e = ends(&[150_000]);
        assert_eq!(e.cut(0, 500_000), MAX_PASS_ROWS);
        assert_eq!(ends(&[]).cut(0, 500_000), MAX_PASS_ROWS);
    }

    #[test]
    fn ends_only_grow_and_few_are_kept() {
        let e = ends(&[10, 5, 10, 20]);
        assert_eq!(*e.seen.lock().unwrap(), [10, 20]);
        let e = ends(&(1..=(KEEP as i64 + 10)).collect::<Vec<_>>());
        assert_eq!(e.seen.lock().unwrap().len(), KEEP);
    }
}
