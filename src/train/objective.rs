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

/// LM scoring's training loss (LoRETTA's `train_as_classification`): each candidate's score
/// is the mean log-probability of its tokens ([`choice_scores`]), and the loss is the
/// cross-entropy of the gold candidate over each example's scores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandidateChoice;

impl Objective for CandidateChoice {
    fn name(&self) -> &'static str {
        "candidate cross-entropy"
    }
    fn loss(&self, model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor> {
        let scores = choice_scores(model, batch, train)?;
        let choices = candidate_structure(batch)?;
        crate::ops::cross_entropy(&scores, &choices.gold)
    }
}

/// Each candidate's mean log-probability of its own tokens, `(examples, candidates)` f32, for
/// a batch with [`Batch::choices`]: the log-softmax of the logits at the scored positions only,
/// the labels' entries picked, and each candidate's averaged.
///
/// # Errors
/// A batch without candidate structure; shape mismatches between it and the positions.
pub fn choice_scores(model: &dyn Model, batch: &Batch, train: bool) -> Result<Tensor> {
    let choices = candidate_structure(batch)?;
    let logits = model
        .token_logits(&batch.input, scored_rows(batch)?, train)?
        .to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let own = log_probs.gather(&batch.labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    let means = choices.average.matmul(&own)?;
    let examples = choices.gold.dim(0)?;
    Ok(means.reshape((examples, choices.per_example))?)
}

/// The candidate structure of an LM-scoring batch.
fn candidate_structure(batch: &Batch) -> Result<&crate::train::Choices> {
    batch
        .choices
        .as_ref()
        .ok_or(crate::error::Error::UnsupportedInput {
            field: "choices",
            reason: "an LM-scoring batch says which positions make up each candidate",
        })
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
