//! The three ways to compute ΔW(x) from TT cores (DESIGN §3), on candle tensors so autograd
//! flows through every one of them.
//!
//! - [`reconstruct`]: contract all cores into the dense ΔW (out, in), then `x·ΔWᵀ`.
//! - [`contract`]: sweep x through the input cores down to the splitting bond, then expand
//!   through the output cores, never forming ΔW.
//! - [`fold`]: fold the input cores into A (r, in) and the output cores into B (out, r), so
//!   ΔW = B·A exactly and `ΔW(x) = (x·Aᵀ)·Bᵀ` costs what LoRA of rank r costs.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tt::shape::{TtLayout, TtShape};

/// Which of the three equivalent computations of ΔW(x) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtPath {
    /// Fold cores into (A, B) once per call, then two skinny matmuls (the default).
    #[default]
    Factored,
    /// Sweep the input through the cores without forming ΔW.
    Contract,
    /// Form the dense ΔW, then one matmul.
    Reconstruct,
}

impl TtPath {
    /// The names configs and `--tt-path` use, in [`TtPath::ALL`]'s order.
    pub const NAMES: [&'static str; 3] = ["factored", "contract", "reconstruct"];

    /// Every path, in a fixed order.
    pub const ALL: [TtPath; 3] = [TtPath::Factored, TtPath::Contract, TtPath::Reconstruct];

    /// The kebab-case name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TtPath::Factored => "factored",
            TtPath::Contract => "contract",
            TtPath::Reconstruct => "reconstruct",
        }
    }
}

impl std::fmt::Display for TtPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TtPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        TtPath::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown TT path `{s}`; expected factored, contract or reconstruct")
            })
    }
}

/// A core seen from one side: `flipped` reads `(r_{k-1}, s_k, r_k)` as `(r_k, s_k, r_{k-1})`.
#[derive(Clone, Copy)]
struct Oriented {
    index: usize,
    flipped: bool,
}

fn oriented(cores: &[Tensor], o: Oriented) -> Result<Tensor> {
    let c = &cores[o.index];
    Ok(if o.flipped {
        c.permute((2, 1, 0))?
    } else {
        c.clone()
    })
}

/// Contracts a chain of oriented cores into a `(r_left · Π s, r_right)` matrix whose row index
/// holds the first core's digit as the most significant.
fn chain(cores: &[Tensor], order: &[Oriented]) -> Result<Tensor> {
    let first = oriented(cores, order[0])?;
    let (r0, s0, r1) = first.dims3()?;
    let mut acc = first.reshape((r0 * s0, r1))?;
    for &o in &order[1..] {
        let c = oriented(cores, o)?;
        let (ra, s, rb) = c.dims3()?;
        let rows = acc.dim(0)?;
        acc = acc
            .matmul(&c.reshape((ra, s * rb))?)?
            .reshape((rows * s, rb))?;
    }
    Ok(acc)
}

fn check(shape: &TtShape, cores: &[Tensor]) -> Result<()> {
    let dims: Vec<Vec<usize>> = cores.iter().map(|c| c.dims().to_vec()).collect();
    shape.check_cores(&dims)
}

fn need_split(shape: &TtShape, path: &'static str) -> Result<usize> {
    shape
        .split()
        .map(|s| s.cores_before)
        .ok_or_else(|| no_split(shape, path))
}

fn no_split(shape: &TtShape, path: &'static str) -> Error {
    Error::PathUnavailable {
        path,
        reason: format!(
            "reshape factors {:?} have no prefix multiplying to out_features = {}, so ΔW \
             does not split into B·A; use the reconstruct path",
            shape.core_dims(),
            shape.out_features()
        ),
    }
}

/// Dense ΔW of shape (out, in) from the cores.
///
/// `cores[k]: (r_{k-1}, s_k, r_k)`. Returns `(out_features, in_features)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ttlora::tt::{reconstruct, Ranks, TtShape};
/// let shape = TtShape::new(6, 4, vec![2, 3], vec![2, 2], Ranks::Uniform(2))?;
/// let cores: Vec<Tensor> = (0..shape.num_cores())
///     .map(|k| { let (a, s, b) = shape.core_shape(k); Tensor::ones((a, s, b), candle_core::DType::F32, &Device::Cpu) })
///     .collect::<candle_core::Result<_>>()?;
/// assert_eq!(reconstruct(&shape, &cores)?.dims(), &[4, 6]);
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// A core whose shape does not fit `shape`.
pub fn reconstruct(shape: &TtShape, cores: &[Tensor]) -> Result<Tensor> {
    check(shape, cores)?;
    let d = shape.num_cores();
    let order: Vec<Oriented> = (0..d)
        .map(|index| Oriented {
            index,
            flipped: false,
        })
        .collect();
    let full = chain(cores, &order)?;
    let (out_f, in_f) = (shape.out_features(), shape.in_features());
    match shape.layout() {
        TtLayout::Reshape => Ok(full.reshape((out_f, in_f))?),
        TtLayout::InputOutput => {
            // Core order is (i_1..i_p, o_q..o_1); ΔW wants (o_q..o_1, i_p..i_1).
            let p = shape.in_factors().len();
            let perm: Vec<usize> = (p..d).chain((0..p).rev()).collect();
            Ok(full
                .reshape(shape.core_dims())?
                .permute(perm)?
                .reshape((out_f, in_f))?)
        }
    }
}

/// The two factors of ΔW = B·A: `A: (r, in)` and `B: (out, r)`, r the splitting bond's rank.
#[derive(Debug, Clone)]
pub struct Folded {
    /// A, shape (r, in): the input cores folded together.
    pub a: Tensor,
    /// B, shape (out, r): the output cores folded together.
    pub b: Tensor,
}

/// Folds the input cores into A (r, in) and the output cores into B (out, r), ΔW = B·A.
///
/// # Errors
/// A core whose shape does not fit; a reshape layout without a splitting bond.
pub fn fold(shape: &TtShape, cores: &[Tensor]) -> Result<Folded> {
    check(shape, cores)?;
    let r = shape.ranks()[need_split(shape, "factored")?];
    let (out_f, in_f) = (shape.out_features(), shape.in_features());
    let (a_side, b_side) = shape
        .fold_sides()
        .ok_or_else(|| no_split(shape, "factored"))?;
    let b_order: Vec<Oriented> = b_side
        .map(|index| Oriented {
            index,
            flipped: false,
        })
        .collect();
    let (a, b) = match shape.layout() {
        TtLayout::InputOutput => {
            // Input digits run least significant first in core order, so A reads them back
            // from the bond: cores p..1, each flipped. B's chain ends in the output index.
            let a_order: Vec<Oriented> = a_side
                .rev()
                .map(|index| Oriented {
                    index,
                    flipped: true,
                })
                .collect();
            let a = chain(cores, &a_order)?.reshape((r, in_f))?;
            let b = chain(cores, &b_order)?.reshape((r, out_f))?.t()?;
            (a, b)
        }
        TtLayout::Reshape => {
            let a_order: Vec<Oriented> = a_side
                .map(|index| Oriented {
                    index,
                    flipped: false,
                })
                .collect();
            let b = chain(cores, &b_order)?.reshape((out_f, r))?;
            let a = chain(cores, &a_order)?.reshape((r, in_f))?;
            (a, b)
        }
    };
    Ok(Folded { a, b })
}

/// ΔW·x for a batch without forming ΔW: `x: (n, in)` → `(n, out)`.
///
/// # Errors
/// A core whose shape does not fit; x whose last dim is not `in_features`; a reshape layout
/// without a splitting bond.
pub fn contract(shape: &TtShape, cores: &[Tensor], x: &Tensor) -> Result<Tensor> {
    check(shape, cores)?;
    let k = need_split(shape, "contract")?;
    let d = shape.num_cores();
    let (n, in_f) = x.dims2()?;
    check_in(shape, in_f, "contract")?;
    let (sweep, expand, digits_reversed): (Vec<Oriented>, Vec<Oriented>, bool) =
        match shape.layout() {
            TtLayout::InputOutput => (
                (0..k)
                    .map(|index| Oriented {
                        index,
                        flipped: false,
                    })
                    .collect(),
                (k..d)
                    .map(|index| Oriented {
                        index,
                        flipped: false,
                    })
                    .collect(),
                false,
            ),
            TtLayout::Reshape => (
                (k..d)
                    .rev()
                    .map(|index| Oriented {
                        index,
                        flipped: true,
                    })
                    .collect(),
                (0..k)
                    .rev()
                    .map(|index| Oriented {
                        index,
                        flipped: true,
                    })
                    .collect(),
                true,
            ),
        };

    // Sweep: z holds (n, remaining digits.., s_cur, r_prev); contract the last two axes.
    let mut z = x.contiguous()?;
    let mut rest = in_f;
    let mut r_prev = 1;
    for &o in &sweep {
        let c = oriented(cores, o)?;
        let (_, s, r_next) = c.dims3()?;
        rest /= s;
        let c = c.permute((1, 0, 2))?.reshape((s * r_prev, r_next))?;
        z = z.reshape((n * rest, s * r_prev))?.matmul(&c)?;
        r_prev = r_next;
    }

    // Expand: each output core appends one digit, most significant first.
    let mut rows = n;
    let mut digits = Vec::with_capacity(expand.len());
    for &o in &expand {
        let c = oriented(cores, o)?;
        let (ra, s, rb) = c.dims3()?;
        z = z.reshape((rows, ra))?.matmul(&c.reshape((ra, s * rb))?)?;
        rows *= s;
        digits.push(s);
    }
    let out_f = shape.out_features();
    if digits_reversed {
        let mut dims = vec![n];
        dims.extend_from_slice(&digits);
        let perm: Vec<usize> = std::iter::once(0).chain((1..=digits.len()).rev()).collect();
        Ok(z.reshape(dims)?.permute(perm)?.reshape((n, out_f))?)
    } else {
        Ok(z.reshape((n, out_f))?)
    }
}

/// ΔW(x) = x·ΔWᵀ by the chosen path, for `x: (…, in)` → `(…, out)`. No α scaling here.
///
/// # Errors
/// As the chosen path's function.
pub fn apply(shape: &TtShape, cores: &[Tensor], x: &Tensor, path: TtPath) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&in_f, lead)) = dims.split_last() else {
        return Err(Error::TensorShape {
            op: "tt apply",
            expected: vec![shape.in_features()],
            got: dims,
        });
    };
    check_in(shape, in_f, "tt apply")?;
    let n: usize = lead.iter().product();
    let x2 = x.reshape((n, in_f))?;
    let y = match path {
        TtPath::Factored => {
            let f = fold(shape, cores)?;
            x2.matmul(&f.a.t()?)?.matmul(&f.b.t()?)?
        }
        TtPath::Contract => contract(shape, cores, &x2)?,
        TtPath::Reconstruct => x2.matmul(&reconstruct(shape, cores)?.t()?)?,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(shape.out_features());
    Ok(y.reshape(out_dims)?)
}

fn check_in(shape: &TtShape, in_f: usize, op: &'static str) -> Result<()> {
    if in_f != shape.in_features() {
        return Err(Error::TensorShape {
            op,
            expected: vec![shape.in_features()],
            got: vec![in_f],
        });
    }
    Ok(())
}
