//! Seeded dropout. candle's CPU random source cannot be seeded, so its dropout makes training
//! irreproducible; here masks come from a per-thread generator the trainer seeds from
//! (seed, step, micro-batch), which also makes a resumed run draw the same masks.
//!
//! `dropout_add` fuses the residual connection after it:
//! `dropout(x) + residual` in one pass, with the mask regenerated in the backward.
//!
//! Composed from candle ops this is a mask built element by element on one thread, a multiply
//! and an add, and in candle's backward each of the two ops zero-fills a gradient per operand
//! before adding into it; the mask and the dropped `x` stay alive until the backward ends.
//! Here the forward is one pass, the backward one pass for `x` (the residual's gradient is the
//! incoming one, shared), and nothing but the output is kept.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice, unsupported};
use crate::error::{Error, Result};

thread_local! {
    static MASK_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

/// Reseeds this thread's dropout masks.
pub fn seed_dropout(seed: u64) {
    MASK_RNG.with(|r| *r.borrow_mut() = SmallRng::seed_from_u64(seed));
}

/// This thread's dropout generator as it stands, to replay the masks drawn from here on
/// (gradient checkpointing reruns a layer with the masks of its first run).
pub(crate) fn dropout_rng() -> SmallRng {
    MASK_RNG.with(|r| r.borrow().clone())
}

/// Puts back a generator [`dropout_rng`] returned.
pub(crate) fn set_dropout_rng(rng: SmallRng) {
    MASK_RNG.with(|r| *r.borrow_mut() = rng);
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
    let _span = tracing::trace_span!("dropout").entered();
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return Ok(x.zeros_like()?);
    }
    // On CPU the mask is a function of a drawn seed, regenerated in the backward rather than
    // kept (the kernel `dropout_add` uses); elsewhere an explicit mask tensor.
    if let Some(y) = seeded_dropout(x, p)? {
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

// ---- dropout(x) + residual in one pass ----

const NAME: &str = "dropout add";

/// Elements per mask block: fixed, so the mask does not depend on how rows are split.
const BLOCK: usize = 1 << 14;

/// `x ∘ mask + residual`; without a mask, `x + residual`.
struct DropoutAdd {
    mask: Option<SeededMask>,
}

impl DropoutAdd {
    /// Runs `f(element, factor)` over `out`, `factor` the mask's value for that element (1
    /// without a mask), split over threads in whole mask blocks.
    fn map<T: Real>(&self, out: &mut [T], f: impl Fn(usize, &mut T, T) + Sync) {
        par_rows(out, BLOCK, |blocks, chunk| {
            for (b, part) in blocks.clone().zip(chunk.chunks_mut(BLOCK)) {
                let at = b * BLOCK;
                match &self.mask {
                    Some(mask) => {
                        for (i, (o, m)) in part.iter_mut().zip(mask.block::<T>(b)).enumerate() {
                            f(at + i, o, m);
                        }
                    }
                    None => {
                        for (i, o) in part.iter_mut().enumerate() {
                            f(at + i, o, T::one());
                        }
                    }
                }
            }
            // A last, partial block: `par_rows` counts whole rows only.
            let covered = blocks.len() * BLOCK;
            if chunk.len() > covered {
                let b = blocks.end;
                let part = &mut chunk[covered..];
                let at = b * BLOCK;
                let factors: Box<dyn Iterator<Item = T>> = match &self.mask {
                    Some(mask) => Box::new(mask.block::<T>(b)),
                    None => Box::new(std::iter::repeat(T::one())),
                };
                for (i, (o, m)) in part.iter_mut().zip(factors).enumerate() {
                    f(at + i, o, m);
                }
            }
        });
    }

    fn run<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(NAME, s1, l1)?;
        let residual = slice::<T>(NAME, s2, l2)?;
        let mut y = vec![T::zero(); x.len()];
        self.map(&mut y, |i, o, m| *o = x[i] * m + residual[i]);
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }

    /// `t ∘ mask`: dropout itself, and the gradient of its input.
    fn scale<T: Real>(&self, t: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let t = slice::<T>(NAME, t, l)?;
        let mut out = vec![T::zero(); t.len()];
        self.map(&mut out, |i, o, m| *o = t[i] * m);
        Ok(T::to_cpu_storage_owned(out))
    }
}

impl CustomOp2 for DropoutAdd {
    fn name(&self) -> &'static str {
        "ttlora-dropout-add"
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

    /// y = x ∘ M + r ⇒ dL/dx = dL/dy ∘ M, dL/dr = dL/dy.
    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match self.mask {
            _ if !x.track_op() => None,
            None => Some(grad_y.clone()),
            Some(mask) => Some(grad_y.contiguous()?.apply_op1_no_bwd(&ApplyMask(mask))?),
        };
        Ok((dx, residual.track_op().then(|| grad_y.clone())))
    }
}

/// `x ∘ mask` as an op: dropout on its own (the mask is its own derivative), and the
/// backward of [`DropoutAdd`] for `x`.
struct ApplyMask(SeededMask);

impl candle_core::CustomOp1 for ApplyMask {
    fn name(&self) -> &'static str {
        "ttlora-seeded-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = DropoutAdd { mask: Some(self.0) };
        let out = match s.dtype() {
            DType::F32 => op.scale::<f32>(s, l)?,
            DType::F64 => op.scale::<f64>(s, l)?,
            dt => return Err(unsupported(NAME, dt)),
        };
        Ok((out, l.shape().clone()))
    }

    /// y = x ∘ M ⇒ dL/dx = dL/dy ∘ M, the same mask regenerated.
    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_y.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Inverted dropout on CPU in f32/f64 (see [`dropout`]): one pass each way,
/// nothing kept for the backward; `None` for other devices and dtypes.
pub(super) fn seeded_dropout(x: &Tensor, p: f64) -> Result<Option<Tensor>> {
    if !(has_cpu_kernel(x)) {
        return Ok(None);
    }
    let mask = SeededMask::draw(p);
    Ok(Some(x.contiguous()?.apply_op1(ApplyMask(mask))?))
}

/// `dropout(x, p) + residual`: inverted dropout on `x` (seeded like [`dropout`])
/// then the residual added, as BERT's `…Output` blocks do before their layer norm. `p = 0`
/// is a plain add.
///
/// On CPU in f32/f64 one fused pass each way, with the mask regenerated rather than stored;
/// elsewhere the composed candle ops.
///
/// # Errors
/// `x` and `residual` of different shapes.
pub fn dropout_add(x: &Tensor, residual: &Tensor, p: f64) -> Result<Tensor> {
    let _span = tracing::trace_span!("dropout_add").entered();
    if x.dims() != residual.dims() {
        return Err(Error::TensorShape {
            op: NAME,
            expected: x.dims().to_vec(),
            got: residual.dims().to_vec(),
        });
    }
    let fused = has_cpu_kernel(x);
    if !fused {
        return Ok((dropout(x, p)? + residual)?);
    }
    if p >= 1.0 {
        return Ok(residual.clone());
    }
    let mask = (p > 0.0).then(|| SeededMask::draw(p));
    let (x, residual) = (x.contiguous()?, residual.contiguous()?);
    Ok(x.apply_op2(&residual, DropoutAdd { mask })?)
}

#[cfg(test)]
mod dropout_add_tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::seed_dropout;
    use crate::ops::test_max_diff as max_diff;

    #[test]
    fn without_dropout_it_is_an_add_with_both_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (3, 7), &dev).unwrap()).unwrap();
        let r = Var::from_tensor(&Tensor::randn(0f64, 1., (3, 7), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f64, 1., (3, 7), &dev).unwrap();
        let y = dropout_add(x.as_tensor(), r.as_tensor(), 0.0).unwrap();
        let reference = (x.as_tensor() + r.as_tensor()).unwrap();
        assert_eq!(max_diff(&y, &reference), 0.0);
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &r] {
            assert_eq!(max_diff(grads.get(v.as_tensor()).unwrap(), &g), 0.0);
        }
    }

    #[test]
    fn mask_is_seeded_scaled_and_reused_by_the_backward() {
        // Over several mask blocks and a partial one, on the thread split of a large tensor.
        let dev = Device::Cpu;
        // Large enough for two threads (`rows::threads_for`), so the split path runs too.
        let n = 5 * BLOCK + 123;
        let x = Var::from_tensor(&Tensor::ones(n, DType::F32, &dev).unwrap()).unwrap();
        let r = Tensor::zeros(n, DType::F32, &dev).unwrap();
        seed_dropout(4);
        let y = dropout_add(x.as_tensor(), &r, 0.25).unwrap();
        seed_dropout(4);
        let again = dropout_add(x.as_tensor(), &r, 0.25).unwrap();
        assert_eq!(max_diff(&y, &again), 0.0);
        let values = y.to_vec1::<f32>().unwrap();
        let dropped = values.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        assert!(
            values
                .iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6)
        );
        // y = x ∘ M with x = 1, so dL/dx for L = Σ y is M itself, i.e. y.
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(max_diff(grads.get(x.as_tensor()).unwrap(), &y), 0.0);
    }

    #[test]
    fn shapes_must_agree() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(dropout_add(&a, &b, 0.1).is_err());
    }
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
