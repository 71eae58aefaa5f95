//! Full fine-tuning's configuration.

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::error::Result;

/// What full fine-tuning trains besides the encoder layers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FullConfig {
    /// Keep the embedding module (word, position and token-type tables and the embedding
    /// layer norm) frozen, a common saving: the word table alone is about a fifth of a small
    /// encoder's weights. Default false.
    pub freeze_embeddings: bool,
}

impl Config for FullConfig {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl FullConfig {
    /// Whether the base tensor `name` (a state-dict name) trains.
    pub fn trains(&self, name: &str) -> bool {
        let embedding = name.starts_with("embeddings.") || name.contains(".embeddings.");
        !(self.freeze_embeddings && embedding)
    }
}
