//! One trial: a method on a prepared [`Study`], trained with held-out model selection and
//! scored on the official dev split. A search runs many trials on one study without loading
//! the data again; `ttlora train` runs one and saves it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;

use crate::adapters::{MethodSpec, ModuleSet, seeded_rng};
use crate::data;
use crate::error::{Error, Result};
use crate::jobs::pipeline::{EncodedSplit, evaluate};
use crate::jobs::record::ParamCounts;
use crate::jobs::study::Study;
use crate::models::Model;
use crate::train::{Observer, TrainConfig, TrainJob, TrainSummary, train};
use crate::tt::lora_params;
use crate::tuning::attach::{Placing, attach, placing, trainable_vars};

/// Name under which a trial attaches its adapter (PEFT's default name).
pub const ADAPTER_NAME: &str = "default";

/// What varies between the trials of a study: the method and how it trains.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    /// The adapter method with its validated config.
    pub method: MethodSpec,
    /// Target modules (None: the method's default for the architecture).
    pub targets: Option<ModuleSet>,
    /// Excluded modules.
    pub exclude: Option<ModuleSet>,
    /// Per-module config overrides.
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Train the classification head too.
    pub train_head: bool,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Optimizer and loop settings; its `seed` seeds the head and adapter init, the batch
    /// order and the dropout masks.
    pub train: TrainConfig,
}

/// The training log a trial appends to in its folder.
pub const LOG_FILE: &str = "train_log.jsonl";

/// Where a trial writes: `train_log.jsonl` and, while it runs, `checkpoint/`.
#[derive(Debug, Clone)]
pub struct TrialOutput {
    /// The folder.
    pub dir: PathBuf,
    /// Continue from `dir/checkpoint` if an earlier run left one.
    pub resume: bool,
}

/// A finished trial.
pub struct Trial {
    /// The model with the selected weights of the adapter attached under [`ADAPTER_NAME`].
    pub model: Box<dyn Model>,
    /// Where the method went (the targets as used).
    pub placing: Placing,
    /// Adapted module paths (or, for full fine-tuning, trained tensor names).
    pub adapted: Vec<String>,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Training outcome (held-out selection).
    pub summary: TrainSummary,
    /// Official dev metrics of the selected weights (further splits as `<split>/<metric>`).
    pub dev_metrics: BTreeMap<String, f64>,
}

/// Runs one trial. Observers see every step and evaluation.
///
/// # Errors
/// Targets or a config that do not fit the model; any training or scoring error.
pub fn run_trial(
    study: &Study,
    spec: &TrialSpec,
    out: &TrialOutput,
    observers: &mut [&mut dyn Observer],
) -> Result<Trial> {
    let seed = spec.train.seed;
    let mut model = study.base_model(seed)?;
    let Attached {
        placing,
        adapted,
        params,
        lora_r8,
        mut vars,
    } = attach_trial(model.as_mut(), spec)?;
    let head_vars = if spec.train_head {
        model.head_vars()
    } else {
        Vec::new()
    };
    let regression = study.task.regression;
    if regression_head_at_mean(model.as_ref(), regression && spec.train_head, &study.fit)? {
        tracing::debug!("regression head bias set to the training labels' mean");
    }
    let head_params = head_vars.iter().map(|(_, v)| v.elem_count()).sum();
    vars.extend(head_vars);

    // Training.
    let device = &study.spec.device;
    let pad = study.encoder.pad_id();
    let lengths = study.fit.lengths();
    let batch_size = spec.batch_size;
    let batches_per_epoch = lengths.len().div_ceil(batch_size);
    let mut make_batches = |epoch: usize| -> Result<Vec<crate::train::Batch>> {
        let order = data::batch_order(&lengths, batch_size, seed, epoch, true);
        study.fit.batches(&order, pad, device)
    };
    let metrics = &study.task.metrics;
    let primary_name = metrics[0].name().to_string();
    let eval_split = if study.held.is_empty() {
        &study.dev
    } else {
        &study.held
    };
    let mut eval_fn = |model: &dyn Model| -> Result<(f64, BTreeMap<String, f64>)> {
        let scores = evaluate(model, eval_split, metrics, regression, 64, pad, device)?;
        let primary = scores.get(&primary_name).copied().unwrap_or(f64::NAN);
        Ok((primary, scores))
    };
    let summary = train_trial(
        spec,
        out,
        TrainJob {
            model: model.as_ref(),
            vars,
            objective: crate::train::for_labels(regression),
            batches: &mut make_batches,
            batches_per_epoch,
            evaluate: &mut eval_fn,
            checkpoint_dir: None,
        },
        observers,
    )?;

    // Official dev score of the selected weights.
    let score = |split: &EncodedSplit| {
        evaluate(model.as_ref(), split, metrics, regression, 64, pad, device)
    };
    let mut dev_metrics = score(&study.dev)?;
    for (name, split) in &study.extra_dev {
        let scores = score(split)?;
        dev_metrics.extend(scores.into_iter().map(|(k, v)| (format!("{name}/{k}"), v)));
    }
    Ok(Trial {
        model,
        placing,
        adapted,
        params: ParamCounts {
            adapter: params,
            head: head_params,
            lora_r8,
        },
        summary,
        dev_metrics,
    })
}

/// A method attached for training: where it went and what trains.
pub(crate) struct Attached {
    /// The targets as used.
    pub placing: Placing,
    /// Adapted module paths (or trained tensor names).
    pub adapted: Vec<String>,
    /// Trainable adapter scalars.
    pub params: usize,
    /// LoRA r=8 on the same modules, for comparison.
    pub lora_r8: usize,
    /// The adapter's trainable tensors (no head).
    pub vars: Vec<(String, candle_core::Var)>,
}

/// Attaches `spec`'s method to `model` under [`ADAPTER_NAME`], initialised from the
/// trial's seed.
///
/// # Errors
/// Targets or a config that do not fit the model.
pub(crate) fn attach_trial(model: &mut dyn Model, spec: &TrialSpec) -> Result<Attached> {
    let placing = placing(
        &spec.method,
        &*model,
        spec.targets.as_ref(),
        spec.exclude.as_ref(),
        &spec.overrides,
    )?;
    let attached = attach(
        model,
        &spec.method,
        &placing,
        ADAPTER_NAME,
        &mut seeded_rng(spec.train.seed),
    )?;
    let lora_r8: usize = model
        .linears()
        .iter()
        .filter(|(p, _)| attached.adapted.contains(p))
        .map(|(_, l)| lora_params(l.in_features(), l.out_features(), 8))
        .sum();
    let vars = trainable_vars(&*model)?;
    Ok(Attached {
        placing,
        adapted: attached.adapted,
        params: attached.params,
        lora_r8,
        vars,
    })
}

/// Runs the training loop of a trial in `out.dir`: its JSONL log appended, its checkpoint
/// kept there (dropped first unless resuming), `job.checkpoint_dir` set accordingly.
///
/// # Errors
/// The folder cannot be written; the loop's errors.
pub(crate) fn train_trial(
    spec: &TrialSpec,
    out: &TrialOutput,
    mut job: TrainJob<'_>,
    observers: &mut [&mut dyn Observer],
) -> Result<TrainSummary> {
    std::fs::create_dir_all(&out.dir).map_err(|source| Error::Io {
        path: out.dir.clone(),
        source,
    })?;
    let ck_dir = crate::train::checkpoint_dir(&out.dir);
    if !out.resume && ck_dir.exists() {
        std::fs::remove_dir_all(&ck_dir).map_err(|source| Error::Io {
            path: ck_dir.clone(),
            source,
        })?;
    }
    job.checkpoint_dir = Some(ck_dir);
    // The JSONL log is part of every trial's output, whoever drives it.
    let mut log = crate::train::JsonlLog::append(&out.dir.join(LOG_FILE))?;
    let mut all_observers: Vec<&mut dyn Observer> = vec![&mut log];
    for o in observers.iter_mut() {
        all_observers.push(&mut **o);
    }
    train(&spec.train, job, &mut all_observers)
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
    use crate::models::{BertConfig, BertForSequenceClassification, Pooling};

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
