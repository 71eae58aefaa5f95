//! Turning encoded examples into batches, and running a model over a split to get
//! predictions and GLUE metrics.

use std::collections::BTreeMap;

use candle_core::{DType, Device};

use crate::data::{self, Encoded, Label, Metric};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::train::Batch;

/// One split, tokenized: encodings and (for labelled splits) labels, index-aligned.
#[derive(Debug, Clone, Default)]
pub struct EncodedSplit {
    /// Token ids per example.
    pub encoded: Vec<Encoded>,
    /// Gold labels per example (empty for an unlabelled split).
    pub labels: Vec<Label>,
}

impl EncodedSplit {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Token counts, for bucketing.
    pub fn lengths(&self) -> Vec<usize> {
        self.encoded.iter().map(|e| e.ids.len()).collect()
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            encoded: indices.iter().map(|&i| self.encoded[i].clone()).collect(),
            labels: if self.labels.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.labels[i]).collect()
            },
        }
    }

    /// Training batches in the order `order` gives (lists of example indices).
    ///
    /// # Errors
    /// [`Error::UnlabelledSplit`]; tensor errors.
    pub fn batches(
        &self,
        order: &[Vec<usize>],
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Batch>> {
        if self.labels.len() != self.encoded.len() {
            return Err(Error::UnlabelledSplit {
                op: "training batches",
                examples: self.encoded.len(),
                labels: self.labels.len(),
            });
        }
        order
            .iter()
            .map(|idx| {
                let items: Vec<&Encoded> = idx.iter().map(|&i| &self.encoded[i]).collect();
                let labels: Vec<Label> = idx.iter().map(|&i| self.labels[i]).collect();
                Ok(Batch::new(
                    data::collate(&items, pad_id, device)?,
                    data::label_tensor(&labels, device)?,
                ))
            })
            .collect()
    }
}

/// Logits `(n, num_labels)` for every example of `split`, in the split's order, computed
/// without recording gradients.
///
/// # Errors
/// Tensor errors from the model; [`Error::NonFiniteOutput`] when an output is NaN or
/// infinite (a score printed from it would mean nothing).
pub fn logits(
    model: &dyn Model,
    split: &EncodedSplit,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); split.len()];
    for idx in data::sequential_batches(&split.lengths(), batch_size.max(1)) {
        let items: Vec<&Encoded> = idx.iter().map(|&i| &split.encoded[i]).collect();
        let input = data::collate(&items, pad_id, device)?;
        let rows = crate::ops::no_grad(|| model.forward(&input, false))?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (i, row) in idx.into_iter().zip(rows) {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFiniteOutput { example: i });
            }
            out[i] = row;
        }
    }
    Ok(out)
}

/// The label a row of logits predicts: the arg-max class, or the single score.
pub fn predicted_label(row: &[f32], regression: bool) -> Label {
    if regression {
        Label::Score(row.first().copied().unwrap_or(f32::NAN))
    } else {
        let best = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |acc, (i, &v)| {
                if v > acc.1 { (i, v) } else { acc }
            });
        Label::Class(best.0 as u32)
    }
}

/// Softmax of a row of logits (probabilities per class).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The metrics of `model` on a labelled split.
///
/// # Errors
/// [`Error::EmptySplit`]; [`Error::UnlabelledSplit`]; tensor errors.
pub fn evaluate(
    model: &dyn Model,
    split: &EncodedSplit,
    metrics: &[Metric],
    regression: bool,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<BTreeMap<String, f64>> {
    if split.is_empty() {
        return Err(Error::EmptySplit { op: "evaluate" });
    }
    if split.labels.len() != split.len() {
        return Err(Error::UnlabelledSplit {
            op: "evaluate",
            examples: split.len(),
            labels: split.labels.len(),
        });
    }
    let preds: Vec<Label> = logits(model, split, batch_size, pad_id, device)?
        .iter()
        .map(|r| predicted_label(r, regression))
        .collect();
    data::compute(metrics, &preds, &split.labels)
}
