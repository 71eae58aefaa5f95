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

    /// Whether every element of the view lies inside a slice of `len`.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
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

/// `dst ← (dst if accumulate) + beta · lhs·rhs`, split over `threads` by gemm.
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
    assert!(d.fits(dst.len()) && l.fits(lhs.len()) && r.fits(rhs.len()));
    let signed = |n: usize| n as isize;
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index gemm touches inside the three slices; `dst`
    // is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
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
            parallelism,
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
