//! Using a saved adapter: score it with a task's official metrics ([`score`]) or label texts
//! ([`predict`]), what `ttlora eval` and `ttlora predict` run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;
use serde::Serialize;

use crate::data::{self, CustomColumns, CustomLabels, Example, Label, Metric, Split};
use crate::error::{Error, Result};
use crate::jobs::inference::Inference;
use crate::jobs::pipeline;
use crate::jobs::task::{custom_metrics, encode_split};

/// Which labelled examples to score.
#[derive(Debug, Clone)]
pub enum ScoreData {
    /// A split of the (registered) task, under a data root (None: the default roots).
    Split {
        /// Folder holding `glue/` and `superglue/`.
        root: Option<PathBuf>,
        /// The split.
        split: Split,
    },
    /// A labelled file: the task's own format, or for custom tasks CSV/TSV/JSONL with these
    /// columns.
    File {
        /// The file.
        path: PathBuf,
        /// Column names of a custom file.
        columns: CustomColumns,
    },
}

/// What [`score`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// The task scored.
    pub task: String,
    /// Examples scored.
    pub examples: usize,
    /// Metric values by name.
    pub metrics: BTreeMap<String, f64>,
}

/// Scores `inf` on `data` with the task's metrics. `task` names a registered task to score
/// on instead of the one the adapter records (for folders from elsewhere, which record none);
/// its label count must match the head.
///
/// # Errors
/// [`Error::TaskHeadMismatch`]; [`Error::CustomTaskNeedsFile`] for a custom-task adapter
/// without a file; readers' and tokenizer's errors.
pub fn score(
    inf: &mut Inference,
    task: Option<&str>,
    data: &ScoreData,
    batch_size: usize,
    device: &Device,
) -> Result<Scores> {
    if let Some(name) = task {
        let spec = data::task(name)?;
        let labels = spec.labels.num_labels();
        if labels != inf.task.num_labels {
            return Err(Error::TaskHeadMismatch {
                task: spec.name.to_string(),
                labels,
                outputs: inf.task.num_labels,
            });
        }
        inf.task.name = spec.name.to_string();
        inf.task.label_names = spec.class_names().iter().map(ToString::to_string).collect();
    }
    let task = &inf.task;
    let (examples, metrics, regression): (Vec<Example>, Vec<Metric>, bool) =
        if task.name == "custom" {
            let ScoreData::File { path, columns } = data else {
                return Err(Error::CustomTaskNeedsFile);
            };
            let regression = task.label_names.is_empty();
            let kind = if regression {
                CustomLabels::Score
            } else {
                CustomLabels::Classes(task.label_names.clone())
            };
            let (ex, _) = data::read_custom(path, columns, &kind)?;
            (ex, custom_metrics(regression), regression)
        } else {
            let spec = data::task(&task.name)?;
            let ex = match data {
                ScoreData::File { path, .. } => data::read_file(spec, path)?,
                ScoreData::Split { root, split } => {
                    data::read_task_split(spec, &data::data_root(root.as_deref(), spec)?, *split)?
                }
            };
            (ex, spec.metrics.to_vec(), spec.is_regression())
        };
    let encoder = inf.encoder()?;
    let split = encode_split(&encoder, &examples, true)?;
    let metrics = pipeline::evaluate(
        inf.model.as_ref(),
        &split,
        &metrics,
        regression,
        batch_size,
        encoder.pad_id(),
        device,
    )?;
    Ok(Scores {
        task: task.name.clone(),
        examples: examples.len(),
        metrics,
    })
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Prediction {
    /// A class and its probability.
    Class {
        /// The class name (its id where the adapter records no names).
        label: String,
        /// Softmax probability of that class.
        probability: f32,
    },
    /// A regression score.
    Score(f32),
}

/// Labels `examples` with `inf`.
///
/// # Errors
/// The tokenizer's errors; tensor errors.
pub fn predict(
    inf: &Inference,
    examples: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Prediction>> {
    let encoder = inf.encoder()?;
    let split = encode_split(&encoder, examples, false)?;
    let logits = pipeline::logits(
        inf.model.as_ref(),
        &split,
        batch_size,
        encoder.pad_id(),
        device,
    )?;
    let regression = inf.task.label_names.is_empty();
    Ok(logits
        .iter()
        .map(|row| {
            if regression {
                return Prediction::Score(row.first().copied().unwrap_or(f32::NAN));
            }
            let probs = pipeline::softmax(row);
            let c = match pipeline::predicted_label(row, false) {
                Label::Class(c) => c as usize,
                Label::Score(_) => 0,
            };
            Prediction::Class {
                label: inf
                    .task
                    .label_names
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| c.to_string()),
                probability: probs.get(c).copied().unwrap_or(f32::NAN),
            }
        })
        .collect())
}
