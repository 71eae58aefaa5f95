//! The BERT family: BERT, RoBERTa and BERT-shaped models such as all-MiniLM-L6-v2, built from
//! an HF `config.json` and safetensors weights under the exact HF tensor names.
//!
//! Owns: [`BertConfig`] (config.rs), the encoder [`Bert`] (model.rs), the classification
//! model [`BertForSequenceClassification`] and [`load_bert`] (head.rs). Every linear layer is
//! an [`adapters::Linear`](crate::adapters::Linear) reachable by its HF module path; layer
//! norms, softmax and GELU go through [`crate::ops`] so gradients reach adapters in every layer.

mod config;
mod head;
mod model;

#[cfg(test)]
mod tests;

pub use config::{BertConfig, BertFamily};
pub use head::{BertForSequenceClassification, load_bert};
pub use model::Bert;
