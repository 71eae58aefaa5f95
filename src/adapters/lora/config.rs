//! LoRA's configuration, with PEFT's field names and defaults.

use serde::{Deserialize, Serialize};

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
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            use_rslora: false,
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

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method: "lora",
            field,
            reason: reason.into(),
            got,
        };
        if self.r == 0 {
            return Err(bad("r", "must be >= 1", self.r.to_string()));
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
