//! `y = x·Wᵀ + b` for a frozen W: the backward returns only dL/dx.
//!
//! candle's matmul backward always computes `xᵀ·dL/dy` for both operands, even for a plain
//! (non-`Var`) weight, which doubles the backward FLOPs and allocates a weight-sized buffer per
//! layer. As a `CustomOp2` whose `bwd` returns `(Some(dx), None)` the weight costs nothing.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};

use crate::error::{Error, Result};

struct FrozenMatmul;

impl FrozenMatmul {
    /// (m, k) row-major input and (n, k) weight → the layouts of x and Wᵀ for `matmul`.
    fn plan(
        l1: &Layout,
        l2: &Layout,
    ) -> candle_core::Result<((usize, usize, usize, usize), Layout)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen linear: input has {k} features, weight expects {k2}");
        }
        Ok(((1, m, n, k), l2.transpose(0, 1)?))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (bmnk, wt) = Self::plan(l1, l2)?;
        let out = s1.matmul(s2, bmnk, l1, &wt)?;
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (bmnk, wt) = Self::plan(l1, l2)?;
        let out = s1.matmul(s2, bmnk, l1, &wt)?;
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    /// y = x·Wᵀ ⇒ dL/dx = dL/dy · W; W is frozen, so no dL/dW.
    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad_y.matmul(w)?), None))
    }
}

/// `y = x·Wᵀ + b` where W and b are frozen: gradients flow to x only.
///
/// `x: (…, in)`, `w: (out, in)`, `b: (out)` → `(…, out)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?;
/// let y = ttlora::ops::frozen_linear(&x, &w, None)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![1., 2., 3.]]);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// `x`'s last dim differs from `w`'s second; dtype or device mismatch.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims().to_vec();
    let Some((&last, lead)) = dims.split_last() else {
        return Err(Error::TensorShape {
            op: "frozen linear",
            expected: vec![in_f],
            got: dims,
        });
    };
    if last != in_f {
        return Err(Error::TensorShape {
            op: "frozen linear",
            expected: vec![in_f],
            got: vec![last],
        });
    }
    let n: usize = lead.iter().product();
    let x2 = x.reshape((n, in_f))?.contiguous()?;
    let mut y = x2.apply_op2(w, FrozenMatmul)?;
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    let mut out_dims = lead.to_vec();
    out_dims.push(out_f);
    Ok(y.reshape(out_dims)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    #[test]
    fn matches_plain_matmul_forward_and_input_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 4, &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (2, 3, 4), &dev).unwrap();
        let y = frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap();
        let y_ref = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let diff = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let gx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gx_ref = (&y_ref * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = gx.get(x.as_tensor()).unwrap();
        let r = gx_ref.get(x.as_tensor()).unwrap();
        let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // The frozen weight receives no gradient at all.
        assert!(gx.get(&w).is_none());
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        // dL/dx = g·W for L = Σ g ∘ (x·Wᵀ).
        let dev = Device::Cpu;
        let xs: Vec<f64> = (0..6).map(|i| (i as f64 * 0.37).sin()).collect();
        let w = Tensor::new(&[[0.5f64, -1.0, 2.0], [1.5, 0.25, -0.75]], &dev).unwrap();
        let g = Tensor::new(&[[1.0f64, -2.0], [0.5, 3.0]], &dev).unwrap();
        let loss = |v: &[f64]| {
            let x = Tensor::from_vec(v.to_vec(), (2, 3), &dev).unwrap();
            (frozen_linear(&x, &w, None).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (2, 3), &dev).unwrap();
        let grads = (frozen_linear(x.as_tensor(), &w, None).unwrap() * &g)
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
        for j in 0..xs.len() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[j] += 1e-6;
            m[j] -= 1e-6;
            let fd = (loss(&p) - loss(&m)) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < 1e-8,
                "x[{j}]: {fd} vs {}",
                analytic[j]
            );
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
        let err = frozen_linear(&x, &w, None).unwrap_err().to_string();
        assert_eq!(err, "frozen linear: tensor shape [3], expected [5]");
    }
}
