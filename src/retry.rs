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
}
