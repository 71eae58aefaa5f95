//! The LLaMA family of decoders (LLaMA, Mistral, Qwen2): its config, read from an HF
//! `config.json` or from a GGUF file's `llama.*`/`qwen2.*` metadata, the undoing of llama.cpp's
//! Q/K row permutation, and the decoder itself ([`Llama`]: forward, next-token logits, the
//! tagged walk). Loading checkpoints, generation and the causal-LM objective follow (issue 18).

mod config;
mod gguf;
mod model;
#[cfg(test)]
mod tests;

pub use config::{LlamaConfig, LlamaFamily, TokenIds, permute_qk_rows, unpermute_qk_rows};
pub use gguf::{MergedGguf, gguf_tensor_name, write_merged_gguf};
pub use model::{KvCache, LayerInputs, Llama};
