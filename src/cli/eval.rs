//! `ttlora eval` and `ttlora predict`: use a saved adapter.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::data::{self, CustomColumns, Example, Split};
use ttlora::jobs::finetune::{self, Inference, TaskSource};
use ttlora::jobs::pipeline::{self, EncodedSplit};

/// Where the base model and adapter come from (shared by eval and predict).
#[derive(Debug, Args)]
pub struct AdapterArgs {
    /// Adapter folder written by `ttlora train`.
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Base model, overriding the one recorded in the adapter config.
    #[arg(long)]
    model: Option<String>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Never download: fail if the model is not available locally.
    #[arg(long)]
    offline: bool,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

impl AdapterArgs {
    fn load(&self) -> Result<Inference> {
        let device = ttlora::parse_device(&self.device)?;
        finetune::load_for_inference(&self.adapter, self.model.as_deref(), &device, !self.offline)
            .with_context(|| format!("loading adapter {}", self.adapter.display()))
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
    common: AdapterArgs,
    /// Folder holding glue/ and superglue/ (default: the first of $TTLORA_DATA, ./data,
    /// ../shared/data and the crate's own data/ holding the task).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Score on this registered task instead of the one the adapter records (for adapters
    /// from elsewhere, e.g. a PEFT LoRA folder, which records none). Its label count must
    /// match the adapter's head.
    #[arg(long)]
    task: Option<String>,
    /// Split of a registered task: dev, dev_matched, dev_mismatched or train.
    #[arg(long, default_value = "dev")]
    split: Split,
    /// A labelled file to score instead of the task's split.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Custom files: text column.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Custom files: second text column.
    #[arg(long)]
    text_pair_column: Option<String>,
    /// Custom files: label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ttlora eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let mut inf = a.common.load()?;
    if let Some(name) = &a.task {
        let spec = data::task(name)?;
        let want = spec.labels.num_labels();
        if want != inf.task.num_labels {
            bail!(
                "--task {name} has {want} label(s), but the adapter's head has {} outputs",
                inf.task.num_labels
            );
        }
        inf.task.name = spec.name.to_string();
        inf.task.label_names = spec.class_names().iter().map(ToString::to_string).collect();
    }
    let task = &inf.task;
    let (examples, metrics, regression) = if task.name == "custom" {
        let Some(file) = &a.file else {
            bail!("this adapter was trained on custom files; pass --file with labelled examples");
        };
        let cols = CustomColumns {
            text: a.text_column.clone(),
            text_pair: a.text_pair_column.clone(),
            label: a.label_column.clone(),
        };
        let regression = task.label_names.is_empty();
        let kind = if regression {
            data::CustomLabels::Score
        } else {
            data::CustomLabels::Classes(task.label_names.clone())
        };
        let (ex, _) = data::read_custom(file, &cols, &kind)?;
        let loaded = finetune::load_task(&TaskSource::Custom {
            train: file.clone(),
            dev: file.clone(),
            columns: cols,
            regression,
        })?;
        (ex, loaded.metrics, regression)
    } else {
        let spec = data::task(&task.name)?;
        let ex = match &a.file {
            Some(f) => data::read_file(spec, f)?,
            None => {
                data::read_task_split(spec, &data::data_root(a.data.as_deref(), spec)?, a.split)?
            }
        };
        (ex, spec.metrics.to_vec(), spec.is_regression())
    };
    let split = finetune::encode_split(&inf.encoder, &examples, true)?;
    let device = ttlora::parse_device(&a.common.device)?;
    let scores = pipeline::evaluate(
        inf.model.as_ref(),
        &split,
        &metrics,
        regression,
        a.common.batch_size,
        inf.encoder.pad_id(),
        &device,
    )?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&scores)?)?;
    } else {
        let line: Vec<String> = scores.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        writeln!(
            out,
            "{} ({} examples): {}",
            task.name,
            examples.len(),
            line.join(", ")
        )?;
    }
    Ok(())
}

/// Label texts with a saved adapter.
///
/// Give one example with --text (and --text-pair for pair tasks), or a file: .txt (one text
/// per line) or .csv/.tsv/.jsonl with --text-column. Prints one tab-separated line per example:
/// the predicted label and its probability (or the score, for regression), then the text.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    common: AdapterArgs,
    /// A text to label.
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// The second text of a pair.
    #[arg(long, requires = "text")]
    text_pair: Option<String>,
    /// A file of texts.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Text column of a CSV/TSV/JSONL file.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Second text column for pairs.
    #[arg(long)]
    text_pair_column: Option<String>,
    /// Write the predictions to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs `ttlora predict`.
pub fn run_predict(a: PredictArgs) -> Result<()> {
    let examples: Vec<Example> = match (&a.text, &a.file) {
        (Some(t), _) => vec![Example {
            text_a: t.clone(),
            text_b: a.text_pair.clone(),
            label: None,
        }],
        (None, Some(f)) => data::read_texts(f, &a.text_column, a.text_pair_column.as_deref())?,
        (None, None) => bail!("give --text or --file"),
    };
    let inf = a.common.load()?;
    let device = ttlora::parse_device(&a.common.device)?;
    let split: EncodedSplit = finetune::encode_split(&inf.encoder, &examples, false)?;
    let logits = pipeline::logits(
        inf.model.as_ref(),
        &split,
        a.common.batch_size,
        inf.encoder.pad_id(),
        &device,
    )?;
    let regression = inf.task.label_names.is_empty();
    let mut lines = String::new();
    for (ex, row) in examples.iter().zip(&logits) {
        let text = match &ex.text_b {
            Some(b) => format!("{}\t{}", ex.text_a, b),
            None => ex.text_a.clone(),
        };
        if regression {
            lines.push_str(&format!(
                "{:.4}\t{text}\n",
                row.first().copied().unwrap_or(f32::NAN)
            ));
        } else {
            let probs = pipeline::softmax(row);
            let data::Label::Class(c) = pipeline::predicted_label(row, false) else {
                continue;
            };
            let name = inf
                .task
                .label_names
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| c.to_string());
            lines.push_str(&format!("{name}\t{:.4}\t{text}\n", probs[c as usize]));
        }
    }
    match &a.output {
        Some(path) => std::fs::write(path, lines)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(lines.as_bytes())?,
    }
    Ok(())
}
