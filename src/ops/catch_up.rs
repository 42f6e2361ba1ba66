//! Catching up: while this node is far behind its streams (it was stopped, or away behind a partition), what
//! it has applied since, how fast, and how long is left. Looked at with the rest of the view every
//! [`super::observe::PERIOD`] ([`Tracker::look`]): said in the log every [`LOG_EVERY`], shown in `/health`
//! (`catch_up`) and in the metrics (`harmonylite_catch_up_*`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::counters::CatchUp;
use crate::counters::{Counters, Total};

/// Behind by at least this many messages, the node is catching up.
pub const BEHIND_MESSAGES: u64 = 1_000;
/// How often progress is said in the log while catching up.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// Rates are measured over about this long.
const WINDOW: Duration = Duration::from_secs(5);

/// One look: when, rows applied so far (running total), messages handled so far (sum of applied positions).
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    rows: u64,
    handled: u64,
}

struct Active {
    started: Instant,
    first: Sample,
    recent: VecDeque<Sample>,
    logged: Instant,
}

/// Follows catch-ups from one look to the next.
#[derive(Default)]
pub struct Tracker {
    active: Option<Active>,
}

impl Tracker {
    /// Look at the node's counters now: begin, report or end a catch-up, and publish its view
    /// ([`Counters::set_catch_up`]).
    pub fn look(&mut self, c: &Counters) {
        let views = c.shard_views();
        // Unknown until every stream's end is known; a paused or gapped shard is not catching up.
        let behind: Option<u64> = views
            .iter()
            .filter(|v| v.paused.is_none() && v.gap.is_none())
            .map(|v| v.lag_msgs)
            .sum();
        let now = Sample {
            at: Instant::now(),
            rows: c.totals().get(Total::AppliedRows),
            handled: views.iter().map(|v| v.applied).sum(),
        };
        c.set_catch_up(self.step(behind, now));
    }

    fn step(&mut self, behind: Option<u64>, now: Sample) -> Option<CatchUp> {
        let behind = behind?;
        let Some(a) = &mut self.active else {
            if behind < BEHIND_MESSAGES {
                return None;
            }
            tracing::info!(
                behind_messages = behind,
                "catching up: this node is behind its streams"
            );
            self.active = Some(Active {
                started: now.at,
                first: now,
                recent: VecDeque::from([now]),
                logged: now.at,
            });
            return self.active.as_ref().map(|a| a.view(behind, now));
        };
        a.recent.push_back(now);
        while a.recent.len() > 2 && now.at.duration_since(a.recent[1].at) >= WINDOW {
            a.recent.pop_front();
        }
        let view = a.view(behind, now);
        if behind == 0 {
            let secs = now.at.duration_since(a.started).as_secs_f64();
            tracing::info!(
                applied_rows = view.applied_rows,
                seconds = (secs * 10.0).round() / 10.0,
                rows_per_second = (view.applied_rows as f64 / secs.max(0.001)).round(),
                "caught up"
            );
            self.active = None;
            return None;
        }
        if now.at.duration_since(a.logged) >= LOG_EVERY {
            a.logged = now.at;
            tracing::info!(
                applied_rows = view.applied_rows,
                rows_per_second = view.rows_per_second.round(),
                behind_messages = behind,
                remaining_seconds = view.remaining_seconds.map(|s| s.round()),
                "catching up"
            );
        }
        Some(view)
    }
}

impl Active {
    fn view(&self, behind: u64, now: Sample) -> CatchUp {
        let from = self.recent.front().copied().unwrap_or(now);
        let dt = now.at.duration_since(from.at).as_secs_f64();
        let (rows_per_second, messages_per_second) = if dt > 0.0 {
            (
                now.rows.saturating_sub(from.rows) as f64 / dt,
                now.handled.saturating_sub(from.handled) as f64 / dt,
            )
        } else {
            (0.0, 0.0)
        };
        CatchUp {
            behind_messages: behind,
            applied_rows: now.rows.saturating_sub(self.first.rows),
            rows_per_second,
            messages_per_second,
            remaining_seconds: (messages_per_second > 0.0)
                .then(|| behind as f64 / messages_per_second),
            seconds: now.at.duration_since(self.started).as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, s: u64, rows: u64, handled: u64) -> Sample {
        Sample {
            at: base + Duration::from_secs(s),
            rows,
            handled,
        }
    }

    #[test]
    fn a_catch_up_begins_far_behind_shows_its_pace_and_ends_caught_up() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        assert_eq!(
            tr.step(None, at(t, 0, 0, 0)),
            None,
            "streams not looked at yet"
        );
        assert_eq!(
            tr.step(Some(10), at(t, 0, 0, 0)),
            None,
            "a little behind is not a catch-up"
        );
        let v = tr.step(Some(5_000), at(t, 1, 0, 10)).expect("began");
        assert_eq!(
            (v.behind_messages, v.applied_rows, v.remaining_seconds),
            (5_000, 0, None)
        );
        // 2 s later: 1,000 messages (100,000 rows) handled.
        let v = tr
            .step(Some(4_000), at(t, 3, 100_000, 1_010))
            .expect("going on");
        assert_eq!(v.applied_rows, 100_000);
        assert_eq!(v.rows_per_second, 50_000.0);
        assert_eq!(v.messages_per_second, 500.0);
        assert_eq!(v.remaining_seconds, Some(8.0));
        assert_eq!(v.seconds, 2.0);
        // Under the threshold but not done: still catching up.
        assert!(tr.step(Some(10), at(t, 11, 400_000, 4_000)).is_some());
        assert_eq!(
            tr.step(Some(0), at(t, 12, 401_000, 4_010)),
            None,
            "caught up"
        );
        assert!(tr.active.is_none());
    }

    #[test]
    fn the_pace_is_measured_over_the_last_seconds() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        tr.step(Some(100_000), at(t, 0, 0, 0));
        // Slow at first, then 10,000 messages/s.
        let mut handled = 0;
        for s in 1..=20 {
            handled += if s <= 10 { 100 } else { 10_000 };
            tr.step(
                Some(100_000 - handled.min(99_999)),
                at(t, s, handled * 10, handled),
            );
        }
        let v = tr
            .step(
                Some(1_000),
                at(t, 21, (handled + 10_000) * 10, handled + 10_000),
            )
            .unwrap();
        assert_eq!(
            v.messages_per_second, 10_000.0,
            "the slow start is out of the window"
        );
        assert_eq!(v.remaining_seconds, Some(0.1));
    }
}
