//! The one integration-test binary. Where new tests go:
//! - `architecture`: ARCHITECTURE.md's dependency table holds, and no circle between files;
//! - `adapter_files`: hostile adapter folders through the CLI (clear error, nothing written);
//! - `cli`: end-to-end runs of the `ttlora` binary on tiny inputs (exit codes, stdout, stderr);
//! - `golden`: behaviour pinned across refactors (trained bytes and scores per method);
//! - `library`: the public library API used the way a downstream crate would;
//! - `methods`: the test matrix, every adapter method × the invariants each must keep;
//! - `models`: model families through the public API (tiny random configs);
//! - `peft`: HF PEFT LoRA folders against fixtures PEFT itself wrote;
//! - `train`: fine-tuning end to end on the bundled real SST-2 files with a tiny model;
//! - `regression`: one test per fixed bug, named `issue_<n>_<what>`.

mod adapter_files;
mod architecture;
mod cli;
mod golden;
mod library;
mod methods;
mod models;
mod peft;
mod train;
