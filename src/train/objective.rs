//! What training minimises. An [`Objective`] turns a model's output on a batch into a scalar
//! loss; classification and regression are the two encoders use, and a new kind (causal-LM
//! loss, LM scoring) is one more implementation, not a new enum arm in the loop.

use candle_core::{DType, Tensor, Var};

use crate::error::Result;
use crate::models::Model;
use crate::train::Batch;

/// The loss a run minimises.
pub trait Objective: Send + Sync {
    /// A short name for logs (`cross-entropy`).
    fn name(&self) -> &'static str;

    /// The scalar loss of `model` on `batch`; `train` enables dropout.
    ///
    /// # Errors
    /// Shape or dtype mismatches between the model's output and the labels.
    fn loss(&self, model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor>;

    /// The training loss's value on `batch` and the gradients of `scale ·` loss for `vars`
    /// (in order): one backward through the whole graph, unless the objective lets the model
    /// recompute its layers (gradient checkpointing).
    ///
    /// # Errors
    /// As [`loss`](Self::loss); backward errors.
    fn loss_and_grads(
        &self,
        model: &dyn Model,
        batch: &Batch,
        scale: f64,
        vars: &[Var],
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        if model.gradient_checkpointing() {
            return Err(crate::error::Error::UnsupportedInput {
                field: "--gradient-checkpointing",
                reason: "only next-token (causal-LM) training recomputes layers; this \
                         objective would run one backward over every activation",
            });
        }
        let loss = self.loss(model, batch, true)?;
        one_backward(&loss, scale, vars)
    }
}

/// The value of `loss` and the gradients of `scale · loss` for `vars` from one backward.
fn one_backward(loss: &Tensor, scale: f64, vars: &[Var]) -> Result<(f64, Vec<Option<Tensor>>)> {
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let store = (loss * scale)?.backward()?;
    let mut grads = vec![None; vars.len()];
    crate::models::add_grads(&store, vars, &mut grads)?;
    Ok((value, grads))
}

/// Cross-entropy over logits `(b_sz, num_labels)` against `u32` class ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }
    fn loss(&self, model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor> {
        let logits = model.forward(&batch.input, train)?;
        Ok(candle_nn::loss::cross_entropy(
            &logits,
            &batch.labels.to_dtype(DType::U32)?,
        )?)
    }
}

/// Mean squared error of logits `(b_sz, 1)` against `f32` scores.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSquaredError;

impl Objective for MeanSquaredError {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn loss(&self, model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor> {
        let pred = model.forward(&batch.input, train)?.squeeze(1)?;
        Ok(candle_nn::loss::mse(
            &pred,
            &batch.labels.to_dtype(pred.dtype())?,
        )?)
    }
}

/// A causal language model's loss: the mean cross-entropy of the next token at the batch's
/// scored positions ([`Batch::rows`]), as HF's `…ForCausalLM` computes it over the labels that
/// are not -100 (only completion or assistant tokens under TRL's SFT masking).
#[derive(Debug, Clone, Copy, Default)]
pub struct NextToken;

impl Objective for NextToken {
    fn name(&self) -> &'static str {
        "next-token cross-entropy"
    }
    fn loss(&self, model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor> {
        model.token_loss(&batch.input, scored_rows(batch)?, &batch.labels, train)
    }

    fn loss_and_grads(
        &self,
        model: &dyn Model,
        batch: &Batch,
        scale: f64,
        vars: &[Var],
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        let rows = scored_rows(batch)?;
        match model.checkpointed_token_grads(&batch.input, rows, &batch.labels, scale, vars) {
            Some(result) => result,
            None => one_backward(&self.loss(model, batch, true)?, scale, vars),
        }
    }
}

/// The flat positions a causal-LM batch scores.
fn scored_rows(batch: &Batch) -> Result<&Tensor> {
    batch
        .rows
        .as_ref()
        .ok_or(crate::error::Error::UnsupportedInput {
            field: "rows",
            reason: "a causal-LM batch names the positions it scores",
        })
}

/// The objective of a sequence-level task: regression or classification.
pub fn for_labels(regression: bool) -> &'static dyn Objective {
    if regression {
        &MeanSquaredError
    } else {
        &CrossEntropy
    }
}
