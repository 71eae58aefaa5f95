//! TT-LoRA (Anjum et al., arXiv 2408.01008): the update ΔW of a linear layer is a tensor
//! train of small cores, applied as `y = x·W0ᵀ + b + α·ΔW(x)`.
//!
//! Owns: [`TtLoraConfig`], [`TtInit`], [`TtLoraLayer`], the [`TtLora`] method. The math lives
//! in `tt/`; tensors are named `ttlora_cores.<k>`.

mod config;
mod layer;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;

pub use config::{DEFAULT_CORES, TtInit, TtLoraConfig};
pub use layer::TtLoraLayer;

use crate::adapters::{Adapter, LayerSpec, Method};
use crate::error::Result;

/// The TT-LoRA method, as registered.
pub struct TtLora;

impl Method for TtLora {
    fn name(&self) -> &'static str {
        "ttlora"
    }
    fn peft_type(&self) -> &'static str {
        "TTLORA"
    }
    fn prefix(&self) -> &'static str {
        "ttlora_"
    }
    fn summary(&self) -> &'static str {
        "TT-LoRA: dW = alpha * tensor train of small cores (default zero init, factored path)"
    }
    fn default_config(&self) -> serde_json::Value {
        serde_json::to_value(TtLoraConfig::default()).unwrap_or_default()
    }
    fn rank_field(&self) -> Option<&'static str> {
        Some("rank")
    }
    fn alpha_field(&self) -> Option<&'static str> {
        Some("alpha")
    }
    fn validate_config(&self, config: &serde_json::Value) -> Result<()> {
        serde_json::from_value::<TtLoraConfig>(config.clone())?.validate()
    }
    fn build(
        &self,
        config: &serde_json::Value,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let config: TtLoraConfig = serde_json::from_value(config.clone())?;
        Ok(Box::new(TtLoraLayer::new(&config, layer, rng)?))
    }
}
