//! [`DebertaV2ForSequenceClassification`]: the DeBERTa-v2 encoder as a [`Backbone`] under the
//! shared [`SequenceClassifier`], with HF's context pooler and classifier as its head layout.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::config::DebertaV2Config;
use super::model::{DebertaV2, PREFIX, detect_prefix};
use crate::adapters::{DefaultSites, Placement, VirtualSpec, seeded_rng};
use crate::error::Error;
use crate::error::Result;
use crate::io::ResolvedModel;
use crate::models::heads::{HeadActivation, HeadLayout, HiddenLayer, SequenceClassifier};
use crate::models::layers::{check_labels, encoder_sites};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, ModelInput, Pooling};

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
    /// Loads the model in `dir` in `dtype`. The encoder may sit bare (`DebertaV2Model`) or
    /// under `deberta.` (`DebertaV2For…`); head tensors are looked up bare.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an unsupported config or `num_labels = 0`;
    /// [`Error::WeightTensor`] naming file, tensor, expected and got shape for a missing or
    /// misshapen tensor (including a checkpoint head with another `num_labels`);
    /// [`Error::ModelFile`] / [`Error::Io`] for unreadable files.
    pub fn load(
        dir: &Path,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        Self::load_from(
            &ResolvedModel::from_dir(dir)?,
            num_labels,
            pooling,
            dtype,
            device,
            seed,
        )
    }

    /// As [`load`](Self::load), from an opened model: its parsed config and its tensors.
    ///
    /// # Errors
    /// As [`load`](Self::load), but for the files, which were read when `model` was opened.
    pub fn load_from(
        model: &ResolvedModel,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let config_path = model.config_path();
        let cfg = DebertaV2Config::from_value(model.config(), &config_path)?;
        check_labels(num_labels, &config_path)?;
        let prefix = detect_prefix(model.tensors(), model.dir())?;
        let mut ld = Loader::checkpoint(model.tensors(), &prefix, dtype, device);
        let built = Self::build(&cfg, &mut ld, num_labels, pooling, seed)?;
        ld.log_unused("model");
        Ok(built)
    }

    /// A freshly initialised model (see [`DebertaV2::random`]) with a fresh head; tiny
    /// configs ([`DebertaV2Config::tiny`]) make fast test models.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid config or `num_labels = 0`.
    pub fn random(
        cfg: &DebertaV2Config,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let path = Path::new("<in-memory config>");
        cfg.validate(path)?;
        check_labels(num_labels, path)?;
        // The encoder draws from its own stream so the head matches a loaded model's head.
        let rng = seeded_rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut ld = Loader::random(rng, cfg.initializer_range, dtype, device);
        Self::build(cfg, &mut ld, num_labels, pooling, seed)
    }

    fn build(
        cfg: &DebertaV2Config,
        ld: &mut Loader,
        num_labels: usize,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self> {
        let deberta = DebertaV2::build(cfg, ld)?;
        let layout = head_layout(cfg);
        Self::assemble(
            deberta,
            layout,
            ld,
            cfg.hidden_size,
            num_labels,
            pooling,
            seed,
        )
    }

    /// The config the model was built from.
    pub fn config(&self) -> &DebertaV2Config {
        self.encoder().config()
    }
}

impl Backbone for DebertaV2 {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        DebertaV2::forward(self, input, train)
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

    fn default_sites(&self) -> DefaultSites {
        encoder_sites(self.default_targets())
    }

    fn virtual_spec(&self) -> VirtualSpec {
        DebertaV2::virtual_spec(self)
    }

    /// DeBERTa's attention adds relative-position terms for every key, and HF's DeBERTa-v2
    /// takes no past keys or input prefixes that PEFT could use; neither is offered here.
    fn set_virtual_tokens(&mut self, tokens: Option<(Placement, Var)>) -> Result<()> {
        let method = match tokens {
            None => return Ok(()),
            Some((Placement::Prompt, _)) => "prompt",
            Some((Placement::Prefix, _)) => "prefix",
            Some((other, _)) => {
                return Err(Error::NotVirtualPlacement {
                    got: format!("{other:?}"),
                });
            }
        };
        Err(Error::VirtualTokensUnsupported {
            method,
            architecture: "deberta-v2",
            reason: "its relative-position attention has no place for virtual tokens, as in HF's \
                     DebertaV2Model",
        })
    }

    fn virtual_tokens(&self) -> Option<(Placement, Var)> {
        None
    }
}
