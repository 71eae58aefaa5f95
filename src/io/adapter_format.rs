//! Which format an adapter folder is in: ttlora's own, HF PEFT's LoRA, or PEFT's prompt
//! learning. It sits above the three formats so none of them has to know the others.

use std::path::Path;

use candle_core::Device;

use super::adapter_folder::{AdapterFolder, CONFIG_FILE};
use super::{peft_lora, peft_prompt};
use crate::error::{Error, Result};

impl AdapterFolder {
    /// Reads the folder in `dir`, tensors onto `device`: ttlora's own format, a PEFT LoRA
    /// folder (`"peft_type": "LORA"` without `format_version`, see [`peft_lora`]) or a PEFT
    /// prompt-learning folder (see [`peft_prompt`]).
    ///
    /// # Errors
    /// Missing files, invalid JSON or safetensors, a config without a required field.
    pub fn read(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !cfg_path.is_file() {
            return Err(Error::ModelFile {
                path: dir.to_path_buf(),
                reason: format!("no {CONFIG_FILE}; expected an adapter folder"),
            });
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::ModelConfig {
                path: cfg_path.clone(),
                reason: e.to_string(),
            })?;
        let folder = if peft_lora::is_peft_lora(&value) {
            peft_lora::read(dir, &value, device)?
        } else if let Some(method) = peft_prompt::peft_prompt_method(&value) {
            peft_prompt::read(dir, &value, method, device)?
        } else {
            Self::read_own(dir, &cfg_path, value, device)?
        };
        if let Some(task) = &folder.config.task {
            task.validate(&cfg_path)?;
        }
        Ok(folder)
    }
}
