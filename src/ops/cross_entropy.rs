//! Mean cross-entropy of logit rows against class ids, fused on CPU, with an analytic
//! backward.
//!
//! candle-nn's `cross_entropy` is a composed log-softmax (max, subtract, exp, sum, log,
//! subtract) then a gather: over a decoder's vocabulary every step is a `(tokens, vocab)`
//! tensor kept for the backward, and the backward makes as many again (measured: several GB
//! for SmolLM2 at 8 × 256 tokens). Fused, the forward keeps nothing but its input and the
//! backward writes one `(tokens, vocab)` gradient, `softmax(x) − onehot`, per row.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice};
use crate::error::{Error, Result};

const NAME: &str = "cross entropy";

/// The forward: `mean_i (logsumexp(x_i) − x_i[label_i])`.
struct CrossEntropyLoss {
    labels: Arc<Vec<u32>>,
}

/// Checks `(n, v)` logits against the labels; returns `(n, v)`.
fn dims(l: &Layout, labels: &[u32]) -> candle_core::Result<(usize, usize)> {
    let (n, v) = l.shape().dims2()?;
    if n != labels.len() {
        candle_core::bail!("{NAME}: {n} rows of logits, {} labels", labels.len());
    }
    if let Some(bad) = labels.iter().find(|&&c| c as usize >= v) {
        candle_core::bail!("{NAME}: label {bad} is not below the {v} classes");
    }
    Ok((n, v))
}

/// `logsumexp` of one row (`scratch` holds its shifted exponentials).
fn log_sum_exp<T: Real>(row: &[T], scratch: &mut Vec<T>) -> T {
    let m = T::row_max(row);
    scratch.clear();
    scratch.extend_from_slice(row);
    let sum = T::exp_shifted_sum(scratch, m);
    m + T::from_f64(sum.to_f64().ln())
}

impl CrossEntropyLoss {
    fn run<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s, l)?;
        let (n, v) = dims(l, &self.labels)?;
        // Per-row losses in a scratch row each, summed in f64.
        let mut losses = vec![T::zero(); n];
        par_rows(&mut losses, 1, |rows, out| {
            let mut scratch = Vec::with_capacity(v);
            for (i, o) in rows.zip(out.iter_mut()) {
                let row = &x[i * v..(i + 1) * v];
                *o = log_sum_exp(row, &mut scratch) - row[self.labels[i] as usize];
            }
        });
        let mean = losses.iter().map(|l| l.to_f64()).sum::<f64>() / n.max(1) as f64;
        Ok((
            T::to_cpu_storage_owned(vec![T::from_f64(mean)]),
            Shape::from(()),
        ))
    }
}

impl CustomOp1 for CrossEntropyLoss {
    fn name(&self) -> &'static str {
        "ttlora-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s.dtype(), NAME, |T| self.run::<T>(s, l))
    }

    /// L = mean_i (lse(x_i) − x_i[c_i]) ⇒ dL/dx_ij = (softmax(x_i)_j − [j = c_i]) / n, times
    /// the incoming scalar gradient.
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let scale = grad_y.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let op = CrossEntropyBackward {
            labels: Arc::clone(&self.labels),
            scale,
        };
        Ok(Some(x.apply_op1_no_bwd(&op)?))
    }
}

/// The backward kernel: `scale · (softmax(x_i) − onehot(c_i)) / n` per row, in one pass.
struct CrossEntropyBackward {
    labels: Arc<Vec<u32>>,
    scale: f64,
}

impl CrossEntropyBackward {
    fn run<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s, l)?;
        let (n, v) = dims(l, &self.labels)?;
        let k = T::from_f64(self.scale / n.max(1) as f64);
        let mut dx = x.to_vec();
        par_rows(&mut dx, v, |rows, out| {
            for (i, o) in rows.zip(out.chunks_exact_mut(v)) {
                let m = T::row_max(o);
                let inv = k / T::exp_shifted_sum(o, m);
                o.iter_mut().for_each(|d| *d *= inv);
                o[self.labels[i] as usize] -= k;
            }
        });
        Ok((T::to_cpu_storage_owned(dx), l.shape().clone()))
    }
}

impl CustomOp1 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "ttlora-cross-entropy-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s.dtype(), NAME, |T| self.run::<T>(s, l))
    }
}

/// Mean cross-entropy of `logits: (n, classes)` against `labels: (n)` class ids, as a
/// scalar; differentiable in the logits. Fused on CPU for f32/f64 (see the module docs);
/// candle-nn's composed version elsewhere.
///
/// # Errors
/// Shapes that disagree; a label not below the class count.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("cross_entropy").entered();
    let (n, v) = logits.dims2()?;
    if labels.dims() != [n] {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![n],
            got: labels.dims().to_vec(),
        });
    }
    let fused = has_cpu_kernel(logits);
    if !fused {
        return Ok(candle_nn::loss::cross_entropy(
            logits,
            &labels.to_dtype(DType::U32)?,
        )?);
    }
    let labels = checked_labels(labels, v)?;
    Ok(logits.contiguous()?.apply_op1(CrossEntropyLoss {
        labels: Arc::new(labels),
    })?)
}

/// Class ids as `u32`, each checked below the class count `v`.
///
/// # Errors
/// A label not below `v`.
pub(super) fn checked_labels(labels: &Tensor, v: usize) -> Result<Vec<u32>> {
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    if let Some(bad) = labels.iter().find(|&&c| c as usize >= v) {
        return Err(Error::TensorShape {
            op: "cross entropy labels (below the class count)",
            expected: vec![v],
            got: vec![*bad as usize],
        });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// The fused loss and its gradient equal candle-nn's composed cross-entropy.
    #[test]
    fn matches_candle_nn_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (5, 37), &dev).unwrap()).unwrap();
        let labels = Tensor::new(&[0u32, 36, 5, 5, 17], &dev).unwrap();
        let ours = cross_entropy(&x, &labels).unwrap();
        let theirs = candle_nn::loss::cross_entropy(&x, &labels).unwrap();
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            theirs.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let ga = (ours * 3.0).unwrap().backward().unwrap();
        let gb = (theirs * 3.0).unwrap().backward().unwrap();
        let d = (ga.get(&x).unwrap() - gb.get(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "gradients differ by {d}");
        let bad = Tensor::new(&[0u32, 37, 0, 0, 0], &dev).unwrap();
        assert!(cross_entropy(&x, &bad).is_err());
    }
}
