//! The supported model families and the dispatch on `config.json`'s `model_type`:
//! [`load_classifier_from`] (an opened [`ResolvedModel`]) and [`load_classifier`] (a folder).

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::io::ResolvedModel;
use crate::models::bert::BertForSequenceClassification;
use crate::models::deberta_v2::DebertaV2ForSequenceClassification;
use crate::models::{Model, Pooling};

/// The `model_type` values [`load_classifier`] accepts, as written in config.json.
pub const MODEL_TYPES: &[&str] = &["bert", "roberta", "deberta-v2"];

/// Loads the sequence-classification model of any supported family from an HF folder
/// (f32; `seed` initialises a head the checkpoint lacks), dispatching on `model_type`
/// (one of [`MODEL_TYPES`]): [`ResolvedModel::from_dir`] then [`load_classifier_from`].
///
/// # Errors
/// As [`ResolvedModel::from_dir`] and [`load_classifier_from`].
pub fn load_classifier(
    dir: &Path,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn Model>> {
    let model = ResolvedModel::from_dir(dir)?;
    load_classifier_from(&model, num_labels, pooling, device, seed)
}

/// Loads the sequence-classification model of any supported family from an opened model
/// (f32; `seed` initialises a head the checkpoint lacks), dispatching on its config's
/// `model_type` (one of [`MODEL_TYPES`]). Opens no file: the config was parsed and the
/// weight files mapped when `model` was opened; only the tensors the model needs are read.
///
/// # Errors
/// [`Error::ModelConfig`] naming `model_type` and the supported values; the family loader's
/// errors otherwise.
pub fn load_classifier_from(
    model: &ResolvedModel,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn Model>> {
    let bad = |reason: String| Error::ModelConfig {
        path: model.config_path(),
        reason,
    };
    let supported = MODEL_TYPES.join(", ");
    let f32 = DType::F32;
    match model.model_type() {
        Some("bert" | "roberta") => Ok(Box::new(BertForSequenceClassification::load_from(
            model, num_labels, pooling, f32, device, seed,
        )?)),
        Some("deberta-v2") => Ok(Box::new(DebertaV2ForSequenceClassification::load_from(
            model, num_labels, pooling, f32, device, seed,
        )?)),
        Some(t) => Err(bad(format!(
            "field `model_type`: unsupported value \"{t}\"; supported: {supported}"
        ))),
        None => Err(bad(format!(
            "field `model_type` missing or not a string; supported: {supported}"
        ))),
    }
}
