//! ttlora: parameter-efficient fine-tuning of pretrained transformers with TT-LoRA.
//!
//! The weight update ΔW of each adapted linear layer is a tensor train of small cores
//! (Anjum et al., arXiv 2408.01008). Modules, from the bottom up:
//! - [`tt`]: pure tensor-train math (shapes, factorization, contraction paths, TT-SVD);
//! - [`ops`]: tensor ops with a hand-written backward (frozen linear, attention, norms, …);
//! - [`io`]: files: model folders and tensor sources, adapter folders, atomic writes;
//! - [`adapters`]: adapted linear layers, the methods and their typed configs;
//! - [`data`]: GLUE/SuperGLUE and custom task files, tokenization, batches, metrics;
//! - [`models`]: the Backbone/Model traits, the families (BERT/RoBERTa, DeBERTa-v2), heads;
//! - [`tuning`]: binding a method to a model: attach, save/load, merge, LoRA export;
//! - [`train`]: the loop: step, optimizer, schedule, checkpoints, observers;
//! - [`jobs`]: what a command does: prepare a study, run a trial, fine-tune, eval, export;
//! - [`bench`](mod@bench): timing loops behind `ttlora bench`.
//!
//! See ARCHITECTURE.md for the module map and which module may use which.
#![warn(missing_docs)]

pub mod adapters;
pub mod bench;
pub mod data;
mod device;
mod error;
pub mod io;
pub mod jobs;
pub mod models;
pub mod ops;
pub mod search;
pub mod train;
pub mod tt;
pub mod tuning;

pub use device::{check_device_name, parse_device};
pub use error::{Error, Result};

/// The README's code blocks, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
