//! What a model family provides under any head: the [`Backbone`] trait. A family implements
//! it once; heads (`heads/`) turn its hidden states into task outputs, so the
//! `…ForSequenceClassification` wiring is written once for every family.

use std::path::Path;

use candle_core::{Tensor, Var};

use crate::adapters::{TokenPlacement, VirtualSpec};
use crate::error::Result;
use crate::io::TensorSource;
use crate::models::heads::HeadLayout;
use crate::models::walk::{Entry, EntryMut};
use crate::models::weights::Loader;
use crate::models::{ModelInput, Pooling};

/// A transformer without its task head.
pub trait Backbone: Send + Sync {
    /// Hidden states of the last layer, `(b_sz, n + seq_len, hidden)` (`n` prompt tokens
    /// when prompt tuning is attached). `train` enables dropout.
    ///
    /// # Errors
    /// Shape, dtype or device mismatches in the input.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor>;

    /// The mask over [`forward`](Backbone::forward)'s positions, to pool with: prompt tokens
    /// count as real tokens. Default: `attention_mask` itself.
    ///
    /// # Errors
    /// A mask of the wrong shape.
    fn pooling_mask(&self, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(attention_mask.clone())
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

    /// Attaches prompt-tuning or prefix-tuning tokens (`None` removes them).
    ///
    /// # Errors
    /// A tensor of the wrong width; a backbone that does not take that placement.
    fn set_virtual_tokens(&mut self, tokens: Option<(TokenPlacement, Var)>) -> Result<()>;

    /// The attached prompt or prefix tokens.
    fn virtual_tokens(&self) -> Option<(TokenPlacement, Var)>;
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
