//! Matrix products on strided views of plain slices, through `gemm` directly: the kernels
//! read heads out of `(b, s, hidden)` tensors and transposed weights in place, with no copies,
//! and can start from a destination that already holds a bias.

use super::rows::Real;

/// A strided matrix inside a slice: element (i, j) lives at `offset + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl View {
    /// A contiguous row-major `rows × cols` matrix at `offset`.
    pub(crate) fn dense(offset: usize, rows: usize, cols: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same elements.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `rows` and the first `cols` columns, as a view of the same elements.
    pub(crate) fn sub(self, rows: std::ops::Range<usize>, cols: usize) -> Self {
        Self {
            offset: self.offset + rows.start * self.rs,
            rows: rows.len(),
            cols,
            ..self
        }
    }

    /// Columns `cols` and every row, as a view of the same elements.
    fn col_range(self, cols: std::ops::Range<usize>) -> Self {
        Self {
            offset: self.offset + cols.start * self.cs,
            cols: cols.len(),
            ..self
        }
    }

    /// Whether the view holds no element.
    fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }

    /// Whether every element of a non-empty view lies inside a slice of `len` (computed
    /// without overflow) and its strides fit gemm's `isize`.
    fn fits(&self, len: usize) -> bool {
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| (self.cols - 1).checked_mul(self.cs)?.checked_add(r))
            .and_then(|span| span.checked_add(self.offset));
        let small = |n: usize| isize::try_from(n).is_ok();
        matches!(last, Some(last) if last < len) && small(self.rs) && small(self.cs)
    }

    /// Whether no two elements share an address (a destination written from several
    /// threads must not alias itself).
    fn is_one_to_one(&self) -> bool {
        let rows_apart = self.rows <= 1 || self.rs >= self.cols * self.cs.max(1);
        let cols_apart = self.cols <= 1 || self.cs >= self.rows * self.rs.max(1);
        (self.cs >= 1 || self.cols <= 1)
            && (self.rs >= 1 || self.rows <= 1)
            && (rows_apart || cols_apart)
    }
}

/// `dst ← beta · lhs·rhs` on the calling thread.
///
/// # Panics
/// If the shapes disagree or a view reaches outside its slice.
pub(crate) fn matmul_into<T: Real>(
    dst: &mut [T],
    d: View,
    lhs: &[T],
    l: View,
    rhs: &[T],
    r: View,
    beta: T,
) {
    gemm_views(dst, d, (lhs, l), (rhs, r), beta, false, 1);
}

/// `dst ← (dst if accumulate) + beta · lhs·rhs`, split over `threads`.
///
/// # Panics
/// If the shapes disagree or a view reaches outside its slice (callers size them; this check
/// is what makes the raw-pointer call below sound).
pub(crate) fn gemm_views<T: Real>(
    dst: &mut [T],
    d: View,
    (lhs, l): (&[T], View),
    (rhs, r): (&[T], View),
    beta: T,
    accumulate: bool,
    threads: usize,
) {
    assert!(l.rows == d.rows && r.cols == d.cols && l.cols == r.rows);
    if d.is_empty() {
        return;
    }
    assert!(
        d.fits(dst.len()) && d.is_one_to_one(),
        "gemm destination {d:?} in {}",
        dst.len()
    );
    if l.is_empty() {
        // k = 0: the product is zero.
        if !accumulate {
            for i in 0..d.rows {
                for j in 0..d.cols {
                    dst[d.offset + i * d.rs + j * d.cs] = T::zero();
                }
            }
        }
        return;
    }
    assert!(
        l.fits(lhs.len()) && r.fits(rhs.len()),
        "gemm operands {l:?}, {r:?}"
    );
    // SAFETY: the views are non-empty and the asserts above keep every index gemm touches
    // inside the three slices; `dst` is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        run(
            dst.as_mut_ptr(),
            d,
            (lhs, l),
            (rhs, r),
            beta,
            accumulate,
            threads,
        )
    };
}

/// The product on the calling thread, or split across `threads` when the destination is long
/// enough to share out.
///
/// # Safety
/// As [`split_across_threads`].
unsafe fn run<T: Real>(
    dst: *mut T,
    d: View,
    lhs: (&[T], View),
    rhs: (&[T], View),
    beta: T,
    accumulate: bool,
    threads: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if threads > 1 && d.rows.max(d.cols) > MIN_SPLIT {
            split_across_threads(dst, d, lhs, rhs, beta, accumulate, threads);
        } else {
            gemm_raw(dst, d, lhs, rhs, beta, accumulate);
        }
    }
}

/// `beta · lhs·rhs` as a new row-major `lhs.rows × rhs.cols` vector, split over `threads`.
/// The vector is not zero-filled first: gemm writes every element of a destination it does
/// not accumulate onto without reading it, so a product pays no `memset` (on one thread,
/// outside the product's own split) for a buffer it overwrites.
///
/// # Panics
/// If the shapes disagree or an operand view reaches outside its slice.
pub(crate) fn product<T: Real>(
    (lhs, l): (&[T], View),
    (rhs, r): (&[T], View),
    beta: T,
    threads: usize,
) -> Vec<T> {
    assert!(l.cols == r.rows, "gemm operands {l:?}, {r:?}");
    let d = View::dense(0, l.rows, r.cols);
    // Checked: the allocation below must hold exactly what gemm writes.
    let len = d.rows.checked_mul(d.cols).expect("gemm product too large");
    if d.is_empty() || l.is_empty() {
        // Nothing to write, or k = 0: the product is zero.
        return vec![T::zero(); len];
    }
    assert!(
        l.fits(lhs.len()) && r.fits(rhs.len()),
        "gemm operands {l:?}, {r:?}"
    );
    let mut out = Vec::with_capacity(len);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<T>();
    // SAFETY: the views are non-empty and inside their slices (asserted above), the dense
    // destination covers exactly the `len` elements allocated, and `out` is not shared.
    // Without accumulation gemm writes each destination element and reads none
    // (`read_dst = false`), so after the call all `len` elements are initialised.
    unsafe {
        run(dst, d, (lhs, l), (rhs, r), beta, false, threads);
        out.set_len(len);
    }
    out
}

/// The unit a product is split in across threads: destination rows or columns, and the
/// fewest a thread's share may hold.
const MIN_SPLIT: usize = 16;

/// A destination pointer the threads of [`split_across_threads`] share.
#[derive(Clone, Copy)]
struct SharedDst<T>(*mut T);
// SAFETY: each thread writes only its own block of a one-to-one view (see below).
unsafe impl<T: Send> Send for SharedDst<T> {}
unsafe impl<T: Send> Sync for SharedDst<T> {}

impl<T> SharedDst<T> {
    /// The pointer (a method, so that a closure captures the `Sync` wrapper, not its field).
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// The product split into one single-threaded gemm per thread, each on its own block of the
/// destination's longer side (whole units of [`MIN_SPLIT`], as even as they divide). gemm's own
/// `Parallelism::Rayon` split of a product with few rows is slow (BENCHMARKS.md, Zen 4:
/// 128 × 384 × 1536 took 2.15 ms on two threads, 2.6 on one, and 1.29 split this way); on
/// large products the two measure the same.
///
/// # Safety
/// The views are non-empty, agree in shape and lie inside their slices (`d` inside the
/// allocation `dst` points into), `d` is one-to-one (what [`gemm_views`] asserts before
/// calling), and nothing else touches the destination meanwhile.
unsafe fn split_across_threads<T: Real>(
    dst: *mut T,
    d: View,
    (lhs, l): (&[T], View),
    (rhs, r): (&[T], View),
    beta: T,
    accumulate: bool,
    threads: usize,
) {
    use rayon::prelude::*;
    let by_cols = d.cols >= d.rows;
    let len = if by_cols { d.cols } else { d.rows };
    let units = len.div_ceil(MIN_SPLIT);
    // units ≥ 2: the caller splits only products longer than one unit.
    let parts = threads.min(units);
    let out = SharedDst(dst);
    (0..parts).into_par_iter().for_each(|p| {
        let range = (p * units / parts) * MIN_SPLIT..((p + 1) * units / parts * MIN_SPLIT).min(len);
        let (d, l, r) = if by_cols {
            (d.col_range(range.clone()), l, r.col_range(range))
        } else {
            (d.sub(range.clone(), d.cols), l.sub(range, l.cols), r)
        };
        // SAFETY: the sub-views lie inside the caller's checked ones, and the blocks of a
        // one-to-one destination are disjoint sets of addresses, so no two threads write one
        // address; single-threaded gemm writes (and, accumulating, reads) only the elements
        // of its destination view, as its own threaded split relies on too.
        unsafe { gemm_raw(out.ptr(), d, (lhs, l), (rhs, r), beta, accumulate) };
    });
}

/// `dst ← (dst if accumulate) + beta · lhs·rhs` on the calling thread.
///
/// # Safety
/// The views are non-empty, agree in shape and lie inside their slices (`dst`'s from its
/// pointer), and no other thread touches the destination's elements meanwhile.
unsafe fn gemm_raw<T: Real>(
    dst: *mut T,
    d: View,
    (lhs, l): (&[T], View),
    (rhs, r): (&[T], View),
    beta: T,
    accumulate: bool,
) {
    let signed = |n: usize| n as isize;
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.add(d.offset),
            signed(d.cs),
            signed(d.rs),
            accumulate,
            lhs.as_ptr().add(l.offset),
            signed(l.cs),
            signed(l.rs),
            rhs.as_ptr().add(r.offset),
            signed(r.cs),
            signed(r.rs),
            T::one(),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_strided_views_and_accumulation() {
        // A (2×3) stored row-major; B = Aᵀ read through a transposed view; C = A·Aᵀ.
        let a = [1.0f64, 2., 3., 4., 5., 6.];
        let va = View::dense(0, 2, 3);
        let mut c = [10.0f64, 10., 10., 10.];
        gemm_views(
            &mut c,
            View::dense(0, 2, 2),
            (&a, va),
            (&a, va.t()),
            1.0,
            true,
            1,
        );
        assert_eq!(c, [24., 42., 42., 87.]);
        matmul_into(&mut c, View::dense(0, 2, 2), &a, va, &a, va.t(), 2.0);
        assert_eq!(c, [28., 64., 64., 154.]);
    }

    /// A fresh product (never zero-filled) equals the product written into a zeroed buffer,
    /// on one thread and split, with transposed operands and with k = 0.
    #[test]
    fn a_fresh_product_equals_one_into_a_zeroed_buffer() {
        for (m, n, k, threads) in [(70, 37, 9, 1), (37, 70, 9, 3), (5, 3, 4, 2), (40, 20, 0, 2)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let w: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
            let (l, r) = (View::dense(0, m, k), View::dense(0, n, k).t());
            let mut want = vec![0.0; m * n];
            gemm_views(
                &mut want,
                View::dense(0, m, n),
                (&a, l),
                (&w, r),
                0.5,
                false,
                1,
            );
            let got = product((&a, l), (&w, r), 0.5, threads);
            assert_eq!(got.len(), m * n);
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12, "{m}x{n}x{k} on {threads}");
            }
        }
    }

    /// Split over threads by the destination's rows or columns, the product is the one
    /// computed on one thread: transposed operands, a strided destination, accumulation,
    /// sizes that are not multiples of the split.
    #[test]
    fn a_product_split_over_threads_equals_the_single_threaded_one() {
        for (m, n, k) in [(70, 37, 9), (37, 70, 9), (5, 3, 4), (16, 33, 2)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let w: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
            // dst is column-major with a gap of 3 between columns, holding a start value.
            let d = View {
                offset: 2,
                rows: m,
                cols: n,
                rs: 1,
                cs: m + 3,
            };
            let start: Vec<f64> = (0..2 + n * (m + 3)).map(|i| i as f64 * 0.01).collect();
            let product = |threads| {
                let mut c = start.clone();
                let (l, r) = (View::dense(0, m, k), View::dense(0, n, k).t());
                gemm_views(&mut c, d, (&a, l), (&w, r), 0.5, true, threads);
                c
            };
            let (one, split) = (product(1), product(3));
            for (x, y) in one.iter().zip(&split) {
                assert!((x - y).abs() < 1e-12, "{m}x{n}x{k}");
            }
            // Untouched gaps keep their values.
            assert_eq!(split[0], start[0]);
            assert_eq!(split[2 + m], start[2 + m]);
        }
    }

    #[test]
    fn empty_products() {
        let a = [1.0f32; 4];
        let mut c = [5.0f32; 4];
        // k = 0 without accumulating: zeros; an empty destination: nothing touched.
        gemm_views(
            &mut c,
            View::dense(0, 2, 2),
            (&a, View::dense(9, 2, 0)),
            (&a, View::dense(9, 0, 2)),
            1.0,
            false,
            1,
        );
        assert_eq!(c, [0.0; 4]);
        gemm_views(
            &mut c,
            View::dense(99, 0, 2),
            (&a, View::dense(99, 0, 1)),
            (&a, View::dense(0, 1, 2)),
            1.0,
            false,
            1,
        );
        assert_eq!(c, [0.0; 4]);
    }

    #[test]
    #[should_panic]
    fn an_overflowing_stride_is_refused() {
        let a = [1.0f32; 6];
        let mut c = [0.0f32; 6];
        let huge = View {
            offset: 0,
            rows: 3,
            cols: 2,
            rs: usize::MAX / 2 + 1,
            cs: 1,
        };
        matmul_into(
            &mut c,
            huge,
            &a,
            View::dense(0, 3, 2),
            &a,
            View::dense(0, 2, 2),
            1.0,
        );
    }

    #[test]
    #[should_panic]
    fn a_self_overlapping_destination_is_refused() {
        let a = [1.0f32; 6];
        let mut c = [0.0f32; 6];
        let overlapping = View {
            offset: 0,
            rows: 2,
            cols: 2,
            rs: 0,
            cs: 1,
        };
        matmul_into(
            &mut c,
            overlapping,
            &a,
            View::dense(0, 2, 3),
            &a,
            View::dense(0, 3, 2),
            1.0,
        );
    }

    #[test]
    #[should_panic]
    fn a_view_outside_its_slice_is_refused() {
        let a = [1.0f32; 5];
        let mut c = [0.0f32; 4];
        matmul_into(
            &mut c,
            View::dense(0, 2, 2),
            &a,
            View::dense(0, 2, 3),
            &a,
            View::dense(0, 3, 2),
            1.0,
        );
    }
}
