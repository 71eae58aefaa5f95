//! Training: the optimizer, the learning-rate schedule and the loop around them.
//!
//! Owns: [`Adam`] (Adam/AdamW with checkpointable state), [`Schedule`], [`train`] with its
//! [`TrainConfig`], [`Observer`] hooks and resumable checkpoints. Sees models only through
//! [`crate::models::Model`]; must not know: file formats of data, tokenization, adapters.

mod batch;
mod checkpoint;
mod log;
mod objective;
mod observer;
mod optim;
mod schedule;
mod step;
mod trainer;

#[cfg(test)]
mod tests;

pub use batch::{Batch, Choices};
pub use log::JsonlLog;
pub use objective::{
    CandidateChoice, CrossEntropy, MeanSquaredError, NextToken, Objective, choice_scores,
    for_labels,
};
pub use observer::{Control, EarlyStopping, EvalReport, Observer, StepReport, TrainSummary};
pub use optim::{Adam, AdamParams, OptimizerKind};
pub use schedule::Schedule;
pub use step::{StepOutcome, StepSettings, train_step};
pub use trainer::{EvaluateFn, TrainConfig, TrainJob, checkpoint_dir, train};
