//! HF's sequence-classification heads as data: which layers a head stacks on the pooled
//! vector, their names, activations and dropouts ([`HeadLayout`]).

use candle_core::Tensor;

use crate::error::Result;
#[cfg(doc)]
use crate::models::Pooling;

/// An activation HF configs name (`pooler_hidden_act`, DeBERTa's `conv_act`).
#[derive(Debug, Clone, PartialEq)]
pub enum HeadActivation {
    /// tanh (BERT's pooler, RoBERTa's `classifier.dense`).
    Tanh,
    /// GELU (DeBERTa's `pooler_hidden_act`, HF's default).
    Gelu,
}

impl HeadActivation {
    /// From an HF config's activation name (`tanh`; anything else is GELU, as HF's DeBERTa
    /// `ContextPooler` treats its default).
    pub fn from_hf(name: &str) -> Self {
        if name == "tanh" {
            Self::Tanh
        } else {
            Self::Gelu
        }
    }

    /// The activation of `x`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tanh => Ok(x.tanh()?),
            Self::Gelu => crate::ops::gelu(x),
        }
    }
}

/// A hidden layer between the pooled vector and the output layer.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenLayer {
    /// Its checkpoint name (`classifier.dense`, `pooler.dense`).
    pub name: &'static str,
    /// Dropout before it (training only).
    pub dropout: f64,
    /// Its activation.
    pub activation: HeadActivation,
}

/// HF's sequence-classification head of one architecture, as data:
/// `output(dropout(act(hidden(dropout(pooled)))))`, or `output(dropout(pooled))` without a
/// hidden layer.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadLayout {
    /// With [`Pooling::Cls`], pool through the backbone's own pooler (BERT's `pooler.dense`
    /// + tanh) instead of taking the first token's hidden state.
    pub cls_through_backbone_pooler: bool,
    /// The hidden layer, if any (RoBERTa's `classifier.dense`, DeBERTa's `pooler.dense`).
    pub hidden: Option<HiddenLayer>,
    /// The output layer's checkpoint name (`classifier`, `classifier.out_proj`).
    pub output: &'static str,
    /// Dropout before the output layer (training only).
    pub output_dropout: f64,
    /// HF's class name of the whole model (`BertForSequenceClassification`), for a merged
    /// export's config.json.
    pub architecture: &'static str,
}
