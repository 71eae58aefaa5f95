//! LoRA's configuration, with PEFT's field names and defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::error::{Error, Result};

/// LoRA hyper-parameters (field names as in PEFT's `LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update ΔW = B·A. Default 8.
    pub r: usize,
    /// α: the update is scaled by α/r (or α/√r with rsLoRA). Default 8.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter's input while training. Default 0.
    pub lora_dropout: f64,
    /// Rank-stabilised scaling α/√r (Kalajdzievski 2023) instead of α/r. Default false.
    pub use_rslora: bool,
    /// DoRA (weight-decomposed LoRA, PEFT's `use_dora`): a trainable magnitude per output
    /// rescales `W0 + ΔW` row by row. Costs one more frozen matmul per adapted layer and
    /// cannot be exported as a plain LoRA. Default false.
    pub use_dora: bool,
    /// PEFT's `rank_pattern`: a module name or regex (matched as PEFT does: the path equals
    /// it or ends with `.` + it) → the rank r of the layers it matches.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// PEFT's `alpha_pattern`: the same, → `lora_alpha`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub alpha_pattern: BTreeMap<String, f64>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            use_rslora: false,
            use_dora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }
}

impl LoraConfig {
    /// The factor applied to B·A: α/r, or α/√r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// `rank_pattern` and `alpha_pattern` as per-module overrides (`key → {"r": …,
    /// "lora_alpha": …}`), the form the targeting rules apply.
    pub fn pattern_overrides(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut set = |key: &str, field: &str, value: serde_json::Value| {
            let entry = out
                .entry(key.to_string())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(obj) = entry.as_object_mut() {
                obj.insert(field.into(), value);
            }
        };
        for (k, r) in &self.rank_pattern {
            set(k, "r", (*r).into());
        }
        for (k, a) in &self.alpha_pattern {
            set(k, "lora_alpha", (*a).into());
        }
        out
    }
}

impl Config for LoraConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method: "lora",
            field,
            reason: reason.into(),
            got,
        };
        if self.r == 0 {
            return Err(bad("r", "must be >= 1", self.r.to_string()));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(bad("rank_pattern", "ranks must be >= 1", k.clone()));
        }
        if !self.lora_alpha.is_finite() {
            return Err(bad(
                "lora_alpha",
                "must be finite",
                self.lora_alpha.to_string(),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad(
                "lora_dropout",
                "must be in [0, 1)",
                self.lora_dropout.to_string(),
            ));
        }
        Ok(())
    }
}
