//! The library used as a downstream crate would: build a layer, attach TT-LoRA, train a step,
//! merge, and export exact LoRA factors; on every device (`test_device!`).

use candle_core::{DType, Device, Tensor};
use ttlora::adapters::ttlora::{TtInit, TtLoraConfig, TtLoraLayer};
use ttlora::adapters::{Adapter, LayerSpec, Linear, kaiming_uniform, method, seeded_rng};
use ttlora::tt::{Truncation, decompose_matrix};

use crate::common::{tensor_diff, test_device};

/// The layer both tests adapt: 16 inputs, 12 outputs, f32 on `dev`.
fn layer_spec(dev: &Device) -> LayerSpec {
    LayerSpec {
        in_features: 16,
        out_features: 12,
        dtype: DType::F32,
        device: dev.clone(),
        weight: None,
        blocks: None,
    }
}

fn ttlora_layer_trains_merges_and_exports(dev: &Device) {
    let mut rng = seeded_rng(7);
    let w0 = kaiming_uniform(&[12, 16], 16, &mut rng, DType::F32, dev).unwrap();
    let mut lin = Linear::new(w0.clone(), None).unwrap();
    let spec = layer_spec(dev);
    let cfg =
        serde_json::json!({"rank": 3, "alpha": 8.0, "in_factors": [4, 4], "out_factors": [3, 4]});
    lin.add_adapter(
        "default",
        method("ttlora")
            .unwrap()
            .build_from_json(&cfg, &spec, &mut rng)
            .unwrap(),
    )
    .unwrap();
    let x = kaiming_uniform(&[8, 16], 1, &mut rng, DType::F32, dev).unwrap();
    let target = Tensor::ones((8, 12), DType::F32, dev).unwrap();
    let loss = |lin: &Linear| {
        (lin.forward(&x, true).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let first = loss(&lin).to_scalar::<f32>().unwrap();
    for _ in 0..30 {
        let grads = loss(&lin).backward().unwrap();
        for (_, _, v) in lin.trainable() {
            let g = grads.get(v.as_tensor()).unwrap();
            v.set(&(v.as_tensor() - (g * 0.01).unwrap()).unwrap())
                .unwrap();
        }
    }
    let last = loss(&lin).to_scalar::<f32>().unwrap();
    assert!(last < first, "loss went from {first} to {last}");
    assert_eq!(tensor_diff(&lin.weight(), &w0), 0.0, "W0 frozen");
    let y = lin.forward(&x, false).unwrap();
    lin.merge().unwrap();
    assert!(tensor_diff(&lin.forward(&x, false).unwrap(), &y) < 1e-5);
}
test_device!(
    ttlora_layer_trains_merges_and_exports,
    ttlora_layer_trains_merges_and_exports_cpu,
    ttlora_layer_trains_merges_and_exports_cuda
);

fn tt_svd_compresses_a_lora_update_exactly_when_rank_allows(dev: &Device) {
    let spec = layer_spec(dev);
    let cfg = TtLoraConfig {
        init: TtInit::Paper,
        rank: 3,
        in_factors: Some(vec![4, 4]),
        out_factors: Some(vec![3, 4]),
        ..Default::default()
    };
    let tt = TtLoraLayer::new(&cfg, &spec, &mut seeded_rng(3)).unwrap();
    let (a, b) = tt.lora_factors().unwrap();
    let dense = b.matmul(&a).unwrap();
    let dec = decompose_matrix(&dense, tt.shape(), &Truncation::rank(3)).unwrap();
    assert!(dec.rel_error < 1e-5, "{}", dec.rel_error);
    let again = TtLoraLayer::from_cores(dec.shape, dec.cores, 1.0, Default::default()).unwrap();
    let diff = tensor_diff(&again.delta_weight().unwrap(), &tt.delta_weight().unwrap());
    assert!(diff < 1e-4, "{diff}");
}
test_device!(
    tt_svd_compresses_a_lora_update_exactly_when_rank_allows,
    tt_svd_compresses_a_lora_update_exactly_when_rank_allows_cpu,
    tt_svd_compresses_a_lora_update_exactly_when_rank_allows_cuda
);
