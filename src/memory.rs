//! Measuring memory: the peak resident set of a process, per phase.
//!
//! This module only reads and resets counters and hands free memory back; it changes no
//! allocator setting. The examples' allocator setting is theirs, in
//! `examples/common/allocator.rs`, called first thing in each `main`.

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), on Linux.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux: writing `5` to `/proc/self/clear_refs`),
/// so that [`peak_rss`] measures each mode on its own within one process. Memory the
/// allocator holds for reuse (the examples set glibc to keep freed buffers: `examples/common/allocator.rs`)
/// is handed back first, so the previous mode's buffers do not count toward the next.
pub fn reset_peak_rss() {
    release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Hands the memory the allocator holds for reuse back to the kernel (glibc's
/// `malloc_trim`), so that the resident set is what is live. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
