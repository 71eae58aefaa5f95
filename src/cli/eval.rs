//! `ttlora eval` and `ttlora predict` with an encoder adapter; a decoder on a prompted task
//! goes to `prompted.rs`.

use std::io::Write;

use anyhow::{Result, bail};
use ttlora::data::{self, CustomColumns, Example};
use ttlora::jobs::eval::{self, Prediction, ScoreData};
use ttlora::jobs::inference::Merged;

use super::eval_args::{EvalArgs, PredictArgs, metrics_line, write_lines};
use super::prompted;

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
    let lm_task = prompted::is_prompted_task(a.task.as_deref());
    if a.decoder.objective.is_some() || (lm_task && (a.common.adapter.is_none() || decoder_adapter))
    {
        return prompted::run_eval(&a);
    }
    if a.common.adapter.is_none() {
        bail!(
            "give --adapter DIR (a folder `ttlora train` wrote), or --model and a SuperGLUE \
             --task (boolq, cb, copa, multirc, rte, wic, wsc) to score a decoder by LM scoring"
        );
    }
    let lm_only = [
        ("--max-examples", a.max_examples.is_some()),
        ("--seed", a.seed.is_some()),
    ];
    let flag = a.decoder.given().or_else(|| {
        let given = lm_only.iter().find(|(_, given)| *given);
        given.map(|(flag, _)| *flag)
    });
    if let Some(flag) = flag {
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

/// Runs `ttlora predict`.
pub fn run_predict(a: PredictArgs) -> Result<()> {
    let decoder_adapter = match &a.common.adapter {
        Some(dir) => ttlora::jobs::export::is_decoder_adapter(dir)?,
        None => false,
    };
    let lm_task = prompted::is_prompted_task(a.task.as_deref());
    if decoder_adapter || (a.common.adapter.is_none() && (lm_task || a.decoder.objective.is_some()))
    {
        return prompted::run_predict(&a);
    }
    if a.common.adapter.is_none() {
        bail!(
            "give --adapter DIR (a folder `ttlora train` wrote), or --model DECODER with \
             --task (boolq, cb, copa, multirc, rte, wic, wsc, custom) to predict by LM scoring"
        );
    }
    let task = a.task.is_some().then_some("--task");
    if let Some(flag) = task.or(a.decoder.given()) {
        bail!("{flag} is for a decoder on a prompted task, not for an encoder's adapter");
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
