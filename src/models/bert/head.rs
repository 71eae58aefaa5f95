//! [`BertForSequenceClassification`]: the BERT/RoBERTa encoder as a [`Backbone`] under the
//! shared [`SequenceClassifier`], with HF's BERT or RoBERTa head layout.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{BertConfig, BertFamily};
use super::model::{Bert, detect_prefix};
use crate::adapters::{DefaultSites, Placement, VirtualSpec, seeded_rng};
#[cfg(doc)]
use crate::error::Error; // for the `# Errors` links
use crate::error::Result;
use crate::io::ResolvedModel;
use crate::models::heads::{HeadActivation, HeadLayout, HiddenLayer, SequenceClassifier};
use crate::models::layers::{check_labels, encoder_sites};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, ModelInput, Pooling};

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
    /// Loads the model in `dir` in `dtype`. The encoder may sit bare (`BertModel`) or under
    /// `bert.`/`roberta.` (`…ForSequenceClassification`); head tensors are looked up bare.
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
        let cfg = BertConfig::from_value(model.config(), &config_path)?;
        check_labels(num_labels, &config_path)?;
        let prefix = detect_prefix(model.tensors(), &cfg, model.dir())?;
        let mut ld = Loader::checkpoint(model.tensors(), &prefix, dtype, device);
        let built = Self::build(&cfg, &mut ld, num_labels, pooling, seed)?;
        ld.log_unused("model");
        Ok(built)
    }

    /// A freshly initialised model (see [`Bert::random`]) with a fresh head; tiny configs
    /// ([`BertConfig::tiny`]) make fast test models.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid config or `num_labels = 0`.
    pub fn random(
        cfg: &BertConfig,
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
        cfg: &BertConfig,
        ld: &mut Loader,
        num_labels: usize,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self> {
        let with_pooler = cfg.model_type == BertFamily::Bert && pooling == Pooling::Cls;
        let bert = Bert::build(cfg, ld, with_pooler)?;
        let layout = head_layout(cfg);
        Self::assemble(bert, layout, ld, cfg.hidden_size, num_labels, pooling, seed)
    }

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

impl Backbone for Bert {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        Bert::forward(self, input, train)
    }

    fn pooling_mask(&self, attention_mask: &Tensor) -> Result<Tensor> {
        self.effective_mask(attention_mask)
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

    fn default_sites(&self) -> DefaultSites {
        encoder_sites(self.default_targets())
    }

    fn virtual_spec(&self) -> VirtualSpec {
        Bert::virtual_spec(self)
    }

    fn set_virtual_tokens(&mut self, tokens: Option<(Placement, Var)>) -> Result<()> {
        Bert::set_virtual_tokens(self, tokens)
    }

    fn virtual_tokens(&self) -> Option<(Placement, Var)> {
        Bert::virtual_tokens(self)
    }
}
