//! The `ttlora` command-line tool; all logic lives in the library, this only wires it up.

mod cli;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    // SAFETY: the first lines of main, before any thread starts.
    unsafe { ttlora::ops::pin_thread_count() };
    ttlora::data::quiet_guarded_panics();
    cli::main()
}

/// glibc's malloc returns tensor-sized buffers (≥ 128 KiB) to the kernel on free and takes
/// fresh pages, zeroed in page faults, for the next one: a MiniLM training step spent ~45% of
/// its time in the kernel doing that (BENCHMARKS.md). Serving every allocation from the heap
/// (no `mmap` ones, whose 32 MiB threshold cap left MiniLM's 48 MiB feed-forward activations
/// at batch 64 paying page faults each forward) and never trimming it reuses those pages.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it runs before any other thread starts.
    // A trim threshold of -1 is SIZE_MAX to glibc: never give the heap top back; an mmap
    // maximum of 0: no allocation from the main arena, however large, gets pages of its own
    // (a thread arena still maps a request larger than its 64 MiB heaps itself; the large
    // activations are allocated by the thread running the model, the main one).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}
