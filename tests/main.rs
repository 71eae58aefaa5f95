//! The one integration-test binary. Where new tests go:
//! - `cli`: end-to-end runs of the `ttlora` binary on tiny inputs (exit codes, stdout, stderr);
//! - `library`: the public library API used the way a downstream crate would;
//! - `regression`: one test per fixed bug, named `issue_<n>_<what>`.

mod cli;
mod library;
