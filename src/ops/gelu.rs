//! GELU in its exact (erf) form, as BERT's `hidden_act: "gelu"`.
//!
//! candle's `Tensor::gelu_erf` records a backward (`backprop.rs`, `UnaryOp::GeluErf`), so no
//! custom op is needed: d/dx [x·Φ(x)] = Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·e^(−x²/2)/√(2π).
//! candle writes 1/√(2π) as 0.398942 (relative error 7e-7), harmless for training. Its
//! backward composes ~10 element-wise ops; a fused kernel is a possible later speed-up.

use candle_core::Tensor;

use crate::error::Result;

/// `gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2))`, element-wise, differentiable, on every device.
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
    Ok(x.gelu_erf()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

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
            .expect("gelu_erf must record a backward")
            .to_vec1::<f64>()
            .unwrap();
        for j in 0..xs.len() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[j] += 1e-6;
            m[j] -= 1e-6;
            let fd = (loss(&p) - loss(&m)) / 2e-6;
            // candle's 0.398942 for 1/√(2π) bounds the agreement at ~1e-6.
            assert!(
                (fd - analytic[j]).abs() < 2e-6,
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
}
