//! Training: the optimizer, the learning-rate schedule and the loop around them.
//!
//! Owns: [`Adam`] (Adam/AdamW with checkpointable state), [`Schedule`], [`train`] with its
//! [`TrainConfig`], [`Observer`] hooks and resumable checkpoints. Sees models only through
//! [`crate::models::Model`]; must not know: file formats of data, tokenization, adapters.

mod checkpoint;
mod log;
mod optim;
mod schedule;
mod trainer;

#[cfg(test)]
mod tests;

pub use log::JsonlLog;
pub use optim::{Adam, AdamParams, OptimizerKind};
pub use schedule::Schedule;
pub use trainer::{
    Batch, Control, EvalReport, EvaluateFn, Objective, Observer, StepReport, TrainConfig, TrainJob,
    TrainSummary, checkpoint_dir, loss, train,
};
