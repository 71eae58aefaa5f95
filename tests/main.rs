//! The one integration-test binary. Where new tests go:
//! - `architecture`: ARCHITECTURE.md's dependency table holds, and no circle between files;
//! - `adapter_files`: hostile adapter folders through the CLI (clear error, nothing written);
//! - `cli`: end-to-end runs of the `ttlora` binary on tiny inputs (exit codes, stdout, stderr);
//! - `common`: the helpers the others share (a helper moves here once a second file needs
//!   it): `TempDir` (a fresh folder per test, removed on drop, also after a failure),
//!   `test_device!` (a test body on the CPU and, with `--features cuda`, on CUDA), tiny model
//!   folders, the CLI runner, fixed inputs;
//! - `golden`: behaviour pinned across refactors (trained bytes and scores per method);
//! - `library`: the public library API used the way a downstream crate would;
//! - `methods`: the test matrix, every model family × adapter method × the invariants each
//!   must keep (per device);
//! - `models`: model families through the public API (tiny random configs; per device);
//! - `peft`: HF PEFT LoRA folders against fixtures PEFT itself wrote;
//! - `train`: fine-tuning end to end on the bundled real SST-2 files with a tiny model;
//! - `regression`: one test per fixed bug, named `issue_<n>_<what>`.

mod adapter_files;
mod architecture;
mod cli;
mod common;
mod golden;
mod library;
mod methods;
mod models;
mod peft;
mod regression;
mod train;
