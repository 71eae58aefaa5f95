//! Golden tests for the TT math: the three paths agree (forward and core gradients), gradients
//! match central finite differences, TT-SVD and rounding are exact or within tolerance.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

/// Paths must agree to this relative error in f32 (issue 2).
const PATH_TOL_F32: f64 = 1e-5;
/// Finite differences against autograd in f64.
const FD_TOL_F64: f64 = 1e-6;
/// TT-SVD with enough rank is exact to this.
const EXACT_TOL: f64 = 1e-5;

fn uniform(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn random_cores(shape: &TtShape, seed: u64, dtype: DType) -> Vec<Tensor> {
    (0..shape.num_cores())
        .map(|k| {
            let (a, s, b) = shape.core_shape(k);
            // Scale so ΔW entries stay O(1) whatever the number of cores.
            (uniform(&[a, s, b], seed + k as u64, dtype) * (1.0 / (a as f64).sqrt())).unwrap()
        })
        .collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f64>().unwrap() / den.to_scalar::<f64>().unwrap().max(1e-300)).sqrt()
}

/// Output and core gradients of `loss = Σ g ∘ ΔW(x)` for one path.
fn forward_and_grads(
    shape: &TtShape,
    cores: &[Tensor],
    x: &Tensor,
    g: &Tensor,
    path: TtPath,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = cores.iter().map(|c| Var::from_tensor(c).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = apply(shape, &ts, x, path).unwrap();
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (y, gs)
}

fn check_paths_agree(shape: &TtShape, tokens: usize, seed: u64) {
    let cores = random_cores(shape, seed, DType::F32);
    let x = uniform(&[tokens, shape.in_features()], seed + 100, DType::F32);
    let g = uniform(&[tokens, shape.out_features()], seed + 200, DType::F32);
    let (y_ref, g_ref) = forward_and_grads(shape, &cores, &x, &g, TtPath::Reconstruct);
    // The f64 reconstruct path is the ground truth for all f32 paths.
    let cores64: Vec<Tensor> = cores
        .iter()
        .map(|c| c.to_dtype(DType::F64).unwrap())
        .collect();
    let (y64, g64) = forward_and_grads(
        shape,
        &cores64,
        &x.to_dtype(DType::F64).unwrap(),
        &g.to_dtype(DType::F64).unwrap(),
        TtPath::Reconstruct,
    );
    assert!(rel_err(&y_ref, &y64) <= PATH_TOL_F32);
    for path in TtPath::ALL {
        let (y, gs) = forward_and_grads(shape, &cores, &x, &g, path);
        let e = rel_err(&y, &y64);
        assert!(e <= PATH_TOL_F32, "{shape} {path}: output rel err {e:e}");
        let e = rel_err(&y, &y_ref);
        assert!(
            e <= PATH_TOL_F32,
            "{shape} {path} vs reconstruct: rel err {e:e}"
        );
        for (k, (gk, gk64)) in gs.iter().zip(&g64).enumerate() {
            let e = rel_err(gk, gk64);
            assert!(
                e <= PATH_TOL_F32,
                "{shape} {path}: core {k} grad rel err {e:e}"
            );
            let e = rel_err(gk, &g_ref[k]);
            assert!(
                e <= PATH_TOL_F32,
                "{shape} {path}: core {k} grad vs reconstruct {e:e}"
            );
        }
    }
}

#[test]
fn paths_agree_768_square() {
    let s =
        TtShape::from_core_order(768, 768, &[64, 4, 3], &[3, 4, 64], Ranks::Uniform(5)).unwrap();
    check_paths_agree(&s, 16, 1);
}

#[test]
fn paths_agree_2048_to_512() {
    let s = TtShape::new(
        2048,
        512,
        vec![16, 16, 4, 2],
        vec![16, 16, 2],
        Ranks::Uniform(5),
    )
    .unwrap();
    check_paths_agree(&s, 8, 2);
}

#[test]
fn paths_agree_with_per_bond_ranks() {
    let s = TtShape::new(
        30,
        14,
        vec![2, 3, 5],
        vec![7, 2],
        Ranks::PerBond(vec![3, 4, 6, 2]),
    )
    .unwrap();
    check_paths_agree(&s, 5, 3);
}

#[test]
fn paths_agree_in_reshape_layout() {
    // 12x20 as [3,4 | 5,4]: the first two cores cover the output index.
    let s = TtShape::reshape(20, 12, vec![3, 4, 5, 4], Ranks::PerBond(vec![2, 3, 2])).unwrap();
    check_paths_agree(&s, 6, 4);
    let s = TtShape::reshape(768, 768, vec![12, 8, 8, 8, 8, 12], Ranks::Uniform(5)).unwrap();
    check_paths_agree(&s, 4, 5);
}

#[test]
fn folded_factors_reproduce_reconstruct() {
    let s = TtShape::new(
        30,
        14,
        vec![2, 3, 5],
        vec![7, 2],
        Ranks::PerBond(vec![3, 4, 6, 2]),
    )
    .unwrap();
    let cores = random_cores(&s, 9, DType::F64);
    let f = fold(&s, &cores).unwrap();
    assert_eq!(f.a.dims(), &[6, 30]);
    assert_eq!(f.b.dims(), &[14, 6]);
    let dense = reconstruct(&s, &cores).unwrap();
    assert!(rel_err(&f.b.matmul(&f.a).unwrap(), &dense) < 1e-12);
}

#[test]
fn input_digit_convention_matches_design() {
    // ΔW[o, i] = Π cores at digits: i = i_1 + m_1·i_2, o = o_1 + n_1·o_2 (least significant first).
    let s = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::Uniform(2)).unwrap();
    let cores = random_cores(&s, 11, DType::F64);
    let dense = reconstruct(&s, &cores).unwrap().to_vec2::<f64>().unwrap();
    let c: Vec<Vec<f64>> = cores
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        .collect();
    let at = |k: usize, a: usize, s_: usize, b: usize| {
        let (_, sk, rb) = s.core_shape(k);
        c[k][(a * sk + s_) * rb + b]
    };
    // core dims [2, 3 | 2, 3]: core 3 (size n_2 = 2) is the most significant output digit.
    for i1 in 0..2 {
        for i2 in 0..3 {
            for o1 in 0..3 {
                for o2 in 0..2 {
                    let mut want = 0.0;
                    for a in 0..2 {
                        for b in 0..2 {
                            for e in 0..2 {
                                want += at(0, 0, i1, a)
                                    * at(1, a, i2, b)
                                    * at(2, b, o2, e)
                                    * at(3, e, o1, 0);
                            }
                        }
                    }
                    let got = dense[o1 + 3 * o2][i1 + 2 * i2];
                    assert!((got - want).abs() < 1e-12);
                }
            }
        }
    }
}

fn loss_f64(shape: &TtShape, cores: &[Tensor], x: &Tensor, g: &Tensor, path: TtPath) -> f64 {
    (apply(shape, cores, x, path).unwrap() * g)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check_finite_differences(shape: &TtShape, seed: u64) {
    let cores = random_cores(shape, seed, DType::F64);
    let x = uniform(&[3, shape.in_features()], seed + 1, DType::F64);
    let g = uniform(&[3, shape.out_features()], seed + 2, DType::F64);
    let h = 1e-6;
    for path in TtPath::ALL {
        let (_, grads) = forward_and_grads(shape, &cores, &x, &g, path);
        for k in 0..cores.len() {
            let data = cores[k].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let analytic = grads[k].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for j in 0..data.len() {
                let eval = |delta: f64| {
                    let mut d = data.clone();
                    d[j] += delta;
                    let mut cs = cores.clone();
                    cs[k] = Tensor::from_vec(d, cores[k].dims(), &Device::Cpu).unwrap();
                    loss_f64(shape, &cs, &x, &g, path)
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                let err = (fd - analytic[j]).abs() / (1.0 + analytic[j].abs());
                assert!(
                    err < FD_TOL_F64,
                    "{shape} {path}: core {k}[{j}] fd {fd} vs autograd {}",
                    analytic[j]
                );
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let s = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::PerBond(vec![2, 3, 2])).unwrap();
    check_finite_differences(&s, 21);
    let s = TtShape::reshape(6, 4, vec![2, 2, 3, 2], Ranks::PerBond(vec![2, 3, 2])).unwrap();
    check_finite_differences(&s, 22);
}

#[test]
fn tt_svd_is_exact_when_ranks_suffice() {
    let s = TtShape::new(
        24,
        10,
        vec![4, 3, 2],
        vec![2, 5],
        Ranks::PerBond(vec![2, 3, 3, 2]),
    )
    .unwrap();
    let cores = random_cores(&s, 31, DType::F64);
    let dense = reconstruct(&s, &cores).unwrap();
    let dec = decompose_matrix(&dense, &s, &Truncation::tolerance(1e-9)).unwrap();
    assert!(dec.rel_error <= EXACT_TOL, "{}", dec.rel_error);
    assert_eq!(dec.shape.ranks(), s.ranks(), "recovers the true ranks");
    let again = reconstruct(&dec.shape, &dec.cores).unwrap();
    assert!(rel_err(&again, &dense) <= EXACT_TOL);
    // A plain rank cap at the true rank is exact too.
    let dec = decompose_matrix(&dense, &s, &Truncation::rank(3)).unwrap();
    assert!(dec.rel_error <= EXACT_TOL, "{}", dec.rel_error);
}

#[test]
fn tt_svd_truncation_respects_tolerance() {
    let s = TtShape::new(30, 24, vec![5, 3, 2], vec![4, 3, 2], Ranks::Uniform(1)).unwrap();
    let dense = uniform(&[24, 30], 41, DType::F64);
    for eps in [0.05, 0.2, 0.5] {
        let dec = decompose_matrix(&dense, &s, &Truncation::tolerance(eps)).unwrap();
        assert!(dec.rel_error <= eps, "eps {eps}: got {}", dec.rel_error);
        let again = reconstruct(&dec.shape, &dec.cores).unwrap();
        assert!((rel_err(&again, &dense) - dec.rel_error).abs() < 1e-9);
    }
    let loose = decompose_matrix(&dense, &s, &Truncation::tolerance(0.5)).unwrap();
    let tight = decompose_matrix(&dense, &s, &Truncation::tolerance(0.05)).unwrap();
    assert!(loose.shape.num_params() < tight.shape.num_params());
    let capped = decompose_matrix(&dense, &s, &Truncation::rank(2)).unwrap();
    assert!(capped.shape.ranks().iter().all(|&r| r <= 2));
    assert!(capped.rel_error > 0.1, "a random matrix is far from rank 2");
}

#[test]
fn fold_then_tt_svd_reproduces_delta_w() {
    let s =
        TtShape::from_core_order(768, 768, &[64, 4, 3], &[3, 4, 64], Ranks::Uniform(5)).unwrap();
    let cores = random_cores(&s, 51, DType::F32);
    let f = fold(&s, &cores).unwrap();
    let ba = f.b.matmul(&f.a).unwrap();
    let dec = decompose_matrix(&ba, &s, &Truncation::rank(5)).unwrap();
    let dense = reconstruct(&s, &cores).unwrap();
    let again = reconstruct(&dec.shape, &dec.cores).unwrap();
    assert!(
        rel_err(&again, &dense) <= EXACT_TOL,
        "{}",
        rel_err(&again, &dense)
    );
    assert!(dec.shape.num_params() <= s.num_params());
}

#[test]
fn rounding_removes_redundant_rank() {
    let s = TtShape::new(24, 10, vec![4, 3, 2], vec![2, 5], Ranks::Uniform(2)).unwrap();
    let cores = random_cores(&s, 61, DType::F64);
    // Zero-pad every inner bond to rank 4: same tensor, redundant ranks.
    let big = s.with_ranks(Ranks::Uniform(4)).unwrap();
    let padded: Vec<Tensor> = (0..s.num_cores())
        .map(|k| {
            let (a, sk, b) = s.core_shape(k);
            let (ba, _, bb) = big.core_shape(k);
            let c = cores[k].pad_with_zeros(0, 0, ba - a).unwrap();
            c.pad_with_zeros(2, 0, bb - b)
                .unwrap()
                .reshape((ba, sk, bb))
                .unwrap()
        })
        .collect();
    let dense = reconstruct(&s, &cores).unwrap();
    assert!(rel_err(&reconstruct(&big, &padded).unwrap(), &dense) < 1e-12);
    let rounded = round_cores(&big, &padded, &Truncation::tolerance(1e-10)).unwrap();
    assert!(
        rounded.shape.ranks().iter().all(|&r| r <= 2),
        "{:?}",
        rounded.shape.ranks()
    );
    assert!(rounded.rel_error < EXACT_TOL);
    let truncated = round_cores(&big, &padded, &Truncation::rank(1)).unwrap();
    assert!(truncated.shape.ranks().iter().all(|&r| r == 1));
    assert!(truncated.rel_error > 0.0);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let s = TtShape::new(6, 6, vec![2, 3], vec![3, 2], Ranks::Uniform(2)).unwrap();
    let mut cores = random_cores(&s, 71, DType::F32);
    cores[1] = Tensor::zeros((2, 4, 2), DType::F32, &Device::Cpu).unwrap();
    let err = reconstruct(&s, &cores).unwrap_err().to_string();
    assert_eq!(err, "tt core 1: shape [2, 4, 2], expected [2, 3, 2]");
    let cores = random_cores(&s, 71, DType::F32);
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let err = apply(&s, &cores, &x, TtPath::Factored)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "tt apply: tensor shape [5], expected [6]");
    let w = Tensor::zeros((6, 5), DType::F32, &Device::Cpu).unwrap();
    let err = decompose_matrix(&w, &s, &Truncation::rank(2))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tt-svd of a matrix: tensor shape [6, 5], expected [6, 6]"
    );
    let err = decompose_matrix(
        &w.pad_with_zeros(1, 0, 1).unwrap(),
        &s,
        &Truncation::tolerance(-1.0),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("relative tolerance must be a finite number >= 0"),
        "{err}"
    );
    let no_split = TtShape::reshape(6, 4, vec![8, 3], Ranks::Uniform(2)).unwrap();
    let cores = random_cores(&no_split, 72, DType::F32);
    let x = Tensor::zeros((1, 6), DType::F32, &Device::Cpu).unwrap();
    let err = apply(&no_split, &cores, &x, TtPath::Factored)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not split into B·A"), "{err}");
    assert!(apply(&no_split, &cores, &x, TtPath::Reconstruct).is_ok());
}

#[test]
fn path_names_are_the_serde_names() {
    for (path, name) in TtPath::ALL.iter().zip(TtPath::NAMES) {
        assert_eq!(serde_json::to_value(path).unwrap(), serde_json::json!(name));
    }
}
