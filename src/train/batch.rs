//! One training batch: the model's input and the labels (and, for a causal-LM objective,
//! the positions they belong to; for LM scoring, which candidate each position scores).

use candle_core::Tensor;

use crate::models::ModelInput;

/// One training batch: model input plus labels (`u32` class ids or `f32` scores, or the next
/// tokens a causal-LM objective scores).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, segments, mask.
    pub input: ModelInput,
    /// Labels: `(b_sz)` for a sequence task; `(k)` next-token ids for a causal-LM one.
    pub labels: Tensor,
    /// For a causal-LM objective, the `(k)` flat positions `b·seq_len + t` whose next token
    /// `labels` holds; `None` for a sequence task.
    pub rows: Option<Tensor>,
    /// For LM scoring, how the scored positions make up each example's candidates.
    pub choices: Option<Choices>,
}

/// The candidate structure of an LM-scoring batch: each of its examples has `per_example`
/// candidate answers, and a candidate's score is the mean log-probability of its tokens,
/// which are some of the batch's scored positions ([`Batch::rows`]).
#[derive(Debug, Clone)]
pub struct Choices {
    /// `(examples · per_example, rows)` f32: row `e · per_example + c` holds `1 / n` at the
    /// `n` scored positions of example `e`'s candidate `c`, so a product with the positions'
    /// log-probabilities gives each candidate's mean.
    pub average: Tensor,
    /// `(examples)` `u32`: the gold candidate of each example.
    pub gold: Tensor,
    /// Candidates per example.
    pub per_example: usize,
}

impl Batch {
    /// A sequence-task batch: one label per example.
    pub fn new(input: ModelInput, labels: Tensor) -> Self {
        Self {
            input,
            labels,
            rows: None,
            choices: None,
        }
    }

    /// A causal-LM batch: the next-token `labels` at flat positions `rows`.
    pub fn next_tokens(input: ModelInput, rows: Tensor, labels: Tensor) -> Self {
        Self {
            input,
            labels,
            rows: Some(rows),
            choices: None,
        }
    }
}
