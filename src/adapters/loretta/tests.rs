use candle_core::{DType, Device, Tensor};

use super::*;
use crate::adapters::{Config, seeded_rng};

fn spec(in_f: usize, out_f: usize) -> LayerSpec {
    LayerSpec {
        in_features: in_f,
        out_features: out_f,
        dtype: DType::F64,
        device: Device::Cpu,
        weight: None,
        blocks: None,
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn rep_starts_at_zero_and_is_exactly_a_lora() {
    let a = LorettaRep
        .build_from_json(
            &LorettaRep.default_config(),
            &spec(48, 32),
            &mut seeded_rng(1),
        )
        .unwrap();
    assert_eq!(max_abs(&a.delta_weight().unwrap()), 0.0);
    // Move B off zero: set every tensor to a seeded random value.
    for (i, (_, v)) in a.trainable().into_iter().enumerate() {
        let t = Tensor::randn(0f64, 0.5, v.dims(), &Device::Cpu).unwrap();
        v.set(&(t + 0.01 * i as f64).unwrap()).unwrap();
    }
    let dw = a.delta_weight().unwrap();
    assert_eq!(dw.dims(), [32, 48]);
    let f = a.as_lora().unwrap().unwrap();
    assert_eq!((f.a.dims(), f.b.dims()), (&[8, 48][..], &[32, 8][..]));
    let lora = (f.b.matmul(&f.a).unwrap() * (f.lora_alpha / 8.0)).unwrap();
    assert!(max_abs(&(lora - &dw).unwrap()) < 1e-10);
    // forward_delta(x) = x·ΔWᵀ.
    let x = Tensor::randn(0f64, 1., (3, 48), &Device::Cpu).unwrap();
    let y = a.forward_delta(&x, false).unwrap();
    let y_ref = x.matmul(&dw.t().unwrap()).unwrap();
    assert!(max_abs(&(y - y_ref).unwrap()) < 1e-10);
}

#[test]
fn rep_counts_the_cores_of_both_trains_and_rebuilds_from_its_config() {
    let a = LorettaRep
        .build_from_json(
            &serde_json::json!({"r": 4, "tensor_rank": 2}),
            &spec(48, 32),
            &mut seeded_rng(2),
        )
        .unwrap();
    let names: Vec<String> = a.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().all(|n| n.starts_with("loretta_rep_")),
        "{names:?}"
    );
    // Σ over cores of r_{k-1}·s_k·r_k, read from the saved config's shapes.
    let cfg: LorettaRepConfig = serde_json::from_value(a.config()).unwrap();
    let count = |c: &TtLoraConfig, in_f: usize, out_f: usize| {
        c.shape_for(in_f, out_f).unwrap().num_params()
    };
    let expected = count(cfg.a.as_ref().unwrap(), 48, 4) + count(cfg.b.as_ref().unwrap(), 4, 32);
    assert_eq!(a.num_params(), expected);
    let rebuilt = LorettaRep
        .build_from_json(&a.config(), &spec(48, 32), &mut seeded_rng(9))
        .unwrap();
    let dims = |x: &dyn Adapter| -> Vec<Vec<usize>> {
        x.trainable()
            .iter()
            .map(|(_, v)| v.dims().to_vec())
            .collect()
    };
    assert_eq!(dims(a.as_ref()), dims(rebuilt.as_ref()));
}

#[test]
fn adp_is_the_identity_at_init_and_serial() {
    let h = 32;
    let a = LorettaAdp
        .build_from_json(
            &serde_json::json!({"bottleneck_size": 4, "tensor_rank": 2}),
            &spec(3 * h, h),
            &mut seeded_rng(3),
        )
        .unwrap();
    assert!(a.serial());
    assert_eq!((a.in_features(), a.out_features()), (h, h));
    let y = Tensor::randn(0f64, 1., (5, h), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&a.forward_delta(&y, false).unwrap()), 0.0);
    assert!(a.delta_weight().is_err());
    let names: Vec<String> = a.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"loretta_adp_down.cores.0".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"loretta_adp_up.bias".to_string()),
        "{names:?}"
    );
}

#[test]
fn bad_fields_are_named() {
    let err = LorettaRep
        .parse_config(&serde_json::json!({"tensor_rank": 0}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tensor_rank"), "{err}");
    let err = LorettaAdp
        .parse_config(&serde_json::json!({"reduction_factor": -2.0}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("reduction_factor"), "{err}");
}

#[test]
fn a_given_train_takes_tensor_rank_unless_it_sets_its_own() {
    let rep = |cfg| <LorettaRepConfig as Config>::from_json("loretta-rep", &cfg).unwrap();
    let a = serde_json::json!({"in_factors": [2, 4], "out_factors": [8]});
    let c = rep(serde_json::json!({"tensor_rank": 3, "a": a}));
    assert_eq!(c.a.map(|t| t.rank), Some(3));
    let c = rep(serde_json::json!({"tensor_rank": 3, "a": {"rank": 2}}));
    assert_eq!(c.a.map(|t| t.rank), Some(2));
    let c = rep(serde_json::json!({"b": {}}));
    assert_eq!(c.b.map(|t| t.rank), Some(5));
    let adp = <LorettaAdpConfig as Config>::from_json(
        "loretta-adp",
        &serde_json::json!({"tensor_rank": 4, "up": {}}),
    )
    .unwrap();
    assert_eq!(adp.up.map(|t| t.rank), Some(4));
    assert_eq!(adp.down, None);
}
