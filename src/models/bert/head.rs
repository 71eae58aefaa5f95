//! [`BertForSequenceClassification`]: the encoder plus HF's sequence-classification head,
//! implementing [`Model`].

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{BertConfig, BertFamily};
use super::model::{Bert, detect_prefix};
use crate::adapters::{DefaultSites, Placement, VirtualSpec, seeded_rng};
#[cfg(doc)]
use crate::error::Error; // for the `# Errors` links
use crate::error::Result;
use crate::io::ResolvedModel;
use crate::models::layers::{Dense, check_labels, dropout, encoder_sites};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Model, ModelInput, Pooling};

/// The family's classification head.
enum Head {
    /// `classifier` on the pooled vector.
    Bert { classifier: Dense },
    /// `classifier.out_proj(tanh(classifier.dense(x)))` on the pooled vector.
    Roberta { dense: Dense, out_proj: Dense },
}

/// BERT/RoBERTa with HF's sequence-classification head: logits `(b_sz, num_labels)`;
/// `num_labels = 1` is regression.
///
/// Pooling [`Pooling::Cls`] follows the architecture: BERT runs its pooler (dense + tanh on
/// `[CLS]`) then `classifier`; RoBERTa runs `classifier.dense` + tanh + `classifier.out_proj`
/// on `<s>`. [`Pooling::Mean`] (sentence-transformers checkpoints) feeds the masked mean of
/// the last hidden states to the same head, skipping BERT's pooler. Dropout
/// (`classifier_dropout`, else `hidden_dropout_prob`) precedes each head layer in training.
///
/// Head weights are loaded when the checkpoint has them (`classifier.weight`, …), otherwise
/// initialised like PyTorch's `nn.Linear` from the seed. They are trainable [`Var`]s; the
/// encoder is frozen apart from adapters attached to its linears.
pub struct BertForSequenceClassification {
    bert: Bert,
    head: Head,
    pooling: Pooling,
    num_labels: usize,
}

impl std::fmt::Debug for BertForSequenceClassification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertForSequenceClassification")
            .field("bert", &self.bert)
            .field("pooling", &self.pooling)
            .field("num_labels", &self.num_labels)
            .finish()
    }
}

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
        let h = cfg.hidden_size;
        let mut rng = seeded_rng(seed);
        let head = match cfg.model_type {
            BertFamily::Bert => Head::Bert {
                classifier: Dense::build(ld, "classifier", (num_labels, h), &mut rng)?,
            },
            BertFamily::Roberta => Head::Roberta {
                dense: Dense::build(ld, "classifier.dense", (h, h), &mut rng)?,
                out_proj: Dense::build(ld, "classifier.out_proj", (num_labels, h), &mut rng)?,
            },
        };
        Ok(Self {
            bert,
            head,
            pooling,
            num_labels,
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Bert {
        &self.bert
    }

    /// The config the model was built from.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }

    /// Outputs per example (1 = regression).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// How the head pools the hidden states.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Sentence embeddings `(b_sz, hidden)` from the encoder alone (no head, no dropout).
    ///
    /// # Errors
    /// As [`Bert::forward`].
    pub fn embed(&self, input: &ModelInput, pooling: Pooling) -> Result<Tensor> {
        self.bert.embed(input, pooling)
    }

    fn head_dropout(&self) -> f64 {
        let cfg = self.config();
        cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob)
    }
}

impl Model for BertForSequenceClassification {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let hidden = self.bert.forward(input, train)?;
        let p = self.head_dropout();
        let pooled = match (&self.head, self.pooling) {
            (Head::Bert { .. }, Pooling::Cls) => self.bert.pooler_output(&hidden, train)?,
            (_, pooling) => {
                let mask = self.bert.effective_mask(&input.attention_mask)?;
                Bert::pool(&hidden, &mask, pooling)?
            }
        };
        let x = dropout(&pooled, p, train)?;
        match &self.head {
            Head::Bert { classifier } => classifier.forward(&x),
            Head::Roberta { dense, out_proj } => {
                let x = dense.forward(&x)?.tanh()?;
                out_proj.forward(&dropout(&x, p, train)?)
            }
        }
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.bert.walk(self.config().model_type.prefix(), f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        let prefix = self.config().model_type.prefix();
        self.bert.walk_mut(prefix, f);
    }

    fn virtual_spec(&self) -> VirtualSpec {
        self.bert.virtual_spec()
    }

    fn set_virtual_tokens(&mut self, tokens: Option<(Placement, Var)>) -> Result<()> {
        self.bert.set_virtual_tokens(tokens)
    }

    fn virtual_tokens(&self) -> Option<(Placement, Var)> {
        self.bert.virtual_tokens()
    }

    fn head_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        match &self.head {
            Head::Bert { classifier } => classifier.vars(&mut out),
            Head::Roberta { dense, out_proj } => {
                dense.vars(&mut out);
                out_proj.vars(&mut out);
            }
        }
        out
    }

    fn fresh_output_bias(&self) -> Option<Var> {
        match &self.head {
            Head::Bert { classifier } => classifier.fresh_bias(),
            Head::Roberta { out_proj, .. } => out_proj.fresh_bias(),
        }
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn default_sites(&self) -> DefaultSites {
        encoder_sites(self.default_targets())
    }

    fn architecture(&self) -> &'static str {
        match self.config().model_type {
            BertFamily::Bert => "BertForSequenceClassification",
            BertFamily::Roberta => "RobertaForSequenceClassification",
        }
    }
}
