//! Mean cross-entropy of `hidden · Wᵀ` against class ids for a frozen `W` (an LM head), the
//! logits computed a block of rows at a time (at most 128, under 32 MiB) and never kept.
//!
//! Over a decoder's vocabulary the logits are the step's largest tensors: SmolLM2 at 8 × 256
//! scored tokens has (2,048 × 49,152) f32 logits, 384 MiB, and [`cross_entropy`]'s backward
//! writes a gradient of the same size; both are above glibc's mmap threshold, so they are
//! fresh pages every step. Here each block of rows gets its logits, its losses and
//! `softmax − onehot` in one scratch buffer, and (when `hidden` needs a gradient) its rows of
//! `dL/dhidden = (softmax − onehot)·W / n` at once; the backward only scales those by the
//! incoming gradient. The work is the same two products the unfused path does.
//!
//! [`cross_entropy`]: super::cross_entropy

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice};
use super::strided::{View, gemm_views};
use crate::error::{Error, Result};

const NAME: &str = "linear cross entropy";

/// Rows of logits per block at most.
const BLOCK_ROWS: usize = 128;

/// Bytes a block of logits stays under: glibc serves smaller buffers from its heap (the binary
/// raises the mmap threshold to 32 MiB), so the scratch is reused memory, not fresh pages.
const BLOCK_BYTES: usize = (32 << 20) - (4 << 10);

struct LinearCrossEntropy {
    labels: Arc<Vec<u32>>,
    /// Compute `dL/dhidden` in the forward (false when `hidden` needs no gradient).
    save: bool,
    saved: Mutex<Option<CpuStorage>>,
}

impl LinearCrossEntropy {
    fn run<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (h, w) = (slice::<T>(NAME, s1, l1)?, slice::<T>(NAME, s2, l2)?);
        let (n, width) = l1.shape().dims2()?;
        let (v, w_width) = l2.shape().dims2()?;
        if width != w_width || n != self.labels.len() {
            candle_core::bail!(
                "{NAME}: hidden {n}×{width}, weight {v}×{w_width}, {} labels",
                self.labels.len()
            );
        }
        let threads = super::cpu_threads();
        let k = T::from_f64(1.0 / n.max(1) as f64);
        let mut dh = vec![T::zero(); if self.save { n * width } else { 0 }];
        let per_block = (BLOCK_BYTES / (v.max(1) * std::mem::size_of::<T>())).clamp(1, BLOCK_ROWS);
        let mut logits = vec![T::zero(); per_block.min(n.max(1)) * v];
        let weight = View::dense(0, v, width);
        let mut total = 0f64;
        for start in (0..n).step_by(per_block) {
            let rows = per_block.min(n - start);
            let block = View::dense(0, rows, v);
            let x = View::dense(start * width, rows, width);
            let product = (w, weight.t());
            gemm_views(
                &mut logits,
                block,
                (h, x),
                product,
                T::one(),
                false,
                threads,
            );
            let losses = par_rows(&mut logits[..rows * v], v, |range, chunk| {
                let mut loss = 0f64;
                for (i, row) in range.zip(chunk.chunks_exact_mut(v)) {
                    let label = self.labels[start + i] as usize;
                    let m = T::row_max(row);
                    let target = row[label];
                    let sum = T::exp_shifted_sum(row, m);
                    loss += (m - target).to_f64() + sum.to_f64().ln();
                    if self.save {
                        // The row becomes dL/dlogits = (softmax − onehot) / n.
                        let inv = k / sum;
                        row.iter_mut().for_each(|x| *x *= inv);
                        row[label] -= k;
                    }
                }
                loss
            });
            total += losses.iter().sum::<f64>();
            if self.save {
                let dst = View::dense(start * width, rows, width);
                let src = (&logits[..], block);
                gemm_views(&mut dh, dst, src, (w, weight), T::one(), false, threads);
            }
        }
        if self.save {
            *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))? =
                Some(T::to_cpu_storage_owned(dh));
        }
        let mean = total / n.max(1) as f64;
        Ok((
            T::to_cpu_storage_owned(vec![T::from_f64(mean)]),
            Shape::from(()),
        ))
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "ttlora-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s1.dtype(), NAME, |T| self.run::<T>((s1, l1), (s2, l2)))
    }

    /// L = mean_i (lse(h_i·Wᵀ) − h_i·w_{c_i}) ⇒ dL/dh_i = (softmax(h_i·Wᵀ) − onehot(c_i))·W / n,
    /// computed in the forward; W is frozen and takes none.
    fn bwd(
        &self,
        h: &Tensor,
        _w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))?;
        let dh = match saved.as_ref() {
            Some(CpuStorage::F32(v)) => Tensor::from_slice(v, h.shape(), h.device())?,
            Some(CpuStorage::F64(v)) => Tensor::from_slice(v, h.shape(), h.device())?,
            _ => candle_core::bail!("{NAME} backward: the forward computed no gradient"),
        };
        Ok((Some(dh.broadcast_mul(&grad.to_dtype(h.dtype())?)?), None))
    }
}

/// Mean cross-entropy of the logits `hidden · weightᵀ` (`hidden: (n, width)`, `weight:
/// (classes, width)`, frozen) against `labels: (n)`, as a scalar differentiable in `hidden`;
/// equal to [`cross_entropy`](super::cross_entropy) of
/// [`frozen_linear`](super::frozen_linear)`(hidden, weight)`, without keeping the logits.
/// Fused on CPU for f32/f64 with an untracked weight; composed elsewhere.
///
/// # Errors
/// Shapes that disagree; a label not below the class count.
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("linear_cross_entropy").entered();
    let (n, width) = hidden.dims2()?;
    let (v, w_width) = weight.dims2()?;
    if w_width != width {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![v, width],
            got: weight.dims().to_vec(),
        });
    }
    if labels.dims() != [n] {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![n],
            got: labels.dims().to_vec(),
        });
    }
    let fused = has_cpu_kernel(hidden) && weight.dtype() == hidden.dtype() && !weight.track_op();
    if !fused {
        let logits = super::frozen_linear(hidden, weight, None)?;
        return super::cross_entropy(&logits.to_dtype(DType::F32)?, labels);
    }
    let labels = super::cross_entropy::checked_labels(labels, v)?;
    let op = LinearCrossEntropy {
        labels: Arc::new(labels),
        save: hidden.track_op() && super::grad_enabled(),
        saved: Mutex::new(None),
    };
    Ok(hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    /// Value and gradient equal the unfused loss on the logits, over several row blocks.
    #[test]
    fn matches_cross_entropy_of_the_logits() {
        let dev = Device::Cpu;
        let n = 2 * BLOCK_ROWS + 9;
        let h = Var::randn(0f32, 1.0, (n, 24), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.5, (301, 24), &dev).unwrap();
        let labels = Tensor::new(
            (0..n as u32).map(|i| (i * 37) % 301).collect::<Vec<_>>(),
            &dev,
        )
        .unwrap();
        let fused = linear_cross_entropy(h.as_tensor(), &w, &labels).unwrap();
        let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let plain = crate::ops::cross_entropy(&logits, &labels).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        // Without a gradient to compute (a plain tensor, or inside no_grad): the same value.
        let untracked = linear_cross_entropy(&h.as_tensor().detach(), &w, &labels).unwrap();
        assert!(max_diff(&untracked, &plain) < 1e-5);
        let quiet = crate::ops::no_grad(|| linear_cross_entropy(h.as_tensor(), &w, &labels));
        assert!(max_diff(&quiet.unwrap(), &plain) < 1e-5);
        let a = (fused * 2.5).unwrap().backward().unwrap();
        let b = (plain * 2.5).unwrap().backward().unwrap();
        assert!(max_diff(a.get(h.as_tensor()).unwrap(), b.get(h.as_tensor()).unwrap()) < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let h = Tensor::randn(0f64, 1.0, (5, 4), &dev).unwrap();
        let w = Tensor::randn(0f64, 1.0, (7, 4), &dev).unwrap();
        let labels = Tensor::new(&[0u32, 6, 3, 3, 1], &dev).unwrap();
        let probe = Tensor::new(1.7f64, &dev).unwrap();
        crate::ops::test_fd_gradients(
            &[h],
            |x| linear_cross_entropy(&x[0], &w, &labels).unwrap(),
            &probe,
            1,
            1e-7,
        );
    }

    #[test]
    fn bad_shapes_and_labels_are_errors() {
        let dev = Device::Cpu;
        let h = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
        let ok = Tensor::new(&[0u32, 1, 4], &dev).unwrap();
        assert!(linear_cross_entropy(&h, &w, &ok).is_ok());
        assert!(linear_cross_entropy(&h, &w, &Tensor::new(&[0u32, 5, 1], &dev).unwrap()).is_err());
        assert!(linear_cross_entropy(&h, &w.narrow(1, 0, 3).unwrap(), &ok).is_err());
        assert!(linear_cross_entropy(&h, &w, &ok.narrow(0, 0, 2).unwrap()).is_err());
    }
}
