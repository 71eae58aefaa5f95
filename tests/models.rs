//! Model families through the public API: build a tiny random model, save it as an HF folder,
//! load it back through the family dispatch, and train one step through `dyn Model`. The
//! model tests run per device (`test_device!`).
//! (Tests that need the real all-MiniLM-L6-v2 weights live in `src/models/bert/tests.rs`.)

use candle_core::{DType, Device, Tensor, Var};
use ttlora::adapters::{LayerSpec, MethodSpec, ModuleSet, method, seeded_rng};
use ttlora::models::heads::CausalLm;
use ttlora::models::llama::{Llama, LlamaConfig};
use ttlora::models::{
    BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification,
    Model, ModelInput, Pooling, load_classifier,
};
use ttlora::tuning::attach::{attach, placing};

use crate::common::{TempDir, save_model, tensor_diff, test_device, three_by_eight, two_sequences};

/// Attaches TT-LoRA under `config` to every linear the model names as a default target, on
/// `dev`; returns the adapters' trainable tensors followed by the head's.
fn ttlora_on_default_targets(
    model: &mut dyn Model,
    config: serde_json::Value,
    dev: &Device,
) -> (usize, Vec<Var>) {
    let targets = model.default_targets();
    let ttlora = method("ttlora").unwrap();
    let mut rng = seeded_rng(1);
    for (path, lin) in model.linears_mut() {
        if targets.iter().any(|t| path.ends_with(&format!(".{t}"))) {
            let spec = LayerSpec {
                in_features: lin.in_features(),
                out_features: lin.out_features(),
                dtype: DType::F32,
                device: dev.clone(),
                weight: None,
                blocks: None,
            };
            let adapter = ttlora.build_from_json(&config, &spec, &mut rng).unwrap();
            lin.add_adapter("default", adapter).unwrap();
        }
    }
    let mut vars: Vec<Var> = model
        .linears()
        .into_iter()
        .flat_map(|(_, l)| l.trainable().into_iter().map(|(_, _, v)| v))
        .collect();
    let adapter_vars = vars.len();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    (adapter_vars, vars)
}

/// One plain SGD step (lr 0.1) of every var on the cross-entropy of `x` against `labels`;
/// returns the loss before and after.
fn sgd_step(model: &dyn Model, vars: &[Var], x: &ModelInput, labels: &Tensor) -> (f32, f32) {
    let loss_of = |m: &dyn Model| {
        candle_nn::loss::cross_entropy(&m.forward(x, false).unwrap(), labels).unwrap()
    };
    let before = loss_of(model);
    let grads = before.backward().unwrap();
    for v in vars {
        let g = grads
            .get(v.as_tensor())
            .expect("every trainable tensor has a gradient");
        v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap())
            .unwrap();
    }
    let after = loss_of(model);
    (
        before.to_scalar::<f32>().unwrap(),
        after.to_scalar::<f32>().unwrap(),
    )
}

fn saved_tiny_models_load_through_the_family_dispatch(dev: &Device) {
    for cfg in [BertConfig::tiny(), BertConfig::tiny_roberta()] {
        let model =
            BertForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, dev, 3)
                .unwrap();
        let dir = TempDir::new(&format!("models-{:?}", cfg.model_type));
        save_model(&dir, &cfg, model.state_dict());

        let loaded: Box<dyn Model> = load_classifier(&dir, 2, Pooling::Cls, dev, 0).unwrap();
        let x = two_sequences(cfg.pad_token_id, dev);
        let diff = tensor_diff(
            &model.forward(&x, false).unwrap(),
            &loaded.forward(&x, false).unwrap(),
        );
        assert!(diff < 1e-6, "{:?}: {diff}", cfg.model_type);
    }
}
test_device!(
    saved_tiny_models_load_through_the_family_dispatch,
    saved_tiny_models_load_through_the_family_dispatch_cpu,
    saved_tiny_models_load_through_the_family_dispatch_cuda
);

fn one_sgd_step_through_dyn_model_lowers_the_loss(dev: &Device) {
    let cfg = BertConfig::tiny();
    let mut model: Box<dyn Model> = Box::new(
        BertForSequenceClassification::random(&cfg, 2, Pooling::Mean, DType::F32, dev, 8).unwrap(),
    );
    let config = serde_json::json!({"rank": 2, "init": "paper"});
    let (adapter_vars, vars) = ttlora_on_default_targets(model.as_mut(), config, dev);
    // query + value in every layer, each with at least two cores, and the head's W and b.
    assert!(adapter_vars >= 2 * cfg.num_hidden_layers * 2);
    assert!(vars.len() >= adapter_vars + 2);

    let labels = Tensor::new(&[1u32, 0], dev).unwrap();
    let (b, a) = sgd_step(model.as_ref(), &vars, &two_sequences(0, dev), &labels);
    assert!(a < b, "one SGD step should lower the loss: {b} -> {a}");
}
test_device!(
    one_sgd_step_through_dyn_model_lowers_the_loss,
    one_sgd_step_through_dyn_model_lowers_the_loss_cpu,
    one_sgd_step_through_dyn_model_lowers_the_loss_cuda
);

#[test]
fn pooling_names_round_trip() {
    for p in [Pooling::Cls, Pooling::Mean, Pooling::LastToken] {
        assert_eq!(p.to_string().parse::<Pooling>().unwrap(), p);
        // The name a folder records is the name the flag takes.
        assert_eq!(serde_json::to_value(p).unwrap(), p.to_string());
    }
    assert_eq!(
        "max".parse::<Pooling>().unwrap_err(),
        "unknown pooling `max`; known: cls, mean, last-token"
    );
    let dir = TempDir::new("models-pooling");
    assert_eq!(Pooling::from_sentence_transformers(&dir).unwrap(), None);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    assert_eq!(
        Pooling::from_sentence_transformers(&dir).unwrap(),
        Some(Pooling::Mean)
    );
}

fn deberta_v2_loads_through_the_family_dispatch_and_learns_through_adapters(dev: &Device) {
    let cfg = DebertaV2Config::tiny();
    let model =
        DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, dev, 3)
            .unwrap();
    let dir = TempDir::new("models-deberta-v2");
    save_model(&dir, &cfg, model.state_dict());
    let mut loaded: Box<dyn Model> = load_classifier(&dir, 2, Pooling::Cls, dev, 0).unwrap();
    drop(dir);
    let x = two_sequences(cfg.pad_token_id, dev);
    let diff = tensor_diff(
        &model.forward(&x, false).unwrap(),
        &loaded.forward(&x, false).unwrap(),
    );
    assert_eq!(diff, 0.0);

    // Adapters on the default targets (query_proj, value_proj) of every layer learn.
    assert_eq!(loaded.default_targets(), ["query_proj", "value_proj"]);
    let config = serde_json::json!({"rank": 2});
    let (adapter_vars, vars) = ttlora_on_default_targets(loaded.as_mut(), config, dev);
    assert!(adapter_vars >= 2 * cfg.num_hidden_layers * 2);
    let labels = Tensor::new(&[1u32, 0], dev).unwrap();
    let (before, after) = sgd_step(loaded.as_ref(), &vars, &x, &labels);
    assert!(after < before, "{before} -> {after}");
}
test_device!(
    deberta_v2_loads_through_the_family_dispatch_and_learns_through_adapters,
    deberta_v2_loads_through_the_family_dispatch_and_learns_through_adapters_cpu,
    deberta_v2_loads_through_the_family_dispatch_and_learns_through_adapters_cuda
);

fn a_full_fine_tune_of_deberta_with_the_conv_reloads_to_the_same_outputs(dev: &Device) {
    // The conv's taps must follow a replaced weight (they are cut from it each pass).
    use ttlora::adapters::MethodSpec;
    use ttlora::tuning::adapted::{AdapterMeta, collect, load_into};
    use ttlora::tuning::attach::{attach, placing, trainable_vars};
    let cfg = DebertaV2Config {
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
    };
    let build = || {
        DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, dev, 4)
            .unwrap()
    };
    let mut model = build();
    let spec = MethodSpec::parse("full", serde_json::json!({})).unwrap();
    let p = placing(&spec, &model, None, None, &Default::default()).unwrap();
    attach(&mut model, &spec, &p, "default", &mut seeded_rng(1)).unwrap();
    // Move every trained tensor, the conv weight included.
    for (_, v) in trainable_vars(&model).unwrap() {
        let t = v.as_tensor();
        v.set(&(t + Tensor::randn(0f32, 0.05, t.shape(), t.device()).unwrap()).unwrap())
            .unwrap();
    }
    let input = three_by_eight(dev);
    let trained = model.forward(&input, false).unwrap();
    let folder = collect(&model, "default", &AdapterMeta::bare("full")).unwrap();
    assert!(
        folder
            .tensors
            .keys()
            .any(|k| k.ends_with("encoder.conv.conv.weight"))
    );
    let mut fresh = build();
    load_into(&mut fresh, &folder, "default").unwrap();
    let d = tensor_diff(&trained, &fresh.forward(&input, false).unwrap());
    assert!(d < 1e-6, "{d}");
}
test_device!(
    a_full_fine_tune_of_deberta_with_the_conv_reloads_to_the_same_outputs,
    a_full_fine_tune_of_deberta_with_the_conv_reloads_to_the_same_outputs_cpu,
    a_full_fine_tune_of_deberta_with_the_conv_reloads_to_the_same_outputs_cuda
);

/// Segment ids are optional (zeros when absent), and explicit positions 0, 1, … give what the
/// family computes itself; with prompt tokens attached, explicit positions are refused.
fn optional_segments_and_positions(dev: &Device) {
    let models: [Box<dyn Model>; 2] = [
        Box::new(
            BertForSequenceClassification::random(
                &BertConfig::tiny(),
                2,
                Pooling::Cls,
                DType::F32,
                dev,
                3,
            )
            .unwrap(),
        ),
        Box::new(
            DebertaV2ForSequenceClassification::random(
                &DebertaV2Config {
                    position_biased_input: true,
                    ..DebertaV2Config::tiny()
                },
                2,
                Pooling::Cls,
                DType::F32,
                dev,
                3,
            )
            .unwrap(),
        ),
    ];
    for model in &models {
        let full = crate::common::three_by_eight(dev);
        let logits = |input: &ModelInput| model.forward(input, false).unwrap();
        let want = logits(&full);
        let bare = ModelInput::new(full.input_ids.clone(), full.attention_mask.clone());
        assert!(crate::common::tensor_diff(&logits(&bare), &want) < 1e-6);
        let positions = Tensor::arange(0u32, 8, dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .repeat((3, 1))
            .unwrap();
        let explicit = ModelInput {
            position_ids: Some(positions),
            ..full.clone()
        };
        assert!(crate::common::tensor_diff(&logits(&explicit), &want) < 1e-6);
        let short = ModelInput {
            position_ids: Some(Tensor::zeros((3, 5), DType::U32, dev).unwrap()),
            ..full.clone()
        };
        let err = model.forward(&short, false).unwrap_err().to_string();
        assert!(err.contains("position_ids"), "{err}");
    }
}
crate::common::test_device!(
    optional_segments_and_positions,
    optional_segments_and_positions_cpu,
    optional_segments_and_positions_cuda
);

/// Bottleneck adapters' default sites come from the walk's tags, by full module path.
#[test]
fn default_sites_are_the_tagged_output_projections() {
    let dev = Device::Cpu;
    let bert = BertForSequenceClassification::random(
        &BertConfig::tiny(),
        2,
        Pooling::Cls,
        DType::F32,
        &dev,
        1,
    )
    .unwrap();
    let deberta = DebertaV2ForSequenceClassification::random(
        &DebertaV2Config::tiny(),
        2,
        Pooling::Cls,
        DType::F32,
        &dev,
        1,
    )
    .unwrap();
    let models: [(&str, &dyn Model); 2] = [("bert", &bert), ("deberta", &deberta)];
    for (prefix, model) in models {
        let sites = model.default_sites();
        let layers = |what: &str| -> Vec<String> {
            (0..2)
                .map(|i| format!("{prefix}.encoder.layer.{i}.{what}"))
                .collect()
        };
        assert_eq!(sites.attention_output, layers("attention.output.dense"));
        assert_eq!(sites.ffn_output, layers("output.dense"));
        assert_eq!(sites.parallel, model.default_targets());
    }
}

/// One loaded base holds several adapters, each with its own head (PEFT's
/// `modules_to_save`); `set_active` switches which one the forward and training use.
#[test]
fn adapters_with_their_own_heads_switch_with_set_active() {
    use ttlora::adapters::MethodSpec;
    use ttlora::tuning::attach::{attach, placing, trainable_vars};
    let dev = Device::Cpu;
    let base = || tiny_bert_classifier(&dev);
    // Non-zero at init, so each adapter changes the output.
    let spec = MethodSpec::parse("ttlora", serde_json::json!({"init": "paper"})).unwrap();
    let put = |m: &mut dyn Model, name: &str, seed: u64| {
        let p = placing(&spec, m, None, None, &Default::default()).unwrap();
        attach(m, &spec, &p, name, &mut seeded_rng(seed)).unwrap();
    };
    let input = three_by_eight(&dev);
    let logits = |m: &dyn Model| m.forward(&input, false).unwrap();

    let mut alone = base();
    put(&mut alone, "a", 1);
    let want_a = logits(&alone);

    let mut both = base();
    put(&mut both, "a", 1);
    put(&mut both, "b", 2);
    both.add_head("b", 3, 9).unwrap();
    both.set_active(&["a"]).unwrap();
    assert!(tensor_diff(&logits(&both), &want_a) < 1e-6);
    assert!(
        trainable_vars(&both)
            .unwrap()
            .iter()
            .all(|(n, _)| n.contains(".a."))
    );

    both.set_active(&["b"]).unwrap();
    let b = logits(&both);
    assert_eq!(b.dims(), [3, 3], "b's own head has 3 labels");
    assert!(
        trainable_vars(&both)
            .unwrap()
            .iter()
            .all(|(n, _)| n.contains(".b."))
    );
    assert_eq!(both.head_vars()[0].1.dims(), [3, 32]);

    both.set_active(&["a"]).unwrap();
    assert!(
        tensor_diff(&logits(&both), &want_a) < 1e-6,
        "switching back"
    );
    let err = both.add_head("b", 3, 9).unwrap_err().to_string();
    assert!(err.contains("has a head already"), "{err}");
}

/// Prompt and prefix tokens are per adapter too: each adapter keeps its own, the forward uses
/// the active one's, and with several and none chosen the forward refuses rather than guess.
#[test]
fn each_adapter_keeps_its_own_virtual_tokens() {
    use ttlora::adapters::MethodSpec;
    use ttlora::tuning::attach::{attach, placing, trainable_vars};
    let dev = Device::Cpu;
    let base = || tiny_bert_classifier(&dev);
    let put = |m: &mut dyn Model, method: &str, name: &str, seed: u64| {
        let spec = MethodSpec::parse(method, serde_json::json!({"num_virtual_tokens": 3})).unwrap();
        let p = placing(&spec, m, None, None, &Default::default()).unwrap();
        attach(m, &spec, &p, name, &mut seeded_rng(seed)).unwrap();
    };
    let input = three_by_eight(&dev);
    let logits = |m: &dyn Model| m.forward(&input, false).unwrap();

    let mut alone = base();
    put(&mut alone, "prompt", "p", 1);
    let want_p = logits(&alone);
    let mut alone = base();
    put(&mut alone, "prefix", "q", 2);
    let want_q = logits(&alone);
    assert!(
        tensor_diff(&want_p, &want_q) > 1e-4,
        "the two adapters differ"
    );

    let mut both = base();
    put(&mut both, "prompt", "p", 1);
    put(&mut both, "prefix", "q", 2);
    let err = both.forward(&input, false).unwrap_err().to_string();
    assert!(err.contains("`p`, `q` each hold virtual tokens"), "{err}");
    assert!(trainable_vars(&both).is_err());

    both.set_active(&["q"]).unwrap();
    assert!(tensor_diff(&logits(&both), &want_q) < 1e-6);
    both.set_active(&["p"]).unwrap();
    assert!(tensor_diff(&logits(&both), &want_p) < 1e-6);
    let (_, tokens) = both.virtual_tokens().unwrap().unwrap();
    assert_eq!(tokens.dims(), [3, 32]);
    assert_eq!(both.adapter_tokens("q").unwrap().1.dims()[1], 2 * 2 * 32);

    // Removing the active adapter's tokens leaves the plain model; the other keeps its own.
    both.set_virtual_tokens("p", None).unwrap();
    assert!(both.adapter_tokens("p").is_none());
    assert!(tensor_diff(&logits(&both), &logits(&base())) < 1e-6);
    both.set_active(&["q"]).unwrap();
    assert!(tensor_diff(&logits(&both), &want_q) < 1e-6);
}

/// The tiny BERT with a two-label head, seed 4.
fn tiny_bert_classifier(dev: &Device) -> BertForSequenceClassification {
    BertForSequenceClassification::random(&BertConfig::tiny(), 2, Pooling::Cls, DType::F32, dev, 4)
        .unwrap()
}

/// `all-linear` adapts the seven projections of every layer but not the LM head (PEFT's
/// rule); naming `lm_head` still adapts it.
#[test]
fn all_linear_leaves_the_lm_head_out_unless_named() {
    let adapted = |targets: ModuleSet| {
        let cfg = LlamaConfig {
            tie_word_embeddings: false,
            ..LlamaConfig::tiny()
        };
        let mut lm = CausalLm::new(Llama::random(&cfg, 0.2, DType::F32, &Device::Cpu, 3).unwrap());
        let spec = MethodSpec::new(method("lora").unwrap(), serde_json::json!({"r": 2})).unwrap();
        let p = placing(&spec, &lm, Some(&targets), None, &Default::default()).unwrap();
        attach(&mut lm, &spec, &p, "a", &mut seeded_rng(1))
            .unwrap()
            .adapted
    };
    let all = adapted(ModuleSet::Pattern(ModuleSet::ALL_LINEAR.into()));
    assert_eq!(all.len(), 2 * 7, "{all:?}");
    assert!(
        all.iter().all(|p| p.starts_with("model.layers.")),
        "{all:?}"
    );
    assert_eq!(adapted(ModuleSet::names(&["lm_head"])), ["lm_head"]);
}

/// transformers' logits for a tiny random LLaMA (GQA, separate LM head) and Qwen2 (q/k/v
/// biases, tied) on a padded batch, reproduced from the HF folder and the F32 GGUF written
/// with the `gguf` package (≤ 1e-4), and from the Q8_0 GGUF against transformers on its
/// dequantized weights (`scripts/make_llama_golden.py`).
#[test]
fn tiny_llama_and_qwen2_reproduce_transformers_from_hf_and_gguf_files() {
    use ttlora::io::ResolvedModel;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_golden");
    let dev = Device::Cpu;
    for family in ["llama", "qwen2"] {
        let dir = root.join(family);
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("logits.json")).unwrap()).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(want["ids"].clone()).unwrap();
        let mask: Vec<Vec<u32>> = serde_json::from_value(want["mask"].clone()).unwrap();
        let input = ModelInput::new(
            Tensor::new(ids.clone(), &dev).unwrap(),
            Tensor::new(mask.clone(), &dev).unwrap(),
        );
        let check = |llama: &Llama, key: &str, what: &str| {
            let h = llama.forward(&input, false).unwrap();
            let got = llama.logits(&h, false).unwrap();
            let mut worst = 0f32;
            for (b, row_mask) in mask.iter().enumerate() {
                let real = row_mask.iter().filter(|&&m| m == 1).count();
                for t in 0..real {
                    let ours: Vec<f32> = got.get(b).unwrap().get(t).unwrap().to_vec1().unwrap();
                    let theirs: Vec<f32> = serde_json::from_value(want[key][b][t].clone()).unwrap();
                    for (x, y) in ours.iter().zip(&theirs) {
                        worst = worst.max((x - y).abs());
                    }
                }
            }
            assert!(worst <= 1e-4, "{family} {what}: max |Δ logit| {worst}");
        };
        let hf = ResolvedModel::from_dir(&dir).unwrap();
        check(
            &Llama::load_from(&hf, DType::F32, &dev).unwrap(),
            "logits",
            "HF folder",
        );
        let (f32_file, _) =
            Llama::load_gguf(&dir.join("model-f32.gguf"), DType::F32, &dev).unwrap();
        check(&f32_file, "logits", "F32 GGUF");
        let (q8, _) = Llama::load_gguf(&dir.join("model-q8_0.gguf"), DType::F32, &dev).unwrap();
        check(&q8, "logits_q8_0", "Q8_0 GGUF");
        // Kept in its blocks (q/k rows unpermuted block-row by block-row), the same logits.
        let q8_file = dir.join("model-q8_0.gguf");
        let (kept, _) = Llama::load_gguf_with(&q8_file, DType::F32, &dev, true).unwrap();
        let mut quantized = 0;
        kept.walk(&mut |_, e| {
            if let ttlora::models::walk::Entry::Linear(_, l) = e {
                quantized += usize::from(l.is_quantized());
            }
        });
        assert_eq!(
            quantized,
            2 * 7 + usize::from(family == "llama"),
            "{family}"
        );
        check(&kept, "logits_q8_0", "Q8_0 GGUF kept quantized");
        // Decoded one token at a time through the cache, the dequantized model gives the same
        // logits; the one kept in blocks reads them in place (Qwen2's tied head too) with the
        // input rounded to 8-bit blocks, as llama.cpp does, and stays within that rounding: a
        // few percent of the largest logit here, where each 32-wide row is a single block and
        // the random weights are large (std 0.2); a wrong row or permutation is off by O(1).
        let decoded = |llama: &Llama| -> f32 {
            let real = mask[0].iter().filter(|&&m| m == 1).count();
            let mut cache = ttlora::models::llama::KvCache::new();
            let mut worst = 0f32;
            for (t, &id) in ids[0].iter().enumerate().take(real) {
                let one = Tensor::new(&[[id]], &dev).unwrap();
                let got = llama.next_logits(&one, None, &mut cache).unwrap();
                let got: Vec<f32> = got.to_vec1().unwrap();
                let theirs: Vec<f32> =
                    serde_json::from_value(want["logits_q8_0"][0][t].clone()).unwrap();
                let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in got.iter().zip(&theirs) {
                    worst = worst.max((x - y).abs() / scale);
                }
            }
            worst
        };
        let exact = decoded(&q8);
        assert!(exact <= 1e-5, "{family} decoded, dequantized: {exact}");
        let worst = decoded(&kept);
        assert!(
            worst > 0.0 && worst <= 5e-2,
            "{family} decoded from blocks: {worst}"
        );
    }
}

/// The tied LM head read from the GGUF's blocks at decode follows the embedding table: once
/// the table is replaced (as loading a full fine-tune does), the logits use the new table,
/// as the dequantized model's do.
#[test]
fn a_replaced_tied_table_is_what_decoding_reads() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama_golden/qwen2/model-q8_0.gguf");
    let dev = Device::Cpu;
    let doubled = |mut llama: Llama| -> Llama {
        llama.walk_mut(&mut |name, e| {
            if let ttlora::models::walk::EntryMut::Tensor(_, t) = e
                && name == "model.embed_tokens.weight"
            {
                *t = (&*t * 2.0).unwrap();
            }
        });
        llama
    };
    let last = |llama: &Llama| -> Vec<f32> {
        let mut cache = ttlora::models::llama::KvCache::new();
        let mut out = Vec::new();
        for id in [5u32, 9, 13] {
            let one = Tensor::new(&[[id]], &dev).unwrap();
            out = llama
                .next_logits(&one, None, &mut cache)
                .unwrap()
                .to_vec1()
                .unwrap();
        }
        out
    };
    let (kept, _) = Llama::load_gguf_with(&file, DType::F32, &dev, true).unwrap();
    let (dense, _) = Llama::load_gguf_with(&file, DType::F32, &dev, false).unwrap();
    let before = last(&kept);
    let (kept, dense) = (doubled(kept), doubled(dense));
    let (got, want) = (last(&kept), last(&dense));
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    // Within the decoded input's rounding of the dequantized model, and far from the logits
    // the old table gave.
    assert!(diff(&got, &want) < 5e-2, "{}", diff(&got, &want));
    assert!(diff(&before, &want) > 0.2, "{}", diff(&before, &want));
}

/// Training on a base kept quantized: every adapter gets a gradient (layer 0 included), the
/// loss falls, and the base's blocks are bit-identical afterwards.
#[test]
fn training_on_a_quantized_base_trains_adapters_and_leaves_the_blocks_alone() {
    use ttlora::train::{Adam, AdamParams, Batch, NextToken, Objective, StepSettings, train_step};
    use ttlora::tuning::attach::trainable_vars;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama_golden/llama/model-q8_0.gguf");
    let dev = Device::Cpu;
    let (llama, _) = Llama::load_gguf_with(&dir, DType::F32, &dev, true).unwrap();
    let mut lm = CausalLm::new(llama);
    let blocks = |lm: &CausalLm<Llama>| -> Vec<Vec<u8>> {
        lm.linears()
            .iter()
            .filter_map(|(_, l)| l.quantized_weight().map(|q| q.data().unwrap().to_vec()))
            .collect()
    };
    let before = blocks(&lm);
    assert_eq!(before.len(), 2 * 7 + 1);
    let spec = MethodSpec::new(method("lora").unwrap(), serde_json::json!({"r": 4})).unwrap();
    let all = ModuleSet::Pattern(ModuleSet::ALL_LINEAR.into());
    let p = placing(&spec, &lm, Some(&all), None, &Default::default()).unwrap();
    attach(&mut lm, &spec, &p, "default", &mut seeded_rng(3)).unwrap();
    let vars = trainable_vars(&lm).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 13, 17, 21, 3, 40, 8]], &dev).unwrap();
    let input = ModelInput::new(ids, Tensor::ones((1, 8), DType::U32, &dev).unwrap());
    let batch = Batch {
        input,
        labels: Tensor::new(&[9u32, 13, 17, 21, 3, 40, 8], &dev).unwrap(),
        rows: Some(Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6], &dev).unwrap()),
        choices: None,
    };
    // LoRA's B starts at zero, so A's first gradient is zero: check after one step.
    let plain: Vec<candle_core::Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(plain, AdamParams::default()).unwrap();
    let first = NextToken
        .loss(&lm, &batch, false)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for step in 0..5 {
        let settings = StepSettings {
            lr: 1e-2,
            max_grad_norm: None,
            seed: 0,
            step,
        };
        train_step(
            &lm,
            &NextToken,
            std::slice::from_ref(&batch),
            &mut opt,
            settings,
        )
        .unwrap();
    }
    let loss = NextToken.loss(&lm, &batch, true).unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
    assert!(loss.to_scalar::<f32>().unwrap() < first, "the loss fell");
    assert!(blocks(&lm) == before, "the quantized base changed");
}

/// A merged GGUF (issue 18) loads back into the merged model: the LoRA-adapted q and v
/// tensors rewritten in F32 (q re-permuted for `llama` files), every other tensor copied in its
/// blocks byte for byte, the base's metadata kept; from a base kept in blocks and from one
/// dequantized at load alike.
#[test]
fn a_merged_gguf_loads_back_as_the_merged_model() {
    use ttlora::io::{GgufSource, TensorSource};
    use ttlora::models::llama::write_merged_gguf;
    use ttlora::tuning::attach::trainable_vars;
    use ttlora::tuning::merged::merge_adapters;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_golden");
    let dev = Device::Cpu;
    let tmp = TempDir::new("merged-gguf");
    for (family, keep) in [("llama", true), ("llama", false), ("qwen2", true)] {
        let file = root.join(family).join("model-q8_0.gguf");
        let (llama, _) = Llama::load_gguf_with(&file, DType::F32, &dev, keep).unwrap();
        let mut lm = CausalLm::new(llama);
        let spec = MethodSpec::new(method("lora").unwrap(), serde_json::json!({"r": 4})).unwrap();
        let p = placing(&spec, &lm, None, None, &Default::default()).unwrap();
        attach(&mut lm, &spec, &p, "default", &mut seeded_rng(5)).unwrap();
        // B starts at zero; give the update something to merge.
        for (name, v) in trainable_vars(&lm).unwrap() {
            if name.contains("lora_B") {
                v.set(&(Tensor::randn(0f32, 0.2, v.shape(), &dev).unwrap()))
                    .unwrap();
            }
        }
        let ids = Tensor::new(&[[5u32, 9, 13, 17, 21, 3, 40, 8]], &dev).unwrap();
        let input = ModelInput::new(ids, Tensor::ones((1, 8), DType::U32, &dev).unwrap());
        let logits = |l: &Llama| l.logits(&l.forward(&input, false).unwrap(), false).unwrap();
        let unmerged = logits(lm.decoder());
        assert_eq!(merge_adapters(&mut lm, "default").unwrap(), 4, "{family}");
        let out = tmp.path().join(format!("{family}-{keep}.gguf"));
        let merged = write_merged_gguf(lm.decoder(), &file, &out).unwrap();

        let mut rewritten = merged.rewritten.clone();
        rewritten.sort();
        let want = [
            "blk.0.attn_q.weight",
            "blk.0.attn_v.weight",
            "blk.1.attn_q.weight",
            "blk.1.attn_v.weight",
        ];
        assert_eq!(rewritten, want, "{family} keep {keep}");
        let (base, back) = (
            GgufSource::open(&file).unwrap(),
            GgufSource::open(&out).unwrap(),
        );
        assert_eq!(merged.copied + 4, base.names().len());
        for name in base.names() {
            let (a, b) = (
                base.quantized(name, &dev).unwrap(),
                back.quantized(name, &dev).unwrap(),
            );
            if want.contains(&name) {
                assert_eq!(b.dtype(), candle_core::quantized::GgmlDType::F32, "{name}");
            } else {
                assert_eq!(
                    a.data().unwrap(),
                    b.data().unwrap(),
                    "{family}: {name} copied"
                );
            }
        }
        let arch = base
            .meta("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap();
        for key in [
            "general.architecture".to_string(),
            format!("{arch}.block_count"),
        ] {
            assert!(base.meta(&key).is_some());
            assert_eq!(base.meta(&key), back.meta(&key), "{key}");
        }
        let (loaded, _) = Llama::load_gguf(&out, DType::F32, &dev).unwrap();
        let diff = tensor_diff(&logits(&loaded), &unmerged);
        assert!(diff < 1e-4, "{family} keep {keep}: {diff}");
    }
}

/// Gradient checkpointing changes memory, not results: the loss and every trainable
/// gradient equal one backward through the whole graph, for LoRA with dropout (its masks
/// replayed in the recomputation), prompt tuning and prefix tuning on a tiny LLaMA.
#[test]
fn gradient_checkpointing_gives_the_gradients_of_one_backward() {
    use ttlora::ops::seed_dropout;
    use ttlora::train::{Batch, NextToken, Objective};
    use ttlora::tuning::attach::trainable_vars;
    let dev = Device::Cpu;
    for (name, config) in [
        ("lora", serde_json::json!({"r": 4, "lora_dropout": 0.3})),
        ("prompt", serde_json::json!({"num_virtual_tokens": 3})),
        ("prefix", serde_json::json!({"num_virtual_tokens": 2})),
        ("ttlora", serde_json::json!({})),
    ] {
        let llama = Llama::random(&LlamaConfig::tiny(), 0.2, DType::F32, &dev, 11).unwrap();
        let mut lm = CausalLm::new(llama);
        let spec = MethodSpec::new(method(name).unwrap(), config).unwrap();
        let p = placing(&spec, &lm, None, None, &Default::default()).unwrap();
        attach(&mut lm, &spec, &p, "default", &mut seeded_rng(3)).unwrap();
        let vars: Vec<Var> = trainable_vars(&lm)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        // LoRA's B starts at zero (A's gradient would be zero): start from a trained state.
        for v in &vars {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap())
                .unwrap();
        }
        let ids = Tensor::new(&[[5u32, 9, 13, 17, 21, 3], [7, 8, 2, 40, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &dev).unwrap();
        let batch = Batch {
            input: ModelInput::new(ids, mask),
            labels: Tensor::new(&[9u32, 13, 17, 21, 3, 8, 2, 40], &dev).unwrap(),
            rows: Some(Tensor::new(&[0u32, 1, 2, 3, 4, 6, 7, 8], &dev).unwrap()),
            choices: None,
        };
        seed_dropout(42);
        let (loss, grads) = NextToken.loss_and_grads(&lm, &batch, 0.5, &vars).unwrap();
        lm.set_gradient_checkpointing(true).unwrap();
        seed_dropout(42);
        let (loss_ckpt, grads_ckpt) = NextToken.loss_and_grads(&lm, &batch, 0.5, &vars).unwrap();
        assert!(
            (loss - loss_ckpt).abs() < 1e-5,
            "{name}: loss {loss} vs {loss_ckpt}"
        );
        for (i, (g, h)) in grads.iter().zip(&grads_ckpt).enumerate() {
            let (g, h) = (g.as_ref().unwrap(), h.as_ref().unwrap());
            let scale = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = tensor_diff(g, h);
            assert!(
                scale > 0.0 && diff <= 1e-4 * scale.max(1.0),
                "{name} var {i}: {diff}"
            );
        }
    }
    // A whole step over two micro-batches (gradient accumulation): the same update.
    use ttlora::train::{Adam, AdamParams, StepSettings, train_step};
    let step = |checkpoint: bool| -> Vec<Tensor> {
        let llama = Llama::random(&LlamaConfig::tiny(), 0.2, DType::F32, &dev, 11).unwrap();
        let mut lm = CausalLm::new(llama);
        let spec = MethodSpec::new(method("lora").unwrap(), serde_json::json!({"r": 4})).unwrap();
        let p = placing(&spec, &lm, None, None, &Default::default()).unwrap();
        attach(&mut lm, &spec, &p, "default", &mut seeded_rng(3)).unwrap();
        lm.set_gradient_checkpointing(checkpoint).unwrap();
        let vars: Vec<Var> = trainable_vars(&lm)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let micro = |ids: &[u32]| Batch {
            input: ModelInput::new(
                Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap(),
                Tensor::ones((1, ids.len()), DType::U32, &dev).unwrap(),
            ),
            labels: Tensor::new(&ids[1..], &dev).unwrap(),
            rows: Some(Tensor::arange(0u32, ids.len() as u32 - 1, &dev).unwrap()),
            choices: None,
        };
        let batches = [micro(&[5, 9, 13, 17, 21, 3]), micro(&[7, 8, 2])];
        let mut opt = Adam::new(vars.clone(), AdamParams::default()).unwrap();
        for step in 0..2 {
            let settings = StepSettings {
                lr: 1e-2,
                max_grad_norm: Some(1.0),
                seed: 1,
                step,
            };
            train_step(&lm, &NextToken, &batches, &mut opt, settings).unwrap();
        }
        vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect()
    };
    for (a, b) in step(false).iter().zip(&step(true)) {
        assert!(tensor_diff(a, b) < 1e-6);
    }
    // Encoders do not recompute layers: turning it on is refused.
    let mut bert = tiny_bert_classifier(&dev);
    assert!(bert.set_gradient_checkpointing(true).is_err());
}

/// DoRA on a base kept in blocks reads W0 from the blocks (no f32 copy) and computes what it
/// computes on the dequantized base: logits, merged weights and trainable gradients.
#[test]
fn dora_on_a_quantized_base_matches_dora_on_its_dequantized_copy() {
    use ttlora::tuning::attach::trainable_vars;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama_golden/llama/model-q8_0.gguf");
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[5u32, 9, 13, 17, 21, 3]], &dev).unwrap();
    let input = ModelInput::new(ids, Tensor::ones((1, 6), DType::U32, &dev).unwrap());
    let run = |keep: bool| {
        let (llama, _) = Llama::load_gguf_with(&file, DType::F32, &dev, keep).unwrap();
        assert_eq!(llama.is_quantized(), keep);
        let mut lm = CausalLm::new(llama);
        let config = serde_json::json!({"r": 4, "use_dora": true});
        let spec = MethodSpec::new(method("lora").unwrap(), config).unwrap();
        let p = placing(&spec, &lm, None, None, &Default::default()).unwrap();
        attach(&mut lm, &spec, &p, "default", &mut seeded_rng(5)).unwrap();
        let vars = trainable_vars(&lm).unwrap();
        // The same nonzero values on both sides (B starts at zero).
        for (_, v) in &vars {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &dev).unwrap())
                .unwrap();
        }
        let logits = lm.forward(&input, true).unwrap();
        let grads = logits.sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (lm.decoder().is_quantized(), logits, g)
    };
    let (kept, logits_q, grads_q) = run(true);
    let (dense, logits_f, grads_f) = run(false);
    assert!(
        kept && !dense,
        "the quantized run kept its blocks through attach"
    );
    assert!(tensor_diff(&logits_q, &logits_f) < 1e-4);
    for (a, b) in grads_q.iter().zip(&grads_f) {
        assert!(tensor_diff(a, b) < 1e-3, "{}", tensor_diff(a, b));
    }
}
