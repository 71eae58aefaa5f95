//! Full fine-tuning's configuration.

use serde::{Deserialize, Serialize};

use crate::adapters::{BaseTensorInfo, Config};
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
    /// Whether the base tensor `tensor` trains.
    pub fn trains(&self, tensor: &BaseTensorInfo) -> bool {
        !(self.freeze_embeddings && tensor.embedding_module)
    }
}
