//! Scoring a prompt's candidate continuations with a decoder, as MeZO and LoRETTA evaluate
//! SuperGLUE: a candidate's score is the mean log-probability of its tokens given the prompt,
//! the prediction the best-scoring candidate.
//!
//! The prompt runs once: its tokens go through the model with a KV cache, and each candidate
//! continues a copy of that cache with its own tokens. A candidate of one token (CB's "Yes",
//! "No", "Maybe") is read off the prompt's last logits, so k such candidates cost one forward
//! pass, not k.

use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

use crate::data::{Label, Metric, PromptedExample, PromptedTask, compute, multirc_scores};
use crate::error::{Error, Result};
use crate::jobs::generate::Generator;
use crate::models::llama::{KvCache, Llama};

/// One example's token ids for scoring: the ids every candidate shares, then each candidate's
/// own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateIds {
    /// The ids all candidates start with (the prompt's, up to the first that differs).
    pub shared: Vec<u32>,
    /// Each candidate's ids after `shared`.
    pub rest: Vec<Vec<u32>>,
    /// How many of the last ids of each `rest` are the candidate's own (the scored ones; the
    /// ids before them belong to the prompt).
    pub scored: Vec<usize>,
    /// How many of `shared`'s first ids are special tokens (a BOS, added by us or by the
    /// tokenizer) that truncation keeps.
    pub lead: usize,
}

impl CandidateIds {
    /// Tokenizes `prompt + candidate` for each candidate (no special tokens; `bos` in front
    /// when the model expects one). A candidate's tokens are those that end past the prompt,
    /// so a token spanning the boundary (COPA's prompt ends with a space that the candidate's
    /// first word takes) counts as the candidate's.
    ///
    /// # Errors
    /// A tokenizer failure; a candidate with no token of its own; nothing before the first
    /// candidate token to predict it from (an empty prompt without a BOS token).
    pub fn tokenize(
        tokenizer: &Tokenizer,
        bos: Option<u32>,
        prompt: &str,
        candidates: &[String],
    ) -> Result<Self> {
        let prompt_chars = prompt.chars().count();
        let mut full = Vec::with_capacity(candidates.len());
        let mut first_scored = Vec::with_capacity(candidates.len());
        let mut lead = 0;
        for candidate in candidates {
            let (ids, ends, specials) = encode(tokenizer, bos, &format!("{prompt}{candidate}"))?;
            lead = specials;
            match ends.iter().position(|&stop| stop > prompt_chars) {
                Some(at) => first_scored.push(at),
                None => {
                    return Err(scoring_error(format!(
                        "the candidate \"{candidate}\" adds no token to the prompt"
                    )));
                }
            }
            full.push(ids);
        }
        let Some(first) = full.first() else {
            return Err(scoring_error("an example with no candidates"));
        };
        // The shared part: the longest common prefix, stopping before any candidate's own
        // tokens (and leaving at least one token to predict from).
        let mut shared = first_scored.iter().copied().min().unwrap_or(0);
        for ids in &full[1..] {
            shared = shared.min(first.iter().zip(ids).take_while(|(a, b)| a == b).count());
        }
        if shared == 0 {
            return Err(scoring_error(
                "nothing before the candidates' first token to predict it from (the prompt \
                 adds no token of its own and there is no BOS token)",
            ));
        }
        Ok(Self {
            shared: first[..shared].to_vec(),
            scored: full
                .iter()
                .zip(&first_scored)
                .map(|(ids, &at)| ids.len() - at)
                .collect(),
            rest: full.iter().map(|ids| ids[shared..].to_vec()).collect(),
            lead: lead.min(shared),
        })
    }
}

/// `text`'s ids as training and generation see a prompt, with each id's end as a char
/// offset, and how many of the first ids are special tokens: the tokenizer's own special
/// tokens (an HF LLaMA tokenizer's post-processor adds `<s>`) lead and are kept (offset 0),
/// trailing ones (an EOS or `[SEP]`) are dropped, and `bos` goes in front only when the
/// tokenizer did not add it.
///
/// # Errors
/// A tokenizer failure.
pub fn encode(
    tokenizer: &Tokenizer,
    bos: Option<u32>,
    text: &str,
) -> Result<(Vec<u32>, Vec<usize>, usize)> {
    let enc = tokenizer
        .encode_char_offsets(text, true)
        .map_err(|e| scoring_error(format!("cannot tokenize \"{text}\": {e}")))?;
    let special = enc.get_special_tokens_mask();
    let lead = special.iter().take_while(|&&m| m == 1).count();
    let end = special.len()
        - special[lead..]
            .iter()
            .rev()
            .take_while(|&&m| m == 1)
            .count();
    let (mut ids, mut ends) = match bos {
        Some(b) if enc.get_ids().first() != Some(&b) => (vec![b], vec![0]),
        _ => (Vec::new(), Vec::new()),
    };
    ids.extend_from_slice(&enc.get_ids()[..end]);
    ends.extend(
        enc.get_offsets()[..end]
            .iter()
            .zip(&special[..end])
            .map(|(&(_, stop), &m)| if m == 1 { 0 } else { stop }),
    );
    let lead = ids.len() - end + lead;
    Ok((ids, ends, lead))
}

impl CandidateIds {
    /// The tokens a forward over the longest candidate feeds: the shared ones and each
    /// candidate's but its last (which is predicted, never fed).
    pub fn fed_len(&self) -> usize {
        self.shared.len() + self.rest.iter().map(Vec::len).max().unwrap_or(1) - 1
    }

    /// Cuts the start of the prompt (after a leading `bos`, which stays) until
    /// [`fed_len`](Self::fed_len) is at most `max_len`: HF's `truncation_side="left"`, so
    /// the end of the prompt (the question) and the candidates are kept. Returns whether
    /// anything was cut.
    ///
    /// # Errors
    /// The candidates (and the BOS) alone are longer than `max_len`.
    pub fn truncate_left(&mut self, max_len: usize) -> Result<bool> {
        let excess = self.fed_len().saturating_sub(max_len);
        if excess == 0 {
            return Ok(false);
        }
        let answers = self.fed_len() - self.shared.len();
        // At least one shared token must stay to predict the first candidate token from.
        cut_start(&mut self.shared, excess, self.lead, self.lead.max(1)).map_err(|()| {
            scoring_error(format!(
                "the candidates need {answers} tokens, more than --max-len {max_len} leaves \
                 after the prompt"
            ))
        })?;
        Ok(true)
    }
}

/// Removes `excess` ids from the start of `ids` after its first `keep` (special tokens: a
/// BOS), leaving at least `min_left` ids in all.
///
/// # Errors
/// Fewer ids than that would leave.
pub(crate) fn cut_start(
    ids: &mut Vec<u32>,
    excess: usize,
    keep: usize,
    min_left: usize,
) -> std::result::Result<(), ()> {
    if ids.len() < min_left.max(keep) + excess {
        return Err(());
    }
    ids.drain(keep..keep + excess);
    Ok(())
}

fn scoring_error(reason: impl Into<String>) -> Error {
    Error::Data {
        op: "candidate scoring",
        reason: reason.into(),
    }
}

/// `err` naming the example it is about (its `idx`, or line number).
pub(crate) fn in_example(id: &str, err: Error) -> Error {
    match err {
        Error::Data { op, reason } => Error::Data {
            op,
            reason: format!("example `{id}`: {reason}"),
        },
        other => other,
    }
}

/// Natural-log softmax of one row of logits, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&v| f64::from(v) - log_z).collect()
}

/// The log-probability rows `(t, vocab)` of `ids` continuing `cache` (its keys extended);
/// only the last row's when `last_only` (the shared prompt: only its last row predicts).
fn continue_log_probs(
    llama: &Llama,
    ids: &[u32],
    rows: Option<&Tensor>,
    cache: &mut KvCache,
    last_only: bool,
) -> Result<Vec<Vec<f64>>> {
    let input = Tensor::new(ids, llama.device())?.unsqueeze(0)?;
    let hidden = match rows {
        Some(rows) => {
            let embeds = Tensor::cat(
                &[rows, &crate::models::Backbone::embed_tokens(llama, &input)?],
                1,
            )?;
            llama.forward_cached_embeds(&embeds, cache)?
        }
        None => llama.forward_cached(&input, cache)?,
    };
    // Prompt-tuning rows come first and predict nothing here.
    let n = hidden.dim(1)?;
    let keep = if last_only { 1 } else { ids.len() };
    let hidden = hidden.narrow(1, n - keep, keep)?;
    let logits = llama
        .logits(&hidden, false)?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    Ok(logits
        .to_vec2::<f32>()?
        .iter()
        .map(|row| log_softmax(row))
        .collect())
}

/// Each candidate's mean log-probability of its own tokens given the prompt, for `ids` as
/// [`CandidateIds::tokenize`] gives them. `cache` and `rows` are the state generation starts
/// from (empty, or a prefix adapter's keys and values; prompt-tuning rows in front of the
/// prompt). Runs without a graph, on a rayon worker, with exact (never input-rounded)
/// products on a quantized base ([`exact_products`](crate::ops::exact_products)).
///
/// # Errors
/// Ids outside the vocabulary; a sequence past the model's context.
pub fn candidate_scores(
    llama: &Llama,
    ids: &CandidateIds,
    cache: KvCache,
    rows: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let vocab = llama.config().vocab_size;
    let mut all = ids.shared.iter().chain(ids.rest.iter().flatten());
    if let Some(&id) = all.find(|&&id| id as usize >= vocab) {
        return Err(scoring_error(format!(
            "token id {id} is outside the model's vocabulary of {vocab} (a tokenizer that \
             does not belong to the model?)"
        )));
    }
    let malformed = ids
        .rest
        .iter()
        .zip(&ids.scored)
        .any(|(r, &n)| n == 0 || n > r.len());
    if ids.shared.is_empty() || ids.rest.len() != ids.scored.len() || malformed {
        return Err(scoring_error(
            "each candidate needs ids after a non-empty shared part, 1 to all of them scored",
        ));
    }
    crate::ops::no_grad(|| {
        // Exact products throughout: a quantized base's one-row products would otherwise
        // round their input (as decoding does) and the prompt's would not, so a score would
        // depend on how the example splits into forwards.
        crate::ops::on_worker(|| {
            crate::ops::exact_products(|| {
                let mut cache = cache;
                let shared = continue_log_probs(llama, &ids.shared, rows, &mut cache, true)?;
                let last = shared
                    .last()
                    .ok_or_else(|| scoring_error("no shared ids"))?;
                ids.rest
                    .iter()
                    .zip(&ids.scored)
                    .map(|(rest, &scored)| {
                        // log p(rest[0] | shared), then each next id given the ones before it.
                        let mut lps = vec![last[rest[0] as usize]];
                        if rest.len() > 1 {
                            let mut c = cache.clone();
                            let fed = &rest[..rest.len() - 1];
                            let more = continue_log_probs(llama, fed, None, &mut c, false)?;
                            lps.extend(
                                more.iter()
                                    .zip(&rest[1..])
                                    .map(|(row, &id)| row[id as usize]),
                            );
                        }
                        let own = &lps[lps.len() - scored..];
                        Ok(own.iter().sum::<f64>() / own.len() as f64)
                    })
                    .collect()
            })
        })
    })
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LmScoreReport {
    /// The task's name.
    pub task: String,
    /// Examples scored (answer options for MultiRC).
    pub examples: usize,
    /// The task's official metrics: accuracy; CB also macro-F1; MultiRC F1a and exact match.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// How often each candidate (by position) was predicted, and how often it was the gold
    /// one: a model that always answers "Yes" shows here.
    pub predicted: Vec<usize>,
    /// How often each candidate position was the gold one.
    pub gold: Vec<usize>,
}

/// Up to `max` of `examples`, drawn without replacement with `seed` and kept in file order
/// (all of them when there are fewer): the evaluation protocol, 1,000 from
/// validation. Grouped examples (MultiRC's answer options) are drawn a whole question at a
/// time, until at least `max` are in.
pub fn sample_examples(
    examples: Vec<PromptedExample>,
    max: usize,
    seed: u64,
) -> Vec<PromptedExample> {
    if examples.len() <= max {
        return examples;
    }
    // MultiRC: whole questions, so that exact match is over every option of a question.
    if examples.iter().any(|e| e.group.is_some()) {
        return sample_groups(examples, max, seed);
    }
    let mut picked =
        rand::seq::index::sample(&mut crate::adapters::seeded_rng(seed), examples.len(), max)
            .into_vec();
    picked.sort_unstable();
    let mut keep = vec![false; examples.len()];
    for i in picked {
        keep[i] = true;
    }
    examples
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

/// Whole groups of `examples` in a seeded order until at least `max` examples are in, kept in
/// file order.
fn sample_groups(examples: Vec<PromptedExample>, max: usize, seed: u64) -> Vec<PromptedExample> {
    let key = |e: &PromptedExample| e.group.clone().unwrap_or_default();
    let mut sizes: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &examples {
        *sizes.entry(key(e)).or_default() += 1;
    }
    let mut groups: Vec<(&String, &usize)> = sizes.iter().collect();
    rand::seq::SliceRandom::shuffle(
        groups.as_mut_slice(),
        &mut crate::adapters::seeded_rng(seed),
    );
    let (mut chosen, mut count) = (std::collections::BTreeSet::new(), 0);
    for (g, &n) in groups {
        if count >= max {
            break;
        }
        chosen.insert(g.clone());
        count += n;
    }
    examples
        .into_iter()
        .filter(|e| chosen.contains(&key(e)))
        .collect()
}

/// Scores every example of `task` (`None`: a custom template's) with the generator's model
/// (and adapter, if one is attached) by [`candidate_scores`], prompts cut from the left to
/// `max_len` when given (as training cut them), predicts the best candidate,
/// and computes the task's official metrics (a custom task: accuracy, and macro-F1 with more
/// than two candidates). `on_example` is called after each example (progress).
///
/// # Errors
/// No examples; tokenization or model errors; a prompt past the context.
pub fn evaluate(
    g: &Generator,
    task: Option<PromptedTask>,
    examples: &[PromptedExample],
    max_len: Option<usize>,
    on_example: &mut dyn FnMut(),
) -> Result<LmScoreReport> {
    let llama = g.decoder();
    let (cache, rows) = g.start_state()?;
    // Every example tokenized and checked against the context before any is scored.
    let context = llama.config().max_position_embeddings;
    let virtual_n = cache.len() + rows.as_ref().map_or(Ok(0), |r| r.dim(1))?;
    let mut cut = 0;
    let tokenized = examples
        .iter()
        .map(|e| {
            let mut ids =
                CandidateIds::tokenize(&g.tokenizer, g.bos_id(), &e.prompt, &e.candidates)?;
            if let Some(max_len) = max_len {
                let was_cut = ids
                    .truncate_left(max_len)
                    .map_err(|err| in_example(&e.id, err))?;
                cut += usize::from(was_cut);
            }
            let fed = virtual_n + ids.fed_len();
            if fed > context {
                return Err(Error::ExampleTooLong {
                    example: e.id.clone(),
                    tokens: fed,
                    context,
                    room: context.saturating_sub(virtual_n),
                });
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    if let (true, Some(max_len)) = (cut > 0, max_len) {
        tracing::warn!(
            "{cut} examples were longer than --max-len {max_len}: their prompts lost their \
             start (left truncation; the question and the answers are kept)"
        );
    }
    let mut preds = Vec::with_capacity(examples.len());
    for ids in &tokenized {
        let scores = candidate_scores(llama, ids, cache.clone(), rows.as_ref())?;
        preds.push(best_candidate(&scores));
        on_example();
    }
    report(task, examples, &preds)
}

/// The index of the highest score (the first of ties).
pub fn best_candidate(scores: &[f64]) -> usize {
    scores
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// The task's official metrics and the answer balance of predictions `preds` (candidate
/// indices) on `examples` of `task` (`None`: a custom template's).
///
/// # Errors
/// A prediction count that differs from the examples'; no examples.
pub fn report(
    task: Option<PromptedTask>,
    examples: &[PromptedExample],
    preds: &[usize],
) -> Result<LmScoreReport> {
    if preds.len() != examples.len() {
        return Err(scoring_error(format!(
            "{} predictions for {} examples",
            preds.len(),
            examples.len()
        )));
    }
    let preds: Vec<u32> = preds.iter().map(|&p| p as u32).collect();
    let golds: Vec<u32> = examples.iter().map(|e| e.gold as u32).collect();
    let classes = examples
        .iter()
        .map(|e| e.candidates.len())
        .max()
        .unwrap_or(0);
    let mut metrics = std::collections::BTreeMap::new();
    match task {
        Some(PromptedTask::MultiRc) => {
            let groups: Vec<&str> = examples
                .iter()
                .map(|e| e.group.as_deref().unwrap_or(""))
                .collect();
            let m = multirc_scores(&preds, &golds, &groups)?;
            metrics.insert("f1a".to_string(), m.f1a);
            metrics.insert("exact_match".to_string(), m.exact_match);
        }
        _ => {
            let labels = |v: &[u32]| v.iter().map(|&c| Label::Class(c)).collect::<Vec<_>>();
            let wanted: &[Metric] =
                if task == Some(PromptedTask::Cb) || (task.is_none() && classes > 2) {
                    &[Metric::Accuracy, Metric::MacroF1]
                } else {
                    &[Metric::Accuracy]
                };
            metrics = compute(wanted, &labels(&preds), &labels(&golds))?;
        }
    }
    let count = |v: &[u32]| {
        let mut c = vec![0; classes];
        for &i in v {
            if let Some(n) = c.get_mut(i as usize) {
                *n += 1;
            }
        }
        c
    };
    Ok(LmScoreReport {
        task: task.map_or("custom", PromptedTask::name).to_string(),
        examples: examples.len(),
        metrics,
        predicted: count(&preds),
        gold: count(&golds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelInput;

    /// Examples with these gold answers among `k` candidates, in these MultiRC groups.
    fn golds(k: usize, golds: &[usize], groups: &[&str]) -> Vec<PromptedExample> {
        golds
            .iter()
            .enumerate()
            .map(|(i, &gold)| PromptedExample {
                prompt: "p".into(),
                candidates: (0..k).map(|c| c.to_string()).collect(),
                gold,
                group: groups.get(i).map(|g| g.to_string()),
                id: i.to_string(),
            })
            .collect()
    }

    /// Each task's official metrics, worked by hand: CB accuracy and macro-F1, MultiRC F1a
    /// over answers and exact match per question, the others accuracy alone.
    #[test]
    fn the_report_holds_each_tasks_official_metrics_by_hand() {
        // CB: class 0 P 1/2 R 1/2 (F1 1/2), class 1 P 2/3 R 1 (F1 4/5), class 2 P 1 R 1/2
        // (F1 2/3); accuracy 4/6.
        let cb = golds(3, &[0, 0, 1, 1, 2, 2], &[]);
        let r = report(Some(PromptedTask::Cb), &cb, &[0, 1, 1, 1, 2, 0]).unwrap();
        assert_eq!(r.metrics.len(), 2);
        assert!((r.metrics["accuracy"] - 4.0 / 6.0).abs() < 1e-12);
        let macro_f1 = (0.5 + 0.8 + 2.0 / 3.0) / 3.0;
        assert!((r.metrics["macro_f1"] - macro_f1).abs() < 1e-12);
        assert_eq!((r.predicted, r.gold), (vec![2, 3, 1], vec![2, 2, 2]));
        // MultiRC: question 0-0 all right, 0-1 one answer wrong (EM 1/2); answers "Yes"
        // (index 1) predicted 4 times, 3 of them right, none missed: P 3/4, R 1, F1a 6/7.
        let multirc = golds(2, &[1, 0, 1, 1, 0], &["0-0", "0-0", "0-0", "0-1", "0-1"]);
        let r = report(Some(PromptedTask::MultiRc), &multirc, &[1, 0, 1, 1, 1]).unwrap();
        assert_eq!(r.metrics.len(), 2);
        assert!((r.metrics["exact_match"] - 0.5).abs() < 1e-12);
        assert!((r.metrics["f1a"] - 6.0 / 7.0).abs() < 1e-12);
        // RTE: accuracy alone; a custom task with three answers also gets macro-F1.
        let rte = golds(2, &[0, 1, 1, 0], &[]);
        let r = report(Some(PromptedTask::Rte), &rte, &[0, 1, 0, 0]).unwrap();
        assert_eq!(r.metrics.keys().collect::<Vec<_>>(), ["accuracy"]);
        assert!((r.metrics["accuracy"] - 0.75).abs() < 1e-12);
        let r = report(None, &cb, &[0, 1, 1, 1, 2, 0]).unwrap();
        assert!((r.metrics["macro_f1"] - macro_f1).abs() < 1e-12);
        assert_eq!(r.task, "custom");
        assert!(report(Some(PromptedTask::Rte), &rte, &[0]).is_err());
    }

    /// The mean log-probabilities of each candidate's own tokens computed from each whole
    /// sequence in one plain forward (no cache, no sharing).
    fn direct(llama: &Llama, ids: &CandidateIds) -> Vec<f64> {
        let dev = llama.device();
        ids.rest
            .iter()
            .zip(&ids.scored)
            .map(|(rest, &scored)| {
                let full: Vec<u32> = ids.shared.iter().chain(rest).copied().collect();
                let t = full.len();
                let input = ModelInput::new(
                    Tensor::new(full.as_slice(), dev)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                    Tensor::ones((1, t), DType::U32, dev).unwrap(),
                );
                let h = llama.forward(&input, false).unwrap();
                let logits: Vec<Vec<f32>> = llama
                    .logits(&h, false)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                let own: Vec<f64> = (t - scored..t)
                    .map(|p| log_softmax(&logits[p - 1])[full[p] as usize])
                    .collect();
                own.iter().sum::<f64>() / own.len() as f64
            })
            .collect()
    }

    #[test]
    fn sampling_keeps_file_order_and_is_seeded() {
        let ex = |i: usize| PromptedExample {
            prompt: i.to_string(),
            candidates: vec!["a".into()],
            gold: 0,
            group: None,
            id: i.to_string(),
        };
        let all: Vec<_> = (0..50).map(ex).collect();
        let a = sample_examples(all.clone(), 10, 3);
        assert_eq!(a, sample_examples(all.clone(), 10, 3));
        assert_ne!(a, sample_examples(all.clone(), 10, 4));
        let order: Vec<usize> = a.iter().map(|e| e.prompt.parse().unwrap()).collect();
        assert!(order.len() == 10 && order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample_examples(all.clone(), 100, 3), all);
    }

    #[test]
    fn examples_that_cannot_be_scored_are_refused() {
        let tok = tiny_tokenizer();
        let mut plain = tok.clone();
        plain.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let answers = ["great".to_string(), "bad".into()];
        let err = CandidateIds::tokenize(&plain, None, "", &answers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing before"), "{err}");
        let err = CandidateIds::tokenize(&tok, None, "a", &[String::new()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("adds no token"), "{err}");
        let ids = CandidateIds::tokenize(&plain, Some(1), "", &answers).unwrap();
        assert_eq!((ids.shared, ids.scored), (vec![1], vec![1, 1]));
    }

    /// A tokenizer whose post-processor adds specials (BERT's `[CLS] … [SEP]`, as an HF
    /// LLaMA's adds `<s>`): the leading one starts the shared ids (no `bos` added on top of
    /// it), the trailing one is dropped; `bos` goes in front when the tokenizer adds none.
    #[test]
    fn the_tokenizers_own_leading_specials_are_kept_and_trailing_ones_dropped() {
        let tok = tiny_tokenizer();
        let cls = tok.token_to_id("[CLS]").unwrap();
        let sep = tok.token_to_id("[SEP]").unwrap();
        let answers = ["great".to_string(), "bad".into()];
        let ids = CandidateIds::tokenize(&tok, Some(cls), "it was ", &answers).unwrap();
        assert_eq!(ids.shared[0], cls);
        assert_ne!(ids.shared.get(1), Some(&cls));
        // The tokenizer's own leading special is the one truncation keeps.
        assert_eq!(ids.lead, 1);
        assert!(ids.rest.iter().all(|r| !r.contains(&sep)), "{ids:?}");
        let lens: Vec<usize> = ids.rest.iter().map(Vec::len).collect();
        assert_eq!(ids.scored, lens);
        let mut plain = tok.clone();
        plain.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let ids = CandidateIds::tokenize(&plain, Some(7), "it was ", &answers).unwrap();
        assert_eq!((ids.shared[0], ids.lead), (7, 1));
        let ids = CandidateIds::tokenize(&plain, None, "it was ", &answers).unwrap();
        assert_eq!(ids.lead, 0);
        // Ids the model does not have are refused, not indexed.
        let llama = tiny_llama();
        let bad = CandidateIds {
            shared: vec![1],
            rest: vec![vec![9999]],
            scored: vec![1],
            lead: 1,
        };
        let err = candidate_scores(&llama, &bad, KvCache::new(), None).unwrap_err();
        assert!(
            err.to_string().contains("outside the model's vocabulary"),
            "{err}"
        );
        let bad = CandidateIds {
            shared: vec![1],
            rest: vec![vec![2]],
            scored: vec![2],
            lead: 1,
        };
        assert!(candidate_scores(&llama, &bad, KvCache::new(), None).is_err());
    }

    /// MultiRC's options are drawn a whole question at a time.
    #[test]
    fn grouped_examples_are_sampled_by_whole_groups() {
        let ex = |g: usize, i: usize| PromptedExample {
            prompt: format!("{g}.{i}"),
            candidates: vec!["a".into(), "b".into()],
            gold: 0,
            group: Some(g.to_string()),
            id: format!("{g}-{i}"),
        };
        let all: Vec<_> = (0..20)
            .flat_map(|g| (0..3).map(move |i| ex(g, i)))
            .collect();
        let picked = sample_examples(all, 10, 1);
        // Four whole questions of three: the first draw of at least ten.
        assert_eq!(picked.len(), 12);
        let mut counts = std::collections::BTreeMap::new();
        for e in &picked {
            *counts.entry(e.group.clone().unwrap()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n == 3), "{counts:?}");
    }

    fn tiny_tokenizer() -> Tokenizer {
        crate::data::load_tokenizer(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tokenizer-tiny.json"),
        )
        .unwrap()
    }

    fn tiny_llama() -> Llama {
        crate::models::test_util::tiny_llama(7)
    }

    #[test]
    fn shared_prefix_scores_equal_scoring_each_sequence_whole() {
        let llama = tiny_llama();
        let ids = CandidateIds {
            shared: vec![1, 5, 9, 13],
            // One-token candidates, a longer one, and one whose first id is still the
            // prompt's (a boundary token that differs between candidates).
            rest: vec![vec![20], vec![21], vec![22, 30, 31], vec![17, 40, 41]],
            scored: vec![1, 1, 3, 2],
            lead: 1,
        };
        let got = candidate_scores(&llama, &ids, KvCache::new(), None).unwrap();
        let want = direct(&llama, &ids);
        assert_eq!(got.len(), 4);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5, "{got:?} vs {want:?}");
        }
    }
}
