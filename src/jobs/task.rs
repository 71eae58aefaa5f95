//! Where a job's examples come from and how they become tokens: a registered GLUE/SuperGLUE
//! task or the user's own files ([`TaskSource`]), read into a [`LoadedTask`], tokenized into
//! [`EncodedSplit`]s.

use std::path::PathBuf;

use crate::data::{self, CustomColumns, Example, LabelKind, Metric, Split, TaskSpec, TextEncoder};
use crate::error::{Error, Result};
use crate::jobs::pipeline::EncodedSplit;

/// Where the examples come from.
#[derive(Debug, Clone)]
pub enum TaskSource {
    /// A registered GLUE/SuperGLUE task under a data root holding `glue/` and `superglue/`.
    Registry {
        /// The task.
        spec: &'static TaskSpec,
        /// The data root.
        root: PathBuf,
    },
    /// A user's own files.
    Custom {
        /// Training file (.csv/.tsv/.jsonl).
        train: PathBuf,
        /// Evaluation file in the same format.
        dev: PathBuf,
        /// Column names.
        columns: CustomColumns,
        /// `true` for a regression target.
        regression: bool,
    },
}

/// A task after reading: its examples and how to score them.
pub struct LoadedTask {
    /// Task name.
    pub name: String,
    /// Class names (empty for regression).
    pub label_names: Vec<String>,
    /// Metrics to report, primary first.
    pub metrics: Vec<Metric>,
    /// Regression task.
    pub regression: bool,
    /// Training examples.
    pub train: Vec<Example>,
    /// Official dev examples (MNLI: matched).
    pub dev: Vec<Example>,
    /// Further official evaluation splits, by name (MNLI: `dev_mismatched`).
    pub extra_dev: Vec<(String, Vec<Example>)>,
}

/// Reads a task's train and dev examples.
///
/// # Errors
/// The readers' errors (missing file, bad label, empty split, absent column);
/// [`Error::NoEvalSplit`] for a task with no split to evaluate on.
pub fn load_task(source: &TaskSource) -> Result<LoadedTask> {
    match source {
        TaskSource::Registry { spec, root } => {
            // `dev`, or MNLI's matched split first and mismatched as an extra.
            let eval_splits = spec.eval_splits();
            let Some((&first, rest)) = eval_splits.split_first() else {
                return Err(Error::NoEvalSplit { task: spec.name });
            };
            let train = data::read_task_split(spec, root, Split::Train)?;
            let dev = data::read_task_split(spec, root, first)?;
            let extra_dev = rest
                .iter()
                .map(|&s| Ok((s.name().to_string(), data::read_task_split(spec, root, s)?)))
                .collect::<Result<Vec<_>>>()?;
            let metrics = spec.metrics.to_vec();
            Ok(LoadedTask {
                name: spec.name.to_string(),
                label_names: match spec.labels {
                    LabelKind::Classes(names) => names.iter().map(|s| s.to_string()).collect(),
                    LabelKind::Score => Vec::new(),
                },
                metrics,
                regression: spec.is_regression(),
                train,
                dev,
                extra_dev,
            })
        }
        TaskSource::Custom {
            train,
            dev,
            columns,
            regression,
        } => {
            let kind = if *regression {
                data::CustomLabels::Score
            } else {
                data::CustomLabels::Infer
            };
            let (train_ex, names) = data::read_custom(train, columns, &kind)?;
            let kind = if *regression {
                data::CustomLabels::Score
            } else {
                data::CustomLabels::Classes(names.clone())
            };
            let (dev_ex, _) = data::read_custom(dev, columns, &kind)?;
            Ok(LoadedTask {
                name: "custom".into(),
                label_names: names,
                metrics: custom_metrics(*regression),
                regression: *regression,
                train: train_ex,
                dev: dev_ex,
                extra_dev: Vec::new(),
            })
        }
    }
}

/// Tokenizes examples into an [`EncodedSplit`].
///
/// # Errors
/// Tokenizer errors; [`Error::UnlabelledExample`] when `need_labels`.
pub fn encode_split(
    enc: &TextEncoder,
    examples: &[Example],
    need_labels: bool,
) -> Result<EncodedSplit> {
    let encoded = enc.encode_batch(examples)?;
    let labels = if need_labels {
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.label.ok_or(Error::UnlabelledExample {
                    op: "encode split",
                    index: i,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(EncodedSplit { encoded, labels })
}

/// The metrics of a task on the user's own files: Pearson and Spearman for a score,
/// accuracy and macro-F1 for classes.
pub fn custom_metrics(regression: bool) -> Vec<Metric> {
    if regression {
        vec![Metric::Pearson, Metric::Spearman]
    } else {
        vec![Metric::Accuracy, Metric::MacroF1]
    }
}
