//! LoRA-specific checks: PEFT's init and scaling, dropout only while training, config errors.

use candle_core::{DType, Device, Tensor};

use crate::adapters::lora::{LoraConfig, LoraLayer};
use crate::adapters::{Adapter, Config, LayerSpec, seeded_rng};

fn spec(in_features: usize, out_features: usize) -> LayerSpec {
    LayerSpec {
        in_features,
        out_features,
        dtype: DType::F32,
        device: Device::Cpu,
        weight: None,
        blocks: None,
    }
}

#[test]
fn peft_init_a_kaiming_b_zero() {
    let l = LoraLayer::new(
        &LoraConfig {
            r: 8,
            ..Default::default()
        },
        &spec(100, 7),
        &mut seeded_rng(1),
    )
    .unwrap();
    assert_eq!(l.a().dims(), &[8, 100]);
    assert_eq!(l.b().dims(), &[7, 8]);
    let max_a = l
        .a()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        max_a <= 0.1 && max_a > 0.09,
        "U(-1/sqrt(in), 1/sqrt(in)), got max {max_a}"
    );
    let max_b = l
        .b()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(max_b, 0.0);
}

#[test]
fn scaling_is_alpha_over_r_or_sqrt_r() {
    let c = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        ..Default::default()
    };
    assert_eq!(c.scaling(), 2.0);
    let c = LoraConfig {
        use_rslora: true,
        ..c
    };
    assert_eq!(c.scaling(), 8.0);
    // delta_weight really applies it.
    let l = LoraLayer::new(
        &LoraConfig {
            r: 2,
            lora_alpha: 6.0,
            ..Default::default()
        },
        &spec(3, 2),
        &mut seeded_rng(2),
    )
    .unwrap();
    l.b()
        .set(&Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let ba = l.b().matmul(l.a()).unwrap();
    let dw = l.delta_weight().unwrap();
    let ratio = (dw / ba)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(ratio.iter().all(|r| (r - 3.0).abs() < 1e-6));
}

#[test]
fn dropout_applies_only_in_training() {
    let cfg = LoraConfig {
        r: 4,
        lora_dropout: 0.5,
        ..Default::default()
    };
    let l = LoraLayer::new(&cfg, &spec(64, 8), &mut seeded_rng(3)).unwrap();
    l.b()
        .set(&Tensor::ones((8, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
    let eval1 = l.forward_delta(&x, false).unwrap();
    let eval2 = l.forward_delta(&x, false).unwrap();
    let train = l.forward_delta(&x, true).unwrap();
    let d = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(d(&eval1, &eval2), 0.0);
    assert!(d(&eval1, &train) > 0.0);
}

#[test]
fn invalid_config_fields_are_named() {
    let cases = [
        (
            LoraConfig {
                r: 0,
                ..Default::default()
            },
            "lora config: field `r` must be >= 1 (got 0)",
        ),
        (
            LoraConfig {
                lora_dropout: 1.0,
                ..Default::default()
            },
            "lora config: field `lora_dropout` must be in [0, 1) (got 1)",
        ),
        (
            LoraConfig {
                lora_alpha: f64::NAN,
                ..Default::default()
            },
            "lora config: field `lora_alpha` must be finite (got NaN)",
        ),
    ];
    for (cfg, want) in cases {
        assert_eq!(cfg.validate().unwrap_err().to_string(), want);
    }
    let err = serde_json::from_value::<LoraConfig>(serde_json::json!({"rank": 4}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `rank`"), "{err}");
}
