//! Rotary position embeddings as HF's LLaMA applies them (`rotate_half`: the two halves of a
//! head are the two coordinates of each rotated pair), differentiable.
//!
//! candle-nn's fused `rope` records no backward (DESIGN §2). On the CPU in f32/f64 this one
//! is a fused op whose backward is the inverse rotation, one pass each way; elsewhere it is
//! composed of candle ops that each have a backward (narrow, neg, cat, mul), which cost seven
//! passes forward and more backward over each query and key tensor.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Shape, Tensor};

use super::rows::{Real, for_real, has_cpu_kernel, par_rows, slice};
use crate::error::{Error, Result};

const NAME: &str = "rope";

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
    if let Ok((b, heads, t, _)) = x.dims4()
        && let Some(tables) = fused_tables(x, (b, heads, t, d), cos, sin)
    {
        return fused(x, tables, Order::HeadMajor, cos, sin);
    }
    let half = d / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// A projection's output `x: (b, t, heads · head_dim)` split into heads and rotated:
/// `rope(x` as `(b, heads, t, head_dim))`. On the CPU in f32/f64 one pass that reads the
/// token-major rows and writes the head-major ones (its backward the inverse), so no
/// transposed copy of `x` is made and kept for the backward.
///
/// # Errors
/// A width that is not `heads` heads of even width; tables that do not broadcast.
pub fn rope_heads(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("rope_heads").entered();
    let (b, t, width) = x.dims3()?;
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(Error::TensorShape {
            op: "rotary embeddings (width must be a multiple of the heads)",
            expected: vec![heads],
            got: vec![width],
        });
    }
    let d = width / heads;
    if let Some(tables) = fused_tables(x, (b, heads, t, d), cos, sin) {
        return fused(x, tables, Order::TokenMajor, cos, sin);
    }
    let split = x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?;
    rope(&split, cos, sin)
}

/// The fused rotation of `x` laid out as `from`, returning `(b, heads, t, d)`.
fn fused(x: &Tensor, tables: Tables, from: Order, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let op = Rope {
        inverse: false,
        tables,
        from,
        to: Order::HeadMajor,
    };
    Ok(x.contiguous()?.apply_op3(&cos, &sin, op)?)
}

/// How the fused op finds a row's tables: `x` holds `(b, heads, t, d)` head vectors and the
/// tables are `(tb, 1, t, d)` with `tb` either `b` or 1 (one set for the whole batch).
#[derive(Debug, Clone, Copy)]
struct Tables {
    heads: usize,
    t: usize,
    d: usize,
    per_item: bool,
}

/// The fused op's table layout for `x` holding `(b, heads, t, d)` head vectors, or `None`
/// where the composed ops run instead: off the CPU, other dtypes or shapes, or tables that
/// take part in a graph (the fused op differentiates `x` only).
fn fused_tables(
    x: &Tensor,
    (b, heads, t, d): (usize, usize, usize, usize),
    cos: &Tensor,
    sin: &Tensor,
) -> Option<Tables> {
    if x.elem_count() == 0 || !d.is_multiple_of(2) {
        return None;
    }
    let tables_fit = |c: &Tensor| {
        let dims = c.dims();
        dims.len() == 4
            && (dims[0] == b || dims[0] == 1)
            && dims[1..] == [1, t, d]
            && c.dtype() == x.dtype()
            && !c.track_op()
    };
    (has_cpu_kernel(x) && tables_fit(cos) && tables_fit(sin) && cos.dims() == sin.dims()).then(
        || Tables {
            heads,
            t,
            d,
            per_item: cos.dim(0).ok() == Some(b) && b > 1,
        },
    )
}

/// Where the head vectors of `(b, heads, t, d)` lie in a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `(b, heads, t, d)`.
    HeadMajor,
    /// `(b, t, heads · d)`, as a projection writes them.
    TokenMajor,
}

impl Order {
    /// Row `(item, head, pos)`'s index in this order.
    fn row(self, (item, head, pos): (usize, usize, usize), tables: Tables) -> usize {
        match self {
            Order::HeadMajor => (item * tables.heads + head) * tables.t + pos,
            Order::TokenMajor => (item * tables.t + pos) * tables.heads + head,
        }
    }

    /// The `(item, head, pos)` of row `r` in this order.
    fn coordinates(self, r: usize, tables: Tables) -> (usize, usize, usize) {
        let (n, t) = (tables.heads, tables.t);
        match self {
            Order::HeadMajor => (r / (n * t), r / t % n, r % t),
            Order::TokenMajor => (r / (t * n), r % n, r / n % t),
        }
    }

    /// The shape of `items` items in this order.
    fn shape(self, items: usize, tables: Tables) -> Shape {
        let Tables { heads, t, d, .. } = tables;
        match self {
            Order::HeadMajor => Shape::from((items, heads, t, d)),
            Order::TokenMajor => Shape::from((items, t, heads * d)),
        }
    }
}

/// The rotation on `(x, cos, sin)`, reading head vectors in `from` order and writing them in
/// `to` order: forward `y₁ = x₁c₁ − x₂s₁`, `y₂ = x₂c₂ + x₁s₂` (halves of each head vector), or
/// its inverse `y₁ = x₁c₁ + x₂s₂`, `y₂ = x₂c₂ − x₁s₁`, which is the forward's transpose and so,
/// with the orders swapped, its backward.
struct Rope {
    inverse: bool,
    tables: Tables,
    from: Order,
    to: Order,
}

impl Rope {
    fn run<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (
            slice::<T>(NAME, s1, l1)?,
            slice::<T>(NAME, s2, l2)?,
            slice::<T>(NAME, s3, l3)?,
        );
        let tables = self.tables;
        let Tables {
            heads,
            t,
            d,
            per_item,
        } = tables;
        let item = heads * t * d;
        let items = x.len().checked_div(item).unwrap_or(0);
        let table_rows = if per_item { items * t } else { t };
        let fits = d % 2 == 0 && items * item == x.len() && items > 0;
        if !fits || cos.len() != table_rows * d || sin.len() != cos.len() {
            candle_core::bail!("{NAME}: x {:?} against tables {:?}", l1.dims(), l2.dims());
        }
        let half = d / 2;
        let mut y = vec![T::zero(); x.len()];
        par_rows(&mut y, d, |range, out| {
            for (r, yr) in range.zip(out.chunks_exact_mut(d)) {
                let at = self.to.coordinates(r, tables);
                let table = (if per_item { at.0 * t } else { 0 } + at.2) * d;
                let (c, s) = (&cos[table..table + d], &sin[table..table + d]);
                let from = self.from.row(at, tables) * d;
                let (x1, x2) = x[from..from + d].split_at(half);
                let (y1, y2) = yr.split_at_mut(half);
                let (c1, c2) = c.split_at(half);
                let (s1, s2) = s.split_at(half);
                for i in 0..half {
                    if self.inverse {
                        y1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                        y2[i] = x2[i] * c2[i] - x1[i] * s1[i];
                    } else {
                        y1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                        y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
                    }
                }
            }
        });
        Ok((T::to_cpu_storage_owned(y), self.to.shape(items, tables)))
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "ttlora-rope"
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
        for_real!(s1.dtype(), NAME, |T| self.run::<T>(
            (s1, l1),
            (s2, l2),
            (s3, l3)
        ))
    }

    /// y = Rx with R the (per-position) rotation ⇒ dL/dx = Rᵀ·dL/dy, the inverse rotation,
    /// written back in x's order; the tables are constants.
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Rope {
            inverse: !self.inverse,
            tables: self.tables,
            from: self.to,
            to: self.from,
        };
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, sin, &op)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    /// The composed rotation, the reference for the fused op.
    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.dim(D::Minus1).unwrap() / 2;
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(cos).unwrap() + rotated.broadcast_mul(sin).unwrap()).unwrap()
    }

    /// Tables for `b` items at distinct positions, and the second item's alone (one set
    /// shared by the batch, at positions t..2t, so its first row is not the identity), both
    /// `(cos, sin)`.
    fn both_tables(b: usize, t: usize, d: usize) -> [(Tensor, Tensor); 2] {
        let pos = Tensor::arange(0u32, (b * t) as u32, &Device::Cpu)
            .unwrap()
            .reshape((b, t))
            .unwrap();
        let (cos, sin) = rope_tables(&pos, d, 500.0, DType::F64).unwrap();
        let shared = (cos.narrow(0, 1, 1).unwrap(), sin.narrow(0, 1, 1).unwrap());
        [(cos, sin), shared]
    }

    /// The fused op equals the composed ops forward and backward, with tables per batch item
    /// and one set for the batch, on a tensor large enough to be split over threads.
    #[test]
    fn fused_equals_composed_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (3, 4, 37, 16);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (b, h, t, d), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f64, 1., (b, h, t, d), &dev).unwrap();
        for (c, s) in both_tables(b, t, d) {
            assert!(fused_tables(x.as_tensor(), (b, h, t, d), &c, &s).is_some());
            let grad = |y: Tensor| {
                let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            };
            let (fused, reference) = (
                rope(x.as_tensor(), &c, &s).unwrap(),
                composed(x.as_tensor(), &c, &s),
            );
            assert!(max_diff(&fused, &reference) < 1e-12);
            assert!(max_diff(&grad(fused), &grad(reference)) < 1e-12);
        }
    }

    /// Splitting a projection's output into heads and rotating them in one op equals the
    /// transposed copy rotated, forward and backward, with tables per item and shared.
    #[test]
    fn rope_heads_equals_split_then_rope() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 41, 8);
        let [(cos, sin), shared] = both_tables(b, t, d);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (b, t, h * d), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f64, 1., (b, h, t, d), &dev).unwrap();
        let grad = |y: Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        for (c, s) in [(cos.clone(), sin.clone()), shared] {
            let split = x
                .as_tensor()
                .reshape((b, t, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let (fused, reference) = (
                rope_heads(x.as_tensor(), h, &c, &s).unwrap(),
                composed(&split, &c, &s),
            );
            assert_eq!(fused.dims(), [b, h, t, d]);
            assert!(max_diff(&fused, &reference) < 1e-12);
            assert!(max_diff(&grad(fused), &grad(reference)) < 1e-12);
        }
        assert!(rope_heads(x.as_tensor(), 5, &cos, &sin).is_err());
    }

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
