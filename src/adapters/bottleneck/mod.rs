//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): a small two-layer MLP
//! `y ← y + s·up(f(down(y)))` after the attention and/or feed-forward output projections.
//! Non-linear, so never merged.
//!
//! Owns: [`BottleneckConfig`] (variant, width, non-linearity, init), [`BottleneckLayer`]
//! (shared with LoRETTA-adp, whose projections are tensor trains) and the [`Bottleneck`]
//! method, registered as `adapter`. Tensor names: `adapter_down.weight` `(m, h)`,
//! `adapter_down.bias` `(m)`, `adapter_up.weight` `(h, m)`, `adapter_up.bias` `(h)`.

mod config;
mod layer;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;

pub use config::{BottleneckConfig, NonLinearity, Variant};
pub use layer::{BottleneckLayer, BottleneckParts, Projection};

use config::NAME;

use crate::adapters::{
    Adapter, DefaultSites, LayerPlacement, LayerSpec, Method, MethodConfig, MethodKind, ModuleSet,
    downcast, parse,
};
use crate::error::Result;

/// The bottleneck adapter method, as registered (`adapter`).
pub struct Bottleneck;

impl Method for Bottleneck {
    fn name(&self) -> &'static str {
        NAME
    }
    fn peft_type(&self) -> &'static str {
        "BOTTLENECK_ADAPTER"
    }
    fn prefix(&self) -> &'static str {
        "adapter_"
    }
    fn summary(&self) -> &'static str {
        "bottleneck adapters (Houlsby: after attention and FFN outputs; Pfeiffer: after FFN)"
    }
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<BottleneckConfig>(self.name(), given)
    }
    /// The rate Houlsby et al. 2019 and the adapters library use for BERT-sized models.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn kind(&self) -> MethodKind {
        MethodKind::Layer(LayerPlacement::Serial)
    }
    fn default_targets(
        &self,
        config: &dyn MethodConfig,
        sites: &DefaultSites,
    ) -> Result<ModuleSet> {
        Ok(downcast::<BottleneckConfig>(NAME, config)?.targets(sites))
    }
    fn build(
        &self,
        config: &dyn MethodConfig,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let cfg = downcast::<BottleneckConfig>(NAME, config)?;
        let h = layer.out_features;
        let m = cfg.width(h);
        layer.check_tensor(
            NAME,
            "the down projection (bottleneck_size x hidden)",
            &[m, h],
        )?;
        let down = Projection::normal(m, h, cfg.init_std, layer, rng)?;
        let up = Projection::normal(h, m, cfg.init_std, layer, rng)?;
        // The rebuilt config names the width, so a later change of hidden size or default
        // reduction cannot change a saved adapter's structure.
        let exact = BottleneckConfig {
            bottleneck_size: Some(m),
            ..cfg.clone()
        };
        let parts = BottleneckParts {
            method: NAME,
            prefix: self.prefix(),
            down,
            up,
            non_linearity: cfg.non_linearity,
            scaling: cfg.scaling,
            config: serde_json::to_value(exact)?,
        };
        Ok(Box::new(BottleneckLayer::new(parts, layer)?))
    }
}
