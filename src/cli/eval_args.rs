//! The flags of `ttlora eval` and `ttlora predict`, and what both print with: the encoder
//! path (`eval.rs`) and the decoder path on prompted tasks (`prompted.rs`) read them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::data::Split;
use ttlora::jobs::inference::{self, Inference};

use super::common::{
    DeviceArgs, JsonArgs, ObjectiveArg, OfflineArgs, PoolingArgs, TemplateArgs, report_pooling,
};

/// Where the base model and adapter come from (shared by eval and predict).
#[derive(Debug, Args)]
pub struct AdapterArgs {
    /// Adapter folder written by `ttlora train` (a decoder base alone, scored or predicting
    /// by LM scoring with --model and --task, needs none).
    #[arg(long, value_name = "DIR")]
    pub(super) adapter: Option<PathBuf>,
    /// Base model, overriding the one recorded in the adapter config; for LM scoring with no
    /// --adapter, the decoder to score.
    #[arg(long)]
    pub(super) model: Option<String>,
    #[command(flatten)]
    pub(super) device: DeviceArgs,
    #[command(flatten)]
    pub(super) fetch: OfflineArgs,
    /// Examples per forward pass [default: 64; 16 for decoder adapters on prompted tasks]
    /// (not for `eval` by LM scoring, which runs one example at a time).
    #[arg(long)]
    pub(super) batch_size: Option<usize>,
    #[command(flatten)]
    pub(super) pooling: PoolingArgs,
}

impl AdapterArgs {
    /// The encoder adapter of --adapter on its base (or --model).
    pub(super) fn load(&self) -> Result<Inference> {
        let device = self.device.device()?;
        let Some(adapter) = &self.adapter else {
            bail!("give --adapter DIR, a folder written by `ttlora train`");
        };
        let inf = inference::load_with(
            adapter,
            self.model.as_deref(),
            self.pooling.pooling,
            &device,
            !self.fetch.offline,
        )
        .with_context(|| format!("loading adapter {}", adapter.display()))?;
        report_pooling(&inf);
        Ok(inf)
    }
}

/// Score a saved adapter with the task's official metrics.
///
/// By default the task recorded in the adapter is scored on its official dev split; --file
/// scores any labelled file in the task's own format (or, for custom tasks, CSV/TSV/JSONL with
/// the named columns).
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub(super) common: AdapterArgs,
    /// Folder holding glue/ and superglue/ (default: the first of $TTLORA_DATA, ./data,
    /// ../shared/data and the crate's own data/ holding the task).
    #[arg(long, value_name = "DIR")]
    pub(super) data: Option<PathBuf>,
    /// Score on this registered task instead of the one the adapter records (for adapters
    /// from elsewhere, e.g. a PEFT LoRA folder, which records none). Its label count must
    /// match the adapter's head.
    #[arg(long)]
    pub(super) task: Option<String>,
    /// Split of a registered task: dev, dev_matched, dev_mismatched or train.
    #[arg(long, default_value = "dev")]
    pub(super) split: Split,
    /// A labelled file to score instead of the task's split.
    #[arg(long, value_name = "FILE")]
    pub(super) file: Option<PathBuf>,
    /// Custom files: text column.
    #[arg(long, default_value = "text")]
    pub(super) text_column: String,
    /// Custom files: second text column.
    #[arg(long)]
    pub(super) text_pair_column: Option<String>,
    /// Custom files: label column.
    #[arg(long, default_value = "label")]
    pub(super) label_column: String,
    #[command(flatten)]
    pub(super) decoder: DecoderArgs,
    /// LM scoring: examples drawn (seeded, without replacement; MultiRC a whole question at
    /// a time) from the split; all of it when smaller [default: 1000].
    #[arg(long)]
    pub(super) max_examples: Option<usize>,
    /// LM scoring: the seed of that draw [default: 0].
    #[arg(long)]
    pub(super) seed: Option<u64>,
    #[command(flatten)]
    pub(super) output: JsonArgs,
}

/// Label texts with a saved adapter, or a prompted task's rows with a decoder.
///
/// Give one example with --text (and --text-pair for pair tasks), or a file: .txt (one text
/// per line) or .csv/.tsv/.jsonl with --text-column. Prints one tab-separated line per example:
/// the predicted label and its probability (or the score, for regression), then the text.
/// A decoder (an adapter trained with --objective, or --model with --task) reads --file's
/// JSON Lines rows and prints each row's id, answer, its probability and the prompt.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub(super) common: AdapterArgs,
    /// A text to label.
    #[arg(long, conflicts_with = "file")]
    pub(super) text: Option<String>,
    /// The second text of a pair.
    #[arg(long, requires = "text")]
    pub(super) text_pair: Option<String>,
    /// A file of texts.
    #[arg(long, value_name = "FILE")]
    pub(super) file: Option<PathBuf>,
    /// Text column of a CSV/TSV/JSONL file.
    #[arg(long, default_value = "text")]
    pub(super) text_column: String,
    /// Second text column for pairs.
    #[arg(long)]
    pub(super) text_pair_column: Option<String>,
    /// Write the predictions to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// Keep the adapter separate from the base weights. By default an encoder adapter whose
    /// update is a weight matrix (LoRA, TT-LoRA, LoRETTA, …) is merged into the frozen
    /// weights first, so predicting costs what the base model costs; the probabilities
    /// differ from the unmerged model's by float rounding only.
    #[arg(long)]
    pub(super) no_merge: bool,
    /// A decoder on a prompted task: the task whose rows --file holds (boolq, cb, copa,
    /// multirc, rte, wic, wsc as official JSONL, labels optional as in SuperGLUE's test
    /// files; or custom with --template and --candidate) [default: the one a decoder
    /// adapter records]. With --model and no --adapter, the base alone predicts by LM
    /// scoring.
    #[arg(long)]
    pub(super) task: Option<String>,
    #[command(flatten)]
    pub(super) decoder: DecoderArgs,
}

/// How `eval` and `predict` run a decoder on a prompted task.
#[derive(Debug, Args)]
pub struct DecoderArgs {
    /// A decoder: how it chooses. `lm-score` gives each candidate answer (a SuperGLUE task's:
    /// boolq, cb, copa, multirc, rte, wic, wsc, as MeZO's templates write them) the mean
    /// log-probability of its tokens after the prompt and picks the best: the base alone, or
    /// with a decoder adapter. `classify`: an adapter's trained `score` head. [default: the
    /// head when the adapter has one, else LM scoring]
    #[arg(long, value_enum)]
    pub(super) objective: Option<ObjectiveArg>,
    #[command(flatten)]
    pub(super) template: TemplateArgs,
    /// A decoder: cut prompts longer than N tokens from the left, keeping the question and
    /// the answers [default: the adapter's recorded --max-len; with no adapter, `eval` cuts
    /// nothing (the zero-shot protocol; an example past the context is refused by name) and
    /// `predict` cuts at the model's context].
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(super) max_len: Option<usize>,
}

impl DecoderArgs {
    /// The first of these flags given, for refusing them where no decoder runs.
    pub(super) fn given(&self) -> Option<&'static str> {
        [
            ("--objective", self.objective.is_some()),
            ("--max-len", self.max_len.is_some()),
            (
                "--template, --candidate or --label-value",
                self.template.given(),
            ),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// `accuracy 0.8125, f1 0.8571`: metrics for a terminal line.
pub(super) fn metrics_line(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    parts.join(", ")
}

/// Writes `lines` to `output` (atomically for a regular file) or stdout.
pub(super) fn write_lines(output: Option<&std::path::Path>, lines: String) -> Result<()> {
    match output {
        // A regular file (or a new one) through a temporary file and a rename: a full disk
        // never truncates a previous file. A link, device or pipe is written as it is.
        Some(path) if path.symlink_metadata().is_ok_and(|m| !m.is_file()) => {
            std::fs::write(path, lines)
                .with_context(|| format!("cannot write {}", path.display()))?
        }
        Some(path) => ttlora::io::write_atomic(path, lines)?,
        None => std::io::stdout().lock().write_all(lines.as_bytes())?,
    }
    Ok(())
}
