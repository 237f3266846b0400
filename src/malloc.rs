//! Process-wide allocator settings for CPU training and inference.
//!
//! candle allocates a fresh buffer for every tensor op, so a training step frees and reallocates the same few
//! hundred megabytes over and over. With glibc's defaults, freed memory at the top of the heap is handed back to
//! the kernel and buffers above the dynamic mmap threshold are mapped anew, so each step pays page faults and page
//! zeroing again: on the demo's tiny reranker that was a third of the step time (`sys` 3.8 s of a 14.7 s run).
//! Keeping freed memory in the process removes it. The settings are process-global, so the library never applies
//! them by itself: the `umrank` binary does at start-up, and so can any program that embeds the library.

/// Keeps freed heap memory in the process instead of returning it to the kernel after every step. A no-op where
/// the C library is not glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::retain_freed_memory();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`): smaller buffers come from
    /// the heap and are reused.
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    /// The heap is trimmed only when this much is free at its top, which a training step never frees.
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    /// Extra memory requested on each heap growth, so that growth happens in few large steps.
    const TOP_PAD: libc::c_int = 64 << 20;

    pub fn retain_freed_memory() {
        for (param, value) in [
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (libc::M_TOP_PAD, TOP_PAD),
        ] {
            // SAFETY: mallopt only changes allocator tuning parameters; it is called with glibc's documented
            // parameter names and in-range values, and returns 0 (ignored: the defaults stay) if it refuses one.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}
