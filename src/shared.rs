//! State shared by the publisher and the applier of a running node: configuration, the current capture,
//! the in-flight local changes ([`Pending`]) and the counters that operations read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::capture::Capture;
use crate::config::Config;
use crate::pending::Pending;

/// Counters and gauges, updated where the work happens.
#[derive(Default)]
pub struct Stats {
    pub published_rows: AtomicU64,
    pub published_msgs: AtomicU64,
    pub publish_errors: AtomicU64,
    pub discarded_rows: AtomicU64,
    pub applied_rows: AtomicU64,
    pub applied_msgs: AtomicU64,
    pub skipped_rows: AtomicU64,
    pub apply_errors: AtomicU64,
    /// Unix ms of the last local or remote change handled.
    pub last_activity_ms: AtomicU64,
    applied: Mutex<Vec<u64>>,
    paused: Mutex<Vec<Option<String>>>,
}

impl Stats {
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn set_applied(&self, shard: u32, seq: u64) {
        let mut v = self.applied.lock().unwrap();
        let i = shard as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = seq;
    }
    /// Applied stream position per shard (index 0 = shard 1).
    pub fn applied(&self) -> Vec<u64> {
        self.applied.lock().unwrap().clone()
    }
    pub fn set_paused(&self, shard: u32, error: Option<String>) {
        let mut v = self.paused.lock().unwrap();
        let i = shard as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, None);
        }
        v[i] = error;
    }
    /// Shards paused on a message they cannot apply, with the reason.
    pub fn paused(&self) -> Vec<(u32, String)> {
        let v = self.paused.lock().unwrap();
        v.iter()
            .enumerate()
            .filter_map(|(i, e)| e.clone().map(|e| (i as u32 + 1, e)))
            .collect()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// State shared by the publisher and the applier.
pub struct Shared {
    pub cfg: Config,
    capture: RwLock<Arc<Capture>>,
    pub pending: Pending,
    pub stats: Stats,
}

impl Shared {
    pub fn new(cfg: Config, capture: Capture, pending: Pending) -> Shared {
        Shared {
            cfg,
            capture: RwLock::new(Arc::new(capture)),
            pending,
            stats: Stats::default(),
        }
    }
    pub fn capture(&self) -> Arc<Capture> {
        self.capture.read().unwrap().clone()
    }
    pub fn set_capture(&self, cap: Capture) {
        *self.capture.write().unwrap() = Arc::new(cap);
    }
}

/// Return freed heap memory to the operating system after a large batch (glibc keeps it otherwise, and the
/// process would stay at its peak size).
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no memory we hold.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keep the heap compact: at most two malloc arenas (glibc otherwise creates one per thread that allocates, and
/// memory freed in one arena is not reused by another).
pub fn limit_heap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
