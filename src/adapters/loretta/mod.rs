//! LoRETTA (Yang et al. 2024, "LoRETTA: Low-Rank Economic Tensor-Train Adaptation"), the
//! tensor-train PEFT methods the TT-LoRA paper compares with:
//! - `loretta-rep`: LoRA whose A `(r, in)` and B `(out, r)` are each a tensor train, scaled
//!   α/r; B's last core starts at zero, so ΔW = 0 at step 0. Mergeable, and exportable as an
//!   exact PEFT LoRA.
//! - `loretta-adp`: bottleneck adapters whose down and up projections are tensor trains; the
//!   up train's last core starts at zero, so the adapter is the identity at step 0.
//!
//! Owns: both configs and methods, [`LorettaRepLayer`]. The trains are TT-LoRA's
//! ([`TtLoraLayer`], α = 1); the bottleneck is
//! [`BottleneckLayer`].

mod config;
mod rep;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;

pub use config::{LorettaAdpConfig, LorettaRepConfig};
pub use rep::LorettaRepLayer;

use crate::adapters::bottleneck::{BottleneckLayer, BottleneckParts, Projection};
use crate::adapters::lora::rank_or_alpha;
use crate::adapters::ttlora::{TtInit, TtLoraConfig, TtLoraLayer};
use crate::adapters::{
    Adapter, ConfigFields, DefaultSites, LayerPlacement, LayerSpec, Method, MethodConfig,
    MethodKind, ModuleSet, Shorthand, downcast, parse,
};
use crate::error::Result;

/// A TT-LoRA train of an `(out, in)` matrix on `layer`'s dtype and device.
fn train(
    cfg: &TtLoraConfig,
    in_features: usize,
    out_features: usize,
    layer: &LayerSpec,
    rng: &mut StdRng,
) -> Result<TtLoraLayer> {
    let spec = LayerSpec {
        in_features,
        out_features,
        ..layer.clone()
    };
    TtLoraLayer::new(cfg, &spec, rng)
}

/// The config that rebuilds `tt`'s exact shape (factors and ranks written out).
fn exact(tt: &TtLoraLayer) -> Result<TtLoraConfig> {
    Ok(serde_json::from_value(tt.config())?)
}

/// LoRETTA-rep, as registered.
pub struct LorettaRep;

impl Method for LorettaRep {
    fn name(&self) -> &'static str {
        "loretta-rep"
    }
    fn peft_type(&self) -> &'static str {
        "LORETTA_REP"
    }
    fn prefix(&self) -> &'static str {
        "loretta_rep_"
    }
    fn summary(&self) -> &'static str {
        "LoRETTA-rep: LoRA with A and B each a tensor train, scaled alpha/r"
    }
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<LorettaRepConfig>(self.name(), given)
    }
    fn shorthand(
        &self,
        flag: Shorthand,
        value: &serde_json::Value,
    ) -> Option<Result<ConfigFields>> {
        rank_or_alpha(flag, value)
    }
    fn build(
        &self,
        config: &dyn MethodConfig,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let cfg = downcast::<LorettaRepConfig>(self.name(), config)?.clone();
        layer.check_tensor(
            self.name(),
            "A (r x in_features)",
            &[cfg.r, layer.in_features],
        )?;
        layer.check_tensor(
            self.name(),
            "B (out_features x r)",
            &[layer.out_features, cfg.r],
        )?;
        // A starts as a TT-SVD of a Kaiming-uniform matrix (LoRA's A), B at zero.
        let a_cfg = config::train_config(cfg.a.as_ref(), cfg.tensor_rank, TtInit::TtSvd);
        let b_cfg = config::train_config(cfg.b.as_ref(), cfg.tensor_rank, TtInit::Zero);
        let a = train(&a_cfg, layer.in_features, cfg.r, layer, rng)?;
        let b = train(&b_cfg, cfg.r, layer.out_features, layer, rng)?;
        let config = LorettaRepConfig {
            a: Some(exact(&a)?),
            b: Some(exact(&b)?),
            ..cfg
        };
        Ok(Box::new(LorettaRepLayer::new(a, b, config)))
    }
}

/// LoRETTA-adp, as registered.
pub struct LorettaAdp;

impl Method for LorettaAdp {
    fn name(&self) -> &'static str {
        "loretta-adp"
    }
    fn peft_type(&self) -> &'static str {
        "LORETTA_ADP"
    }
    fn prefix(&self) -> &'static str {
        "loretta_adp_"
    }
    fn summary(&self) -> &'static str {
        "LoRETTA-adp: bottleneck adapters whose projections are tensor trains"
    }
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<LorettaAdpConfig>(self.name(), given)
    }
    /// As for dense bottleneck adapters.
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
        Ok(downcast::<LorettaAdpConfig>(self.name(), config)?
            .bottleneck()
            .targets(sites))
    }
    fn build(
        &self,
        config: &dyn MethodConfig,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let cfg = downcast::<LorettaAdpConfig>(self.name(), config)?.clone();
        let h = layer.out_features;
        let m = cfg.bottleneck().width(h);
        layer.check_tensor(
            self.name(),
            "the down projection (bottleneck_size x hidden)",
            &[m, h],
        )?;
        let down_cfg = config::train_config(cfg.down.as_ref(), cfg.tensor_rank, TtInit::TtSvd);
        let up_cfg = config::train_config(cfg.up.as_ref(), cfg.tensor_rank, TtInit::Zero);
        let down = train(&down_cfg, h, m, layer, rng)?;
        let up = train(&up_cfg, m, h, layer, rng)?;
        let exact_cfg = LorettaAdpConfig {
            bottleneck_size: Some(m),
            down: Some(exact(&down)?),
            up: Some(exact(&up)?),
            ..cfg.clone()
        };
        let parts = BottleneckParts {
            method: self.name(),
            prefix: self.prefix(),
            down: Projection::Tt(down),
            up: Projection::Tt(up),
            non_linearity: cfg.non_linearity,
            scaling: cfg.scaling,
            config: serde_json::to_value(exact_cfg)?,
        };
        Ok(Box::new(BottleneckLayer::new(parts, layer)?))
    }
}
