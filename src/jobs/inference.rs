//! A saved adapter on its base model, for `eval`, `predict`, `export` and `merge`: the
//! adapter folder read (any format), its base model resolved and loaded, the adapter attached.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::TextEncoder;
use crate::error::{Error, Result};
use crate::io::{self, Pooling, ResolvedModel, TaskInfo, TokenizerSource};
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
    /// Where the pooling in [`task`](Self::task) came from, for the user to see.
    pub pooling_from: PoolingSource,
}

/// Where an adapter's pooling came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingSource {
    /// The task ttlora recorded when it trained the adapter.
    Recorded,
    /// The caller's choice (`--pooling`).
    Given,
    /// The writer's semantics: a folder from elsewhere (PEFT) without ttlora's task record
    /// was trained through HF's `…ForSequenceClassification`, which pools the first token
    /// (through BERT's pooler).
    HfHead,
}

impl std::fmt::Display for PoolingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Recorded => "as recorded when the adapter was trained",
            Self::Given => "as given by --pooling",
            Self::HfHead => {
                "HF's sequence-classification head, as the folder (from elsewhere, without \
                 ttlora's task record) was trained; --pooling overrides"
            }
        })
    }
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
    load_with(adapter_dir, model_override, None, device, allow_fetch)
}

/// [`load`], with the head's pooling given (`pooling`) instead of read from the folder.
///
/// # Errors
/// As [`load`].
pub fn load_with(
    adapter_dir: &Path,
    model_override: Option<&str>,
    pooling: Option<Pooling>,
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
    let (mut task, mut pooling_from) = match folder.config.task.clone() {
        Some(t) => (t, PoolingSource::Recorded),
        None => (
            task_from_head(&folder, &base).ok_or_else(|| Error::ModelConfig {
                path: adapter_dir.join(io::adapter_folder::CONFIG_FILE),
                reason: "says nothing about the task (no `task` section, no ttlora_task.json, no \
                     saved classifier to count the labels from)"
                    .into(),
            })?,
            PoolingSource::HfHead,
        ),
    };
    if let Some(p) = pooling {
        task.pooling = p;
        pooling_from = PoolingSource::Given;
    }
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
        pooling_from,
    })
}

/// What [`Inference::merge_for_prediction`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The adapter was folded into this many layers' frozen weights.
    Layers(usize),
    /// The adapter stays separate: its method changes no weight matrix (the reason).
    Kept(String),
}

impl Inference {
    /// Folds the adapter into the frozen weights where its method allows (LoRA, TT-LoRA,
    /// LoRETTA, …: `W ← W + ΔW`), so that a forward costs what the base model's costs, the
    /// paper's "no added inference latency"; outputs differ from the unmerged model's by
    /// float rounding only. Virtual tokens and bottleneck adapters, which change no weight
    /// matrix, stay as they are.
    ///
    /// # Errors
    /// A merge that would hold NaN/Inf ([`Error::NonFiniteMerge`]).
    pub fn merge_for_prediction(&mut self) -> Result<Merged> {
        match crate::tuning::merged::merge_adapters(self.model.as_mut(), ADAPTER_NAME) {
            Ok(n) => Ok(Merged::Layers(n)),
            Err(Error::NotMergeable { method, reason }) => {
                Ok(Merged::Kept(format!("{method}: {reason}")))
            }
            Err(e) => Err(e),
        }
    }

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
/// the label count from the saved classifier's output rows, the pooling of HF's
/// `…ForSequenceClassification` it was trained through (the first token; a
/// sentence-transformers folder's own mean pooling is not what PEFT trained with), generic
/// label names. `None` without a saved classifier.
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
    let pooling = Pooling::Cls;
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
