use candle_core::{DType, Device, Tensor};

use super::*;
use crate::adapters::seeded_rng;

fn spec() -> VirtualSpec {
    VirtualSpec {
        layers: 3,
        hidden: 8,
        heads: 2,
        kv_heads: 2,
        kv_width: 8,
        word_embeddings: Tensor::arange(0f32, 80., &Device::Cpu)
            .unwrap()
            .reshape((10, 8))
            .unwrap(),
        dtype: DType::F32,
        device: Device::Cpu,
    }
}

#[test]
fn prompt_tokens_are_hidden_wide_and_start_as_vocabulary_rows() {
    let cfg = serde_json::json!({"num_virtual_tokens": 4});
    let t = Prompt
        .build_virtual(
            &*Prompt.parse_config(&cfg).unwrap(),
            &spec(),
            &mut seeded_rng(1),
        )
        .unwrap();
    assert_eq!(t.dims(), [4, 8]);
    for row in t.to_vec2::<f32>().unwrap() {
        // Row k of the table holds 8k..8k+8.
        assert_eq!(row[0] % 8.0, 0.0);
        assert_eq!(row[7], row[0] + 7.0);
    }
    let random = serde_json::json!({"num_virtual_tokens": 4, "init": "random"});
    let t = Prompt
        .build_virtual(
            &*Prompt.parse_config(&random).unwrap(),
            &spec(),
            &mut seeded_rng(1),
        )
        .unwrap();
    assert_eq!(t.dims(), [4, 8]);
}

#[test]
fn prefix_table_has_keys_and_values_for_every_layer() {
    let t = Prefix
        .build_virtual(
            &*Prefix.parse_config(&serde_json::json!({})).unwrap(),
            &spec(),
            &mut seeded_rng(2),
        )
        .unwrap();
    assert_eq!(t.dims(), [20, 3 * 2 * 8]);
}

#[test]
fn zero_tokens_and_unknown_fields_are_refused() {
    for m in [&Prompt as &dyn Method, &Prefix] {
        let err = m
            .parse_config(&serde_json::json!({"num_virtual_tokens": 0}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_virtual_tokens"), "{err}");
        assert!(m.parse_config(&serde_json::json!({"tokens": 3})).is_err());
    }
}
