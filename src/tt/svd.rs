//! TT-SVD (Oseledets 2011, Alg. 1) and TT rounding (Alg. 2), in f64 on the CPU with faer.
//!
//! Both truncate each unfolding's SVD to the smallest rank whose discarded tail is within
//! `δ = ε·‖T‖_F / √(d−1)`, which bounds the total relative error by ε, and optionally cap
//! every bond's rank.

use candle_core::{DType, Device, Tensor};
use faer::Mat;

use crate::error::{Error, Result};
use crate::tt::contract::reconstruct;
use crate::tt::shape::{Ranks, TtLayout, TtShape};

/// How to truncate ranks in TT-SVD and rounding. With neither field set the result is exact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truncation {
    /// Largest rank per inner bond (`d − 1` entries), or one cap for all bonds.
    pub max_ranks: Option<Vec<usize>>,
    /// Largest relative Frobenius error ε of the whole result.
    pub rel_tol: Option<f64>,
}

impl Truncation {
    /// Caps every bond at `rank`.
    pub fn rank(rank: usize) -> Self {
        Self {
            max_ranks: Some(vec![rank]),
            rel_tol: None,
        }
    }
    /// Keeps the relative error within `eps`.
    pub fn tolerance(eps: f64) -> Self {
        Self {
            max_ranks: None,
            rel_tol: Some(eps),
        }
    }

    fn cap(&self, bond: usize) -> usize {
        match &self.max_ranks {
            None => usize::MAX,
            Some(v) if v.len() == 1 => v[0],
            Some(v) => v.get(bond).copied().unwrap_or(usize::MAX),
        }
    }

    fn validate(&self, op: &'static str, num_cores: usize) -> Result<()> {
        if let Some(eps) = self.rel_tol
            && !(eps.is_finite() && eps >= 0.0)
        {
            return Err(Error::BadTolerance {
                op,
                reason: format!("relative tolerance must be a finite number >= 0, got {eps}"),
            });
        }
        if let Some(v) = &self.max_ranks {
            if v.contains(&0) {
                return Err(Error::BadRanks {
                    reason: "rank caps must be >= 1",
                    expected: "every cap >= 1".into(),
                    got: v.clone(),
                });
            }
            if v.len() != 1 && v.len() + 1 != num_cores {
                return Err(Error::BadRanks {
                    reason: "wrong number of rank caps",
                    expected: format!("1 or {} caps", num_cores.saturating_sub(1)),
                    got: v.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A tensor train in plain f64 storage: `cores[k]` is row-major `(r_{k-1}, s_k, r_k)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TtTensor {
    /// Mode sizes `[s_1..s_d]`.
    pub dims: Vec<usize>,
    /// Ranks `[1, r_1, …, r_{d−1}, 1]`.
    pub ranks: Vec<usize>,
    /// Core data, row-major.
    pub cores: Vec<Vec<f64>>,
}

impl TtTensor {
    /// The full tensor, row-major over `dims` (first core most significant).
    pub fn full(&self) -> Vec<f64> {
        let mut acc = self.cores[0].clone();
        let mut rows = self.dims[0];
        for k in 1..self.dims.len() {
            let (ra, s, rb) = (self.ranks[k], self.dims[k], self.ranks[k + 1]);
            let left = mat(&acc, rows, ra);
            let right = mat(&self.cores[k], ra, s * rb);
            let prod = &left * &right;
            acc = to_row_major(&prod);
            rows *= s;
        }
        acc
    }

    /// Rounds the train to lower ranks (Oseledets Alg. 2): right-to-left orthogonalisation,
    /// then truncated SVDs left to right.
    ///
    /// # Errors
    /// A bad truncation request; an SVD that does not converge.
    pub fn round(&self, trunc: &Truncation) -> Result<TtTensor> {
        let d = self.dims.len();
        trunc.validate("tt rounding", d)?;
        let mut cores = self.cores.clone();
        let mut ranks = self.ranks.clone();
        // Right-to-left: make cores 2..d row-orthonormal, pushing the rest into the left core.
        for k in (1..d).rev() {
            let (ra, s, rb) = (ranks[k], self.dims[k], ranks[k + 1]);
            let m = mat(&cores[k], ra, s * rb);
            let svd = m.thin_svd().map_err(|_| Error::SvdFailed {
                op: "tt rounding",
                rows: ra,
                cols: s * rb,
            })?;
            let t = svd.S().column_vector().nrows();
            let mut v_t = Mat::<f64>::zeros(t, s * rb);
            for i in 0..t {
                for j in 0..s * rb {
                    v_t[(i, j)] = svd.V()[(j, i)];
                }
            }
            let mut us = svd.U().to_owned();
            for j in 0..t {
                let sj = svd.S().column_vector()[j];
                for i in 0..ra {
                    us[(i, j)] *= sj;
                }
            }
            cores[k] = to_row_major(&v_t);
            let (pa, ps) = (ranks[k - 1], self.dims[k - 1]);
            let prev = mat(&cores[k - 1], pa * ps, ra);
            cores[k - 1] = to_row_major(&(&prev * &us));
            ranks[k] = t;
        }
        let norm = cores[0].iter().map(|x| x * x).sum::<f64>().sqrt();
        let delta = trunc
            .rel_tol
            .map(|eps| eps * norm / ((d.max(2) - 1) as f64).sqrt());
        // Left-to-right truncated SVDs.
        for k in 0..d - 1 {
            let (ra, s, rb) = (ranks[k], self.dims[k], ranks[k + 1]);
            let m = mat(&cores[k], ra * s, rb);
            let svd = m.thin_svd().map_err(|_| Error::SvdFailed {
                op: "tt rounding",
                rows: ra * s,
                cols: rb,
            })?;
            let sv: Vec<f64> = (0..svd.S().column_vector().nrows())
                .map(|i| svd.S().column_vector()[i])
                .collect();
            let t = truncated_rank(&sv, delta, trunc.cap(k));
            let u = svd.U().subcols(0, t).to_owned();
            let mut svt = Mat::<f64>::zeros(t, rb);
            for i in 0..t {
                for j in 0..rb {
                    svt[(i, j)] = sv[i] * svd.V()[(j, i)];
                }
            }
            cores[k] = to_row_major(&u);
            let (ns, nb) = (self.dims[k + 1], ranks[k + 2]);
            let next = mat(&cores[k + 1], rb, ns * nb);
            cores[k + 1] = to_row_major(&(&svt * &next));
            ranks[k + 1] = t;
        }
        Ok(TtTensor {
            dims: self.dims.clone(),
            ranks,
            cores,
        })
    }
}

/// TT-SVD of a dense row-major tensor of shape `dims` (first mode most significant).
///
/// # Errors
/// `data.len()` not matching `dims`; a bad truncation request; an SVD that does not converge.
pub fn tt_svd(data: &[f64], dims: &[usize], trunc: &Truncation) -> Result<TtTensor> {
    let d = dims.len();
    let total: usize = dims.iter().product();
    if d == 0 || total != data.len() {
        return Err(Error::TensorShape {
            op: "tt-svd",
            expected: dims.to_vec(),
            got: vec![data.len()],
        });
    }
    trunc.validate("tt-svd", d)?;
    let norm = data.iter().map(|x| x * x).sum::<f64>().sqrt();
    let delta = trunc
        .rel_tol
        .map(|eps| eps * norm / ((d.max(2) - 1) as f64).sqrt());
    let mut ranks = vec![1usize];
    let mut cores = Vec::with_capacity(d);
    let mut rest = data.to_vec();
    let mut cols = total;
    for (k, &s) in dims.iter().enumerate().take(d - 1) {
        let r_prev = ranks[k];
        let rows = r_prev * s;
        cols /= s;
        let m = mat(&rest, rows, cols);
        let svd = m.thin_svd().map_err(|_| Error::SvdFailed {
            op: "tt-svd",
            rows,
            cols,
        })?;
        let sv: Vec<f64> = (0..svd.S().column_vector().nrows())
            .map(|i| svd.S().column_vector()[i])
            .collect();
        let t = truncated_rank(&sv, delta, trunc.cap(k));
        cores.push(to_row_major(&svd.U().subcols(0, t).to_owned()));
        let mut next = Mat::<f64>::zeros(t, cols);
        for i in 0..t {
            for j in 0..cols {
                next[(i, j)] = sv[i] * svd.V()[(j, i)];
            }
        }
        rest = to_row_major(&next);
        ranks.push(t);
    }
    cores.push(rest);
    ranks.push(1);
    Ok(TtTensor {
        dims: dims.to_vec(),
        ranks,
        cores,
    })
}

/// Smallest rank whose discarded tail Σσ² is within δ², capped, at least 1.
fn truncated_rank(sv: &[f64], delta: Option<f64>, cap: usize) -> usize {
    let mut rank = sv.len();
    if let Some(delta) = delta {
        let mut tail = 0.0;
        while rank > 1 {
            let next = tail + sv[rank - 1] * sv[rank - 1];
            if next > delta * delta {
                break;
            }
            tail = next;
            rank -= 1;
        }
    }
    rank.min(cap).max(1)
}

fn mat(data: &[f64], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| data[i * cols + j])
}

fn to_row_major(m: &Mat<f64>) -> Vec<f64> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            v.push(m[(i, j)]);
        }
    }
    v
}

/// The outcome of decomposing a dense ΔW into TT cores.
#[derive(Debug, Clone)]
pub struct Decomposition {
    /// The shape found (layout and factors of the template, ranks as truncated).
    pub shape: TtShape,
    /// Cores `(r_{k-1}, s_k, r_k)` in the input matrix's dtype and device.
    pub cores: Vec<Tensor>,
    /// Achieved relative Frobenius error ‖ΔW − TT‖ / ‖ΔW‖ (0 when ΔW = 0).
    pub rel_error: f64,
}

/// TT-SVD of a dense matrix `w: (out, in)` into the layout and factors of `template` (its
/// ranks are ignored; `trunc` decides them).
///
/// # Errors
/// `w` not `(template.out_features(), template.in_features())`; as [`tt_svd`].
pub fn decompose_matrix(
    w: &Tensor,
    template: &TtShape,
    trunc: &Truncation,
) -> Result<Decomposition> {
    let (out_f, in_f) = (template.out_features(), template.in_features());
    if w.dims() != [out_f, in_f] {
        return Err(Error::TensorShape {
            op: "tt-svd of a matrix",
            expected: vec![out_f, in_f],
            got: w.dims().to_vec(),
        });
    }
    let w64 = w.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let full = match template.layout() {
        TtLayout::Reshape => w64,
        TtLayout::InputOutput => {
            // ΔW as (o_q..o_1, i_p..i_1) → core order (i_1..i_p, o_q..o_1).
            let p = template.in_factors().len();
            let q = template.out_factors().len();
            let mut dense_dims: Vec<usize> = template.out_factors().iter().rev().copied().collect();
            dense_dims.extend(template.in_factors().iter().rev());
            let perm: Vec<usize> = (q..q + p).rev().chain(0..q).collect();
            w64.reshape(dense_dims)?.permute(perm)?.contiguous()?
        }
    };
    let data = full.flatten_all()?.to_vec1::<f64>()?;
    let tt = tt_svd(&data, template.core_dims(), trunc)?;
    finish(template, tt, w)
}

/// Rounds TT cores of `shape` to lower ranks (see [`TtTensor::round`]).
///
/// # Errors
/// Cores that do not fit `shape`; as [`TtTensor::round`].
pub fn round_cores(shape: &TtShape, cores: &[Tensor], trunc: &Truncation) -> Result<Decomposition> {
    let dims: Vec<Vec<usize>> = cores.iter().map(|c| c.dims().to_vec()).collect();
    shape.check_cores(&dims)?;
    let tt = TtTensor {
        dims: shape.core_dims().to_vec(),
        ranks: shape.ranks().to_vec(),
        cores: cores
            .iter()
            .map(|c| c.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())
            .collect::<candle_core::Result<_>>()?,
    }
    .round(trunc)?;
    let dense = reconstruct(shape, cores)?;
    finish(shape, tt, &dense)
}

fn finish(template: &TtShape, tt: TtTensor, reference: &Tensor) -> Result<Decomposition> {
    let shape = template.with_ranks(Ranks::PerBond(tt.ranks.clone()))?;
    let device = reference.device();
    let dtype = reference.dtype();
    let cores: Vec<Tensor> = tt
        .cores
        .iter()
        .enumerate()
        .map(|(k, data)| {
            let (a, s, b) = shape.core_shape(k);
            Tensor::from_vec(data.clone(), (a, s, b), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)
        })
        .collect::<candle_core::Result<_>>()?;
    let cores64: Vec<Tensor> = tt
        .cores
        .iter()
        .enumerate()
        .map(|(k, data)| Tensor::from_vec(data.clone(), shape.core_shape(k), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    let approx = reconstruct(&shape, &cores64)?;
    let reference = reference.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let ref_norm = reference.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let err = (approx - &reference)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt();
    let rel_error = if ref_norm > 0.0 { err / ref_norm } else { err };
    Ok(Decomposition {
        shape,
        cores,
        rel_error,
    })
}

/// Singular values of a matrix `w: (rows, cols)`, largest first, computed in f64.
///
/// # Errors
/// `w` not 2-D; [`Error::SvdFailed`] if the SVD does not converge.
pub fn singular_values(w: &Tensor) -> Result<Vec<f64>> {
    let (rows, cols) = w.dims2()?;
    let data = w
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let svd = mat(&data, rows, cols)
        .thin_svd()
        .map_err(|_| Error::SvdFailed {
            op: "singular values",
            rows,
            cols,
        })?;
    let s = svd.S().column_vector();
    Ok((0..s.nrows()).map(|i| s[i]).collect())
}

/// The numerical rank of a `(rows, cols)` matrix stored in f32 from its singular values:
/// how many exceed `σ_max · max(rows, cols) · ε_f32` (NumPy's `matrix_rank` rule).
pub fn numerical_rank(singular_values: &[f64], rows: usize, cols: usize) -> usize {
    let max = singular_values.iter().copied().fold(0.0, f64::max);
    let tol = max * rows.max(cols) as f64 * f64::from(f32::EPSILON);
    singular_values.iter().filter(|&&s| s > tol).count()
}
