//! ttlora: parameter-efficient fine-tuning of pretrained transformers with TT-LoRA.
//!
//! The weight update ΔW of each adapted linear layer is a tensor train of small cores
//! (Anjum et al., arXiv 2408.01008). Layers, from the bottom up:
//! - [`tt`]: pure tensor-train math (shapes, factorization, contraction paths, TT-SVD);
//! - [`ops`]: tensor ops with a hand-written backward (the frozen linear);
//! - [`adapters`]: adapted linear layers and the adapter methods (LoRA, TT-LoRA);
//! - [`models`]: transformer families (BERT/RoBERTa, DeBERTa-v2) with adapter-capable linears;
//! - [`data`]: GLUE/SuperGLUE and custom task files, metrics, tokenization, batching.
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
pub mod train;
pub mod tt;
pub mod tuning;

pub use device::parse_device;
pub use error::{Error, Result};

/// The README's code blocks, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
