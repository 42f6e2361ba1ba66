//! Repeated conditions summarised, not spammed: a peer that stays down, a stream that cannot be placed, a
//! consumer that keeps failing. Each condition (a key, e.g. [`normalise`]d log text or "stream X") is reported
//! when it starts, then at most once per period with the number of occurrences since the last report and the
//! last text, and once when it ends: resolved by the caller ([`Repeats::resolve`]) or quiet for a while
//! ([`Repeats::expire`]).
//!
//! The tracker only decides *what* to say; callers log the [`Report`]s at their own levels and with their own
//! words. Every method takes the current time, so tests drive it with a made-up clock and never sleep.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one summary line per condition per period.
pub const PERIOD: Duration = Duration::from_secs(30);
/// A condition not seen for this long has ended.
pub const QUIET: Duration = Duration::from_secs(15);
/// Conditions tracked at once; beyond that, new ones are reported every time (never silently dropped).
const MAX_CONDITIONS: usize = 64;

/// What to log about one occurrence or end of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The condition starts (or is not tracked): log `text` as it is.
    Started { text: String },
    /// Still going on: `count` occurrences since the last report (this one included), `total` since it started
    /// `ongoing` ago; `text` is the latest.
    Repeating {
        count: u64,
        total: u64,
        ongoing: Duration,
        text: String,
    },
    /// Over: `unreported` occurrences since the last report, `total` in all, over `lasted`; `text` is the last.
    Ended {
        unreported: u64,
        total: u64,
        lasted: Duration,
        text: String,
    },
}

#[derive(Debug)]
struct Condition {
    started: Instant,
    last_seen: Instant,
    last_report: Instant,
    unreported: u64,
    total: u64,
    text: String,
}

impl Condition {
    fn ended(self, now: Instant) -> Report {
        Report::Ended {
            unreported: self.unreported,
            total: self.total,
            lasted: now.saturating_duration_since(self.started),
            text: self.text,
        }
    }
}

/// The conditions going on now, by key.
#[derive(Debug)]
pub struct Repeats {
    period: Duration,
    quiet: Duration,
    active: HashMap<String, Condition>,
}

impl Default for Repeats {
    fn default() -> Self {
        Repeats::new(PERIOD, QUIET)
    }
}

impl Repeats {
    /// Summaries at most every `period`; a condition ends after `quiet` without occurrence.
    pub fn new(period: Duration, quiet: Duration) -> Repeats {
        Repeats {
            period,
            quiet,
            active: HashMap::new(),
        }
    }

    /// One occurrence of condition `key` at `now`, described by `text`. `None`: say nothing this time.
    pub fn observe(&mut self, key: &str, text: &str, now: Instant) -> Option<Report> {
        // A condition quiet for long enough is over: this occurrence starts a new one.
        if self
            .active
            .get(key)
            .is_some_and(|c| now.saturating_duration_since(c.last_seen) >= self.quiet)
        {
            self.active.remove(key);
        }
        let Some(c) = self.active.get_mut(key) else {
            if self.active.len() < MAX_CONDITIONS {
                self.active.insert(
                    key.to_string(),
                    Condition {
                        started: now,
                        last_seen: now,
                        last_report: now,
                        unreported: 0,
                        total: 1,
                        text: text.to_string(),
                    },
                );
            }
            return Some(Report::Started {
                text: text.to_string(),
            });
        };
        c.last_seen = now;
        c.total += 1;
        c.unreported += 1;
        if c.text != text {
            c.text = text.to_string();
        }
        if now.saturating_duration_since(c.last_report) < self.period {
            return None;
        }
        c.last_report = now;
        let count = std::mem::take(&mut c.unreported);
        Some(Report::Repeating {
            count,
            total: c.total,
            ongoing: now.saturating_duration_since(c.started),
            text: c.text.clone(),
        })
    }

    /// Condition `key` is resolved (the retry succeeded): its end, if it was going on.
    pub fn resolve(&mut self, key: &str, now: Instant) -> Option<Report> {
        self.active.remove(key).map(|c| c.ended(now))
    }

    /// Every condition whose key satisfies `matches` is resolved; their ends, by key.
    pub fn resolve_where(
        &mut self,
        matches: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<(String, Report)> {
        let keys: Vec<String> = self.active.keys().filter(|k| matches(k)).cloned().collect();
        let mut ended: Vec<_> = keys
            .into_iter()
            .filter_map(|k| self.resolve(&k, now).map(|r| (k, r)))
            .collect();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        ended
    }

    /// Conditions quiet for the quiet time are over: the ends of those that repeated (one that happened once
    /// was said once and is simply forgotten), by key.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Report)> {
        let quiet = self.quiet;
        let over: Vec<String> = self
            .active
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        let mut ended: Vec<_> = over
            .into_iter()
            .filter_map(|k| {
                let c = self.active.remove(&k)?;
                (c.total > 1).then(|| {
                    // It ended when it was last seen, not when we noticed.
                    let at = c.last_seen;
                    (k, c.ended(at))
                })
            })
            .collect();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        ended
    }

    /// True while condition `key` is going on.
    pub fn is_active(&self, key: &str) -> bool {
        self.active.contains_key(key)
    }
}

/// A key for a log line: runs of digits become `#` (attempt counts, ids, durations), except in network
/// addresses (`127.0.0.1:6222`, `[::1]:6222`, `host.example:6222`, URLs), which tell conditions apart.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, token) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if is_address(token) {
            out.push_str(token);
            continue;
        }
        let mut in_digits = false;
        for ch in token.chars() {
            if ch.is_ascii_digit() {
                if !in_digits {
                    out.push('#');
                }
                in_digits = true;
            } else {
                out.push(ch);
                in_digits = false;
            }
        }
    }
    out
}

/// True for `host:port` (the host with a dot, or bracketed IPv6, or `localhost`) and URLs, surrounding
/// punctuation aside.
pub fn is_address(token: &str) -> bool {
    let t = token
        .trim_start_matches(['(', '"', '\'', '<'])
        .trim_end_matches([',', ':', ')', ';', '"', '\'', '>', '.']);
    if t.contains("://") {
        return true;
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return false;
    };
    !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
        && (host.contains('.')
            || (host.starts_with('[') && host.ends_with(']'))
            || host == "localhost")
}

/// The first network address in `text` (see [`is_address`]), punctuation trimmed.
pub fn first_address(text: &str) -> Option<&str> {
    text.split(' ').find(|t| is_address(t)).map(|t| {
        t.trim_start_matches(['(', '"', '\'', '<'])
            .trim_end_matches([',', ':', ')', ';', '"', '\'', '>', '.'])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn repeats() -> Repeats {
        Repeats::new(30 * S, 10 * S)
    }

    #[test]
    fn keys_drop_counts_but_keep_addresses() {
        let a = "Error trying to connect to route (attempt 17): dial tcp 127.0.0.1:4248: connect: connection refused";
        let b = "Error trying to connect to route (attempt 18): dial tcp 127.0.0.1:4248: connect: connection refused";
        let c = "Error trying to connect to route (attempt 18): dial tcp 127.0.0.1:4249: connect: connection refused";
        assert_eq!(normalise(a), normalise(b));
        assert_ne!(normalise(b), normalise(c));
        assert_eq!(
            normalise(a),
            "Error trying to connect to route (attempt #): dial tcp 127.0.0.1:4248: connect: connection refused"
        );
        assert_eq!(
            normalise("127.0.0.1:51234 - rid:12 - took 250ms"),
            "127.0.0.1:51234 - rid:# - took #ms"
        );
        assert_eq!(
            normalise("route nats://10.0.0.2:6222/ down 3 times"),
            "route nats://10.0.0.2:6222/ down # times"
        );
        assert!(is_address("[::1]:6222"));
        assert!(is_address("localhost:6222,"));
        assert!(!is_address("rid:12"));
        assert!(!is_address("12:30"));
        assert_eq!(
            first_address("[ERR] 10.1.2.3:6222 - rid:1 - Route connection created"),
            Some("10.1.2.3:6222")
        );
        assert_eq!(first_address("no address here: 5"), None);
    }

    #[test]
    fn a_repeating_condition_is_said_once_then_summarised_per_period() {
        let t0 = Instant::now();
        let mut r = repeats();
        let mut said = Vec::new();
        // Four occurrences a second for 95 s.
        for i in 0..380u64 {
            let now = t0 + Duration::from_millis(250 * i);
            if let Some(rep) = r.observe("k", &format!("attempt {i}"), now) {
                said.push((now - t0, rep));
            }
        }
        assert_eq!(said.len(), 4, "{said:?}");
        assert_eq!(
            said[0],
            (
                Duration::ZERO,
                Report::Started {
                    text: "attempt 0".into()
                }
            )
        );
        assert_eq!(
            said[1],
            (
                30 * S,
                Report::Repeating {
                    count: 120,
                    total: 121,
                    ongoing: 30 * S,
                    text: "attempt 120".into()
                }
            )
        );
        assert!(matches!(
            said[3].1,
            Report::Repeating {
                count: 120,
                total: 361,
                ..
            }
        ));
        // Quiet for less than the quiet time: still going on.
        let last = t0 + Duration::from_millis(250 * 379);
        assert!(r.expire(last + 9 * S).is_empty());
        assert!(r.is_active("k"));
        // Then over, with the occurrences the last summary did not count.
        assert_eq!(
            r.expire(last + 10 * S),
            vec![(
                "k".to_string(),
                Report::Ended {
                    unreported: 19,
                    total: 380,
                    lasted: last - t0,
                    text: "attempt 379".into()
                }
            )]
        );
        assert!(!r.is_active("k"));
    }

    #[test]
    fn conditions_are_kept_apart_and_resolved_by_the_caller() {
        let t0 = Instant::now();
        let mut r = repeats();
        assert!(matches!(
            r.observe("peer a", "a down", t0),
            Some(Report::Started { .. })
        ));
        assert!(matches!(
            r.observe("peer b", "b down", t0),
            Some(Report::Started { .. })
        ));
        assert_eq!(r.observe("peer a", "a down", t0 + S), None);
        assert_eq!(r.observe("peer b", "b down", t0 + S), None);
        let ended = r.resolve_where(|k| k.ends_with('a'), t0 + 2 * S);
        assert_eq!(
            ended,
            vec![(
                "peer a".to_string(),
                Report::Ended {
                    unreported: 1,
                    total: 2,
                    lasted: 2 * S,
                    text: "a down".into()
                }
            )]
        );
        assert!(r.is_active("peer b"));
        assert!(matches!(
            r.resolve("peer b", t0 + 3 * S),
            Some(Report::Ended { total: 2, .. })
        ));
        assert_eq!(r.resolve("peer b", t0 + 3 * S), None);
        // After its end, the next occurrence starts the condition again.
        assert!(matches!(
            r.observe("peer a", "a down", t0 + 4 * S),
            Some(Report::Started { .. })
        ));
    }

    #[test]
    fn a_one_off_is_forgotten_quietly_and_a_recurrence_after_the_quiet_time_starts_afresh() {
        let t0 = Instant::now();
        let mut r = repeats();
        assert!(r.observe("k", "once", t0).is_some());
        assert!(r.expire(t0 + 10 * S).is_empty());
        assert!(!r.is_active("k"));
        // Without an expire call in between, a late recurrence is a new start too.
        assert!(r.observe("j", "x", t0).is_some());
        assert_eq!(
            r.observe("j", "x", t0 + 11 * S),
            Some(Report::Started { text: "x".into() })
        );
    }

    #[test]
    fn beyond_the_tracked_conditions_every_occurrence_is_said() {
        let t0 = Instant::now();
        let mut r = repeats();
        for i in 0..MAX_CONDITIONS {
            r.observe(&format!("k{i}"), "x", t0);
        }
        assert!(r.observe("extra", "x", t0).is_some());
        assert!(r.observe("extra", "x", t0).is_some());
        assert!(r.observe("k0", "x", t0).is_none());
    }
}
