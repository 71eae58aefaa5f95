//! The kernels' thread count, computed once.

use std::sync::OnceLock;

/// The CPU threads the kernels use: candle's count (`RAYON_NUM_THREADS`, else the physical
/// cores), computed once. candle 0.11 recomputes it on every call, reading `/proc/cpuinfo`
/// each time unless the variable is set (`strace`: 2,285 opens in a 24-token decode).
pub fn cpu_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Sets `RAYON_NUM_THREADS` to [`cpu_threads`] when it is unset, so that candle's own
/// per-matmul thread count is an environment read instead of a `/proc/cpuinfo` parse, and
/// rayon's pool gets the same count.
///
/// # Safety
/// Changes the process environment: call it before any other thread starts (`main`'s first
/// lines), as [`std::env::set_var`] requires.
pub unsafe fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = cpu_threads().to_string();
        // SAFETY: the caller guarantees no other thread runs yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads) };
    }
}
