//! `ttlora eval` and `ttlora predict` on prompted tasks with a decoder: LM scoring of each
//! candidate answer (the base alone, or with an adapter) and decoder classifiers (a `score`
//! head trained with `train --objective classify`).

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use candle_core::Device;
use ttlora::data::{PromptedExample, PromptedTask, Split};
use ttlora::io::{AdapterFolder, TaskInfo};
use ttlora::jobs::generate::{BaseDtype, Generator, decoder_location};
use ttlora::jobs::lm_score;
use ttlora::jobs::prompted_train::{ChoiceLoss, Prepared, PromptedObjective};

use super::common::{ObjectiveArg, TemplateArgs, data_roots};
use super::eval_args::{AdapterArgs, EvalArgs, PredictArgs, metrics_line, write_lines};

/// The SuperGLUE tasks a decoder scores, for messages.
const TASKS: &str = "boolq, cb, copa, multirc, rte, wic, wsc, or custom with --template";

/// Whether `task` names a prompted task: a SuperGLUE one or `custom`.
pub(super) fn is_prompted_task(task: Option<&str>) -> bool {
    task.is_some_and(|t| t == "custom" || t.parse::<PromptedTask>().is_ok())
}

/// The adapter folder of --adapter, when given.
fn read_adapter(common: &AdapterArgs, device: &Device) -> Result<Option<AdapterFolder>> {
    Ok(match &common.adapter {
        Some(dir) => Some(AdapterFolder::read(dir, device)?),
        None => None,
    })
}

/// The decoder to score with: `folder`'s adapter on its recorded base (or --model), or the
/// base from --model alone.
fn load_decoder(
    common: &AdapterArgs,
    folder: Option<&AdapterFolder>,
    device: &Device,
) -> Result<Generator> {
    let allow_fetch = !common.fetch.offline;
    Ok(match (folder, &common.adapter, &common.model) {
        (Some(folder), Some(dir), model) => Generator::with_adapter_folder(
            folder,
            dir,
            model.as_deref(),
            device,
            allow_fetch,
            BaseDtype::default(),
        )?,
        (None, _, Some(model)) => Generator::load_with(
            &decoder_location(model, allow_fetch)?,
            device,
            BaseDtype::default(),
        )?,
        _ => bail!("give --model (a decoder) or --adapter"),
    })
}

/// How a loaded decoder scores: with its `score` head when it has one, else by LM scoring;
/// `asked` (--objective) must agree.
fn objective_of(g: &Generator, asked: Option<ObjectiveArg>) -> Result<PromptedObjective> {
    match (g.model.score_labels(), asked) {
        (Some(_), Some(ObjectiveArg::LmScore)) => bail!(
            "this adapter classifies with a `score` head (trained with --objective classify); \
             drop --objective lm-score"
        ),
        (Some(_), _) => Ok(PromptedObjective::Classify { train_head: false }),
        (None, Some(ObjectiveArg::Classify)) => bail!(
            "--objective classify scores a decoder adapter trained with a `score` head \
             (`train --objective classify`); this model has none"
        ),
        (None, _) => Ok(PromptedObjective::LmScore(ChoiceLoss::Candidates)),
    }
}

/// The length prompts are cut to: --max-len (`given`), else the adapter's recorded one;
/// either is checked against `g`'s context.
fn max_len_of(
    g: &Generator,
    given: Option<usize>,
    recorded: Option<&TaskInfo>,
) -> Result<Option<usize>> {
    let context = g.decoder().config().max_position_embeddings;
    let model = g.path.display();
    match (given, recorded.map(|t| t.max_len)) {
        (Some(0), _) => bail!("--max-len must be at least 1"),
        (Some(n), _) if n > context => {
            bail!("--max-len {n} is past the context of {model} ({context} tokens)")
        }
        (None, Some(n)) if n > context => bail!(
            "the adapter was trained with --max-len {n}, past the context of {model} \
             ({context} tokens): give a smaller --max-len"
        ),
        (given, recorded) => Ok(given.or(recorded)),
    }
}

/// Prompts are cut to --max-len, else to the adapter's recorded --max-len, else to `g`'s
/// context.
fn cut_length(g: &Generator, given: Option<usize>, recorded: Option<&TaskInfo>) -> Result<usize> {
    let max_len = max_len_of(g, given, recorded)?;
    Ok(max_len.unwrap_or(g.decoder().config().max_position_embeddings))
}

/// Logs how many prompts lost their start to `max_len`.
fn report_cut(cut: usize, max_len: usize) {
    if cut > 0 {
        tracing::warn!(
            "{cut} examples were longer than {max_len} tokens: their prompts lost their start \
             (left truncation; the question and the answers are kept)"
        );
    }
}

/// `eval` of a decoder (with an adapter, or alone) on a prompted task.
pub(super) fn run_eval(a: &EvalArgs) -> Result<()> {
    let Some(task) = a.task.as_deref() else {
        bail!("scoring a decoder needs --task ({TASKS} and --file)");
    };
    if a.max_examples == Some(0) {
        bail!("--max-examples must be at least 1");
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
        let template = a.decoder.template.custom(&a.label_column)?;
        let examples = ttlora::data::read_custom_prompted(&template, file)?;
        return score_examples(a, None, examples, file);
    }
    refuse_template(&a.decoder.template, task)?;
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
    let examples = ttlora::data::read_prompted(task, &file)?;
    score_examples(a, Some(task), examples, &file)
}

/// A task's own template leaves no room for --template, --candidate or --label-value.
fn refuse_template(template: &TemplateArgs, task: &str) -> Result<()> {
    if template.given() {
        bail!(
            "--template, --candidate and --label-value are for --task custom; {task} has its \
             own template (README: SuperGLUE on decoders)"
        );
    }
    Ok(())
}

/// Loads the decoder (and adapter) and scores `examples` of `task` (`None`: custom).
fn score_examples(
    a: &EvalArgs,
    task: Option<PromptedTask>,
    examples: Vec<PromptedExample>,
    file: &Path,
) -> Result<()> {
    let examples = lm_score::sample_examples(
        examples,
        a.max_examples.unwrap_or(1000),
        a.seed.unwrap_or(0),
    );
    let device = a.common.device.device()?;
    let folder = read_adapter(&a.common, &device)?;
    let recorded = folder.as_ref().and_then(|f| f.config.task.clone());
    let g = load_decoder(&a.common, folder.as_ref(), &device)?;
    let objective = objective_of(&g, a.decoder.objective)?;
    let bar = indicatif::ProgressBar::new(examples.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let name = task.map_or("custom", |t| t.name());
    bar.set_message(format!("scoring {name}"));
    let report = match (objective, g.model.score_labels()) {
        // A decoder with a trained classification head: its head picks the class.
        (PromptedObjective::Classify { .. }, Some(classes)) => {
            let max_len = cut_length(&g, a.decoder.max_len, recorded.as_ref())?;
            let (prepared, cut) = Prepared::new(&g, objective, examples, max_len)?;
            report_cut(cut, max_len);
            check_classes(classes, recorded.as_ref(), &prepared, name)?;
            bar.set_length(prepared.len() as u64);
            let preds = prepared.predict(&g.model, 16, g.pad_id(), &device)?;
            bar.set_position(prepared.len() as u64);
            lm_score::report(task, &prepared.examples(), &preds)?
        }
        // LM scoring cuts only where asked (or the adapter was trained so): the zero-shot
        // protocol scores whole prompts, and one past the context is refused by name.
        _ => {
            let max_len = max_len_of(&g, a.decoder.max_len, recorded.as_ref())?;
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
    recorded: Option<&TaskInfo>,
    prepared: &Prepared,
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

/// `predict` on a prompted task with a decoder (the base alone by LM scoring, or with an
/// adapter): one line per example (per answer option for MultiRC): the row's `idx` (its line
/// number when it has none), the predicted answer, its probability among the candidates
/// (softmax over the head's logits, or over the candidates' mean log-probabilities), the
/// prompt.
pub(super) fn run_predict(a: &PredictArgs) -> Result<()> {
    let ignored = [
        ("--text", a.text.is_some()),
        ("--text-column", a.text_column != "text"),
        ("--text-pair-column", a.text_pair_column.is_some()),
        ("--pooling", a.common.pooling.pooling.is_some()),
        ("--no-merge", a.no_merge),
    ];
    if let Some((flag, _)) = ignored.iter().find(|(_, given)| *given) {
        bail!("{flag} does not apply to a decoder: give --file with the task's JSON Lines rows");
    }
    let Some(file) = &a.file else {
        bail!("a decoder predicts on --file: JSON Lines rows of its task");
    };
    let device = a.common.device.device()?;
    let folder = read_adapter(&a.common, &device)?;
    let recorded = folder.as_ref().and_then(|f| f.config.task.clone());
    let Some(task) = a.task.clone().or(recorded.as_ref().map(|t| t.name.clone())) else {
        bail!("give --task ({TASKS}): no adapter records one");
    };
    let examples = read_unlabeled(&task, &a.decoder.template, file)?;
    let g = load_decoder(&a.common, folder.as_ref(), &device)?;
    let objective = objective_of(&g, a.decoder.objective)?;
    let max_len = cut_length(&g, a.decoder.max_len, recorded.as_ref())?;
    let (prepared, cut) = Prepared::new(&g, objective, examples, max_len)?;
    report_cut(cut, max_len);
    if let Some(classes) = g.model.score_labels() {
        check_classes(classes, recorded.as_ref(), &prepared, &task)?;
    }
    let batch = a.common.batch_size.unwrap_or(16);
    let scores = prepared.scores(&g.model, batch, g.pad_id(), &device)?;
    let mut lines = String::new();
    for (e, s) in prepared.examples().iter().zip(&scores) {
        let best = lm_score::best_candidate(s);
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

/// The rows of `file` for `task` (a SuperGLUE task, or `custom` with `template`), labels
/// optional.
fn read_unlabeled(
    task: &str,
    template: &TemplateArgs,
    file: &Path,
) -> Result<Vec<PromptedExample>> {
    if task == "custom" {
        let template = template.custom("label")?;
        return Ok(ttlora::data::read_custom_prompted_unlabeled(
            &template, file,
        )?);
    }
    refuse_template(template, task)?;
    Ok(ttlora::data::read_prompted_unlabeled(task.parse()?, file)?)
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
