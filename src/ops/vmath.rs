//! Vectorised f32 math for the fused kernels: `exp` as a branch-free polynomial (so loops over
//! it compile to SIMD instead of a libm call per element), and the row loops built on it
//! (softmax, `exp(x − m)` with its sum, GELU and its slope), each compiled for AVX-512,
//! AVX2 + FMA and the baseline, the widest the CPU has chosen at run time.
//!
//! Accuracy: [`exp`] is within 2 ulp of `f32::exp` from `ln(2^-126)` ≈ −87.34 to
//! `ln(f32::MAX)` ≈ 88.72 (tested), 0 below (libm returns subnormals down to about −103.97),
//! `+∞` above, NaN for NaN, which is what softmax and GELU need from it. Every tier computes
//! the same operations in the same order (no FMA contraction), so the tiers agree to the bit
//! (tested on the tiers the test machine has).

/// Defines `$name` over the body, compiled three times (AVX-512, AVX2 + FMA, baseline) and
/// dispatched on the CPU's features at each call (std caches the detection: a load and a test).
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                let level = $crate::ops::vmath::simd_level();
                if level >= $crate::ops::vmath::SimdLevel::V4 {
                    // SAFETY: the CPU has the features `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if level >= $crate::ops::vmath::SimdLevel::V3 {
                    // SAFETY: the CPU has the features `v3` is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// The vector extensions the loops are compiled for, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SimdLevel {
    /// No extension beyond the target's baseline.
    Baseline,
    /// AVX2 and FMA.
    V3,
    /// AVX-512 F as well.
    V4,
}

/// The widest level the CPU has (std caches the detection), capped in tests by
/// [`with_level`] to run each tier.
#[inline]
pub(crate) fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    let level = {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            if has!("avx512f") {
                SimdLevel::V4
            } else {
                SimdLevel::V3
            }
        } else {
            SimdLevel::Baseline
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let level = SimdLevel::Baseline;
    #[cfg(test)]
    let level = level.min(tests::CAP.with(|c| c.get()));
    level
}

/// Partial sums a row reduction keeps (a multiple of every f32 vector width), so that its
/// max and sum vectorise without reassociating one accumulator.
pub(crate) const LANES: usize = 16;

/// `e^x` in f32: `2^n · p(r)` with `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, and Cephes' degree-6
/// polynomial for `p`; 0 below `ln(2^-126)`, `+∞` above `ln(f32::MAX)`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_54;
    // 1.5 · 2^23: adding it rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n in two halves from their exponent bits: n ∈ [-126, 128] after the clamp, and 2^128
    // is not an f32 while y · 2^128 can be.
    let n = n as i32;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let v = y * pow2(n >> 1) * pow2(n - (n >> 1));
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        v
    }
}

multiversion! {
    /// `row[i] ← e^(row[i] − m)`, returning their sum.
    pub(crate) fn exp_shifted_sum(row: &mut [f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (v, a) in chunk.iter_mut().zip(acc.iter_mut()) {
                *v = exp(*v - m);
                *a += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp(*v - m);
            sum += *v;
        }
        sum + acc.iter().sum::<f32>()
    }
}

multiversion! {
    /// The largest element (`-∞` for an empty row; NaNs are passed over, and the exp that
    /// follows turns them into NaN rows anyway).
    pub(crate) fn max(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (&v, a) in chunk.iter().zip(acc.iter_mut()) {
                *a = if v > *a { v } else { *a };
            }
        }
        let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
    }
}

/// `row ← softmax(row)`: the tests' reference composition (the kernels get the same one from
/// `rows::Real::softmax_in_place`, or attention's masked rows, whose f32 pieces are [`max`]
/// and [`exp_shifted_sum`]).
#[cfg(test)]
fn softmax(row: &mut [f32]) {
    let m = max(row);
    let inv = 1.0 / exp_shifted_sum(row, m);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `(Φ(x), φ(x))` of the standard normal: erf by Abramowitz & Stegun 7.1.26 (error ≤ 1.5e-7),
/// whose `e^(−x²/2)` factor, over √(2π), is also the density.
#[inline(always)]
pub(crate) fn cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp(-z * z);
    let erf_abs = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), e * INV_SQRT_2PI)
}

multiversion! {
    /// `y = x·Φ(x)`, element-wise.
    pub(crate) fn gelu(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * cdf_pdf(v).0;
        }
    }
}

multiversion! {
    /// `dx = dy ∘ (Φ(x) + x·φ(x))`, element-wise.
    pub(crate) fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, pdf) = cdf_pdf(v);
            *o = g * (cdf + v * pdf);
        }
    }
}

/// `(σ(g), g·σ(g))`.
#[inline(always)]
fn sigmoid_silu(g: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp(-g));
    (s, g * s)
}

multiversion! {
    /// `y = silu(g) ∘ u`, element-wise.
    pub(crate) fn swiglu(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((o, &gv), &uv) in y.iter_mut().zip(g).zip(u) {
            *o = sigmoid_silu(gv).1 * uv;
        }
    }
}

multiversion! {
    /// `dg = dy ∘ u ∘ σ(g)·(1 + g·(1 − σ(g)))` and `du = dy ∘ silu(g)`, element-wise.
    pub(crate) fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        let outs = dg.iter_mut().zip(du.iter_mut());
        for ((((og, ou), &gv), &uv), &d) in outs.zip(g).zip(u).zip(dy) {
            let (s, silu) = sigmoid_silu(gv);
            *og = d * uv * (s + silu * (1.0 - s));
            *ou = d * silu;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// The widest tier this test thread's loops may take.
        pub(super) static CAP: Cell<SimdLevel> = const { Cell::new(SimdLevel::V4) };
    }

    /// `f`'s result on each tier this machine has, widest first.
    fn on_each_level<R>(f: impl Fn() -> R) -> Vec<(SimdLevel, R)> {
        let have = simd_level();
        [SimdLevel::V4, SimdLevel::V3, SimdLevel::Baseline]
            .into_iter()
            .filter(|&l| l <= have)
            .map(|l| {
                CAP.with(|c| c.set(l));
                let r = f();
                CAP.with(|c| c.set(SimdLevel::V4));
                (l, r)
            })
            .collect()
    }

    #[test]
    fn every_tier_gives_the_same_bits() {
        let row: Vec<f32> = (0..131)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let results = on_each_level(|| {
            let mut sm = row.clone();
            softmax(&mut sm);
            let mut y = vec![0f32; row.len()];
            gelu(&row, &mut y);
            let mut dx = vec![0f32; row.len()];
            gelu_backward(&row, &row, &mut dx);
            let (mut sw, mut dg, mut du) = (
                vec![0f32; row.len()],
                vec![0f32; row.len()],
                vec![0f32; row.len()],
            );
            swiglu(&row, &dx, &mut sw);
            swiglu_backward(&row, &dx, &y, &mut dg, &mut du);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let swi = [bits(&sw), bits(&dg), bits(&du)].concat();
            (bits(&sm), bits(&y), bits(&dx), max(&row).to_bits(), swi)
        });
        assert!(!results.is_empty());
        for (level, r) in &results[1..] {
            assert!(
                *r == results[0].1,
                "{level:?} differs from {:?}",
                results[0].0
            );
        }
    }

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_exact_at_the_edges() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp(x), x.exp()));
            x += 0.000_731;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        // The top of the range: finite at ln(f32::MAX), infinite one step above.
        let top = 88.722_83f32;
        assert!(exp(top).is_finite() && ulps(exp(top), top.exp()) <= 2);
        assert_eq!(exp(f32::from_bits(top.to_bits() + 1)), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn row_loops_match_scalar_code_at_every_length() {
        for n in [0, 1, 5, 16, 17, 40, 131] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let want_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&row), want_max, "n {n}");
            let mut sm = row.clone();
            softmax(&mut sm);
            let sum: f64 = row.iter().map(|&v| ((v - want_max) as f64).exp()).sum();
            for (&got, &v) in sm.iter().zip(&row) {
                let want = ((v - want_max) as f64).exp() / sum;
                assert!((got as f64 - want).abs() < 1e-6 * want.max(1e-3), "n {n}");
            }
            let mut y = vec![0f32; n];
            gelu(&row, &mut y);
            let mut dx = vec![0f32; n];
            gelu_backward(&row, &row, &mut dx);
            for ((&v, &got), &g) in row.iter().zip(&y).zip(&dx) {
                let v64 = v as f64;
                let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(v64 / 2f64.sqrt()));
                let pdf = (-0.5 * v64 * v64).exp() / (2.0 * std::f64::consts::PI).sqrt();
                assert!((got as f64 - v64 * cdf).abs() < 1e-6 * v64.abs().max(1.0));
                assert!((g as f64 - v64 * (cdf + v64 * pdf)).abs() < 2e-6 * v64.abs().max(1.0));
            }
        }
    }

    #[test]
    fn a_nan_spreads_through_the_softmax_row() {
        let mut row = [1.0, f32::NAN, 2.0];
        softmax(&mut row);
        assert!(row.iter().all(|v| v.is_nan()));
    }
}
