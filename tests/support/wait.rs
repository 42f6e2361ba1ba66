//! Waiting without fixed sleeps: poll a condition until a deadline.
//!
//! A condition returns either `bool` (done or not) or `Option<T>` (done with a value); both implement [`Ready`],
//! so one [`eventually`] serves both: `eventually(t, "x", || a == b)` returns `()`,
//! `eventually(t, "pid", || server_pid())` returns the pid.

use std::time::{Duration, Instant};

/// First pause between two polls; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between two polls.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// What a polled condition returns: `bool` or `Option<T>`.
pub trait Ready {
    /// What [`eventually`] returns once the condition holds: `()` for `bool`, `T` for `Option<T>`.
    type Value;
    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Pause before the next poll: `pause` (then doubled, up to [`MAX_PAUSE`]), never past `deadline`; `None` once the
/// deadline has passed.
fn next_pause(pause: &mut Duration, deadline: Instant) -> Option<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return None;
    }
    let this = (*pause).min(deadline - now);
    *pause = (*pause * 2).min(MAX_PAUSE);
    Some(this)
}

/// Polls `condition` until it holds (its value) or `timeout` passes (`None`); the last poll is at the deadline.
pub fn poll<R: Ready>(timeout: Duration, mut condition: impl FnMut() -> R) -> Option<R::Value> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = condition().ready() {
            return Some(v);
        }
        std::thread::sleep(next_pause(&mut pause, deadline)?);
    }
}

/// Polls `condition` until it holds and returns its value; panics after `timeout` naming `what`.
pub fn eventually<R: Ready>(
    timeout: Duration,
    what: &str,
    condition: impl FnMut() -> R,
) -> R::Value {
    eventually_or(timeout, what, String::new, condition)
}

/// [`eventually`] whose failure message ends with `context()` (e.g. the nodes' last log lines).
pub fn eventually_or<R: Ready>(
    timeout: Duration,
    what: &str,
    context: impl FnOnce() -> String,
    condition: impl FnMut() -> R,
) -> R::Value {
    match poll(timeout, condition) {
        Some(v) => v,
        None => panic!(
            "timed out after {timeout:?} waiting for: {what}\n{}",
            context()
        ),
    }
}

/// Async form of [`eventually`]: awaits `condition()` until it holds; panics after `timeout` naming `what`.
pub async fn eventually_async<R, F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = condition().await.ready() {
            return v;
        }
        match next_pause(&mut pause, deadline) {
            Some(p) => tokio::time::sleep(p).await,
            None => panic!("timed out after {timeout:?} waiting for: {what}"),
        }
    }
}

/// Runs `check` again and again (every 100 ms, the last time at the end) for `window`: for what must keep holding
/// for a while, with its own assertions.
pub fn during(window: Duration, mut check: impl FnMut()) {
    let deadline = Instant::now() + window;
    loop {
        check();
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100).min(deadline - now));
    }
}
