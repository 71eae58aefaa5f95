//! The training loop: batches → loss → backward → clip → optimizer, with evaluation every N
//! steps, best-checkpoint keeping, early stopping, NaN detection, resumable checkpoints and
//! observers for progress bars and logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::train::Batch;
use crate::train::objective::Objective;
use crate::train::observer::{
    Control, EarlyStopping, EvalReport, Observer, StepReport, TrainSummary,
};
use crate::train::optim::{Adam, AdamParams};
use crate::train::schedule::Schedule;
use crate::train::step::{StepSettings, train_step};

/// Training hyper-parameters (one source of defaults; the CLI fills `Option`s from here).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides epochs when smaller).
    pub max_steps: Option<usize>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Optimizer and its hyper-parameters.
    pub optimizer: AdamParams,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Fraction of steps spent warming up.
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Evaluate every N optimizer steps (None: at the end of every epoch).
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement (None: never).
    pub patience: Option<usize>,
    /// Seed of the dropout masks (drawn per step and micro-batch, so resuming is exact).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: None,
            grad_accum: 1,
            lr: 1e-3,
            optimizer: AdamParams::default(),
            schedule: Schedule::Linear,
            warmup_ratio: 0.06,
            max_grad_norm: Some(1.0),
            eval_every: None,
            patience: None,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method: "train",
            field,
            reason: reason.into(),
            got,
        };
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err(bad("epochs", "must be >= 1", "0".into()));
        }
        if self.grad_accum == 0 {
            return Err(bad("grad_accum", "must be >= 1", "0".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", "must be a positive number", self.lr.to_string()));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(bad(
                "warmup_ratio",
                "must be in [0, 1)",
                self.warmup_ratio.to_string(),
            ));
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return Err(bad(
                "max_grad_norm",
                "must be > 0",
                format!("{:?}", self.max_grad_norm),
            ));
        }
        if self.eval_every == Some(0) {
            return Err(bad("eval_every", "must be >= 1", "0".into()));
        }
        Ok(())
    }
}

/// Held-out evaluation: returns (primary metric, higher is better; all metrics by name).
pub type EvaluateFn<'a> = dyn FnMut(&dyn Model) -> Result<(f64, BTreeMap<String, f64>)> + 'a;

/// Everything the loop needs besides the config.
pub struct TrainJob<'a> {
    /// The model (adapters attached).
    pub model: &'a dyn Model,
    /// The tensors to train, by name.
    pub vars: Vec<(String, Var)>,
    /// What the loss is.
    pub objective: &'a dyn Objective,
    /// The training batches of an epoch (deterministic per epoch for resuming).
    pub batches: &'a mut dyn FnMut(usize) -> Result<Vec<Batch>>,
    /// Number of batches per epoch (to plan steps before building them).
    pub batches_per_epoch: usize,
    /// Held-out evaluation: (primary metric, all metrics).
    pub evaluate: &'a mut EvaluateFn<'a>,
    /// Folder for resumable checkpoints (None: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
}

/// Runs training. On return the model holds the best evaluation's weights.
///
/// # Errors
/// An invalid config; [`Error::NoTrainableTensors`]; [`Error::NoBatches`]; a non-finite loss;
/// a checkpoint of another run; tensor and I/O errors.
pub fn train(
    cfg: &TrainConfig,
    job: TrainJob<'_>,
    observers: &mut [&mut dyn Observer],
) -> Result<TrainSummary> {
    cfg.validate()?;
    if job.vars.is_empty() {
        return Err(Error::NoTrainableTensors);
    }
    if job.batches_per_epoch == 0 {
        return Err(Error::NoBatches);
    }
    let steps_per_epoch = job.batches_per_epoch.div_ceil(cfg.grad_accum);
    let mut total = steps_per_epoch * cfg.epochs.max(1);
    if let Some(m) = cfg.max_steps {
        total = total.min(m).max(1);
        if cfg.epochs == 0 {
            total = m;
        }
    }
    let warmup = (cfg.warmup_ratio * total as f64).round() as usize;
    tracing::debug!(
        objective = job.objective.name(),
        total,
        warmup,
        tensors = job.vars.len(),
        "training"
    );
    let vars: Vec<Var> = job.vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(vars.clone(), cfg.optimizer)?;

    let mut step = 0usize;
    let mut best: Option<crate::train::checkpoint::Best> = None;
    let mut evals_since_best = 0usize;
    let mut carried_s = 0.0;
    if let Some(dir) = &job.checkpoint_dir
        && let Some(ck) = crate::train::checkpoint::load(dir, &job.vars)?
    {
        opt.restore(ck.step as u64, ck.m, ck.v)?;
        step = ck.step;
        best = ck.best;
        evals_since_best = ck.evals_since_best;
        carried_s = ck.trained_s;
        tracing::info!(step, "resumed from checkpoint {}", dir.display());
    }
    let mut paused = false;
    for o in observers.iter_mut() {
        paused |= o.on_start(total, step) == Control::Stop;
    }
    // Early stopping is an observer like any other (a search's pruner is another).
    let mut early_stop = cfg.patience.map(EarlyStopping::new);
    let start = Instant::now();
    let mut stopped_early = false;
    let skip_batches = step * cfg.grad_accum;
    let mut seen_batches = 0usize;
    'epochs: for epoch in 0.. {
        if step >= total || paused {
            stopped_early = step < total;
            break;
        }
        let batches = (job.batches)(epoch)?;
        for chunk in batches.chunks(cfg.grad_accum) {
            if seen_batches + chunk.len() <= skip_batches {
                seen_batches += chunk.len();
                continue;
            }
            seen_batches += chunk.len();
            let lr = cfg.schedule.lr(cfg.lr, step, total, warmup);
            let done = train_step(
                job.model,
                job.objective,
                chunk,
                &mut opt,
                StepSettings {
                    lr,
                    max_grad_norm: cfg.max_grad_norm,
                    seed: cfg.seed,
                    step,
                },
            )?;
            step += 1;
            let report = StepReport {
                step,
                total_steps: total,
                epoch,
                loss: done.loss,
                lr,
                grad_norm: done.grad_norm,
                tokens: done.tokens,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            let mut stop = false;
            for o in observers.iter_mut() {
                stop |= o.on_step(&report) == Control::Stop;
            }
            let end_of_epoch = seen_batches.is_multiple_of(job.batches_per_epoch);
            let due = match cfg.eval_every {
                Some(n) => step.is_multiple_of(n),
                None => end_of_epoch,
            };
            if due || step >= total || stop {
                let (primary, metrics) = (job.evaluate)(job.model)?;
                let improved = best.as_ref().is_none_or(|(_, b, _, _)| primary > *b);
                if improved {
                    let snapshot = vars
                        .iter()
                        .map(|v| v.as_tensor().copy())
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    best = Some((step, primary, metrics.clone(), snapshot));
                    evals_since_best = 0;
                } else {
                    evals_since_best += 1;
                }
                let report = EvalReport {
                    step,
                    metrics,
                    primary,
                    improved,
                    evals_since_best,
                };
                for o in observers.iter_mut() {
                    stop |= o.on_eval(&report) == Control::Stop;
                }
                if let Some(early) = early_stop.as_mut() {
                    stop |= early.on_eval(&report) == Control::Stop;
                }
                if let Some(dir) = &job.checkpoint_dir {
                    crate::train::checkpoint::save(
                        dir,
                        &job.vars,
                        &opt,
                        step,
                        best.as_ref(),
                        evals_since_best,
                        carried_s + start.elapsed().as_secs_f64(),
                    )?;
                }
            }
            if stop {
                stopped_early = step < total;
                break 'epochs;
            }
            if step >= total {
                break 'epochs;
            }
        }
    }
    let (best_step, best_primary, best_metrics) = match best {
        Some((s, p, m, snapshot)) => {
            for (v, t) in vars.iter().zip(snapshot) {
                v.set(&t)?;
            }
            (s, p, m)
        }
        None => (step, f64::NAN, BTreeMap::new()),
    };
    let summary = TrainSummary {
        steps: step,
        best_step,
        best_primary,
        best_metrics,
        stopped_early,
        elapsed_s: start.elapsed().as_secs_f64(),
        carried_s,
    };
    for o in observers.iter_mut() {
        o.on_end(&summary);
    }
    Ok(summary)
}

/// Path of the checkpoint folder inside a run's output folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}
