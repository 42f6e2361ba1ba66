//! Heap tuning for a long-running node with bursty batches: few malloc arenas, and freed memory handed back to
//! the operating system after large batches and periodically, so the resident size follows the load.

/// Return freed heap memory to the operating system (glibc keeps it otherwise, and the process would stay at
/// its peak size).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no memory we hold.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keep the heap compact: at most two malloc arenas (glibc otherwise creates one per thread that allocates, and
/// memory freed in one arena is not reused by another). Call before other threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
