//! The examples' allocator setting, in one file each example includes with
//! `#[path = "common/allocator.rs"] mod allocator;` (and `benches/` with
//! `#[path = "../examples/common/allocator.rs"]`). It is a process-wide choice, so it lives
//! with the binaries' `main`s and not in the library.

/// Lets the C allocator keep freed memory for reuse instead of handing every large buffer
/// back to the kernel.
///
/// A training step allocates and frees many activation-sized buffers (megabytes each). With
/// glibc's defaults most of them are fresh `mmap`s, so the step pays a page fault for every
/// 4 KiB it touches; `perf` put 8–10 % of a step in the kernel's page-fault path. This sets
/// glibc's `M_MMAP_THRESHOLD` to 32 MiB (its maximum), so buffers below it come from the
/// heap, and raises `M_TRIM_THRESHOLD` and `M_TOP_PAD` so the heap is not shrunk after
/// every step. It also keeps one arena (`M_ARENA_MAX`): the replicas' threads then reuse
/// each other's freed buffers instead of each holding its own high-water mark (with one
/// arena per thread, the main job's full fine-tuning peaked at 683 MB instead of 505 MB
/// with glibc's defaults; with one arena, 533 MB). The step gets faster (docs/BENCHMARKS.md).
///
/// Call it first thing in `main`. It is safe to call at any time (glibc's `mallopt` takes
/// the allocator's lock), but it only shapes what comes after it: an arena another thread
/// already created stays, and buffers already mapped stay mapped. That is why it belongs
/// to a binary's `main` and not to a library: it changes the whole process. It does
/// nothing on other C libraries and platforms. Returns whether the settings were applied.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: libc::c_int = 1 << 20;
        // SAFETY: mallopt only adjusts allocator parameters and takes glibc's own lock, so
        // it is sound at any time, from any thread; calling it first (see above) is for
        // its effect, not its safety.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * MIB) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 * MIB) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
