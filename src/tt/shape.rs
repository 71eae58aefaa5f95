//! [`TtShape`]: how a weight update of shape (out, in) is laid out as a tensor train.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the (out, in) matrix is mapped onto the train's cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TtLayout {
    /// Cores `in_factors ++ reverse(out_factors)` (DESIGN §3; the default). The bond between the
    /// last input core and the first output core splits ΔW = B·A exactly.
    #[default]
    InputOutput,
    /// Any factor list whose product is out·in, over the row-major flattened (out, in) matrix,
    /// core 1 holding the most significant digit (the paper's original 2024 code).
    Reshape,
}

impl fmt::Display for TtLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TtLayout::InputOutput => "input-output",
            TtLayout::Reshape => "reshape",
        })
    }
}

/// TT ranks: one rank for every inner bond, or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranks {
    /// The same rank r on every inner bond: `[1, r, …, r, 1]`.
    Uniform(usize),
    /// Explicit ranks: either the `d - 1` inner bonds, or all `d + 1` with unit ends.
    PerBond(Vec<usize>),
}

/// Where the train splits into an input side and an output side (ΔW = B·A at that bond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    /// Number of cores before the splitting bond.
    pub cores_before: usize,
}

/// The shape of a tensor train representing a weight update ΔW of shape (out, in).
///
/// `core_dims = [s_1, …, s_d]`, `ranks = [r_0, …, r_d]` with `r_0 = r_d = 1`; core k has shape
/// `(r_{k-1}, s_k, r_k)`. In the [`TtLayout::InputOutput`] layout `in_factors = [m_1, …, m_p]`
/// and `out_factors = [n_1, …, n_q]` are both least-significant digit first, and
/// `core_dims = in_factors ++ reverse(out_factors)`.
///
/// ```
/// use ttlora::tt::{Ranks, TtShape};
/// let s = TtShape::new(768, 768, vec![64, 4, 3], vec![64, 4, 3], Ranks::Uniform(5))?;
/// assert_eq!(s.core_dims(), &[64, 4, 3, 3, 4, 64]);
/// assert_eq!(s.num_params(), 990);
/// # Ok::<(), ttlora::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtShape {
    layout: TtLayout,
    in_features: usize,
    out_features: usize,
    in_factors: Vec<usize>,
    out_factors: Vec<usize>,
    core_dims: Vec<usize>,
    ranks: Vec<usize>,
    split: Option<Split>,
}

impl TtShape {
    /// Input|output layout: `in_factors` multiply to `in_features`, `out_factors` to
    /// `out_features`, both written least-significant digit first.
    ///
    /// # Errors
    /// A factor list that is empty, holds a 0, or does not multiply out; bad ranks.
    pub fn new(
        in_features: usize,
        out_features: usize,
        in_factors: Vec<usize>,
        out_factors: Vec<usize>,
        ranks: Ranks,
    ) -> Result<Self> {
        check_factors("input factors", &in_factors, in_features)?;
        check_factors("output factors", &out_factors, out_features)?;
        let core_dims: Vec<usize> = in_factors
            .iter()
            .chain(out_factors.iter().rev())
            .copied()
            .collect();
        let ranks = expand_ranks(ranks, core_dims.len())?;
        let split = Some(Split {
            cores_before: in_factors.len(),
        });
        Ok(Self {
            layout: TtLayout::InputOutput,
            in_features,
            out_features,
            in_factors,
            out_factors,
            core_dims,
            ranks,
            split,
        })
    }

    /// Input|output layout from the core order the paper writes, `[m_1..m_p | n_q..n_1]`.
    ///
    /// # Errors
    /// As [`TtShape::new`].
    pub fn from_core_order(
        in_features: usize,
        out_features: usize,
        input_cores: &[usize],
        output_cores: &[usize],
        ranks: Ranks,
    ) -> Result<Self> {
        let out_factors = output_cores.iter().rev().copied().collect();
        Self::new(
            in_features,
            out_features,
            input_cores.to_vec(),
            out_factors,
            ranks,
        )
    }

    /// Reshape layout: `factors` multiply to `out_features * in_features` and cover the row-major
    /// flattened (out, in) matrix, the first core holding the most significant digit.
    ///
    /// # Errors
    /// A factor list that is empty, holds a 0, or does not multiply to out·in; bad ranks.
    pub fn reshape(
        in_features: usize,
        out_features: usize,
        factors: Vec<usize>,
        ranks: Ranks,
    ) -> Result<Self> {
        let total = in_features
            .checked_mul(out_features)
            .ok_or(Error::BadFactors {
                what: "reshape factors",
                reason: "out*in overflows",
                factors: factors.clone(),
            })?;
        check_factors("reshape factors", &factors, total)?;
        let ranks = expand_ranks(ranks, factors.len())?;
        // The train splits into B·A where a prefix of cores covers exactly the output index.
        let mut prefix = 1usize;
        let mut split = None;
        for (k, &s) in factors.iter().enumerate() {
            prefix *= s;
            if prefix == out_features && k + 1 < factors.len() {
                split = Some(Split {
                    cores_before: k + 1,
                });
                break;
            }
            if prefix > out_features {
                break;
            }
        }
        Ok(Self {
            layout: TtLayout::Reshape,
            in_features,
            out_features,
            in_factors: Vec::new(),
            out_factors: Vec::new(),
            core_dims: factors,
            ranks,
            split,
        })
    }

    /// The same shape with other ranks.
    ///
    /// # Errors
    /// Bad ranks for this number of cores.
    pub fn with_ranks(&self, ranks: Ranks) -> Result<Self> {
        let mut s = self.clone();
        s.ranks = expand_ranks(ranks, self.core_dims.len())?;
        Ok(s)
    }

    /// The layout.
    pub fn layout(&self) -> TtLayout {
        self.layout
    }
    /// Input features (columns of ΔW).
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Output features (rows of ΔW).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// Input factors `[m_1..m_p]`, least significant first (empty in the reshape layout).
    pub fn in_factors(&self) -> &[usize] {
        &self.in_factors
    }
    /// Output factors `[n_1..n_q]`, least significant first (empty in the reshape layout).
    pub fn out_factors(&self) -> &[usize] {
        &self.out_factors
    }
    /// Mode sizes `[s_1..s_d]` in core order.
    pub fn core_dims(&self) -> &[usize] {
        &self.core_dims
    }
    /// Ranks `[r_0..r_d]`, `r_0 = r_d = 1`.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }
    /// Number of cores d.
    pub fn num_cores(&self) -> usize {
        self.core_dims.len()
    }
    /// Shape `(r_{k-1}, s_k, r_k)` of core k (0-based).
    pub fn core_shape(&self, k: usize) -> (usize, usize, usize) {
        (self.ranks[k], self.core_dims[k], self.ranks[k + 1])
    }
    /// Rank of the bond where ΔW = B·A splits, if the shape has one.
    pub fn split_rank(&self) -> Option<usize> {
        self.split.map(|s| self.ranks[s.cores_before])
    }
    pub(crate) fn split(&self) -> Option<Split> {
        self.split
    }

    /// The cores that fold into A (r, in) and those that fold into B (out, r), in core order,
    /// if the shape has a splitting bond: input | output cores in the input-output layout,
    /// the cores after | before the bond in the reshape layout.
    pub fn fold_sides(&self) -> Option<(Range<usize>, Range<usize>)> {
        let (k, d) = (self.split?.cores_before, self.num_cores());
        Some(match self.layout {
            TtLayout::InputOutput => (0..k, k..d),
            TtLayout::Reshape => (k..d, 0..k),
        })
    }

    /// Trainable parameters: Σ_k r_{k-1} s_k r_k.
    pub fn num_params(&self) -> usize {
        (0..self.num_cores())
            .map(|k| {
                let (a, s, b) = self.core_shape(k);
                a * s * b
            })
            .sum()
    }

    /// Parameters divided by those of LoRA of rank `lora_rank` on the same matrix.
    pub fn ratio_to_lora(&self, lora_rank: usize) -> f64 {
        self.num_params() as f64
            / lora_params(self.in_features, self.out_features, lora_rank) as f64
    }

    /// Checks that `shapes[k]` is core k's shape `(r_{k-1}, s_k, r_k)`.
    ///
    /// # Errors
    /// [`Error::CoreShape`] naming the first core that does not fit.
    pub fn check_cores(&self, shapes: &[Vec<usize>]) -> Result<()> {
        if shapes.len() != self.num_cores() {
            return Err(Error::BadRanks {
                reason: "number of cores does not match the shape",
                expected: format!("{} cores", self.num_cores()),
                got: shapes.iter().map(|s| s.len()).collect(),
            });
        }
        for (k, got) in shapes.iter().enumerate() {
            let (a, s, b) = self.core_shape(k);
            if got.as_slice() != [a, s, b] {
                return Err(Error::CoreShape {
                    index: k,
                    expected: vec![a, s, b],
                    got: got.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Parameters of LoRA rank r on an (out, in) matrix: r·(in + out).
pub fn lora_params(in_features: usize, out_features: usize, rank: usize) -> usize {
    rank * (in_features + out_features)
}

impl fmt::Display for TtShape {
    /// Core order with `|` at the input/output split, e.g. `[64,4,3|3,4,64] r=5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |xs: &[usize]| {
            xs.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self.split {
            Some(s) if self.layout == TtLayout::InputOutput => write!(
                f,
                "[{}|{}]",
                join(&self.core_dims[..s.cores_before]),
                join(&self.core_dims[s.cores_before..])
            )?,
            _ => write!(f, "[{}]", join(&self.core_dims))?,
        }
        let inner = &self.ranks[1..self.ranks.len() - 1];
        match inner.first() {
            Some(&r) if inner.iter().all(|&x| x == r) => write!(f, " r={r}"),
            Some(_) => write!(f, " r=[{}]", join(inner)),
            None => Ok(()),
        }
    }
}

fn check_factors(what: &'static str, factors: &[usize], expected: usize) -> Result<()> {
    if factors.is_empty() {
        return Err(Error::BadFactors {
            what,
            reason: "need at least one factor",
            factors: factors.to_vec(),
        });
    }
    if factors.contains(&0) {
        return Err(Error::BadFactors {
            what,
            reason: "factors must be >= 1",
            factors: factors.to_vec(),
        });
    }
    let product = factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .unwrap_or(usize::MAX);
    if product != expected {
        return Err(Error::FactorProduct {
            what,
            factors: factors.to_vec(),
            product,
            expected,
        });
    }
    Ok(())
}

fn expand_ranks(ranks: Ranks, num_cores: usize) -> Result<Vec<usize>> {
    let full = match ranks {
        Ranks::Uniform(r) => {
            if r == 0 {
                return Err(Error::BadRanks {
                    reason: "ranks must be >= 1",
                    expected: "a rank >= 1".into(),
                    got: vec![r],
                });
            }
            let mut v = vec![r; num_cores + 1];
            v[0] = 1;
            v[num_cores] = 1;
            v
        }
        Ranks::PerBond(v) if v.len() + 1 == num_cores => {
            let mut full = Vec::with_capacity(num_cores + 1);
            full.push(1);
            full.extend_from_slice(&v);
            full.push(1);
            full
        }
        Ranks::PerBond(v) if v.len() == num_cores + 1 => {
            if v[0] != 1 || v[num_cores] != 1 {
                return Err(Error::BadRanks {
                    reason: "boundary ranks must be 1",
                    expected: format!("[1, ..., 1] with {} entries", num_cores + 1),
                    got: v,
                });
            }
            v
        }
        Ranks::PerBond(v) => {
            return Err(Error::BadRanks {
                reason: "wrong number of ranks",
                expected: format!(
                    "{} inner ranks or {} with the unit ends for {num_cores} cores",
                    num_cores.saturating_sub(1),
                    num_cores + 1
                ),
                got: v,
            });
        }
    };
    if full.contains(&0) {
        return Err(Error::BadRanks {
            reason: "ranks must be >= 1",
            expected: "every rank >= 1".into(),
            got: full,
        });
    }
    Ok(full)
}

/// Parses `"64,4,3|3,4,64"` (core order) into (input cores, output cores); without `|` the
/// second list is empty.
///
/// # Errors
/// A piece that is not a positive integer.
pub fn parse_core_order(text: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
    let mut parts = trimmed.splitn(2, '|');
    let left = parse_list(parts.next().unwrap_or(""))?;
    let right = match parts.next() {
        Some(p) => parse_list(p)?,
        None => Vec::new(),
    };
    Ok((left, right))
}

/// Parses a comma-separated list of positive integers.
///
/// # Errors
/// [`Error::BadFactors`] if a piece does not parse.
pub fn parse_list(text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<usize>().map_err(|_| Error::BadFactors {
                what: "factor list",
                reason: "every entry must be a positive integer",
                factors: Vec::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_parameter_counts() {
        let s = TtShape::from_core_order(768, 768, &[64, 4, 3], &[3, 4, 64], Ranks::Uniform(5))
            .unwrap();
        assert_eq!(s.num_params(), 990);
        assert_eq!(24 * s.num_params(), 23_760);
        assert_eq!(24 * lora_params(768, 768, 8), 294_912);

        let s = TtShape::reshape(768, 768, vec![12, 8, 8, 8, 8, 12], Ranks::Uniform(5)).unwrap();
        assert_eq!(s.num_params(), 920);
        assert_eq!(s.split_rank(), Some(5));

        let q = TtShape::from_core_order(
            4096,
            4096,
            &[16, 4, 4, 4, 2, 2],
            &[2, 2, 4, 4, 4, 16],
            Ranks::Uniform(10),
        )
        .unwrap();
        assert_eq!(q.num_params(), 3_520);
        let v = TtShape::from_core_order(
            4096,
            1024,
            &[16, 4, 4, 4, 2, 2],
            &[2, 2, 4, 4, 16],
            Ranks::Uniform(10),
        )
        .unwrap();
        assert_eq!(v.num_params(), 3_120);
        assert_eq!(32 * (q.num_params() + v.num_params()), 212_480);
        assert_eq!(
            32 * (lora_params(4096, 4096, 8) + lora_params(4096, 1024, 8)),
            3_407_872
        );
    }

    #[test]
    fn core_order_and_display() {
        let s = TtShape::new(
            2048,
            512,
            vec![16, 16, 4, 2],
            vec![16, 16, 2],
            Ranks::Uniform(5),
        )
        .unwrap();
        assert_eq!(s.core_dims(), &[16, 16, 4, 2, 2, 16, 16]);
        assert_eq!(s.to_string(), "[16,16,4,2|2,16,16] r=5");
        let s = s
            .with_ranks(Ranks::PerBond(vec![2, 3, 4, 5, 6, 7]))
            .unwrap();
        assert_eq!(s.ranks(), &[1, 2, 3, 4, 5, 6, 7, 1]);
        assert_eq!(s.split_rank(), Some(5));
        assert_eq!(s.to_string(), "[16,16,4,2|2,16,16] r=[2,3,4,5,6,7]");
    }

    #[test]
    fn wrong_input_product_names_expected_and_given() {
        let err = TtShape::new(768, 768, vec![64, 4, 4], vec![64, 4, 3], Ranks::Uniform(5))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "input factors: factors [64, 4, 4] multiply to 1024, expected 768"
        );
    }

    #[test]
    fn wrong_output_product_is_reported() {
        let err = TtShape::new(768, 512, vec![64, 4, 3], vec![64, 4, 3], Ranks::Uniform(5))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "output factors: factors [64, 4, 3] multiply to 768, expected 512"
        );
    }

    #[test]
    fn wrong_reshape_product_is_reported() {
        let err = TtShape::reshape(768, 768, vec![12, 8, 8, 8, 8, 8], Ranks::Uniform(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 589824"), "{err}");
        assert!(err.contains("multiply to 393216"), "{err}");
    }

    #[test]
    fn zero_rank_is_rejected() {
        let err = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::Uniform(0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "tt ranks: ranks must be >= 1; expected a rank >= 1, got [0]"
        );
        let err = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::PerBond(vec![2, 0, 2]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ranks must be >= 1"), "{err}");
    }

    #[test]
    fn non_unit_boundary_rank_is_rejected() {
        let err = TtShape::new(
            6,
            6,
            vec![2, 3],
            vec![3, 2],
            Ranks::PerBond(vec![2, 2, 2, 2, 1]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("boundary ranks must be 1"), "{err}");
        assert!(err.contains("got [2, 2, 2, 2, 1]"), "{err}");
    }

    #[test]
    fn wrong_rank_count_is_rejected() {
        let err = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::PerBond(vec![2, 2]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "tt ranks: wrong number of ranks; expected 3 inner ranks or 5 with the unit ends for 4 cores, got [2, 2]"
        );
    }

    #[test]
    fn empty_and_zero_factors_are_rejected() {
        let err = TtShape::new(6, 6, vec![], vec![6], Ranks::Uniform(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("need at least one factor"), "{err}");
        let err = TtShape::new(6, 6, vec![0, 6], vec![6], Ranks::Uniform(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("factors must be >= 1"), "{err}");
    }

    #[test]
    fn parse_core_order_reads_both_sides() {
        let (a, b) = parse_core_order("[64,4,3 | 3,4,64]").unwrap();
        assert_eq!(a, vec![64, 4, 3]);
        assert_eq!(b, vec![3, 4, 64]);
        assert!(parse_core_order("64,x").is_err());
    }

    #[test]
    fn reshape_without_split_has_no_split_rank() {
        let s = TtShape::reshape(6, 4, vec![8, 3], Ranks::Uniform(2)).unwrap();
        assert_eq!(s.split_rank(), None);
    }
}
