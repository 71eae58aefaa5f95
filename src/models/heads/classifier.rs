//! The sequence classifier: a backbone, pooling and HF's classification head, whose layout
//! per architecture is data ([`HeadLayout`]), not code. Implements [`Model`] once for every
//! family.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::adapters::{TokenPlacement, VirtualSpec, seeded_rng};
use crate::error::{Error, Result};
use crate::io::ResolvedModel;
use crate::models::backbone::{BuildBackbone, ForwardCtx};
use crate::models::heads::layout::HeadLayout;
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
    /// Each adapter's prompt-tuning soft tokens `(n, hidden)` or prefix-tuning table
    /// `(n, layers·2·hidden)` (PEFT's `prompt_embeddings`).
    virtual_tokens: Vec<AdapterTokens>,
    /// The adapters [`Model::set_active`] last named; `None` until it is called (all active).
    active: Option<Vec<String>>,
}

/// Virtual tokens and the adapter they belong to.
struct AdapterTokens {
    adapter: String,
    placement: TokenPlacement,
    tokens: Var,
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
            virtual_tokens: Vec::new(),
            active: None,
        })
    }

    /// The virtual tokens the forward uses: those of the first active adapter that has some;
    /// before any [`Model::set_active`], those of the one adapter that has some.
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`] when several adapters hold tokens and none was chosen.
    fn active_tokens(&self) -> Result<Option<&AdapterTokens>> {
        match &self.active {
            Some(names) => Ok(names
                .iter()
                .find_map(|n| self.virtual_tokens.iter().find(|t| t.adapter == *n))),
            None => match self.virtual_tokens.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one)),
                many => Err(Error::AmbiguousVirtualTokens {
                    adapters: many.iter().map(|t| t.adapter.clone()).collect(),
                }),
            },
        }
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

    /// The backbone's hidden states with the virtual tokens attached: prompt tokens in front
    /// of the word embeddings, or prefix keys and values for every layer; and the prompt
    /// length (0 without prompt tuning).
    fn backbone_forward(&self, input: &ModelInput, train: bool) -> Result<(Tensor, usize)> {
        let words = self.backbone.embed_tokens(&input.input_ids)?;
        let active = self.active_tokens()?.map(|t| (t.placement, &t.tokens));
        match active {
            None => Ok((
                self.backbone
                    .forward_embeds(&words, input, &ForwardCtx::plain(train))?,
                0,
            )),
            Some((TokenPlacement::Prompt, prompt)) => {
                let (b_sz, _, width) = words.dims3()?;
                let n = prompt.dims()[0];
                let p = prompt
                    .as_tensor()
                    .unsqueeze(0)?
                    .broadcast_as((b_sz, n, width))?
                    .to_dtype(words.dtype())?;
                let words = Tensor::cat(&[&p, &words], 1)?;
                let ctx = ForwardCtx {
                    prompt_len: n,
                    ..ForwardCtx::plain(train)
                };
                Ok((self.backbone.forward_embeds(&words, input, &ctx)?, n))
            }
            Some((TokenPlacement::Prefix, table)) => {
                // PEFT's table: per layer, the keys then the values, each `hidden` wide.
                let h = self.backbone.virtual_spec().hidden;
                let layers = table.dims()[1] / (2 * h);
                let t = table.as_tensor();
                let prefix = (0..layers)
                    .map(|i| {
                        Ok((
                            t.narrow(1, 2 * i * h, h)?.to_dtype(words.dtype())?,
                            t.narrow(1, (2 * i + 1) * h, h)?.to_dtype(words.dtype())?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ctx = ForwardCtx {
                    prefix: Some(&prefix),
                    ..ForwardCtx::plain(train)
                };
                Ok((self.backbone.forward_embeds(&words, input, &ctx)?, 0))
            }
        }
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
        let (hidden, prompt_len) = self.backbone_forward(input, train)?;
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
        if let Some((placement, t)) = &tokens {
            self.backbone.check_virtual_tokens(*placement)?;
            let spec = self.backbone.virtual_spec();
            let width = match placement {
                TokenPlacement::Prompt => spec.hidden,
                TokenPlacement::Prefix => spec.layers * 2 * spec.hidden,
            };
            let (n, w) = t.dims2()?;
            if w != width || n == 0 {
                return Err(Error::TensorShape {
                    op: "virtual tokens",
                    expected: vec![n.max(1), width],
                    got: vec![n, w],
                });
            }
        }
        self.virtual_tokens.retain(|t| t.adapter != adapter);
        if let Some((placement, tokens)) = tokens {
            self.virtual_tokens.push(AdapterTokens {
                adapter: adapter.to_string(),
                placement,
                tokens,
            });
        }
        Ok(())
    }

    fn virtual_tokens(&self) -> Result<Option<(TokenPlacement, Var)>> {
        Ok(self
            .active_tokens()?
            .map(|t| (t.placement, t.tokens.clone())))
    }

    fn adapter_tokens(&self, adapter: &str) -> Option<(TokenPlacement, Var)> {
        self.virtual_tokens
            .iter()
            .find(|t| t.adapter == adapter)
            .map(|t| (t.placement, t.tokens.clone()))
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
        self.active = Some(adapters.iter().map(|a| a.to_string()).collect());
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
