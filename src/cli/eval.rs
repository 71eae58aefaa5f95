//! `ttlora eval` and `ttlora predict`: use a saved adapter.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::data::{self, CustomColumns, Example, Split};
use ttlora::jobs::eval::{self, Prediction, ScoreData};

use super::common::{
    DeviceArgs, JsonArgs, ObjectiveArg, OfflineArgs, PoolingArgs, TemplateArgs, data_roots,
    report_pooling,
};
use ttlora::jobs::inference::{self, Inference, Merged};

/// Where the base model and adapter come from (shared by eval and predict).
#[derive(Debug, Args)]
pub struct AdapterArgs {
    /// Adapter folder written by `ttlora train` (`eval` of a decoder base alone by LM
    /// scoring needs none).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Base model, overriding the one recorded in the adapter config; for LM scoring with no
    /// --adapter, the decoder to score.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    fetch: OfflineArgs,
    /// Examples per forward pass [default: 64; 16 for decoder adapters on prompted tasks]
    /// (not for `eval` by LM scoring, which runs one example at a time).
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    pooling: PoolingArgs,
}

impl AdapterArgs {
    fn load(&self) -> Result<Inference> {
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
    /// `classify`: a decoder adapter trained with a `score` head (the default for one).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    #[command(flatten)]
    template: TemplateArgs,
    /// LM scoring and decoder classifiers: cut prompts longer than N tokens from the left
    /// (keeping the question and answers), as `train --max-len` did [default: the adapter's
    /// recorded --max-len; with no adapter, no cut (a prompt past the context is refused)].
    #[arg(long, value_name = "N")]
    max_len: Option<usize>,
    /// LM scoring: examples drawn (seeded, without replacement; MultiRC a whole question at
    /// a time) from the split; all of it when smaller [default: 1000].
    #[arg(long)]
    max_examples: Option<usize>,
    /// LM scoring: the seed of that draw [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    output: JsonArgs,
}

/// Runs `ttlora eval`.
pub fn run_eval(mut a: EvalArgs) -> Result<()> {
    let decoder_adapter = match &a.common.adapter {
        Some(dir) => ttlora::jobs::export::is_decoder_adapter(dir).unwrap_or(false),
        None => false,
    };
    // A decoder adapter trained on a prompted task records it.
    if decoder_adapter
        && a.task.is_none()
        && let Some(dir) = &a.common.adapter
    {
        let folder = ttlora::io::AdapterFolder::read(dir, &candle_core::Device::Cpu)?;
        a.task = folder.config.task.map(|t| t.name);
        if a.task.as_deref() == Some("custom") {
            bail!(
                "{} was trained on a custom template: give --task custom with --template, the \
                 --candidate answers and --file",
                dir.display()
            );
        }
    }
    let lm_task = a
        .task
        .as_deref()
        .is_some_and(|t| t == "custom" || t.parse::<ttlora::data::PromptedTask>().is_ok());
    if a.objective.is_some() || (lm_task && (a.common.adapter.is_none() || decoder_adapter)) {
        return run_lm_score(&a);
    }
    if a.common.adapter.is_none() {
        bail!(
            "give --adapter DIR (a folder `ttlora train` wrote), or --model and a SuperGLUE \
             --task (boolq, cb, copa, multirc, rte, wic, wsc) to score a decoder by LM scoring"
        );
    }
    let lm_only = [
        (
            "--template, --candidate or --label-value",
            a.template.given(),
        ),
        ("--max-examples", a.max_examples.is_some()),
        ("--max-len", a.max_len.is_some()),
        ("--seed", a.seed.is_some()),
    ];
    if let Some((flag, _)) = lm_only.iter().find(|(_, given)| *given) {
        bail!("{flag} is for LM scoring (--objective lm-score), not for a classifier's adapter");
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
        a.common.batch_size.unwrap_or(64),
        &device,
    )?;
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&scores.metrics)?)?;
    } else {
        let line = metrics_line(&scores.metrics);
        writeln!(
            out,
            "{} ({} examples): {line}",
            scores.task, scores.examples
        )?;
    }
    Ok(())
}

/// `accuracy 0.8125, f1 0.8571`: metrics for a terminal line.
fn metrics_line(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    parts.join(", ")
}

/// `eval --objective lm-score`: a decoder (with an adapter, or alone) on a SuperGLUE task.
fn run_lm_score(a: &EvalArgs) -> Result<()> {
    use ttlora::data::{PromptedTask, read_prompted};
    let Some(task) = a.task.as_deref() else {
        bail!(
            "scoring a decoder needs --task (boolq, cb, copa, multirc, rte, wic, wsc, or \
             custom with --template and --file)"
        );
    };
    if a.max_examples == Some(0) || a.max_len == Some(0) {
        bail!("--max-examples and --max-len must be at least 1");
    }
    let ignored = [
        ("--batch-size", a.common.batch_size.is_some()),
        ("--text-column", a.text_column != "text"),
        ("--text-pair-column", a.text_pair_column.is_some()),
        (
            "--label-column",
            a.label_column != "label" && task != "custom",
        ),
        ("--split", a.split != Split::Dev && a.file.is_some()),
        ("--data", a.data.is_some() && a.file.is_some()),
    ];
    if let Some((flag, _)) = ignored.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} does not apply to LM scoring here (a task's template reads its own fields; \
             --file names the file, --split and --data find a task's own)"
        );
    }
    if task == "custom" {
        let Some(file) = &a.file else {
            bail!("--task custom needs --template and --file (JSON Lines)");
        };
        let template = a.template.custom(&a.label_column)?;
        let examples = ttlora::data::read_custom_prompted(&template, file)?;
        return lm_score_examples(a, None, examples, file);
    }
    if a.template.given() {
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
                Split::Dev => "val",
                Split::Train => "train",
                other => bail!(
                    "--split {} is not a SuperGLUE split (dev or train)",
                    other.name()
                ),
            };
            task.split_file(name, &data_roots(a.data.as_deref()))?
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
    let examples = lm_score::sample_examples(
        examples,
        a.max_examples.unwrap_or(1000),
        a.seed.unwrap_or(0),
    );
    let device = a.common.device.device()?;
    let allow_fetch = !a.common.fetch.offline;
    let mut recorded = None;
    let g = match (&a.common.adapter, &a.common.model) {
        (Some(adapter), model) => {
            let folder = ttlora::io::AdapterFolder::read(adapter, &device)?;
            recorded = folder.config.task.clone();
            Generator::with_adapter_folder(
                &folder,
                adapter,
                model.as_deref(),
                &device,
                allow_fetch,
                BaseDtype::default(),
            )?
        }
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
    let report = match g.model.score_labels() {
        // A decoder with a trained classification head: its head picks the class.
        Some(classes) => {
            if a.objective == Some(ObjectiveArg::LmScore) {
                bail!(
                    "this adapter classifies with a `score` head (trained with --objective \
                     classify); drop --objective lm-score"
                );
            }
            use ttlora::jobs::prompted_train::{Prepared, PromptedObjective};
            let max_len = a
                .max_len
                .or(recorded.as_ref().map(|t| t.max_len))
                .unwrap_or(g.decoder().config().max_position_embeddings);
            let objective = PromptedObjective::Classify { train_head: false };
            let (prepared, _) = Prepared::new(&g, objective, examples, max_len)?;
            check_classes(classes, recorded.as_ref(), &prepared, name)?;
            bar.set_length(prepared.len() as u64);
            let preds = prepared.predict(&g.model, 16, g.pad_id(), &device)?;
            bar.set_position(prepared.len() as u64);
            lm_score::report(task, &prepared.examples(), &preds)?
        }
        None if a.objective == Some(ObjectiveArg::Classify) => bail!(
            "--objective classify scores a decoder adapter trained with a `score` head \
             (`train --objective classify`); this model has none"
        ),
        None => {
            let max_len = a.max_len.or(recorded.as_ref().map(|t| t.max_len));
            lm_score::evaluate(&g, task, &examples, max_len, &mut || bar.inc(1))?
        }
    };
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let line = metrics_line(&report.metrics);
        let (task, n) = (&report.task, report.examples);
        writeln!(out, "{task} ({n} examples of {}): {line}", file.display())?;
    }
    Ok(())
}

/// A decoder classifier's head fits `prepared`: as many classes as candidates, and class c
/// is the c-th answer it was trained with (RTE's "Yes", "No" are BoolQ's "No", "Yes" swapped).
fn check_classes(
    classes: usize,
    recorded: Option<&ttlora::io::TaskInfo>,
    prepared: &ttlora::jobs::prompted_train::Prepared,
    name: &str,
) -> Result<()> {
    if prepared.classes() != classes {
        bail!(
            "the adapter's head has {classes} classes; {name}'s examples have {} candidates",
            prepared.classes()
        );
    }
    if let (Some(t), Some(e)) = (recorded, prepared.examples().first())
        && !t.label_names.is_empty()
        && t.label_names != e.candidates
    {
        bail!(
            "the adapter's classes are {:?} ({}); {name}'s answers are {:?}",
            t.label_names,
            t.name,
            e.candidates
        );
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
    /// Keep the adapter separate from the base weights. By default an encoder adapter whose
    /// update is a weight matrix (LoRA, TT-LoRA, LoRETTA, …) is merged into the frozen
    /// weights first, so predicting costs what the base model costs; the probabilities
    /// differ from the unmerged model's by float rounding only.
    #[arg(long)]
    no_merge: bool,
    /// A decoder adapter trained on a prompted task (`train --objective lm-score|classify`):
    /// the task whose rows --file holds (official JSONL; labels may be missing, as in
    /// SuperGLUE's test files) [default: the one the adapter records].
    #[arg(long)]
    task: Option<String>,
    /// A decoder adapter: cut prompts longer than N tokens from the left [default: the
    /// adapter's recorded --max-len].
    #[arg(long, value_name = "N")]
    max_len: Option<usize>,
}

/// `predict` with a decoder adapter on a prompted task: one line per example (per answer
/// option for MultiRC): the row's `idx` (its line number when it has none), the predicted
/// answer, its probability among the candidates (softmax over the head's logits, or over the
/// candidates' mean log-probabilities), the prompt.
fn run_prompted_predict(a: &PredictArgs, adapter: &std::path::Path) -> Result<()> {
    use ttlora::jobs::generate::{BaseDtype, Generator};
    use ttlora::jobs::prompted_train::{ChoiceLoss, Prepared, PromptedObjective};
    let ignored = [
        ("--text", a.text.is_some()),
        ("--text-column", a.text_column != "text"),
        ("--text-pair-column", a.text_pair_column.is_some()),
        ("--pooling", a.common.pooling.pooling.is_some()),
        ("--no-merge", a.no_merge),
    ];
    if let Some((flag, _)) = ignored.iter().find(|(_, given)| *given) {
        bail!("{flag} does not apply to a decoder adapter: give --file with the task's JSONL rows");
    }
    let Some(file) = &a.file else {
        bail!("a decoder adapter predicts on --file: JSON Lines rows of its task");
    };
    if a.max_len == Some(0) {
        bail!("--max-len must be at least 1");
    }
    let device = a.common.device.device()?;
    let folder = ttlora::io::AdapterFolder::read(adapter, &device)?;
    let recorded = folder.config.task.clone();
    let Some(task) = a.task.clone().or(recorded.as_ref().map(|t| t.name.clone())) else {
        bail!("the adapter records no task: give --task (boolq, cb, copa, multirc, rte, wic, wsc)");
    };
    let task: ttlora::data::PromptedTask = task.parse()?;
    let examples = ttlora::data::read_prompted_unlabeled(task, file)?;
    let g = Generator::with_adapter_folder(
        &folder,
        adapter,
        a.common.model.as_deref(),
        &device,
        !a.common.fetch.offline,
        BaseDtype::default(),
    )?;
    let objective = match g.model.score_labels() {
        Some(_) => PromptedObjective::Classify { train_head: false },
        None => PromptedObjective::LmScore(ChoiceLoss::Candidates),
    };
    let max_len = a
        .max_len
        .or(recorded.as_ref().map(|t| t.max_len))
        .unwrap_or(g.decoder().config().max_position_embeddings);
    let (prepared, _) = Prepared::new(&g, objective, examples, max_len)?;
    if let Some(classes) = g.model.score_labels() {
        check_classes(classes, recorded.as_ref(), &prepared, task.name())?;
    }
    let batch = a.common.batch_size.unwrap_or(16);
    let scores = prepared.scores(&g.model, batch, g.pad_id(), &device)?;
    let mut lines = String::new();
    for (e, s) in prepared.examples().iter().zip(&scores) {
        let best = ttlora::jobs::lm_score::best_candidate(s);
        let max = s[best];
        let z: f64 = s.iter().map(|v| (v - max).exp()).sum();
        let prompt = e.prompt.trim_end().replace(['\n', '\t'], " ");
        lines.push_str(&format!(
            "{}\t{}\t{:.4}\t{prompt}\n",
            e.id,
            e.candidates[best],
            1.0 / z
        ));
    }
    write_lines(a.output.as_deref(), lines)
}

/// Writes `lines` to `output` (atomically for a regular file) or stdout.
fn write_lines(output: Option<&std::path::Path>, lines: String) -> Result<()> {
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

/// Runs `ttlora predict`.
pub fn run_predict(a: PredictArgs) -> Result<()> {
    if let Some(adapter) = &a.common.adapter
        && ttlora::jobs::export::is_decoder_adapter(adapter)?
    {
        return run_prompted_predict(&a, adapter);
    }
    if a.task.is_some() || a.max_len.is_some() {
        bail!("--task and --max-len are for a decoder adapter trained on a prompted task");
    }
    let examples: Vec<Example> = match (&a.text, &a.file) {
        (Some(t), _) => vec![Example {
            text_a: t.clone(),
            text_b: a.text_pair.clone(),
            label: None,
        }],
        (None, Some(f)) => data::read_texts(f, &a.text_column, a.text_pair_column.as_deref())?,
        (None, None) => bail!("give --text or --file"),
    };
    let mut inf = a.common.load()?;
    if !a.no_merge {
        match inf.merge_for_prediction()? {
            // Full fine-tuning: the weights are the trained ones, nothing to merge.
            Merged::Layers(0) => {}
            Merged::Layers(n) => tracing::info!("adapter merged into {n} layers' weights"),
            Merged::Kept(why) => tracing::info!("adapter kept separate ({why})"),
        }
    }
    let device = a.common.device.device()?;
    let predictions = eval::predict(&inf, &examples, a.common.batch_size.unwrap_or(64), &device)?;
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
    write_lines(a.output.as_deref(), lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttlora::data::PromptedExample;
    use ttlora::jobs::prompted_train::{ClassExample, Prepared};

    /// A classifier is refused on answers other than its classes, in another order included.
    #[test]
    fn a_classifier_is_refused_on_another_tasks_answers() {
        let examples = |answers: &[&str]| {
            Prepared::Classed(vec![ClassExample {
                example: PromptedExample {
                    prompt: "p".into(),
                    candidates: answers.iter().map(|a| a.to_string()).collect(),
                    gold: 0,
                    group: None,
                    id: "0".into(),
                },
                ids: vec![1, 2],
            }])
        };
        let rte = ttlora::io::TaskInfo {
            name: "rte".into(),
            label_names: vec!["Yes".into(), "No".into()],
            num_labels: 2,
            pooling: ttlora::io::Pooling::LastToken,
            max_len: 256,
        };
        assert!(check_classes(2, Some(&rte), &examples(&["Yes", "No"]), "rte").is_ok());
        let err = check_classes(2, Some(&rte), &examples(&["No", "Yes"]), "boolq").unwrap_err();
        assert!(err.to_string().contains("boolq's answers are"), "{err}");
        let err = check_classes(3, Some(&rte), &examples(&["Yes", "No"]), "rte").unwrap_err();
        assert!(err.to_string().contains("3 classes"), "{err}");
    }
}
