//! Helpers the model families' tests share: padded batches, tensor comparisons, adapters on
//! chosen linears, and HF folders written to a temp dir.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::adapters::{LayerSpec, method, seeded_rng};
use crate::io::fs::TempDir;
use crate::models::{Model, ModelInput};

/// A right-padded batch from rows of token ids: `pad` fills the ids, the mask is 1 on real
/// tokens, and `type_of(i, row_len)` gives the token type at position `i` of a row.
pub(crate) fn padded_batch(
    rows: &[Vec<u32>],
    pad: u32,
    dev: &Device,
    type_of: impl Fn(usize, usize) -> u32,
) -> ModelInput {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut types = Vec::new();
    for r in rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, len - r.len())),
        );
        mask.extend((0..len).map(|i| u32::from(i < r.len())));
        types.extend((0..len).map(|i| type_of(i, r.len())));
    }
    let shape = (rows.len(), len);
    ModelInput {
        input_ids: Tensor::from_vec(ids, shape, dev).unwrap(),
        token_type_ids: Some(Tensor::from_vec(types, shape, dev).unwrap()),
        attention_mask: Tensor::from_vec(mask, shape, dev).unwrap(),
        position_ids: None,
    }
}

/// The largest absolute elementwise difference of two f32 tensors.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The squared L2 norm of an f32 tensor.
pub(crate) fn sq_norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Attaches a TT-LoRA adapter (rank 2, paper init, f32 on the CPU) to every linear whose
/// module path `pick` selects; returns how many.
pub(crate) fn attach_ttlora(model: &mut dyn Model, pick: impl Fn(&str) -> bool) -> usize {
    let ttlora = method("ttlora").unwrap();
    let mut rng = seeded_rng(11);
    let mut attached = 0;
    for (name, lin) in model.linears_mut() {
        if pick(&name) {
            let spec = LayerSpec {
                in_features: lin.in_features(),
                out_features: lin.out_features(),
                dtype: candle_core::DType::F32,
                device: Device::Cpu,
                weight: None,
                blocks: None,
            };
            let cfg = serde_json::json!({"rank": 2, "init": "paper"});
            let adapter = ttlora.build_from_json(&cfg, &spec, &mut rng).unwrap();
            lin.add_adapter("default", adapter).unwrap();
            attached += 1;
        }
    }
    attached
}

/// A fresh folder for one test, named after `family` and `name`, removed when dropped.
pub(crate) fn temp_dir(family: &str, name: &str) -> TempDir {
    TempDir::new(&format!("{family}-{name}"))
}

/// Writes `cfg` as `config.json` and `tensors` as `model.safetensors` into `dir`.
pub(crate) fn write_model(dir: &Path, cfg: &impl Serialize, tensors: Vec<(String, Tensor)>) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

/// A random LLaMA of the `llama_golden` fixture's config (tiny: 64 tokens), f32 on the CPU.
pub(crate) fn tiny_llama(seed: u64) -> crate::models::llama::Llama {
    use crate::models::llama::{Llama, LlamaConfig};
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_golden/llama/config.json"),
    )
    .unwrap();
    let cfg = LlamaConfig::from_value(
        &serde_json::from_str(&text).unwrap(),
        Path::new("config.json"),
    )
    .unwrap();
    Llama::random(&cfg, 0.2, candle_core::DType::F32, &Device::Cpu, seed).unwrap()
}
