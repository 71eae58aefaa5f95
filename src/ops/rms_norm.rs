//! RMS normalisation over the last dim (LLaMA's `RMSNorm`), fused on CPU, with an analytic
//! backward.
//!
//! candle's `rms_norm` records no backward (DESIGN §2): a decoder built on it would train
//! nothing below its first norm, silently.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, D, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, lane_sum, par_rows, slice};
use crate::error::{Error, Result};

const NAME: &str = "rms norm";

/// 1/√(mean(x²) + ε) of one row.
fn rstd<T: Real>(row: &[T], eps: T) -> T {
    let sum = lane_sum(row, |v| v * v);
    T::one() / (sum / T::from_f64(row.len() as f64) + eps).sqrt()
}

/// Forward: `y = x · rstd ∘ γ`.
struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    fn run<T: Real>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s1, l1)?;
        let gamma = slice::<T>(NAME, s2, l2)?;
        let d = gamma.len().max(1);
        let eps = T::from_f64(self.eps);
        let mut y = vec![T::zero(); x.len()];
        par_rows(&mut y, d, |rows, out| {
            let x = &x[rows.start * d..rows.end * d];
            for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                let r = rstd(xr, eps);
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
                    *o = v * r * g;
                }
            }
        });
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "ttlora-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s1.dtype(), NAME, |T| self.run::<T>(s1, l1, s2, l2))
    }

    /// With x̂ = x · rstd and g = dL/dy ∘ γ, per row of d features:
    ///   dL/dx = rstd · (g − x̂ · mean(g ∘ x̂)),   dL/dγ = Σ_rows dL/dy ∘ x̂.
    /// γ is usually frozen; its gradient is computed only when it is tracked.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let dx = x.apply_op3_no_bwd(gamma, &grad_y, &RmsNormBackward { eps: self.eps })?;
        let dgamma = if gamma.track_op() {
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
                .sqrt()?
                .recip()?;
            let xhat = x.broadcast_mul(&r)?;
            let d = gamma.elem_count();
            Some((grad_y * xhat)?.reshape(((), d))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dgamma))
    }
}

/// The backward kernel for dL/dx: `(x, γ, dy)` → `(…, d)`, recomputing rstd per row.
struct RmsNormBackward {
    eps: f64,
}

impl RmsNormBackward {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Real>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s1, l1)?;
        let gamma = slice::<T>(NAME, s2, l2)?;
        let dy = slice::<T>(NAME, s3, l3)?;
        if l1.shape() != l3.shape() {
            candle_core::bail!(
                "{NAME} backward: input {:?} vs gradient {:?}",
                l1.shape(),
                l3.shape()
            );
        }
        let d = gamma.len().max(1);
        let eps = T::from_f64(self.eps);
        let inv_d = T::from_f64(1.0 / d as f64);
        let mut out = vec![T::zero(); x.len()];
        par_rows(&mut out, d, |rows, dx| {
            let range = rows.start * d..rows.end * d;
            let rows_x = x[range.clone()].chunks_exact(d);
            let rows_dy = dy[range].chunks_exact(d);
            for ((xr, dyr), dxr) in rows_x.zip(rows_dy).zip(dx.chunks_exact_mut(d)) {
                let r = rstd(xr, eps);
                let mut sum_gx = T::zero();
                for ((&v, &dv), &g) in xr.iter().zip(dyr).zip(gamma) {
                    sum_gx += dv * g * v * r;
                }
                let mean_gx = sum_gx * inv_d;
                for (((o, &v), &dv), &g) in dxr.iter_mut().zip(xr).zip(dyr).zip(gamma) {
                    *o = r * (dv * g - v * r * mean_gx);
                }
            }
        });
        Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
    }
}

impl candle_core::CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "ttlora-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s1.dtype(), NAME, |T| self.run::<T>(s1, l1, s2, l2, s3, l3))
    }
}

/// The same RMS norm from differentiable candle ops: the fallback off CPU or in half
/// precision, and the reference the fused op is tested against.
pub(crate) fn rms_norm_composed(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    Ok(x.broadcast_div(&r)?.broadcast_mul(gamma)?)
}

/// RMS normalisation over the last dim, differentiable in `x` and `gamma`:
/// `y = x / √(mean(x²) + eps) ∘ gamma` (LLaMA's, Mistral's and Qwen2's `RMSNorm`).
///
/// `x: (…, d)`, `gamma: (d)` → `(…, d)`. On CPU in f32/f64 one fused pass forward and one
/// backward; elsewhere composed candle ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[3f32, 4.]], &dev)?;
/// let g = Tensor::new(&[1f32, 2.], &dev)?;
/// let y = ttlora::ops::rms_norm(&x, &g, 0.0)?;
/// // rms = √((9 + 16) / 2)
/// let r = (12.5f32).sqrt();
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![3. / r, 8. / r]]);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// [`Error::TensorShape`] if `gamma` is not `(d)`; dtype or device mismatch.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let _span = tracing::trace_span!("rms_norm").entered();
    let d = x.dim(D::Minus1)?;
    if gamma.dims() != [d] {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![d],
            got: gamma.dims().to_vec(),
        });
    }
    let fused = has_cpu_kernel(x) && gamma.dtype() == x.dtype();
    if !fused {
        return rms_norm_composed(x, gamma, eps);
    }
    Ok(x.contiguous()?
        .apply_op2(&gamma.contiguous()?, RmsNorm { eps })?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    fn vec_of(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn forward_matches_composed_and_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2., (3, 5, 64), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.5, 64, &dev).unwrap();
        let y = rms_norm(&x, &g, 1e-5).unwrap();
        assert!(max_diff(&y, &rms_norm_composed(&x, &g, 1e-5).unwrap()) < 1e-5);
        let candle = candle_nn::ops::rms_norm(&x, &g, 1e-5).unwrap();
        assert!(max_diff(&y, &candle) < 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // L = Σ w ∘ RMSNorm(x; γ) in f64; dL/dx and dL/dγ against central differences.
        let dev = Device::Cpu;
        let (n, d) = (3, 6);
        let eps = 1e-5;
        let xs: Vec<f64> = (0..n * d).map(|i| (i as f64 * 0.93).sin() * 2.).collect();
        let gs: Vec<f64> = (0..d).map(|i| 1. + 0.3 * (i as f64).cos()).collect();
        let w = Tensor::from_vec(
            (0..n * d).map(|i| (i as f64 * 0.41).cos()).collect(),
            (n, d),
            &dev,
        )
        .unwrap();
        let loss = |x: &[f64], g: &[f64]| {
            let x = Tensor::from_vec(x.to_vec(), (n, d), &dev).unwrap();
            let g = Tensor::from_vec(g.to_vec(), d, &dev).unwrap();
            (rms_norm(&x, &g, eps).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (n, d), &dev).unwrap();
        let g = Var::from_vec(gs.clone(), d, &dev).unwrap();
        let grads = (rms_norm(x.as_tensor(), g.as_tensor(), eps).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let h = 1e-6;
        let check = |name: &str, analytic: Vec<f64>, which: usize| {
            let base = [xs.clone(), gs.clone()];
            for j in 0..analytic.len() {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[which][j] += h;
                m[which][j] -= h;
                let fd = (loss(&p[0], &p[1]) - loss(&m[0], &m[1])) / (2. * h);
                assert!(
                    (fd - analytic[j]).abs() < 1e-7,
                    "{name}[{j}]: fd {fd} vs analytic {}",
                    analytic[j]
                );
            }
        };
        check("dx", vec_of(grads.get(x.as_tensor()).unwrap()), 0);
        check("dgamma", vec_of(grads.get(g.as_tensor()).unwrap()), 1);
    }

    #[test]
    fn a_frozen_gain_gets_no_gradient_and_f32_matches_composed() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., (4, 3, 40), &dev).unwrap()).unwrap();
        let g = Tensor::randn(1f32, 0.5, 40, &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (4, 3, 40), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            (f(x.as_tensor()) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let ours = run(&|x| rms_norm(x, &g, 1e-6).unwrap());
        let reference = run(&|x| rms_norm_composed(x, &g, 1e-6).unwrap());
        let (a, r) = (
            ours.get(x.as_tensor()).unwrap(),
            reference.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(a, r) < 1e-4, "{}", max_diff(a, r));
        assert!(ours.get(&g).is_none());
    }
}
