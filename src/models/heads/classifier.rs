//! The sequence classifier: a backbone, pooling and HF's classification head, whose layout
//! per architecture is data ([`HeadLayout`]), not code. Implements [`Model`] once for every
//! family.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::adapters::{TokenPlacement, VirtualSpec, seeded_rng};
use crate::error::{Error, Result};
use crate::io::ResolvedModel;
use crate::models::backbone::BuildBackbone;
use crate::models::heads::layout::HeadLayout;
use crate::models::heads::virtual_tokens::VirtualTokens;
use crate::models::layers::{Dense, check_labels, dropout, pool, with_prompt_mask};
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{Backbone, Model, ModelInput, Pooling, activate_linears};

/// A backbone with HF's sequence-classification head: logits `(b_sz, num_labels)`;
/// `num_labels = 1` is regression. The head's layers are trainable [`Var`]s, loaded when the
/// checkpoint has them, otherwise initialised like PyTorch's `nn.Linear` from the seed.
pub struct SequenceClassifier<B> {
    backbone: B,
    layout: HeadLayout,
    hidden_size: usize,
    /// One head per adapter (PEFT's `modules_to_save`); the first is the model's own,
    /// named [`BASE_HEAD`].
    heads: Vec<NamedHead>,
    /// Index into `heads` of the head the forward uses.
    active_head: usize,
    pooling: Pooling,
    /// Each adapter's prompt-tuning or prefix-tuning tokens.
    virtual_tokens: VirtualTokens,
}

/// The name of the head a classifier is built with: the adapter name `ttlora train` uses
/// (PEFT's default).
pub const BASE_HEAD: &str = "default";

/// A head and the adapter it belongs to.
struct NamedHead {
    adapter: String,
    hidden: Option<Dense>,
    output: Dense,
    num_labels: usize,
}

impl<B: std::fmt::Debug> std::fmt::Debug for SequenceClassifier<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.layout.architecture)
            .field("backbone", &self.backbone)
            .field("pooling", &self.pooling)
            .field("num_labels", &self.heads[self.active_head].num_labels)
            .field(
                "heads",
                &self
                    .heads
                    .iter()
                    .map(|h| h.adapter.as_str())
                    .collect::<Vec<_>>(),
            )
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
    fn assemble(
        backbone: B,
        layout: HeadLayout,
        ld: &mut Loader,
        hidden_size: usize,
        num_labels: usize,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self> {
        let head = build_head(&layout, ld, hidden_size, num_labels, BASE_HEAD, seed)?;
        Ok(Self {
            backbone,
            layout,
            hidden_size,
            heads: vec![head],
            active_head: 0,
            pooling,
            virtual_tokens: VirtualTokens::default(),
        })
    }

    fn head(&self) -> &NamedHead {
        &self.heads[self.active_head]
    }

    /// The backbone.
    pub fn encoder(&self) -> &B {
        &self.backbone
    }

    /// Outputs per example of the active head (1 = regression).
    pub fn num_labels(&self) -> usize {
        self.head().num_labels
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

impl<B: BuildBackbone> SequenceClassifier<B> {
    /// Loads the model in `dir` in `dtype`. The backbone may sit bare (a `…Model`
    /// checkpoint) or under the family's prefix (`…For…`); head tensors are looked up bare,
    /// and `seed` initialises the ones the checkpoint lacks.
    ///
    /// # Errors
    /// [`Error::ModelConfig`](crate::Error::ModelConfig) for an unsupported config or
    /// `num_labels = 0`; [`Error::WeightTensor`](crate::Error::WeightTensor) naming file,
    /// tensor, expected and got shape for a missing or misshapen tensor (including a
    /// checkpoint head with another `num_labels`); file errors.
    pub fn load(
        dir: &Path,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let model = ResolvedModel::from_dir(dir)?;
        Self::load_from(&model, num_labels, pooling, dtype, device, seed)
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
        let cfg = B::config_from_value(model.config(), &config_path)?;
        check_labels(num_labels, &config_path)?;
        let prefix = B::checkpoint_prefix(model.tensors(), &cfg, model.dir())?;
        let mut ld = Loader::checkpoint(model.tensors(), &prefix, dtype, device);
        let built = Self::build(&cfg, &mut ld, num_labels, pooling, seed)?;
        ld.log_unused("model");
        Ok(built)
    }

    /// A freshly initialised model with a fresh head; tiny configs (`…Config::tiny()`) make
    /// fast test models.
    ///
    /// # Errors
    /// [`Error::ModelConfig`](crate::Error::ModelConfig) for an invalid config or
    /// `num_labels = 0`.
    pub fn random(
        cfg: &B::Config,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let path = Path::new("<in-memory config>");
        B::validate_config(cfg, path)?;
        check_labels(num_labels, path)?;
        // The backbone draws from its own stream so the head matches a loaded model's head.
        let rng = seeded_rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut ld = Loader::random(rng, B::initializer_range(cfg), dtype, device);
        Self::build(cfg, &mut ld, num_labels, pooling, seed)
    }

    fn build(
        cfg: &B::Config,
        ld: &mut Loader,
        num_labels: usize,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self> {
        let backbone = B::build(cfg, ld, pooling)?;
        let layout = B::classifier_head(cfg);
        Self::assemble(
            backbone,
            layout,
            ld,
            B::hidden_size(cfg),
            num_labels,
            pooling,
            seed,
        )
    }
}

impl<B: Backbone> Model for SequenceClassifier<B> {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("sequence-classifier").entered();
        let (hidden, prompt_len) = self.virtual_tokens.forward(&self.backbone, input, train)?;
        let pooled = match self.pooling {
            Pooling::Cls if self.layout.cls_through_backbone_pooler => {
                self.backbone.pooler_output(&hidden, train)?
            }
            pooling => {
                let mask = with_prompt_mask(&input.attention_mask, prompt_len)?;
                pool(&hidden, &mask, pooling)?
            }
        };
        let head = self.head();
        let x = match (&self.layout.hidden, &head.hidden) {
            (Some(l), Some(dense)) => {
                let x = dense.forward(&dropout(&pooled, l.dropout, train)?)?;
                l.activation.apply(&x)?
            }
            _ => pooled,
        };
        head.output
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
        let head = self.head();
        if let Some(h) = &head.hidden {
            h.vars(&mut out);
        }
        head.output.vars(&mut out);
        out
    }

    fn fresh_output_bias(&self) -> Option<Var> {
        self.head().output.fresh_bias()
    }

    fn default_targets(&self) -> &'static [&'static str] {
        self.backbone.default_targets()
    }

    fn virtual_spec(&self) -> VirtualSpec {
        self.backbone.virtual_spec()
    }

    fn max_seq_len(&self) -> Option<usize> {
        self.backbone.max_seq_len()
    }

    fn set_virtual_tokens(
        &mut self,
        adapter: &str,
        tokens: Option<(TokenPlacement, Var)>,
    ) -> Result<()> {
        self.virtual_tokens.set(&self.backbone, adapter, tokens)
    }

    fn virtual_tokens(&self) -> Result<Option<(TokenPlacement, Var)>> {
        self.virtual_tokens.active()
    }

    fn adapter_tokens(&self, adapter: &str) -> Option<(TokenPlacement, Var)> {
        self.virtual_tokens.of(adapter)
    }

    fn architecture(&self) -> &'static str {
        self.layout.architecture
    }

    fn add_head(&mut self, adapter: &str, num_labels: usize, seed: u64) -> Result<()> {
        if self.heads.iter().any(|h| h.adapter == adapter) {
            return Err(Error::HeadExists {
                adapter: adapter.to_string(),
            });
        }
        let spec = self.backbone.virtual_spec();
        let mut ld = Loader::random(seeded_rng(seed), 0.0, spec.dtype, &spec.device);
        let head = build_head(
            &self.layout,
            &mut ld,
            self.hidden_size,
            num_labels,
            adapter,
            seed,
        )?;
        self.heads.push(head);
        Ok(())
    }

    fn set_active(&mut self, adapters: &[&str]) -> Result<()> {
        activate_linears(self, adapters)?;
        // The first named adapter with a head of its own, else the model's own head.
        self.active_head = adapters
            .iter()
            .find_map(|a| self.heads.iter().position(|h| h.adapter == *a))
            .unwrap_or(0);
        self.virtual_tokens.set_active(adapters);
        Ok(())
    }
}

/// A head of `layout` for `adapter`, its layers loaded through `ld` where the checkpoint has
/// them, else initialised from `seed`: the hidden layer `(hidden, hidden)`, the output
/// `(num_labels, hidden)`.
fn build_head(
    layout: &HeadLayout,
    ld: &mut Loader,
    hidden_size: usize,
    num_labels: usize,
    adapter: &str,
    seed: u64,
) -> Result<NamedHead> {
    let mut rng = seeded_rng(seed);
    let h = hidden_size;
    let hidden = match &layout.hidden {
        Some(l) => Some(Dense::build(ld, l.name, (h, h), &mut rng)?),
        None => None,
    };
    let output = Dense::build(ld, layout.output, (num_labels, h), &mut rng)?;
    Ok(NamedHead {
        adapter: adapter.to_string(),
        hidden,
        output,
        num_labels,
    })
}
