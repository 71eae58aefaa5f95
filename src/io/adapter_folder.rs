//! Adapter folders on disk: `adapter_config.json` + `adapter_model.safetensors` (DESIGN §5).
//!
//! This module knows the files, not the models: it reads and writes a config document and a
//! flat map of named tensors, atomically and strictly. Binding the tensors to a model's layers
//! happens in `models::adapted`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the adapter config.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Version of the `ttlora` adapter folder format this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix PEFT puts before every module path in adapter weight names.
pub const KEY_PREFIX: &str = "base_model.model.";

/// What the adapter was trained for, so `eval`/`predict` need no flags to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Registry name of the task, or `custom`.
    pub name: String,
    /// Class names in label-id order (empty for regression).
    pub label_names: Vec<String>,
    /// Output columns of the head (1 for regression).
    pub num_labels: usize,
    /// How hidden states were pooled (`cls` / `mean`).
    pub pooling: String,
    /// Maximum tokens per example used in training.
    pub max_len: usize,
}

/// `adapter_config.json`, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// PEFT's method tag (`TTLORA`, `LORA`).
    pub peft_type: String,
    /// Version of this format.
    pub format_version: u32,
    /// The ttlora version that wrote the folder.
    pub ttlora_version: String,
    /// Registry name of the method (`ttlora`, `lora`).
    pub method: String,
    /// The `--model` the adapter was trained on (folder or hub id).
    pub base_model_name_or_path: String,
    /// SHA-256 of the base model's `config.json`, to catch a wrong base model.
    pub base_model_config_sha256: String,
    /// The method config the user asked for (before per-module planning).
    pub config: serde_json::Value,
    /// Targeting rule as given (list or regex).
    pub target_modules: serde_json::Value,
    /// Excluded modules as given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<serde_json::Value>,
    /// Per-module overrides as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Every adapted module path → the exact config that rebuilds its adapter.
    pub modules: BTreeMap<String, serde_json::Value>,
    /// Every adapted module path → its layer's `[out_features, in_features]`, so the folder
    /// can be inspected without the base model. Absent in folders from before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_shapes: BTreeMap<String, [usize; 2]>,
    /// Trained head tensors stored beside the adapter (full names), PEFT's `modules_to_save`.
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// The task the adapter was trained for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// Fields this version does not know, kept so a rewrite does not drop them.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// An adapter folder in memory.
#[derive(Debug, Clone)]
pub struct AdapterFolder {
    /// The config document.
    pub config: AdapterConfig,
    /// Tensors by full key (`base_model.model.<path>.<name>`).
    pub tensors: BTreeMap<String, Tensor>,
}

/// SHA-256 of a file as lowercase hex.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// PEFT's prompt-learning config fields, which ttlora writes beside its own into prompt and
/// prefix folders so PEFT reads them; not worth a warning.
const PEFT_PROMPT_FIELDS: [&str; 10] = [
    "task_type",
    "inference_mode",
    "num_virtual_tokens",
    "token_dim",
    "num_transformer_submodules",
    "num_attention_heads",
    "num_layers",
    "prompt_tuning_init",
    "prefix_projection",
    "encoder_hidden_size",
];

impl AdapterFolder {
    /// Writes the folder atomically (see [`write_folder`]): weights first, config last, so a
    /// reader never sees a config without its weights.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; candle errors while serialising.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_folder(dir, |dir| {
            write_safetensors_atomic(&dir.join(WEIGHTS_FILE), &self.tensors)?;
            // serde_json keeps struct field order; `unknown` (flattened) comes last.
            let json = serde_json::to_string_pretty(&self.config)?;
            write_atomic(&dir.join(CONFIG_FILE), json + "\n")
        })
    }

    /// Reads the folder in `dir`, tensors onto `device`: ttlora's own format, or a PEFT LoRA
    /// folder (`"peft_type": "LORA"` without `format_version`, see [`super::peft_lora`]).
    /// Unknown config fields are kept and reported with a warning; a newer `format_version`
    /// is an error.
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
        let bad = |e: serde_json::Error| Error::ModelConfig {
            path: cfg_path.clone(),
            reason: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        if super::peft_lora::is_peft_lora(&value) {
            return super::peft_lora::read(dir, &value, device);
        }
        if let Some(method) = super::peft_prompt::peft_prompt_method(&value) {
            return super::peft_prompt::read(dir, &value, method, device);
        }
        let config: AdapterConfig = serde_json::from_value(value).map_err(bad)?;
        if config.format_version > FORMAT_VERSION {
            return Err(Error::ModelConfig {
                path: cfg_path,
                reason: format!(
                    "format_version {} is newer than this ttlora understands ({FORMAT_VERSION}); \
                     upgrade ttlora",
                    config.format_version
                ),
            });
        }
        for key in config.unknown.keys() {
            if !PEFT_PROMPT_FIELDS.contains(&key.as_str()) {
                tracing::warn!("{}: ignoring unknown field `{key}`", cfg_path.display());
            }
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = read_safetensors(&weights, device)?;
        Ok(Self { config, tensors })
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Fills the folder `dir` through `fill` without ever leaving a half-written folder: a new
/// folder is filled under a temporary sibling name and renamed into place (removed again on
/// error); an existing folder has each file replaced atomically by `fill`'s writes.
///
/// # Errors
/// Whatever `fill` returns; [`Error::Io`] creating or renaming the folder.
pub fn write_folder(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.is_dir() {
        return fill(dir);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let name = dir
        .file_name()
        .map_or_else(|| "adapter".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    match fill(&tmp) {
        Ok(()) => rename(&tmp, dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, contents).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    rename(&tmp, path)
}

/// Writes `tensors` as safetensors with PEFT's `{"format":"pt"}` metadata, atomically.
///
/// # Errors
/// [`Error::ModelFile`] if serialising fails; [`Error::Io`] naming the file.
pub fn write_safetensors_atomic(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let tmp = tmp_name(path);
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, t)| (k.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .map_err(|e| Error::ModelFile {
        path: tmp.clone(),
        reason: format!("cannot write safetensors: {e}"),
    })?;
    rename(&tmp, path)
}

fn tmp_name(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads every tensor of a safetensors file, validating the header before trusting it.
///
/// # Errors
/// [`Error::ModelFile`] naming the file for anything malformed (truncated, lying offsets).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // `SafeTensors::deserialize` checks the header, offsets and sizes against the buffer.
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| {
            Error::WeightTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: e.to_string(),
            }
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ttlora-io-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_failed_fill_leaves_no_folder_and_no_partial_sibling() {
        let dir = temp("failed");
        let err = write_folder(&dir, |d| {
            write_atomic(&d.join("a.json"), "{}")?;
            Err(Error::Training("boom".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(!dir.exists());
        let parent = dir.parent().unwrap();
        let stray = std::fs::read_dir(parent).unwrap().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(&format!("ttlora-io-{}-failed.partial", std::process::id()))
        });
        assert!(!stray, "a .partial folder was left behind");
    }

    fn folder() -> AdapterFolder {
        AdapterFolder {
            config: AdapterConfig {
                peft_type: "TTLORA".into(),
                format_version: FORMAT_VERSION,
                ttlora_version: "0.1.0".into(),
                method: "ttlora".into(),
                base_model_name_or_path: "m".into(),
                base_model_config_sha256: String::new(),
                config: serde_json::json!({}),
                target_modules: serde_json::json!(["query"]),
                exclude_modules: None,
                overrides: BTreeMap::new(),
                modules: BTreeMap::new(),
                layer_shapes: BTreeMap::new(),
                modules_to_save: Vec::new(),
                task: None,
                unknown: BTreeMap::new(),
            },
            tensors: BTreeMap::from([(
                format!("{KEY_PREFIX}x.ttlora_cores.0"),
                Tensor::zeros((1, 2, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )]),
        }
    }

    fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(CONFIG_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
    }

    #[test]
    fn unknown_fields_are_tolerated_and_a_newer_version_is_refused() {
        let dir = temp("versions");
        folder().write(&dir).unwrap();
        edit_config(&dir, |v| v["added_in_v2"] = serde_json::json!({"x": 1}));
        let read = AdapterFolder::read(&dir, &Device::Cpu).unwrap();
        assert_eq!(
            read.config.unknown["added_in_v2"],
            serde_json::json!({"x": 1})
        );
        assert_eq!(read.tensors.len(), 1);

        edit_config(&dir, |v| {
            v["format_version"] = serde_json::json!(FORMAT_VERSION + 1)
        });
        let err = AdapterFolder::read(&dir, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer than this ttlora understands"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_successful_fill_appears_whole_and_can_be_rewritten() {
        let dir = temp("ok");
        write_folder(&dir, |d| write_atomic(&d.join("a.json"), "1")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "1");
        write_folder(&dir, |d| write_atomic(&d.join("a.json"), "2")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "2");
        assert!(!dir.join("a.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
