//! Prompt-tuning and prefix-tuning tokens per adapter, and the backbone forward that puts
//! them in place: what every head (classifier, LM head) shares, so no head or family holds
//! virtual tokens in its own way.

use candle_core::{DType, Tensor, Var};

use crate::adapters::TokenPlacement;
use crate::error::{Error, Result};
use crate::models::backbone::ForwardCtx;
use crate::models::{Backbone, ModelInput};

/// Virtual tokens and the adapter they belong to.
struct AdapterTokens {
    adapter: String,
    placement: TokenPlacement,
    tokens: Var,
}

/// Each adapter's prompt-tuning soft tokens `(n, hidden)` or prefix-tuning table
/// `(n, layers·2·kv_width)` (PEFT's `prompt_embeddings`), and which adapters are active.
#[derive(Default)]
pub(crate) struct VirtualTokens {
    tokens: Vec<AdapterTokens>,
    /// The adapters [`set_active`](Self::set_active) last named; `None` until it is called.
    active: Option<Vec<String>>,
}

impl VirtualTokens {
    /// The tokens the forward uses: those of the first active adapter that has some; before
    /// any [`set_active`](Self::set_active), those of the one adapter that has some.
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`] when several adapters hold tokens and none was chosen.
    fn in_use(&self) -> Result<Option<&AdapterTokens>> {
        match &self.active {
            Some(names) => Ok(names
                .iter()
                .find_map(|n| self.tokens.iter().find(|t| t.adapter == *n))),
            None => match self.tokens.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one)),
                many => Err(Error::AmbiguousVirtualTokens {
                    adapters: many.iter().map(|t| t.adapter.clone()).collect(),
                }),
            },
        }
    }

    /// The placement and tokens the forward uses (see [`Model::virtual_tokens`](crate::models::Model::virtual_tokens)).
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`].
    pub(crate) fn active(&self) -> Result<Option<(TokenPlacement, Var)>> {
        Ok(self.in_use()?.map(|t| (t.placement, t.tokens.clone())))
    }

    /// The tokens `adapter` holds, active or not.
    pub(crate) fn of(&self, adapter: &str) -> Option<(TokenPlacement, Var)> {
        self.tokens
            .iter()
            .find(|t| t.adapter == adapter)
            .map(|t| (t.placement, t.tokens.clone()))
    }

    /// Gives `adapter` these tokens (replacing any it had; `None` removes them), after
    /// checking that `backbone` takes the placement and the table's width.
    ///
    /// # Errors
    /// A placement the backbone refuses; a table of the wrong width or with no rows.
    pub(crate) fn set(
        &mut self,
        backbone: &dyn Backbone,
        adapter: &str,
        tokens: Option<(TokenPlacement, Var)>,
    ) -> Result<()> {
        if let Some((placement, t)) = &tokens {
            backbone.check_virtual_tokens(*placement)?;
            let spec = backbone.virtual_spec();
            let width = match placement {
                TokenPlacement::Prompt => spec.hidden,
                TokenPlacement::Prefix => spec.prefix_width(),
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
        self.tokens.retain(|t| t.adapter != adapter);
        if let Some((placement, tokens)) = tokens {
            self.tokens.push(AdapterTokens {
                adapter: adapter.to_string(),
                placement,
                tokens,
            });
        }
        Ok(())
    }

    /// Records the adapters the forward uses, in order of preference.
    pub(crate) fn set_active(&mut self, adapters: &[&str]) {
        self.active = Some(adapters.iter().map(|a| a.to_string()).collect());
    }

    /// The backbone's hidden states with the active tokens attached: prompt tokens in front
    /// of the word embeddings, or prefix keys and values for every layer; and the prompt
    /// length (0 without prompt tuning), the rows in front of `input`'s own.
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`]; the backbone's errors.
    pub(crate) fn forward<B: Backbone + ?Sized>(
        &self,
        backbone: &B,
        input: &ModelInput,
        train: bool,
    ) -> Result<(Tensor, usize)> {
        let v = self.inputs(backbone, input)?;
        let ctx = ForwardCtx {
            prompt_len: v.prompt_len,
            prefix: v.prefix.as_deref(),
            ..ForwardCtx::plain(train)
        };
        Ok((
            backbone.forward_embeds(&v.embeds, input, &ctx)?,
            v.prompt_len,
        ))
    }

    /// What the backbone's forward takes with the active tokens attached: the word
    /// embeddings with any prompt rows in front, and any prefix keys and values per layer.
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`]; the backbone's errors.
    pub(crate) fn inputs<B: Backbone + ?Sized>(
        &self,
        backbone: &B,
        input: &ModelInput,
    ) -> Result<VirtualInputs> {
        let words = backbone.embed_tokens(&input.input_ids)?;
        match self.in_use()?.map(|t| (t.placement, &t.tokens)) {
            None => Ok(VirtualInputs {
                embeds: words,
                prompt_len: 0,
                prefix: None,
            }),
            Some((TokenPlacement::Prompt, prompt)) => {
                let (b_sz, _, width) = words.dims3()?;
                let n = prompt.dims2()?.0;
                let p = prompt
                    .as_tensor()
                    .unsqueeze(0)?
                    .broadcast_as((b_sz, n, width))?
                    .to_dtype(words.dtype())?;
                Ok(VirtualInputs {
                    embeds: Tensor::cat(&[&p, &words], 1)?,
                    prompt_len: n,
                    prefix: None,
                })
            }
            Some((TokenPlacement::Prefix, table)) => {
                let w = backbone.virtual_spec().kv_width;
                Ok(VirtualInputs {
                    prefix: Some(prefix_pairs(table.as_tensor(), w, words.dtype())?),
                    embeds: words,
                    prompt_len: 0,
                })
            }
        }
    }
}

/// A forward's inputs with the active virtual tokens attached.
pub(crate) struct VirtualInputs {
    /// Word embeddings, prompt rows in front.
    pub(crate) embeds: Tensor,
    /// Prompt rows in front of the input's own (0 without prompt tuning).
    pub(crate) prompt_len: usize,
    /// Per layer, prefix keys and values.
    pub(crate) prefix: Option<Vec<(Tensor, Tensor)>>,
}

/// A prefix-tuning table `(n, layers·2·kv_width)` split into each layer's keys and values,
/// `(n, kv_width)` each, in `dtype`: PEFT's layout, per layer the keys then the values.
///
/// # Errors
/// Tensor errors.
pub(crate) fn prefix_pairs(
    table: &Tensor,
    kv_width: usize,
    dtype: DType,
) -> Result<Vec<(Tensor, Tensor)>> {
    // `set` checked the width against the model's layers; a table built elsewhere is
    // checked here rather than truncated.
    let (_, width) = table.dims2()?;
    let pair = 2 * kv_width;
    if pair == 0 || width % pair != 0 {
        return Err(Error::TensorShape {
            op: "prefix table (layers · 2 · kv_width wide)",
            expected: vec![pair],
            got: vec![width],
        });
    }
    let layers = width / pair;
    (0..layers)
        .map(|i| {
            Ok((
                table
                    .narrow(1, 2 * i * kv_width, kv_width)?
                    .to_dtype(dtype)?,
                table
                    .narrow(1, (2 * i + 1) * kv_width, kv_width)?
                    .to_dtype(dtype)?,
            ))
        })
        .collect()
}
