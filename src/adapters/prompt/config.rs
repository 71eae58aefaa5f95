//! Prompt and prefix tuning's configurations (PEFT's field names).

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::error::{Error, Result};

/// How the soft prompt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// Rows of the model's word-embedding table drawn at random (Lester et al. 2021 found
    /// sampled vocabulary better than random vectors).
    #[default]
    Vocab,
    /// N(0, 1), PEFT's `RANDOM` (an `nn.Embedding`'s init).
    Random,
}

/// Prompt tuning: `num_virtual_tokens` trainable embeddings before the input's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Soft tokens. Default 20.
    pub num_virtual_tokens: usize,
    /// Initialisation. Default vocab.
    pub init: PromptInit,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            init: PromptInit::Vocab,
        }
    }
}

/// Prefix tuning: `num_virtual_tokens` trainable keys and values in front of every attention
/// layer's own (PEFT without `prefix_projection`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixConfig {
    /// Prefix positions per layer. Default 20.
    pub num_virtual_tokens: usize,
    /// Standard deviation of the normal init. Default 1 (PEFT's `nn.Embedding` init).
    pub init_std: f64,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            init_std: 1.0,
        }
    }
}

fn positive(method: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidConfig {
            method,
            field: "num_virtual_tokens",
            reason: "must be >= 1".into(),
            got: "0".into(),
        });
    }
    Ok(())
}

impl Config for PromptConfig {
    fn validate(&self) -> Result<()> {
        positive("prompt", self.num_virtual_tokens)
    }
}

impl Config for PrefixConfig {
    fn validate(&self) -> Result<()> {
        positive("prefix", self.num_virtual_tokens)?;
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(Error::InvalidConfig {
                method: "prefix",
                field: "init_std",
                reason: "must be finite and >= 0".into(),
                got: self.init_std.to_string(),
            });
        }
        Ok(())
    }
}
