//! Full fine-tuning: every weight of the base model trains (the upper reference the paper
//! compares parameter-efficient methods with). Nothing is attached; the model's own tensors
//! become trainable.
//!
//! Owns: [`FullConfig`] and the [`Full`] method. Which tensors train is decided here, by name;
//! making them trainable is the model's business (`models::attach`).

mod config;
#[cfg(test)]
mod tests;

pub use config::FullConfig;

use crate::adapters::{Method, Placement};
use crate::error::Result;

/// The full fine-tuning method, as registered.
pub struct Full;

impl Method for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn peft_type(&self) -> &'static str {
        "FULL"
    }
    fn prefix(&self) -> &'static str {
        "full_"
    }
    fn summary(&self) -> &'static str {
        "full fine-tuning: every base weight trains (optionally not the embeddings)"
    }
    fn default_config(&self) -> serde_json::Value {
        serde_json::to_value(FullConfig::default()).unwrap_or_default()
    }
    /// The usual BERT fine-tuning rate (Devlin et al. 2019 searched 2e-5 to 5e-5); adapter rates diverge.
    fn default_lr(&self) -> f64 {
        5e-5
    }
    fn placement(&self) -> Placement {
        Placement::Base
    }
    fn validate_config(&self, config: &serde_json::Value) -> Result<()> {
        FullConfig::from_json(config).map(|_| ())
    }
    fn trains_base_tensor(&self, config: &serde_json::Value, name: &str) -> Result<bool> {
        Ok(FullConfig::from_json(config)?.trains(name))
    }
}
