//! Shared plumbing for the row-wise CPU kernels: contiguous slices, a float trait for f32/f64,
//! and a scoped-thread split over whole rows (candle's own element-wise ops run on one thread).

use std::ops::Range;

use candle_core::{CpuStorage, DType, Layout, WithDType};
use rayon::prelude::*;

use super::vmath::LANES;

/// Elements per thread below which spawning threads costs more than it saves.
const MIN_PER_THREAD: usize = 1 << 15;

/// The float types our kernels run on (f32, f64); `max` comes from candle's `VecOps`.
pub(crate) trait Real: WithDType {
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    const NEG_INFINITY: Self;

    /// The row's largest element (`-∞` when empty; NaNs passed over).
    fn row_max(row: &[Self]) -> Self {
        row.iter().fold(Self::NEG_INFINITY, |m, &x| m.max(x))
    }

    /// `row[i] ← e^(row[i] − m)`, returning their sum.
    fn exp_shifted_sum(row: &mut [Self], m: Self) -> Self {
        let mut sum = Self::zero();
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        sum
    }

    /// `row ← softmax(row)`.
    fn softmax_in_place(row: &mut [Self]) {
        let m = Self::row_max(row);
        let inv = Self::one() / Self::exp_shifted_sum(row, m);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// f32 rows go through the vectorised loops of [`super::vmath`].
impl Real for f32 {
    fn exp(self) -> Self {
        super::vmath::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    const NEG_INFINITY: Self = f32::NEG_INFINITY;

    fn row_max(row: &[Self]) -> Self {
        super::vmath::max(row)
    }

    fn exp_shifted_sum(row: &mut [Self], m: Self) -> Self {
        super::vmath::exp_shifted_sum(row, m)
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
}

/// `Σ_i f(row_i)`, summed in [`LANES`] partial sums so that the loop vectorises (a single
/// accumulator pins the additions to one order, one at a time).
#[inline]
pub(crate) fn lane_sum<T: Real>(row: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(T::zero(), |s, &x| s + f(x));
    for chunk in chunks {
        for (s, &x) in acc.iter_mut().zip(chunk) {
            *s += f(x);
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `Σ_i a_i·b_i` over two rows (the shorter's length), in [`LANES`] partial sums as
/// [`lane_sum`].
#[inline]
pub(crate) fn lane_dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = (ca.remainder().iter().zip(cb.remainder())).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += x * y;
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// The contiguous data of one kernel input.
pub(crate) fn slice<'a, T: WithDType>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs a kernel generic over [`Real`] for `dtype`: `T` is `f32` or `f64` in `body`; any other
/// dtype is [`unsupported`] for the op `name`. The dispatch every CPU kernel's `cpu_fwd` makes.
macro_rules! for_real {
    ($dtype:expr, $name:expr, |$T:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $T = f64;
                $body
            }
            dt => Err($crate::ops::rows::unsupported($name, dt)),
        }
    };
}
pub(crate) use for_real;

/// Fails for dtypes the kernels do not cover (the public wrappers never send them here).
pub(crate) fn unsupported(op: &str, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: CPU kernel supports f32 and f64, got {dtype:?}"
    ))
}

/// Whether the hand-written CPU kernels take `t`: an f32 or f64 tensor on the CPU (every
/// other case goes through candle's composed ops).
pub(crate) fn has_cpu_kernel(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Threads worth using for `work` element-operations over `items` independent pieces: candle's
/// thread count, fewer when the pieces are few or the work small.
pub(crate) fn threads_for(work: usize, items: usize) -> usize {
    super::cpu_threads()
        .min(work / MIN_PER_THREAD)
        .min(items)
        .max(1)
}

/// Runs `f(rows, out_chunk)` over chunks of whole rows of `out` (rows of `row_len`), on up to
/// candle's thread count when the tensor is large; returns each chunk's result in row order.
pub(crate) fn par_rows<U: Send, R: Send>(
    out: &mut [U],
    row_len: usize,
    f: impl Fn(Range<usize>, &mut [U]) -> R + Sync,
) -> Vec<R> {
    let n_rows = out.len().checked_div(row_len).unwrap_or(0);
    let threads = threads_for(out.len(), n_rows);
    if threads == 1 {
        return vec![f(0..n_rows, out)];
    }
    let rows_per = n_rows.div_ceil(threads);
    // rayon's persistent pool, not a scoped thread per chunk: spawning cost tens of
    // microseconds an op (BENCHMARKS.md: decode went from 62 to 117 tokens/s).
    out.par_chunks_mut(rows_per * row_len)
        .enumerate()
        .map(|(i, chunk)| {
            let start = i * rows_per;
            f(start..start + chunk.len() / row_len, chunk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sum_adds_every_term_once_at_every_length() {
        for n in [0usize, 1, 15, 16, 17, 50] {
            let a: Vec<f64> = (0..n).map(|i| i as f64 + 1.0).collect();
            let want: f64 = a.iter().map(|x| 2.0 * x + 1.0).sum();
            assert_eq!(lane_sum(&a, |x| 2.0 * x + 1.0), want, "n {n}");
            let b: Vec<f64> = (0..n + 3).map(|i| 0.5 * i as f64).collect();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(lane_dot(&a, &b), dot, "n {n}");
        }
    }

    #[test]
    fn par_rows_covers_every_row_once_in_order() {
        let row_len = 7;
        let n_rows = (3 * MIN_PER_THREAD) / row_len + 5;
        let mut out = vec![0usize; n_rows * row_len];
        let starts = par_rows(&mut out, row_len, |rows, chunk| {
            for (r, row) in rows.clone().zip(chunk.chunks_mut(row_len)) {
                row.iter_mut().for_each(|v| *v += r + 1);
            }
            rows.start
        });
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        for (r, row) in out.chunks(row_len).enumerate() {
            assert!(row.iter().all(|&v| v == r + 1), "row {r}");
        }
    }
}
