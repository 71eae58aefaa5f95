//! Micro-benchmarks that print their own table (`ttlora bench …`).
//!
//! Owns: timing loops and their result rows. Uses `adapters/` and `tt/`. Must not print: the
//! CLI formats the rows. Performance claims live here and in BENCHMARKS.md, never in tests.

pub mod generate;
pub mod machine;
pub mod model_step;
pub mod roofline;
pub mod tt;

use std::time::{Duration, Instant};

/// Median wall time of `f` over at least `min_iters` runs and `min_time`, after one warm-up.
///
/// # Errors
/// The first error `f` returns.
pub fn time_median<E>(
    min_iters: usize,
    min_time: Duration,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Duration, E> {
    f()?;
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < min_iters.max(1) || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
        if samples.len() >= 1000 {
            break;
        }
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}
