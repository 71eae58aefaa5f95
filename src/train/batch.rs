//! One training batch: the model's input and the labels (and, for a causal-LM objective,
//! the positions they belong to).

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
}

impl Batch {
    /// A sequence-task batch: one label per example.
    pub fn new(input: ModelInput, labels: Tensor) -> Self {
        Self {
            input,
            labels,
            rows: None,
        }
    }
}
