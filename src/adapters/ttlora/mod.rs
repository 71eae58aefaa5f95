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

use crate::adapters::{
    Adapter, ConfigFields, LayerSpec, Method, MethodConfig, Shorthand, downcast, parse,
};
use crate::error::Result;
use crate::tt::parse_core_order;

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
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<TtLoraConfig>(self.name(), given)
    }
    fn shorthand(
        &self,
        flag: Shorthand,
        value: &serde_json::Value,
    ) -> Option<Result<ConfigFields>> {
        let field = match flag {
            Shorthand::Rank => "rank",
            Shorthand::Alpha => "alpha",
            Shorthand::Init => "init",
            Shorthand::TtPath => "path",
            Shorthand::Shape => {
                let shape = value.as_str().unwrap_or_default();
                return Some(parse_core_order(shape).map(|(i, o)| {
                    ConfigFields::from_iter([
                        ("in_factors".to_string(), i.into()),
                        ("out_factors".to_string(), o.into()),
                    ])
                }));
            }
        };
        Some(Ok(ConfigFields::from_iter([(
            field.to_string(),
            value.clone(),
        )])))
    }
    fn paper_preset(&self) -> ConfigFields {
        ConfigFields::from_iter([("init".to_string(), "paper".into())])
    }
    fn build(
        &self,
        config: &dyn MethodConfig,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let config = downcast::<TtLoraConfig>(self.name(), config)?;
        Ok(Box::new(TtLoraLayer::new(config, layer, rng)?))
    }
}
