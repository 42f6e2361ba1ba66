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

/// Allocations of this size or more get pages of their own, given back to the system when freed.
const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory at the top of the heap beyond this is given back to the system at once.
const TRIM_THRESHOLD: i32 = 1 << 20;

/// Keep the heap compact: at most two malloc arenas (glibc otherwise creates one per thread that allocates, and
/// memory freed in one arena is not reused by another), and the large buffers of a batch (a pass's rows and
/// messages, a decoded message, a hash table) in pages of their own. glibc otherwise raises its threshold for
/// those after the first one is freed, up to 32 MiB, and takes them from the heap, where what is freed stays the
/// process's until a trim. Call before other threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
