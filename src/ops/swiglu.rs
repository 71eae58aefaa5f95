//! SwiGLU's gate, `silu(g) ∘ u`, fused on CPU with an analytic backward (LLaMA's MLP).
//!
//! Composed from candle ops it is a single-threaded `silu`, a multiply, and in the backward
//! silu's derivative built from several element-wise ops plus the multiply's two gradients,
//! each a fresh `(tokens, intermediate)` tensor; `silu(g)` is also kept alive for the
//! backward. Here the forward is one parallel pass that keeps nothing but its inputs, and the
//! backward one op writing both gradients (two parallel passes, each recomputing σ(g)).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use rayon::prelude::*;

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice, threads_for};
use crate::error::{Error, Result};

const NAME: &str = "swiglu";

/// `(σ(g), g·σ(g))`.
#[inline]
fn sigmoid_silu<T: Real>(g: T) -> (T, T) {
    let s = T::one() / (T::one() + (T::zero() - g).exp());
    (s, g * s)
}

/// The element-wise loops of the op, generic, with f32 through [`super::vmath`]'s vectorised
/// builds.
trait SwiGluLoops: Real {
    /// `y = silu(g) ∘ u`.
    fn forward(g: &[Self], u: &[Self], y: &mut [Self]) {
        for ((o, &gv), &uv) in y.iter_mut().zip(g).zip(u) {
            *o = sigmoid_silu(gv).1 * uv;
        }
    }

    /// `dg = dy ∘ u ∘ σ(g)·(1 + g·(1 − σ(g)))`, `du = dy ∘ silu(g)`.
    fn backward(g: &[Self], u: &[Self], dy: &[Self], dg: &mut [Self], du: &mut [Self]) {
        let outs = dg.iter_mut().zip(du.iter_mut());
        for ((((og, ou), &gv), &uv), &d) in outs.zip(g).zip(u).zip(dy) {
            let (s, silu) = sigmoid_silu(gv);
            *og = d * uv * (s + silu * (Self::one() - s));
            *ou = d * silu;
        }
    }
}

impl SwiGluLoops for f64 {}

impl SwiGluLoops for f32 {
    fn forward(g: &[f32], u: &[f32], y: &mut [f32]) {
        super::vmath::swiglu(g, u, y);
    }

    fn backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        super::vmath::swiglu_backward(g, u, dy, dg, du);
    }
}

/// Forward: `y = silu(g) ∘ u`.
struct SwiGlu;

impl SwiGlu {
    fn run<T: SwiGluLoops>(
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (slice::<T>(NAME, s1, l1)?, slice::<T>(NAME, s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("{NAME}: gate {:?} vs up {:?}", l1.shape(), l2.shape());
        }
        let mut y = vec![T::zero(); g.len()];
        par_rows(&mut y, 1, |range, out| {
            T::forward(&g[range.clone()], &u[range], out);
        });
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "ttlora-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for_real!(s1.dtype(), NAME, |T| Self::run::<T>((s1, l1), (s2, l2)))
    }

    /// y = g·σ(g)·u ⇒ dy/du = g·σ(g) and dy/dg = u·σ(g)·(1 + g·(1 − σ(g))).
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Both gradients from one pass: stacked as (2, …), then split.
        let both = g.apply_op3_no_bwd(u, &dy, &SwiGluBackward)?;
        let n = g.elem_count();
        let flat = both.flatten_all()?;
        let dg = flat.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = flat.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// The backward kernel: `(g, u, dy) ↦ [dL/dg ; dL/du]`, stacked.
struct SwiGluBackward;

impl SwiGluBackward {
    fn run<T: SwiGluLoops>(
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u, dy) = (
            slice::<T>(NAME, s1, l1)?,
            slice::<T>(NAME, s2, l2)?,
            slice::<T>(NAME, s3, l3)?,
        );
        if g.len() != u.len() || g.len() != dy.len() {
            candle_core::bail!(
                "{NAME} backward: {} / {} / {} elements",
                g.len(),
                u.len(),
                dy.len()
            );
        }
        let n = g.len();
        let mut out = vec![T::zero(); 2 * n];
        let (dg, du) = out.split_at_mut(n);
        // One pass writes both gradients, each thread a matching chunk of the two halves.
        let chunk = n.div_ceil(threads_for(n, n)).max(1);
        dg.par_chunks_mut(chunk)
            .zip(du.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(i, (dg, du))| {
                let r = i * chunk..i * chunk + dg.len();
                T::backward(&g[r.clone()], &u[r.clone()], &dy[r], dg, du);
            });
        Ok((T::to_cpu_storage_owned(out), Shape::from(2 * n)))
    }
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "ttlora-swiglu-backward"
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
        for_real!(s1.dtype(), NAME, |T| Self::run::<T>(
            (s1, l1),
            (s2, l2),
            (s3, l3)
        ))
    }
}

/// `silu(gate) ∘ up` (SwiGLU, LLaMA's MLP before its down projection), differentiable in both.
///
/// On CPU in f32/f64 one fused pass forward and one backward; elsewhere candle's ops.
///
/// # Errors
/// Shapes that differ; a non-float input.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("swiglu").entered();
    if gate.dims() != up.dims() {
        return Err(Error::TensorShape {
            op: NAME,
            expected: gate.dims().to_vec(),
            got: up.dims().to_vec(),
        });
    }
    let fused = has_cpu_kernel(gate);
    if !fused {
        return Ok((gate.silu()? * up)?);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use candle_core::DType;

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    fn inputs() -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let make = |phase: f64| {
            let v: Vec<f64> = (0..24)
                .map(|i| (i as f64 * 0.61 + phase).sin() * 3.0)
                .collect();
            Tensor::from_vec(v, (2, 3, 4), &dev).unwrap()
        };
        (make(0.0), make(1.3))
    }

    #[test]
    fn forward_matches_composed_ops() {
        let (g, u) = inputs();
        for dtype in [DType::F32, DType::F64] {
            let (g, u) = (g.to_dtype(dtype).unwrap(), u.to_dtype(dtype).unwrap());
            let want = (g.silu().unwrap() * &u).unwrap();
            assert!(
                max_diff(&swiglu(&g, &u).unwrap(), &want) < 1e-6,
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (g, u) = inputs();
        let probe = Tensor::new(
            (0..24).map(|i| (i as f64 * 0.3).cos()).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
        crate::ops::test_fd_gradients(&[g, u], |x| swiglu(&x[0], &x[1]).unwrap(), &probe, 1, 1e-7);
    }

    #[test]
    fn large_inputs_split_over_threads_match() {
        let dev = Device::Cpu;
        let g = candle_core::Var::randn(0f32, 2., (64, 1536), &dev).unwrap();
        let u = candle_core::Var::randn(0f32, 1., (64, 1536), &dev).unwrap();
        let probe = Tensor::randn(0f32, 1., (64, 1536), &dev).unwrap();
        let fused = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        let composed = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let a = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let b = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&g, &u] {
            let (x, y) = (a.get(v.as_tensor()).unwrap(), b.get(v.as_tensor()).unwrap());
            assert!(max_diff(x, y) < 1e-4);
        }
    }

    #[test]
    fn shapes_that_differ_are_errors() {
        let (g, u) = inputs();
        assert!(swiglu(&g, &u.narrow(2, 0, 3).unwrap()).is_err());
    }
}
