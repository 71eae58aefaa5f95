//! What a model family provides under any head: the [`Backbone`] trait. A family implements
//! it once; heads (`heads/`) turn its hidden states into task outputs, so the
//! `…ForSequenceClassification` wiring is written once for every family.

use std::path::Path;

use candle_core::Tensor;

use crate::adapters::{TokenPlacement, VirtualSpec};
use crate::error::Result;
use crate::io::TensorSource;
use crate::models::heads::HeadLayout;
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{ModelInput, Pooling};

/// What a forward pass is told besides its input.
#[derive(Debug, Clone, Copy)]
pub struct ForwardCtx<'a> {
    /// Dropout on.
    pub train: bool,
    /// Prompt tokens already in front of the word embeddings (they count as real tokens for
    /// positions and attention); 0 without prompt tuning.
    pub prompt_len: usize,
    /// Per layer, prefix keys and values `(n, hidden)` each, attended before the sequence's
    /// own (prefix tuning, as HF's past key values; positions shift past them).
    pub prefix: Option<&'a [(Tensor, Tensor)]>,
}

impl ForwardCtx<'_> {
    /// No prompt, no prefix.
    pub fn plain(train: bool) -> Self {
        Self {
            train,
            prompt_len: 0,
            prefix: None,
        }
    }
}

/// A transformer without its task head. Prompt and prefix tuning work through
/// [`embed_tokens`](Backbone::embed_tokens) and
/// [`forward_embeds`](Backbone::forward_embeds), so no family holds virtual tokens itself.
pub trait Backbone: Send + Sync {
    /// The word embeddings of `input_ids`, `(b_sz, seq_len, width)`: the table lookup only
    /// (HF's `inputs_embeds`).
    ///
    /// # Errors
    /// Ids out of the vocabulary or not `(b_sz, seq_len)`.
    fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor>;

    /// Hidden states of the last layer from word embeddings `(b_sz, n + seq_len, width)`
    /// (`n = ctx.prompt_len` prompt rows in front), for `input`'s `seq_len` real positions.
    ///
    /// # Errors
    /// Shape, dtype or device mismatches; virtual tokens the family refuses.
    fn forward_embeds(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Tensor>;

    /// Hidden states of `input` without virtual tokens. `train` enables dropout.
    ///
    /// # Errors
    /// As [`forward_embeds`](Backbone::forward_embeds).
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let embeds = self.embed_tokens(&input.input_ids)?;
        self.forward_embeds(&embeds, input, &ForwardCtx::plain(train))
    }

    /// The backbone's own pooler on the first token (BERT's `pooler.dense` + tanh).
    ///
    /// # Errors
    /// A backbone without one.
    fn pooler_output(&self, hidden: &Tensor, train: bool) -> Result<Tensor>;

    /// Every tensor, once, in state-dict order, under its checkpoint name (the family's
    /// prefix included, e.g. `bert.`).
    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>));

    /// The same walk with mutable access.
    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>));

    /// Module names PEFT targets by default for this architecture (e.g. `query`, `value`).
    fn default_targets(&self) -> &'static [&'static str];

    /// What prompt-learning methods need to build tokens for this backbone.
    fn virtual_spec(&self) -> VirtualSpec;

    /// The longest input in tokens its position table can index; `None` when positions are
    /// not looked up in a table (relative or rotary positions).
    fn max_seq_len(&self) -> Option<usize>;

    /// Whether the family takes virtual tokens of `placement`; its reason where it does not.
    ///
    /// # Errors
    /// [`Error::VirtualTokensUnsupported`](crate::Error::VirtualTokensUnsupported).
    fn check_virtual_tokens(&self, placement: TokenPlacement) -> Result<()> {
        let _ = placement;
        Ok(())
    }
}

/// How a family's backbone is built from an HF config and weights: what the shared loaders
/// ([`SequenceClassifier::load_from`](crate::models::heads::SequenceClassifier::load_from),
/// `random`) ask of each family.
pub trait BuildBackbone: Backbone + Sized {
    /// The family's `config.json`.
    type Config;

    /// The config from `config.json`'s parsed value (`path` names the file in errors),
    /// validated.
    ///
    /// # Errors
    /// A config this family cannot build.
    fn config_from_value(value: &serde_json::Value, path: &Path) -> Result<Self::Config>;

    /// Checks an in-memory config (`path` names it in errors).
    ///
    /// # Errors
    /// A config this family cannot build.
    fn validate_config(cfg: &Self::Config, path: &Path) -> Result<()>;

    /// Where the backbone sits in a checkpoint: bare, or under the family's prefix (`bert.`).
    ///
    /// # Errors
    /// A checkpoint with neither.
    fn checkpoint_prefix(
        source: &dyn TensorSource,
        cfg: &Self::Config,
        folder: &Path,
    ) -> Result<String>;

    /// Builds the backbone through `ld`; `pooling` says whether a head will use its pooler.
    ///
    /// # Errors
    /// A missing or misshapen tensor.
    fn build(cfg: &Self::Config, ld: &mut Loader<'_>, pooling: Pooling) -> Result<Self>;

    /// HF's sequence-classification head of `cfg`'s architecture.
    fn classifier_head(cfg: &Self::Config) -> HeadLayout;

    /// Hidden width.
    fn hidden_size(cfg: &Self::Config) -> usize;

    /// Standard deviation of freshly initialised weights (`initializer_range`).
    fn initializer_range(cfg: &Self::Config) -> f64;
}
