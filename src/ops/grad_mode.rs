//! Gradient tracking switched off for a scope, as `torch.no_grad()` does.
//!
//! candle records an op whenever one input is a `Var` (or depends on one), and a recorded op
//! keeps its inputs alive. An unmerged adapter's trainable cores are `Var`s, so an inference
//! forward through it would keep every activation of the network until the logits are dropped
//! (3.7 GiB instead of 0.4 GiB for MiniLM at batch 64). Layers that hold `Var`s consult
//! [`grad_enabled`] and detach their outputs inside [`no_grad`].

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread should record gradients (false inside [`no_grad`]).
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Runs `f` with gradient recording off on this thread; restores the previous state after,
/// also when `f` panics.
///
/// ```
/// assert!(ttlora::ops::grad_enabled());
/// let inside = ttlora::ops::no_grad(ttlora::ops::grad_enabled);
/// assert!(!inside && ttlora::ops::grad_enabled());
/// ```
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_grad_mode(false, f)
}

/// Runs `f` with the thread-local flag `flag` set to `value`; restores the previous value
/// after, also when `f` panics. The scoped modes of this module are built on it.
pub(crate) fn with_thread_flag<T>(
    flag: &'static std::thread::LocalKey<Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|g| g.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|g| g.replace(value)));
    f()
}

/// Runs `f` with gradient recording set to `enabled` on this thread; restores the previous
/// state after, also when `f` panics.
fn with_grad_mode<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    with_thread_flag(&GRAD_ENABLED, enabled, f)
}

/// Runs `f` on one of rayon's worker threads, with this thread's grad mode, and waits for it.
///
/// A kernel that splits its work with rayon from a thread outside the pool hands every piece
/// to the workers through the global queue and sleeps on a lock until they finish; run from a
/// worker, it keeps one piece and the idle worker steals the other. Decoding a token is a
/// long run of such short kernels: on a worker, SmolLM2 decoded 34.5–35.9 tokens/s instead of
/// 27.3–29.1 (BENCHMARKS.md, issue 18). The grad mode is set on the worker both ways, because a worker waiting inside
/// another caller's step may run this closure. Other thread-local state does not travel: the
/// dropout generator stays on the calling thread, so `f` must not apply training dropout.
pub fn on_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let enabled = grad_enabled();
    rayon::scope(|_| with_grad_mode(enabled, f))
}

/// `t` itself while gradients are recorded, else `t` cut from the graph.
pub(crate) fn track(t: candle_core::Tensor) -> candle_core::Tensor {
    if grad_enabled() { t } else { t.detach() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_runs_with_the_callers_grad_mode() {
        assert!(on_worker(grad_enabled));
        assert!(!no_grad(|| on_worker(grad_enabled)));
        // The worker's own mode is left as it was.
        assert!(on_worker(|| no_grad(|| true)) && on_worker(grad_enabled));
    }

    #[test]
    fn nests_and_restores_after_a_panic() {
        no_grad(|| {
            no_grad(|| assert!(!grad_enabled()));
            assert!(!grad_enabled());
        });
        assert!(grad_enabled());
        let caught = std::panic::catch_unwind(|| no_grad(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(grad_enabled());
    }
}
