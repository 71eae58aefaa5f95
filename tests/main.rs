//! The one integration-test binary. Where new tests go:
//! - `architecture`: ARCHITECTURE.md's dependency table holds, and no circle between files;
//! - `adapter_files`: hostile adapter folders through the CLI (clear error, nothing written);
//! - `causal_lm`: causal-LM fine-tuning of the packaged SmolLM2 and its refusals;
//! - `cli`: end-to-end runs of the `ttlora` binary on tiny inputs (exit codes, stdout, stderr);
//! - `common`: the helpers the others share (a helper moves here once a second file needs
//!   it): `TempDir` (a fresh folder per test, removed on drop, also after a failure),
//!   `test_device!` (a test body on the CPU and, with `--features cuda`, on CUDA), tiny model
//!   folders, the CLI runner, fixed inputs;
//! - `fuzz`: every reader fed mutated real inputs (a value or an error, never a panic, an
//!   abort or an allocation past [`ALLOCATION_CAP`]), and the crashers it found;
//! - `golden`: behaviour pinned across refactors (trained bytes and scores per method);
//! - `library`: the public library API used the way a downstream crate would;
//! - `methods`: the test matrix, every model family × adapter method × the invariants each
//!   must keep (per device);
//! - `models`: model families through the public API (tiny random configs; per device);
//! - `peft`: HF PEFT LoRA folders against fixtures PEFT itself wrote;
//! - `train`: fine-tuning end to end on the bundled real SST-2 files with a tiny model;
//! - `search`: `ttlora search` end to end (ASHA's pruning in the journal, reruns, kills,
//!   two workers, refusals) on a tiny model;
//! - `regression`: one test per fixed bug, named `issue_<n>_<what>`.

mod adapter_files;
mod architecture;
mod causal_lm;
mod cli;
mod common;
mod fuzz;
mod golden;
mod library;
mod methods;
mod models;
mod peft;
mod regression;
mod search;
mod train;

/// The largest single allocation this test binary allows: far above what any test needs
/// (tiny models), far below what a size read unchecked from a hostile file asks for. Past
/// it the allocation fails and the process aborts, failing the run loudly.
const ALLOCATION_CAP: usize = 1 << 30;

/// The system allocator, refusing allocations past [`ALLOCATION_CAP`].
struct Capped;

// SAFETY: every call is forwarded to the system allocator unchanged, or refused with a null
// pointer, which `GlobalAlloc` allows.
unsafe impl std::alloc::GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
