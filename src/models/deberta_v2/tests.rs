//! DeBERTa-v2 family tests on tiny random models (no DeBERTa weights offline): gradient flow
//! into every adapter (DESIGN §2), HF round trips and strict loading, padding invariance, the
//! relative-position buckets against HF's formula, the disentangled attention against a
//! direct loop computation, merge = unmerged, dropout only in training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::adapters::Linear;
use crate::models::test_util::{
    attach_ttlora, max_diff, padded_batch, sq_norm, temp_dir, write_model,
};
use crate::models::{Model, ModelInput, Pooling, load_classifier};

/// Agreement of the same computation done two ways (padding, reload, merge) in f32.
const SAME_F32: f32 = 1e-5;
/// Agreement of the attention with the f64 loop reference, in f32.
const REFERENCE_F32: f64 = 1e-5;

/// v3 as in [`DebertaV2Config::tiny`]: shared keys, 8 log buckets, no positions, no types.
fn v3() -> DebertaV2Config {
    DebertaV2Config::tiny()
}

/// Every optional part switched on: own position projections, the conv beside layer 0,
/// absolute positions, token types, a narrower embedding with `embed_proj`, no buckets,
/// no relative-embedding norm, tanh pooler.
fn v2_full() -> DebertaV2Config {
    DebertaV2Config {
        share_att_key: false,
        conv_kernel_size: 3,
        conv_act: "gelu".into(),
        position_biased_input: true,
        type_vocab_size: 2,
        embedding_size: Some(16),
        position_buckets: -1,
        max_relative_positions: 6,
        norm_rel_ebd: "none".into(),
        pooler_hidden_act: "tanh".into(),
        ..DebertaV2Config::tiny()
    }
}

/// Only c2p, own key projection, no pooler/classifier dropout difference.
fn c2p_only() -> DebertaV2Config {
    DebertaV2Config {
        pos_att_type: vec!["c2p".into()],
        share_att_key: false,
        ..DebertaV2Config::tiny()
    }
}

fn configs() -> Vec<(&'static str, DebertaV2Config)> {
    vec![
        ("v3", v3()),
        ("v2-full", v2_full()),
        ("c2p-only", c2p_only()),
    ]
}

/// A right-padded batch from rows of token ids, token types 0 then 1 from the middle.
fn batch(rows: &[Vec<u32>], pad: u32, dev: &Device) -> ModelInput {
    padded_batch(rows, pad, dev, |i, len| u32::from(i >= len / 2 && i < len))
}

/// Four sequences, three of them padded.
fn tiny_batch(dev: &Device) -> ModelInput {
    batch(
        &[
            vec![1, 17, 33, 48, 5, 2, 60, 61, 2],
            vec![1, 9, 71, 2],
            vec![1, 64, 12, 88, 41, 2],
            vec![1, 50, 2],
        ],
        0,
        dev,
    )
}

fn random_model(
    cfg: &DebertaV2Config,
    labels: usize,
    pooling: Pooling,
    seed: u64,
) -> Box<dyn Model> {
    Box::new(
        DebertaV2ForSequenceClassification::random(
            cfg,
            labels,
            pooling,
            DType::F32,
            &Device::Cpu,
            seed,
        )
        .unwrap(),
    )
}

/// Whether a module path ends in one of the model's default targets.
fn is_default_target(model: &dyn Model, path: &str) -> bool {
    model
        .default_targets()
        .iter()
        .any(|t| path.ends_with(&format!(".{t}")))
}

#[test]
fn gradients_reach_every_adapter_core_and_head_var() {
    let dev = Device::Cpu;
    // v2-full adapts every linear (embed_proj, pos_key_proj, pos_query_proj included).
    for (what, cfg, pooling, all) in [
        ("v3", v3(), Pooling::Cls, false),
        ("v3/mean", v3(), Pooling::Mean, false),
        ("v2-full", v2_full(), Pooling::Cls, true),
        ("c2p-only", c2p_only(), Pooling::Cls, true),
    ] {
        let mut model = random_model(&cfg, 3, pooling, 5);
        let targets: Vec<String> = model
            .linears()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| all || is_default_target(model.as_ref(), p))
            .collect();
        let attached = attach_ttlora(model.as_mut(), |p| targets.iter().any(|t| t == p));
        if !all {
            assert_eq!(attached, 2 * cfg.num_hidden_layers, "{what}");
        }
        let input = tiny_batch(&dev);
        let labels = Tensor::new(&[0u32, 2, 1, 2], &dev).unwrap();
        let logits = model.forward(&input, true).unwrap();
        assert_eq!(logits.dims(), [4, 3]);
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();

        let mut adapted = Vec::new();
        for (path, lin) in model.linears() {
            let trainable = lin.trainable();
            if !trainable.is_empty() {
                adapted.push(path.clone());
            }
            for (adapter, tensor, var) in trainable {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{what}: no gradient for {path}.{adapter}.{tensor}"));
                assert!(
                    sq_norm(g) > 0.0,
                    "{what}: zero gradient for {path}.{tensor}"
                );
            }
        }
        assert_eq!(adapted.len(), attached, "{what}");
        // Layer 0 — the farthest from the loss — is covered; say so explicitly.
        for name in ["query_proj", "value_proj"] {
            let path = format!("deberta.encoder.layer.0.attention.self.{name}");
            assert!(adapted.contains(&path), "{what}: {path} not adapted");
        }
        if all && cfg.embedding_size.is_some() {
            assert!(adapted.contains(&"deberta.embeddings.embed_proj".to_string()));
        }
        let head = model.head_vars();
        assert_eq!(head.len(), 4);
        for (name, var) in head {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no gradient for head {name}"));
            assert!(sq_norm(g) > 0.0, "{what}: zero gradient for head {name}");
        }
    }
}

#[test]
fn frozen_weights_get_no_gradient_entry() {
    let dev = Device::Cpu;
    for (what, cfg) in configs() {
        let mut model =
            DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 1)
                .unwrap();
        attach_ttlora(&mut model, |p| p.ends_with("_proj"));
        let labels = Tensor::new(&[0u32, 1, 1, 0], &dev).unwrap();
        let logits = model.forward(&tiny_batch(&dev), true).unwrap();
        let grads = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .backward()
            .unwrap();
        let head: Vec<String> = model.head_vars().into_iter().map(|(n, _)| n).collect();
        for (name, t) in model.state_dict() {
            if !head.contains(&name) {
                assert!(
                    grads.get(&t).is_none(),
                    "{what}: frozen {name} has a gradient"
                );
            }
        }
    }
}

#[test]
fn linears_carry_full_hf_module_paths() {
    let model = random_model(&v3(), 2, Pooling::Cls, 0);
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names[..6],
        [
            "deberta.encoder.layer.0.attention.self.query_proj",
            "deberta.encoder.layer.0.attention.self.key_proj",
            "deberta.encoder.layer.0.attention.self.value_proj",
            "deberta.encoder.layer.0.attention.output.dense",
            "deberta.encoder.layer.0.intermediate.dense",
            "deberta.encoder.layer.0.output.dense",
        ]
    );
    assert_eq!(names.len(), 12);
    assert_eq!(names[11], "deberta.encoder.layer.1.output.dense");
    assert_eq!(model.default_targets(), ["query_proj", "value_proj"]);
    let head: Vec<String> = model.head_vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        head,
        [
            "pooler.dense.weight",
            "pooler.dense.bias",
            "classifier.weight",
            "classifier.bias"
        ]
    );

    let full = random_model(&v2_full(), 2, Pooling::Cls, 0);
    let names: Vec<String> = full.linears().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 1 + 2 * 8);
    assert_eq!(names[0], "deberta.embeddings.embed_proj");
    assert_eq!(
        names[4],
        "deberta.encoder.layer.0.attention.self.pos_key_proj"
    );
    assert_eq!(
        names[5],
        "deberta.encoder.layer.0.attention.self.pos_query_proj"
    );
    let c2p = random_model(&c2p_only(), 2, Pooling::Cls, 0);
    let names: Vec<String> = c2p.linears().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.ends_with("pos_key_proj")));
    assert!(!names.iter().any(|n| n.ends_with("pos_query_proj")));
}

#[test]
fn regression_has_one_output_and_mean_pooling_works() {
    let dev = Device::Cpu;
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let model = random_model(&v3(), 1, pooling, 3);
        let logits = model.forward(&tiny_batch(&dev), false).unwrap();
        assert_eq!(logits.dims(), [4, 1]);
        let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn padding_does_not_change_outputs() {
    let dev = Device::Cpu;
    for (what, cfg) in configs() {
        for pooling in [Pooling::Cls, Pooling::Mean] {
            let model = random_model(&cfg, 2, pooling, 3);
            let row = vec![1u32, 40, 41, 42, 43, 2];
            let mut long = row.clone();
            long.extend([7, 8, 9, 10, 11, 12, 13]);
            let alone = model
                .forward(&batch(std::slice::from_ref(&row), 0, &dev), false)
                .unwrap();
            let padded = model.forward(&batch(&[row, long], 0, &dev), false).unwrap();
            let diff = max_diff(&alone, &padded.narrow(0, 0, 1).unwrap());
            assert!(diff < SAME_F32, "{what}/{pooling}: {diff}");
        }
    }
}

#[test]
fn dropout_only_in_training() {
    let dev = Device::Cpu;
    let model = random_model(&v2_full(), 2, Pooling::Cls, 2);
    let input = tiny_batch(&dev);
    let a = model.forward(&input, false).unwrap();
    let b = model.forward(&input, false).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    crate::ops::seed_dropout(7);
    let t1 = model.forward(&input, true).unwrap();
    crate::ops::seed_dropout(7);
    let t2 = model.forward(&input, true).unwrap();
    assert!(max_diff(&a, &t1) > 0.0, "training applies dropout");
    assert_eq!(max_diff(&t1, &t2), 0.0, "seeded masks repeat");
    let t3 = model.forward(&input, true).unwrap();
    assert!(max_diff(&t1, &t3) > 0.0, "the next masks differ");
}

/// Gives every adapter tensor random values so ΔW ≠ 0.
fn perturb_adapters(model: &dyn Model) {
    for (_, lin) in model.linears() {
        for (_, _, var) in lin.trainable() {
            let t = Tensor::randn(0f32, 0.3, var.dims(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }
}

#[test]
fn merged_adapters_give_the_unmerged_outputs() {
    let dev = Device::Cpu;
    for (what, cfg) in configs() {
        let mut model = random_model(&cfg, 3, Pooling::Cls, 4);
        attach_ttlora(model.as_mut(), |_| true);
        perturb_adapters(model.as_ref());
        let input = tiny_batch(&dev);
        let base = random_model(&cfg, 3, Pooling::Cls, 4)
            .forward(&input, false)
            .unwrap();
        let unmerged = model.forward(&input, false).unwrap();
        assert!(
            max_diff(&base, &unmerged) > 1e-3,
            "{what}: adapters change the output"
        );
        let w0: Vec<Tensor> = model
            .linears()
            .iter()
            .map(|(_, l)| l.weight().into_owned())
            .collect();
        for (_, lin) in model.linears_mut() {
            lin.merge().unwrap();
        }
        let merged = model.forward(&input, false).unwrap();
        let diff = max_diff(&unmerged, &merged);
        assert!(diff < 1e-4, "{what}: merged differs by {diff}");
        for (_, lin) in model.linears_mut() {
            lin.unmerge().unwrap();
        }
        let again = model.forward(&input, false).unwrap();
        assert!(max_diff(&unmerged, &again) < 1e-4, "{what}: unmerged again");
        for ((path, lin), w) in model.linears().iter().zip(&w0) {
            assert!(
                max_diff(&lin.weight(), w) < 1e-5,
                "{what}: {path} not restored"
            );
        }
    }
}

#[test]
fn log_buckets_match_hf_formula() {
    // mid = bucket/2; |rel| ≤ mid keeps rel; else
    // sign · (⌈ln(|rel|/mid) / ln((max−1)/mid) · (mid−1)⌉ + mid).
    // bucket 8, max 16: mid 4, ln(15/4) = 1.32176.
    //   rel 5: ln(1.25)/1.32176·3 = 0.506 → ⌈⌉ 1 → 5;  rel 7: ln(1.75) → 1.270 → 2 → 6;
    //   rel 8: ln 2 → 1.573 → 2 → 6;  rel 10: ln 2.5 → 2.080 → 3 → 7;
    //   rel 15: ln 3.75 / ln 3.75 · 3 = 3 → 7;  rel 16: ln 4 → 3.146 → 4 → 8;
    //   rel 100: ln 25 → 7.306 → 8 → 12.
    let cases_8_16 = [
        (0, 0),
        (1, 1),
        (3, 3),
        (4, 4),
        (-4, -4),
        (5, 5),
        (6, 5),
        (7, 6),
        (8, 6),
        (-8, -6),
        (10, 7),
        (15, 7),
        (16, 8),
        (100, 12),
        (-100, -12),
    ];
    for (rel, want) in cases_8_16 {
        assert_eq!(make_log_bucket_position(rel, 8, 16), want, "8/16 rel {rel}");
    }
    // DeBERTa-v3's 256 buckets over 512 positions: mid 128, ln(511/128) = 1.38434.
    //   rel 129: ln(129/128)/1.38434·127 = 0.714 → 1 → 129;  rel 200: ln 1.5625 → 40.94 → 41
    //   → 169;  rel 300: ln 2.34375 → 78.13 → 79 → 207;  rel 511: 127 → 255;  rel 1000:
    //   ln 7.8125 → 188.59 → 189 → 317 (clamped to the span later).
    let cases_256_512 = [
        (5, 5),
        (127, 127),
        (128, 128),
        (129, 129),
        (-129, -129),
        (200, 169),
        (-200, -169),
        (300, 207),
        (511, 255),
        (512, 256),
        (1000, 317),
    ];
    for (rel, want) in cases_256_512 {
        assert_eq!(
            make_log_bucket_position(rel, 256, 512),
            want,
            "256/512 rel {rel}"
        );
    }
    // bucket 8, max 64: ln(63/4) = 2.75684: rel 9 → ln 2.25·3/2.757 = 0.882 → 1 → 5;
    // rel 17 → 1.575 → 2 → 6; rel 33 → 2.297 → 3 → 7; rel 63 → 3 → 7; rel −20 → 1.751 → −6.
    for (rel, want) in [(9, 5), (17, 6), (33, 7), (63, 7), (-63, -7), (-20, -6)] {
        assert_eq!(make_log_bucket_position(rel, 8, 64), want, "8/64 rel {rel}");
    }
}

#[test]
fn relative_positions_are_query_minus_key() {
    assert_eq!(
        build_relative_position(3, 3, -1, -1),
        vec![0, -1, -2, 1, 0, -1, 2, 1, 0]
    );
    assert_eq!(
        build_relative_position(2, 4, -1, 10),
        vec![0, -1, -2, -3, 1, 0, -1, -2]
    );
    // Bucketed: distances beyond mid = 2 are compressed (bucket 4, max 8).
    let rel = build_relative_position(1, 8, 4, 8);
    let direct: Vec<i64> = (0..8).map(|j| make_log_bucket_position(-j, 4, 8)).collect();
    assert_eq!(rel, direct);
    assert_eq!(rel[..3], [0, -1, -2]);
}

/// `x: (L, in)` through a linear, as f64 rows.
fn project(x: &Tensor, lin: &Linear) -> Vec<Vec<f64>> {
    let y = x.matmul(&lin.weight().t().unwrap()).unwrap();
    let y = match lin.bias() {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    };
    y.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// HF's disentangled attention for one example, by loops in f64: returns the context
/// `(L, hidden)` of layer `layer` for `x: (L, hidden)` and `mask: (L)`.
fn reference_attention(
    model: &DebertaV2ForSequenceClassification,
    layer: usize,
    x: &Tensor,
    mask: &[u32],
) -> Vec<Vec<f64>> {
    let cfg = model.config();
    let (n_heads, d) = (cfg.num_attention_heads, cfg.head_dim());
    let linears: HashMap<String, &Linear> = model.linears().into_iter().collect();
    let lin = |name: &str| linears[&format!("deberta.encoder.layer.{layer}.attention.self.{name}")];
    let (q, k, v) = (
        project(x, lin("query_proj")),
        project(x, lin("key_proj")),
        project(x, lin("value_proj")),
    );
    let seq_len = q.len();
    let state: HashMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("deberta.").map(|n| (n.to_string(), t)))
        .collect();
    // Relative embeddings, layer-normed by hand when the config asks for it.
    let mut rel = state["encoder.rel_embeddings.weight"].clone();
    if cfg.norm_rel_layer_norm() {
        let rows = rel.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let g = state["encoder.LayerNorm.weight"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let b = state["encoder.LayerNorm.bias"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let normed: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r.len() as f64;
                let rstd = 1.0 / (var + cfg.layer_norm_eps).sqrt();
                r.iter()
                    .enumerate()
                    .map(|(c, v)| ((v - mean) * rstd * g[c] + b[c]) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        rel = Tensor::from_vec(normed, rel.dims(), &Device::Cpu).unwrap();
    }
    // Shared keys reuse query_proj/key_proj; otherwise the layer has its own projections.
    let own = |shared: &str, own: &str| lin(if cfg.share_att_key { shared } else { own });
    let pk = cfg
        .has_c2p()
        .then(|| project(&rel, own("key_proj", "pos_key_proj")));
    let pq = cfg
        .has_p2c()
        .then(|| project(&rel, own("query_proj", "pos_query_proj")));
    let span = cfg.relative_span() as i64;
    let bucket = |r: i64| {
        if cfg.position_buckets > 0 {
            make_log_bucket_position(r, cfg.position_buckets, cfg.max_relative_positions())
        } else {
            r
        }
    };
    let delta = |r: i64| (r + span).clamp(0, 2 * span - 1) as usize;
    let scale = ((d * cfg.scale_factor()) as f64).sqrt();
    let mut out = vec![vec![0.0; n_heads * d]; seq_len];
    for h in 0..n_heads {
        let hd = |row: &Vec<f64>| row[h * d..(h + 1) * d].to_vec();
        for i in 0..seq_len {
            let mut scores = Vec::new();
            for j in 0..seq_len {
                if mask[j] == 0 {
                    scores.push(f64::NEG_INFINITY);
                    continue;
                }
                let mut s = dot(&hd(&q[i]), &hd(&k[j]));
                if let Some(pk) = &pk {
                    // c2p: query i against the key of the position δ(i, j).
                    s += dot(&hd(&q[i]), &hd(&pk[delta(bucket(i as i64 - j as i64))]));
                }
                if let Some(pq) = &pq {
                    // p2c: key j against the query of the position δ(j, i) (HF gathers with
                    // −rel[j][i] + span).
                    s += dot(&hd(&k[j]), &hd(&pq[delta(-bucket(j as i64 - i as i64))]));
                }
                scores.push(s / scale);
            }
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, w) in e.iter().enumerate() {
                for c in 0..d {
                    out[i][h * d + c] += w / z * v[j][h * d + c];
                }
            }
        }
    }
    out
}

#[test]
fn disentangled_attention_matches_a_loop_reference() {
    let dev = Device::Cpu;
    let bucketed_short_span = DebertaV2Config {
        position_buckets: 4,
        max_relative_positions: 8,
        ..v3()
    };
    let cases = [
        ("v3", v3()),
        ("v2-full", v2_full()),
        ("c2p-only", c2p_only()),
        (
            "p2c-only",
            DebertaV2Config {
                pos_att_type: vec!["p2c".into()],
                ..v3()
            },
        ),
        ("buckets-4", bucketed_short_span),
    ];
    for (what, cfg) in cases {
        let model =
            DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 6)
                .unwrap();
        // Longer than the span so the clamp at both ends is exercised.
        let seq_len = 13;
        let x = Tensor::randn(0f32, 1.0, (1, seq_len, cfg.hidden_size), &dev).unwrap();
        let mask: Vec<u32> = (0..seq_len).map(|i| u32::from(i < 11)).collect();
        let mask_t = Tensor::from_vec(mask.clone(), (1, seq_len), &dev).unwrap();
        for layer in 0..cfg.num_hidden_layers {
            let got = model
                .encoder()
                .attention_context(layer, &x, &mask_t)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            let want = reference_attention(&model, layer, &x.squeeze(0).unwrap(), &mask);
            let diff = got
                .iter()
                .flatten()
                .zip(want.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < REFERENCE_F32, "{what} layer {layer}: {diff}");
        }
    }
}

#[test]
fn without_relative_terms_attention_is_plain_scaled_dot_product() {
    let dev = Device::Cpu;
    for relative_attention in [true, false] {
        let cfg = DebertaV2Config {
            pos_att_type: Vec::new(),
            relative_attention,
            ..v3()
        };
        assert_eq!(cfg.scale_factor(), 1);
        let model =
            DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 8)
                .unwrap();
        let (b_sz, seq_len, h) = (2, 7, cfg.hidden_size);
        let (n_heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let x = Tensor::randn(0f32, 1.0, (b_sz, seq_len, h), &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], &dev).unwrap();
        let got = model.encoder().attention_context(0, &x, &mask).unwrap();

        // softmax(q·kᵀ/√d + mask)·v per head, with candle's own composed ops.
        let linears: HashMap<String, &Linear> = model.linears().into_iter().collect();
        let proj = |n: &str| {
            let l = linears[&format!("deberta.encoder.layer.0.attention.self.{n}")];
            x.broadcast_matmul(&l.weight().t().unwrap())
                .unwrap()
                .broadcast_add(l.bias().unwrap())
                .unwrap()
                .reshape((b_sz, seq_len, n_heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (proj("query_proj"), proj("key_proj"), proj("value_proj"));
        let bias = mask
            .to_dtype(DType::F32)
            .unwrap()
            .affine(1e9, -1e9)
            .unwrap()
            .reshape((b_sz, 1, 1, seq_len))
            .unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1).unwrap();
        let want = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b_sz, seq_len, h))
            .unwrap();
        let diff = max_diff(&got, &want);
        assert!(
            diff < SAME_F32,
            "relative_attention {relative_attention}: {diff}"
        );
    }
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let dev = Device::Cpu;
    let input = tiny_batch(&dev);
    for (what, cfg) in configs() {
        let model =
            DebertaV2ForSequenceClassification::random(&cfg, 3, Pooling::Cls, DType::F32, &dev, 9)
                .unwrap();
        let dir = temp_dir("deberta", &format!("round-trip-{what}"));
        // As a DebertaV2ForSequenceClassification checkpoint (prefixed encoder, head bare),
        // with the buffer HF serialises and an MLM head we do not use.
        let mut tensors = model.state_dict();
        tensors.push((
            "deberta.embeddings.position_ids".into(),
            Tensor::arange(0i64, cfg.max_position_embeddings as i64, &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        ));
        tensors.push((
            "lm_predictions.lm_head.bias".into(),
            Tensor::zeros(cfg.vocab_size, DType::F32, &dev).unwrap(),
        ));
        write_model(&dir, &cfg, tensors);
        let loaded: Box<dyn Model> = load_classifier(&dir, 3, Pooling::Cls, &dev, 1234).unwrap();
        let a = model.forward(&input, false).unwrap();
        let b = loaded.forward(&input, false).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "{what}");
        // As a bare encoder (a DebertaV2Model checkpoint): the head is fresh from the seed.
        let bare: Vec<(String, Tensor)> = model
            .state_dict()
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix("deberta.").map(|n| (n.to_string(), t)))
            .collect();
        write_model(&dir, &cfg, bare);
        let fresh = load_classifier(&dir, 3, Pooling::Cls, &dev, 9).unwrap();
        assert_eq!(
            max_diff(&a, &fresh.forward(&input, false).unwrap()),
            0.0,
            "{what} bare"
        );
        let encoder = DebertaV2::load(&dir, DType::F32, &dev).unwrap();
        let hidden = encoder.forward(&input, false).unwrap();
        let direct = model.encoder().forward(&input, false).unwrap();
        assert_eq!(max_diff(&hidden, &direct), 0.0, "{what} encoder");
    }
}

#[test]
fn strict_loading_names_file_tensor_and_shapes() {
    let dev = Device::Cpu;
    let cfg = v3();
    let model =
        DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 0)
            .unwrap();
    let dir = temp_dir("deberta", "strict");
    let file = dir.join("model.safetensors");
    let load = |labels: usize| match load_classifier(&dir, labels, Pooling::Cls, &dev, 0) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    };

    let missing = "deberta.encoder.layer.1.attention.self.key_proj.weight";
    let without = |name: &str| -> Vec<(String, Tensor)> {
        model
            .state_dict()
            .into_iter()
            .filter(|(n, _)| n != name)
            .collect()
    };
    write_model(&dir, &cfg, without(missing));
    assert_eq!(
        load(2),
        format!(
            "{}: tensor `{missing}` missing (expected shape [32, 32])",
            file.display()
        )
    );
    write_model(&dir, &cfg, without("deberta.encoder.rel_embeddings.weight"));
    assert_eq!(
        load(2),
        format!(
            "{}: tensor `deberta.encoder.rel_embeddings.weight` missing (expected shape [16, 32])",
            file.display()
        )
    );

    let wrong = "deberta.encoder.layer.0.intermediate.dense.weight";
    let tensors: Vec<_> = model
        .state_dict()
        .into_iter()
        .map(|(n, t)| {
            let t = if n == wrong {
                t.narrow(1, 0, 31).unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    write_model(&dir, &cfg, tensors);
    assert_eq!(
        load(2),
        format!(
            "{}: tensor `{wrong}` has shape [64, 31], expected [64, 32]",
            file.display()
        )
    );

    // A checkpoint head trained for 2 labels does not silently become a 5-label head.
    write_model(&dir, &cfg, model.state_dict());
    assert_eq!(
        load(5),
        format!(
            "{}: tensor `classifier.weight` has shape [2, 32], expected [5, 32]",
            file.display()
        )
    );
    // Half a head pair is an error naming the missing half.
    write_model(&dir, &cfg, without("pooler.dense.bias"));
    assert_eq!(
        load(2),
        format!(
            "{}: tensor `pooler.dense.bias` missing (expected shape [32])",
            file.display()
        )
    );

    // The family dispatch names every supported model_type.
    let config = dir.join("config.json");
    let mut json = serde_json::to_value(&cfg).unwrap();
    json["model_type"] = "gpt2".into();
    std::fs::write(&config, json.to_string()).unwrap();
    assert_eq!(
        load(2),
        format!(
            "model config {}: field `model_type`: unsupported value \"gpt2\"; \
             supported: bert, roberta, deberta-v2",
            config.display()
        )
    );
    json["model_type"] = "deberta-v2".into();
    json["conv_kernel_size"] = 3.into();
    json["conv_groups"] = 2.into();
    std::fs::write(&config, json.to_string()).unwrap();
    assert_eq!(
        load(2),
        format!(
            "model config {}: field `conv_groups`: unsupported value 2; supported: 1",
            config.display()
        )
    );
    json["conv_kernel_size"] = 0.into();
    json["pos_att_type"] = "p2c|p2p".into();
    std::fs::write(&config, json.to_string()).unwrap();
    assert_eq!(
        load(2),
        format!(
            "model config {}: field `pos_att_type`: unsupported entry \"p2p\"; supported: c2p, p2c",
            config.display()
        )
    );
}

#[test]
fn config_reads_hf_v3_json_tolerantly_with_defaults() {
    // microsoft/deberta-v3-base's config.json (pos_att_type as a `|` string).
    let json = r#"{"model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
        "relative_attention": true, "position_buckets": 256, "norm_rel_ebd": "layer_norm",
        "share_att_key": true, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
        "max_relative_positions": -1, "position_biased_input": false,
        "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 0,
        "vocab_size": 128100}"#;
    let cfg = DebertaV2Config::from_json(json, Path::new("config.json")).unwrap();
    assert_eq!(cfg.pos_att_type, ["p2c", "c2p"]);
    assert!(cfg.has_c2p() && cfg.has_p2c());
    assert_eq!(cfg.scale_factor(), 3);
    assert_eq!(cfg.max_relative_positions(), 512);
    assert_eq!(cfg.relative_span(), 256);
    assert_eq!(cfg.head_dim(), 64);
    assert_eq!(cfg.embedding_size(), 768);
    assert_eq!(cfg.max_seq_len(), None);
    assert!(cfg.norm_rel_layer_norm());
    assert_eq!(cfg.pooler_hidden_act, "gelu");
    assert_eq!(cfg.pooler_dropout, 0.0);
    // HF's config class defaults where keys are absent.
    let minimal = r#"{"model_type": "deberta-v2", "vocab_size": 10, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
        "pos_att_type": null, "future_key": [1, 2]}"#;
    let cfg = DebertaV2Config::from_json(minimal, Path::new("c.json")).unwrap();
    assert!(!cfg.relative_attention && cfg.position_biased_input);
    assert!(cfg.pos_att_type.is_empty());
    assert_eq!((cfg.type_vocab_size, cfg.max_position_embeddings), (0, 512));
    assert_eq!(cfg.layer_norm_eps, 1e-7);
    assert_eq!(cfg.max_seq_len(), Some(512));
    // Written back, the config reads the same (tests and exports write it).
    let text = serde_json::to_string(&v2_full()).unwrap();
    assert_eq!(
        DebertaV2Config::from_json(&text, Path::new("c.json")).unwrap(),
        v2_full()
    );

    let err = |patch: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        DebertaV2Config::from_json(&v.to_string(), Path::new("c.json"))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(serde_json::json!({"model_type": "deberta"})),
        "model config c.json: field `model_type`: unsupported value \"deberta\"; supported: deberta-v2"
    );
    assert_eq!(
        err(serde_json::json!({"hidden_act": "gelu_new"})),
        "model config c.json: field `hidden_act`: unsupported value \"gelu_new\"; supported: gelu"
    );
    assert!(
        err(serde_json::json!({"conv_kernel_size": 2}))
            .contains("field `conv_kernel_size` (2) must be odd")
    );
    assert!(
        err(serde_json::json!({"pooler_hidden_size": 1024}))
            .contains("field `pooler_hidden_size` (1024)")
    );
    assert!(
        err(serde_json::json!({"attention_head_size": 32}))
            .contains("field `attention_head_size` (32)")
    );
    assert!(
        err(serde_json::json!({"norm_rel_ebd": "batch_norm"})).contains("field `norm_rel_ebd`")
    );
    assert!(
        err(serde_json::json!({"position_buckets": 1024}))
            .contains("field `position_buckets` (1024)")
    );
    assert_eq!(
        DebertaV2Config::from_json(r#"{"model_type": "deberta-v2"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string(),
        "model config c.json: missing field `vocab_size`"
    );
}

#[test]
fn sequence_length_is_bounded_only_by_absolute_positions() {
    let dev = Device::Cpu;
    // v3: relative positions only, so a sequence past max_position_embeddings still runs.
    let model = DebertaV2::random(&v3(), DType::F32, &dev, 0).unwrap();
    let out = model
        .forward(&batch(&[vec![5u32; 70]], 0, &dev), false)
        .unwrap();
    assert_eq!(out.dims(), [1, 70, 32]);
    let model = DebertaV2::random(&v2_full(), DType::F32, &dev, 0).unwrap();
    let err = model
        .forward(&batch(&[vec![5u32; 65]], 0, &dev), false)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "input_ids (longer than the model's position table): tensor shape [1, 65], expected [1, 64]"
    );
}

#[test]
fn one_sgd_step_on_adapters_lowers_the_loss() {
    let dev = Device::Cpu;
    let mut model = random_model(&v3(), 2, Pooling::Cls, 8);
    let targets: Vec<String> = model
        .linears()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| is_default_target(model.as_ref(), p))
        .collect();
    attach_ttlora(model.as_mut(), |p| targets.iter().any(|t| t == p));
    let mut vars: Vec<Var> = model
        .linears()
        .into_iter()
        .flat_map(|(_, l)| l.trainable().into_iter().map(|(_, _, v)| v))
        .collect();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    let input = tiny_batch(&dev);
    let labels = Tensor::new(&[0u32, 1, 1, 0], &dev).unwrap();
    let loss = |m: &dyn Model| {
        candle_nn::loss::cross_entropy(&m.forward(&input, false).unwrap(), &labels).unwrap()
    };
    let before = loss(model.as_ref());
    let grads = before.backward().unwrap();
    for v in &vars {
        let g = grads.get(v.as_tensor()).unwrap();
        v.set(&(v.as_tensor() - (g * 0.05).unwrap()).unwrap())
            .unwrap();
    }
    let after = loss(model.as_ref()).to_scalar::<f32>().unwrap();
    assert!(after < before.to_scalar::<f32>().unwrap());
}
