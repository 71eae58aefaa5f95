//! LoRA (Hu et al. 2021) with HF PEFT's semantics: `ΔW = (α/r)·B·A`, A Kaiming-uniform,
//! B zero, optional rsLoRA scaling α/√r and dropout on the adapter input.
//!
//! Owns: [`LoraConfig`], [`LoraLayer`], the [`Lora`] method. Tensor names follow PEFT's keys
//! (`lora_A.weight` of shape (r, in), `lora_B.weight` of shape (out, r)).

mod config;
mod layer;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;

pub use config::LoraConfig;
pub use layer::LoraLayer;

use crate::adapters::{Adapter, LayerSpec, Method};
use crate::error::Result;

/// The LoRA method, as registered.
pub struct Lora;

impl Method for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn peft_type(&self) -> &'static str {
        "LORA"
    }
    fn prefix(&self) -> &'static str {
        "lora_"
    }
    fn summary(&self) -> &'static str {
        "LoRA: dW = (alpha/r) B A, A (r x in) Kaiming-uniform, B (out x r) zero"
    }
    fn default_config(&self) -> serde_json::Value {
        serde_json::to_value(LoraConfig::default()).unwrap_or_default()
    }
    fn rank_field(&self) -> Option<&'static str> {
        Some("r")
    }
    fn alpha_field(&self) -> Option<&'static str> {
        Some("lora_alpha")
    }
    fn pattern_overrides(
        &self,
        config: &serde_json::Value,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        Ok(serde_json::from_value::<LoraConfig>(config.clone())?.pattern_overrides())
    }
    fn validate_config(&self, config: &serde_json::Value) -> Result<()> {
        serde_json::from_value::<LoraConfig>(config.clone())?.validate()
    }
    fn build(
        &self,
        config: &serde_json::Value,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let config: LoraConfig = serde_json::from_value(config.clone())?;
        Ok(Box::new(LoraLayer::new(&config, layer, rng)?))
    }
}
