//! Seeded dropout. candle's CPU random source cannot be seeded, so its dropout makes training
//! irreproducible; here masks come from a per-thread generator the trainer seeds from
//! (seed, step, micro-batch), which also makes a resumed run draw the same masks.

use std::cell::RefCell;

use candle_core::Tensor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::rows::Real;
use crate::error::Result;

thread_local! {
    static MASK_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

/// Reseeds this thread's dropout masks.
pub fn seed_dropout(seed: u64) {
    MASK_RNG.with(|r| *r.borrow_mut() = SmallRng::seed_from_u64(seed));
}

/// A dropout mask that is a pure function of (seed, block index), for fused kernels: the
/// backward regenerates it instead of keeping it, and blocks can be drawn on any thread in any
/// order, so results do not depend on the thread count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeededMask {
    p: f32,
    seed: u64,
}

impl SeededMask {
    /// A mask dropping with probability `p`, its seed drawn from this thread's dropout
    /// generator (so [`seed_dropout`] makes it reproducible like [`dropout`]).
    pub(crate) fn draw(p: f64) -> Self {
        Self {
            p: p as f32,
            seed: MASK_RNG.with(|r| r.borrow_mut().random::<u64>()),
        }
    }

    /// Block `block`'s factors, one per element: 0 with probability p, else 1/(1−p).
    pub(crate) fn block<T: Real>(&self, block: usize) -> impl Iterator<Item = T> + use<T> {
        let mut rng = SmallRng::seed_from_u64(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(block as u64),
        );
        let (p, keep) = (self.p, T::from_f64(1.0 / (1.0 - f64::from(self.p))));
        std::iter::repeat_with(move || {
            if rng.random::<f32>() < p {
                T::zero()
            } else {
                keep
            }
        })
    }
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by
/// `1/(1-p)`. The mask is a constant, so the backward is the same masked scaling.
///
/// # Errors
/// Tensor errors.
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return Ok(x.zeros_like()?);
    }
    // On CPU the mask is a function of a drawn seed, regenerated in the backward rather than
    // kept (the kernel `dropout_add` uses); elsewhere an explicit mask tensor.
    if let Some(y) = super::residual::seeded_dropout(x, p)? {
        return Ok(y);
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    let mask: Vec<f32> = MASK_RNG.with(|r| {
        let mut r = r.borrow_mut();
        (0..x.elem_count())
            .map(|_| if r.random::<f32>() < p { 0.0 } else { keep })
            .collect()
    });
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn same_seed_same_mask_and_expected_scale() {
        let x = Tensor::ones((200, 50), candle_core::DType::F32, &Device::Cpu).unwrap();
        seed_dropout(9);
        let a = dropout(&x, 0.25)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        seed_dropout(9);
        let b = dropout(&x, 0.25)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "{dropped}");
        assert!(
            a.iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6)
        );
    }

    #[test]
    fn gradient_flows_through_the_kept_elements() {
        let v = Var::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        seed_dropout(1);
        let y = dropout(v.as_tensor(), 0.5).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        for (gi, yi) in g.iter().zip(&y) {
            assert_eq!(*gi == 0.0, *yi == 0.0);
        }
    }
}
