//! Tensor ops with a hand-written backward, for the training path.
//!
//! Owns: the grad mode ([`no_grad`]), [`frozen_linear`] and [`quantized_linear`] (a frozen
//! weight kept in GGUF blocks), multi-head [`attention`] and [`causal_attention`] (GQA),
//! [`layer_norm`], [`rms_norm`], rotary embeddings ([`rope`], [`rope_heads`], [`rope_tables`]),
//! [`softmax_last_dim`], [`cross_entropy`] and [`linear_cross_entropy`] (an LM head's loss
//! without its logits), [`gelu`], [`swiglu`], seeded [`dropout`] and
//! [`dropout_add`]; the kernels' thread count ([`cpu_threads`]) and decoding's hand-off to
//! a worker thread ([`on_worker`]).
//! Must not know: models, adapters, files. Every op here states its derivative next to its
//! `bwd` and has a finite-difference test or one against candle's composed (differentiable)
//! ops, because candle's own fused ops (`softmax_last_dim`, `layer_norm`, `rms_norm`) record
//! no backward at all and silently stop gradients (DESIGN §2).
//!
//! The fused kernels run on CPU in f32 and f64 (split over candle's thread count for large
//! tensors). On other devices and dtypes the public functions fall back to composed,
//! differentiable candle ops, so the API is the same everywhere.
//!
//! Each public op opens a TRACE-level span (named after the function) for the length of its
//! forward, so a span-timing subscriber shows where the time goes; the adapted layers keep one
//! span each (STYLE §5.10). The backward runs later, inside candle's `backward`, outside these
//! spans. A span per call costs little when tracing is off: `trace_span!` first compares TRACE
//! with the compiled-in `STATIC_MAX_LEVEL` and with `LevelFilter::current()` (one relaxed atomic
//! load; `OFF` when no subscriber is installed), then with the callsite's cached `Interest`;
//! a disabled span holds no subscriber, so entering and leaving it does nothing.

mod attention;
mod block_dot;
mod cross_entropy;
mod dequantize;
mod dropout;
mod frozen_linear;
mod gelu;
mod grad_mode;
mod layer_norm;
mod linear_cross_entropy;
mod rms_norm;
mod rope;
mod rows;
mod softmax;
mod strided;
mod swiglu;
mod threads;
mod vmath;

pub use attention::{MASK_VALUE, attention, causal_attention};
pub use cross_entropy::cross_entropy;
pub use dropout::{dropout, dropout_add, seed_dropout};
pub(crate) use dropout::{dropout_rng, set_dropout_rng};
pub use frozen_linear::{
    exact_products, frozen_linear, frozen_linear_onto, quantized_linear, reads_blocks_in_place,
};
pub use gelu::gelu;
pub(crate) use grad_mode::track;
pub use grad_mode::{grad_enabled, no_grad, on_worker};
pub use layer_norm::layer_norm;
pub use linear_cross_entropy::linear_cross_entropy;
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_heads, rope_tables};
pub use softmax::softmax_last_dim;
pub use swiglu::swiglu;
pub use threads::{cpu_threads, pin_thread_count};

/// Largest |a − b| over two tensors of the same shape, as f64 (shared by the ops' tests).
#[cfg(test)]
pub(crate) fn test_max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(candle_core::DType::F64))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("tensors of the same shape")
}

/// Checks the analytic gradients of `L = Σ probe ∘ f(inputs)` (f64) against central finite
/// differences, every `stride`-th element of every input, to `tol`; returns the analytic
/// gradients for further checks (shared by the ops' tests).
#[cfg(test)]
pub(crate) fn test_fd_gradients(
    inputs: &[candle_core::Tensor],
    f: impl Fn(&[candle_core::Tensor]) -> candle_core::Tensor,
    probe: &candle_core::Tensor,
    stride: usize,
    tol: f64,
) -> Vec<candle_core::Tensor> {
    use candle_core::{Tensor, Var};
    let loss = |args: &[Tensor]| -> f64 {
        (f(args) * probe)
            .and_then(|l| l.sum_all())
            .and_then(|l| l.to_scalar::<f64>())
            .expect("an f64 loss")
    };
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).expect("a var"))
        .collect();
    let tracked: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = (f(&tracked) * probe)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .expect("a backward");
    let mut out = Vec::with_capacity(inputs.len());
    for (which, var) in vars.iter().enumerate() {
        let grad = grads.get(var.as_tensor()).expect("a gradient").clone();
        assert_eq!(grad.dims(), var.as_tensor().dims());
        let analytic: Vec<f64> = grad.flatten_all().and_then(|g| g.to_vec1()).expect("f64");
        let base: Vec<f64> = inputs[which]
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("f64");
        for j in (0..base.len()).step_by(stride) {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[j] += delta;
                let mut args = inputs.to_vec();
                args[which] = Tensor::from_vec(x, inputs[which].shape(), inputs[which].device())
                    .expect("same shape");
                loss(&args)
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < tol,
                "input {which}, element {j}: fd {fd} vs {}",
                analytic[j]
            );
        }
        out.push(grad);
    }
    out
}
