//! `y = x·Wᵀ` for a few rows `x` and a frozen `W` kept in GGUF blocks (Q4_0, Q4_1, Q8_0),
//! read in place: what one decoded token costs. Each weight is read once per token, so the
//! time is the memory read — 4.5 to 8.5 bits a weight here instead of 32 for an f32 copy.
//!
//! As llama.cpp does, the input is first rounded to 8-bit blocks of 32 (a scale, 32 `i8`, and
//! the block's sum — ggml's Q8_1), so each block's dot product is integer arithmetic: on AVX2,
//! 32 products in one `vpmaddubsw`. The result differs from the product with the f32 input by
//! that rounding (relative 2⁻⁸ per block at most); the prompt's products, which go through the
//! dequantized gemm, do not round. candle 0.11's own Q4_1 product has no SIMD path, the type
//! the packaged SmolLM2 uses, which is why this module exists.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Weights per block in every type handled here.
pub(super) const BLOCK: usize = 32;

/// Output features per parallel task: enough work to outweigh handing it to a thread.
const OUT_PER_TASK: usize = 64;

/// The block types this kernel reads, with their size in bytes.
pub(super) fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    Layout::of(dtype).map(Layout::bytes)
}

/// Whether [`block_matmul`] reads `dtype`.
pub(crate) fn supports(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some()
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Input rows rounded to 8-bit blocks: per block of 32 values, `scale · q ≈ x` with
/// `|q| ≤ 127`, and `sum = scale · Σq` (what an offset per weight block multiplies).
struct RoundedInput {
    q: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl RoundedInput {
    /// Rounds `x` (a whole number of blocks) to nearest, the scale set by each block's
    /// largest magnitude.
    fn new(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut q = Vec::with_capacity(x.len());
        let (mut scale, mut sum) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in x.chunks_exact(BLOCK) {
            // NaN-propagating: a NaN input makes the scale NaN, and so the products, as the
            // f32 path would; `f32::max` would skip it and round it to 0.
            let amax = b.iter().fold(0f32, |m, v| {
                let a = v.abs();
                if a > m || a.is_nan() { a } else { m }
            });
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut total = 0i32;
            for &v in b {
                // |v·inv| ≤ 127 by the choice of d, except where 1/d overflows (amax below
                // 4e-37): the clamp keeps q off −128, which the AVX2 Q8 path's sign trick
                // cannot negate.
                let r = (v * inv).round().clamp(-127.0, 127.0) as i8;
                total += i32::from(r);
                q.push(r);
            }
            scale.push(d);
            sum.push(d * total as f32);
        }
        Self { q, scale, sum }
    }

    /// Row `r` of `blocks` blocks: its values, scales and sums.
    fn row(&self, r: usize, blocks: usize) -> (&[i8], &[f32], &[f32]) {
        let b = r * blocks..(r + 1) * blocks;
        (
            &self.q[b.start * BLOCK..b.end * BLOCK],
            &self.scale[b.clone()],
            &self.sum[b],
        )
    }
}

/// The weight block layout of one type: bytes, where the nibbles or bytes start, and whether
/// the block stores an offset (Q4_1: w = d·q + m; Q4_0: w = d·(q − 8), the offset −8d).
#[derive(Clone, Copy)]
pub(super) enum Layout {
    Q4 {
        size: usize,
        start: usize,
        min: bool,
    },
    Q8,
}

impl Layout {
    /// The layout of `dtype`'s blocks, if this kernel reads them.
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Layout::Q8),
            GgmlDType::Q4_1 => Some(Layout::Q4 {
                size: 20,
                start: 4,
                min: true,
            }),
            GgmlDType::Q4_0 => Some(Layout::Q4 {
                size: 18,
                start: 2,
                min: false,
            }),
            _ => None,
        }
    }

    /// A block's size in bytes: the f16 scale (and Q4_1's f16 minimum) and 32 weights.
    pub(super) fn bytes(self) -> usize {
        match self {
            Layout::Q8 => 2 + BLOCK,
            Layout::Q4 { size, .. } => size,
        }
    }
}

/// A 4-bit block's scale and offset.
#[inline(always)]
fn q4_scale_offset(blk: &[u8], min: bool) -> (f32, f32) {
    let d = f16_at(blk, 0);
    (d, if min { f16_at(blk, 2) } else { -8.0 * d })
}

/// One weight row against one rounded input row, portable integer arithmetic. Byte j of a
/// 4-bit block holds weight j (low nibble) and weight j + 16 (high nibble).
fn dot_row_portable(layout: Layout, row: &[u8], xq: &[i8], xd: &[f32], xs: &[f32]) -> f32 {
    let mut total = 0f32;
    match layout {
        Layout::Q8 => {
            for ((blk, xb), &dx) in row.chunks_exact(34).zip(xq.chunks_exact(BLOCK)).zip(xd) {
                let dot: i32 = blk[2..]
                    .iter()
                    .zip(xb)
                    .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                    .sum();
                total += f16_at(blk, 0) * dx * dot as f32;
            }
        }
        Layout::Q4 { size, start, min } => {
            let blocks = row.chunks_exact(size).zip(xq.chunks_exact(BLOCK));
            for ((blk, xb), (&dx, &sx)) in blocks.zip(xd.iter().zip(xs)) {
                let (d, m) = q4_scale_offset(blk, min);
                let dot: i32 = blk[start..start + BLOCK / 2]
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| {
                        i32::from(w & 15) * i32::from(xb[j])
                            + i32::from(w >> 4) * i32::from(xb[j + BLOCK / 2])
                    })
                    .sum();
                total += d * dx * dot as f32 + m * sx;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The same block products with AVX2 integer instructions: `vpmaddubsw` multiplies 32
    //! unsigned weights by 32 signed inputs into 16 pair sums, `vpmaddwd` by ones widens them
    //! to 8 `i32`, and one FMA applies the two scales.

    use std::arch::x86_64::*;

    use super::{BLOCK, Layout};

    /// The sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 32 `i8` at `p`.
    ///
    /// # Safety
    /// `p` is valid for reading 32 bytes.
    #[target_feature(enable = "avx2")]
    unsafe fn load32(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// The two f16 values at `blk[0..4]` (a block's scale and, for Q4_1, its offset).
    #[target_feature(enable = "avx2,f16c")]
    fn f16_pair(blk: &[u8]) -> (f32, f32) {
        let bits = i32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// As [`super::dot_row_portable`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_row(layout: Layout, row: &[u8], xq: &[i8], xd: &[f32], xs: &[f32]) -> f32 {
        match layout {
            Layout::Q8 => dot_q8(row, xq, xd),
            Layout::Q4 { min: true, .. } => dot_q4::<true>(row, xq, xd, xs),
            Layout::Q4 { min: false, .. } => dot_q4::<false>(row, xq, xd, xs),
        }
    }

    /// One Q8_0 block's integer dot product with 32 inputs, as 8 `f32` lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q8_block(blk: &[u8], xb: &[i8], ones: __m256i) -> __m256 {
        let (w, x) = (&blk[2..34], &xb[..BLOCK]);
        // SAFETY: both slices are 32 bytes long (the indexing above checks it).
        let (w, x) = unsafe { (load32(w.as_ptr()), load32(x.as_ptr().cast())) };
        // |w| as unsigned times x with w's sign: the signed product.
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones))
    }

    /// One 4-bit block's integer dot product with 32 inputs, as 8 `f32` lanes; the nibbles
    /// start at `blk[start]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q4_block(blk: &[u8], start: usize, xb: &[i8], ones: __m256i, low: __m256i) -> __m256 {
        let (nibbles, x) = (&blk[start..start + 16], &xb[..BLOCK]);
        // SAFETY: 16 nibble bytes and 32 inputs (the indexing above checks both).
        let (packed, x) = unsafe {
            (
                _mm_loadu_si128(nibbles.as_ptr().cast()),
                load32(x.as_ptr().cast()),
            )
        };
        // Low nibbles (weights 0..16) in the low half, high ones in the high half.
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        let pairs = _mm256_maddubs_epi16(_mm256_and_si256(both, low), x);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones))
    }

    // The loops below take two blocks a step into two accumulators: one FMA chain's latency
    // (4 cycles a block) would otherwise bound a core at about 15 GB/s of weights.

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        const SIZE: usize = 34;
        let ones = _mm256_set1_epi16(1);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let pairs = row.chunks_exact(2 * SIZE).zip(xq.chunks_exact(2 * BLOCK));
        for ((blk, xb), dx) in pairs.zip(xd.chunks_exact(2)) {
            let (d0, _) = f16_pair(blk);
            let (d1, _) = f16_pair(&blk[SIZE..]);
            let v0 = q8_block(blk, xb, ones);
            let v1 = q8_block(&blk[SIZE..], &xb[BLOCK..], ones);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * dx[0]), v0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * dx[1]), v1, acc1);
        }
        let n = row.len() / SIZE;
        if n % 2 == 1 {
            let (blk, xb) = (&row[(n - 1) * SIZE..], &xq[(n - 1) * BLOCK..]);
            let (d, _) = f16_pair(blk);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[n - 1]), q8_block(blk, xb, ones), acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    /// Q4_1 (`MIN`) or Q4_0.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4<const MIN: bool>(row: &[u8], xq: &[i8], xd: &[f32], xs: &[f32]) -> f32 {
        let (size, start) = if MIN { (20, 4) } else { (18, 2) };
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(15);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut off0, mut off1) = (0f32, 0f32);
        let scale_offset = |blk: &[u8]| {
            let (d, m) = f16_pair(blk);
            (d, if MIN { m } else { -8.0 * d })
        };
        let pairs = row.chunks_exact(2 * size).zip(xq.chunks_exact(2 * BLOCK));
        for (((blk, xb), dx), sx) in pairs.zip(xd.chunks_exact(2)).zip(xs.chunks_exact(2)) {
            let (d0, m0) = scale_offset(blk);
            let (d1, m1) = scale_offset(&blk[size..]);
            let v0 = q4_block(blk, start, xb, ones, low);
            let v1 = q4_block(&blk[size..], start, &xb[BLOCK..], ones, low);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * dx[0]), v0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * dx[1]), v1, acc1);
            off0 += m0 * sx[0];
            off1 += m1 * sx[1];
        }
        let n = row.len() / size;
        if n % 2 == 1 {
            let (blk, xb) = (&row[(n - 1) * size..], &xq[(n - 1) * BLOCK..]);
            let (d, m) = scale_offset(blk);
            let v = q4_block(blk, start, xb, ones, low);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[n - 1]), v, acc0);
            off0 += m * xs[n - 1];
        }
        hsum(_mm256_add_ps(acc0, acc1)) + off0 + off1
    }
}

/// Whether this CPU runs [`avx2::dot_row`].
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What every chunk of one product shares.
#[derive(Clone, Copy)]
struct Product<'a> {
    layout: Layout,
    /// Bytes of one weight row.
    row_bytes: usize,
    /// Blocks in one row.
    blocks: usize,
    /// Input rows.
    n: usize,
    x: &'a RoundedInput,
    avx2: bool,
}

/// `out[o·n + r] = W[o]·x[r]` for the weight rows in `w` (a run of whole rows).
fn chunk(p: Product, w: &[u8], out: &mut [f32]) {
    for (row, y) in w.chunks_exact(p.row_bytes).zip(out.chunks_exact_mut(p.n)) {
        for (r, yv) in y.iter_mut().enumerate() {
            let (xq, xd, xs) = p.x.row(r, p.blocks);
            *yv = match p.avx2 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `avx2` is set only where the CPU has AVX2, FMA and F16C (`has_avx2`).
                true => unsafe { avx2::dot_row(p.layout, row, xq, xd, xs) },
                _ => dot_row_portable(p.layout, row, xq, xd, xs),
            };
        }
    }
}

/// `x·Wᵀ` for `x: n × in` (row-major f32) and `w: (out, in)` in blocks of a type
/// [`supports`] accepts, the input rounded to 8-bit blocks first; returns `n × out`.
///
/// # Errors
/// An unsupported block type, or shapes that disagree.
pub(crate) fn block_matmul(x: &[f32], n: usize, w: &QTensor) -> candle_core::Result<Vec<f32>> {
    block_matmul_with(x, n, w, has_avx2())
}

/// [`block_matmul`] with the AVX2 kernel on or off (tests compare the two).
fn block_matmul_with(
    x: &[f32],
    n: usize,
    w: &QTensor,
    avx2: bool,
) -> candle_core::Result<Vec<f32>> {
    let (out_f, in_f) = w.shape().dims2()?;
    let Some(layout) = Layout::of(w.dtype()) else {
        candle_core::bail!("block product: {:?} is not read here", w.dtype());
    };
    let data = w.data()?;
    let blocks = in_f / BLOCK;
    let row_bytes = blocks * layout.bytes();
    if in_f == 0
        || !in_f.is_multiple_of(BLOCK)
        || x.len() != n * in_f
        || data.len() != out_f * row_bytes
    {
        candle_core::bail!(
            "block product: x {n}×{} against W {out_f}×{in_f}",
            x.len() / n.max(1)
        );
    }
    if n == 0 || out_f == 0 {
        return Ok(Vec::new());
    }
    let rounded = RoundedInput::new(x);
    let p = Product {
        layout,
        row_bytes,
        blocks,
        n,
        x: &rounded,
        avx2,
    };
    let mut out_t = vec![0f32; out_f * n];
    out_t
        .par_chunks_mut(OUT_PER_TASK * n)
        .zip(data.par_chunks(OUT_PER_TASK * row_bytes))
        .for_each(|(out, w)| chunk(p, w, out));
    // out_t is (out, n); the caller wants (n, out), the same thing for one row (decoding).
    if n == 1 {
        return Ok(out_t);
    }
    let mut y = vec![0f32; n * out_f];
    for (o, vals) in out_t.chunks_exact(n).enumerate() {
        for (r, &v) in vals.iter().enumerate() {
            y[r * out_f + o] = v;
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Every supported type gives the product of its dequantized weights with the input
    /// rounded to 8-bit blocks (f32 rounding only), with the AVX2 kernel and without, for
    /// widths of one and several blocks and more output features than one task holds; and
    /// stays within the input rounding of the f32 product.
    #[test]
    fn matches_the_dequantized_product_of_the_rounded_input() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (out_f, in_f, n) in [(3, 32, 1), (150, 96, 2), (70, 64, 4)] {
                let w = Tensor::randn(0f32, 0.5, (out_f, in_f), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let dense = q.dequantize(&dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let r = RoundedInput::new(&xs);
                let rounded: Vec<f32> =
                    r.q.iter()
                        .enumerate()
                        .map(|(i, &v)| f32::from(v) * r.scale[i / BLOCK])
                        .collect();
                let rounded = Tensor::from_vec(rounded, (n, in_f), &dev).unwrap();
                let want = rounded.matmul(&dense.t().unwrap()).unwrap();
                let exact = x.matmul(&dense.t().unwrap()).unwrap();
                let scale = f64::max(
                    1.0,
                    crate::ops::test_max_diff(&exact, &exact.zeros_like().unwrap()),
                );
                // Rounding moves each input by at most half its block's scale, so output o
                // moves by at most Σ_j |W_oj| · scale_j / 2.
                let half: Vec<f32> = (0..n * in_f).map(|i| r.scale[i / BLOCK] / 2.0).collect();
                let half = Tensor::from_vec(half, (n, in_f), &dev).unwrap();
                let bound: Vec<Vec<f32>> = half
                    .matmul(&dense.abs().unwrap().t().unwrap())
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                let exact_rows: Vec<Vec<f32>> = exact.to_vec2().unwrap();
                for avx2 in [false, has_avx2()] {
                    let got = block_matmul_with(&xs, n, &q, avx2).unwrap();
                    let got = Tensor::from_vec(got, (n, out_f), &dev).unwrap();
                    let diff = crate::ops::test_max_diff(&got, &want);
                    assert!(
                        diff < 1e-4 * scale,
                        "{dtype:?} {out_f}×{in_f}, {n} rows, avx2 {avx2}: {diff}"
                    );
                    let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
                    for ((g, e), b) in got
                        .iter()
                        .flatten()
                        .zip(exact_rows.iter().flatten())
                        .zip(bound.iter().flatten())
                    {
                        assert!(
                            (g - e).abs() <= b + 1e-4,
                            "{dtype:?}: {g} vs {e}, bound {b}"
                        );
                    }
                }
            }
        }
    }

    /// A NaN input reaches the output (as the f32 path would), and a Q8_0 weight of −128
    /// multiplies correctly on both paths (the AVX2 kernel takes its magnitude as unsigned).
    #[test]
    fn nan_inputs_propagate_and_the_most_negative_q8_weight_multiplies() {
        let dev = Device::Cpu;
        let w = Tensor::ones((2, 32), candle_core::DType::F32, &dev).unwrap();
        let mut q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let mut x = vec![1f32; 32];
        x[5] = f32::NAN;
        for avx2 in [false, has_avx2()] {
            let y = block_matmul_with(&x, 1, &q, avx2).unwrap();
            assert!(y.iter().all(|v| v.is_nan()), "avx2 {avx2}: {y:?}");
        }
        // Rows of d = 1 (f16 0x3C00) and q = −128, then q = 127.
        let mut bytes = Vec::new();
        for v in [-128i8, 127] {
            bytes.extend_from_slice(&[0x00, 0x3C]);
            bytes.extend(std::iter::repeat_n(v as u8, 32));
        }
        q = QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Owned(bytes),
                &dev,
                GgmlDType::Q8_0,
            )
            .unwrap(),
            (2, 32),
        )
        .unwrap();
        let x: Vec<f32> = (0..32)
            .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
            .collect();
        // x rounds exactly (scale 1/127: 127 and −63.5 → −64, so −0.5039…): compute from it.
        let r = RoundedInput::new(&x);
        let sum: f32 = r.q.iter().map(|&v| f32::from(v)).sum::<f32>() * r.scale[0];
        for avx2 in [false, has_avx2()] {
            let y = block_matmul_with(&x, 1, &q, avx2).unwrap();
            assert!((y[0] - -128.0 * sum).abs() < 1e-3, "avx2 {avx2}: {y:?}");
            assert!((y[1] - 127.0 * sum).abs() < 1e-3, "avx2 {avx2}: {y:?}");
        }
    }

    /// A block of zeros rounds to zeros (no division by a zero scale) and extreme values
    /// stay within i8.
    #[test]
    fn rounding_handles_zero_and_extreme_blocks() {
        let mut x = vec![0f32; 64];
        x[32] = -3.0e30;
        x[33] = 3.0e30;
        x[34] = 1.0;
        let r = RoundedInput::new(&x);
        assert!(r.q[..32].iter().all(|&v| v == 0));
        assert_eq!(r.scale[0], 0.0);
        assert_eq!((r.q[32], r.q[33], r.q[34]), (-127, 127, 0));
        assert_eq!(r.sum[1], 0.0);
    }

    #[test]
    fn other_types_and_mismatched_inputs_are_refused() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (4, 256), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(!supports(GgmlDType::Q4K));
        assert!(block_matmul(&[0.0; 256], 1, &q).is_err());
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(block_matmul(&[0.0; 255], 1, &q).is_err());
    }
}
