//! Training: the optimizer, the learning-rate schedule and the loop around them.
//!
//! Owns: [`Adam`] (Adam/AdamW with checkpointable state), [`Schedule`], [`train`] with its
//! [`TrainConfig`], [`Observer`] hooks and resumable checkpoints. Sees models only through
//! [`crate::models::Model`]; must not know: file formats of data, tokenization, adapters.

mod checkpoint;
pub mod compress;
pub mod export;
pub mod finetune;
pub mod inspect;
mod log;
mod optim;
pub mod pipeline;
pub mod results;
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
