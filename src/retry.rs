//! The one retry policy: exponential backoff with jitter, used by every loop that retries (publishing, the
//! shard consumers, the applier's paused shards, stream creation, client connection, readiness, the embedded
//! server's restarts).
//!
//! Each delay is drawn from the upper half of the current step (`step/2 ..= step`), so nodes that fail together
//! (a leader election, a peer restarting) do not retry in lockstep, while a delay never drops below half the
//! step. Steps double up to the cap. The policy is a plain value: async code sleeps with
//! [`Backoff::sleep`], the server supervisor's thread waits on its own condition variable with
//! [`Backoff::next_delay`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter: `initial`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    /// The delay before the next attempt (jittered), and the step doubled for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        jitter(step)
    }

    /// The step the next delay is drawn from (its upper bound), for log lines.
    pub fn current(&self) -> Duration {
        self.step
    }

    /// Back to the initial step after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }

    /// Sleeps the next delay; false when `cancel` fired first.
    pub async fn sleep(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// A duration drawn uniformly from `d/2 ..= d`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = fastrand::u64(0..=(d - half).as_micros() as u64);
    half + Duration::from_micros(extra)
}

/// How [`ask`] spaces and times its tries.
#[derive(Debug, Clone, Copy)]
pub struct Asking {
    /// Time given to the first try; each later one gets half as long again as the one before, up to `longest`.
    pub first: Duration,
    pub longest: Duration,
    /// Time between the starts of two tries (jittered, doubling up to `longest_gap`).
    pub gap: Duration,
    pub longest_gap: Duration,
}

impl Asking {
    /// For the requests of a node's start while its cluster forms: tries of 250 ms and longer, a new one every
    /// 100 to 250 ms (an answer becomes possible only for a try sent after the group's leader exists, so the
    /// gap bounds the wait once it does).
    pub const FORMING: Asking = Asking {
        first: Duration::from_millis(250),
        longest: Duration::from_secs(5),
        gap: Duration::from_millis(100),
        longest_gap: Duration::from_millis(250),
    };
}

/// The most tries [`ask`] keeps waiting at once.
const WAITING_AT_MOST: usize = 8;

/// Asks with `try_once` until a try succeeds or `deadline` passes, for requests a forming cluster may leave
/// unanswered (JetStream never answers a request that reached a RAFT group before its leader was elected). A
/// new try starts every gap while earlier ones still wait, so an answer that becomes possible is had within
/// about one gap instead of after the timeout of a try sent just before. The first success is returned (tries
/// still waiting are dropped); every failure, or `no_answer(its time)` for a try that timed out, goes to
/// `failed`. After `deadline` no try starts, and once none waits the last failure is returned.
pub async fn ask<T, E, Fut>(
    asking: Asking,
    deadline: tokio::time::Instant,
    mut try_once: impl FnMut() -> Fut,
    no_answer: impl Fn(Duration) -> E,
    mut failed: impl FnMut(&E),
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use futures::StreamExt;
    let mut waiting = futures::stream::FuturesUnordered::new();
    let mut time = asking.first;
    let mut gaps = Backoff::new(asking.gap, asking.longest_gap);
    let mut next = tokio::time::Instant::now();
    loop {
        let may_start = waiting.len() < WAITING_AT_MOST && (waiting.is_empty() || next < deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next), if may_start => {
                let given = time;
                time = (time * 3 / 2).min(asking.longest);
                let attempt = try_once();
                waiting.push(async move { tokio::time::timeout(given, attempt).await.map_err(|_| given) });
                next = tokio::time::Instant::now() + gaps.next_delay();
            }
            Some(r) = waiting.next() => {
                let e = match r {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => e,
                    Err(given) => no_answer(given),
                };
                failed(&e);
                if waiting.is_empty() && tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_to_the_cap_and_delays_stay_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let mut steps = Vec::new();
        for _ in 0..6 {
            let step = b.current();
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside {step:?}/2..={step:?}"
            );
            steps.push(step.as_millis());
        }
        assert_eq!(steps, [100, 200, 400, 700, 700, 700]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let d = Duration::from_secs(1);
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| jitter(d)).collect();
        assert!(
            draws.len() > 10,
            "50 draws gave only {} values",
            draws.len()
        );
    }

    #[tokio::test]
    async fn sleep_ends_early_on_cancel() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.sleep(&cancel).await);
    }
    fn quick() -> Asking {
        Asking {
            first: Duration::from_millis(50),
            longest: Duration::from_millis(200),
            gap: Duration::from_millis(20),
            longest_gap: Duration::from_millis(40),
        }
    }

    #[tokio::test]
    async fn a_try_that_is_never_answered_does_not_hold_up_a_later_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let tries = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut failures = 0;
        let r: Result<usize, String> = ask(
            Asking {
                first: Duration::from_secs(5),
                ..quick()
            },
            deadline,
            || {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        // The first request is never answered.
                        std::future::pending::<()>().await;
                    }
                    Ok(n)
                }
            },
            |t| format!("no answer within {t:?}"),
            |_| failures += 1,
        )
        .await;
        assert_eq!(r, Ok(1));
        assert_eq!(failures, 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the second try's answer waited for the first try's time: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn after_the_deadline_the_last_failure_is_returned() {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        let mut seen = Vec::new();
        let mut n = 0;
        let r: Result<(), String> = ask(
            quick(),
            deadline,
            || {
                n += 1;
                let n = n;
                async move {
                    if n % 2 == 0 {
                        std::future::pending::<()>().await;
                    }
                    Err(format!("refused {n}"))
                }
            },
            |t| format!("no answer within {t:?}"),
            |e: &String| seen.push(e.clone()),
        )
        .await;
        let last = r.unwrap_err();
        assert!(tokio::time::Instant::now() >= deadline);
        assert_eq!(seen.last(), Some(&last));
        assert!(seen.iter().any(|e| e.starts_with("refused")), "{seen:?}");
        assert!(
            seen.iter().any(|e| e.starts_with("no answer within")),
            "{seen:?}"
        );
    }
}
