//! A saved adapter on its base model, for `eval`, `predict`, `export` and `merge`: the
//! adapter folder read (any format), its base model resolved and loaded, the adapter attached.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::TextEncoder;
use crate::error::{Error, Result};
use crate::io::{self, ResolvedModel, TaskInfo, TokenizerSource};
use crate::jobs::study::choose_pooling;
use crate::jobs::trial::ADAPTER_NAME;
use crate::models::{Model, load_classifier_from};

/// A base model with a saved adapter attached: for scoring, prediction, export and merging.
pub struct Inference {
    /// The adapted model.
    pub model: Box<dyn Model>,
    /// The adapter's config.
    pub config: io::AdapterConfig,
    /// What the adapter was trained for (read from the folder, or implied by its head).
    pub task: TaskInfo,
    /// The resolved base model folder.
    pub model_dir: PathBuf,
    /// Where the base model's tokenizer is (as the resolved model found it).
    pub tokenizer: TokenizerSource,
    /// The base model as named (the override, else the adapter config's), for files written
    /// from this adapter.
    pub base_model: String,
}

/// Loads the base model an adapter folder names (or `model_override`) and attaches the
/// adapter; ttlora's own folders and PEFT LoRA folders alike. A base model whose config.json
/// differs from the one trained on is a warning.
///
/// # Errors
/// An unreadable or inconsistent adapter folder; a base model that cannot be found.
pub fn load(
    adapter_dir: &Path,
    model_override: Option<&str>,
    device: &Device,
    allow_fetch: bool,
) -> Result<Inference> {
    let folder = io::AdapterFolder::read(adapter_dir, device)?;
    let spec = model_override
        .unwrap_or(&folder.config.base_model_name_or_path)
        .to_string();
    if spec.is_empty() {
        return Err(Error::ModelConfig {
            path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
            reason: "names no base model (`base_model_name_or_path`); pass --model".into(),
        });
    }
    let base = ResolvedModel::open(&spec, allow_fetch)?;
    let model_dir = base.dir().to_path_buf();
    let task = match folder.config.task.clone() {
        Some(t) => t,
        None => task_from_head(&folder, &base).ok_or_else(|| Error::ModelConfig {
            path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
            reason: "says nothing about the task (no `task` section, no ttlora_task.json, no \
                     saved classifier to count the labels from)"
                .into(),
        })?,
    };
    let known = !folder.config.base_model_config_sha256.is_empty();
    if known && base.config_sha256() != folder.config.base_model_config_sha256 {
        tracing::warn!(
            "{}: config.json differs from the base model the adapter was trained on ({})",
            model_dir.display(),
            folder.config.base_model_name_or_path
        );
    }
    let mut model = load_classifier_from(&base, task.num_labels, task.pooling, device, 0)?;
    crate::tuning::adapted::load_into(model.as_mut(), &folder, ADAPTER_NAME)?;
    Ok(Inference {
        model,
        config: folder.config,
        task,
        model_dir,
        tokenizer: base.tokenizer().clone(),
        base_model: spec,
    })
}

impl Inference {
    /// The base model's tokenizer at the adapter's training-time `max_len`.
    ///
    /// # Errors
    /// A missing or invalid `tokenizer.json` in the base model folder.
    pub fn encoder(&self) -> Result<TextEncoder> {
        let TokenizerSource::Json(path) = &self.tokenizer;
        let mut encoder = TextEncoder::from_file(path, self.task.max_len)?;
        let rows = self.model.virtual_spec().word_embeddings.dims()[0];
        encoder.limit_ids(rows, &self.model_dir);
        Ok(encoder)
    }
}

/// What a folder from elsewhere (e.g. PEFT, which has no task fields) implies about its task:
/// the label count from the saved classifier's output rows, the base model's own pooling,
/// generic label names. `None` without a saved classifier.
fn task_from_head(folder: &io::AdapterFolder, base: &ResolvedModel) -> Option<TaskInfo> {
    // Prompt-learning folders key the head one level up (`base_model.classifier…`).
    let prefixes = [io::adapter_folder::KEY_PREFIX, "base_model."];
    let out_rows = ["classifier.out_proj.weight", "classifier.weight"]
        .iter()
        .flat_map(|n| prefixes.iter().map(move |p| format!("{p}{n}")))
        .find_map(|key| {
            folder
                .tensors
                .get(&key)
                .and_then(|t| t.dims().first().copied())
        })?;
    let pooling = choose_pooling(None, base.dir()).ok()?;
    let label_names = if out_rows == 1 {
        Vec::new()
    } else {
        (0..out_rows).map(|i| format!("LABEL_{i}")).collect()
    };
    Some(TaskInfo {
        name: "custom".into(),
        label_names,
        num_labels: out_rows,
        pooling,
        max_len: max_positions(base).unwrap_or(512).min(512),
    })
}

/// `max_position_embeddings` of the model's config.json, if readable.
fn max_positions(base: &ResolvedModel) -> Option<usize> {
    let n = base.config().get("max_position_embeddings")?.as_u64()?;
    usize::try_from(n).ok()
}
