//! GELU in its exact (erf) form, as BERT's `hidden_act: "gelu"`, fused on CPU with an analytic
//! backward.
//!
//! candle's `gelu_erf` is differentiable, but its forward calls libm's `erff` per element and
//! its backward composes ~10 element-wise ops over the `(tokens, intermediate)` tensor. In a
//! MiniLM training step those were 10.6% (`erff`) and part of the 15% in binary maps (perf,
//! BENCHMARKS.md). Here the forward is one pass and the backward another.
//!
//! f32 uses Abramowitz & Stegun 7.1.26 for erf (|error| ≤ 1.5e-7, the f32 rounding of
//! values near 1), whose e^(−z²) is also the density term the backward needs; f64 uses candle's
//! full-precision erf so the finite-difference tests see the exact function.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice};
use crate::error::Result;

const NAME: &str = "gelu";

/// Φ(x) and φ(x) of the standard normal distribution, the two parts of GELU and its slope.
trait NormalParts: Real {
    /// `(Φ(x), φ(x))`.
    fn cdf_pdf(self) -> (Self, Self);

    /// `y = x·Φ(x)`, element-wise.
    fn gelu_slice(x: &[Self], y: &mut [Self]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * v.cdf_pdf().0;
        }
    }

    /// `dx = dy ∘ (Φ(x) + x·φ(x))`, element-wise.
    fn gelu_backward_slice(x: &[Self], dy: &[Self], dx: &mut [Self]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, pdf) = v.cdf_pdf();
            *o = g * (cdf + v * pdf);
        }
    }
}

/// f32 goes through the vectorised loops of [`super::vmath`].
impl NormalParts for f32 {
    fn cdf_pdf(self) -> (f32, f32) {
        super::vmath::cdf_pdf(self)
    }

    fn gelu_slice(x: &[f32], y: &mut [f32]) {
        super::vmath::gelu(x, y);
    }

    fn gelu_backward_slice(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        super::vmath::gelu_backward(x, dy, dx);
    }
}

impl NormalParts for f64 {
    fn cdf_pdf(self) -> (f64, f64) {
        let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        let cdf =
            0.5 * (1.0 + candle_core::cpu::erf::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2));
        (cdf, (-0.5 * self * self).exp() * inv_sqrt_2pi)
    }
}

/// Forward: `y = x·Φ(x)` element-wise.
struct Gelu;

impl Gelu {
    fn run<T: NormalParts>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s, l)?;
        let mut y = vec![T::zero(); x.len()];
        par_rows(&mut y, 1, |range, out| T::gelu_slice(&x[range], out));
        Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "ttlora-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s.dtype(), NAME, |T| Self::run::<T>(s, l))
    }

    /// y = x·Φ(x) ⇒ dy/dx = Φ(x) + x·φ(x), so dL/dx = dL/dy ∘ (Φ(x) + x·φ(x)).
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad_y = grad_y.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&grad_y, &GeluBackward)?))
    }
}

/// The backward kernel: `(x, dy) ↦ dy ∘ (Φ(x) + x·φ(x))` in one pass.
struct GeluBackward;

impl GeluBackward {
    fn run<T: NormalParts>(
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s1, l1)?;
        let dy = slice::<T>(NAME, s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "{NAME} backward: input {:?} vs gradient {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut dx = vec![T::zero(); x.len()];
        par_rows(&mut dx, 1, |range, out| {
            T::gelu_backward_slice(&x[range.clone()], &dy[range], out);
        });
        Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "ttlora-gelu-backward"
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

/// `gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2))`, element-wise, differentiable, on every device.
///
/// On CPU in f32/f64 one fused pass forward and one backward; elsewhere candle's `gelu_erf`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[0f32, 1.], &Device::Cpu)?;
/// let y = ttlora::ops::gelu(&x)?.to_vec1::<f32>()?;
/// assert!((y[0] - 0.0).abs() < 1e-7 && (y[1] - 0.841_344_7).abs() < 1e-6);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// A non-float input.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("gelu").entered();
    let fused = has_cpu_kernel(x);
    if !fused {
        return Ok(x.gelu_erf()?);
    }
    Ok(x.contiguous()?.apply_op1(Gelu)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    #[test]
    fn gradient_matches_finite_differences() {
        // L = Σ w ∘ gelu(x); dL/dx = w ∘ (Φ(x) + x φ(x)).
        let dev = Device::Cpu;
        let xs: Vec<f64> = (0..21).map(|i| -5. + 0.5 * i as f64).collect();
        let w = Tensor::new(
            (0..21)
                .map(|i| 1. + (i as f64 * 0.3).sin())
                .collect::<Vec<_>>(),
            &dev,
        )
        .unwrap();
        let loss = |v: &[f64]| {
            let x = Tensor::new(v, &dev).unwrap();
            (gelu(&x).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::new(xs.as_slice(), &dev).unwrap();
        let grads = (gelu(x.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = grads
            .get(x.as_tensor())
            .expect("gelu must record a backward")
            .to_vec1::<f64>()
            .unwrap();
        for j in 0..xs.len() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[j] += 1e-6;
            m[j] -= 1e-6;
            let fd = (loss(&p) - loss(&m)) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < 1e-8,
                "x={}: fd {fd} vs {}",
                xs[j],
                analytic[j]
            );
        }
    }

    #[test]
    fn forward_matches_erf_definition() {
        let xs = [-3.0f64, -1.0, -0.1, 0.0, 0.5, 2.0];
        let y = gelu(&Tensor::new(&xs, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // Φ values from the standard normal table.
        let phi = [
            0.001_349_898_031_630_1,
            0.158_655_253_931_457_05,
            0.460_172_162_722_971,
            0.5,
            0.691_462_461_274_013_1,
            0.977_249_868_051_820_8,
        ];
        for ((x, y), p) in xs.iter().zip(&y).zip(phi) {
            assert!((y - x * p).abs() < 1e-12, "gelu({x}) = {y}, want {}", x * p);
        }
    }

    #[test]
    fn f32_kernel_matches_f64_reference_and_slope() {
        // The fast f32 erf against the f64 definition, forward and backward, over the range
        // BERT's pre-activations take (and beyond, where GELU is x or 0).
        let xs: Vec<f64> = (0..=4000).map(|i| -10. + 0.005 * i as f64).collect();
        let dev = Device::Cpu;
        let x64 = Var::new(xs.as_slice(), &dev).unwrap();
        let x32 = Var::from_tensor(&x64.to_dtype(candle_core::DType::F32).unwrap()).unwrap();
        let y64 = gelu(x64.as_tensor()).unwrap();
        let y32 = gelu(x32.as_tensor()).unwrap();
        let y32_as64 = y32.to_dtype(candle_core::DType::F64).unwrap();
        assert!(max_diff(&y64, &y32_as64) < 1e-6);
        let g64 = y64.sum_all().unwrap().backward().unwrap();
        let g32 = y32.sum_all().unwrap().backward().unwrap();
        let d64 = g64.get(x64.as_tensor()).unwrap();
        let d32 = g32
            .get(x32.as_tensor())
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        assert!(max_diff(d64, &d32) < 1e-6);
        // candle's own (libm erff) GELU agrees too.
        let reference = x32.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&y32, &reference) < 1e-6);
    }
}
