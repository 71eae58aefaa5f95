//! Full fine-tuning's configuration.

use serde::{Deserialize, Serialize};

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

impl FullConfig {
    /// Parses a JSON config (unknown fields are an error).
    ///
    /// # Errors
    /// [`crate::Error::Json`] naming the bad field.
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        Ok(serde_json::from_value(config.clone())?)
    }

    /// Whether the base tensor `name` (a state-dict name) trains.
    pub fn trains(&self, name: &str) -> bool {
        let embedding = name.starts_with("embeddings.") || name.contains(".embeddings.");
        !(self.freeze_embeddings && embedding)
    }
}
