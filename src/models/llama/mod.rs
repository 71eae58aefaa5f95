//! The LLaMA family of decoders (LLaMA, Mistral, Qwen2): so far its config, read from an HF
//! `config.json` or from a GGUF file's `llama.*`/`qwen2.*` metadata, and the undoing of
//! llama.cpp's Q/K row permutation. The backbone, generation and the causal-LM head follow
//! (issue 18).

mod config;

pub use config::{LlamaConfig, LlamaFamily, unpermute_qk_rows};
