//! Layer normalisation over the last dim, fused on CPU, with an analytic backward.
//!
//! candle-nn's `LayerNorm` module and `ops::layer_norm` record no backward (DESIGN §2); the
//! composed form is differentiable but makes about ten passes and allocations.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, D, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, lane_sum, par_rows, slice};
use crate::error::{Error, Result};

const NAME: &str = "layer norm";

/// Mean and 1/√(var + ε) of one row (two passes, in the row's own precision).
fn stats<T: Real>(row: &[T], eps: T) -> (T, T) {
    let n = T::from_f64(row.len() as f64);
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean));
    (mean, T::one() / (var / n + eps).sqrt())
}

/// Forward: `y = (x − μ)·rstd ∘ γ + β`, with μ and rstd = 1/√(σ² + ε) per row.
struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
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
        let beta = slice::<T>(NAME, s3, l3)?;
        let d = gamma.len().max(1);
        let eps = T::from_f64(self.eps);
        let mut y = vec![T::zero(); x.len()];
        par_rows(&mut y, d, |rows, out| {
            let x = &x[rows.start * d..rows.end * d];
            for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                let (mean, rstd) = stats(xr, eps);
                for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                    *o = (v - mean) * rstd * g + b;
                }
            }
        });
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "ttlora-layer-norm"
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

    /// With x̂ = (x − μ)·rstd and g = dL/dy ∘ γ, per row of d features:
    ///   dL/dx = rstd · (g − mean(g) − x̂ · mean(g ∘ x̂)),
    ///   dL/dγ = Σ_rows dL/dy ∘ x̂,   dL/dβ = Σ_rows dL/dy.
    /// γ and β are usually frozen; their gradients are computed only when they are tracked, so
    /// a frozen γ/β gets no gradient entry at all.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_params = gamma.track_op() || beta.track_op();
        let grad_y = grad_y.contiguous()?;
        let kernel = LayerNormBackward {
            eps: self.eps,
            want_params,
        };
        let packed = x.apply_op3_no_bwd(gamma, &grad_y, &kernel)?;
        let d = gamma.elem_count();
        let n = x.elem_count() / d.max(1);
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        if !want_params {
            return Ok((Some(dx), None, None));
        }
        let dgamma = packed.narrow(0, n, 1)?.reshape(d)?;
        let dbeta = packed.narrow(0, n + 1, 1)?.reshape(d)?;
        Ok((
            Some(dx),
            gamma.track_op().then_some(dgamma),
            beta.track_op().then_some(dbeta),
        ))
    }
}

/// The backward kernel: `(x, γ, dy)` → a `(n + 2, d)` tensor when γ/β gradients are wanted
/// (rows `0..n` dL/dx, row `n` dL/dγ, row `n + 1` dL/dβ), else `(n, d)` holding dL/dx.
/// One pass per row recomputes μ and rstd instead of storing them from the forward.
struct LayerNormBackward {
    eps: f64,
    want_params: bool,
}

impl LayerNormBackward {
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
        let n = x.len() / d;
        let eps = T::from_f64(self.eps);
        let inv_d = T::from_f64(1.0 / d as f64);
        let extra = if self.want_params { 2 } else { 0 };
        let mut out = vec![T::zero(); (n + extra) * d];
        let want_params = self.want_params;
        let partials = par_rows(&mut out[..n * d], d, |rows, dx| {
            let range = rows.start * d..rows.end * d;
            let mut dgamma = vec![T::zero(); if want_params { d } else { 0 }];
            let mut dbeta = dgamma.clone();
            let rows_x = x[range.clone()].chunks_exact(d);
            let rows_dy = dy[range].chunks_exact(d);
            for ((xr, dyr), dxr) in rows_x.zip(rows_dy).zip(dx.chunks_exact_mut(d)) {
                let (mean, rstd) = stats(xr, eps);
                let (mut sum_g, mut sum_gx) = (T::zero(), T::zero());
                for ((&v, &dv), &g) in xr.iter().zip(dyr).zip(gamma) {
                    let gv = dv * g;
                    sum_g += gv;
                    sum_gx += gv * (v - mean) * rstd;
                }
                let (mean_g, mean_gx) = (sum_g * inv_d, sum_gx * inv_d);
                for (((o, &v), &dv), &g) in dxr.iter_mut().zip(xr).zip(dyr).zip(gamma) {
                    let xhat = (v - mean) * rstd;
                    *o = rstd * (dv * g - mean_g - xhat * mean_gx);
                }
                if want_params {
                    for (j, (&v, &dv)) in xr.iter().zip(dyr).enumerate() {
                        dgamma[j] += dv * (v - mean) * rstd;
                        dbeta[j] += dv;
                    }
                }
            }
            (dgamma, dbeta)
        });
        if want_params {
            let (dgamma, dbeta) = out[n * d..].split_at_mut(d);
            for (pg, pb) in &partials {
                dgamma.iter_mut().zip(pg).for_each(|(a, &b)| *a += b);
                dbeta.iter_mut().zip(pb).for_each(|(a, &b)| *a += b);
            }
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((n + extra, d))))
    }
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "ttlora-layer-norm-backward"
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

/// The same layer norm from differentiable candle ops: the fallback off CPU or in half
/// precision, and the reference the fused op is tested against.
pub(crate) fn layer_norm_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xhat.broadcast_mul(gamma)?.broadcast_add(beta)?)
}

/// Layer normalisation over the last dim, differentiable in `x`, `gamma` and `beta`:
/// `y = (x − mean(x)) / √(var(x) + eps) ∘ gamma + beta` (biased variance, like PyTorch).
///
/// `x: (…, d)`, `gamma: (d)`, `beta: (d)` → `(…, d)`. On CPU in f32/f64 this is one fused pass
/// forward and one backward; elsewhere it falls back to composed candle ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[1f32, 3.]], &dev)?;
/// let (g, b) = (Tensor::new(&[1f32, 1.], &dev)?, Tensor::new(&[0f32, 0.], &dev)?);
/// let y = ttlora::ops::layer_norm(&x, &g, &b, 0.0)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![-1., 1.]]);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// [`Error::TensorShape`] if `gamma` or `beta` is not `(d)`; dtype or device mismatch.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let _span = tracing::trace_span!("layer_norm").entered();
    let d = x.dim(D::Minus1)?;
    for p in [gamma, beta] {
        if p.dims() != [d] {
            return Err(Error::TensorShape {
                op: NAME,
                expected: vec![d],
                got: p.dims().to_vec(),
            });
        }
    }
    let fused = has_cpu_kernel(x) && gamma.dtype() == x.dtype() && beta.dtype() == x.dtype();
    if !fused {
        return layer_norm_composed(x, gamma, beta, eps);
    }
    Ok(x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, LayerNorm { eps })?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use candle_core::DType;

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    fn vec_of(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn forward_matches_composed_and_candle_reference() {
        let dev = Device::Cpu;
        let x = Tensor::randn(1f32, 3., (2, 7, 48), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.5, 48, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 48, &dev).unwrap();
        let y = layer_norm(&x, &g, &b, 1e-12).unwrap();
        let composed = layer_norm_composed(&x, &g, &b, 1e-12).unwrap();
        assert!(max_diff(&y, &composed) < 1e-5);
        let candle = candle_nn::ops::layer_norm(&x, &g, &b, 1e-12).unwrap();
        assert!(max_diff(&y, &candle) < 1e-5);
        let big = Tensor::randn(0f32, 1., (200, 384), &dev).unwrap();
        let (g, b) = (
            Tensor::randn(1f32, 0.5, 384, &dev).unwrap(),
            Tensor::randn(0f32, 0.5, 384, &dev).unwrap(),
        );
        let y = layer_norm(&big, &g, &b, 1e-5).unwrap();
        let r = candle_nn::ops::layer_norm(&big, &g, &b, 1e-5).unwrap();
        assert!(max_diff(&y, &r) < 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // L = Σ w ∘ LN(x; γ, β) in f64; dL/dx, dL/dγ, dL/dβ against central differences.
        let dev = Device::Cpu;
        let (n, d) = (3, 6);
        let eps = 1e-5;
        let xs: Vec<f64> = (0..n * d).map(|i| (i as f64 * 0.93).sin() * 2.).collect();
        let gs: Vec<f64> = (0..d).map(|i| 1. + 0.3 * (i as f64).cos()).collect();
        let bs: Vec<f64> = (0..d).map(|i| 0.1 * i as f64).collect();
        let w = Tensor::from_vec(
            (0..n * d).map(|i| (i as f64 * 0.41).cos()).collect(),
            (n, d),
            &dev,
        )
        .unwrap();
        let loss = |x: &[f64], g: &[f64], b: &[f64]| {
            let x = Tensor::from_vec(x.to_vec(), (n, d), &dev).unwrap();
            let g = Tensor::from_vec(g.to_vec(), d, &dev).unwrap();
            let b = Tensor::from_vec(b.to_vec(), d, &dev).unwrap();
            (layer_norm(&x, &g, &b, eps).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (n, d), &dev).unwrap();
        let g = Var::from_vec(gs.clone(), d, &dev).unwrap();
        let b = Var::from_vec(bs.clone(), d, &dev).unwrap();
        let grads = (layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), eps).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let h = 1e-6;
        let check = |name: &str, analytic: Vec<f64>, which: usize| {
            let base = [xs.clone(), gs.clone(), bs.clone()];
            for j in 0..analytic.len() {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[which][j] += h;
                m[which][j] -= h;
                let fd = (loss(&p[0], &p[1], &p[2]) - loss(&m[0], &m[1], &m[2])) / (2. * h);
                assert!(
                    (fd - analytic[j]).abs() < 1e-7,
                    "{name}[{j}]: fd {fd} vs analytic {}",
                    analytic[j]
                );
            }
        };
        check("dx", vec_of(grads.get(x.as_tensor()).unwrap()), 0);
        check("dgamma", vec_of(grads.get(g.as_tensor()).unwrap()), 1);
        check("dbeta", vec_of(grads.get(b.as_tensor()).unwrap()), 2);
    }

    #[test]
    fn f32_gradients_match_composed_and_frozen_params_get_none() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., (5, 3, 40), &dev).unwrap()).unwrap();
        let g = Tensor::randn(1f32, 0.5, 40, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 40, &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (5, 3, 40), &dev).unwrap();
        let ours = (layer_norm(x.as_tensor(), &g, &b, 1e-12).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let reference = (layer_norm_composed(x.as_tensor(), &g, &b, 1e-12).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = ours.get(x.as_tensor()).unwrap();
        let r = reference.get(x.as_tensor()).unwrap();
        assert!(max_diff(a, r) < 1e-4, "{}", max_diff(a, r));
        assert!(ours.get(&g).is_none() && ours.get(&b).is_none());
    }

    #[test]
    fn wrong_gamma_width_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let g = Tensor::ones(3, DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = layer_norm(&x, &g, &b, 1e-5).unwrap_err().to_string();
        assert_eq!(err, "layer norm: tensor shape [3], expected [4]");
    }
}
