//! The DeBERTa-v2 family (DeBERTa-v2 and DeBERTa-v3, HF `model_type: "deberta-v2"`), built from
//! an HF `config.json` and safetensors weights under the exact HF tensor names.
//!
//! Owns: [`DebertaV2Config`] (config.rs), the encoder [`DebertaV2`] with disentangled
//! attention and the relative-position buckets (model.rs), the classification model
//! [`DebertaV2ForSequenceClassification`] and [`load_deberta_v2`] (head.rs). Every linear
//! layer is an [`adapters::Linear`](crate::adapters::Linear) reachable by its HF module path
//! (`encoder.layer.0.attention.self.query_proj`, …); layer norms, softmax and GELU go through
//! [`crate::ops`] so gradients reach adapters in every layer. Semantics follow HF
//! transformers' `modeling_deberta_v2.py`
//! (<https://github.com/huggingface/transformers/blob/main/src/transformers/models/deberta_v2/modeling_deberta_v2.py>).
//! Must not know: tasks, data files, training.

mod config;
mod head;
mod model;

#[cfg(test)]
mod tests;

pub use config::DebertaV2Config;
pub use head::{DebertaV2ForSequenceClassification, load_deberta_v2};
pub use model::{DebertaV2, build_relative_position, make_log_bucket_position};
