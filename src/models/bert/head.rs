//! [`BertForSequenceClassification`]: the BERT/RoBERTa encoder as a [`Backbone`] under the
//! shared [`SequenceClassifier`], with HF's BERT or RoBERTa head layout.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{BertConfig, BertFamily};
use super::model::{Bert, detect_prefix};
use crate::adapters::VirtualSpec;
#[cfg(doc)]
use crate::error::Error; // for the `# Errors` links
use crate::error::Result;
use crate::io::TensorSource;
use crate::models::backbone::ForwardCtx;
use crate::models::heads::{HeadActivation, HeadLayout, HiddenLayer, SequenceClassifier};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, BuildBackbone, ModelInput, Pooling};

/// BERT/RoBERTa with HF's sequence-classification head: logits `(b_sz, num_labels)`;
/// `num_labels = 1` is regression.
///
/// Pooling [`Pooling::Cls`] follows the architecture: BERT runs its pooler (dense + tanh on
/// `[CLS]`) then `classifier`; RoBERTa runs `classifier.dense` + tanh + `classifier.out_proj`
/// on `<s>`. [`Pooling::Mean`] (sentence-transformers checkpoints) feeds the masked mean of
/// the last hidden states to the same head, skipping BERT's pooler. Dropout
/// (`classifier_dropout`, else `hidden_dropout_prob`) precedes each head layer in training.
pub type BertForSequenceClassification = SequenceClassifier<Bert>;

/// Loads a BERT/RoBERTa classifier from an HF folder (`config.json`, `model.safetensors` or a
/// sharded index) in f32; `seed` initialises a head the checkpoint does not carry.
///
/// # Errors
/// As [`BertForSequenceClassification::load`].
pub fn load_bert(
    dir: &Path,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<BertForSequenceClassification> {
    BertForSequenceClassification::load(dir, num_labels, pooling, DType::F32, device, seed)
}

/// HF's head of `cfg`'s architecture.
fn head_layout(cfg: &BertConfig) -> HeadLayout {
    let p = cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob);
    match cfg.model_type {
        BertFamily::Bert => HeadLayout {
            cls_through_backbone_pooler: true,
            hidden: None,
            output: "classifier",
            output_dropout: p,
            architecture: "BertForSequenceClassification",
        },
        BertFamily::Roberta => HeadLayout {
            cls_through_backbone_pooler: false,
            hidden: Some(HiddenLayer {
                name: "classifier.dense",
                dropout: p,
                activation: HeadActivation::Tanh,
            }),
            output: "classifier.out_proj",
            output_dropout: p,
            architecture: "RobertaForSequenceClassification",
        },
    }
}

impl BertForSequenceClassification {
    /// The config the model was built from.
    pub fn config(&self) -> &BertConfig {
        self.encoder().config()
    }

    /// Sentence embeddings `(b_sz, hidden)` from the encoder alone (no head, no dropout).
    ///
    /// # Errors
    /// As [`Bert::forward`].
    pub fn embed(&self, input: &ModelInput, pooling: Pooling) -> Result<Tensor> {
        self.encoder().embed(input, pooling)
    }
}

impl BuildBackbone for Bert {
    type Config = BertConfig;

    fn config_from_value(value: &serde_json::Value, path: &Path) -> Result<BertConfig> {
        BertConfig::from_value(value, path)
    }

    fn validate_config(cfg: &BertConfig, path: &Path) -> Result<()> {
        cfg.validate(path)
    }

    fn checkpoint_prefix(
        source: &dyn TensorSource,
        cfg: &BertConfig,
        folder: &Path,
    ) -> Result<String> {
        detect_prefix(source, cfg, folder)
    }

    /// BERT's pooler is built for a head that pools through it (CLS), and whenever a BERT
    /// checkpoint has one: a merged export then keeps it (HF would otherwise initialise it
    /// at random on every load) and PEFT's `all-linear` folders, which adapt it, find it.
    fn build(cfg: &BertConfig, ld: &mut Loader<'_>, pooling: Pooling) -> Result<Self> {
        // RoBERTa's classifier has no pooler (HF builds it without one).
        let with_pooler = cfg.model_type == BertFamily::Bert
            && (pooling == Pooling::Cls || ld.has("pooler.dense.weight"));
        Bert::build(cfg, ld, with_pooler)
    }

    fn classifier_head(cfg: &BertConfig) -> HeadLayout {
        head_layout(cfg)
    }

    fn hidden_size(cfg: &BertConfig) -> usize {
        cfg.hidden_size
    }

    fn initializer_range(cfg: &BertConfig) -> f64 {
        cfg.initializer_range
    }
}

impl Backbone for Bert {
    fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.word_embeddings(input_ids)
    }

    fn forward_embeds(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        self.forward_words(embeds, input, ctx)
    }

    fn pooler_output(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        Bert::pooler_output(self, hidden, train)
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        Bert::walk(self, self.config().model_type.prefix(), f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        let prefix = self.config().model_type.prefix();
        Bert::walk_mut(self, prefix, f);
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn virtual_spec(&self) -> VirtualSpec {
        Bert::virtual_spec(self)
    }

    fn max_seq_len(&self) -> Option<usize> {
        Some(self.config().max_seq_len())
    }
}
