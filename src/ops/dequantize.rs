//! A block-quantized weight's f32 copy, for the products that use one (prefill, evaluation,
//! training): Q4_0, Q4_1 and Q8_0 blocks are converted on every thread, straight into an
//! unfilled buffer. candle's `QTensor::dequantize` zero-fills the buffer and then converts on
//! one thread; in a decoder training step, which dequantizes every frozen weight twice (forward
//! and backward), the other core sat idle meanwhile (BENCHMARKS.md, issue 21).
//!
//! The values are candle's to the bit: the same expressions, in the same order.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::block_dot::{BLOCK, Layout, f16_at};
use super::rows::threads_for;

/// Writes one block's 32 weights. Byte j of a 4-bit block holds weight j (low nibble) and
/// weight j + 16 (high nibble).
/// Candle's expressions, not the block product's `d·q + offset` (Q4_0's −8·d offset would
/// round differently).
fn block(layout: Layout, blk: &[u8], out: &mut [std::mem::MaybeUninit<f32>]) {
    let d = f16_at(blk, 0);
    match layout {
        Layout::Q8 => {
            for (o, &q) in out.iter_mut().zip(&blk[2..2 + BLOCK]) {
                o.write(f32::from(q as i8) * d);
            }
        }
        Layout::Q4 {
            start, min: true, ..
        } => {
            let m = f16_at(blk, 2);
            let (low, high) = out.split_at_mut(BLOCK / 2);
            for ((lo, hi), &q) in low.iter_mut().zip(high).zip(&blk[start..start + BLOCK / 2]) {
                lo.write(f32::from(q & 0x0F) * d + m);
                hi.write(f32::from(q >> 4) * d + m);
            }
        }
        Layout::Q4 {
            start, min: false, ..
        } => {
            let (low, high) = out.split_at_mut(BLOCK / 2);
            for ((lo, hi), &q) in low.iter_mut().zip(high).zip(&blk[start..start + BLOCK / 2]) {
                lo.write(f32::from(i16::from(q & 0x0F) - 8) * d);
                hi.write(f32::from(i16::from(q >> 4) - 8) * d);
            }
        }
    }
}

/// `w` as a dense f32 tensor on the CPU: Q4_0/Q4_1/Q8_0 converted here, other types by
/// candle.
///
/// # Errors
/// Block data that does not match the tensor's shape; candle's errors for other types.
pub(crate) fn dequantize(w: &QTensor) -> candle_core::Result<Tensor> {
    let Some(layout) = Layout::of(w.dtype()) else {
        return w.dequantize(&Device::Cpu);
    };
    let size = layout.bytes();
    let n = w.shape().elem_count();
    let data = w.data()?;
    let blocks = n / BLOCK;
    if !n.is_multiple_of(BLOCK) || data.len() != blocks * size {
        candle_core::bail!(
            "dequantize: {:?} {:?} holds {} bytes, expected {}",
            w.dtype(),
            w.shape(),
            data.len(),
            n.div_ceil(BLOCK) * size
        );
    }
    let per = blocks.div_ceil(threads_for(n, blocks)).max(1);
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(per * BLOCK)
        .zip(data.par_chunks(per * size))
        .for_each(|(out, bytes)| {
            for (o, blk) in out.chunks_exact_mut(BLOCK).zip(bytes.chunks_exact(size)) {
                block(layout, blk, o);
            }
        });
    // SAFETY: the chunks cover all `n` elements (`blocks · BLOCK = n`, each chunk as many
    // blocks of output as of input) and `block` writes all 32 of each.
    unsafe { out.set_len(n) };
    Tensor::from_vec(out, w.shape(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// Every supported type, on a weight large enough to be split over threads, equals
    /// candle's dequantization exactly; another type goes through candle.
    #[test]
    fn equals_candles_dequantization_to_the_bit() {
        let dev = Device::Cpu;
        let (rows, cols) = (96, 4 * BLOCK * 8);
        let x = Tensor::randn(0f32, 1., (rows, cols), &dev).unwrap();
        let offset = (Tensor::arange(0f32, cols as f32, &dev).unwrap() * 0.001).unwrap();
        let x = x.broadcast_add(&offset).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
        ] {
            let q = QTensor::quantize(&x, dtype).unwrap();
            let ours = dequantize(&q).unwrap();
            let theirs = q.dequantize(&dev).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let (a, b) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype:?}"
            );
        }
    }
}
