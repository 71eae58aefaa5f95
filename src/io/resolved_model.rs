//! [`ResolvedModel`]: what a job gets from `--model`, opened once: the folder, its parsed
//! `config.json` and that file's hash, where the tokenizer is, and the weights as a
//! [`TensorSource`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fs::sha256_hex;
use super::hub::resolve_model;
use super::safetensors_source::SafetensorsSource;
use super::tensor_source::TensorSource;
use crate::error::{Error, Result};

/// A model folder's HF config.
pub const MODEL_CONFIG_FILE: &str = "config.json";
/// A model folder's HF fast tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where a model's tokenizer comes from.
///
/// Today always an HF `tokenizer.json` in the model folder; a GGUF file carries its tokenizer
/// inside, and will be a variant of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// An HF `tokenizer.json` (the `tokenizers` crate's format) at this path. The folder is not
    /// required to have one (a model loads without it): the reader checks that the file
    /// exists, so its error names the file.
    Json(PathBuf),
}

/// A base model resolved and opened once: its folder, the parsed `config.json` with the
/// file's SHA-256, the tokenizer's location and the weights.
///
/// Opening reads `config.json` once (hash and JSON from the same bytes) and maps the weight
/// files' headers; no tensor is read until a model loader asks for it.
pub struct ResolvedModel {
    spec: String,
    dir: PathBuf,
    config: Value,
    config_sha256: String,
    tokenizer: TokenizerSource,
    tensors: Box<dyn TensorSource>,
}

impl std::fmt::Debug for ResolvedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedModel")
            .field("spec", &self.spec)
            .field("dir", &self.dir)
            .field("config_sha256", &self.config_sha256)
            .field("tokenizer", &self.tokenizer)
            .field("tensors", &self.tensors.location())
            .finish()
    }
}

impl ResolvedModel {
    /// Resolves `model_arg` as `--model` means it ([`resolve_model`]: a folder, a packaged
    /// model, a hub id; fetched only when `allow_fetch`) and opens it ([`from_dir`](Self::from_dir)).
    ///
    /// # Errors
    /// As [`resolve_model`] and [`from_dir`](Self::from_dir).
    pub fn open(model_arg: &str, allow_fetch: bool) -> Result<Self> {
        let dir = resolve_model(model_arg, allow_fetch)?;
        let mut model = Self::from_dir(&dir)?;
        model.spec = model_arg.to_string();
        Ok(model)
    }

    /// Opens the HF model folder `dir`: `config.json`, `tokenizer.json` (located, not read)
    /// and `model.safetensors` or its sharded index.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable `config.json`; [`Error::ModelConfig`] if it is not
    /// valid JSON; [`Error::ModelFile`] for missing or invalid weight files.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join(MODEL_CONFIG_FILE);
        let bytes = std::fs::read(&config_path).map_err(|source| Error::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = serde_json::from_slice(&bytes).map_err(|e| Error::ModelConfig {
            path: config_path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let tensors = SafetensorsSource::open(dir)?;
        Ok(Self {
            spec: dir.display().to_string(),
            dir: dir.to_path_buf(),
            config,
            config_sha256: sha256_hex(&bytes),
            tokenizer: TokenizerSource::Json(dir.join(TOKENIZER_FILE)),
            tensors: Box::new(tensors),
        })
    }

    /// What named the model: `--model` as given to [`open`](Self::open), or the folder.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `config.json`, for error messages about its fields.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(MODEL_CONFIG_FILE)
    }

    /// The parsed `config.json`, every field as written.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The config's `model_type`, if it is a string.
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(Value::as_str)
    }

    /// SHA-256 of `config.json` as lowercase hex, as adapter folders record the base model.
    pub fn config_sha256(&self) -> &str {
        &self.config_sha256
    }

    /// Where the tokenizer comes from.
    pub fn tokenizer(&self) -> &TokenizerSource {
        &self.tokenizer
    }

    /// The weights.
    pub fn tensors(&self) -> &dyn TensorSource {
        self.tensors.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::io::fs::TempDir;

    #[test]
    fn a_folder_opens_with_config_hash_tokenizer_and_tensors() {
        let tmp = TempDir::new("open");
        let config = r#"{"model_type": "bert", "hidden_size": 4}"#;
        std::fs::write(tmp.join(MODEL_CONFIG_FILE), config).unwrap();
        let t = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let map = HashMap::from([("w".to_string(), t)]);
        candle_core::safetensors::save(&map, tmp.join("model.safetensors")).unwrap();

        let model = ResolvedModel::open(tmp.to_str().unwrap(), false).unwrap();
        assert_eq!(model.dir(), &*tmp);
        assert_eq!(model.spec(), tmp.to_str().unwrap());
        assert_eq!(model.model_type(), Some("bert"));
        assert_eq!(model.config()["hidden_size"], 4);
        assert_eq!(
            model.config_sha256(),
            crate::io::sha256_file(&tmp.join(MODEL_CONFIG_FILE)).unwrap()
        );
        assert_eq!(
            model.tokenizer(),
            &TokenizerSource::Json(tmp.join(TOKENIZER_FILE))
        );
        assert_eq!(model.tensors().names(), ["w"]);
        assert_eq!(model.tensors().shape("w"), Some(&[4][..]));
    }

    #[test]
    fn bad_json_and_missing_weights_are_clear_errors() {
        let tmp = TempDir::new("bad");
        let config = tmp.join(MODEL_CONFIG_FILE);
        std::fs::write(&config, "{not json").unwrap();
        let err = ResolvedModel::from_dir(&tmp).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "model config {}: not valid JSON",
                config.display()
            )),
            "{err}"
        );
        std::fs::write(&config, "{}").unwrap();
        let err = ResolvedModel::from_dir(&tmp).unwrap_err().to_string();
        assert!(
            err.ends_with("no model.safetensors or model.safetensors.index.json"),
            "{err}"
        );
    }
}
