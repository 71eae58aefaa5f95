//! Seeded random initialisation shared by the adapter methods.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::error::Result;

/// A deterministic RNG for a given seed.
pub fn seeded_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// PyTorch's `kaiming_uniform_(a=√5)` (nn.Linear's and PEFT's `lora_A` default):
/// U(−1/√fan_in, 1/√fan_in), where gain √(2/(1+a²)) = √(1/3) cancels the uniform's √3.
///
/// # Errors
/// As `Tensor::from_vec`.
pub fn kaiming_uniform(
    dims: &[usize],
    fan_in: usize,
    rng: &mut StdRng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Tensor::from_vec(data, dims, device)?.to_dtype(dtype)?)
}

/// One standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A tensor of N(0, std²) draws.
///
/// # Errors
/// As `Tensor::from_vec`.
pub fn normal(
    dims: &[usize],
    std: f64,
    rng: &mut StdRng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n).map(|_| standard_normal(rng) * std).collect();
    Ok(Tensor::from_vec(data, dims, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_bound_and_determinism() {
        let a =
            kaiming_uniform(&[8, 64], 64, &mut seeded_rng(3), DType::F32, &Device::Cpu).unwrap();
        let b =
            kaiming_uniform(&[8, 64], 64, &mut seeded_rng(3), DType::F32, &Device::Cpu).unwrap();
        let max = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 0.125 && max > 0.1);
        let same = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
    }
}
