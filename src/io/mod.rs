//! Files in and out, knowing no model: locating and fetching model folders (`hub`: a local
//! folder, a packaged model fetched with pip, the HF cache; `hub_download`), the resolved model
//! a job gets from `--model` (`resolved_model`: folder, parsed config.json and its hash,
//! tokenizer location, weights), base-model weights behind a format-free [`TensorSource`]
//! (`tensor_source`: the trait, load tracking, the [`LoadReport`]; `safetensors_source`: a
//! single file or an index of shards, memory-mapped, read strictly by name and shape), adapter
//! folders in three formats (`adapter_folder`: ttlora's own and the types all three share;
//! `peft_lora`; `peft_prompt`; `adapter_format` tells them apart), strict safetensors reads of
//! small files (`fs`), every write: whole-folder swaps, atomic files, output locks
//! (`output`), and what the OS reports about the process
//! (`process`).
//!
//! Must not know: model architectures (tensor names mean nothing here), adapters, training.
//! The byte-level formats are in docs/FORMAT.md.

pub mod adapter_folder;
mod adapter_format;
pub mod fs;
pub mod gguf;
pub mod gguf_lora;
pub mod hub;
pub mod hub_download;
pub mod output;
pub mod peft_lora;
pub mod peft_prompt;
mod pooling;
mod process;
mod resolved_model;
mod safetensors_source;
mod tensor_source;

pub use adapter_folder::{AdapterConfig, AdapterFolder, TOKENS_KEY, TaskInfo};
pub use fs::{read_json_if_present, sha256_file};
pub use gguf::{GgufSource, MetaValue};
pub use hub::{DEFAULT_DECODER, DEFAULT_MODEL, PACKAGED_MODELS, cache_dir, resolve_model};
pub use output::{OutputLock, replace_folder, write_atomic};
pub use pooling::Pooling;
pub use process::{available_memory_mib, peak_rss_mib, reset_peak_rss, rss_mib};
pub use resolved_model::{MODEL_CONFIG_FILE, ResolvedModel, TOKENIZER_FILE, TokenizerSource};
pub use safetensors_source::{SAFETENSORS_FILE, SAFETENSORS_INDEX, SafetensorsSource};
pub use tensor_source::{LoadReport, TensorSource, TrackedSource};
