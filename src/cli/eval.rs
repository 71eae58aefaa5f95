//! `ttlora eval` and `ttlora predict`: use a saved adapter.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::data::{self, CustomColumns, Example, Split};
use ttlora::jobs::eval::{self, Prediction, ScoreData};

use super::common::{DeviceArgs, JsonArgs, OfflineArgs, PoolingArgs, report_pooling};
use ttlora::jobs::inference::{self, Inference};

/// Where the base model and adapter come from (shared by eval and predict).
#[derive(Debug, Args)]
pub struct AdapterArgs {
    /// Adapter folder written by `ttlora train` (`eval` of a decoder base alone by LM
    /// scoring needs none).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Base model, overriding the one recorded in the adapter config.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    fetch: OfflineArgs,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    pooling: PoolingArgs,
}

impl AdapterArgs {
    fn load(&self) -> Result<Inference> {
        let device = self.device.device()?;
        let Some(adapter) = &self.adapter else {
            bail!(
                "give --adapter (or, for a decoder, --objective lm-score and a SuperGLUE --task)"
            );
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
    /// How a decoder is scored: `lm-score` gives each candidate answer of a SuperGLUE
    /// task (boolq, cb, copa, multirc, rte, wic, wsc) the mean log-probability of its tokens
    /// after the task's prompt (MeZO's templates) and predicts the best; the default without
    /// --adapter. Scores the base alone, or with a decoder adapter from --adapter.
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// LM scoring of a task of your own (`--task custom --file rows.jsonl`): the prompt, with
    /// each row's fields as `{field}` (`{{`/`}}` for literal braces), e.g.
    /// '{premise}\nQuestion: {hypothesis}? Yes or No?\n'.
    #[arg(long, value_name = "TEXT")]
    template: Option<String>,
    /// LM scoring, custom task: a candidate continuation of the prompt; repeat it for each
    /// (e.g. --candidate Yes --candidate No).
    #[arg(long = "candidate", value_name = "TEXT")]
    candidates: Vec<String>,
    /// LM scoring, custom task: the value of --label-column meaning each candidate, in the
    /// candidates' order; repeat it (default: 0, 1, …).
    #[arg(long = "label-value", value_name = "VALUE")]
    label_values: Vec<String>,
    /// LM scoring: examples drawn (seeded, without replacement) from the split; all of it
    /// when smaller.
    #[arg(long, default_value_t = 1000)]
    max_examples: usize,
    /// LM scoring: the seed of that draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    output: JsonArgs,
}

/// How `eval` scores a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    /// A decoder's candidate answers by mean log-probability.
    LmScore,
}

/// Runs `ttlora eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    if a.objective == Some(Objective::LmScore) || a.common.adapter.is_none() {
        return run_lm_score(&a);
    }
    let mut inf = a.common.load()?;
    let data = match &a.file {
        Some(path) => ScoreData::File {
            path: path.clone(),
            columns: CustomColumns {
                text: a.text_column.clone(),
                text_pair: a.text_pair_column.clone(),
                label: a.label_column.clone(),
            },
        },
        None => ScoreData::Split {
            root: a.data.clone(),
            split: a.split,
        },
    };
    let device = a.common.device.device()?;
    let scores = eval::score(
        &mut inf,
        a.task.as_deref(),
        &data,
        a.common.batch_size,
        &device,
    )?;
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&scores.metrics)?)?;
    } else {
        let line: Vec<String> = scores
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        writeln!(
            out,
            "{} ({} examples): {}",
            scores.task,
            scores.examples,
            line.join(", ")
        )?;
    }
    Ok(())
}

/// `eval --objective lm-score`: a decoder (with an adapter, or alone) on a SuperGLUE task.
fn run_lm_score(a: &EvalArgs) -> Result<()> {
    use ttlora::data::{PromptedTask, read_prompted};
    let Some(task) = a.task.as_deref() else {
        bail!(
            "--objective lm-score needs --task (boolq, cb, copa, multirc, rte, wic, wsc, or \
             custom with --template and --file)"
        );
    };
    if a.max_examples == 0 {
        bail!("--max-examples must be at least 1");
    }
    if task == "custom" {
        let (Some(template), Some(file)) = (&a.template, &a.file) else {
            bail!("--task custom needs --template and --file (JSON Lines)");
        };
        let label_values = (!a.label_values.is_empty()).then(|| a.label_values.clone());
        let template = ttlora::data::CustomTemplate::new(
            template,
            a.candidates.clone(),
            &a.label_column,
            label_values,
        )?;
        let examples = ttlora::data::read_custom_prompted(&template, file)?;
        return lm_score_examples(a, None, examples, file);
    }
    if a.template.is_some() || !a.candidates.is_empty() || !a.label_values.is_empty() {
        bail!(
            "--template, --candidate and --label-value are for --task custom; {task} has its \
             own template (README: SuperGLUE on decoders)"
        );
    }
    let task: PromptedTask = task.parse()?;
    let file = match &a.file {
        Some(f) => f.clone(),
        None => {
            let name = match a.split {
                Split::Dev => "val.jsonl",
                Split::Train => "train.jsonl",
                other => bail!(
                    "--split {} is not a SuperGLUE split (dev or train)",
                    other.name()
                ),
            };
            let roots = match &a.data {
                Some(root) => vec![root.clone()],
                None => data::default_data_roots(),
            };
            let rel = PathBuf::from("superglue").join(task.folder()).join(name);
            roots
                .iter()
                .map(|r| r.join(&rel))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "no {} under any data root; give --data DIR or --file",
                        rel.display()
                    )
                })?
        }
    };
    let examples = read_prompted(task, &file)?;
    lm_score_examples(a, Some(task), examples, &file)
}

/// Loads the decoder (and adapter) and scores `examples` of `task` (`None`: custom).
fn lm_score_examples(
    a: &EvalArgs,
    task: Option<ttlora::data::PromptedTask>,
    examples: Vec<ttlora::data::PromptedExample>,
    file: &std::path::Path,
) -> Result<()> {
    use ttlora::jobs::generate::{BaseDtype, Generator, decoder_location};
    use ttlora::jobs::lm_score;
    let examples = lm_score::sample_examples(examples, a.max_examples, a.seed);
    let device = a.common.device.device()?;
    let allow_fetch = !a.common.fetch.offline;
    let g = match (&a.common.adapter, &a.common.model) {
        (Some(adapter), model) => Generator::with_adapter(
            adapter,
            model.as_deref(),
            &device,
            allow_fetch,
            BaseDtype::default(),
        )?,
        (None, Some(model)) => Generator::load_with(
            &decoder_location(model, allow_fetch)?,
            &device,
            BaseDtype::default(),
        )?,
        (None, None) => bail!("give --model (a decoder) or --adapter"),
    };
    let bar = indicatif::ProgressBar::new(examples.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let name = task.map_or("custom", |t| t.name());
    bar.set_message(format!("scoring {name}"));
    let report = lm_score::evaluate(&g, task, &examples, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let line: Vec<String> = report
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        writeln!(
            out,
            "{} ({} examples of {}): {}",
            report.task,
            report.examples,
            file.display(),
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
    let device = a.common.device.device()?;
    let predictions = eval::predict(&inf, &examples, a.common.batch_size, &device)?;
    let mut lines = String::new();
    for (ex, p) in examples.iter().zip(&predictions) {
        let text = match &ex.text_b {
            Some(b) => format!("{}\t{}", ex.text_a, b),
            None => ex.text_a.clone(),
        };
        match p {
            Prediction::Score(s) => lines.push_str(&format!("{s:.4}\t{text}\n")),
            Prediction::Class { label, probability } => {
                lines.push_str(&format!("{label}\t{probability:.4}\t{text}\n"));
            }
        }
    }
    match &a.output {
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
