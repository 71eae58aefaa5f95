//! Files in and out: locating and fetching model folders (`hub`), adapter folders
//! (`adapter_folder`: ttlora's own; `peft_lora`: HF PEFT's LoRA folders).
//!
//! Owns: model resolution and the offline-first fetch of packaged models. Must not know: model
//! architectures or adapters. Safetensors/GGUF weight loading and adapter folders join here.

pub mod adapter_folder;
pub mod hub;
pub mod hub_download;
pub mod peft_lora;

pub use adapter_folder::{AdapterConfig, AdapterFolder, TaskInfo};
pub use hub::{DEFAULT_MODEL, PACKAGED_MODELS, cache_dir, resolve_model};
