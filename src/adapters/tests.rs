//! The adapter test matrix: every row (method + config + layer size) is checked against every
//! invariant. Per-method knobs live in the row, never in the shared checks.

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::*;

/// Merged and unmerged outputs agree to this (f32, α = 8).
const MERGE_TOL: f32 = 1e-5;
/// Unmerging restores W0 to this.
const UNMERGE_TOL: f32 = 1e-6;

struct Row {
    name: &'static str,
    method: &'static str,
    config: serde_json::Value,
    in_features: usize,
    out_features: usize,
    /// The method's init makes ΔW = 0 at step 0.
    identity_at_init: bool,
    /// Hand-computed trainable parameter count.
    params: usize,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "lora r=4 alpha=8",
            method: "lora",
            config: json!({"r": 4, "lora_alpha": 8.0}),
            in_features: 24,
            out_features: 12,
            identity_at_init: true,
            params: 4 * (24 + 12),
        },
        Row {
            name: "lora rslora",
            method: "lora",
            config: json!({"r": 4, "lora_alpha": 8.0, "use_rslora": true}),
            in_features: 16,
            out_features: 16,
            identity_at_init: true,
            params: 4 * 32,
        },
        Row {
            name: "ttlora zero factored",
            method: "ttlora",
            config: json!({"rank": 3, "alpha": 8.0, "in_factors": [4, 3, 2], "out_factors": [4, 3]}),
            in_features: 24,
            out_features: 12,
            identity_at_init: true,
            // cores [4,3,2|3,4]: 1·4·3 + 3·3·3 + 3·2·3 + 3·3·3 + 3·4·1
            params: 12 + 27 + 18 + 27 + 12,
        },
        Row {
            name: "ttlora paper contract",
            method: "ttlora",
            config: json!({"rank": 2, "alpha": 8.0, "init": "paper", "path": "contract",
                           "in_factors": [4, 4], "out_factors": [2, 2, 3]}),
            in_features: 16,
            out_features: 12,
            identity_at_init: false,
            // cores [4,4|3,2,2]: 1·4·2 + 2·4·2 + 2·3·2 + 2·2·2 + 2·2·1
            params: 8 + 16 + 12 + 8 + 4,
        },
        Row {
            name: "ttlora tt-svd reconstruct per-bond",
            method: "ttlora",
            config: json!({"ranks": [2, 4, 3], "alpha": 8.0, "init": "tt-svd", "path": "reconstruct",
                           "in_factors": [4, 4], "out_factors": [3, 4]}),
            in_features: 16,
            out_features: 12,
            identity_at_init: false,
            // cores [4,4|4,3] ranks [1,2,4,3,1]: 8 + 32 + 48 + 9
            params: 8 + 32 + 48 + 9,
        },
        Row {
            name: "ttlora reshape layout",
            method: "ttlora",
            config: json!({"rank": 3, "alpha": 8.0, "init": "zero", "layout": "reshape",
                           "factors": [3, 4, 4, 4]}),
            in_features: 16,
            out_features: 12,
            identity_at_init: true,
            params: 9 + 36 + 36 + 12,
        },
    ]
}

fn layer_for(row: &Row, seed: u64) -> (Linear, Tensor) {
    let dev = Device::Cpu;
    let mut rng = seeded_rng(seed);
    let w = kaiming_uniform(
        &[row.out_features, row.in_features],
        row.in_features,
        &mut rng,
        DType::F32,
        &dev,
    )
    .unwrap();
    let b = kaiming_uniform(
        &[row.out_features],
        row.in_features,
        &mut rng,
        DType::F32,
        &dev,
    )
    .unwrap();
    let mut lin = Linear::new(w, Some(b)).unwrap();
    let spec = LayerSpec {
        in_features: row.in_features,
        out_features: row.out_features,
        dtype: DType::F32,
        device: dev.clone(),
        weight: None,
        blocks: None,
    };
    let adapter = method(row.method)
        .unwrap()
        .build_from_json(&row.config, &spec, &mut rng)
        .unwrap();
    lin.add_adapter("default", adapter).unwrap();
    let x = kaiming_uniform(&[2, 3, row.in_features], 1, &mut rng, DType::F32, &dev).unwrap();
    (lin, x)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Gives every trainable tensor random non-zero values, so ΔW ≠ 0.
fn perturb(lin: &Linear, seed: u64) {
    let mut rng = seeded_rng(seed);
    for (_, _, v) in lin.trainable() {
        let t = kaiming_uniform(v.dims(), 2, &mut rng, DType::F32, &Device::Cpu).unwrap();
        v.set(&t).unwrap();
    }
}

#[test]
fn identity_at_init_where_the_method_claims_it() {
    for row in rows() {
        let (lin, x) = layer_for(&row, 1);
        let base = Linear::new(lin.weight().into_owned(), lin.bias().cloned()).unwrap();
        let y = lin.forward(&x, false).unwrap();
        let y0 = base.forward(&x, false).unwrap();
        let diff = max_abs_diff(&y, &y0);
        if row.identity_at_init {
            assert_eq!(diff, 0.0, "{}: output differs from base at init", row.name);
        } else {
            assert!(diff > 1e-4, "{}: ΔW should be non-zero at init", row.name);
        }
    }
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores_w0() {
    for row in rows() {
        let (mut lin, x) = layer_for(&row, 2);
        perturb(&lin, 3);
        let w0 = lin.weight().into_owned();
        let y = lin.forward(&x, false).unwrap();
        lin.merge().unwrap();
        assert!(lin.is_merged());
        assert!(
            max_abs_diff(&w0, &lin.weight()) > 1e-3,
            "{}: merge changed nothing",
            row.name
        );
        // The merged weight is frozen: nothing about it records a graph.
        assert!(
            !lin.weight().track_op(),
            "{}: merged weight tracked",
            row.name
        );
        let y_merged = lin.forward(&x, false).unwrap();
        let scale = y
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let diff = max_abs_diff(&y, &y_merged) / scale;
        assert!(
            diff <= MERGE_TOL,
            "{}: merged vs unmerged {diff:e}",
            row.name
        );
        lin.unmerge().unwrap();
        assert!(
            !lin.weight().track_op(),
            "{}: unmerged weight tracked",
            row.name
        );
        let diff = max_abs_diff(&w0, &lin.weight());
        assert!(diff <= UNMERGE_TOL, "{}: unmerge left {diff:e}", row.name);
        assert!(
            lin.unmerge().is_err(),
            "{}: double unmerge must fail",
            row.name
        );
    }
}

#[test]
fn only_adapter_parameters_change_and_all_of_them_do() {
    for row in rows() {
        let (lin, x) = layer_for(&row, 4);
        let w0 = lin.weight().to_vec2::<f32>().unwrap();
        let b0 = lin.bias().unwrap().to_vec1::<f32>().unwrap();
        let before: Vec<Tensor> = lin
            .trainable()
            .iter()
            .map(|(_, _, v)| v.as_tensor().copy().unwrap())
            .collect();
        let target = Tensor::ones((2, 3, row.out_features), DType::F32, &Device::Cpu).unwrap();
        // Two plain SGD steps: after the first, zero-initialised factors make the rest move.
        for _ in 0..2 {
            let y = lin.forward(&x, true).unwrap();
            let loss = (y - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            for (_, name, v) in lin.trainable() {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{}: {name} got no gradient", row.name));
                v.set(&(v.as_tensor() - (g * 1e-2).unwrap()).unwrap())
                    .unwrap();
            }
            assert!(
                grads.get(&lin.weight()).is_none(),
                "{}: W0 got a gradient",
                row.name
            );
        }
        assert_eq!(lin.weight().to_vec2::<f32>().unwrap(), w0, "{}", row.name);
        assert_eq!(
            lin.bias().unwrap().to_vec1::<f32>().unwrap(),
            b0,
            "{}",
            row.name
        );
        for ((_, name, v), old) in lin.trainable().iter().zip(&before) {
            assert!(
                max_abs_diff(v.as_tensor(), old) > 0.0,
                "{}: {name} never moved",
                row.name
            );
        }
    }
}

#[test]
fn parameter_count_matches_formula() {
    for row in rows() {
        let (lin, _) = layer_for(&row, 5);
        let (_, adapter) = lin.adapters().next().unwrap();
        assert_eq!(adapter.num_params(), row.params, "{}", row.name);
        let prefix = method(row.method).unwrap().prefix();
        for (_, name, _) in lin.trainable() {
            assert!(
                name.starts_with(prefix),
                "{}: `{name}` outside prefix {prefix}",
                row.name
            );
        }
    }
}

#[test]
fn outputs_are_finite_and_shaped() {
    for row in rows() {
        let (lin, x) = layer_for(&row, 6);
        perturb(&lin, 7);
        let y = lin.forward(&x, false).unwrap();
        assert_eq!(y.dims(), &[2, 3, row.out_features]);
        let s = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s.is_finite(), "{}", row.name);
    }
}

#[test]
fn mismatched_adapter_is_rejected() {
    let dev = Device::Cpu;
    let mut lin = Linear::new(Tensor::zeros((4, 6), DType::F32, &dev).unwrap(), None).unwrap();
    let spec = LayerSpec {
        in_features: 5,
        out_features: 4,
        dtype: DType::F32,
        device: dev,
        weight: None,
        blocks: None,
    };
    let a = method("lora")
        .unwrap()
        .build_from_json(&json!({"r": 2}), &spec, &mut seeded_rng(0))
        .unwrap();
    let err = lin.add_adapter("default", a).unwrap_err().to_string();
    assert_eq!(
        err,
        "adapter `default` on a 4x6 layer: adapter is 4x5 (out x in)"
    );
}

#[test]
fn non_finite_merge_leaves_weights_unchanged() {
    let row = &rows()[0];
    let (mut lin, _) = layer_for(row, 8);
    let w0 = lin.weight().to_vec2::<f32>().unwrap();
    for (_, _, v) in lin.trainable() {
        let nan = Tensor::full(f32::NAN, v.dims(), &Device::Cpu).unwrap();
        v.set(&nan).unwrap();
    }
    let err = lin.merge().unwrap_err().to_string();
    assert!(err.contains("NaN or Inf"), "{err}");
    assert!(!lin.is_merged());
    assert_eq!(lin.weight().to_vec2::<f32>().unwrap(), w0);
}
