//! One optimizer step, the unit the loop repeats and benchmarks and tests time: forward and
//! backward over a step's micro-batches (gradients averaged), global-norm clipping, the
//! optimizer's update. Dropout masks are seeded from (seed, step, micro-batch), so a resumed
//! run draws the same masks.

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::models::Model;
use crate::train::Batch;
use crate::train::objective::Objective;
use crate::train::optim::Adam;

/// The settings of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// Learning rate of this step.
    pub lr: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// The run's seed (dropout masks).
    pub seed: u64,
    /// 0-based index of the step (dropout masks; the error of a non-finite loss names it
    /// 1-based).
    pub step: usize,
}

/// What one step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed.
    pub tokens: usize,
}

/// One optimizer step of `opt`'s variables over `micro_batches`.
///
/// # Errors
/// [`Error::NonFiniteLoss`] before anything is updated; tensor errors.
pub fn train_step(
    model: &dyn Model,
    objective: &dyn Objective,
    micro_batches: &[Batch],
    opt: &mut Adam,
    settings: StepSettings,
) -> Result<StepOutcome> {
    let vars = opt.vars().to_vec();
    let (loss, grads, tokens) = accumulate(
        model,
        objective,
        micro_batches,
        &vars,
        (settings.seed, settings.step),
    )?;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss {
            step: settings.step + 1,
            value: loss,
        });
    }
    let (grads, grad_norm) = clip(grads, settings.max_grad_norm)?;
    opt.step(&grads, settings.lr)?;
    Ok(StepOutcome {
        loss,
        grad_norm,
        tokens,
    })
}

/// Mean loss and summed gradients over the micro-batches of one step.
fn accumulate(
    model: &dyn Model,
    objective: &dyn Objective,
    chunk: &[Batch],
    vars: &[Var],
    (seed, step): (u64, usize),
) -> Result<(f64, Vec<Option<Tensor>>, usize)> {
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut total_loss = 0.0;
    let mut tokens = 0usize;
    let weights = micro_weights(chunk)?;
    for ((micro, batch), &scale) in chunk.iter().enumerate().zip(&weights) {
        crate::ops::seed_dropout(
            seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((micro as u64) << 48),
        );
        let (l, micro_grads) = objective.loss_and_grads(model, batch, scale, vars)?;
        total_loss += l * scale;
        tokens += batch
            .input
            .attention_mask
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        for (slot, g) in grads.iter_mut().zip(micro_grads) {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
    }
    Ok((total_loss, grads, tokens))
}

/// Each micro-batch's share of the step's loss. Causal-LM batches (which list their scored
/// positions) weigh by those positions, so the step's loss is the mean over all its scored
/// tokens however they fall into micro-batches (HF's `num_items_in_batch`); LM-scoring
/// batches by their examples; sequence-task batches weigh equally.
fn micro_weights(chunk: &[Batch]) -> Result<Vec<f64>> {
    let equal = vec![1.0 / chunk.len().max(1) as f64; chunk.len()];
    let mut counts = Vec::with_capacity(chunk.len());
    for batch in chunk {
        match (&batch.choices, &batch.rows) {
            (Some(choices), _) => counts.push(choices.gold.dim(0)? as f64),
            (None, Some(rows)) => counts.push(rows.dim(0)? as f64),
            (None, None) => return Ok(equal),
        }
    }
    let total: f64 = counts.iter().sum();
    if total == 0.0 {
        return Ok(equal);
    }
    Ok(counts.into_iter().map(|c| c / total).collect())
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
fn clip(grads: Vec<Option<Tensor>>, max_norm: Option<f64>) -> Result<(Vec<Option<Tensor>>, f64)> {
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    match max_norm {
        Some(max) if norm > max => {
            let f = max / (norm + 1e-6);
            let scaled = grads
                .into_iter()
                .map(|g| g.map(|g| g * f).transpose())
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok((scaled, norm))
        }
        _ => Ok((grads, norm)),
    }
}

/// [`accumulate`] for the module's tests (seed 0, step 0).
#[cfg(test)]
pub(crate) fn accumulate_for_tests(
    model: &dyn Model,
    chunk: &[Batch],
    vars: &[Var],
) -> (f64, Vec<Option<Tensor>>, usize) {
    let objective: &dyn Objective = if chunk.iter().all(|b| b.rows.is_some()) {
        &crate::train::NextToken
    } else {
        &crate::train::CrossEntropy
    };
    accumulate(model, objective, chunk, vars, (0, 0)).expect("accumulate")
}

/// [`clip`] for the module's tests.
#[cfg(test)]
pub(crate) fn clip_for_tests(
    grads: Vec<Option<Tensor>>,
    max_norm: Option<f64>,
) -> (Vec<Option<Tensor>>, f64) {
    clip(grads, max_norm).expect("clip")
}
