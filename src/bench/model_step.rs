//! Whole-model timings for the comparison with PyTorch + PEFT (issue 5): one training step
//! (forward + backward + AdamW) and inference at a batch size, on a real model folder and a
//! seeded random batch, with the process's peak resident memory.

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::adapters::{MethodKind, MethodSpec, method, seeded_rng};
use crate::bench::roofline::{EncoderSize, StepWork};
use crate::bench::time_median;
use crate::error::{Error, Result};
use crate::models::{Model, ModelInput, Pooling, load_classifier};
use crate::train::{self, Adam, AdamParams, Batch, CrossEntropy, StepSettings};
use crate::tuning::attach::{attach, placing, trainable_vars};
use crate::tuning::merged::merge_adapters;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ModelStepConfig {
    /// `none` (the base model, inference only), `lora` or `ttlora`.
    pub method: String,
    /// Method config (e.g. `{"r": 8}`, `{"path": "contract"}`).
    pub method_config: serde_json::Value,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Tokens per sequence (no padding).
    pub seq_len: usize,
    /// Timed iterations at least (after one warm-up).
    pub iters: usize,
    /// Seconds at least.
    pub min_time: Duration,
    /// Seeds the batch and the adapters.
    pub seed: u64,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStepRow {
    /// `train`, `train-checkpointed` (layers recomputed in the backward), `infer-unmerged`
    /// or `infer-merged`.
    pub kind: &'static str,
    /// The method (`none`, `lora`, `ttlora`).
    pub method: String,
    /// The method config given.
    pub method_config: serde_json::Value,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Median wall time per step, milliseconds.
    pub step_ms: f64,
    /// Tokens per second at that median.
    pub tokens_per_s: f64,
    /// Trainable scalars (adapters + head; 0 for inference rows).
    pub trainable: usize,
    /// Peak resident set size of the process so far, MiB (Linux `VmHWM`; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// The step's unavoidable matmul work, GFLOP ([`EncoderSize::step_flops`]; 0 if the
    /// config does not give the sizes).
    pub gflop: f64,
    /// `gflop` per second of the median step.
    pub gflops: f64,
}

/// A seeded random batch for `model_dir`, and the encoder sizes its config gives (both from
/// one read of `config.json`).
fn random_batch(
    model_dir: &Path,
    cfg: &ModelStepConfig,
    device: &Device,
) -> Result<(Batch, Option<EncoderSize>)> {
    let config: Option<serde_json::Value> =
        crate::io::read_json_if_present(&model_dir.join("config.json"))?;
    let size = config.as_ref().and_then(EncoderSize::from_config);
    let vocab = config
        .as_ref()
        .and_then(|c| c.get("vocab_size").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| Error::ModelConfig {
            path: model_dir.join("config.json"),
            reason: "no `vocab_size`".into(),
        })?;
    use rand::Rng;
    let mut rng = seeded_rng(cfg.seed);
    let n = cfg.batch_size * cfg.seq_len;
    // Ids 1000.. avoid special tokens in BERT-style vocabularies.
    let ids: Vec<u32> = (0..n)
        .map(|_| rng.random_range(1000.min(vocab - 1)..vocab) as u32)
        .collect();
    let shape = (cfg.batch_size, cfg.seq_len);
    let labels: Vec<u32> = (0..cfg.batch_size).map(|i| (i % 2) as u32).collect();
    let batch = Batch {
        input: ModelInput {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            token_type_ids: Some(Tensor::zeros(shape, DType::U32, device)?),
            position_ids: None,
            attention_mask: Tensor::ones(shape, DType::U32, device)?,
        },
        labels: Tensor::new(labels, device)?,
        rows: None,
        choices: None,
    };
    Ok((batch, size))
}

/// Loads `model_dir` as a 2-label classifier with the method attached to the architecture's
/// default targets.
fn adapted_model(
    model_dir: &Path,
    cfg: &ModelStepConfig,
    device: &Device,
) -> Result<Box<dyn Model>> {
    let pooling = Pooling::from_sentence_transformers(model_dir)?.unwrap_or(Pooling::Cls);
    let mut model = load_classifier(model_dir, 2, pooling, device, cfg.seed)?;
    if cfg.method != "none" {
        let spec = MethodSpec::parse(&cfg.method, cfg.method_config.clone())?;
        let placing = placing(&spec, model.as_ref(), None, None, &Default::default())?;
        attach(
            model.as_mut(),
            &spec,
            &placing,
            "bench",
            &mut seeded_rng(cfg.seed),
        )?;
    }
    Ok(model)
}

/// Times a training step (adapters + head trainable, AdamW) of `model_dir` with `cfg.method`.
///
/// # Errors
/// Model loading; a method config that does not fit; [`Error::NothingToTrain`] for `none`.
pub fn train_step(
    model_dir: &Path,
    cfg: &ModelStepConfig,
    device: &Device,
) -> Result<ModelStepRow> {
    if cfg.method == "none" {
        return Err(Error::NothingToTrain {
            method: cfg.method.clone(),
        });
    }
    let model = adapted_model(model_dir, cfg, device)?;
    let (batch, size) = random_batch(model_dir, cfg, device)?;
    let mut vars: Vec<_> = trainable_vars(model.as_ref())?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    vars.extend(model.head_vars().into_iter().map(|(_, v)| v));
    let trainable = vars.iter().map(|v| v.elem_count()).sum();
    let t = time_steps(model.as_ref(), &CrossEntropy, batch, vars, cfg)?;
    Ok(row("train", cfg, size, t, trainable))
}

/// The median time of the trainer's own step (forward, backward, clipping at 1.0, AdamW)
/// of `vars` on `batch`.
fn time_steps(
    model: &dyn Model,
    objective: &dyn train::Objective,
    batch: Batch,
    vars: Vec<candle_core::Var>,
    cfg: &ModelStepConfig,
) -> Result<Duration> {
    let mut opt = Adam::new(vars, AdamParams::default())?;
    let batches = [batch];
    let mut step = 0;
    time_median(cfg.iters, cfg.min_time, || -> Result<()> {
        let settings = StepSettings {
            lr: 1e-4,
            max_grad_norm: Some(1.0),
            seed: cfg.seed,
            step,
        };
        step += 1;
        train::train_step(model, objective, &batches, &mut opt, settings).map(|_| ())
    })
}

/// Times a causal-LM training step of the decoder at `location` (a GGUF file or folder, or
/// an HF decoder folder) with `cfg.method` on its default targets, the base held as `base`
/// says: a seeded random batch of `batch_size × seq_len` ids, every next token scored, the
/// trainer's own step (forward, backward, clipping, AdamW).
///
/// # Errors
/// Model loading; a method config that does not fit; [`Error::NothingToTrain`] for `none`.
pub fn decoder_train_step(
    location: &Path,
    base: crate::jobs::generate::BaseDtype,
    checkpoint_layers: bool,
    cfg: &ModelStepConfig,
    device: &Device,
) -> Result<ModelStepRow> {
    if cfg.method == "none" {
        return Err(Error::NothingToTrain {
            method: cfg.method.clone(),
        });
    }
    let mut g = crate::jobs::generate::Generator::load_with(location, device, base)?;
    let spec = MethodSpec::parse(&cfg.method, cfg.method_config.clone())?;
    let placing = placing(&spec, &g.model, None, None, &Default::default())?;
    attach(
        &mut g.model,
        &spec,
        &placing,
        "bench",
        &mut seeded_rng(cfg.seed),
    )?;
    let vocab = g.decoder().config().vocab_size;
    let (b, t) = (cfg.batch_size, cfg.seq_len.max(2));
    let mut rng = seeded_rng(cfg.seed);
    let rows: Vec<crate::data::LmTokens> = (0..b)
        .map(|_| {
            use rand::Rng;
            crate::data::LmTokens {
                ids: (0..t).map(|_| rng.random_range(0..vocab) as u32).collect(),
                trained: vec![true; t],
            }
        })
        .collect();
    let refs: Vec<&crate::data::LmTokens> = rows.iter().collect();
    let (input, rows, labels) = crate::data::lm_batch(&refs, 0, device)?;
    let batch = Batch {
        input,
        labels,
        rows: Some(rows),
        choices: None,
    };
    let vars: Vec<_> = trainable_vars(&g.model)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let trainable = vars.iter().map(|v| v.elem_count()).sum();
    g.model.set_gradient_checkpointing(checkpoint_layers)?;
    let time = time_steps(&g.model, &train::NextToken, batch, vars, cfg)?;
    let kind = if checkpoint_layers {
        "train-checkpointed"
    } else {
        "train"
    };
    Ok(row(kind, cfg, None, time, trainable))
}

/// Times inference (no gradients) with the adapters unmerged and, for a method, merged.
///
/// # Errors
/// Model loading; a method config that does not fit.
pub fn inference(
    model_dir: &Path,
    cfg: &ModelStepConfig,
    device: &Device,
) -> Result<Vec<ModelStepRow>> {
    let mut model = adapted_model(model_dir, cfg, device)?;
    let (batch, size) = random_batch(model_dir, cfg, device)?;
    let time = |model: &dyn Model| {
        time_median(cfg.iters, cfg.min_time, || -> Result<()> {
            crate::ops::no_grad(|| model.forward(&batch.input, false))?;
            Ok(())
        })
    };
    let mut rows = vec![row("infer-unmerged", cfg, size, time(model.as_ref())?, 0)];
    // Full fine-tuning leaves nothing to merge: its one row is already the merged model.
    if cfg.method != "none" && merge_adapters(model.as_mut(), "bench")? > 0 {
        rows.push(row("infer-merged", cfg, size, time(model.as_ref())?, 0));
    }
    Ok(rows)
}

fn row(
    kind: &'static str,
    cfg: &ModelStepConfig,
    size: Option<EncoderSize>,
    t: Duration,
    trainable: usize,
) -> ModelStepRow {
    let secs = t.as_secs_f64();
    let gflop = size.map_or(0.0, |s| {
        let full = method(&cfg.method).is_ok_and(|m| m.kind() == MethodKind::BaseWeights);
        let work = match (kind, full) {
            ("train", true) => StepWork::FullTraining,
            ("train", false) => StepWork::FrozenTraining,
            _ => StepWork::Inference,
        };
        s.step_flops(cfg.batch_size, cfg.seq_len, work) / 1e9
    });
    ModelStepRow {
        kind,
        method: cfg.method.clone(),
        method_config: cfg.method_config.clone(),
        batch_size: cfg.batch_size,
        seq_len: cfg.seq_len,
        step_ms: secs * 1e3,
        tokens_per_s: (cfg.batch_size * cfg.seq_len) as f64 / secs.max(1e-12),
        trainable,
        peak_rss_mib: crate::io::peak_rss_mib(),
        gflop,
        gflops: gflop / secs.max(1e-12),
    }
}
