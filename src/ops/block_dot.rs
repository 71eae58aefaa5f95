//! `y = x·Wᵀ` for a few rows `x` and a frozen `W` kept in GGUF blocks (Q4_0, Q4_1, Q8_0),
//! read in place: what one decoded token costs. Each weight is read once per token, so the
//! time is the memory read — 4.5 to 8.5 bits a weight here instead of 32 for an f32 copy.
//! The input stays f32 (llama.cpp rounds it to 8-bit blocks first); each block's scale is
//! applied to a vector of 32 products, so the sum is f32 arithmetic on exactly the
//! dequantized weights. candle 0.11's own block product has no SIMD path for Q4_1, the type
//! the packaged SmolLM2 uses.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Weights per block in every type handled here.
const BLOCK: usize = 32;

/// Output features per parallel task: enough work to outweigh handing it to a thread.
const OUT_PER_TASK: usize = 64;

/// The block types this kernel reads, with their size in bytes.
fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4_0 => Some(18),
        GgmlDType::Q4_1 => Some(20),
        GgmlDType::Q8_0 => Some(34),
        _ => None,
    }
}

/// Whether [`block_matmul`] reads `dtype`.
pub(crate) fn supports(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some()
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One weight row against one input row, for the block type `dtype`, with the input's
/// per-block sums (for the types with an offset). `#[inline(always)]` so that the AVX2 entry
/// point compiles it with wide vectors; the accumulators are fixed-size locals so they stay in
/// registers.
#[inline(always)]
fn dot_row(dtype: GgmlDType, row: &[u8], x: &[f32], x_sums: &[f32]) -> f32 {
    match dtype {
        GgmlDType::Q8_0 => dot_q8_0(row, x),
        GgmlDType::Q4_1 => dot_q4::<true>(row, x, x_sums),
        _ => dot_q4::<false>(row, x, x_sums),
    }
}

/// Q8_0: w = d·q, q an i8.
#[inline(always)]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; BLOCK];
    for (blk, xb) in row.chunks_exact(34).zip(x.chunks_exact(BLOCK)) {
        let d = f16_at(blk, 0);
        // `chunks_exact` gives whole blocks: these conversions cannot fail.
        let qs: &[u8; BLOCK] = blk[2..].try_into().expect("a 34-byte Q8_0 block");
        let xb: &[f32; BLOCK] = xb.try_into().expect("32 inputs per block");
        for j in 0..BLOCK {
            acc[j] += d * (f32::from(qs[j] as i8) * xb[j]);
        }
    }
    acc.iter().sum()
}

/// Q4_1 (`MIN`): w = d·q + m; Q4_0: w = d·(q − 8). Byte j holds weight j (low nibble) and
/// weight j + 16 (high nibble); the offset multiplies the block's input sum.
#[inline(always)]
fn dot_q4<const MIN: bool>(row: &[u8], x: &[f32], x_sums: &[f32]) -> f32 {
    const HALF: usize = BLOCK / 2;
    let (size, start) = if MIN { (20, 4) } else { (18, 2) };
    let (mut lo, mut hi) = ([0f32; HALF], [0f32; HALF]);
    let mut offset = 0f32;
    for ((blk, xb), &s) in row
        .chunks_exact(size)
        .zip(x.chunks_exact(BLOCK))
        .zip(x_sums)
    {
        let d = f16_at(blk, 0);
        let m = if MIN { f16_at(blk, 2) } else { -8.0 * d };
        // `chunks_exact` gives whole blocks: these conversions cannot fail.
        let qs: &[u8; HALF] = blk[start..].try_into().expect("16 bytes of nibbles");
        let xb: &[f32; BLOCK] = xb.try_into().expect("32 inputs per block");
        for j in 0..HALF {
            lo[j] += d * (f32::from(qs[j] & 15) * xb[j]);
            hi[j] += d * (f32::from(qs[j] >> 4) * xb[j + HALF]);
        }
        offset += m * s;
    }
    lo.iter().zip(&hi).map(|(a, b)| a + b).sum::<f32>() + offset
}

/// What every chunk of one product shares.
#[derive(Clone, Copy)]
struct Product<'a> {
    dtype: GgmlDType,
    /// Bytes of one weight row.
    row_bytes: usize,
    in_f: usize,
    /// The input rows, `n × in_f`.
    x: &'a [f32],
    /// The input's sum over each block of 32, `n × in_f / 32`.
    sums: &'a [f32],
}

/// `out[o·n + r] = W[o]·x[r]` for the weight rows in `w` (a run of whole rows).
#[inline(always)]
fn chunk(p: Product, w: &[u8], out: &mut [f32]) {
    let n = p.x.len() / p.in_f;
    let blocks = p.in_f / BLOCK;
    for (row, y) in w.chunks_exact(p.row_bytes).zip(out.chunks_exact_mut(n)) {
        for (r, yv) in y.iter_mut().enumerate() {
            let xr = &p.x[r * p.in_f..(r + 1) * p.in_f];
            let sums = p.sums.get(r * blocks..(r + 1) * blocks).unwrap_or_default();
            *yv = dot_row(p.dtype, row, xr, sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn chunk_avx2(p: Product, w: &[u8], out: &mut [f32]) {
    chunk(p, w, out);
}

fn run_chunk(p: Product, w: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { chunk_avx2(p, w, out) };
        return;
    }
    chunk(p, w, out);
}

/// `x·Wᵀ` for `x: n × in` (row-major f32) and `w: (out, in)` in blocks of a type
/// [`supports`] accepts; returns `n × out`.
///
/// # Errors
/// An unsupported block type, or shapes that disagree.
pub(crate) fn block_matmul(x: &[f32], n: usize, w: &QTensor) -> candle_core::Result<Vec<f32>> {
    let (out_f, in_f) = w.shape().dims2()?;
    let Some(size) = block_bytes(w.dtype()) else {
        candle_core::bail!("block product: {:?} is not read here", w.dtype());
    };
    let data = w.data()?;
    let row_bytes = in_f / BLOCK * size;
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
    // The 4-bit types' offsets multiply each block's input sum; Q8_0 has none.
    let sums: Vec<f32> = if w.dtype() == GgmlDType::Q8_0 {
        Vec::new()
    } else {
        x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
    };
    let p = Product {
        dtype: w.dtype(),
        row_bytes,
        in_f,
        x,
        sums: &sums,
    };
    let mut out_t = vec![0f32; out_f * n];
    out_t
        .par_chunks_mut(OUT_PER_TASK * n)
        .zip(data.par_chunks(OUT_PER_TASK * row_bytes))
        .for_each(|(out, w)| run_chunk(p, w, out));
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

    /// Every supported type gives the product with its dequantized weights (f32 rounding only),
    /// for widths of one and several blocks and more output features than one task holds.
    #[test]
    fn matches_the_dequantized_product() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (out_f, in_f, n) in [(3, 32, 1), (150, 96, 2), (70, 64, 4)] {
                let w = Tensor::randn(0f32, 0.5, (out_f, in_f), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let dense = q.dequantize(&dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let got = block_matmul(&xs, n, &q).unwrap();
                let got = Tensor::from_vec(got, (n, out_f), &dev).unwrap();
                let diff = crate::ops::test_max_diff(&got, &want);
                assert!(diff < 1e-4, "{dtype:?} {out_f}×{in_f}, {n} rows: {diff}");
            }
        }
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
