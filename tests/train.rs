//! Fine-tuning end to end through the library: a tiny random BERT (saved as an HF folder with
//! a small real WordPiece tokenizer) trained with TT-LoRA on the bundled real SST-2 files.

use std::path::Path;

use candle_core::Device;
use ttlora::adapters::MethodSpec;
use ttlora::jobs::finetune::{self, FineTuneSpec};
use ttlora::jobs::inference;
use ttlora::jobs::pipeline;
use ttlora::jobs::study::StudySpec;
use ttlora::jobs::task::TaskSource;
use ttlora::jobs::trial::TrialSpec;
use ttlora::models::{BertConfig, Pooling, load_classifier};
use ttlora::train::{Control, Observer, StepReport, TrainConfig};

use crate::common::{bundled_data, max_diff, tiny_bert_folder, tiny_deberta_folder};

/// Collects every step's loss.
#[derive(Default)]
struct Losses(Vec<f64>);

impl Observer for Losses {
    fn on_step(&mut self, s: &StepReport) -> Control {
        self.0.push(s.loss);
        Control::Continue
    }
}

fn spec(model: &Path, out: &Path, method: &str) -> FineTuneSpec {
    FineTuneSpec {
        study: StudySpec {
            model: model.to_string_lossy().into_owned(),
            task: TaskSource::Registry {
                spec: ttlora::data::task("sst2").unwrap(),
                root: bundled_data(),
            },
            pooling: Some(Pooling::Mean),
            max_len: 48,
            held_out: 0.1,
            max_train: Some(480),
            seed: 7,
            device: Device::Cpu,
            allow_fetch: false,
        },
        trial: TrialSpec {
            method: MethodSpec::parse(method, serde_json::json!({})).unwrap(),
            targets: None,
            exclude: None,
            overrides: Default::default(),
            train_head: true,
            batch_size: 16,
            train: TrainConfig {
                epochs: 4,
                lr: 1e-2,
                warmup_ratio: 0.0,
                seed: 7,
                ..TrainConfig::default()
            },
        },
        out: out.to_path_buf(),
        resume: false,
    }
}

#[test]
fn ttlora_on_real_sst2_learns_saves_and_reloads_identically_bert() {
    learns_saves_and_reloads(
        &tiny_bert_folder("e2e", BertConfig::tiny()),
        ".query",
        ".value",
    );
}

#[test]
fn ttlora_on_real_sst2_learns_saves_and_reloads_identically_roberta() {
    let dir = tiny_bert_folder("e2e-roberta", BertConfig::tiny_roberta());
    learns_saves_and_reloads(&dir, ".query", ".value");
}

#[test]
fn ttlora_on_real_sst2_learns_saves_and_reloads_identically_deberta_v2() {
    learns_saves_and_reloads(
        &tiny_deberta_folder("e2e-deberta"),
        ".query_proj",
        ".value_proj",
    );
}

#[test]
fn lora_saves_a_peft_folder_that_reloads_identically() {
    let model_dir = tiny_bert_folder("e2e-lora", BertConfig::tiny());
    let out = model_dir.join("run");
    let mut s = spec(&model_dir, &out, "lora");
    s.study.max_train = Some(64);
    s.trial.train.epochs = 2;
    s.trial.method = MethodSpec::parse(
        "lora",
        serde_json::json!({"r": 4, "lora_alpha": 8.0, "lora_dropout": 0.1}),
    )
    .unwrap();
    let trained = finetune::run(&s, &mut []).unwrap();

    // PEFT's own adapter_config.json: its fields only, no ttlora format fields.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["lora_dropout"], 0.1);
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    assert!(cfg.get("format_version").is_none());
    assert!(
        cfg["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_str().unwrap().starts_with("bert.encoder.layer."))
    );
    // ttlora's task knowledge sits beside it, where PEFT does not look.
    assert!(out.join("ttlora_task.json").is_file());

    let inf = inference::load(&out, None, &Device::Cpu, false).unwrap();
    assert_eq!(inf.task.name, "sst2");
    let dev = &trained.dev;
    let logits = |m: &dyn ttlora::models::Model| {
        pipeline::logits(m, dev, 64, trained.pad_id, &Device::Cpu).unwrap()
    };
    let diff = max_diff(&logits(trained.model.as_ref()), &logits(inf.model.as_ref()));
    assert!(diff <= 1e-6, "reloaded logits differ by {diff}");
}

/// Trains TT-LoRA on the default targets of the model in `model_dir` (whose names end with
/// `q` and `v`) and checks learning, frozen weights, saving and reloading.
fn learns_saves_and_reloads(model_dir: &Path, q_name: &str, v_name: &str) {
    let out = model_dir.join("run");
    let mut losses = Losses::default();
    // A small slice trained for many epochs: a tiny random model can fit it, so the loss
    // must fall clearly. (With 64 examples × 30 epochs the tiny RoBERTa ended near chance,
    // 0.63–0.70 depending on the dropout stream; 32 × 40 takes all three to ≤ 0.26.)
    let mut s = spec(model_dir, &out, "ttlora");
    s.study.max_train = Some(32);
    s.trial.train.epochs = 40;
    s.trial.train.lr = 5e-2;
    // This high lr suits the tiny random model with the default α = 8.
    let trained = finetune::run(&s, &mut [&mut losses]).unwrap();

    // The loss goes down: the last quarter of steps averages clearly below the first.
    let n = losses.0.len();
    assert!(n >= 8, "{n} steps");
    let q = n / 4;
    let first: f64 = losses.0[..q].iter().sum::<f64>() / q as f64;
    let last: f64 = losses.0[n - q..].iter().sum::<f64>() / q as f64;
    assert!(
        last < 0.95 * first && last < 0.68,
        "loss {first:.4} -> {last:.4}: {:?}",
        losses.0
    );

    // Frozen weights are bit-identical to a freshly loaded base model.
    let base = load_classifier(model_dir, 2, Pooling::Mean, &Device::Cpu, 0).unwrap();
    for ((pa, la), (pb, lb)) in trained.model.linears().iter().zip(base.linears().iter()) {
        assert_eq!(pa, pb);
        let wa = la.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wb = lb.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            wa.iter().zip(&wb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{pa} changed"
        );
    }
    // Adapters sit on query and value only.
    let report = &trained.report;
    assert!(
        report
            .adapted_modules
            .iter()
            .all(|p| p.ends_with(q_name) || p.ends_with(v_name)),
        "{:?}",
        report.adapted_modules
    );
    assert_eq!(report.adapted_modules.len(), 2 * 2);
    assert!(report.dev_metrics.contains_key("accuracy"));

    // Saved, reloaded onto a fresh base model: the same dev logits.
    assert!(out.join("adapter_config.json").is_file());
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(out.join("train_log.jsonl").is_file());
    let inf = inference::load(&out, None, &Device::Cpu, false).unwrap();
    let dev = &trained.dev;
    let a = pipeline::logits(
        trained.model.as_ref(),
        dev,
        64,
        trained.pad_id,
        &Device::Cpu,
    )
    .unwrap();
    let b = pipeline::logits(inf.model.as_ref(), dev, 64, trained.pad_id, &Device::Cpu).unwrap();
    assert_eq!(a.len(), 872);
    let diff = max_diff(&a, &b);
    assert!(diff <= 1e-6, "reloaded logits differ by {diff}");
}

#[test]
fn interrupted_training_resumes_to_the_same_adapter() {
    // Dropout is on (0.1): its masks are seeded per step, so the resumed run must still
    // match the uninterrupted one exactly.
    let model_dir = tiny_bert_folder("resume", BertConfig::tiny());
    let mut s = spec(&model_dir, &model_dir.join("full"), "ttlora");
    s.trial.train.eval_every = Some(5);
    s.trial.train.epochs = 1;
    s.study.max_train = Some(320);
    let full = finetune::run(&s, &mut []).unwrap();

    // The same run, killed in step 12 (after the checkpoint of step 10), then resumed.
    struct CrashAt(usize);
    impl Observer for CrashAt {
        fn on_step(&mut self, r: &StepReport) -> Control {
            assert!(r.step < self.0, "simulated crash at step {}", r.step);
            Control::Continue
        }
    }
    let mut s2 = s.clone();
    s2.out = model_dir.join("resumed");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        finetune::run(&s2, &mut [&mut CrashAt(12)])
    }));
    assert!(crashed.is_err());
    assert!(
        s2.out.join("checkpoint").is_dir(),
        "no checkpoint left by the crash"
    );
    s2.resume = true;
    let mut steps = Losses::default();
    let resumed = finetune::run(&s2, &mut [&mut steps]).unwrap();
    // Only the steps after the checkpoint ran again.
    assert_eq!(steps.0.len(), full.report.summary.steps - 10);
    assert_eq!(resumed.report.summary.steps, full.report.summary.steps);
    // The training time before the crash counts in the resumed run's wall time.
    let summary = &resumed.report.summary;
    assert!(summary.carried_s > 0.0, "no training time carried over");
    assert!(resumed.report.wall_s >= summary.carried_s + summary.elapsed_s);
    let a = pipeline::logits(
        full.model.as_ref(),
        &full.dev,
        64,
        full.pad_id,
        &Device::Cpu,
    )
    .unwrap();
    let b = pipeline::logits(
        resumed.model.as_ref(),
        &resumed.dev,
        64,
        resumed.pad_id,
        &Device::Cpu,
    )
    .unwrap();
    let diff = max_diff(&a, &b);
    assert!(diff <= 1e-6, "resumed run differs by {diff}");
}

/// The trainer rejects a config that would silently do nothing.
#[test]
fn training_without_trainable_tensors_is_an_error() {
    let model_dir = tiny_bert_folder("nothing", BertConfig::tiny());
    let mut s = spec(&model_dir, &model_dir.join("out"), "ttlora");
    s.trial.targets = Some(ttlora::adapters::ModuleSet::List(vec![
        "no_such_module".into(),
    ]));
    let err = finetune::run(&s, &mut []).err().unwrap().to_string();
    assert!(err.contains("matched no layer"), "{err}");
}
