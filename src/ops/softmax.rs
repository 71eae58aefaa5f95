//! Softmax over the last dim, fused on CPU, with an analytic backward.
//!
//! candle-nn's `softmax_last_dim` is fused too but records no backward, so gradients silently
//! stop at every attention layer (DESIGN §2); its composed `softmax` is differentiable but
//! allocates at each of its five steps.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice};
use crate::error::Result;

const NAME: &str = "softmax";

/// Forward: `y_j = exp(x_j − max x) / Σ_k exp(x_k − max x)` per row.
struct SoftmaxLastDim;

impl SoftmaxLastDim {
    fn run<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s, l)?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        // The rows are copied once and normalised in place (no zero-filled buffer first).
        let mut y = x.to_vec();
        par_rows(&mut y, d, |_, out| {
            out.chunks_exact_mut(d).for_each(T::softmax_in_place);
        });
        Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
    }
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "ttlora-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s.dtype(), NAME, |T| Self::run::<T>(s, l))
    }

    /// y = softmax(x) ⇒ ∂y_i/∂x_j = y_i (δ_ij − y_j), so
    /// dL/dx = y ∘ (dL/dy − Σ_k dL/dy_k · y_k), row by row.
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad_y = grad_y.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&grad_y, &SoftmaxBackward)?))
    }
}

/// The backward kernel: `(y, dy) ↦ y ∘ (dy − Σ dy ∘ y)` per row, in one pass over the data.
struct SoftmaxBackward;

impl SoftmaxBackward {
    fn run<T: Real>(
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = slice::<T>(NAME, s1, l1)?;
        let dy = slice::<T>(NAME, s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "{NAME} backward: output {:?} vs gradient {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![T::zero(); y.len()];
        par_rows(&mut dx, d, |rows, out| {
            let range = rows.start * d..rows.end * d;
            let rows_y = y[range.clone()].chunks_exact(d);
            let rows_dy = dy[range].chunks_exact(d);
            for ((yr, dyr), dxr) in rows_y.zip(rows_dy).zip(out.chunks_exact_mut(d)) {
                let mut dot = T::zero();
                for (&a, &b) in yr.iter().zip(dyr) {
                    dot += a * b;
                }
                for ((o, &a), &b) in dxr.iter_mut().zip(yr).zip(dyr) {
                    *o = a * (b - dot);
                }
            }
        });
        Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "ttlora-softmax-last-dim-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s1.dtype(), NAME, |T| Self::run::<T>(s1, l1, s2, l2))
    }
}

/// Softmax over the last dim, differentiable: `x: (…, d)` → `(…, d)`, each row summing to 1.
///
/// On CPU in f32/f64 this is one fused pass forward and one backward; elsewhere (CUDA, half
/// precision) it falls back to candle's composed, differentiable `softmax`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[0f32, 0., 0., 0.]], &Device::Cpu)?;
/// let y = ttlora::ops::softmax_last_dim(&x)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![0.25; 4]]);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// A rank-0 input; as the underlying tensor ops.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("softmax_last_dim").entered();
    let fused = has_cpu_kernel(x);
    if !fused {
        return Ok(candle_nn::ops::softmax(x, D::Minus1)?);
    }
    x.dim(D::Minus1)?;
    Ok(x.contiguous()?.apply_op1(SoftmaxLastDim)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    #[test]
    fn forward_matches_candle_reference() {
        let x = Tensor::randn(0f32, 3., (3, 5, 17), &Device::Cpu).unwrap();
        let y = softmax_last_dim(&x).unwrap();
        let reference = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert!(max_diff(&y, &reference) < 1e-6);
        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!(max_diff(&y, &fused) < 1e-6);
        // A transposed (non-contiguous) input is made contiguous first.
        let xt = x.transpose(1, 2).unwrap();
        let yt = softmax_last_dim(&xt).unwrap();
        let rt = candle_nn::ops::softmax(&xt, D::Minus1).unwrap();
        assert!(max_diff(&yt, &rt) < 1e-6);
    }

    #[test]
    fn large_inputs_split_over_threads_match() {
        let x = Tensor::randn(0f32, 2., (300, 257), &Device::Cpu).unwrap();
        let y = softmax_last_dim(&x).unwrap();
        let reference = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        // f32 sums of 257 terms in another order: a row whose probability is near 1 can
        // differ by a few 1e-7 (a random draw once measured just over 1e-6).
        let diff = max_diff(&y, &reference);
        assert!(diff < 5e-6, "{diff}");
    }

    #[test]
    fn masked_entries_get_zero_probability() {
        let x = Tensor::new(&[[1f32, -1e9, 2.]], &Device::Cpu).unwrap();
        let y = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[0][1], 0.0);
        assert!((y[0][0] + y[0][2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // L = Σ g ∘ softmax(x); dL/dx = y ∘ (g − Σ g ∘ y).
        let dev = Device::Cpu;
        let (rows, d) = (3, 5);
        let xs: Vec<f64> = (0..rows * d)
            .map(|i| (i as f64 * 0.71).sin() * 2.)
            .collect();
        let g = Tensor::new(
            (0..rows * d)
                .map(|i| (i as f64 * 0.37).cos())
                .collect::<Vec<_>>(),
            &dev,
        )
        .unwrap()
        .reshape((rows, d))
        .unwrap();
        let loss = |v: &[f64]| {
            let x = Tensor::from_vec(v.to_vec(), (rows, d), &dev).unwrap();
            (softmax_last_dim(&x).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (rows, d), &dev).unwrap();
        let grads = (softmax_last_dim(x.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = grads
            .get(x.as_tensor())
            .expect("softmax must record a backward")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for j in 0..xs.len() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[j] += 1e-6;
            m[j] -= 1e-6;
            let fd = (loss(&p) - loss(&m)) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < 1e-8,
                "x[{j}]: fd {fd} vs {}",
                analytic[j]
            );
        }
    }

    #[test]
    fn f32_gradient_matches_composed_softmax() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., (4, 6, 9), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1., (4, 6, 9), &dev).unwrap();
        let ours = (softmax_last_dim(x.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let reference = (candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = ours.get(x.as_tensor()).unwrap();
        let b = reference.get(x.as_tensor()).unwrap();
        assert!(max_diff(a, b) < 1e-5);
    }
}
