//! What the loop reports and to whom: [`Observer`]s see every step ([`StepReport`]) and
//! evaluation ([`EvalReport`]) and may stop the run; progress bars, logs, early stopping
//! ([`EarlyStopping`]) and a search's pruner are all observers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether training should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop after this step.
    Stop,
}

/// One optimizer step, as observers see it.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// 1-based optimizer step.
    pub step: usize,
    /// Steps planned in total.
    pub total_steps: usize,
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (non-padding) processed in this step.
    pub tokens: usize,
    /// Seconds since training started (this run).
    pub elapsed_s: f64,
}

/// One evaluation on the held-out slice.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Optimizer step it followed.
    pub step: usize,
    /// Named metric values.
    pub metrics: BTreeMap<String, f64>,
    /// The value used for model selection (higher is better).
    pub primary: f64,
    /// Whether this is the best so far.
    pub improved: bool,
    /// Evaluations since the best one (0 when this one is the best).
    pub evals_since_best: usize,
}

/// Receives progress; returning [`Control::Stop`] ends training early.
pub trait Observer {
    /// Before the first step (`start_step` > 0 when resuming); [`Control::Stop`] ends the run
    /// before it takes a step, as a pause at or before the resumed step does.
    fn on_start(&mut self, _total_steps: usize, _start_step: usize) -> Control {
        Control::Continue
    }
    /// After every optimizer step.
    fn on_step(&mut self, _step: &StepReport) -> Control {
        Control::Continue
    }
    /// After every evaluation.
    fn on_eval(&mut self, _eval: &EvalReport) -> Control {
        Control::Continue
    }
    /// After the last step.
    fn on_end(&mut self, _summary: &TrainSummary) {}
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainSummary {
    /// Optimizer steps taken (including resumed ones).
    pub steps: usize,
    /// Step of the best evaluation (its weights are the ones left in the model).
    pub best_step: usize,
    /// Best primary metric on the held-out slice (NaN, written `null`, without evaluation).
    #[serde(deserialize_with = "nan_if_null")]
    pub best_primary: f64,
    /// All metrics of the best evaluation.
    pub best_metrics: BTreeMap<String, f64>,
    /// Whether early stopping or an observer ended the run.
    pub stopped_early: bool,
    /// Wall seconds of this run.
    pub elapsed_s: f64,
    /// Training seconds of the earlier runs this one resumed (0 for a fresh run).
    pub carried_s: f64,
}

/// An `f64` that JSON wrote as `null` (serde_json's NaN) read back as NaN.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Stops after `patience` evaluations in a row without a new best.
#[derive(Debug, Clone, Copy)]
pub struct EarlyStopping {
    patience: usize,
}

impl EarlyStopping {
    /// Stops once `patience` evaluations have passed since the best one.
    pub fn new(patience: usize) -> Self {
        Self { patience }
    }
}

impl Observer for EarlyStopping {
    fn on_eval(&mut self, eval: &EvalReport) -> Control {
        if eval.evals_since_best >= self.patience {
            tracing::info!(
                step = eval.step,
                "early stopping: no improvement in {} evaluations",
                eval.evals_since_best
            );
            Control::Stop
        } else {
            Control::Continue
        }
    }
}
