//! Transformer families built from an HF `config.json` + safetensors, every linear layer an
//! [`adapters::Linear`](crate::adapters::Linear) so it can carry adapters and merges.
//!
//! Owns: the [`Model`] trait (all the trainer sees), [`EncoderInput`], the model families and
//! their heads. Uses `adapters/`, `ops/`, `io/`. Must not know: tasks, files of data, training.

use candle_core::{Tensor, Var};

use crate::adapters::Linear;
use crate::error::Result;

/// One padded batch of token ids for an encoder.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// Token ids, `(b_sz, seq_len)`, u32.
    pub input_ids: Tensor,
    /// Segment ids (0 for the first text, 1 for the second), `(b_sz, seq_len)`, u32.
    pub token_type_ids: Tensor,
    /// 1 for real tokens, 0 for padding, `(b_sz, seq_len)`, u32.
    pub attention_mask: Tensor,
}

/// What the trainer sees of a model.
pub trait Model: Send + Sync {
    /// Logits `(b_sz, num_labels)` (one column for regression). `train` enables dropout.
    ///
    /// # Errors
    /// Shape, dtype or device mismatches in the input.
    fn forward(&self, input: &EncoderInput, train: bool) -> Result<Tensor>;

    /// Every adapter-capable linear layer with its full HF module path
    /// (e.g. `encoder.layer.0.attention.self.query`), in a fixed order.
    fn linears(&self) -> Vec<(String, &Linear)>;

    /// The same layers, mutable, so adapters can be attached, merged and unmerged.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;

    /// Trainable tensors of the task head (e.g. `classifier.weight`), by full name.
    fn head_vars(&self) -> Vec<(String, Var)>;

    /// Module names PEFT targets by default for this architecture (e.g. `query`, `value`).
    fn default_targets(&self) -> &'static [&'static str];
}
