//! The sequence classifier: a backbone, pooling and HF's classification head, whose layout
//! per architecture is data ([`HeadLayout`]), not code. Implements [`Model`] once for every
//! family.

use candle_core::{Tensor, Var};

use crate::adapters::{DefaultSites, Placement, VirtualSpec};
use crate::error::Result;
use crate::models::layers::{Dense, dropout, pool};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, Model, ModelInput, Pooling};

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

/// A backbone with HF's sequence-classification head: logits `(b_sz, num_labels)`;
/// `num_labels = 1` is regression. The head's layers are trainable [`Var`]s, loaded when the
/// checkpoint has them, otherwise initialised like PyTorch's `nn.Linear` from the seed.
pub struct SequenceClassifier<B> {
    backbone: B,
    layout: HeadLayout,
    hidden: Option<Dense>,
    output: Dense,
    pooling: Pooling,
    num_labels: usize,
}

impl<B: std::fmt::Debug> std::fmt::Debug for SequenceClassifier<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.layout.architecture)
            .field("backbone", &self.backbone)
            .field("pooling", &self.pooling)
            .field("num_labels", &self.num_labels)
            .finish()
    }
}

impl<B: Backbone> SequenceClassifier<B> {
    /// `backbone` with the head `layout` describes, its layers loaded through `ld` (or
    /// initialised from `seed`): the hidden layer `(hidden, hidden)`, the output
    /// `(num_labels, hidden)`.
    ///
    /// # Errors
    /// A head tensor of the checkpoint with the wrong shape.
    pub(crate) fn assemble(
        backbone: B,
        layout: HeadLayout,
        ld: &mut Loader,
        hidden_size: usize,
        num_labels: usize,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = crate::adapters::seeded_rng(seed);
        let h = hidden_size;
        let hidden = match &layout.hidden {
            Some(l) => Some(Dense::build(ld, l.name, (h, h), &mut rng)?),
            None => None,
        };
        let output = Dense::build(ld, layout.output, (num_labels, h), &mut rng)?;
        Ok(Self {
            backbone,
            layout,
            hidden,
            output,
            pooling,
            num_labels,
        })
    }

    /// The backbone.
    pub fn encoder(&self) -> &B {
        &self.backbone
    }

    /// Outputs per example (1 = regression).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// How the head pools the hidden states.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The head's layout.
    pub fn layout(&self) -> &HeadLayout {
        &self.layout
    }
}

impl<B: Backbone> Model for SequenceClassifier<B> {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("sequence-classifier").entered();
        let hidden = self.backbone.forward(input, train)?;
        let pooled = match self.pooling {
            Pooling::Cls if self.layout.cls_through_backbone_pooler => {
                self.backbone.pooler_output(&hidden, train)?
            }
            pooling => {
                let mask = self.backbone.pooling_mask(&input.attention_mask)?;
                pool(&hidden, &mask, pooling)?
            }
        };
        let x = match (&self.layout.hidden, &self.hidden) {
            (Some(l), Some(dense)) => {
                let x = dense.forward(&dropout(&pooled, l.dropout, train)?)?;
                l.activation.apply(&x)?
            }
            _ => pooled,
        };
        self.output
            .forward(&dropout(&x, self.layout.output_dropout, train)?)
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.backbone.walk(f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        self.backbone.walk_mut(f);
    }

    fn head_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(4);
        if let Some(h) = &self.hidden {
            h.vars(&mut out);
        }
        self.output.vars(&mut out);
        out
    }

    fn fresh_output_bias(&self) -> Option<Var> {
        self.output.fresh_bias()
    }

    fn default_targets(&self) -> &'static [&'static str] {
        self.backbone.default_targets()
    }

    fn default_sites(&self) -> DefaultSites {
        self.backbone.default_sites()
    }

    fn virtual_spec(&self) -> VirtualSpec {
        self.backbone.virtual_spec()
    }

    fn set_virtual_tokens(&mut self, tokens: Option<(Placement, Var)>) -> Result<()> {
        self.backbone.set_virtual_tokens(tokens)
    }

    fn virtual_tokens(&self) -> Option<(Placement, Var)> {
        self.backbone.virtual_tokens()
    }

    fn architecture(&self) -> &'static str {
        self.layout.architecture
    }
}
