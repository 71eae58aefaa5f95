//! Multi-head scaled dot-product attention, fused on CPU, with an analytic backward: the
//! encoders' bidirectional attention with a key-padding bias, and the decoders' causal
//! attention with grouped key/value heads (GQA), keys from a cache or a prefix included.
//!
//! Composed from candle ops, one attention layer keeps for its backward: q scaled, head-major
//! copies of q/k/v (for GQA, k and v repeated per query head), the raw scores, the masked
//! scores, the probabilities, the dropout mask and the dropped probabilities (five
//! `(b, heads, t, keys)` tensors), and the context transposed back. Here q, k, v stay in the
//! layout they arrive in (each head is a strided view, read by `gemm` directly), a key/value
//! head is read in place by every query head of its group, the only saved tensor is the
//! probabilities (for causal attention not even those: two softmax statistics per query row,
//! from which the backward recomputes them), the dropout mask is regenerated from a seed in the
//! backward, and causal attention computes only the score tiles a query can see.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::dropout::SeededMask;
use super::rows::{Real, for_real, has_cpu_kernel, lane_dot, slice, threads_for, unsupported};
use super::strided::{View, gemm_views, matmul_into};
use crate::error::{Error, Result};

const NAME: &str = "attention";

/// Added to the attention scores of padding keys: far below any real score, yet finite so a
/// softmax row never meets −∞ − (−∞).
pub const MASK_VALUE: f64 = -1e9;

/// Query rows per score tile in causal attention: a tile computes only the keys its last row
/// sees, so about half the score work of a square block is skipped.
const CAUSAL_TILE: usize = 32;

/// Where a head's rows live in a q/k/v tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadLayout {
    /// `(b, len, heads · d)`, as the linears produce it (BERT).
    TokenMajor,
    /// `(b, heads, len, d)`, as rotary embeddings and a KV cache keep it (LLaMA).
    HeadMajor,
}

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    /// Queries per item.
    q_len: usize,
    /// Keys (and values) per item; for causal attention the last `q_len` are the queries'
    /// own, any before them (a cache or a prefix) are seen by every query.
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layout: HeadLayout,
    causal: bool,
}

impl Dims {
    /// Query heads served by one key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Head `h` of item `b` of a tensor with `n` heads of `len` rows.
    fn view(&self, b: usize, h: usize, n: usize, len: usize) -> View {
        let d = self.head_dim;
        match self.layout {
            HeadLayout::TokenMajor => View {
                offset: b * len * n * d + h * d,
                rows: len,
                cols: d,
                rs: n * d,
                cs: 1,
            },
            HeadLayout::HeadMajor => View::dense((b * n + h) * len * d, len, d),
        }
    }

    fn q_head(&self, b: usize, h: usize) -> View {
        self.view(b, h, self.heads, self.q_len)
    }

    fn kv_head(&self, b: usize, g: usize) -> View {
        self.view(b, g, self.kv_heads, self.kv_len)
    }

    /// Head `h` of item `b` of the `(b, q_len, heads · d)` output (and its gradient).
    fn out_head(&self, b: usize, h: usize) -> View {
        let hidden = self.heads * self.head_dim;
        View {
            offset: b * self.q_len * hidden + h * self.head_dim,
            rows: self.q_len,
            cols: self.head_dim,
            rs: hidden,
            cs: 1,
        }
    }

    /// Scores of one (item, query head) block.
    fn block(&self) -> usize {
        self.q_len * self.kv_len
    }

    /// Keys query `i` sees: all of them, or (causal) those up to its own position.
    fn visible(&self, i: usize) -> usize {
        if self.causal {
            i + 1 + self.kv_len - self.q_len
        } else {
            self.kv_len
        }
    }

    /// Query-row tiles with the keys each tile's rows see at most.
    fn tiles(&self) -> impl Iterator<Item = (Range<usize>, usize)> + use<> {
        let (n, tile) = (
            self.q_len,
            if self.causal {
                CAUSAL_TILE
            } else {
                self.q_len.max(1)
            },
        );
        let dims = *self;
        (0..n.div_ceil(tile)).map(move |t| {
            let rows = t * tile..((t + 1) * tile).min(n);
            let keys = dims.visible(rows.end - 1);
            (rows, keys)
        })
    }
}

/// The fused op on `(q, k, v)`; the key bias, dropout and (after the forward) what the
/// backward needs travel inside it.
struct Attention {
    dims: Dims,
    scale: f64,
    /// Additive bias per key, `(batch, kv_len)`: 0 for real tokens, very negative for padding.
    key_bias: Vec<f64>,
    /// Attention-probability dropout, one mask block per (batch item, head).
    dropout: Option<SeededMask>,
    /// Keep what the backward needs (false when no input needs a gradient).
    save: bool,
    /// What is kept: the probabilities themselves, or each query row's softmax
    /// statistics, from which the backward recomputes them (see [`Kept`]).
    kept: Kept,
    saved: Mutex<Option<CpuStorage>>,
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// The probabilities, `(b, heads, q_len, kv_len)`: no recomputation (the encoders, whose
    /// sequences are short and whose step is sensitive to attention time).
    Probabilities,
    /// Per query row the softmax's shift and inverse sum, `(b, heads, q_len, 2)`; the backward
    /// recomputes the scores and the probabilities from them, to the bit (the decoders: the
    /// probabilities grow with the square of the context, 19 MB a layer for SmolLM2 at 8 × 256,
    /// 16% of its step's peak memory, for a recomputation of 4% of the forward's FLOPs).
    RowStatistics,
}

/// Runs `f(blocks, kept_chunk)` over per-thread ranges of the `n` blocks, on up to candle's
/// thread count; `probs` (empty, or `block_len` kept values per block: probabilities or row
/// statistics) is split alongside. Blocks,
/// not batch items, are shared out so that batch 1 still uses every thread. Returns each
/// thread's range and result, in block order.
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
    // On rayon's persistent pool, as `rows::par_rows`.
    ranges
        .into_par_iter()
        .zip(chunks)
        .map(|(range, chunk)| (range.clone(), f(range, chunk)))
        .collect()
}

/// What [`masked_softmax_rows`] does with each row's softmax statistics (its shift and
/// inverse sum, two values a row).
enum RowStats<'a, T> {
    /// Nothing: they are not kept.
    Drop,
    /// Writes them, for a later replay.
    Record(&'a mut [T]),
    /// Uses these instead of computing them: the same operations on the same scores give the
    /// same probabilities, to the bit.
    Replay(&'a [T]),
}

/// `p[i] ← softmax(p[i] + bias)` over the keys query `i` sees, 0 for the others. In causal
/// attention a query always sees itself unbiased, so a padding query's row is never empty.
fn masked_softmax_rows<T: Real>(block: &mut [T], dm: Dims, bias: &[f64], mut stats: RowStats<T>) {
    for (i, row) in block.chunks_exact_mut(dm.kv_len).enumerate() {
        let seen = dm.visible(i);
        let (row, hidden) = row.split_at_mut(seen);
        hidden.fill(T::zero());
        // Causal: the query's own key (the row's last) takes no bias.
        let biased = if dm.causal { seen - 1 } else { seen };
        for (v, &b) in row[..biased].iter_mut().zip(bias) {
            *v += T::from_f64(b);
        }
        // As `Real::softmax_in_place`, with the statistics kept or given.
        let inv = if let RowStats::Replay(st) = stats {
            T::exp_shifted_sum(row, st[2 * i]);
            st[2 * i + 1]
        } else {
            let m = T::row_max(row);
            let inv = T::one() / T::exp_shifted_sum(row, m);
            if let RowStats::Record(st) = &mut stats {
                st[2 * i] = m;
                st[2 * i + 1] = inv;
            }
            inv
        };
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Copies stacked `(len, d)` head blocks (blocks `blocks` of a tensor with `n` heads, in
/// order) into their place in a tensor laid out as `layout`.
fn scatter_heads<T: Copy>(
    out: &mut [T],
    dm: Dims,
    layout: HeadLayout,
    (n, len): (usize, usize),
    blocks: Range<usize>,
    stack: &[T],
) {
    let d = dm.head_dim;
    if layout == HeadLayout::HeadMajor {
        // Stacked blocks are already the tensor's own order.
        out[blocks.start * len * d..blocks.end * len * d].copy_from_slice(stack);
        return;
    }
    let dm = Dims { layout, ..dm };
    for (local, blk) in blocks.enumerate() {
        let dst = dm.view(blk / n, blk % n, n, len);
        let src = &stack[local * len * d..(local + 1) * len * d];
        for (i, row) in src.chunks_exact(d).enumerate() {
            let at = dst.offset + i * dst.rs;
            out[at..at + d].copy_from_slice(row);
        }
    }
}

impl Attention {
    /// The dropped probabilities of block `blk` (written to `dropped`), or `p` itself.
    fn weights<'a, T: Real>(&self, blk: usize, p: &'a [T], dropped: &'a mut [T]) -> &'a [T] {
        match self.dropout {
            Some(mask) => {
                for ((o, &pv), m) in dropped.iter_mut().zip(p).zip(mask.block::<T>(blk)) {
                    *o = pv * m;
                }
                dropped
            }
            None => p,
        }
    }

    fn forward<T: Real>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
    ) -> candle_core::Result<(Vec<T>, Option<Vec<T>>)> {
        let dm = self.dims;
        let (t, s, d, group) = (dm.q_len, dm.kv_len, dm.head_dim, dm.group());
        let block = dm.block();
        let scores = View::dense(0, t, s);
        let keep_probs = self.save && self.kept == Kept::Probabilities;
        // Kept per query head: its probabilities, or two statistics per query row.
        let kept_len = if keep_probs { block } else { 2 * t };
        let mut kept = if self.save {
            vec![T::zero(); dm.batch * dm.heads * kept_len]
        } else {
            Vec::new()
        };
        // One piece of work per (item, key/value head): the query heads of a group share it.
        let n_groups = dm.batch * dm.kv_heads;
        let per_group = group * block * d;
        let parts = par_blocks(
            n_groups,
            per_group,
            &mut kept,
            group * kept_len,
            |groups, saved| {
                let mut scratch = vec![T::zero(); if keep_probs { 0 } else { block }];
                let mut dropped = vec![T::zero(); if self.dropout.is_some() { block } else { 0 }];
                // This thread's context blocks, `(t, d)` each, stacked in query-head order.
                let mut ctx = vec![T::zero(); groups.len() * group * t * d];
                for (local_g, gi) in groups.enumerate() {
                    let (b, g) = (gi / dm.kv_heads, gi % dm.kv_heads);
                    let kv = dm.kv_head(b, g);
                    for j in 0..group {
                        let local = local_g * group + j;
                        let (h, blk) = (g * group + j, gi * group + j);
                        let mine = local * kept_len..(local + 1) * kept_len;
                        let (p, stats): (&mut [T], _) = match (keep_probs, saved.is_empty()) {
                            (true, _) => (&mut saved[mine], RowStats::Drop),
                            (false, true) => (&mut scratch, RowStats::Drop),
                            (false, false) => (&mut scratch, RowStats::Record(&mut saved[mine])),
                        };
                        self.probabilities(p, (q, k), (b, h), stats);
                        let weights = self.weights(blk, p, &mut dropped);
                        let mine = View::dense(local * t * d, t, d);
                        for (rows, keys) in dm.tiles() {
                            let w = scores.sub(rows.clone(), keys);
                            let dst = mine.sub(rows, d);
                            matmul_into(&mut ctx, dst, weights, w, v, kv.sub(0..keys, d), T::one());
                        }
                    }
                }
                ctx
            },
        );
        let mut out = vec![T::zero(); dm.batch * t * dm.heads * d];
        for (groups, ctx) in &parts {
            let blocks = groups.start * group..groups.end * group;
            let shape = (dm.heads, t);
            scatter_heads(&mut out, dm, HeadLayout::TokenMajor, shape, blocks, ctx);
        }
        Ok((out, self.save.then_some(kept)))
    }

    /// The probabilities of query head `h` of item `b` into `p` (`(q_len, kv_len)`): the
    /// scaled scores of the tiles a query sees, the key bias, the masked softmax.
    fn probabilities<T: Real>(
        &self,
        p: &mut [T],
        (q, k): (&[T], &[T]),
        (b, h): (usize, usize),
        stats: RowStats<T>,
    ) {
        let dm = self.dims;
        let (s, d) = (dm.kv_len, dm.head_dim);
        let (qh, kv) = (dm.q_head(b, h), dm.kv_head(b, h / dm.group()));
        let scores = View::dense(0, dm.q_len, s);
        let scale = T::from_f64(self.scale);
        for (rows, keys) in dm.tiles() {
            let dst = scores.sub(rows.clone(), keys);
            let kt = kv.sub(0..keys, d).t();
            matmul_into(p, dst, q, qh.sub(rows, d), k, kt, scale);
        }
        let bias = &self.key_bias[b * s..(b + 1) * s];
        masked_softmax_rows(p, dm, bias, stats);
    }

    /// The gradients `(dq, dk, dv)`, each in its input's layout, from what the forward kept
    /// in `p` (the probabilities, or the row statistics they are recomputed from) and `dout`
    /// (`(b, q_len, heads · d)`).
    fn backward<T: Real>(
        &self,
        (q, k, v): (&[T], &[T], &[T]),
        p: &[T],
        dout: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let dm = self.dims;
        let (t, s, d, group) = (dm.q_len, dm.kv_len, dm.head_dim, dm.group());
        let block = dm.block();
        let scale = T::from_f64(self.scale);
        let scores = View::dense(0, t, s);
        let n_groups = dm.batch * dm.kv_heads;
        let per_group = 2 * group * block * d;
        let keep_probs = self.kept == Kept::Probabilities;
        let parts = par_blocks(n_groups, per_group, &mut [] as &mut [T], 0, |groups, _| {
            let mut dp = vec![T::zero(); block];
            let mut recomputed = vec![T::zero(); if keep_probs { 0 } else { block }];
            let mut dropped = vec![T::zero(); if self.dropout.is_some() { block } else { 0 }];
            let (mut dq, mut dk, mut dv) = (
                vec![T::zero(); groups.len() * group * t * d],
                vec![T::zero(); groups.len() * s * d],
                vec![T::zero(); groups.len() * s * d],
            );
            for (local_g, gi) in groups.enumerate() {
                let (b, g) = (gi / dm.kv_heads, gi % dm.kv_heads);
                let kv = dm.kv_head(b, g);
                let kv_mine = View::dense(local_g * s * d, s, d);
                for j in 0..group {
                    let local = local_g * group + j;
                    let (h, blk) = (g * group + j, gi * group + j);
                    let (qh, oh) = (dm.q_head(b, h), dm.out_head(b, h));
                    let q_mine = View::dense(local * t * d, t, d);
                    let pb: &[T] = if keep_probs {
                        &p[blk * block..(blk + 1) * block]
                    } else {
                        let stats = RowStats::Replay(&p[blk * 2 * t..(blk + 1) * 2 * t]);
                        self.probabilities(&mut recomputed, (q, k), (b, h), stats);
                        &recomputed
                    };
                    // dL/d(dropped P) = dO·Vᵀ.
                    for (rows, keys) in dm.tiles() {
                        let dst = scores.sub(rows.clone(), keys);
                        let vt = kv.sub(0..keys, d).t();
                        matmul_into(&mut dp, dst, dout, oh.sub(rows, d), v, vt, T::one());
                    }
                    // Through the dropout: both dL/dP and the dropped P take the mask.
                    if let Some(mask) = self.dropout {
                        for (g, m) in dp.iter_mut().zip(mask.block::<T>(blk)) {
                            *g *= m;
                        }
                    }
                    let weights = self.weights(blk, pb, &mut dropped);
                    // dL/dV = (dropped P)ᵀ·dO, summed over the group's query heads.
                    for (rows, keys) in dm.tiles() {
                        let w = scores.sub(rows.clone(), keys).t();
                        let src = (dout, oh.sub(rows, d));
                        gemm_views(
                            &mut dv,
                            kv_mine.sub(0..keys, d),
                            (weights, w),
                            src,
                            T::one(),
                            true,
                            1,
                        );
                    }
                    // Softmax: dL/dS = P ∘ (dL/dP − Σ_j dL/dP_j · P_j) over the keys a query
                    // sees (0 for the others); the key bias is a constant and takes no gradient.
                    for (i, (g, pr)) in dp.chunks_exact_mut(s).zip(pb.chunks_exact(s)).enumerate() {
                        let seen = dm.visible(i);
                        let (g, rest) = g.split_at_mut(seen);
                        rest.fill(T::zero());
                        let dot = lane_dot(g, pr);
                        for (a, &b) in g.iter_mut().zip(pr) {
                            *a = b * (*a - dot);
                        }
                    }
                    // S = scale·Q·Kᵀ ⇒ dL/dQ = scale·dS·K, dL/dK = scale·dSᵀ·Q (summed over
                    // the group).
                    for (rows, keys) in dm.tiles() {
                        let ds = scores.sub(rows.clone(), keys);
                        let kk = kv.sub(0..keys, d);
                        matmul_into(&mut dq, q_mine.sub(rows.clone(), d), &dp, ds, k, kk, scale);
                        let src = (q, qh.sub(rows, d));
                        gemm_views(
                            &mut dk,
                            kv_mine.sub(0..keys, d),
                            (&dp, ds.t()),
                            src,
                            scale,
                            true,
                            1,
                        );
                    }
                }
            }
            (dq, dk, dv)
        });
        let (nq, nkv) = (dm.batch * dm.heads * t * d, dm.batch * dm.kv_heads * s * d);
        let (mut dq, mut dk, mut dv) = (
            vec![T::zero(); nq],
            vec![T::zero(); nkv],
            vec![T::zero(); nkv],
        );
        for (groups, (q_part, k_part, v_part)) in &parts {
            let q_blocks = groups.start * group..groups.end * group;
            scatter_heads(&mut dq, dm, dm.layout, (dm.heads, t), q_blocks, q_part);
            let kv_shape = (dm.kv_heads, s);
            scatter_heads(&mut dk, dm, dm.layout, kv_shape, groups.clone(), k_part);
            scatter_heads(&mut dv, dm, dm.layout, kv_shape, groups.clone(), v_part);
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
        let dm = self.dims;
        let shape = Shape::from((dm.batch, dm.q_len, dm.heads * dm.head_dim));
        Ok((T::to_cpu_storage_owned(out), shape))
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
            candle_core::bail!("{NAME} backward: the forward kept nothing for it");
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
        let wrap = |g: Vec<T>, like: &Tensor| Tensor::from_vec(g, like.shape(), like.device());
        Ok((wrap(dq, q)?, wrap(dk, k)?, wrap(dv, v)?))
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

    /// With S = scale·Q·Kᵀ + bias (+ the causal mask), P = softmax(S), P' = P ∘ M (dropout),
    /// O = P'·V: dV = P'ᵀ·dO; dP = (dO·Vᵀ) ∘ M; dS = P ∘ (dP − rowsum(dP ∘ P));
    /// dQ = scale·dS·K; dK = scale·dSᵀ·Q; with grouped heads, dK and dV sum over the query
    /// heads that share a key/value head.
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

/// Runs the fused op, or (off CPU, or not f32/f64) `fallback`.
fn run_fused(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    key_bias: &Tensor,
    dims: Dims,
    (dropout_p, kept): (f64, Kept),
    fallback: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let out_shape = (dims.batch, dims.q_len, dims.heads * dims.head_dim);
    // No tokens or zero-width heads: nothing to attend over, and nothing to differentiate.
    if q.elem_count() == 0 || k.elem_count() == 0 {
        return Ok(Tensor::zeros(out_shape, q.dtype(), q.device())?.detach());
    }
    let fused = has_cpu_kernel(q);
    if !fused {
        return fallback();
    }
    let op = Attention {
        dims,
        scale: 1.0 / (dims.head_dim as f64).sqrt(),
        key_bias: key_bias
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?,
        dropout: (dropout_p > 0.0).then(|| SeededMask::draw(dropout_p)),
        save: q.track_op() || k.track_op() || v.track_op(),
        kept,
        saved: Mutex::new(None),
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(q.apply_op3(&k, &v, op)?)
}

fn shape_error(op: &'static str, got: &Tensor, expected: Vec<usize>) -> Error {
    Error::TensorShape {
        op,
        expected,
        got: got.dims().to_vec(),
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
    for t in [k, v] {
        if t.dims() != q.dims() {
            return Err(shape_error(NAME, t, q.dims().to_vec()));
        }
    }
    if key_bias.dims() != [batch, seq] {
        return Err(shape_error(NAME, key_bias, vec![batch, seq]));
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::TensorShape {
            op: "attention heads (hidden must be a multiple)",
            expected: vec![heads],
            got: vec![hidden],
        });
    }
    let dims = Dims {
        batch,
        q_len: seq,
        kv_len: seq,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        layout: HeadLayout::TokenMajor,
        causal: false,
    };
    let kept = (dropout_p, Kept::Probabilities);
    run_fused((q, k, v), key_bias, dims, kept, || {
        composed(q, k, v, key_bias, heads, dropout_p)
    })
}

/// Causal multi-head attention with grouped key/value heads, as LLaMA-family decoders run it.
///
/// `q: (b, heads, t, d)`; `k, v: (b, kv_heads, keys, d)` with `kv_heads` dividing `heads`
/// (each key/value head serves `heads / kv_heads` query heads) and `keys ≥ t`: the last `t`
/// keys are the queries' own, any before them (cached tokens, a prefix) are seen by every
/// query. Query `i` sees keys up to its own; `key_bias: (b, keys)` is added to the score of
/// every key but the query's own (0 for real tokens, a large negative number for padding), so
/// a padding query attends to itself. Returns the context `(b, t, heads · d)`, ready for the
/// output projection.
///
/// On CPU in f32/f64 one op with an analytic backward that keeps two softmax statistics per
/// query row (the backward recomputes the probabilities from them, to the bit) and computes
/// only the score tiles a query sees; elsewhere composed from candle ops.
///
/// # Errors
/// Shapes that disagree.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
    let _span = tracing::trace_span!("causal_attention").entered();
    let (batch, heads, t, d) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    const OP: &str = "causal attention (k, v: (b, kv_heads | heads, keys ≥ t, d))";
    if kv_heads == 0 || heads % kv_heads != 0 || keys < t || k.dims() != [batch, kv_heads, keys, d]
    {
        return Err(shape_error(OP, k, vec![batch, heads, t, d]));
    }
    if v.dims() != k.dims() {
        return Err(shape_error(OP, v, k.dims().to_vec()));
    }
    if key_bias.dims() != [batch, keys] {
        return Err(shape_error(OP, key_bias, vec![batch, keys]));
    }
    let dims = Dims {
        batch,
        q_len: t,
        kv_len: keys,
        heads,
        kv_heads,
        head_dim: d,
        layout: HeadLayout::HeadMajor,
        causal: true,
    };
    run_fused(
        (q, k, v),
        key_bias,
        dims,
        (0.0, Kept::RowStatistics),
        || composed_causal(q, k, v, key_bias),
    )
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

/// The same causal attention from candle ops (other devices and dtypes): the key bias and the
/// causal rule become one `(b, 1, t, keys)` additive mask, the key/value heads are repeated.
fn composed_causal(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
    let (batch, heads, t, d) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    let bias = key_bias.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let past = keys - t;
    let mut mask = Vec::with_capacity(batch * t * keys);
    for row in &bias {
        for i in 0..t {
            mask.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &b)| match j.cmp(&(past + i)) {
                        std::cmp::Ordering::Less => b,
                        std::cmp::Ordering::Equal => 0.0,
                        std::cmp::Ordering::Greater => MASK_VALUE,
                    }),
            );
        }
    }
    let mask = Tensor::from_vec(mask, (batch, 1, t, keys), q.device())?.to_dtype(q.dtype())?;
    let repeat = |x: &Tensor| -> Result<Tensor> {
        let group = heads / kv_heads;
        Ok(x.unsqueeze(2)?
            .broadcast_as((batch, kv_heads, group, keys, d))?
            .reshape((batch, heads, keys, d))?)
    };
    let scores = (q.matmul(&repeat(k)?.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    Ok(probs
        .matmul(&repeat(v)?)?
        .transpose(1, 2)?
        .reshape((batch, t, heads * d))?)
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
        let grads = crate::ops::test_fd_gradients(
            &[q, k, v],
            |x| attention(&x[0], &x[1], &x[2], &bias, 2, 0.0).unwrap(),
            &g,
            7,
            1e-7,
        );
        // Padding keys take no part: their k and v rows get exactly zero gradient.
        let dk = grads[1].i((1, 3..5)).unwrap();
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

    /// Batch 2, 3 queries after 2 cached keys (5 keys), 4 query heads over 2 key/value heads
    /// of width 3; item 1's first cached key and its last query are padding.
    fn causal_inputs(dtype: DType, t: usize, past: usize) -> [Tensor; 4] {
        let dev = Device::Cpu;
        let keys = t + past;
        let make = |shape: (usize, usize, usize, usize), phase: f64| {
            let n = shape.0 * shape.1 * shape.2 * shape.3;
            let vals: Vec<f64> = (0..n)
                .map(|i| (i as f64 * 0.37 + phase).sin() * 1.5)
                .collect();
            Tensor::from_vec(vals, shape, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let mut bias = vec![0.0; 2 * keys];
        bias[keys] = MASK_VALUE;
        bias[2 * keys - 1] = MASK_VALUE;
        let bias = Tensor::from_vec(bias, (2, keys), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        [
            make((2, 4, t, 3), 0.0),
            make((2, 2, keys, 3), 1.0),
            make((2, 2, keys, 3), 2.0),
            bias,
        ]
    }

    #[test]
    fn causal_forward_matches_composed_ops() {
        for dtype in [DType::F32, DType::F64] {
            // Square (no cache), a cache, and more queries than one score tile.
            for (t, past) in [(3, 0), (3, 2), (CAUSAL_TILE + 7, 4)] {
                let [q, k, v, bias] = causal_inputs(dtype, t, past);
                let fused = causal_attention(&q, &k, &v, &bias).unwrap();
                let reference = composed_causal(&q, &k, &v, &bias).unwrap();
                assert_eq!(fused.dims(), [2, t, 12]);
                assert!(
                    max_diff(&fused, &reference) < 1e-5,
                    "{dtype:?} t {t} past {past}"
                );
            }
        }
    }

    #[test]
    fn causal_queries_do_not_see_later_keys() {
        // Changing the last key and value leaves every earlier query's output unchanged.
        let [q, k, v, bias] = causal_inputs(DType::F64, 4, 0);
        let before = causal_attention(&q, &k, &v, &bias).unwrap();
        let bump = |x: &Tensor| {
            let last = (x.narrow(2, 3, 1).unwrap() + 5.0).unwrap();
            Tensor::cat(&[&x.narrow(2, 0, 3).unwrap(), &last], 2).unwrap()
        };
        let after = causal_attention(&q, &bump(&k), &bump(&v), &bias).unwrap();
        let head = |x: &Tensor| x.narrow(1, 0, 3).unwrap();
        assert_eq!(max_diff(&head(&before), &head(&after)), 0.0);
        assert!(max_diff(&before, &after) > 1e-3);
    }

    #[test]
    fn causal_gradients_match_finite_differences() {
        let [q, k, v, bias] = causal_inputs(DType::F64, 3, 2);
        let g = Tensor::new(
            (0..2 * 3 * 12)
                .map(|i| (i as f64 * 0.21).cos())
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 3, 12))
        .unwrap();
        crate::ops::test_fd_gradients(
            &[q, k, v],
            |x| causal_attention(&x[0], &x[1], &x[2], &bias).unwrap(),
            &g,
            1,
            1e-7,
        );
    }

    #[test]
    fn causal_gradients_over_tiles_and_threads_match_composed() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t, past, d) = (3, 9, 3, 2 * CAUSAL_TILE + 5, 3, 64);
        let q = Var::randn(0f32, 1., (b, heads, t, d), &dev).unwrap();
        let k = Var::randn(0f32, 1., (b, kv_heads, past + t, d), &dev).unwrap();
        let v = Var::randn(0f32, 1., (b, kv_heads, past + t, d), &dev).unwrap();
        let mut bias = vec![0f32; b * (past + t)];
        bias[(past + t) + 1] = MASK_VALUE as f32;
        let bias = Tensor::from_vec(bias, (b, past + t), &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap();
        let [q, k, v] = [&q, &k, &v].map(|x| x.as_tensor());
        let fused = causal_attention(q, k, v, &bias).unwrap();
        let reference = composed_causal(q, k, v, &bias).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        let grads = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_ref = (reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for x in [q, k, v] {
            let diff = max_diff(grads.get(x).unwrap(), grads_ref.get(x).unwrap());
            assert!(diff < 1e-4, "{diff}");
        }
    }

    /// Recomputing the probabilities from the kept row statistics gives the gradients that
    /// keeping the probabilities gives, to the bit: causal over several tiles and threads,
    /// and bidirectional with dropout and padding.
    #[test]
    fn recomputed_probabilities_give_the_kept_ones_gradients_exactly() {
        let dev = Device::Cpu;
        let grads = |dims: Dims, dropout: f64, kept: Kept, qkv: &[Var; 3], bias: &Tensor| {
            let [q, k, v] = qkv.each_ref().map(|x| x.as_tensor());
            crate::ops::seed_dropout(7);
            let out = run_fused((q, k, v), bias, dims, (dropout, kept), || unreachable!()).unwrap();
            let n = out.elem_count();
            let g = Tensor::arange(0f32, n as f32, &dev)
                .unwrap()
                .reshape(out.shape())
                .unwrap();
            let g = (g * 0.37).unwrap().sin().unwrap();
            let store = (out * g).unwrap().sum_all().unwrap().backward().unwrap();
            [q, k, v].map(|x| {
                store
                    .get(x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
        };
        let (b, heads, kv_heads, t, past, d) = (2, 6, 2, 2 * CAUSAL_TILE + 5, 3, 16);
        let causal = Dims {
            batch: b,
            q_len: t,
            kv_len: past + t,
            heads,
            kv_heads,
            head_dim: d,
            layout: HeadLayout::HeadMajor,
            causal: true,
        };
        let qkv = [(heads, t), (kv_heads, past + t), (kv_heads, past + t)]
            .map(|(n, len)| Var::randn(0f32, 1., (b, n, len, d), &dev).unwrap());
        let mut bias = vec![0f32; b * (past + t)];
        bias[past + t + 1] = MASK_VALUE as f32;
        let bias = Tensor::from_vec(bias, (b, past + t), &dev).unwrap();
        assert_eq!(
            grads(causal, 0.0, Kept::Probabilities, &qkv, &bias),
            grads(causal, 0.0, Kept::RowStatistics, &qkv, &bias)
        );
        let (q, k, v, bias) = inputs(DType::F32);
        let encoder = Dims {
            batch: 3,
            q_len: 5,
            kv_len: 5,
            heads: 2,
            kv_heads: 2,
            head_dim: 3,
            layout: HeadLayout::TokenMajor,
            causal: false,
        };
        let qkv = [q, k, v].map(|x| Var::from_tensor(&x).unwrap());
        assert_eq!(
            grads(encoder, 0.3, Kept::Probabilities, &qkv, &bias),
            grads(encoder, 0.3, Kept::RowStatistics, &qkv, &bias)
        );
    }

    #[test]
    fn causal_shapes_that_disagree_are_errors() {
        let [q, k, v, bias] = causal_inputs(DType::F32, 3, 2);
        // More queries than keys; 4 query heads over 3 key/value heads; a short bias.
        assert!(causal_attention(&q, &k.narrow(2, 0, 2).unwrap(), &v, &bias).is_err());
        let three = Tensor::zeros((2, 3, 5, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(causal_attention(&q, &three, &three, &bias).is_err());
        assert!(causal_attention(&q, &k, &v, &bias.narrow(1, 0, 4).unwrap()).is_err());
        assert!(causal_attention(&q, &k, &v.narrow(3, 0, 2).unwrap(), &bias).is_err());
    }
}
