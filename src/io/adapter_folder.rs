//! Adapter folders on disk: `adapter_config.json` + `adapter_model.safetensors` (DESIGN §5).
//!
//! This module knows the files, not the models: it reads and writes a config document and a
//! flat map of named tensors, atomically and strictly. It owns the types the three folder
//! formats share; `adapter_format.rs` picks the format of a folder on disk. Binding the tensors
//! to a model's layers happens in `tuning::adapted`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Pooling;
use super::fs::read_safetensors;
use super::output::{OutputLock, write_safetensors, write_synced_json};
use crate::error::{Error, Result};

/// File name of the adapter config.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Version of the `ttlora` adapter folder format this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix PEFT puts before every module path in adapter weight names.
pub const KEY_PREFIX: &str = "base_model.model.";
/// The key of prompt and prefix tuning's one trained table (PEFT's `prompt_embeddings`).
pub const TOKENS_KEY: &str = "prompt_embeddings";

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
    pub pooling: Pooling,
    /// Maximum tokens per example used in training.
    pub max_len: usize,
}

/// The most labels a task may have: far above any classification set in use, and a bound on
/// the head a folder can make ttlora allocate.
pub const MAX_LABELS: usize = 1 << 16;

impl TaskInfo {
    /// Checks what a file says before a head is sized from it: 1 to [`MAX_LABELS`] labels,
    /// as many names as labels (none for regression), a positive `max_len`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming `path` and the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::ModelConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.num_labels == 0 || self.num_labels > MAX_LABELS {
            return bad(format!(
                "field `task.num_labels` must be 1 to {MAX_LABELS} (got {})",
                self.num_labels
            ));
        }
        if !self.label_names.is_empty() && self.label_names.len() != self.num_labels {
            return bad(format!(
                "field `task.label_names` has {} names for {} labels",
                self.label_names.len(),
                self.num_labels
            ));
        }
        if self.max_len == 0 {
            return bad("field `task.max_len` must be at least 1 (got 0)".into());
        }
        Ok(())
    }
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
    /// Writes the folder `dir` as one atomic replacement of whatever it held, under its
    /// [`OutputLock`] (see [`super::output`]).
    ///
    /// # Errors
    /// [`Error::OutputLocked`]; [`Error::Io`] naming the file; candle errors while
    /// serialising.
    pub fn write(&self, dir: &Path) -> Result<()> {
        OutputLock::acquire(dir)?.replace_folder(|d| self.write_files(d))
    }

    /// Writes the folder's files into the empty folder `dir` being built (see
    /// [`OutputLock::replace_folder`]).
    ///
    /// # Errors
    /// As [`write`](Self::write), the lock aside.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        write_safetensors(&dir.join(WEIGHTS_FILE), &self.tensors)?;
        // serde_json keeps struct field order; `unknown` (flattened) comes last.
        write_synced_json(&dir.join(CONFIG_FILE), &self.config)
    }

    /// Reads a folder in ttlora's own format whose `adapter_config.json` (at `cfg_path`)
    /// parsed to `value`. Unknown config fields are kept and reported with a warning; a newer
    /// `format_version` is an error. [`AdapterFolder::read`] sniffs the format and calls this.
    ///
    /// # Errors
    /// A config without a required field; a newer format; invalid safetensors.
    pub(super) fn read_own(
        dir: &Path,
        cfg_path: &Path,
        value: serde_json::Value,
        device: &Device,
    ) -> Result<Self> {
        let config: AdapterConfig =
            super::fs::from_json(value).map_err(|reason| Error::ModelConfig {
                path: cfg_path.to_path_buf(),
                reason,
            })?;
        if config.format_version > FORMAT_VERSION {
            return Err(Error::ModelConfig {
                path: cfg_path.to_path_buf(),
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
        let tensors = read_safetensors(&dir.join(WEIGHTS_FILE), device)?;
        Ok(Self { config, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ttlora-io-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
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

    /// Issue 17: an adapter save stopped at any of its file operations, by ENOSPC or as by
    /// a kill, into an empty or an occupied folder, leaves the previous adapter byte for byte
    /// or the new one complete — never new weights beside an old config.
    #[test]
    fn an_interrupted_save_leaves_the_old_adapter_or_the_new_one() {
        use crate::io::output::{Fault, inject, seen};
        let mut new = folder();
        new.config.target_modules = serde_json::json!(["value"]);
        new.tensors
            .values_mut()
            .for_each(|t| *t = (t.clone() + 1.0).unwrap());
        for occupied in [false, true] {
            let tmp = crate::io::fs::TempDir::new("adapter-faults");
            let dir = tmp.join("adapter");
            let reset = || {
                let _ = std::fs::remove_dir_all(&dir);
                if occupied {
                    folder().write(&dir).unwrap();
                }
            };
            reset();
            let old = dir.is_dir().then(|| crate::io::fs::files_in(&dir));
            inject(None);
            new.write(&dir).unwrap();
            let want_new = crate::io::fs::files_in(&dir);
            let operations = seen();
            for at in 0..operations {
                for fault in [Fault::NoSpace, Fault::Kill] {
                    reset();
                    inject(Some((at, fault)));
                    let failed = new.write(&dir).is_err();
                    inject(None);
                    assert!(failed, "operation {at} of {operations}");
                    // The next writer recovers what a kill left behind.
                    drop(crate::io::OutputLock::acquire(&dir).unwrap());
                    let got = dir.is_dir().then(|| crate::io::fs::files_in(&dir));
                    assert!(
                        got == old || got.as_ref() == Some(&want_new),
                        "{fault:?} at operation {at}: a mix {:?}",
                        got.map(|g| g.keys().cloned().collect::<Vec<_>>())
                    );
                    let stray: Vec<String> = std::fs::read_dir(&*tmp)
                        .unwrap()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n != "adapter" && !n.ends_with(".lock"))
                        .collect();
                    assert!(stray.is_empty(), "{fault:?} at {at} left {stray:?}");
                }
            }
        }
    }
}
