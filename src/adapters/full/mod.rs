//! Full fine-tuning: every weight of the base model trains (the upper reference the paper
//! compares parameter-efficient methods with). Nothing is attached; the model's own tensors
//! become trainable.
//!
//! Owns: [`FullConfig`] and the [`Full`] method. Which tensors train is decided here, by name;
//! making them trainable is the model's business (`tuning::attach`).

mod config;
#[cfg(test)]
mod tests;

pub use config::FullConfig;

use crate::adapters::{BaseTensorInfo, Method, MethodConfig, MethodKind, downcast, parse};
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
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<FullConfig>(self.name(), given)
    }
    /// The usual BERT fine-tuning rate (Devlin et al. 2019 searched 2e-5 to 5e-5); adapter rates diverge.
    fn default_lr(&self) -> f64 {
        5e-5
    }
    fn kind(&self) -> MethodKind {
        MethodKind::BaseWeights
    }
    fn trains_base_tensor(
        &self,
        config: &dyn MethodConfig,
        tensor: &BaseTensorInfo,
    ) -> Result<bool> {
        Ok(downcast::<FullConfig>(self.name(), config)?.trains(tensor))
    }
}
