//! Rotary position embeddings as HF's LLaMA applies them (`rotate_half`: the two halves of a
//! head are the two coordinates of each rotated pair), differentiable.
//!
//! candle-nn's fused `rope` records no backward (DESIGN §2). This one is composed of candle
//! ops that each have one (narrow, neg, cat, mul): the gradient of a rotation by θ is the
//! rotation by −θ, which the composition yields with no hand-written kernel.

use candle_core::{D, DType, Tensor};

use crate::error::{Error, Result};

/// The cos and sin tables for `positions: (b, t)` (integer positions per example, so padded
/// and cached batches rotate each token by its own position): each `(b, 1, t, head_dim)` in
/// `dtype`, the inverse frequencies `base^(−2i/head_dim)` repeated over both halves (HF's
/// `emb = cat(freqs, freqs)`).
///
/// # Errors
/// An odd `head_dim`; positions that are not `(b, t)`.
pub fn rope_tables(
    positions: &Tensor,
    head_dim: usize,
    base: f64,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    if !head_dim.is_multiple_of(2) || head_dim == 0 {
        return Err(Error::TensorShape {
            op: "rotary embeddings (head_dim must be even)",
            expected: vec![head_dim + 1],
            got: vec![head_dim],
        });
    }
    let (b, t) = positions.dims2()?;
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| base.powf(-((2 * i) as f64) / head_dim as f64))
        .collect();
    let device = positions.device();
    let inv_freq = Tensor::from_vec(inv_freq, (1, 1, half), device)?;
    // Angles in f64, so long contexts keep their precision before the cast.
    let pos = positions.to_dtype(DType::F64)?.reshape((b, t, 1))?;
    let angles = pos.broadcast_mul(&inv_freq)?;
    let angles = Tensor::cat(&[&angles, &angles], D::Minus1)?.unsqueeze(1)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

/// `x ∘ cos + rotate_half(x) ∘ sin` with `rotate_half([x₁, x₂]) = [−x₂, x₁]`: rotary
/// embeddings on queries or keys `x: (b, heads, t, head_dim)` with tables from
/// [`rope_tables`] (`(b, 1, t, head_dim)`, or anything that broadcasts to `x`).
///
/// # Errors
/// Shapes that do not broadcast; an odd last dimension.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("rope").entered();
    let d = x.dim(D::Minus1)?;
    if !d.is_multiple_of(2) {
        return Err(Error::TensorShape {
            op: "rotary embeddings (head_dim must be even)",
            expected: vec![d + 1],
            got: vec![d],
        });
    }
    let half = d / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    #[test]
    fn matches_candles_fused_rope_forward() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Tensor::randn(0f32, 1., (b, h, t, d), &dev).unwrap();
        let pos = Tensor::arange(0u32, t as u32, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .repeat((b, 1))
            .unwrap();
        let (cos, sin) = rope_tables(&pos, d, 10000.0, DType::F32).unwrap();
        let ours = rope(&x, &cos, &sin).unwrap();
        // candle's takes (t, d/2) tables, one set for the whole batch.
        let half_cos = cos
            .get(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .narrow(1, 0, d / 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let half_sin = sin
            .get(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .narrow(1, 0, d / 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let reference =
            candle_nn::rotary_emb::rope(&x.contiguous().unwrap(), &half_cos, &half_sin).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_kept() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (1, 2, 3, 4), &dev).unwrap();
        let pos = Tensor::new(&[[0u32, 7, 1000]], &dev).unwrap();
        let (cos, sin) = rope_tables(&pos, 4, 10000.0, DType::F64).unwrap();
        let y = rope(&x, &cos, &sin).unwrap();
        let first = |t: &Tensor| t.narrow(2, 0, 1).unwrap();
        assert!(max_diff(&first(&y), &first(&x)) < 1e-12);
        // A rotation keeps each pair's length, so each head vector's norm.
        let norms = |t: &Tensor| t.sqr().unwrap().sum(3).unwrap();
        assert!(max_diff(&norms(&y), &norms(&x)) < 1e-9);
    }

    #[test]
    fn the_gradient_is_the_inverse_rotation() {
        // L = Σ w ∘ rope(x): dL/dx against central differences, in f64.
        let dev = Device::Cpu;
        let shape = (1, 2, 3, 4);
        let n = 24;
        let xs: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
        let w = Tensor::from_vec(
            (0..n).map(|i| (i as f64 * 0.3).cos()).collect(),
            shape,
            &dev,
        )
        .unwrap();
        let pos = Tensor::new(&[[2u32, 5, 11]], &dev).unwrap();
        let (cos, sin) = rope_tables(&pos, 4, 500.0, DType::F64).unwrap();
        let loss = |x: &[f64]| {
            let x = Tensor::from_vec(x.to_vec(), shape, &dev).unwrap();
            (rope(&x, &cos, &sin).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), shape, &dev).unwrap();
        let grads = (rope(x.as_tensor(), &cos, &sin).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let h = 1e-6;
        for j in 0..n {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[j] += h;
            m[j] -= h;
            let fd = (loss(&p) - loss(&m)) / (2. * h);
            assert!(
                (fd - analytic[j]).abs() < 1e-7,
                "dx[{j}]: {fd} vs {}",
                analytic[j]
            );
        }
    }
}
