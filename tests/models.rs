//! Model families through the public API: build a tiny random model, save it as an HF folder,
//! load it back through the family dispatch, and train one step through `dyn Model`.
//! (Tests that need the real all-MiniLM-L6-v2 weights live in `src/models/bert/tests.rs`.)

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ttlora::adapters::{LayerSpec, method, seeded_rng};
use ttlora::models::{
    BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification,
    EncoderInput, Model, Pooling, load_classifier,
};

/// A fresh folder under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ttlora-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two sequences, the second padded with `pad`.
fn input(pad: u32, dev: &Device) -> EncoderInput {
    let ids = Tensor::new(&[[2u32, 11, 12, 13, 3], [2, 21, 3, pad, pad]], dev).unwrap();
    EncoderInput {
        input_ids: ids,
        token_type_ids: Tensor::zeros((2, 5), DType::U32, dev).unwrap(),
        attention_mask: Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dev).unwrap(),
    }
}

#[test]
fn saved_tiny_models_load_through_the_family_dispatch() {
    let dev = Device::Cpu;
    for cfg in [BertConfig::tiny(), BertConfig::tiny_roberta()] {
        let model =
            BertForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 3)
                .unwrap();
        let dir = temp_dir(&format!("{:?}", cfg.model_type));
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let tensors: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();

        let loaded: Box<dyn Model> = load_classifier(&dir, 2, Pooling::Cls, &dev, 0).unwrap();
        let x = input(cfg.pad_token_id, &dev);
        let a = model.forward(&x, false).unwrap();
        let b = loaded.forward(&x, false).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{:?}: {diff}", cfg.model_type);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn one_sgd_step_through_dyn_model_lowers_the_loss() {
    let dev = Device::Cpu;
    let cfg = BertConfig::tiny();
    let mut model: Box<dyn Model> = Box::new(
        BertForSequenceClassification::random(&cfg, 2, Pooling::Mean, DType::F32, &dev, 8).unwrap(),
    );
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
            };
            let cfg = serde_json::json!({"rank": 2, "init": "paper"});
            let adapter = ttlora.build_from_json(&cfg, &spec, &mut rng).unwrap();
            lin.add_adapter("default", adapter).unwrap();
        }
    }
    let mut vars: Vec<candle_core::Var> = model
        .linears()
        .into_iter()
        .flat_map(|(_, l)| l.trainable().into_iter().map(|(_, _, v)| v))
        .collect();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    // query + value in every layer, each with at least two cores, and the head's W and b.
    assert!(vars.len() >= 2 * cfg.num_hidden_layers * 2 + 2);

    let x = input(0, &dev);
    let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
    let loss_of = |m: &dyn Model| {
        candle_nn::loss::cross_entropy(&m.forward(&x, false).unwrap(), &labels).unwrap()
    };
    let before = loss_of(model.as_ref());
    let grads = before.backward().unwrap();
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .expect("every trainable tensor has a gradient");
        let step = (v.as_tensor() - (g * 0.1).unwrap()).unwrap();
        v.set(&step).unwrap();
    }
    let after = loss_of(model.as_ref());
    let (b, a) = (
        before.to_scalar::<f32>().unwrap(),
        after.to_scalar::<f32>().unwrap(),
    );
    assert!(a < b, "one SGD step should lower the loss: {b} -> {a}");
}

#[test]
fn pooling_names_round_trip() {
    for p in [Pooling::Cls, Pooling::Mean] {
        assert_eq!(p.to_string().parse::<Pooling>().unwrap(), p);
    }
    assert_eq!(
        "max".parse::<Pooling>().unwrap_err(),
        "unknown pooling `max`; known: cls, mean"
    );
    let dir = temp_dir("pooling");
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deberta_v2_loads_through_the_family_dispatch_and_learns_through_adapters() {
    let dev = Device::Cpu;
    let cfg = DebertaV2Config::tiny();
    let model =
        DebertaV2ForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &dev, 3)
            .unwrap();
    let dir = temp_dir("deberta-v2");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let mut loaded: Box<dyn Model> = load_classifier(&dir, 2, Pooling::Cls, &dev, 0).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let x = input(cfg.pad_token_id, &dev);
    let diff = (model.forward(&x, false).unwrap() - loaded.forward(&x, false).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);

    // Adapters on the default targets (query_proj, value_proj) of every layer learn.
    assert_eq!(loaded.default_targets(), ["query_proj", "value_proj"]);
    let ttlora = method("ttlora").unwrap();
    let mut rng = seeded_rng(1);
    let targets = loaded.default_targets();
    for (path, lin) in loaded.linears_mut() {
        if targets.iter().any(|t| path.ends_with(&format!(".{t}"))) {
            let spec = LayerSpec {
                in_features: lin.in_features(),
                out_features: lin.out_features(),
                dtype: DType::F32,
                device: dev.clone(),
                weight: None,
            };
            let adapter = ttlora
                .build_from_json(&serde_json::json!({"rank": 2}), &spec, &mut rng)
                .unwrap();
            lin.add_adapter("default", adapter).unwrap();
        }
    }
    let mut vars: Vec<candle_core::Var> = loaded
        .linears()
        .into_iter()
        .flat_map(|(_, l)| l.trainable().into_iter().map(|(_, _, v)| v))
        .collect();
    assert!(vars.len() >= 2 * cfg.num_hidden_layers * 2);
    vars.extend(loaded.head_vars().into_iter().map(|(_, v)| v));
    let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
    let loss_of = |m: &dyn Model| {
        candle_nn::loss::cross_entropy(&m.forward(&x, false).unwrap(), &labels).unwrap()
    };
    let before = loss_of(loaded.as_ref());
    let grads = before.backward().unwrap();
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .expect("every trainable tensor has a gradient");
        v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap())
            .unwrap();
    }
    let after = loss_of(loaded.as_ref()).to_scalar::<f32>().unwrap();
    assert!(after < before.to_scalar::<f32>().unwrap());
}

#[test]
fn a_full_fine_tune_of_deberta_with_the_conv_reloads_to_the_same_outputs() {
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
        DebertaV2ForSequenceClassification::random(
            &cfg,
            2,
            Pooling::Cls,
            DType::F32,
            &Device::Cpu,
            4,
        )
        .unwrap()
    };
    let mut model = build();
    let spec = MethodSpec::parse("full", serde_json::json!({})).unwrap();
    let p = placing(&spec, &model, None, None, &Default::default()).unwrap();
    attach(&mut model, &spec, &p, "default", &mut seeded_rng(1)).unwrap();
    // Move every trained tensor, the conv weight included.
    for (_, v) in trainable_vars(&model) {
        let t = v.as_tensor();
        v.set(&(t + Tensor::randn(0f32, 0.05, t.shape(), t.device()).unwrap()).unwrap())
            .unwrap();
    }
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 100).collect();
    let mut mask = vec![1u32; 24];
    mask[22] = 0;
    mask[23] = 0;
    let input = EncoderInput {
        input_ids: Tensor::from_vec(ids, (3, 8), &dev).unwrap(),
        token_type_ids: Tensor::zeros((3, 8), DType::U32, &dev).unwrap(),
        attention_mask: Tensor::from_vec(mask, (3, 8), &dev).unwrap(),
    };
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
    let reloaded = fresh.forward(&input, false).unwrap();
    let d = (trained - reloaded)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
}
