//! Files in and out: locating and fetching model folders (`hub`), adapter folders
//! (`adapter_folder`: ttlora's own; `peft_lora`: HF PEFT's LoRA folders).
//!
//! Owns: model resolution and the offline-first fetch of packaged models. Must not know: model
//! architectures or adapters. Safetensors/GGUF weight loading and adapter folders join here.

pub mod adapter_folder;
pub mod hub;
pub mod hub_download;
pub mod peft_lora;
pub mod peft_prompt;

pub use adapter_folder::{AdapterConfig, AdapterFolder, TaskInfo};
pub use hub::{DEFAULT_MODEL, PACKAGED_MODELS, cache_dir, resolve_model};

/// Reads and parses the JSON file at `path`, `None` when there is no such file.
///
/// # Errors
/// [`crate::Error::Io`] if it exists but cannot be read; [`crate::Error::ModelConfig`] naming
/// the file if it is not valid JSON of the expected shape.
pub fn read_json_if_present<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> crate::Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|e| crate::Error::ModelConfig {
        path: path.to_path_buf(),
        reason: format!("not the expected JSON: {e}"),
    })?;
    Ok(Some(value))
}
