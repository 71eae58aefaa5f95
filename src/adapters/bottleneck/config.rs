//! Bottleneck adapters' configuration (field names follow the `adapters` library's
//! `BnConfig` where it has one).

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::error::{Error, Result};

/// The method's registry name.
pub(super) const NAME: &str = "adapter";

/// Where in each transformer layer the adapters sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Houlsby et al. 2019: after the attention output projection and after the feed-forward
    /// output projection.
    #[default]
    Houlsby,
    /// Pfeiffer et al. 2021: after the feed-forward output projection only.
    Pfeiffer,
}

/// The non-linearity between the down and up projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonLinearity {
    /// max(0, x).
    #[default]
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// x·sigmoid(x) (SiLU).
    Swish,
    /// tanh.
    Tanh,
}

/// Bottleneck adapter hyper-parameters: `g(y) = scaling · (up(f(down(y))))`, added to the
/// output `y` of the projection it follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BottleneckConfig {
    /// Houlsby (two per layer) or Pfeiffer (one per layer). Default houlsby.
    pub variant: Variant,
    /// Bottleneck width m = hidden / reduction_factor (rounded down, at least 1), unless
    /// `bottleneck_size` is set. Default 16.
    pub reduction_factor: f64,
    /// Bottleneck width m, overriding `reduction_factor`.
    pub bottleneck_size: Option<usize>,
    /// f between the projections. Default relu.
    pub non_linearity: NonLinearity,
    /// Standard deviation of the normal init of both projection weights; biases start at 0.
    /// Small, so g(y) ≈ 0 and the adapted model starts near the base model (Houlsby's
    /// near-identity init). Default 0.01.
    pub init_std: f64,
    /// Factor on g(y). Default 1.
    pub scaling: f64,
}

impl Default for BottleneckConfig {
    fn default() -> Self {
        Self {
            variant: Variant::Houlsby,
            reduction_factor: 16.0,
            bottleneck_size: None,
            non_linearity: NonLinearity::Relu,
            init_std: 0.01,
            scaling: 1.0,
        }
    }
}

impl Config for BottleneckConfig {
    fn validate(&self) -> Result<()> {
        self.check(NAME)
    }
}

impl BottleneckConfig {
    /// The bottleneck width for a layer of width `hidden`.
    pub fn width(&self, hidden: usize) -> usize {
        self.bottleneck_size
            .unwrap_or_else(|| (hidden as f64 / self.reduction_factor).floor() as usize)
            .max(1)
    }

    /// Checks every field, naming `method` (the bottleneck fields serve LoRETTA-adp too).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn check(&self, method: &'static str) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method,
            field,
            reason: reason.into(),
            got,
        };
        if !(self.reduction_factor.is_finite() && self.reduction_factor > 0.0) {
            return Err(bad(
                "reduction_factor",
                "must be a positive number",
                self.reduction_factor.to_string(),
            ));
        }
        if self.bottleneck_size == Some(0) {
            return Err(bad("bottleneck_size", "must be >= 1", "0".into()));
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(bad(
                "init_std",
                "must be finite and >= 0",
                self.init_std.to_string(),
            ));
        }
        if !self.scaling.is_finite() {
            return Err(bad("scaling", "must be finite", self.scaling.to_string()));
        }
        Ok(())
    }

    /// The default targets for this variant: both output projections of every layer
    /// (Houlsby) or the feed-forward one (Pfeiffer), by module path.
    pub fn targets(&self, sites: &crate::adapters::DefaultSites) -> crate::adapters::ModuleSet {
        let mut paths = sites.ffn_output.clone();
        if self.variant == Variant::Houlsby {
            paths.extend(sites.attention_output.iter().cloned());
        }
        crate::adapters::ModuleSet::List(paths)
    }
}
