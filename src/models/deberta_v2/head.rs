//! [`DebertaV2ForSequenceClassification`]: the DeBERTa-v2 encoder as a [`Backbone`] under the
//! shared [`SequenceClassifier`], with HF's context pooler and classifier as its head layout.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::DebertaV2Config;
use super::model::{DebertaV2, PREFIX, detect_prefix};
use crate::adapters::{TokenPlacement, VirtualSpec};
use crate::error::Error;
use crate::error::Result;
use crate::io::TensorSource;
use crate::models::backbone::ForwardCtx;
use crate::models::heads::{HeadActivation, HeadLayout, HiddenLayer, SequenceClassifier};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, BuildBackbone, ModelInput, Pooling};

/// DeBERTa-v2/v3 with HF's sequence-classification head: logits `(b_sz, num_labels)`;
/// `num_labels = 1` is regression.
///
/// The head is HF's `ContextPooler` then `classifier`:
/// `classifier(dropout_c(act(pooler.dense(dropout_p(x)))))`, where x is the first token's
/// hidden state ([`Pooling::Cls`], as HF) or the masked mean of the hidden states
/// ([`Pooling::Mean`]); `act` is `pooler_hidden_act` (gelu), `dropout_p` is `pooler_dropout`
/// and `dropout_c` is `cls_dropout`, else `hidden_dropout_prob` (training only).
///
/// Both `pooler.dense` and `classifier` are trainable (head vars): pretrained DeBERTa
/// checkpoints carry no pooler, so a frozen one would be a random projection in front of the
/// classifier.
pub type DebertaV2ForSequenceClassification = SequenceClassifier<DebertaV2>;

/// Loads a DeBERTa-v2/v3 classifier from an HF folder (`config.json`, `model.safetensors` or
/// a sharded index) in f32; `seed` initialises a head the checkpoint does not carry.
///
/// # Errors
/// As [`DebertaV2ForSequenceClassification::load`].
pub fn load_deberta_v2(
    dir: &Path,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<DebertaV2ForSequenceClassification> {
    DebertaV2ForSequenceClassification::load(dir, num_labels, pooling, DType::F32, device, seed)
}

/// HF's `ContextPooler` + `classifier` for `cfg`.
fn head_layout(cfg: &DebertaV2Config) -> HeadLayout {
    HeadLayout {
        cls_through_backbone_pooler: false,
        hidden: Some(HiddenLayer {
            name: "pooler.dense",
            dropout: cfg.pooler_dropout,
            activation: HeadActivation::from_hf(&cfg.pooler_hidden_act),
        }),
        output: "classifier",
        output_dropout: cfg.cls_dropout.unwrap_or(cfg.hidden_dropout_prob),
        architecture: "DebertaV2ForSequenceClassification",
    }
}

impl DebertaV2ForSequenceClassification {
    /// The config the model was built from.
    pub fn config(&self) -> &DebertaV2Config {
        self.encoder().config()
    }
}

impl BuildBackbone for DebertaV2 {
    type Config = DebertaV2Config;

    fn config_from_value(value: &serde_json::Value, path: &Path) -> Result<DebertaV2Config> {
        DebertaV2Config::from_value(value, path)
    }

    fn validate_config(cfg: &DebertaV2Config, path: &Path) -> Result<()> {
        cfg.validate(path)
    }

    fn checkpoint_prefix(
        source: &dyn TensorSource,
        _cfg: &DebertaV2Config,
        folder: &Path,
    ) -> Result<String> {
        detect_prefix(source, folder)
    }

    fn build(cfg: &DebertaV2Config, ld: &mut Loader<'_>, _pooling: Pooling) -> Result<Self> {
        DebertaV2::build(cfg, ld)
    }

    fn classifier_head(cfg: &DebertaV2Config) -> HeadLayout {
        head_layout(cfg)
    }

    fn hidden_size(cfg: &DebertaV2Config) -> usize {
        cfg.hidden_size
    }

    fn initializer_range(cfg: &DebertaV2Config) -> f64 {
        cfg.initializer_range
    }
}

impl Backbone for DebertaV2 {
    fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.word_embeddings(input_ids)
    }

    fn forward_embeds(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if ctx.prompt_len > 0 {
            self.check_virtual_tokens(TokenPlacement::Prompt)?;
        }
        if ctx.prefix.is_some() {
            self.check_virtual_tokens(TokenPlacement::Prefix)?;
        }
        self.forward_words(embeds, input, ctx.train)
    }

    fn pooler_output(&self, _hidden: &Tensor, _train: bool) -> Result<Tensor> {
        Err(Error::UnsupportedInput {
            field: "pooling",
            reason: "DeBERTa-v2 has no backbone pooler; its head pools itself",
        })
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        DebertaV2::walk(self, PREFIX, f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        DebertaV2::walk_mut(self, PREFIX, f);
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["query_proj", "value_proj"]
    }

    fn virtual_spec(&self) -> VirtualSpec {
        DebertaV2::virtual_spec(self)
    }

    fn max_seq_len(&self) -> Option<usize> {
        self.config().max_seq_len()
    }

    /// DeBERTa's attention adds relative-position terms for every key, and HF's DeBERTa-v2
    /// takes no past keys or input prefixes that PEFT could use; neither is offered here.
    fn check_virtual_tokens(&self, placement: TokenPlacement) -> Result<()> {
        Err(Error::VirtualTokensUnsupported {
            method: placement.method(),
            architecture: "deberta-v2",
            reason: "its relative-position attention has no place for virtual tokens, as in HF's \
                     DebertaV2Model",
        })
    }
}
