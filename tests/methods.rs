//! The PEFT-style test matrix: every registered method × the invariants every method must
//! keep, on every model family. One row per method configuration (`ROWS`), one entry per
//! family (`FAMILIES`); each invariant (a `check_*` function) is one test per device that runs
//! every family × row and names each failing cell `family/row`. Where a family refuses a
//! method (prompt learning on DeBERTa-v2), that refusal, with its reason, is the outcome every
//! invariant asserts for the cell. A new method gets a row, and the `every_method_has_a_row`
//! test fails until it does; a new family in the library's registry gets an entry in
//! `FAMILIES` (`every_registered_family_has_a_matrix_entry` fails until it does).

use std::panic::{AssertUnwindSafe, catch_unwind};

use candle_core::{DType, Device, Tensor};
use ttlora::adapters::{LayerPlacement, METHODS, MethodKind, MethodSpec, method, seeded_rng};
use ttlora::io::AdapterFolder;
use ttlora::models::heads::CausalLm;
use ttlora::models::llama::{Llama, LlamaConfig};
use ttlora::models::{
    BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification,
    Model, Pooling,
};
use ttlora::train::{Adam, AdamParams, Batch, CrossEntropy, StepSettings, train_step};
use ttlora::tuning::adapted::{AdapterMeta, collect, load_into};
use ttlora::tuning::attach::{attach, placing, trainable_vars};
use ttlora::tuning::merged::merge_adapters;

use crate::common::{TempDir, max_diff, test_device, three_by_eight};

/// Logits of an exact invariant (identity, round trip) agree to this.
const EXACT: f32 = 1e-5;
/// Merged and unmerged logits agree to this (f32 rounding of W0 + ΔW).
const MERGED: f32 = 1e-4;
const ADAPTER: &str = "default";

// ---- the families -------------------------------------------------------------------------

/// One model family of the matrix: a tiny random model of it and what the rows' parameter
/// formulas need to know about it.
struct Family {
    /// config.json's `model_type`, as the library's errors name the architecture.
    name: &'static str,
    /// The tiny base every row adapts (seeded: every call gives the same weights).
    build: fn(&Device) -> Box<dyn Model>,
    /// Every base tensor without the head: what full fine-tuning trains.
    full: usize,
    /// The tensors `freeze_embeddings` keeps frozen.
    embeddings: usize,
    /// Methods the library refuses on this family, with "… is not available for <name>".
    refuses: &'static [&'static str],
}

/// The sizes both tiny configs share (`BertConfig::tiny()`, `DebertaV2Config::tiny()`):
/// hidden 32, FFN 64, 2 layers, vocabulary 100.
const H: usize = 32;
const I: usize = 64;
const LAYERS: usize = 2;

/// One encoder layer: query, key, value and attention output (each H×H + H), the FFN
/// (I×H + I, H×I + H) and two layer norms (2H each). The same in BERT and DeBERTa-v2 with
/// `share_att_key` (no separate position projections).
const LAYER: usize = 4 * (H * H + H) + (I * H + I) + (H * I + H) + 2 * 2 * H;

/// The tiny BERT's embeddings: words, 64 positions, 2 token types, their layer norm.
const BERT_EMBEDDINGS: usize = 100 * H + 64 * H + 2 * H + 2 * H;
/// The tiny LLaMA's token embedding (tied to its LM head).
const LLAMA_EMBEDDINGS: usize = 100 * H;
/// The tiny DeBERTa's embeddings: words and their layer norm (no absolute positions, as
/// `position_biased_input` is off, and no token types, as `type_vocab_size` is 0).
const DEBERTA_EMBEDDINGS: usize = 100 * H + 2 * H;

/// The model families the matrix covers, with what the matrix needs beyond the library's
/// registry (`ttlora::models::FAMILIES`): a tiny config, hand-counted parameters and the
/// methods the family refuses. A test checks every registered family has an entry.
const FAMILIES: &[Family] = &[
    Family {
        name: "bert",
        build: |dev| {
            let cfg = BertConfig::tiny();
            let m =
                BertForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, dev, 5);
            Box::new(m.unwrap())
        },
        // The pooler (H×H + H) belongs to the base in BERT.
        full: BERT_EMBEDDINGS + LAYERS * LAYER + (H * H + H),
        embeddings: BERT_EMBEDDINGS,
        refuses: &[],
    },
    Family {
        name: "deberta-v2",
        build: |dev| {
            let cfg = DebertaV2Config::tiny();
            let m = DebertaV2ForSequenceClassification::random(
                &cfg,
                2,
                Pooling::Cls,
                DType::F32,
                dev,
                5,
            );
            Box::new(m.unwrap())
        },
        // The relative embeddings (2 × 8 buckets) and their layer norm; the context pooler is
        // part of DeBERTa's head.
        full: DEBERTA_EMBEDDINGS + LAYERS * LAYER + 2 * 8 * H + 2 * H,
        embeddings: DEBERTA_EMBEDDINGS,
        // No place for virtual tokens in disentangled attention's relative positions.
        refuses: &["prompt", "prefix"],
    },
    Family {
        name: "llama",
        build: |dev| {
            let cfg = LlamaConfig::tiny();
            let m = Llama::random(&cfg, 0.2, DType::F32, dev, 5).unwrap();
            Box::new(CausalLm::new(m))
        },
        // The tied embedding; per layer q, k, v, o (H×H), gate and up (I×H), down (H×I) and
        // two RMS norms (H); the final norm.
        full: LLAMA_EMBEDDINGS + LAYERS * (4 * H * H + 3 * I * H + 2 * H) + H,
        embeddings: LLAMA_EMBEDDINGS,
        refuses: &[],
    },
];

// ---- the rows -----------------------------------------------------------------------------

/// One method configuration of the matrix.
struct Row {
    /// The row's name in failure messages.
    name: &'static str,
    /// The registered method.
    method: &'static str,
    /// Its config (JSON).
    config: &'static str,
    /// The trainable parameters it adds to a family, by hand from the sizes above.
    params: fn(&Family) -> usize,
    /// How far the adapted model's logits may be from the base model's before training.
    identity: f32,
}

impl Row {
    fn config(&self) -> serde_json::Value {
        serde_json::from_str(self.config).unwrap()
    }
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

/// Every method configuration. The default targets are query and value in every family
/// (`query`/`value`, `query_proj`/`value_proj`), all H×H, so the counts but full's are the
/// same for every family.
const ROWS: &[Row] = &[
    Row {
        name: "full",
        method: "full",
        config: "{}",
        params: |f| f.full,
        identity: 0.0,
    },
    // Embeddings frozen: they stay as loaded.
    Row {
        name: "full_frozen_embeddings",
        method: "full",
        config: r#"{"freeze_embeddings": true}"#,
        params: |f| f.full - f.embeddings,
        identity: 0.0,
    },
    Row {
        name: "lora",
        method: "lora",
        config: r#"{"r": 8}"#,
        params: |_| LAYERS * 2 * (8 * H + H * 8),
        identity: 0.0,
    },
    Row {
        name: "lora_dropout",
        method: "lora",
        config: r#"{"r": 4, "lora_dropout": 0.1}"#,
        params: |_| LAYERS * 2 * (4 * H + H * 4),
        identity: 0.0,
    },
    // PEFT's rank_pattern/alpha_pattern (a regex, full-matched against the path's tail):
    // value layers at r = 2, query keeps r = 8.
    Row {
        name: "lora_rank_pattern",
        method: "lora",
        config: r#"{"r": 8, "rank_pattern": {"(value|v)(_proj)?": 2},
                    "alpha_pattern": {"(value|v)(_proj)?": 4.0}}"#,
        params: |_| LAYERS * (8 * (H + H) + 2 * (H + H)),
        identity: 0.0,
    },
    // DoRA: LoRA's factors plus one magnitude per output.
    Row {
        name: "lora_dora",
        method: "lora",
        config: r#"{"r": 4, "use_dora": true}"#,
        params: |_| LAYERS * 2 * (4 * (H + H) + H),
        identity: 0.0,
    },
    Row {
        name: "tt_lora",
        method: "ttlora",
        config: "{}",
        params: |_| TTLORA_COUNT,
        identity: 0.0,
    },
    Row {
        name: "adapter_houlsby",
        method: "adapter",
        config: r#"{"variant": "houlsby"}"#,
        params: |_| LAYERS * 2 * (2 * H * 2 + 2 + H),
        identity: 1e-2,
    },
    Row {
        name: "adapter_pfeiffer",
        method: "adapter",
        config: r#"{"variant": "pfeiffer", "non_linearity": "gelu"}"#,
        params: |_| LAYERS * (2 * H * 2 + 2 + H),
        identity: 1e-2,
    },
    Row {
        name: "loretta_rep",
        method: "loretta-rep",
        config: "{}",
        params: |_| LORETTA_REP_COUNT,
        identity: 0.0,
    },
    Row {
        name: "loretta_adp",
        method: "loretta-adp",
        config: "{}",
        params: |_| LORETTA_ADP_COUNT,
        identity: 0.0,
    },
    // Prompt learning changes the input from the start: no identity (an infinite tolerance).
    Row {
        name: "prompt",
        method: "prompt",
        config: r#"{"num_virtual_tokens": 5}"#,
        params: |_| 5 * H,
        identity: f32::INFINITY,
    },
    Row {
        name: "prompt_random",
        method: "prompt",
        config: r#"{"num_virtual_tokens": 3, "init": "random"}"#,
        params: |_| 3 * H,
        identity: f32::INFINITY,
    },
    Row {
        name: "prefix",
        method: "prefix",
        config: r#"{"num_virtual_tokens": 4}"#,
        params: |_| 4 * LAYERS * 2 * H,
        identity: f32::INFINITY,
    },
];

// ---- running a check over every cell ------------------------------------------------------

/// Runs `check` on every family × row on `dev`, a refused cell's check being that refusal;
/// fails naming every failing cell `family/row` with its message.
fn every_cell(dev: &Device, check: fn(&Family, &Row, &Device)) {
    let mut failures = Vec::new();
    for family in FAMILIES {
        for row in ROWS {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if family.refuses.contains(&row.method) {
                    check_refused(family, row, dev);
                } else {
                    check(family, row, dev);
                }
            }));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}/{}: {message}", family.name, row.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells failed:\n{}",
        failures.len(),
        FAMILIES.len() * ROWS.len(),
        failures.join("\n")
    );
}

/// A family's refusal of a method: attaching it fails, naming the method and the family
/// with the reason, and leaves the model without virtual tokens.
fn check_refused(family: &Family, row: &Row, dev: &Device) {
    let mut model = (family.build)(dev);
    let err = attach_row(model.as_mut(), row)
        .map(|_| ())
        .expect_err("the family refuses this method, but it attached");
    let want = format!(
        "{} tuning is not available for {}: ",
        row.method, family.name
    );
    assert!(err.to_string().contains(&want), "`{want}` not in: {err}");
    assert!(model.virtual_tokens().unwrap().is_none());
}

/// Attaches `row`'s method to `model`; returns the trainable count the report gives.
fn attach_row(model: &mut dyn Model, row: &Row) -> ttlora::Result<usize> {
    let spec = MethodSpec::parse(row.method, row.config())?;
    let p = placing(&spec, model, None, None, &Default::default())?;
    Ok(attach(model, &spec, &p, ADAPTER, &mut seeded_rng(11))?.params)
}

/// The family's base with `row` attached; returns the trainable count.
fn adapted(family: &Family, row: &Row, dev: &Device) -> (Box<dyn Model>, usize) {
    let mut model = (family.build)(dev);
    let params = attach_row(model.as_mut(), row).unwrap();
    assert_eq!(params, count(model.as_ref()), "report vs vars");
    (model, params)
}

fn batch(dev: &Device) -> Batch {
    Batch {
        input: three_by_eight(dev),
        labels: Tensor::new(&[0u32, 1, 1], dev).unwrap(),
        rows: None,
        choices: None,
    }
}

fn logits(model: &dyn Model, dev: &Device) -> Vec<Vec<f32>> {
    ttlora::ops::no_grad(|| model.forward(&batch(dev).input, false))
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn count(model: &dyn Model) -> usize {
    trainable_vars(model)
        .unwrap()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// A few AdamW steps on the fixed batch, head included.
fn train_steps(model: &dyn Model, dev: &Device) {
    let mut vars: Vec<_> = trainable_vars(model)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    let mut opt = Adam::new(vars, AdamParams::default()).unwrap();
    for step in 0..3 {
        let settings = StepSettings {
            lr: 1e-2,
            max_grad_norm: None,
            seed: 0,
            step,
        };
        train_step(model, &CrossEntropy, &[batch(dev)], &mut opt, settings).unwrap();
    }
}

fn snapshot(model: &dyn Model) -> Vec<(String, Vec<f32>)> {
    model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

// ---- the invariants -----------------------------------------------------------------------

fn check_param_count(family: &Family, row: &Row, dev: &Device) {
    let (_, params) = adapted(family, row, dev);
    assert_eq!(params, (row.params)(family), "config {}", row.config);
}

fn check_identity_at_init(family: &Family, row: &Row, dev: &Device) {
    let plain = logits((family.build)(dev).as_ref(), dev);
    let (model, _) = adapted(family, row, dev);
    let d = max_diff(&plain, &logits(model.as_ref(), dev));
    assert!(d <= row.identity, "{d} > {}", row.identity);
}

fn check_only_its_params_change(family: &Family, row: &Row, dev: &Device) {
    let (model, _) = adapted(family, row, dev);
    let trainable: Vec<String> = trainable_vars(model.as_ref())
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let before_vars: Vec<Vec<f32>> = trainable_vars(model.as_ref())
        .unwrap()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let before = snapshot(model.as_ref());
    let head: Vec<String> = model.head_vars().into_iter().map(|(n, _)| n).collect();
    train_steps(model.as_ref(), dev);
    let after = snapshot(model.as_ref());
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        if !trainable.contains(n) && !head.contains(n) {
            assert!(a == b, "frozen tensor {n} changed");
        }
    }
    let changed = trainable_vars(model.as_ref())
        .unwrap()
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
    assert!(changed > 0, "no trainable tensor moved");
}

fn check_save_load_round_trip(family: &Family, row: &Row, dev: &Device) {
    let (model, _) = adapted(family, row, dev);
    train_steps(model.as_ref(), dev);
    let meta = AdapterMeta {
        config: row.config(),
        ..AdapterMeta::bare(row.method)
    };
    let tmp = TempDir::new("matrix");
    let dir = tmp.join("adapter");
    collect(model.as_ref(), ADAPTER, &meta)
        .unwrap()
        .write(&dir)
        .unwrap();
    let folder = AdapterFolder::read(&dir, dev).unwrap();
    assert_eq!(
        folder.config.peft_type,
        method(row.method).unwrap().peft_type()
    );
    let mut fresh = (family.build)(dev);
    load_into(fresh.as_mut(), &folder, ADAPTER).unwrap();
    let d = max_diff(&logits(model.as_ref(), dev), &logits(fresh.as_ref(), dev));
    assert!(d <= EXACT, "reloaded logits differ by {d}");
}

fn check_merge(family: &Family, row: &Row, dev: &Device) {
    let (mut model, _) = adapted(family, row, dev);
    train_steps(model.as_ref(), dev);
    let unmerged = logits(model.as_ref(), dev);
    match method(row.method).unwrap().kind() {
        MethodKind::Layer(LayerPlacement::Parallel) => {
            assert!(merge_adapters(model.as_mut(), ADAPTER).unwrap() > 0);
            let d = max_diff(&unmerged, &logits(model.as_ref(), dev));
            assert!(d <= MERGED, "merged differs by {d}");
        }
        MethodKind::Layer(LayerPlacement::Serial) | MethodKind::VirtualTokens(_) => {
            let err = merge_adapters(model.as_mut(), ADAPTER)
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot be merged"), "{err}");
            assert_eq!(
                unmerged,
                logits(model.as_ref(), dev),
                "a failed merge changed nothing"
            );
        }
        // The weights are the model: nothing to merge, nothing changes.
        MethodKind::BaseWeights => {
            assert_eq!(merge_adapters(model.as_mut(), ADAPTER).unwrap(), 0);
            assert_eq!(unmerged, logits(model.as_ref(), dev));
        }
    }
}

// ---- the tests: one per invariant and device, over every cell -----------------------------

fn param_count_matches_the_formula(dev: &Device) {
    every_cell(dev, check_param_count);
}
test_device!(
    param_count_matches_the_formula,
    param_count_matches_the_formula_cpu,
    param_count_matches_the_formula_cuda
);

fn starts_as_the_base_model(dev: &Device) {
    every_cell(dev, check_identity_at_init);
}
test_device!(
    starts_as_the_base_model,
    starts_as_the_base_model_cpu,
    starts_as_the_base_model_cuda
);

fn training_moves_only_its_own_tensors(dev: &Device) {
    every_cell(dev, check_only_its_params_change);
}
test_device!(
    training_moves_only_its_own_tensors,
    training_moves_only_its_own_tensors_cpu,
    training_moves_only_its_own_tensors_cuda
);

fn save_and_load_give_identical_outputs(dev: &Device) {
    every_cell(dev, check_save_load_round_trip);
}
test_device!(
    save_and_load_give_identical_outputs,
    save_and_load_give_identical_outputs_cpu,
    save_and_load_give_identical_outputs_cuda
);

fn merges_where_it_can_and_says_so_where_not(dev: &Device) {
    every_cell(dev, check_merge);
}
test_device!(
    merges_where_it_can_and_says_so_where_not,
    merges_where_it_can_and_says_so_where_not_cpu,
    merges_where_it_can_and_says_so_where_not_cuda
);

fn lora_patterns_reach_the_layers_they_match(dev: &Device) {
    let row = ROWS.iter().find(|r| r.name == "lora_rank_pattern").unwrap();
    for family in FAMILIES {
        let (model, _) = adapted(family, row, dev);
        let lora = ttlora::tuning::adapted::to_peft_lora(
            model.as_ref(),
            ADAPTER,
            &AdapterMeta::bare("lora"),
        )
        .unwrap();
        assert_eq!(lora.modules.len(), LAYERS * 2, "{}", family.name);
        for (path, m) in &lora.modules {
            let value = [".value", ".value_proj", ".v_proj"];
            let expected = if value.iter().any(|v| path.ends_with(v)) {
                (2, 4.0)
            } else {
                (8, 8.0)
            };
            assert_eq!((m.a.dims()[0], m.lora_alpha), expected, "{path}");
        }
    }
}
test_device!(
    lora_patterns_reach_the_layers_they_match,
    lora_patterns_reach_the_layers_they_match_cpu,
    lora_patterns_reach_the_layers_they_match_cuda
);

#[test]
fn every_method_has_a_row() {
    for m in METHODS {
        assert!(
            ROWS.iter().any(|r| r.method == m.name()),
            "no matrix row for {}",
            m.name()
        );
    }
}

#[test]
fn every_registered_family_has_a_matrix_entry() {
    for f in ttlora::models::FAMILIES {
        let covered = f
            .model_types()
            .iter()
            .any(|t| FAMILIES.iter().any(|m| m.name == *t));
        assert!(covered, "no matrix entry for the {} family", f.name());
    }
}

#[test]
fn every_refusal_names_a_registered_method() {
    for family in FAMILIES {
        for m in family.refuses {
            assert!(method(m).is_ok(), "{}: unknown method {m}", family.name);
        }
    }
}
