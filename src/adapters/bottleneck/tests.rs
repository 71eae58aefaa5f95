use candle_core::{DType, Device, Tensor};

use super::*;
use crate::adapters::{Linear, seeded_rng};

fn spec(h: usize) -> LayerSpec {
    LayerSpec {
        in_features: 3 * h,
        out_features: h,
        dtype: DType::F64,
        device: Device::Cpu,
        weight: None,
        blocks: None,
    }
}

#[test]
fn width_follows_reduction_factor_unless_given() {
    let cfg = BottleneckConfig::default();
    assert_eq!(cfg.width(384), 24);
    assert_eq!(cfg.width(8), 1);
    let cfg = BottleneckConfig {
        bottleneck_size: Some(7),
        ..cfg
    };
    assert_eq!(cfg.width(384), 7);
}

#[test]
fn parameter_count_is_two_projections_and_two_biases() {
    // 2·h·m + m + h for h = 32, m = 32/16 = 2.
    let a = Bottleneck
        .build_from_json(&Bottleneck.default_config(), &spec(32), &mut seeded_rng(1))
        .unwrap();
    assert_eq!(a.num_params(), 2 * 32 * 2 + 2 + 32);
    assert!(a.serial());
    let names: Vec<String> = a.trainable().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "adapter_down.weight",
            "adapter_down.bias",
            "adapter_up.weight",
            "adapter_up.bias"
        ]
    );
}

#[test]
fn serial_adapter_maps_the_layer_output_and_refuses_to_merge() {
    let h = 4;
    let dev = Device::Cpu;
    let w = Tensor::randn(0f64, 1., (h, 3 * h), &dev).unwrap();
    let x = Tensor::randn(0f64, 1., (5, 3 * h), &dev).unwrap();
    let cfg = serde_json::json!({"bottleneck_size": 2, "init_std": 0.5, "non_linearity": "tanh"});
    let a = Bottleneck
        .build_from_json(&cfg, &spec(h), &mut seeded_rng(2))
        .unwrap();
    let g_of = |y: &Tensor| a.forward_delta(y, false).unwrap();
    let mut layer = Linear::new(w.clone(), None).unwrap();
    let y0 = layer.forward(&x, false).unwrap();
    let expected = (&y0 + g_of(&y0)).unwrap();
    layer
        .add_adapter(
            "default",
            Bottleneck
                .build_from_json(&cfg, &spec(h), &mut seeded_rng(2))
                .unwrap(),
        )
        .unwrap();
    let y = layer.forward(&x, false).unwrap();
    let diff = (y - expected).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    let err = layer.merge().unwrap_err().to_string();
    assert!(err.contains("cannot be merged"), "{err}");
    assert!(!layer.is_merged());
}

#[test]
fn pfeiffer_targets_only_the_feed_forward_output() {
    let sites = DefaultSites {
        parallel: &["query", "value"],
        attention_output: vec!["bert.encoder.layer.0.attention.output.dense".into()],
        ffn_output: vec!["bert.encoder.layer.0.output.dense".into()],
    };
    let targets = |variant: &str| {
        let t = Bottleneck
            .default_targets(
                &*Bottleneck
                    .parse_config(&serde_json::json!({ "variant": variant }))
                    .unwrap(),
                &sites,
            )
            .unwrap();
        let rules = crate::adapters::Targeting::new(&t, None, &Default::default()).unwrap();
        [
            "bert.encoder.layer.0.attention.output.dense",
            "bert.encoder.layer.0.output.dense",
            "bert.encoder.layer.0.intermediate.dense",
        ]
        .map(|p| rules.matches(p))
    };
    assert_eq!(targets("houlsby"), [true, true, false]);
    assert_eq!(targets("pfeiffer"), [false, true, false]);
}

#[test]
fn bad_fields_are_named() {
    for (cfg, field) in [
        (
            serde_json::json!({"reduction_factor": 0.0}),
            "reduction_factor",
        ),
        (serde_json::json!({"bottleneck_size": 0}), "bottleneck_size"),
        (serde_json::json!({"init_std": -1.0}), "init_std"),
        (serde_json::json!({"variant": "lora"}), "variant"),
    ] {
        let err = Bottleneck.parse_config(&cfg).unwrap_err().to_string();
        assert!(
            err.contains(field) || err.contains("unknown variant"),
            "{err}"
        );
    }
}
