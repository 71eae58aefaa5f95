//! Multi-head scaled dot-product attention, fused on CPU, with an analytic backward.
//!
//! Composed from candle ops, one BERT attention layer keeps for its backward: q scaled, three
//! head-major copies of q/k/v, the raw scores, the masked scores, the probabilities, the
//! dropout mask and the dropped probabilities (five `(b, heads, s, s)` tensors), and the
//! context transposed back. Here q, k, v stay in the `(b, s, hidden)` layout the linears
//! produce (each head is a strided view, read by `gemm` directly), the only saved tensor is the
//! probabilities, and the dropout mask is regenerated from a seed in the backward.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Shape, Storage, Tensor};

use super::dropout::SeededMask;
use super::rows::{Real, for_real, slice, threads_for, unsupported};
use super::strided::{View, matmul_into};
use crate::error::{Error, Result};

const NAME: &str = "attention";

/// Sizes of one attention call: batch, sequence, heads, head width.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Head `h` of batch item `b` of a `(b, s, hidden)` tensor.
    fn head(&self, b: usize, h: usize) -> View {
        View {
            offset: b * self.seq * self.hidden() + h * self.head_dim,
            rows: self.seq,
            cols: self.head_dim,
            rs: self.hidden(),
            cs: 1,
        }
    }
    /// Elements of one batch item of a `(b, s, hidden)` tensor.
    fn item(&self) -> usize {
        self.seq * self.hidden()
    }
}

/// The fused op on `(q, k, v)`; the key bias, dropout and (after the forward) the saved
/// probabilities travel inside it.
struct Attention {
    dims: Dims,
    scale: f64,
    /// Additive bias per key, `(batch, seq)`: 0 for real tokens, very negative for padding.
    key_bias: Vec<f64>,
    /// Attention-probability dropout, one mask block per (batch item, head).
    dropout: Option<SeededMask>,
    /// Keep the probabilities for a backward (false when no input needs a gradient).
    save: bool,
    saved: Mutex<Option<CpuStorage>>,
}

/// Runs `f(blocks, probs_chunk)` over per-thread ranges of the `n` (batch item, head) blocks,
/// on up to candle's thread count; `probs` (empty, or `block_len` values per block) is split
/// alongside. Blocks, not batch items, are shared out so that batch 1 still uses every thread.
/// Returns each thread's range and result, in block order.
fn par_blocks<T: Send, R: Send>(
    n: usize,
    work_per_block: usize,
    probs: &mut [T],
    block_len: usize,
    f: impl Fn(Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<(Range<usize>, R)> {
    let threads = threads_for(n * work_per_block, n);
    let per = n.div_ceil(threads).max(1);
    let ranges: Vec<Range<usize>> = (0..n.div_ceil(per))
        .map(|t| t * per..((t + 1) * per).min(n))
        .collect();
    let mut chunks: Vec<&mut [T]> = if probs.is_empty() {
        ranges.iter().map(|_| <&mut [T]>::default()).collect()
    } else {
        probs.chunks_mut(per * block_len).collect()
    };
    if ranges.len() <= 1 {
        let chunk = chunks.pop().unwrap_or_default();
        return vec![(0..n, f(0..n, chunk))];
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = ranges
            .into_iter()
            .zip(chunks)
            .map(|(range, chunk)| scope.spawn(move || (range.clone(), f(range, chunk))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// `probs[row] ← softmax(probs[row] + bias)` for each row of a `s × s` block.
fn masked_softmax_rows<T: Real>(block: &mut [T], bias: &[f64]) {
    let s = bias.len();
    for row in block.chunks_exact_mut(s) {
        let mut m = T::NEG_INFINITY;
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += T::from_f64(b);
            m = m.max(*v);
        }
        let mut sum = T::zero();
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = T::one() / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Copies stacked `(s, d)` head blocks (blocks `blocks`, in order) into their columns of a
/// `(b, s, hidden)` tensor.
fn scatter_heads<T: Copy>(out: &mut [T], dm: Dims, blocks: Range<usize>, stack: &[T]) {
    let (s, d, hidden) = (dm.seq, dm.head_dim, dm.hidden());
    for (local, blk) in blocks.enumerate() {
        let (b, h) = (blk / dm.heads, blk % dm.heads);
        let src = &stack[local * s * d..(local + 1) * s * d];
        for (i, row) in src.chunks_exact(d).enumerate() {
            let at = (b * s + i) * hidden + h * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
}

impl Attention {
    fn forward<T: Real>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
    ) -> candle_core::Result<(Vec<T>, Option<Vec<T>>)> {
        let dm = self.dims;
        let (s, d) = (dm.seq, dm.head_dim);
        let block = s * s;
        let n_blocks = dm.batch * dm.heads;
        let mut probs = if self.save {
            vec![T::zero(); n_blocks * block]
        } else {
            Vec::new()
        };
        let scale = T::from_f64(self.scale);
        let square = View::dense(0, s, s);
        let parts = par_blocks(n_blocks, block * d, &mut probs, block, |blocks, saved| {
            let mut scratch = vec![T::zero(); block];
            let mut dropped = vec![T::zero(); if self.dropout.is_some() { block } else { 0 }];
            // This thread's context blocks, `(s, d)` each, stacked in block order.
            let mut ctx = vec![T::zero(); blocks.len() * s * d];
            for (local, blk) in blocks.enumerate() {
                let (b, h) = (blk / dm.heads, blk % dm.heads);
                let p: &mut [T] = if saved.is_empty() {
                    &mut scratch
                } else {
                    &mut saved[local * block..(local + 1) * block]
                };
                let head = dm.head(b, h);
                matmul_into(p, square, q, head, k, head.t(), scale);
                masked_softmax_rows(p, &self.key_bias[b * s..(b + 1) * s]);
                let weights: &[T] = match self.dropout {
                    Some(mask) => {
                        let factors = mask.block::<T>(blk);
                        for ((o, &pv), m) in dropped.iter_mut().zip(p.iter()).zip(factors) {
                            *o = pv * m;
                        }
                        &dropped
                    }
                    None => p,
                };
                let dst = View::dense(local * s * d, s, d);
                matmul_into(&mut ctx, dst, weights, square, v, head, T::one());
            }
            ctx
        });
        let mut out = vec![T::zero(); dm.batch * dm.item()];
        for (blocks, ctx) in &parts {
            scatter_heads(&mut out, dm, blocks.clone(), ctx);
        }
        Ok((out, self.save.then_some(probs)))
    }

    /// The gradients `(dq, dk, dv)` from the saved probabilities `p` and `dout`.
    fn backward<T: Real>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
        p: &[T],
        dout: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let dm = self.dims;
        let (s, d) = (dm.seq, dm.head_dim);
        let block = s * s;
        let n_blocks = dm.batch * dm.heads;
        let scale = T::from_f64(self.scale);
        let square = View::dense(0, s, s);
        let parts = par_blocks(
            n_blocks,
            2 * block * d,
            &mut [] as &mut [T],
            block,
            |blocks, _| {
                let mut dp = vec![T::zero(); block];
                let mut dropped = vec![T::zero(); if self.dropout.is_some() { block } else { 0 }];
                let stack = blocks.len() * s * d;
                let (mut dq, mut dk, mut dv) = (
                    vec![T::zero(); stack],
                    vec![T::zero(); stack],
                    vec![T::zero(); stack],
                );
                for (local, blk) in blocks.enumerate() {
                    let (b, h) = (blk / dm.heads, blk % dm.heads);
                    let head = dm.head(b, h);
                    let mine = View::dense(local * s * d, s, d);
                    let pb = &p[blk * block..(blk + 1) * block];
                    // dL/d(dropped P) = dO·Vᵀ.
                    matmul_into(&mut dp, square, dout, head, v, head.t(), T::one());
                    // Through the dropout: both dL/dP and the dropped P take the mask.
                    let weights: &[T] = match self.dropout {
                        Some(mask) => {
                            let factors = mask.block::<T>(blk);
                            for (((g, o), &pv), m) in
                                dp.iter_mut().zip(dropped.iter_mut()).zip(pb).zip(factors)
                            {
                                *g *= m;
                                *o = pv * m;
                            }
                            &dropped
                        }
                        None => pb,
                    };
                    // dL/dV = (dropped P)ᵀ·dO.
                    matmul_into(&mut dv, mine, weights, square.t(), dout, head, T::one());
                    // Softmax: dL/dS = P ∘ (dL/dP − Σ_j dL/dP_j · P_j), row by row; the key bias
                    // is a constant and takes no gradient.
                    for (g, pr) in dp.chunks_exact_mut(s).zip(pb.chunks_exact(s)) {
                        let mut dot = T::zero();
                        for (&a, &b) in g.iter().zip(pr) {
                            dot += a * b;
                        }
                        for (a, &b) in g.iter_mut().zip(pr) {
                            *a = b * (*a - dot);
                        }
                    }
                    // S = scale·Q·Kᵀ ⇒ dL/dQ = scale·dS·K, dL/dK = scale·dSᵀ·Q.
                    matmul_into(&mut dq, mine, &dp, square, k, head, scale);
                    matmul_into(&mut dk, mine, &dp, square.t(), q, head, scale);
                }
                (dq, dk, dv)
            },
        );
        let n = dm.batch * dm.item();
        let (mut dq, mut dk, mut dv) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
        for (blocks, (q_part, k_part, v_part)) in &parts {
            scatter_heads(&mut dq, dm, blocks.clone(), q_part);
            scatter_heads(&mut dk, dm, blocks.clone(), k_part);
            scatter_heads(&mut dv, dm, blocks.clone(), v_part);
        }
        (dq, dk, dv)
    }

    fn cpu_run<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = (
            slice::<T>(NAME, s1, l1)?,
            slice::<T>(NAME, s2, l2)?,
            slice::<T>(NAME, s3, l3)?,
        );
        let (out, probs) = self.forward(qkv)?;
        if let Some(probs) = probs {
            *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))? =
                Some(T::to_cpu_storage_owned(probs));
        }
        Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
    }

    fn cpu_backward<T: Real>(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        dout: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))?;
        let Some(probs) = saved.as_ref() else {
            candle_core::bail!("{NAME} backward: the forward saved no probabilities");
        };
        let p = T::cpu_storage_as_slice(probs)?;
        let guards = [q, k, v, dout].map(|t| t.storage_and_layout());
        let mut data: Vec<&[T]> = Vec::with_capacity(4);
        for (storage, layout) in &guards {
            let Storage::Cpu(cpu) = &**storage else {
                candle_core::bail!("{NAME} backward: CPU tensors expected");
            };
            data.push(slice::<T>(NAME, cpu, layout)?);
        }
        let (dq, dk, dv) = self.backward((data[0], data[1], data[2]), p, data[3]);
        let wrap = |g: Vec<T>| Tensor::from_vec(g, q.shape(), q.device());
        Ok((wrap(dq)?, wrap(dk)?, wrap(dv)?))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "ttlora-attention"
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
        for_real!(s1.dtype(), NAME, |T| self.cpu_run::<T>(
            (s1, l1),
            (s2, l2),
            (s3, l3)
        ))
    }

    /// With S = scale·Q·Kᵀ + bias, P = softmax(S), P' = P ∘ M (dropout), O = P'·V:
    /// dV = P'ᵀ·dO; dP = (dO·Vᵀ) ∘ M; dS = P ∘ (dP − rowsum(dP ∘ P));
    /// dQ = scale·dS·K; dK = scale·dSᵀ·Q.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.cpu_backward::<f32>((q, k, v), &grad)?,
            DType::F64 => self.cpu_backward::<f64>((q, k, v), &grad)?,
            dt => return Err(unsupported(NAME, dt)),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Multi-head attention `softmax(q·kᵀ/√d + key_bias)·v`, heads split from and merged back into
/// the hidden dimension as BERT does.
///
/// `q, k, v: (b, s, hidden)` with `hidden = heads · d`; `key_bias: (b, s)` is added to every
/// score of that key (0 for real tokens, a large negative number for padding);
/// `dropout_p > 0` drops attention probabilities (seeded like [`dropout`](super::dropout)).
/// Returns the context `(b, s, hidden)`.
///
/// On CPU in f32/f64 the whole layer is one op with an analytic backward that keeps only the
/// probabilities; elsewhere it is composed from differentiable candle ops.
///
/// # Errors
/// Shapes that disagree, or `hidden` not divisible by `heads`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    heads: usize,
    dropout_p: f64,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("attention").entered();
    let (batch, seq, hidden) = q.dims3()?;
    let shape_error = |got: &Tensor, expected: Vec<usize>| Error::TensorShape {
        op: NAME,
        expected,
        got: got.dims().to_vec(),
    };
    for t in [k, v] {
        if t.dims() != q.dims() {
            return Err(shape_error(t, q.dims().to_vec()));
        }
    }
    if key_bias.dims() != [batch, seq] {
        return Err(shape_error(key_bias, vec![batch, seq]));
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::TensorShape {
            op: "attention heads (hidden must be a multiple)",
            expected: vec![heads],
            got: vec![hidden],
        });
    }
    let head_dim = hidden / heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // No tokens or zero-width heads: nothing to attend over, and nothing to differentiate.
    if q.elem_count() == 0 {
        return Ok(q.zeros_like()?.detach());
    }
    let fused = q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64);
    if !fused {
        return composed(q, k, v, key_bias, heads, dropout_p);
    }
    let dropout = (dropout_p > 0.0).then(|| SeededMask::draw(dropout_p));
    let op = Attention {
        dims: Dims {
            batch,
            seq,
            heads,
            head_dim,
        },
        scale,
        key_bias: key_bias
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?,
        dropout,
        save: q.track_op() || k.track_op() || v.track_op(),
        saved: Mutex::new(None),
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(q.apply_op3(&k, &v, op)?)
}

/// The same attention from candle ops (other devices and dtypes).
fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    heads: usize,
    dropout_p: f64,
) -> Result<Tensor> {
    let (batch, seq, hidden) = q.dims3()?;
    let head_dim = hidden / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        Ok(t.reshape((batch, seq, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let q = (split(q)? * (1.0 / (head_dim as f64).sqrt()))?;
    let (k, v) = (split(k)?, split(v)?);
    let bias = key_bias.reshape((batch, 1, 1, seq))?;
    let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let probs = super::dropout(&probs, dropout_p)?;
    Ok(probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((batch, seq, hidden))?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Var};

    use super::*;
    use crate::ops::test_max_diff as max_diff;

    /// Batch 3, 5 tokens, 2 heads of width 3; item 1 has two padding keys, item 2 one.
    fn inputs(dtype: DType) -> (Tensor, Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let make = |phase: f64| {
            let vals: Vec<f64> = (0..3 * 5 * 6)
                .map(|i| (i as f64 * 0.37 + phase).sin() * 1.5)
                .collect();
            Tensor::from_vec(vals, (3, 5, 6), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let neg = -1e9;
        let bias = Tensor::new(
            &[
                [0., 0., 0., 0., 0.],
                [0., 0., 0., neg, neg],
                [0., 0., 0., 0., neg],
            ],
            &dev,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        (make(0.0), make(1.0), make(2.0), bias)
    }

    #[test]
    fn forward_matches_composed_ops() {
        for dtype in [DType::F32, DType::F64] {
            let (q, k, v, bias) = inputs(dtype);
            let fused = attention(&q, &k, &v, &bias, 2, 0.0).unwrap();
            let reference = composed(&q, &k, &v, &bias, 2, 0.0).unwrap();
            assert!(max_diff(&fused, &reference) < 1e-6, "{dtype:?}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // L = Σ g ∘ attention(q, k, v) in f64, each input perturbed element by element.
        let (q, k, v, bias) = inputs(DType::F64);
        let g = Tensor::new(
            (0..90).map(|i| (i as f64 * 0.21).cos()).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap()
        .reshape((3, 5, 6))
        .unwrap();
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
            (attention(q, k, v, &bias, 2, 0.0).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
        let out = attention(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &bias,
            2,
            0.0,
        )
        .unwrap();
        let grads = (out * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for (which, var) in vars.iter().enumerate() {
            let analytic = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for j in (0..base.len()).step_by(7) {
                let at = |delta: f64| {
                    let mut x = base.clone();
                    x[j] += delta;
                    let x = Tensor::from_vec(x, (3, 5, 6), &Device::Cpu).unwrap();
                    let mut args = [q.clone(), k.clone(), v.clone()];
                    args[which] = x;
                    loss(&args[0], &args[1], &args[2])
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (fd - analytic[j]).abs() < 1e-7,
                    "input {which}, element {j}: fd {fd} vs {}",
                    analytic[j]
                );
            }
        }
        // Padding keys take no part: their k and v rows get exactly zero gradient.
        let dk = grads
            .get(vars[1].as_tensor())
            .unwrap()
            .i((1, 3..5))
            .unwrap();
        assert_eq!(
            dk.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
    }

    #[test]
    fn dropout_is_seeded_unbiased_and_differentiated_with_its_mask() {
        let (q, k, v, bias) = inputs(DType::F64);
        let clean = attention(&q, &k, &v, &bias, 2, 0.0).unwrap();
        // The same seed gives the same output; its mean over seeds is the clean output.
        super::super::seed_dropout(3);
        let a = attention(&q, &k, &v, &bias, 2, 0.3).unwrap();
        super::super::seed_dropout(3);
        let b = attention(&q, &k, &v, &bias, 2, 0.3).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
        assert!(max_diff(&a, &clean) > 1e-3);
        let n = 2000;
        let mut sum = clean.zeros_like().unwrap();
        for seed in 0..n {
            super::super::seed_dropout(seed);
            sum = (sum + attention(&q, &k, &v, &bias, 2, 0.3).unwrap()).unwrap();
        }
        let mean = (sum / n as f64).unwrap();
        assert!(max_diff(&mean, &clean) < 0.1, "{}", max_diff(&mean, &clean));
        // The backward regenerates the forward's mask: finite differences with the seed fixed.
        let g = clean.ones_like().unwrap();
        let var = Var::from_tensor(&v).unwrap();
        super::super::seed_dropout(5);
        let out = attention(&q, &k, var.as_tensor(), &bias, 2, 0.3).unwrap();
        let grads = (out * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base: Vec<f64> = v.flatten_all().unwrap().to_vec1().unwrap();
        for j in (0..base.len()).step_by(5) {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[j] += delta;
                let x = Tensor::from_vec(x, (3, 5, 6), &Device::Cpu).unwrap();
                super::super::seed_dropout(5);
                (attention(&q, &k, &x, &bias, 2, 0.3).unwrap() * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < 1e-7,
                "element {j}: {fd} vs {}",
                analytic[j]
            );
        }
    }

    #[test]
    fn large_batches_split_over_threads_match() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (16, 40, 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (16, 40, 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (16, 40, 64), &dev).unwrap();
        let bias = Tensor::zeros((16, 40), DType::F32, &dev).unwrap();
        let fused = attention(&q, &k, &v, &bias, 4, 0.0).unwrap();
        let reference = composed(&q, &k, &v, &bias, 4, 0.0).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        // Batch 1: the heads of one item are shared out, forward and backward.
        let qkv = [0, 1, 2].map(|_| Var::randn(0f32, 1., (1, 128, 384), &dev).unwrap());
        let bias = Tensor::zeros((1, 128), DType::F32, &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (1, 128, 384), &dev).unwrap();
        let [q, k, v] = qkv.each_ref().map(|t| t.as_tensor());
        let fused = attention(q, k, v, &bias, 12, 0.0).unwrap();
        let reference = composed(q, k, v, &bias, 12, 0.0).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        let grads = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_ref = (reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [q, k, v] {
            assert!(max_diff(grads.get(t).unwrap(), grads_ref.get(t).unwrap()) < 1e-4);
        }
    }

    #[test]
    fn empty_inputs_give_empty_outputs() {
        let dev = Device::Cpu;
        for (b, n, h) in [(2, 0, 64), (2, 3, 0), (0, 3, 8)] {
            let q = Tensor::zeros((b, n, h), DType::F32, &dev).unwrap();
            let bias = Tensor::zeros((b, n), DType::F32, &dev).unwrap();
            let out = attention(&q, &q, &q, &bias, 1, 0.0).unwrap();
            assert_eq!(out.dims(), [b, n, h]);
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let (q, k, _, bias) = inputs(DType::F32);
        let short = k.narrow(1, 0, 4).unwrap();
        assert!(attention(&q, &short, &k, &bias, 2, 0.0).is_err());
        assert!(attention(&q, &k, &k, &bias, 4, 0.0).is_err());
        assert!(attention(&q, &k, &k, &bias.narrow(1, 0, 4).unwrap(), 2, 0.0).is_err());
    }
}
