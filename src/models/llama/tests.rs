//! LLaMA-family tests on tiny random decoders: causality, padding, grouped-query attention,
//! gradients into every adapter, HF's names.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::adapters::{LayerSpec, method, seeded_rng};
use crate::models::ModelInput;
use crate::models::walk::{Entry, EntryMut};

/// Vocabulary 64, hidden 16 in 4 query heads over 2 key/value heads (grouped-query
/// attention), intermediate 32.
fn tiny(tied: bool, family: LlamaFamily) -> LlamaConfig {
    LlamaConfig {
        model_type: family,
        vocab_size: 64,
        hidden_size: 16,
        intermediate_size: 32,
        num_key_value_heads: Some(2),
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        ..LlamaConfig::tiny()
    }
}

fn model(tied: bool, family: LlamaFamily) -> Llama {
    Llama::random(&tiny(tied, family), 0.2, DType::F32, &Device::Cpu, 3).unwrap()
}

/// Rows of ids, right-padded with 0, as a batch.
fn batch(rows: &[&[u32]]) -> ModelInput {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut v = r.to_vec();
            v.resize(t, 0);
            v
        })
        .collect();
    let mask: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| (0..t).map(|i| u32::from(i < r.len())).collect())
        .collect();
    let dev = Device::Cpu;
    ModelInput {
        input_ids: Tensor::new(ids, &dev).unwrap(),
        attention_mask: Tensor::new(mask, &dev).unwrap(),
        token_type_ids: None,
        position_ids: None,
    }
}

fn logits(m: &Llama, input: &ModelInput) -> Tensor {
    let h = m.forward(input, false).unwrap();
    m.logits(&h, false).unwrap()
}

fn diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::models::test_util::max_diff(a, b)
}

#[test]
fn a_token_never_sees_the_tokens_after_it() {
    let m = model(true, LlamaFamily::Llama);
    let a = logits(&m, &batch(&[&[5, 9, 13, 17, 21]]));
    let b = logits(&m, &batch(&[&[5, 9, 13, 40, 3]]));
    let first3 = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
    assert!(diff(&first3(&a), &first3(&b)) < 1e-6);
    assert!(diff(&a, &b) > 1e-3, "later tokens do change later logits");
}

#[test]
fn padding_changes_nothing_for_real_tokens_right_or_left() {
    let m = model(false, LlamaFamily::Qwen2);
    let alone = logits(&m, &batch(&[&[5, 9, 13]]));
    let padded = logits(&m, &batch(&[&[5, 9, 13], &[7, 8, 9, 10, 11]]));
    let real = padded.get(0).unwrap().narrow(0, 0, 3).unwrap();
    assert!(diff(&alone.squeeze(0).unwrap(), &real) < 1e-5);
    // Left padding: positions count real tokens only.
    let dev = Device::Cpu;
    let left = ModelInput {
        input_ids: Tensor::new(&[[0u32, 0, 5, 9, 13]], &dev).unwrap(),
        attention_mask: Tensor::new(&[[0u32, 0, 1, 1, 1]], &dev).unwrap(),
        token_type_ids: None,
        position_ids: None,
    };
    let left = logits(&m, &left).get(0).unwrap().narrow(0, 2, 3).unwrap();
    assert!(diff(&alone.squeeze(0).unwrap(), &left) < 1e-5);
    // What the LM head's `forward` picks: each row's last real position.
    let rows = crate::models::heads::last_token_rows(
        &batch(&[&[5, 9, 13], &[7, 8, 9, 10, 11]]).attention_mask,
    )
    .unwrap();
    let (b, t, v) = padded.dims3().unwrap();
    let last = padded
        .reshape((b * t, v))
        .unwrap()
        .index_select(&rows, 0)
        .unwrap();
    assert!(diff(&last.get(0).unwrap(), &real.get(2).unwrap()) < 1e-6);
}

#[test]
fn the_walk_lists_hf_names_and_a_tied_head_has_no_lm_head() {
    let names = |m: &Llama| {
        let mut v = Vec::new();
        m.walk(&mut |n, _| v.push(n));
        v
    };
    let tied = names(&model(true, LlamaFamily::Llama));
    assert_eq!(tied[0], "model.embed_tokens.weight");
    assert!(tied.contains(&"model.layers.1.self_attn.q_proj".to_string()));
    assert!(tied.contains(&"model.layers.0.mlp.down_proj".to_string()));
    assert!(tied.contains(&"model.norm.weight".to_string()));
    assert!(!tied.iter().any(|n| n == "lm_head"));
    assert_eq!(
        names(&model(false, LlamaFamily::Llama)).last().unwrap(),
        "lm_head"
    );
    // 1 embedding + 2 × (2 norms + 7 linears) + final norm.
    assert_eq!(tied.len(), 1 + 2 * 9 + 1);
    let m = model(true, LlamaFamily::Qwen2);
    let mut q_bias = false;
    m.walk(&mut |n, e| {
        if let Entry::Linear(_, l) = e
            && n.ends_with("q_proj")
        {
            q_bias = l.bias().is_some();
        }
    });
    assert!(q_bias, "Qwen2 has q/k/v biases");
}

/// A classifier never runs its LM head, so with an untied one (its own `lm_head` weights)
/// the classifier's walks leave it out (targets, merges and exports all go through them);
/// the state dict is HF's `…ForSequenceClassification` one: the decoder, then `score.weight`.
#[test]
fn an_untied_classifier_walks_without_its_lm_head() {
    use crate::models::Model;
    let mut lm = causal(LlamaFamily::Llama);
    let names = |lm: &crate::models::heads::CausalLm<Llama>| {
        let mut v = Vec::new();
        lm.walk(&mut |n, _| v.push(n));
        v
    };
    let mut_names = |lm: &mut crate::models::heads::CausalLm<Llama>| {
        let mut v = Vec::new();
        lm.walk_mut(&mut |n, _| v.push(n));
        v
    };
    let before = names(&lm);
    assert_eq!(before.last().unwrap(), "lm_head");
    assert_eq!(mut_names(&mut lm), before);
    lm.set_score_head(2, 1).unwrap();
    let after = names(&lm);
    assert_eq!(after, before[..before.len() - 1]);
    assert_eq!(mut_names(&mut lm), after);
    let dict: Vec<String> = lm.state_dict().into_iter().map(|(n, _)| n).collect();
    assert!(!dict.iter().any(|n| n.starts_with("lm_head")), "{dict:?}");
    assert_eq!(dict.last().unwrap(), "score.weight");
}

/// Every trainable tensor gets a non-zero gradient, layer 0 included: TT-LoRA on all seven
/// projections of every layer, a loss on the logits.
#[test]
fn every_adapter_gets_a_gradient() {
    let mut m = model(true, LlamaFamily::Llama);
    let ttlora = method("ttlora").unwrap();
    let cfg = ttlora
        .parse_config(&serde_json::json!({"init": "paper"}))
        .unwrap();
    let mut rng = seeded_rng(5);
    let mut attached = 0;
    m.walk_mut(&mut |_, e| {
        if let EntryMut::Linear(_, lin) = e {
            let spec = LayerSpec {
                in_features: lin.in_features(),
                out_features: lin.out_features(),
                dtype: DType::F32,
                device: Device::Cpu,
                weight: None,
                blocks: None,
            };
            let adapter = ttlora.build(cfg.as_ref(), &spec, &mut rng).unwrap();
            lin.add_adapter("default", adapter).unwrap();
            attached += 1;
        }
    });
    assert_eq!(attached, 2 * 7);
    let input = batch(&[&[5, 9, 13, 17], &[3, 4]]);
    let loss = logits(&m, &input).sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    m.walk(&mut |name, e| {
        if let Entry::Linear(_, lin) = e {
            for (_, tname, var) in lin.trainable() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}.{tname}: no gradient"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{name}.{tname}: zero gradient");
                checked += 1;
            }
        }
    });
    assert!(checked >= 2 * 7);
}

/// Decoding with the KV cache gives the logits a full forward gives, token by token.
#[test]
fn cached_decoding_matches_the_full_forward() {
    let m = model(false, LlamaFamily::Llama);
    let ids: Vec<u32> = vec![5, 9, 13, 17, 21, 3];
    let full = logits(&m, &batch(&[&ids]));
    let mut cache = KvCache::new();
    let dev = Device::Cpu;
    let prompt = Tensor::new(&ids[..4], &dev).unwrap().unsqueeze(0).unwrap();
    let h = m.forward_cached(&prompt, &mut cache).unwrap();
    let first = m.logits(&h, false).unwrap();
    assert!(diff(&first, &full.narrow(1, 0, 4).unwrap()) < 1e-5);
    for (i, &id) in ids.iter().enumerate().skip(4) {
        let one = Tensor::new(&[[id]], &dev).unwrap();
        let h = m.forward_cached(&one, &mut cache).unwrap();
        let step = m.logits(&h, false).unwrap();
        assert!(
            diff(&step, &full.narrow(1, i, 1).unwrap()) < 1e-5,
            "token {i}"
        );
    }
    assert_eq!(cache.len(), ids.len());
}

/// The tiny decoder (with grouped-query attention) under its LM head.
fn causal(family: LlamaFamily) -> crate::models::heads::CausalLm<Llama> {
    crate::models::heads::CausalLm::new(model(false, family))
}

fn rows(r: &[u32]) -> Tensor {
    Tensor::new(r, &Device::Cpu).unwrap()
}

/// `token_logits` picks the LM logits at flat positions; `forward` is each row's last real
/// token's.
#[test]
fn token_logits_are_the_lm_logits_at_the_positions_asked() {
    use crate::models::Model;
    let lm = causal(LlamaFamily::Qwen2);
    let input = batch(&[&[5, 9, 13, 17], &[21, 3]]);
    let full = logits(lm.decoder(), &input);
    let got = lm.token_logits(&input, &rows(&[1, 5]), false).unwrap();
    let want = Tensor::cat(
        &[
            &full.get(0).unwrap().get(1).unwrap(),
            &full.get(1).unwrap().get(1).unwrap(),
        ],
        0,
    )
    .unwrap()
    .reshape((2, 64))
    .unwrap();
    assert!(diff(&got, &want) < 1e-6);
    let last = lm.forward(&input, false).unwrap();
    let want = Tensor::stack(
        &[
            &full.get(0).unwrap().get(3).unwrap(),
            &full.get(1).unwrap().get(1).unwrap(),
        ],
        0,
    )
    .unwrap();
    assert!(diff(&last, &want) < 1e-6);
    let err = lm.token_logits(&input, &rows(&[8]), false).unwrap_err();
    assert!(err.to_string().contains("token rows"), "{err}");
}

/// A prefix made of the keys and values a sequence leaves in the KV cache continues that
/// sequence: the logits of what follows equal a full forward's, so the prefix path shifts
/// positions and attends grouped-query keys as HF's past key values do.
#[test]
fn a_prefix_of_cached_keys_and_values_continues_their_sequence() {
    use crate::models::Model;
    let mut lm = causal(LlamaFamily::Llama);
    let (head, tail): (&[u32], &[u32]) = (&[5, 9, 13], &[17, 21]);
    let whole: Vec<u32> = head.iter().chain(tail).copied().collect();
    let full = logits(lm.decoder(), &batch(&[&whole]));
    let mut cache = KvCache::new();
    let dev = Device::Cpu;
    lm.decoder()
        .forward_cached(
            &Tensor::new(head, &dev).unwrap().unsqueeze(0).unwrap(),
            &mut cache,
        )
        .unwrap();
    // PEFT's table: per layer keys then values, each (n, kv_heads·head_dim).
    let flat = |x: &Tensor| {
        let (_, kvh, n, d) = x.dims4().unwrap();
        x.squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((n, kvh * d))
            .unwrap()
    };
    let parts: Vec<Tensor> = cache
        .layers
        .iter()
        .flat_map(|c| {
            let (k, v) = c.as_ref().unwrap();
            [flat(k), flat(v)]
        })
        .collect();
    let table = Tensor::cat(&parts, 1).unwrap();
    assert_eq!(table.dims(), [3, lm.virtual_spec().prefix_width()]);
    let var = candle_core::Var::from_tensor(&table).unwrap();
    lm.set_virtual_tokens("p", Some((crate::adapters::TokenPlacement::Prefix, var)))
        .unwrap();
    let got = lm
        .token_logits(&batch(&[tail]), &rows(&[0, 1]), false)
        .unwrap();
    let want = full.get(0).unwrap().narrow(0, 3, 2).unwrap();
    assert!(diff(&got, &want) < 1e-5, "{}", diff(&got, &want));
}

/// Prompt tokens equal to a sequence's own embeddings continue that sequence.
#[test]
fn prompt_tokens_of_a_sequences_embeddings_continue_it() {
    use crate::models::{Backbone, Model};
    let mut lm = causal(LlamaFamily::Mistral);
    let (head, tail): (&[u32], &[u32]) = (&[5, 9, 13], &[17, 21]);
    let whole: Vec<u32> = head.iter().chain(tail).copied().collect();
    let full = logits(lm.decoder(), &batch(&[&whole]));
    let prompt = lm
        .decoder()
        .embed_tokens(&rows(head).unsqueeze(0).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let var = candle_core::Var::from_tensor(&prompt).unwrap();
    lm.set_virtual_tokens("p", Some((crate::adapters::TokenPlacement::Prompt, var)))
        .unwrap();
    let got = lm
        .token_logits(&batch(&[tail]), &rows(&[0, 1]), false)
        .unwrap();
    let want = full.get(0).unwrap().narrow(0, 3, 2).unwrap();
    assert!(diff(&got, &want) < 1e-5, "{}", diff(&got, &want));
}

/// A prefix cache takes one `(m, kv_width)` pair per layer, all of one length; anything else
/// is an error naming the shapes, not a reshape failure later.
#[test]
fn a_prefix_cache_checks_its_pairs() {
    let llama = model(true, LlamaFamily::Llama);
    let cfg = llama.config().clone();
    let layers = cfg.num_hidden_layers;
    let kv = cfg.kv_heads() * cfg.head_width();
    let pair = |m: usize, w: usize| {
        let t = Tensor::zeros((m, w), DType::F32, &Device::Cpu).unwrap();
        (t.clone(), t)
    };
    let good: Vec<_> = (0..layers).map(|_| pair(2, kv)).collect();
    let cache = KvCache::from_prefix(&llama, &good).unwrap();
    assert_eq!(cache.len(), 2);
    assert!(KvCache::from_prefix(&llama, &good[1..]).is_err());
    let mut wide = good.clone();
    wide[0] = pair(2, kv + 1);
    assert!(KvCache::from_prefix(&llama, &wide).is_err());
    let mut ragged = good;
    ragged[layers - 1] = pair(3, kv);
    assert!(KvCache::from_prefix(&llama, &ragged).is_err());
}

/// With a frozen LM head (tied or not) the loss skips the logits and equals their
/// cross-entropy.
#[test]
fn the_token_loss_equals_the_cross_entropy_of_the_logits() {
    use crate::models::Model;
    use crate::models::heads::{CausalLm, Decoder};
    for tied in [true, false] {
        let lm = CausalLm::new(model(tied, LlamaFamily::Llama));
        assert!(lm.decoder().frozen_lm_head().is_some());
        let input = batch(&[&[5, 9, 13, 17], &[7, 8]]);
        let rows = Tensor::new(&[0u32, 1, 2, 4], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[9u32, 13, 17, 8], &Device::Cpu).unwrap();
        let fused = lm.token_loss(&input, &rows, &labels, false).unwrap();
        let logits = lm.token_logits(&input, &rows, false).unwrap();
        let plain = crate::ops::cross_entropy(&logits, &labels).unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "tied {tied}: {a} vs {b}");
    }
}

/// The classification head (HF's `LlamaForSequenceClassification`): `score` (no bias) on
/// each row's last real token, padding ignored; seeded N(0, 0.02²) init; listed as the head,
/// and the model then reports PEFT's SEQ_CLS and HF's classifier class.
#[test]
fn the_score_head_reads_the_last_real_token() {
    use crate::models::Model;
    let mut lm = causal(LlamaFamily::Llama);
    assert!(lm.head_vars().is_empty());
    assert_eq!(lm.peft_task_type(), "CAUSAL_LM");
    lm.set_score_head(3, 5).unwrap();
    assert_eq!(lm.score_labels(), Some(3));
    let heads = lm.head_vars();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].0, "score.weight");
    let w = heads[0].1.as_tensor().clone();
    assert_eq!(w.dims(), &[3, lm.decoder().config().hidden_size]);
    let std = w
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((0.01..0.03).contains(&std), "{std}");
    let input = batch(&[&[5, 9, 13, 17], &[21, 3]]);
    let got = lm.forward(&input, false).unwrap();
    let hidden = lm.decoder().forward(&input, false).unwrap();
    let last = Tensor::stack(
        &[
            &hidden.get(0).unwrap().get(3).unwrap(),
            &hidden.get(1).unwrap().get(1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let want = last.matmul(&w.t().unwrap()).unwrap();
    assert_eq!(got.dims(), &[2, 3]);
    assert!(diff(&got, &want) < 1e-5);
    assert_eq!(lm.peft_task_type(), "SEQ_CLS");
    assert_eq!(lm.architecture(), "LlamaForSequenceClassification");
    // The same seed draws the same head.
    let mut again = causal(LlamaFamily::Llama);
    again.set_score_head(3, 5).unwrap();
    assert!(diff(&again.head_vars()[0].1.as_tensor().clone(), &w) == 0.0);
    assert!(lm.set_score_head(0, 5).is_err());
}
