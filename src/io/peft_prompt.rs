//! HF PEFT prompt-tuning and prefix-tuning folders as PEFT itself writes them (no
//! `format_version`): `adapter_config.json` with `peft_type` `PROMPT_TUNING` /
//! `PREFIX_TUNING`, and `adapter_model.safetensors` holding `prompt_embeddings` plus the head
//! under `base_model.<name>`. ttlora writes the same layout with its own fields added, which
//! [`super::AdapterFolder::read`] reads as its own format.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde_json::{Value, json};

use super::adapter_folder::{
    AdapterConfig, AdapterFolder, CONFIG_FILE, FORMAT_VERSION, TOKENS_KEY, WEIGHTS_FILE,
};
use super::fs::read_safetensors;
use super::peft_lora::TaskFile;
use crate::error::{Error, Result};

/// The ttlora method for a PEFT prompt-learning config written by PEFT (without
/// `format_version`), or `None` for any other config.
pub fn peft_prompt_method(config: &Value) -> Option<&'static str> {
    if config.get("format_version").is_some() {
        return None;
    }
    match config.get("peft_type").and_then(Value::as_str) {
        Some("PROMPT_TUNING") => Some("prompt"),
        Some("PREFIX_TUNING") => Some("prefix"),
        _ => None,
    }
}

/// Reads a PEFT prompt-learning folder into ttlora's in-memory form.
///
/// # Errors
/// A reparameterised prefix (`prefix_projection`: an MLP ttlora does not run), more than one
/// transformer submodule (encoder-decoder models), a weights file without `prompt_embeddings`
/// or with tensors that are neither it nor a head tensor.
pub fn read(
    dir: &Path,
    config: &Value,
    method: &'static str,
    device: &Device,
) -> Result<AdapterFolder> {
    let cfg_path = dir.join(CONFIG_FILE);
    let bad_cfg = |reason: String| Error::ModelConfig {
        path: cfg_path.clone(),
        reason,
    };
    if config.get("prefix_projection").and_then(Value::as_bool) == Some(true) {
        return Err(bad_cfg(
            "`prefix_projection` is true: the prefix is an MLP's output, which ttlora does not \
             run; retrain with prefix_projection=False"
                .into(),
        ));
    }
    let submodules = config
        .get("num_transformer_submodules")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if submodules != 1 {
        return Err(bad_cfg(format!(
            "`num_transformer_submodules` is {submodules}; ttlora's encoders have 1"
        )));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = read_safetensors(&weights_path, device)?;
    let bad_t = |name: &str, reason: &str| Error::WeightTensor {
        path: weights_path.clone(),
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let tokens = tensors
        .get(TOKENS_KEY)
        .ok_or_else(|| bad_t(TOKENS_KEY, "missing: PEFT's prompt-learning table"))?;
    let mut head = Vec::new();
    for key in tensors.keys().filter(|k| *k != TOKENS_KEY) {
        let name = key
            .strip_prefix("base_model.")
            .filter(|n| !n.starts_with("model."))
            .ok_or_else(|| bad_t(key, "is neither `prompt_embeddings` nor a head tensor"))?;
        head.push(name.to_string());
    }
    let side = TaskFile::read(dir)?;
    let text = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or_default();
    let config = AdapterConfig {
        peft_type: text("peft_type").to_string(),
        format_version: FORMAT_VERSION,
        ttlora_version: String::new(),
        method: method.into(),
        base_model_name_or_path: text("base_model_name_or_path").to_string(),
        base_model_config_sha256: side
            .as_ref()
            .map(|s| s.base_model_config_sha256.clone())
            .unwrap_or_default(),
        config: json!({ "num_virtual_tokens": tokens.dims().first().copied().unwrap_or(0) }),
        target_modules: Value::Null,
        exclude_modules: None,
        overrides: BTreeMap::new(),
        modules: BTreeMap::new(),
        layer_shapes: BTreeMap::new(),
        modules_to_save: head,
        task: side.and_then(|s| s.task),
        unknown: BTreeMap::new(),
    };
    Ok(AdapterFolder { config, tensors })
}
