//! PEFT compatibility against PEFT itself: `tests/fixtures/peft` was written by HF PEFT 0.21.2
//! and PyTorch (scripts/make_peft_golden.py): a tiny random BertForSequenceClassification, a
//! LoRA adapter PEFT saved for it, and the logits PyTorch computed. ttlora must read the folder
//! and reproduce those logits, and what ttlora writes must look like what PEFT wrote.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ttlora::io::AdapterFolder;
use ttlora::io::adapter_folder::{CONFIG_FILE, WEIGHTS_FILE};
use ttlora::models::{Model, ModelInput, Pooling, load_classifier};
use ttlora::tuning::adapted::{AdapterMeta, load_into, to_peft_lora};

use crate::common::{TempDir, peft_fixture as fixture, tensor_diff as diff};

/// Agreement with PyTorch's float32 logits.
const SAME_AS_TORCH: f32 = 1e-5;

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn rows<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Vec<Vec<T>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn input(e: &serde_json::Value) -> ModelInput {
    let t = |key: &str| {
        let r: Vec<Vec<u32>> = rows(&e[key]);
        Tensor::new(r, &Device::Cpu).unwrap()
    };
    ModelInput {
        input_ids: t("input_ids"),
        token_type_ids: Some(t("token_type_ids")),
        attention_mask: t("attention_mask"),
        position_ids: None,
    }
}

/// The largest difference of our logits from the ones PEFT/PyTorch recorded.
fn max_diff(got: &Tensor, want: &serde_json::Value) -> f32 {
    crate::common::max_diff(&got.to_vec2().unwrap(), &rows(want))
}

fn base() -> Box<dyn Model> {
    load_classifier(&fixture("base"), 3, Pooling::Cls, &Device::Cpu, 0).unwrap()
}

fn logits(m: &dyn Model) -> Tensor {
    m.forward(&input(&expected()), false).unwrap()
}

/// Merges the adapter of every adapted layer into its weight, as PEFT's `merge_and_unload`,
/// and asserts the merged model gives the logits PEFT's merge gave.
fn merges_to(model: &mut dyn Model, merged_logits: &serde_json::Value, what: &str) {
    for (_, layer) in model.linears_mut() {
        if layer.adapters().next().is_some() {
            layer.merge().unwrap();
        }
    }
    let d = max_diff(&logits(model), merged_logits);
    assert!(
        d < SAME_AS_TORCH,
        "merged {what} differs from PEFT's merge by {d}"
    );
}

#[test]
fn reads_a_peft_lora_folder_and_reproduces_pytorchs_logits() {
    let e = expected();
    let mut model = base();
    let d = max_diff(&logits(model.as_ref()), &e["base_logits"]);
    assert!(d < SAME_AS_TORCH, "base model differs from PyTorch by {d}");

    let folder = AdapterFolder::read(&fixture("lora"), &Device::Cpu).unwrap();
    assert_eq!(folder.config.method, "lora");
    assert_eq!(folder.config.modules.len(), 4, "query+value in 2 layers");
    assert_eq!(
        folder.config.modules_to_save,
        ["classifier.bias", "classifier.weight"]
    );
    load_into(model.as_mut(), &folder, "default").unwrap();
    let d = max_diff(&logits(model.as_ref()), &e["adapted_logits"]);
    assert!(d < SAME_AS_TORCH, "adapted model differs from PEFT by {d}");

    merges_to(model.as_mut(), &e["merged_logits"], "LoRA");
}

#[test]
fn a_written_peft_lora_has_pefts_keys_config_fields_and_metadata() {
    let tmp = TempDir::new("peft");
    let mut model = base();
    let golden = AdapterFolder::read(&fixture("lora"), &Device::Cpu).unwrap();
    load_into(model.as_mut(), &golden, "default").unwrap();
    let meta = AdapterMeta {
        method: "lora".into(),
        base_model: "tiny-bert".into(),
        base_model_config_sha256: String::new(),
        config: serde_json::json!({}),
        target_modules: serde_json::json!(["query", "value"]),
        exclude_modules: None,
        overrides: BTreeMap::new(),
        save_head: true,
        task: None,
    };
    let out = tmp.join("written");
    to_peft_lora(model.as_ref(), "default", &meta)
        .unwrap()
        .write(&out)
        .unwrap();

    // Same tensor names and shapes, PEFT's metadata.
    let bytes = |dir: &Path| std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let (ours, theirs) = (bytes(&out), bytes(&fixture("lora")));
    let (ours, theirs) = (
        safetensors::SafeTensors::read_metadata(&ours).unwrap().1,
        safetensors::SafeTensors::read_metadata(&theirs).unwrap().1,
    );
    assert_eq!(ours.metadata(), theirs.metadata());
    let shapes = |m: &safetensors::tensor::Metadata| -> BTreeMap<String, Vec<usize>> {
        m.tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape.clone()))
            .collect()
    };
    assert_eq!(shapes(&ours), shapes(&theirs));

    // Every field we write is one PEFT writes, with PEFT's value where the adapter is the same.
    let json = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap()
    };
    let (ours, theirs) = (json(&out), json(&fixture("lora")));
    let ours = ours.as_object().unwrap();
    let keys: Vec<&String> = ours.keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys sorted as PEFT writes them");
    for (k, v) in ours {
        assert!(theirs.get(k).is_some(), "PEFT has no field `{k}`");
        if ![
            "target_modules",
            "base_model_name_or_path",
            "init_lora_weights",
            "modules_to_save",
        ]
        .contains(&k.as_str())
        {
            assert_eq!(v, &theirs[k], "field `{k}`");
        }
    }
    assert_eq!(ours["modules_to_save"], serde_json::json!(["classifier"]));

    // And it reads back to the same logits.
    let mut again = base();
    load_into(
        again.as_mut(),
        &AdapterFolder::read(&out, &Device::Cpu).unwrap(),
        "default",
    )
    .unwrap();
    let d = max_diff(&logits(again.as_ref()), &expected()["adapted_logits"]);
    assert!(d < SAME_AS_TORCH, "{d}");
}

/// The tiny base with TT-LoRA (non-zero `paper` init) on query and value.
fn base_with_ttlora() -> Box<dyn Model> {
    use ttlora::adapters::{MethodSpec, ModuleSet, Targeting, inject, seeded_rng};
    let mut model = base();
    let targets = ModuleSet::List(vec!["query".into(), "value".into()]);
    let targeting = Targeting::new(&targets, None, &BTreeMap::new()).unwrap();
    let cfg = serde_json::json!({"rank": 3, "alpha": 4.0, "init": "paper"});
    let report = inject(
        model.linears_mut(),
        &MethodSpec::parse("ttlora", cfg).unwrap(),
        &targeting,
        "default",
        &mut seeded_rng(5),
    )
    .unwrap();
    assert_eq!(report.adapted.len(), 4);
    model
}

fn task() -> ttlora::io::TaskInfo {
    ttlora::io::TaskInfo {
        name: "custom".into(),
        label_names: vec!["a".into(), "b".into(), "c".into()],
        num_labels: 3,
        pooling: ttlora::models::Pooling::Cls,
        max_len: 64,
    }
}

fn ttlora_meta() -> AdapterMeta {
    AdapterMeta {
        method: "ttlora".into(),
        base_model: fixture("base").display().to_string(),
        base_model_config_sha256: String::new(),
        config: serde_json::json!({"rank": 3, "alpha": 4.0}),
        target_modules: serde_json::json!(["query", "value"]),
        exclude_modules: None,
        overrides: BTreeMap::new(),
        save_head: true,
        task: Some(task()),
    }
}

#[test]
fn ttlora_round_trips_through_its_own_folder_peft_lora_and_a_merged_model() {
    use ttlora::jobs::export::{ExportFormat, export};
    use ttlora::jobs::inference::load as load_adapted;
    let tmp = TempDir::new("peft");
    let model = base_with_ttlora();
    let want = logits(model.as_ref());
    let d = diff(&want, &logits(base().as_ref()));
    assert!(d > 1e-2, "the TT adapter must change the logits ({d})");

    // Own folder → load → identical logits.
    let own = tmp.join("own");
    ttlora::tuning::adapted::collect(model.as_ref(), "default", &ttlora_meta())
        .unwrap()
        .write(&own)
        .unwrap();
    let cpu = Device::Cpu;
    let mut reloaded = load_adapted(&own, None, &cpu, false).unwrap();
    assert!(diff(&want, &logits(reloaded.model.as_ref())) <= 1e-6);

    // → PEFT LoRA of rank 3 → loaded as LoRA → the same logits.
    let peft = tmp.join("exported-peft");
    let report = export(&mut reloaded, ExportFormat::PeftLora, &peft).unwrap();
    assert_eq!(report.ranks.into_iter().collect::<Vec<_>>(), [3]);
    let as_lora = load_adapted(&peft, None, &cpu, false).unwrap();
    assert_eq!(as_lora.config.method, "lora");
    assert_eq!(
        as_lora.task,
        task(),
        "the task survives through ttlora_task.json"
    );
    let d = diff(&want, &logits(as_lora.model.as_ref()));
    assert!(d <= 1e-5, "TT → PEFT LoRA changed the logits by {d}");

    // → merged HF folder → loaded as a plain model → the same logits.
    let merged = tmp.join("exported-merged");
    let mut again = load_adapted(&own, None, &cpu, false).unwrap();
    let report = export(&mut again, ExportFormat::Merged, &merged).unwrap();
    assert_eq!(report.modules, 4);
    let plain = load_classifier(&merged, 3, Pooling::Cls, &cpu, 99).unwrap();
    assert!(
        plain
            .linears()
            .iter()
            .all(|(_, l)| l.adapters().next().is_none())
    );
    let d = diff(&want, &logits(plain.as_ref()));
    assert!(d <= 1e-5, "merged model differs by {d}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["2"], "c");
}

#[test]
fn a_peft_lora_compressed_exactly_exports_back_to_the_same_delta_w() {
    use ttlora::jobs::compress::{CompressSpec, Source, compress};
    use ttlora::jobs::export::{ExportFormat, export};
    use ttlora::jobs::inference::load as load_adapted;
    let tmp = TempDir::new("peft");
    let cpu = Device::Cpu;
    let base_dir = fixture("base").display().to_string();
    let lora = load_adapted(&fixture("lora"), Some(&base_dir), &cpu, false).unwrap();
    let deltas = |m: &dyn Model| -> BTreeMap<String, Tensor> {
        m.linears()
            .into_iter()
            .filter_map(|(p, l)| {
                let (_, a) = l.adapters().next()?;
                Some((p, a.delta_weight().unwrap()))
            })
            .collect()
    };
    let want = deltas(lora.model.as_ref());
    assert_eq!(want.len(), 4);

    let tt_dir = tmp.join("compressed");
    let spec = CompressSpec {
        shape_config: serde_json::json!({}),
        alpha: 2.0,
        truncation: ttlora::tt::Truncation::tolerance(1e-7),
    };
    let report = compress(&Source::from_adapter(&lora).unwrap(), &spec, &tt_dir).unwrap();
    assert!(report.rel_error < 1e-6, "{}", report.rel_error);
    let tt = load_adapted(&tt_dir, Some(&base_dir), &cpu, false);
    let mut tt = tt.unwrap();
    assert_eq!(tt.config.method, "ttlora");
    let peft_dir = tmp.join("compressed-peft");
    export(&mut tt, ExportFormat::PeftLora, &peft_dir).unwrap();
    let back = load_adapted(&peft_dir, Some(&base_dir), &cpu, false).unwrap();
    let got = deltas(back.model.as_ref());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        let d = diff(w, &got[path]);
        assert!(d <= 1e-5, "{path}: ΔW differs by {d}");
    }
    let d = diff(&logits(back.model.as_ref()), &logits(lora.model.as_ref()));
    assert!(d <= 1e-5, "logits differ by {d}");
}

#[test]
fn folders_from_ttlora_0_1_without_the_family_prefix_still_load() {
    use ttlora::jobs::inference::load as load_adapted;
    let tmp = TempDir::new("peft");
    let model = base_with_ttlora();
    let want = logits(model.as_ref());
    let mut folder =
        ttlora::tuning::adapted::collect(model.as_ref(), "default", &ttlora_meta()).unwrap();
    // What 0.1 wrote: `encoder.layer…` paths and keys, no layer_shapes.
    let strip = |s: &str| s.replacen("bert.encoder", "encoder", 1);
    folder.config.modules = std::mem::take(&mut folder.config.modules)
        .into_iter()
        .map(|(k, v)| (strip(&k), v))
        .collect();
    folder.config.layer_shapes.clear();
    folder.tensors = std::mem::take(&mut folder.tensors)
        .into_iter()
        .map(|(k, v)| (strip(&k), v))
        .collect();
    assert!(
        folder
            .config
            .modules
            .keys()
            .all(|k| k.starts_with("encoder."))
    );
    let dir = tmp.join("legacy");
    folder.write(&dir).unwrap();
    let loaded = load_adapted(&dir, None, &Device::Cpu, false).unwrap();
    assert!(diff(&want, &logits(loaded.model.as_ref())) <= 1e-6);
    let report = ttlora::jobs::inspect::inspect(&dir).unwrap();
    assert_eq!(report.modules.len(), 4);
    assert!(
        report
            .modules
            .iter()
            .all(|m| m.effective_rank.is_some_and(|r| r <= 3))
    );
}

#[test]
fn a_full_fine_tunes_weight_change_compresses_into_the_same_model() {
    use ttlora::jobs::compress::{CompressSpec, Source, compress};
    use ttlora::jobs::export::{ExportFormat, export};
    use ttlora::jobs::inference::load as load_adapted;
    let tmp = TempDir::new("peft");
    let cpu = Device::Cpu;
    let base_dir = fixture("base");
    let base_name = base_dir.display().to_string();
    // A "fully fine-tuned" model: PEFT's LoRA merged into the weights, head changed.
    let mut lora = load_adapted(&fixture("lora"), Some(&base_name), &cpu, false).unwrap();
    let want = logits(lora.model.as_ref());
    let tuned = tmp.join("finetuned");
    export(&mut lora, ExportFormat::Merged, &tuned).unwrap();

    let source = Source::from_finetuned(&base_dir, &base_name, &tuned, None, &cpu).unwrap();
    assert_eq!(
        source.updates.len(),
        4,
        "query and value of 2 layers by default"
    );
    assert!(source.updates.iter().all(|u| u.params == 32 * 32));
    let tt_dir = tmp.join("finetuned-tt");
    let spec = CompressSpec {
        shape_config: serde_json::json!({}),
        alpha: 1.0,
        truncation: ttlora::tt::Truncation::tolerance(1e-7),
    };
    let report = compress(&source, &spec, &tt_dir).unwrap();
    assert!(report.rel_error < 1e-6, "{}", report.rel_error);
    let tt = load_adapted(&tt_dir, None, &cpu, false).unwrap();
    let d = diff(&want, &logits(tt.model.as_ref()));
    assert!(d <= 1e-5, "the compressed fine-tune differs by {d}");
}

#[test]
fn reads_peft_prompt_and_prefix_folders_and_reproduces_their_logits() {
    // Folders PEFT itself saved (scripts/make_peft_golden.py); logits from PEFT's prompt
    // tuning forward, and from HF's BertModel with PEFT's prefix as past keys and values.
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_prompt.json")).unwrap())
            .unwrap();
    for (name, peft_type) in [("prompt", "PROMPT_TUNING"), ("prefix", "PREFIX_TUNING")] {
        let folder = AdapterFolder::read(&fixture(name), &Device::Cpu).unwrap();
        assert_eq!(folder.config.method, name);
        assert_eq!(folder.config.peft_type, peft_type);
        assert_eq!(
            folder.config.modules_to_save,
            ["classifier.bias", "classifier.weight"]
        );
        let mut model = base();
        load_into(model.as_mut(), &folder, "default").unwrap();
        let d = max_diff(&logits(model.as_ref()), &e[format!("{name}_logits")]);
        assert!(d < SAME_AS_TORCH, "{name}: differs from PEFT by {d}");
        // The tokens matter: without them the logits move by far more than the tolerance.
        model.set_virtual_tokens("default", None).unwrap();
        let d = max_diff(&logits(model.as_ref()), &e[format!("{name}_logits")]);
        assert!(
            d > 100.0 * SAME_AS_TORCH,
            "{name}: tokens change the logits by only {d}"
        );
    }
}

#[test]
fn reads_a_peft_dora_folder_and_reproduces_its_logits_merged_and_unmerged() {
    let tmp = TempDir::new("peft");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_dora.json")).unwrap())
            .unwrap();
    let folder = AdapterFolder::read(&fixture("dora"), &Device::Cpu).unwrap();
    assert!(
        folder
            .config
            .modules
            .values()
            .all(|m| m["use_dora"] == true)
    );
    let mut model = base();
    load_into(model.as_mut(), &folder, "default").unwrap();
    let d = max_diff(&logits(model.as_ref()), &e["adapted_logits"]);
    assert!(d < SAME_AS_TORCH, "DoRA differs from PEFT by {d}");
    // Written back as PEFT LoRA with use_dora, it reads and computes the same.
    let meta = AdapterMeta::bare("lora");
    let out = tmp.join("dora-out");
    to_peft_lora(model.as_ref(), "default", &meta)
        .unwrap()
        .write(&out)
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["use_dora"], true);
    let mut again = base();
    load_into(
        again.as_mut(),
        &AdapterFolder::read(&out, &Device::Cpu).unwrap(),
        "default",
    )
    .unwrap();
    let d = max_diff(&logits(again.as_ref()), &e["adapted_logits"]);
    assert!(d < SAME_AS_TORCH, "rewritten DoRA differs by {d}");
    merges_to(model.as_mut(), &e["merged_logits"], "DoRA");
}

/// Issue 17: a PEFT folder without ttlora's task record, on a base that declares
/// sentence-transformers mean pooling (all-MiniLM-L6-v2 has `1_Pooling` *and* BERT's pooler),
/// was mean-pooled — not what PEFT trained through `BertForSequenceClassification` — and
/// scored silently wrong. It now runs with HF's head (the first token through the pooler)
/// and reproduces PyTorch's logits; `--pooling` still overrides, and a merged export of a
/// mean-pooled model keeps the pooler, which HF would otherwise initialise at random.
#[test]
fn issue_17_a_peft_folder_on_a_sentence_transformers_base_runs_as_peft_trained_it() {
    use ttlora::jobs::export::{ExportFormat, export};
    use ttlora::jobs::inference::{PoolingSource, load_with};
    let tmp = TempDir::new("peft-st-base");
    let base_dir = tmp.join("st-base");
    std::fs::create_dir(&base_dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("base").join(f), base_dir.join(f)).unwrap();
    }
    std::fs::create_dir(base_dir.join("1_Pooling")).unwrap();
    std::fs::write(
        base_dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    let e = expected();
    let base = Some(base_dir.to_str().unwrap());
    let cpu = Device::Cpu;

    let inf = load_with(&fixture("lora"), base, None, &cpu, false).unwrap();
    assert_eq!(inf.task.pooling, Pooling::Cls);
    assert_eq!(inf.pooling_from, PoolingSource::HfHead);
    let d = max_diff(&logits(inf.model.as_ref()), &e["adapted_logits"]);
    assert!(d < SAME_AS_TORCH, "differs from PEFT by {d}");

    let mut mean = load_with(&fixture("lora"), base, Some(Pooling::Mean), &cpu, false).unwrap();
    assert_eq!(mean.pooling_from, PoolingSource::Given);
    let d = max_diff(&logits(mean.model.as_ref()), &e["adapted_logits"]);
    assert!(d > 1e-3, "mean pooling must give other logits ({d})");
    let merged = tmp.join("merged");
    export(&mut mean, ExportFormat::Merged, &merged).unwrap();
    let names = candle_core::safetensors::load(merged.join("model.safetensors"), &cpu).unwrap();
    assert!(
        names.contains_key("bert.pooler.dense.weight"),
        "{:?}",
        names.keys()
    );
}
