//! `y = x·Wᵀ + b` for a frozen W and b: the backward returns only dL/dx.
//!
//! candle's matmul backward always computes `xᵀ·dL/dy` for both operands, even for a plain
//! (non-`Var`) weight, which doubles the backward FLOPs and allocates a weight-sized buffer per
//! layer. As a custom op whose `bwd` returns `(Some(dx), None)` the weight costs nothing.
//! Full fine-tuning makes W and b `Var`s; then, and only then, the op also returns dL/dW and
//! the bias is added outside it so candle differentiates it.
//!
//! The bias is added inside the op too (on CPU the output starts as the bias rows and gemm
//! accumulates onto it). A separate `broadcast_add` would cost a pass forward and, in candle's
//! backward, a zero-filled `(tokens, out)` gradient for the frozen bias that stays in the
//! gradient store until the backward ends.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};

use super::dequantize::dequantize;
use super::rows::{Real, for_real, has_cpu_kernel, slice};
use super::strided::{View, gemm_views, product};
use crate::error::{Error, Result};

const NAME: &str = "frozen linear";

/// The op on `(x, W)`; the frozen bias travels inside it.
struct FrozenLinear {
    bias: Option<Tensor>,
}

/// `(m, k)` of the input and `(n, k)` of the weight, checked to agree.
fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("{NAME}: input has {k} features, weight expects {k2}");
    }
    Ok((m, n, k))
}

/// A 2-D layout as a strided view.
fn view(l: &Layout) -> candle_core::Result<View> {
    let (rows, cols) = l.shape().dims2()?;
    let stride = l.stride();
    Ok(View {
        offset: l.start_offset(),
        rows,
        cols,
        rs: stride[0],
        cs: stride[1],
    })
}

impl FrozenLinear {
    /// `base + x·Wᵀ + bias`, with `base` (contiguous `(m, n)`) and the bias optional.
    fn run<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        base: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n, _) = dims(l1, l2)?;
        let x = T::cpu_storage_as_slice(s1)?;
        let w = T::cpu_storage_as_slice(s2)?;
        let mut y = match base {
            Some((s3, l3)) => {
                if l3.dims() != [m, n] {
                    candle_core::bail!("{NAME}: base {:?}, expected [{m}, {n}]", l3.dims());
                }
                slice::<T>(NAME, s3, l3)?.to_vec()
            }
            None => Vec::new(),
        };
        let bias = self.bias.as_ref().map(Tensor::storage_and_layout);
        if let Some((storage, layout)) = &bias {
            let Storage::Cpu(cpu) = &**storage else {
                candle_core::bail!("{NAME}: the bias is not on the CPU");
            };
            let b = slice::<T>(NAME, cpu, layout)?;
            if b.len() != n {
                candle_core::bail!("{NAME}: bias has {} entries, expected {n}", b.len());
            }
            if y.is_empty() {
                y = b.repeat(m);
            } else {
                for row in y.chunks_exact_mut(n) {
                    row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
                }
            }
        }
        let threads = super::cpu_threads();
        let (x, w) = ((x, view(l1)?), (w, view(l2)?.t()));
        if y.is_empty() {
            // Nothing to add onto: a fresh product, not a zero-filled buffer accumulated into.
            y = product(x, w, T::one(), threads);
        } else {
            gemm_views(&mut y, View::dense(0, m, n), x, w, T::one(), true, threads);
        }
        Ok((T::to_cpu_storage_owned(y), Shape::from((m, n))))
    }
}

/// The fused op with a base to add onto, `(x, W, base)`: `base + x·Wᵀ + b`.
struct FrozenLinearOnto(FrozenLinear);

impl CustomOp3 for FrozenLinearOnto {
    fn name(&self) -> &'static str {
        "frozen-linear-onto"
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
        let base = Some((s3, l3));
        for_real!(s1.dtype(), NAME, |T| self.0.run::<T>(
            (s1, l1),
            (s2, l2),
            base
        ))
    }

    /// y = base + x·Wᵀ + b ⇒ dL/dx = dL/dy · W, dL/dbase = dL/dy, dL/dW = dL/dyᵀ · x (only
    /// for a trainable W).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        base: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_base = base.track_op().then(|| grad_y.clone());
        let (dx, dw) = input_and_weight_grads(x, w, grad_y)?;
        Ok((dx, dw, d_base))
    }
}

/// dL/dx = dL/dy · W if x takes part in the graph, and dL/dW = dL/dyᵀ · x if W does (full
/// fine-tuning; a frozen W gets nothing).
fn input_and_weight_grads(
    x: &Tensor,
    w: &Tensor,
    grad_y: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    // Detached operands: a gradient must not carry the forward graph (or a weight's).
    let dx = x
        .track_op()
        .then(|| input_grad(grad_y, &w.detach()))
        .transpose()?;
    let dw = w
        .track_op()
        .then(|| grad_y.t()?.matmul(&x.detach()))
        .transpose()?;
    Ok((dx, dw))
}

/// `dL/dx = dL/dy · W` for `grad_y: (m, out)` and `w: (out, in)`: on the CPU in f32/f64 a
/// fresh product split over the threads (no zero-filled destination), elsewhere candle's
/// matmul.
fn input_grad(grad_y: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !(has_cpu_kernel(grad_y) && grad_y.dtype() == w.dtype() && w.device().is_cpu()) {
        return grad_y.matmul(w);
    }
    let (m, out_f) = grad_y.dims2()?;
    let (out_w, in_f) = w.dims2()?;
    if out_f != out_w {
        candle_core::bail!("{NAME} backward: gradient has {out_f} features, weight {out_w}");
    }
    // Read in place through their layouts (`product` takes strided views): no copies.
    let (gs, gl) = grad_y.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(gs), Storage::Cpu(ws)) = (&*gs, &*ws) else {
        candle_core::bail!("{NAME} backward: CPU tensors expected");
    };
    for_real!(grad_y.dtype(), NAME, |T| {
        let dx = times_weight::<T>((gs, gl), (ws, wl))?;
        Tensor::from_vec(dx, (m, in_f), grad_y.device())
    })
}

/// `g · W` read through both layouts: `g: (m, out)`, `W: (out, in)`.
fn times_weight<T: Real>(
    (gs, gl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
) -> candle_core::Result<Vec<T>> {
    let (g, w) = (T::cpu_storage_as_slice(gs)?, T::cpu_storage_as_slice(ws)?);
    Ok(product(
        (g, view(gl)?),
        (w, view(wl)?),
        T::one(),
        super::cpu_threads(),
    ))
}

impl CustomOp2 for FrozenLinear {
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
        for_real!(s1.dtype(), NAME, |T| self.run::<T>(
            (s1, l1),
            (s2, l2),
            None
        ))
    }

    /// Without a bias (the wrapper adds it with candle ops off the CPU): candle's matmul.
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (m, n, k) = dims(l1, l2)?;
        let out = s1.matmul(s2, (1, m, n, k), l1, &l2.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }

    /// y = x·Wᵀ + b ⇒ dL/dx = dL/dy · W; a frozen W gets no dL/dW (a trainable one gets
    /// dL/dyᵀ · x). An untracked x (layer 0's input) gets nothing: candle would zero-fill and
    /// add it anyway.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        input_and_weight_grads(x, w, grad_y)
    }
}

/// `y = x·Wᵀ + b` where W and b are frozen: gradients flow to x only. (A W or b that is a
/// `Var`, as in full fine-tuning, gets its gradient too.)
///
/// `x: (…, in)`, `w: (out, in)`, `b: (out)` → `(…, out)`. On CPU in f32/f64 the bias is added
/// inside the matmul; elsewhere by a broadcast add.
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
    let _span = tracing::trace_span!("frozen_linear").entered();
    linear_impl(x, w, b, None)
}

/// `base + x·Wᵀ + b` where W and b are frozen: gradients flow to x and to `base`.
///
/// `base` has the output's shape `(…, out)`. An adapted layer passes its adapters' update
/// here, which saves the separate add (a pass over the activations forward, and in candle's
/// backward a zero-filled gradient per operand).
///
/// # Errors
/// As [`frozen_linear`]; `base` not of the output's shape.
pub fn frozen_linear_onto(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    base: &Tensor,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("frozen_linear_onto").entered();
    linear_impl(x, w, b, Some(base))
}

fn linear_impl(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    base: Option<&Tensor>,
) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims().to_vec();
    let Some((&last, lead)) = dims.split_last() else {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![in_f],
            got: dims,
        });
    };
    if last != in_f {
        return Err(Error::TensorShape {
            op: NAME,
            expected: vec![in_f],
            got: vec![last],
        });
    }
    if let Some(b) = b
        && b.dims() != [out_f]
    {
        return Err(Error::TensorShape {
            op: "frozen linear bias",
            expected: vec![out_f],
            got: b.dims().to_vec(),
        });
    }
    let mut out_dims = lead.to_vec();
    out_dims.push(out_f);
    if let Some(base) = base
        && base.dims() != out_dims.as_slice()
    {
        return Err(Error::TensorShape {
            op: "frozen linear base",
            expected: out_dims,
            got: base.dims().to_vec(),
        });
    }
    let n: usize = lead.iter().product();
    let x2 = x.reshape((n, in_f))?.contiguous()?;
    let fused = has_cpu_kernel(x);
    // A trainable bias is added by candle, which differentiates it.
    if let Some(bias) = b.filter(|b| b.track_op()) {
        let y = linear_impl(x, w, None, base)?;
        return Ok(y.broadcast_add(bias)?);
    }
    let y = if fused {
        let op = FrozenLinear {
            bias: b.map(|b| b.to_dtype(x.dtype())).transpose()?,
        };
        match base {
            Some(base) => {
                let base = base.reshape((n, out_f))?.contiguous()?;
                x2.apply_op3(w, &base, FrozenLinearOnto(op))?
            }
            None => x2.apply_op2(w, op)?,
        }
    } else {
        let mut y = x2.apply_op2(w, FrozenLinear { bias: None })?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        if let Some(base) = base {
            y = (y + base.reshape((n, out_f))?)?;
        }
        y
    };
    Ok(y.reshape(out_dims)?)
}

/// `base + x·Wᵀ + b` for a frozen W kept in its quantized blocks (a GGUF base): the forward
/// dequantizes W for the product and drops it, the backward dequantizes it again for
/// `dL/dx = dL/dy · W`; no f32 copy of W outlives either. CPU, f32 inputs.
struct QuantizedLinear {
    weight: Arc<QTensor>,
    inner: FrozenLinear,
}

impl QuantizedLinear {
    fn forward(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        base: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if s1.dtype() != DType::F32 {
            candle_core::bail!(
                "{NAME}: a quantized weight takes f32 inputs, got {:?}",
                s1.dtype()
            );
        }
        let w = dequantize(&self.weight)?;
        let (storage, layout) = w.storage_and_layout();
        let Storage::Cpu(ws) = &*storage else {
            candle_core::bail!("{NAME}: the dequantized weight is not on the CPU");
        };
        self.inner.run::<f32>((s1, l1), (ws, layout), base)
    }

    /// `dL/dx = dL/dy · W`, W dequantized for this product only.
    fn input_grad(&self, x: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let w = dequantize(&self.weight)?;
        Ok(Some(input_grad(grad_y, &w)?))
    }
}

impl candle_core::CustomOp1 for QuantizedLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s, l), None)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.input_grad(x, grad_y)
    }
}

impl CustomOp2 for QuantizedLinear {
    fn name(&self) -> &'static str {
        "quantized-linear-onto"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), Some((s2, l2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        base: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d_base = base.track_op().then(|| grad_y.clone());
        Ok((self.input_grad(x, grad_y)?, d_base))
    }
}

/// Rows up to which a product that needs no gradient reads the blocks in place: decoding
/// reads every weight once per token, so dequantizing W first would cost more than the
/// product. Q4_0/Q4_1/Q8_0 go through [`block_dot`](super::block_dot), other block types
/// (k-quants, Q5) through candle's product; both round the input to 8-bit blocks as llama.cpp
/// does, so a decoded token's products differ from the prompt's by that rounding. Larger
/// products (prefill, evaluation, training) dequantize and use the f32 gemm.
const BLOCK_DOT_MAX_ROWS: usize = 4;

/// Whether a GGUF tensor type is a block quantization (not a plain float type).
fn is_block_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

thread_local! {
    static EXACT_PRODUCTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every quantized product on this thread computed from the dequantized
/// weights and the f32 input, never the in-place block product (which rounds the input to
/// 8 bits): scores that must not depend on how many rows a forward happens to have (LM
/// scoring's one-row prompt ends and short continuations). Restores the previous mode after.
pub fn exact_products<T>(f: impl FnOnce() -> T) -> T {
    super::grad_mode::with_thread_flag(&EXACT_PRODUCTS, true, f)
}

/// Whether [`quantized_linear`] of `x` (rows × in) by `w` reads the blocks in place (a few
/// rows that need no gradient, W in a block type, outside [`exact_products`]), rather than
/// dequantizing W.
pub fn reads_blocks_in_place(x: &Tensor, w: &QTensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    rows <= BLOCK_DOT_MAX_ROWS
        && !x.track_op()
        && is_block_quantized(w.dtype())
        && !EXACT_PRODUCTS.with(std::cell::Cell::get)
}

/// `[base +] x·Wᵀ + b` for a frozen W kept quantized (`w: (out, in)` in GGUF blocks), the
/// bias frozen: gradients flow to x and `base` only, and W is dequantized per product, so a
/// quantized base costs its blocks' size in memory, not 4 bytes a weight. A product of at most
/// four rows that needs no gradient (decoding) reads the blocks in place.
///
/// # Errors
/// Shapes that disagree; an input that is not f32 on the CPU.
pub fn quantized_linear(
    x: &Tensor,
    w: &Arc<QTensor>,
    b: Option<&Tensor>,
    base: Option<&Tensor>,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("quantized_linear").entered();
    let (out_f, in_f) = w.shape().dims2()?;
    let dims = x.dims().to_vec();
    let (lead, last) = match dims.split_last() {
        Some((&last, lead)) => (lead.to_vec(), last),
        None => (Vec::new(), 0),
    };
    if last != in_f || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Err(Error::TensorShape {
            op: "quantized linear (f32 on the CPU)",
            expected: vec![in_f],
            got: dims,
        });
    }
    let n: usize = lead.iter().product();
    let mut out_dims = lead;
    out_dims.push(out_f);
    if let Some(b) = b
        && b.dims() != [out_f]
    {
        return Err(Error::TensorShape {
            op: "quantized linear bias",
            expected: vec![out_f],
            got: b.dims().to_vec(),
        });
    }
    let x2 = x.reshape((n, in_f))?.contiguous()?;
    if let Some(base) = base
        && base.dims() != out_dims.as_slice()
    {
        return Err(Error::TensorShape {
            op: "quantized linear base",
            expected: out_dims,
            got: base.dims().to_vec(),
        });
    }
    let needs_grad = base.is_some_and(Tensor::track_op);
    if !needs_grad && reads_blocks_in_place(&x2, w) {
        let mut y = if super::block_dot::supports(w.dtype()) {
            let xs = x2.flatten_all()?.to_vec1::<f32>()?;
            let y = super::block_dot::block_matmul(&xs, n, w)?;
            Tensor::from_vec(y, (n, out_f), x.device())?
        } else {
            x2.apply_op1_no_bwd(w.as_ref())?
        };
        if let Some(b) = b {
            y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        if let Some(base) = base {
            y = (y + base.reshape((n, out_f))?)?;
        }
        return Ok(y.reshape(out_dims)?);
    }
    let op = QuantizedLinear {
        weight: Arc::clone(w),
        inner: FrozenLinear {
            bias: b.map(|b| b.to_dtype(DType::F32)).transpose()?,
        },
    };
    let y = match base {
        Some(base) => x2.apply_op2(&base.reshape((n, out_f))?.contiguous()?, op)?,
        None => x2.apply_op1(op)?,
    };
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
        // A weight stored transposed (a strided view) gives the same result.
        let w_strided = w.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!w_strided.is_contiguous());
        let y_strided = frozen_linear(x.as_tensor(), &w_strided, Some(&b)).unwrap();
        let diff = (&y_strided - &y_ref)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn onto_a_base_adds_it_and_passes_its_gradient_through() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap()).unwrap();
        let base = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 4, &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (2, 3, 4), &dev).unwrap();
        let y = frozen_linear_onto(x.as_tensor(), &w, Some(&b), base.as_tensor()).unwrap();
        let y_ref =
            (frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap() + base.as_tensor()).unwrap();
        let diff = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_ref = (&y_ref * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &base] {
            let a = grads.get(v.as_tensor()).unwrap();
            let r = grads_ref.get(v.as_tensor()).unwrap();
            let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
        // An input outside the graph (a frozen embedding's output) gets no gradient entry.
        let frozen_x = x.as_tensor().detach();
        let y = frozen_linear_onto(&frozen_x, &w, Some(&b), base.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen_x).is_none() && grads.get(base.as_tensor()).is_some());
        let wrong = Tensor::zeros((2, 3, 5), DType::F32, &dev).unwrap();
        let err = frozen_linear_onto(x.as_tensor(), &w, None, &wrong).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frozen linear base: tensor shape [2, 3, 5], expected [2, 3, 4]"
        );
    }

    #[test]
    fn trainable_weight_and_bias_get_candles_gradients() {
        // Full fine-tuning: y = x·Wᵀ + b with W, b Vars ⇒ dL/dW = gᵀ·x, dL/db = Σ_rows g.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 5), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., 4, &dev).unwrap()).unwrap();
        let base = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1., (2, 3, 4), &dev).unwrap();
        let (xt, wt, bt, base_t) = (
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            base.as_tensor(),
        );
        for with_base in [false, true] {
            let y = if with_base {
                frozen_linear_onto(xt, wt, Some(bt), base_t).unwrap()
            } else {
                frozen_linear(xt, wt, Some(bt)).unwrap()
            };
            let mut y_ref = xt
                .broadcast_matmul(&wt.t().unwrap())
                .unwrap()
                .broadcast_add(bt)
                .unwrap();
            if with_base {
                y_ref = (y_ref + base_t).unwrap();
            }
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let grads_ref = (&y_ref * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [xt, wt, bt] {
                let a = grads.get(v).expect("a gradient for every Var");
                let r = grads_ref.get(v).unwrap();
                let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "{with_base}");
            }
        }
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
        let bias = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let err = frozen_linear(&x, &w, Some(&bias)).unwrap_err().to_string();
        assert_eq!(err, "frozen linear bias: tensor shape [3], expected [4]");
    }

    /// A weight kept in Q8_0 / Q4_1 blocks computes what its dequantized copy computes,
    /// forward and input gradient, with a bias and a base added; nothing else gets a
    /// gradient.
    #[test]
    fn a_quantized_weight_matches_its_dequantized_copy() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (48, 64), &dev).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let dense = q.dequantize(&dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, 48, &dev).unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap()).unwrap();
            let base =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 48), &dev).unwrap()).unwrap();
            let got = quantized_linear(&x, &q, Some(&b), Some(&base)).unwrap();
            let want = frozen_linear_onto(&x, &dense, Some(&b), &base).unwrap();
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(diff(&got, &want) < 1e-5, "{dtype:?} forward");
            let probe = Tensor::randn(0f32, 1.0, (2, 3, 48), &dev).unwrap();
            let g = (got * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let h = (want * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                diff(g.get(&x).unwrap(), h.get(&x).unwrap()) < 1e-5,
                "{dtype:?} dx"
            );
            assert!(
                diff(g.get(&base).unwrap(), &probe) < 1e-6,
                "{dtype:?} d base"
            );
            // No base: the one-input form.
            let plain = quantized_linear(&x, &q, None, None).unwrap();
            let want = frozen_linear(&x, &dense, None).unwrap();
            assert!(diff(&plain, &want) < 1e-5, "{dtype:?} plain");
        }
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let wrong = Tensor::zeros((2, 32), DType::F32, &dev).unwrap();
        assert!(quantized_linear(&wrong, &q, None, None).is_err());
    }

    /// Inside `exact_products`, a decoding-sized product is the dequantized one exactly.
    #[test]
    fn exact_products_never_round_the_input() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (48, 64), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let dense = q.dequantize(&dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
        let got = exact_products(|| quantized_linear(&x, &q, None, None).unwrap());
        let want = frozen_linear(&x, &dense, None).unwrap();
        let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        assert!(!exact_products(|| false) && reads_blocks_in_place(&x, &q));
    }

    /// Decoding-sized products that need no gradient read the blocks in place: the
    /// dequantized product up to the input's rounding to 8-bit blocks, bias and base added, and
    /// untracked.
    #[test]
    fn few_untracked_rows_multiply_in_the_blocks() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (48, 64), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let dense = q.dequantize(&dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 48, &dev).unwrap();
        for rows in [1, BLOCK_DOT_MAX_ROWS] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 64), &dev).unwrap();
            let base = Tensor::randn(0f32, 1.0, (1, rows, 48), &dev).unwrap();
            let got = quantized_linear(&x, &q, Some(&b), Some(&base)).unwrap();
            let want = frozen_linear_onto(&x, &dense, Some(&b), &base).unwrap();
            assert!(!got.track_op());
            let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap();
            let rel = (err / scale).unwrap().to_scalar::<f32>().unwrap();
            // The input is rounded to 8-bit blocks first (as llama.cpp does): within 1%, and
            // not the exact product (which would mean the block path was not taken).
            assert!(rel < 1e-2 && rel > 0.0, "{rows} rows: {rel}");
        }
    }
}
