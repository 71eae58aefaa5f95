//! What a model family provides under any head: the [`Backbone`] trait. A family implements
//! it once; heads (`heads/`) turn its hidden states into task outputs, so the
//! `…ForSequenceClassification` wiring is written once for every family.

use candle_core::{Tensor, Var};

use crate::adapters::{DefaultSites, Placement, VirtualSpec};
use crate::error::Result;
use crate::models::ModelInput;
use crate::models::walk::{Entry, EntryMut};

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

    /// Every default site a method may target, as the family names them.
    fn default_sites(&self) -> DefaultSites;

    /// What prompt-learning methods need to build tokens for this backbone.
    fn virtual_spec(&self) -> VirtualSpec;

    /// Attaches prompt-tuning or prefix-tuning tokens (`None` removes them).
    ///
    /// # Errors
    /// A tensor of the wrong width; a backbone that does not take that placement.
    fn set_virtual_tokens(&mut self, tokens: Option<(Placement, Var)>) -> Result<()>;

    /// The attached prompt or prefix tokens.
    fn virtual_tokens(&self) -> Option<(Placement, Var)>;
}
