//! The PEFT-style test matrix: every registered method × the invariants every method must
//! keep, on a tiny random BERT. One row per method configuration (`matrix!` below); the
//! invariants are the `check_*` functions. A new method gets a row, and the `every_method_has
//! _a_row` test fails until it does.

use candle_core::{DType, Device, Tensor};
use ttlora::adapters::{METHODS, MethodSpec, Placement, method, seeded_rng};
use ttlora::io::AdapterFolder;
use ttlora::models::{BertConfig, BertForSequenceClassification, EncoderInput, Model, Pooling};
use ttlora::train::{Adam, AdamParams, Batch, Objective, loss};
use ttlora::tuning::adapted::{AdapterMeta, collect, load_into};
use ttlora::tuning::attach::{attach, placing, trainable_vars};
use ttlora::tuning::merged::merge_adapters;

/// Logits of an exact invariant (identity, round trip) agree to this.
const EXACT: f32 = 1e-5;
/// Merged and unmerged logits agree to this (f32 rounding of W0 + ΔW).
const MERGED: f32 = 1e-4;
const ADAPTER: &str = "default";

/// The tiny base every row adapts: h = 32, 2 layers, FFN 64, vocabulary 100, 64 positions.
fn base() -> Box<dyn Model> {
    let m = BertForSequenceClassification::random(
        &BertConfig::tiny(),
        2,
        Pooling::Cls,
        DType::F32,
        &Device::Cpu,
        5,
    )
    .unwrap();
    Box::new(m)
}

fn batch() -> Batch {
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 100).collect();
    let mut mask = vec![1u32; 24];
    mask[22] = 0;
    mask[23] = 0;
    Batch {
        input: EncoderInput {
            input_ids: Tensor::from_vec(ids, (3, 8), &dev).unwrap(),
            token_type_ids: Tensor::zeros((3, 8), DType::U32, &dev).unwrap(),
            attention_mask: Tensor::from_vec(mask, (3, 8), &dev).unwrap(),
        },
        labels: Tensor::new(&[0u32, 1, 1], &dev).unwrap(),
    }
}

fn logits(model: &dyn Model) -> Vec<Vec<f32>> {
    ttlora::ops::no_grad(|| model.forward(&batch().input, false))
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The base with `name`'s method attached under `config`; returns the trainable count.
fn adapted(name: &str, config: &serde_json::Value) -> (Box<dyn Model>, usize) {
    let mut model = base();
    let spec = MethodSpec::parse(name, config.clone()).unwrap();
    let p = placing(&spec, model.as_ref(), None, None, &Default::default()).unwrap();
    let report = attach(model.as_mut(), &spec, &p, ADAPTER, &mut seeded_rng(11)).unwrap();
    assert_eq!(report.params, count(model.as_ref()), "report vs vars");
    (model, report.params)
}

fn count(model: &dyn Model) -> usize {
    trainable_vars(model)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// A few AdamW steps on the fixed batch, head included.
fn train_steps(model: &dyn Model) {
    let mut vars: Vec<_> = trainable_vars(model).into_iter().map(|(_, v)| v).collect();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    let mut opt = Adam::new(vars.clone(), AdamParams::default()).unwrap();
    for _ in 0..3 {
        let l = loss(model, Objective::Classification, &batch(), false).unwrap();
        let grads = l.backward().unwrap();
        let g: Vec<_> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        opt.step(&g, 1e-2).unwrap();
    }
}

fn snapshot(model: &dyn Model) -> Vec<(String, Vec<f32>)> {
    model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn check_param_count(name: &str, config: serde_json::Value, expected: usize) {
    let (_, params) = adapted(name, &config);
    assert_eq!(params, expected, "{name} {config}");
}

fn check_identity_at_init(name: &str, config: serde_json::Value, tolerance: f32) {
    let plain = logits(base().as_ref());
    let (model, _) = adapted(name, &config);
    let d = max_diff(&plain, &logits(model.as_ref()));
    assert!(d <= tolerance, "{name}: {d} > {tolerance}");
}

fn check_only_its_params_change(name: &str, config: serde_json::Value) {
    let (model, _) = adapted(name, &config);
    let trainable: Vec<String> = trainable_vars(model.as_ref())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let before_vars: Vec<Vec<f32>> = trainable_vars(model.as_ref())
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let before = snapshot(model.as_ref());
    let head: Vec<String> = model.head_vars().into_iter().map(|(n, _)| n).collect();
    train_steps(model.as_ref());
    let after = snapshot(model.as_ref());
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        if !trainable.contains(n) && !head.contains(n) {
            assert!(a == b, "{name}: frozen tensor {n} changed");
        }
    }
    let changed = trainable_vars(model.as_ref())
        .iter()
        .zip(&before_vars)
        .filter(|((_, v), b)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                != **b
        })
        .count();
    assert!(changed > 0, "{name}: no trainable tensor moved");
}

fn check_save_load_round_trip(name: &str, config: serde_json::Value) {
    let (model, _) = adapted(name, &config);
    train_steps(model.as_ref());
    let meta = AdapterMeta {
        config: config.clone(),
        ..AdapterMeta::bare(name)
    };
    let dir = std::env::temp_dir().join(format!(
        "ttlora-matrix-{}-{}",
        std::process::id(),
        name.replace('-', "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    collect(model.as_ref(), ADAPTER, &meta)
        .unwrap()
        .write(&dir)
        .unwrap();
    let folder = AdapterFolder::read(&dir, &Device::Cpu).unwrap();
    assert_eq!(folder.config.peft_type, method(name).unwrap().peft_type());
    let mut fresh = base();
    load_into(fresh.as_mut(), &folder, ADAPTER).unwrap();
    let d = max_diff(&logits(model.as_ref()), &logits(fresh.as_ref()));
    assert!(d <= EXACT, "{name}: reloaded logits differ by {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn check_merge(name: &str, config: serde_json::Value) {
    let (mut model, _) = adapted(name, &config);
    train_steps(model.as_ref());
    let unmerged = logits(model.as_ref());
    match method(name).unwrap().placement() {
        Placement::Parallel => {
            assert!(merge_adapters(model.as_mut(), ADAPTER).unwrap() > 0);
            let d = max_diff(&unmerged, &logits(model.as_ref()));
            assert!(d <= MERGED, "{name}: merged differs by {d}");
        }
        Placement::Serial | Placement::Prompt | Placement::Prefix => {
            let err = merge_adapters(model.as_mut(), ADAPTER)
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot be merged"), "{name}: {err}");
            assert_eq!(
                unmerged,
                logits(model.as_ref()),
                "a failed merge changed nothing"
            );
        }
        // The weights are the model: nothing to merge, nothing changes.
        Placement::Base => {
            assert_eq!(merge_adapters(model.as_mut(), ADAPTER).unwrap(), 0);
            assert_eq!(unmerged, logits(model.as_ref()));
        }
    }
}

/// The sizes of BertConfig::tiny().
const H: usize = 32;
const I: usize = 64;
const LAYERS: usize = 2;

/// The tiny BERT's embeddings: words, positions, token types, their layer norm.
const EMBEDDINGS: usize = 100 * H + 64 * H + 2 * H + 2 * H;

/// Every base tensor of the tiny BERT (with pooler; without the head).
fn full_count() -> usize {
    let layer = 4 * (H * H + H) + (I * H + I) + (H * I + H) + 2 * 2 * H;
    EMBEDDINGS + LAYERS * layer + (H * H + H)
}

/// The parameters of a tensor train with cores of these sizes and every inner bond `rank`:
/// Σ r_{k-1}·s_k·r_k with r_0 = r_d = 1.
fn tt_params(sizes: &[usize], rank: usize) -> usize {
    let bond = |k: usize| if k == 0 || k == sizes.len() { 1 } else { rank };
    sizes
        .iter()
        .enumerate()
        .map(|(k, s)| bond(k) * s * bond(k + 1))
        .sum()
}

// The planner's 6-core shapes at rank 5, fixed here so a planner change shows (core order
// `in | reversed out`, as `ttlora shapes --in N --out M` prints them).
/// (32, 32): [8,2,2|2,2,8].
const TT_32_32: usize = 280;
/// (8, 32) and (32, 8): [4,2,2,2|2,4] and [4,2|2,2,2,4].
const TT_8_32: usize = 240;
/// (2, 32) and (32, 2): [2,2,2,2,2|2] and [2|2,2,2,2,2].
const TT_2_32: usize = 220;

/// The hand sums above agree with the cores they name.
#[test]
fn tt_shape_constants_are_their_cores() {
    assert_eq!(tt_params(&[8, 2, 2, 2, 2, 8], 5), TT_32_32);
    assert_eq!(tt_params(&[4, 2, 2, 2, 2, 4], 5), TT_8_32);
    assert_eq!(tt_params(&[2, 2, 2, 2, 2, 2], 5), TT_2_32);
}

/// Query and value in both layers, each a (32, 32) train.
const TTLORA_COUNT: usize = LAYERS * 2 * TT_32_32;
/// Query and value in both layers: A (8, 32) and B (32, 8), each a train.
const LORETTA_REP_COUNT: usize = LAYERS * 2 * (TT_8_32 + TT_8_32);
/// Houlsby sites, 2 per layer; m = 32 / 16 = 2: down (2, 32) and up (32, 2) trains, and the
/// biases m and h.
const LORETTA_ADP_COUNT: usize = LAYERS * 2 * (TT_2_32 + TT_2_32 + 2 + H);

macro_rules! matrix {
    ($($row:ident: $name:expr, $config:expr, params = $params:expr, identity = $identity:expr;)*) => {
        $(
            mod $row {
                use super::*;

                #[test]
                fn param_count_matches_the_formula() {
                    check_param_count($name, $config, $params);
                }
                #[test]
                fn starts_as_the_base_model() {
                    check_identity_at_init($name, $config, $identity);
                }
                #[test]
                fn training_moves_only_its_own_tensors() {
                    check_only_its_params_change($name, $config);
                }
                #[test]
                fn save_and_load_give_identical_outputs() {
                    check_save_load_round_trip($name, $config);
                }
                #[test]
                fn merges_where_it_can_and_says_so_where_not() {
                    check_merge($name, $config);
                }
            }
        )*

        /// Rows, so a registered method without one fails.
        const ROWS: &[&str] = &[$($name),*];
    };
}

matrix! {
    full: "full", serde_json::json!({}), params = full_count(), identity = 0.0;
    // Embeddings frozen: words, positions, token types and their layer norm stay as loaded.
    full_frozen_embeddings: "full", serde_json::json!({"freeze_embeddings": true}),
        params = full_count() - EMBEDDINGS, identity = 0.0;
    lora: "lora", serde_json::json!({"r": 8}), params = LAYERS * 2 * (8 * H + H * 8), identity = 0.0;
    lora_dropout: "lora", serde_json::json!({"r": 4, "lora_dropout": 0.1}),
        params = LAYERS * 2 * (4 * H + H * 4), identity = 0.0;
    // PEFT's rank_pattern/alpha_pattern: value layers at r = 2 (query keeps r = 8).
    lora_rank_pattern: "lora",
        serde_json::json!({"r": 8, "rank_pattern": {"value": 2}, "alpha_pattern": {"value": 4.0}}),
        params = LAYERS * (8 * (H + H) + 2 * (H + H)), identity = 0.0;
    // DoRA: LoRA's factors plus one magnitude per output.
    lora_dora: "lora", serde_json::json!({"r": 4, "use_dora": true}),
        params = LAYERS * 2 * (4 * (H + H) + H), identity = 0.0;
    tt_lora: "ttlora", serde_json::json!({}), params = TTLORA_COUNT, identity = 0.0;
    adapter_houlsby: "adapter", serde_json::json!({"variant": "houlsby"}),
        params = LAYERS * 2 * (2 * H * 2 + 2 + H), identity = 1e-2;
    adapter_pfeiffer: "adapter", serde_json::json!({"variant": "pfeiffer", "non_linearity": "gelu"}),
        params = LAYERS * (2 * H * 2 + 2 + H), identity = 1e-2;
    loretta_rep: "loretta-rep", serde_json::json!({}), params = LORETTA_REP_COUNT, identity = 0.0;
    loretta_adp: "loretta-adp", serde_json::json!({}), params = LORETTA_ADP_COUNT, identity = 0.0;
    // Prompt learning changes the input from the start: no identity (an infinite tolerance).
    prompt: "prompt", serde_json::json!({"num_virtual_tokens": 5}), params = 5 * H,
        identity = f32::INFINITY;
    prompt_random: "prompt", serde_json::json!({"num_virtual_tokens": 3, "init": "random"}),
        params = 3 * H, identity = f32::INFINITY;
    prefix: "prefix", serde_json::json!({"num_virtual_tokens": 4}), params = 4 * LAYERS * 2 * H,
        identity = f32::INFINITY;
}

#[test]
fn lora_patterns_reach_the_layers_they_match() {
    let config =
        serde_json::json!({"r": 8, "rank_pattern": {"value": 2}, "alpha_pattern": {"value": 4.0}});
    let (model, _) = adapted("lora", &config);
    let lora =
        ttlora::tuning::adapted::to_peft_lora(model.as_ref(), ADAPTER, &AdapterMeta::bare("lora"))
            .unwrap();
    assert_eq!(lora.modules.len(), LAYERS * 2);
    for (path, m) in &lora.modules {
        let expected = if path.ends_with(".value") {
            (2, 4.0)
        } else {
            (8, 8.0)
        };
        assert_eq!((m.a.dims()[0], m.lora_alpha), expected, "{path}");
    }
}

#[test]
fn every_method_has_a_row() {
    for m in METHODS {
        assert!(ROWS.contains(&m.name()), "no matrix row for {}", m.name());
    }
}

#[test]
fn prompt_learning_on_deberta_is_refused_with_the_reason() {
    use ttlora::models::{DebertaV2Config, DebertaV2ForSequenceClassification};
    for name in ["prompt", "prefix"] {
        let mut model: Box<dyn Model> = Box::new(
            DebertaV2ForSequenceClassification::random(
                &DebertaV2Config::tiny(),
                2,
                Pooling::Cls,
                DType::F32,
                &Device::Cpu,
                1,
            )
            .unwrap(),
        );
        let spec = MethodSpec::parse(name, serde_json::json!({})).unwrap();
        let p = placing(&spec, model.as_ref(), None, None, &Default::default()).unwrap();
        let err = attach(model.as_mut(), &spec, &p, ADAPTER, &mut seeded_rng(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not available for deberta-v2"), "{err}");
        assert!(model.virtual_tokens().is_none());
    }
}
