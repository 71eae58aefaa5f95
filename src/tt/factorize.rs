//! Automatic factorization: proposes input|output TT shapes for an (out, in) matrix that
//! minimise parameters at a given rank, or fit a parameter budget.
//!
//! With uniform rank r, a side of c ≥ 2 cores costs `r·s_outer + r²·Σ(other factors)`: only the
//! outermost core touches a unit boundary rank, so the largest factor belongs there (at both
//! ends of the train) and the rest should be small.

use crate::error::{Error, Result};
use crate::tt::shape::{Ranks, TtShape};

/// How many of the cheapest arrangements per side are combined into whole-train candidates.
const PER_SIDE_KEEP: usize = 6;

/// Most cores on one side that the planner considers.
pub const MAX_CORES_PER_SIDE: usize = 8;

/// All multisets of `count` factors ≥ 2 whose product is `n`, each sorted descending.
///
/// ```
/// let mut f = ttlora::tt::factor_multisets(12, 2);
/// f.sort();
/// assert_eq!(f, vec![vec![4, 3], vec![6, 2]]);
/// ```
pub fn factor_multisets(n: usize, count: usize) -> Vec<Vec<usize>> {
    fn go(n: usize, count: usize, max: usize, acc: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if count == 1 {
            if n >= 2 && n <= max {
                acc.push(n);
                out.push(acc.clone());
                acc.pop();
            }
            return;
        }
        // Factors are taken in non-increasing order, so each multiset appears once.
        for f in divisors(n) {
            if f >= 2 && f <= max && n / f >= 2 {
                acc.push(f);
                go(n / f, count - 1, f, acc, out);
                acc.pop();
            }
        }
    }
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    go(n, count, n, &mut Vec::new(), &mut out);
    out
}

/// Divisors of n in increasing order.
fn divisors(n: usize) -> Vec<usize> {
    let mut small = Vec::new();
    let mut large = Vec::new();
    let mut d = 1;
    while d * d <= n {
        if n.is_multiple_of(d) {
            small.push(d);
            if d * d != n {
                large.push(n / d);
            }
        }
        d += 1;
    }
    small.extend(large.into_iter().rev());
    small
}

/// Parameters of one side (c cores, factors outermost first) at uniform rank r.
fn side_params(factors: &[usize], rank: usize) -> usize {
    match factors {
        [] => 0,
        [only] => only * rank,
        [outer, rest @ ..] => outer * rank + rank * rank * rest.iter().sum::<usize>(),
    }
}

/// The cheapest arrangements of `n` into `count` factors, outermost (largest) first.
fn best_sides(n: usize, count: usize, rank: usize) -> Vec<Vec<usize>> {
    let mut sides = factor_multisets(n, count);
    sides.sort_by_key(|f| (side_params(f, rank), std::cmp::Reverse(f[0])));
    sides.truncate(PER_SIDE_KEEP);
    sides
}

/// Number of prime factors of n, with multiplicity (the most cores a side can have).
fn prime_factor_count(mut n: usize) -> usize {
    let mut count = 0;
    let mut p = 2;
    while p * p <= n {
        while n.is_multiple_of(p) {
            n /= p;
            count += 1;
        }
        p += 1;
    }
    if n > 1 {
        count += 1;
    }
    count
}

/// Candidate input|output shapes at uniform `rank`, cheapest first.
///
/// `total_cores` restricts to trains of exactly that many cores (input + output); otherwise all
/// counts from 2 up to the prime-factor limit (at most [`MAX_CORES_PER_SIDE`] a side) appear.
///
/// ```
/// let c = ttlora::tt::propose_shapes(768, 768, 5, Some(6))?;
/// assert_eq!(c[0].num_cores(), 6);
/// assert!(c[0].num_params() <= 990); // at least as good as the paper's [64,4,3|3,4,64]
/// # Ok::<(), ttlora::Error>(())
/// ```
///
/// # Errors
/// A zero size or rank, or a core count no factorization reaches.
pub fn propose_shapes(
    in_features: usize,
    out_features: usize,
    rank: usize,
    total_cores: Option<usize>,
) -> Result<Vec<TtShape>> {
    check_sizes(in_features, out_features, rank)?;
    let max_p = prime_factor_count(in_features).clamp(1, MAX_CORES_PER_SIDE);
    let max_q = prime_factor_count(out_features).clamp(1, MAX_CORES_PER_SIDE);
    let mut out = Vec::new();
    for p in 1..=max_p {
        for q in 1..=max_q {
            if total_cores.is_some_and(|d| d != p + q) {
                continue;
            }
            let ins = best_sides(in_features, p, rank);
            let outs = best_sides(out_features, q, rank);
            for i in &ins {
                for o in &outs {
                    out.push(TtShape::new(
                        in_features,
                        out_features,
                        i.clone(),
                        o.clone(),
                        Ranks::Uniform(rank),
                    )?);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::BadFactors {
            what: "core count",
            reason: "no factorization of in/out features has this many cores",
            factors: total_cores.into_iter().collect(),
        });
    }
    out.sort_by_key(|s| (s.num_params(), s.num_cores()));
    Ok(out)
}

/// The cheapest shape for each total core count, fewest cores first.
///
/// # Errors
/// As [`propose_shapes`].
pub fn best_per_core_count(
    in_features: usize,
    out_features: usize,
    rank: usize,
) -> Result<Vec<TtShape>> {
    let all = propose_shapes(in_features, out_features, rank, None)?;
    let mut best: Vec<TtShape> = Vec::new();
    for s in all {
        if !best.iter().any(|b| b.num_cores() == s.num_cores()) {
            best.push(s);
        }
    }
    best.sort_by_key(|s| s.num_cores());
    Ok(best)
}

/// For each total core count, the highest uniform rank whose cheapest shape fits in `budget`
/// parameters, highest rank first.
///
/// # Errors
/// A zero size or budget, or a budget too small for rank 1 at any core count.
pub fn fit_budget(
    in_features: usize,
    out_features: usize,
    budget: usize,
    total_cores: Option<usize>,
) -> Result<Vec<TtShape>> {
    check_sizes(in_features, out_features, 1)?;
    let mut found: Vec<TtShape> = Vec::new();
    let mut rank = 1;
    loop {
        let candidates = propose_shapes(in_features, out_features, rank, total_cores)?;
        let mut any = false;
        for s in candidates.into_iter().filter(|s| s.num_params() <= budget) {
            any = true;
            if let Some(slot) = found.iter_mut().find(|f| f.num_cores() == s.num_cores()) {
                if s.split_rank() > slot.split_rank()
                    || (s.split_rank() == slot.split_rank() && s.num_params() < slot.num_params())
                {
                    *slot = s;
                }
            } else {
                found.push(s);
            }
        }
        if !any {
            break;
        }
        rank += 1;
    }
    if found.is_empty() {
        return Err(Error::BadTolerance {
            op: "shape planner",
            reason: format!(
                "no TT shape of a {out_features}x{in_features} matrix fits in {budget} parameters"
            ),
        });
    }
    found.sort_by_key(|s| (std::cmp::Reverse(s.split_rank()), s.num_params()));
    Ok(found)
}

fn check_sizes(in_features: usize, out_features: usize, rank: usize) -> Result<()> {
    if in_features < 2 || out_features < 2 || rank == 0 {
        return Err(Error::BadFactors {
            what: "shape planner",
            reason: "in and out features must be >= 2 and the rank >= 1",
            factors: vec![in_features, out_features, rank],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multisets_are_complete_and_unique() {
        let mut f = factor_multisets(24, 3);
        f.sort();
        assert_eq!(f, vec![vec![4, 3, 2], vec![6, 2, 2]]);
        for m in factor_multisets(768, 4) {
            assert_eq!(m.iter().product::<usize>(), 768);
            assert!(m.windows(2).all(|w| w[0] >= w[1]));
        }
        assert_eq!(factor_multisets(7, 2), Vec::<Vec<usize>>::new());
        assert_eq!(factor_multisets(7, 1), vec![vec![7]]);
    }

    #[test]
    fn largest_factor_sits_at_both_ends() {
        let best = propose_shapes(768, 768, 5, Some(6)).unwrap();
        let s = &best[0];
        let dims = s.core_dims();
        assert_eq!(dims[0], *dims[..3].iter().max().unwrap());
        assert_eq!(dims[5], *dims[3..].iter().max().unwrap());
        // Brute force: no 3|3 arrangement of 768 is cheaper.
        let brute = factor_multisets(768, 3)
            .into_iter()
            .map(|m| side_params(&m, 5))
            .min()
            .unwrap();
        assert_eq!(s.num_params(), 2 * brute);
    }

    #[test]
    fn candidates_are_sorted_and_valid() {
        let c = propose_shapes(2048, 512, 5, None).unwrap();
        assert!(c.windows(2).all(|w| w[0].num_params() <= w[1].num_params()));
        for s in &c {
            assert_eq!(s.in_factors().iter().product::<usize>(), 2048);
            assert_eq!(s.out_factors().iter().product::<usize>(), 512);
        }
    }

    #[test]
    fn budget_picks_highest_rank_that_fits() {
        let fits = fit_budget(768, 768, 1000, Some(6)).unwrap();
        let top = &fits[0];
        assert!(top.num_params() <= 1000);
        let r = top.split_rank().unwrap();
        let next = propose_shapes(768, 768, r + 1, Some(6)).unwrap();
        assert!(next[0].num_params() > 1000);
    }

    #[test]
    fn impossible_core_count_is_an_error() {
        assert!(propose_shapes(7, 7, 2, Some(5)).is_err());
        assert!(fit_budget(768, 768, 3, None).is_err());
    }
}
