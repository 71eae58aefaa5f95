//! Prompt learning, with HF PEFT's semantics and file layout:
//! - `prompt` (Lester et al. 2021): n soft tokens `(n, hidden)` prepended to the input
//!   embeddings (position and token-type embeddings are added to them as to any token; the
//!   first of them is what a CLS head pools, as in PEFT).
//! - `prefix` (Li & Liang 2021): n keys and values per attention layer in front of the
//!   layer's own, stored as PEFT's `(n, layers·2·hidden)` table (layer l's keys in columns
//!   `2l·hidden..`, its values in the next `hidden`).
//!
//! Both are one tensor, PEFT's `prompt_embeddings`; neither can be merged. Owns: the configs
//! and the two methods. The model applies the tokens (`models::Model::set_virtual_tokens`).

mod config;
#[cfg(test)]
mod tests;

use candle_core::Tensor;
use rand::Rng;
use rand::rngs::StdRng;

pub use config::{PrefixConfig, PromptConfig, PromptInit};

use crate::adapters::{
    Method, MethodConfig, MethodKind, TokenPlacement, VirtualSpec, downcast, normal, parse,
};
use crate::error::{Error, Result};

/// Prompt tuning, as registered.
pub struct Prompt;

impl Method for Prompt {
    fn name(&self) -> &'static str {
        "prompt"
    }
    fn peft_type(&self) -> &'static str {
        "PROMPT_TUNING"
    }
    fn prefix(&self) -> &'static str {
        "prompt_"
    }
    fn summary(&self) -> &'static str {
        "prompt tuning: trainable soft tokens before the input embeddings"
    }
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<PromptConfig>(self.name(), given)
    }
    /// Soft prompts train at rates far above weight updates (Lester et al. used 0.3).
    fn default_lr(&self) -> f64 {
        1e-2
    }
    fn kind(&self) -> MethodKind {
        MethodKind::VirtualTokens(TokenPlacement::Prompt)
    }
    fn build_virtual(
        &self,
        config: &dyn MethodConfig,
        spec: &VirtualSpec,
        rng: &mut StdRng,
    ) -> Result<Tensor> {
        let cfg = downcast::<PromptConfig>(self.name(), config)?;
        let n = cfg.num_virtual_tokens;
        spec.check_tokens(self.name(), n, spec.hidden)?;
        match cfg.init {
            PromptInit::Random => normal(&[n, spec.hidden], 1.0, rng, spec.dtype, &spec.device),
            PromptInit::Vocab => {
                let (vocab, width) = spec.word_embeddings.dims2()?;
                if width != spec.hidden || vocab == 0 {
                    return Err(Error::TensorShape {
                        op: "prompt init from the word embeddings",
                        expected: vec![vocab.max(1), spec.hidden],
                        got: vec![vocab, width],
                    });
                }
                let rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab) as u32).collect();
                let ids = Tensor::new(rows, spec.word_embeddings.device())?;
                Ok(spec
                    .word_embeddings
                    .index_select(&ids, 0)?
                    .to_dtype(spec.dtype)?
                    .to_device(&spec.device)?)
            }
        }
    }
}

/// Prefix tuning, as registered.
pub struct Prefix;

impl Method for Prefix {
    fn name(&self) -> &'static str {
        "prefix"
    }
    fn peft_type(&self) -> &'static str {
        "PREFIX_TUNING"
    }
    fn prefix(&self) -> &'static str {
        "prefix_"
    }
    fn summary(&self) -> &'static str {
        "prefix tuning: trainable keys and values before every attention layer's own"
    }
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        parse::<PrefixConfig>(self.name(), given)
    }
    /// As for prompt tuning: a few thousand free vectors take large steps.
    fn default_lr(&self) -> f64 {
        1e-2
    }
    fn kind(&self) -> MethodKind {
        MethodKind::VirtualTokens(TokenPlacement::Prefix)
    }
    fn build_virtual(
        &self,
        config: &dyn MethodConfig,
        spec: &VirtualSpec,
        rng: &mut StdRng,
    ) -> Result<Tensor> {
        let cfg = downcast::<PrefixConfig>(self.name(), config)?;
        let width = spec.prefix_width();
        spec.check_tokens(self.name(), cfg.num_virtual_tokens, width)?;
        normal(
            &[cfg.num_virtual_tokens, width],
            cfg.init_std,
            rng,
            spec.dtype,
            &spec.device,
        )
    }
}
