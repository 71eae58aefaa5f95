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

use crate::adapters::{
    Adapter, ConfigFields, LayerSpec, Method, MethodConfig, Shorthand, downcast, parse,
};
use crate::error::Result;

/// The LoRA method, as registered.
pub struct Lora;

/// `--rank` as `r` and `--alpha` as `lora_alpha`, PEFT's fields (LoRA and LoRETTA-rep).
pub(crate) fn rank_or_alpha(
    flag: Shorthand,
    value: &serde_json::Value,
) -> Option<Result<ConfigFields>> {
    let field = match flag {
        Shorthand::Rank => "r",
        Shorthand::Alpha => "lora_alpha",
        _ => return None,
    };
    Some(Ok(ConfigFields::from_iter([(
        field.to_string(),
        value.clone(),
    )])))
}

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
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<LoraConfig>(self.name(), given)
    }
    fn shorthand(
        &self,
        flag: Shorthand,
        value: &serde_json::Value,
    ) -> Option<Result<ConfigFields>> {
        rank_or_alpha(flag, value)
    }
    fn pattern_overrides(
        &self,
        config: &dyn MethodConfig,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        Ok(downcast::<LoraConfig>(self.name(), config)?.pattern_overrides())
    }
    fn build(
        &self,
        config: &dyn MethodConfig,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let config = downcast::<LoraConfig>(self.name(), config)?;
        Ok(Box::new(LoraLayer::new(config, layer, rng)?))
    }
}
