//! The causal language model: a decoder backbone with its LM head (HF's `…ForCausalLM`).
//! Implements [`Model`] once for every decoder family; its logits are next-token
//! distributions, computed only at the positions asked for.

use candle_core::{DType, Tensor, Var};

use crate::adapters::{TokenPlacement, VirtualSpec};
use crate::error::{Error, Result};
use crate::models::backbone::ForwardCtx;
use crate::models::heads::virtual_tokens::VirtualTokens;
use crate::models::walk::{Entry, EntryMut, Module};
use crate::models::{Backbone, Model, ModelInput, activate_linears};

/// What a decoder backbone adds for the LM head, and its layers one at a time (gradient
/// checkpointing reruns them).
pub trait Decoder: Backbone {
    /// What every layer of one forward shares (positions, masks, prefix keys and values).
    type LayerInputs;

    /// Next-token logits `(b, t, vocab)` from final hidden states `(b, t, hidden)`.
    ///
    /// # Errors
    /// Hidden states of the wrong shape.
    fn lm_logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor>;

    /// What the layers of a forward over `embeds` (as [`Backbone::forward_embeds`] takes
    /// them) share.
    ///
    /// # Errors
    /// As [`Backbone::forward_embeds`].
    fn layer_inputs(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Self::LayerInputs>;

    /// The number of layers.
    fn num_layers(&self) -> usize;

    /// Layer `i` over hidden states `x`.
    ///
    /// # Errors
    /// An index past the layers; shape errors.
    fn layer_forward(&self, i: usize, x: &Tensor, shared: &Self::LayerInputs) -> Result<Tensor>;

    /// The norm after the last layer.
    ///
    /// # Errors
    /// Shape errors.
    fn final_norm(&self, x: &Tensor) -> Result<Tensor>;

    /// HF's class name (`LlamaForCausalLM`).
    fn architecture(&self) -> &'static str;

    /// The LM head's weight `(vocab, hidden)` when the head is a plain frozen product (no
    /// adapter, no bias, not trained): the loss can then skip keeping the logits. Default:
    /// none (the loss goes through the logits).
    fn frozen_lm_head(&self) -> Option<Tensor> {
        None
    }
}

/// A decoder with its LM head: [`Model::forward`] gives each example's next-token logits
/// after its last real token `(b, vocab)`; [`Model::token_logits`] those at any positions.
/// The LM head is part of the base model (its walk), so there are no head variables.
pub struct CausalLm<B> {
    decoder: B,
    virtual_tokens: VirtualTokens,
    /// Recompute each layer in the backward instead of keeping its activations.
    checkpoint_layers: bool,
    /// HF's `…ForSequenceClassification` head (`score`, `(num_labels, hidden)`, no bias),
    /// when the decoder classifies instead of predicting tokens.
    score: Option<Var>,
}

/// The checkpoint name of a decoder's classification head (HF's and PEFT's `score`).
pub const SCORE_HEAD: &str = "score.weight";

/// The standard deviation HF initialises a decoder's `score` head with (LlamaConfig's
/// default `initializer_range`).
const SCORE_INIT_STD: f64 = 0.02;

impl<B: std::fmt::Debug> std::fmt::Debug for CausalLm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl<B: Decoder> CausalLm<B> {
    /// `decoder` with its LM head and no virtual tokens.
    pub fn new(decoder: B) -> Self {
        Self {
            decoder,
            virtual_tokens: VirtualTokens::default(),
            checkpoint_layers: false,
            score: None,
        }
    }

    /// Gives the decoder HF's sequence-classification head: a fresh `score` linear (no bias)
    /// of `num_labels` rows, drawn from N(0, 0.02²) with `seed` as transformers initialises
    /// it, applied to the last real token's final hidden state. [`Model::forward`] then gives
    /// `(b, num_labels)` logits, and [`Model::head_vars`] lists the head.
    ///
    /// # Errors
    /// No labels; tensor errors.
    pub fn set_score_head(&mut self, num_labels: usize, seed: u64) -> Result<()> {
        if num_labels == 0 || num_labels > crate::io::adapter_folder::MAX_LABELS {
            return Err(Error::UnsupportedInput {
                field: "num_labels",
                reason: "a classification head needs 1 to 65,536 labels",
            });
        }
        let spec = self.decoder.virtual_spec();
        let (hidden, device) = (spec.hidden, spec.word_embeddings.device().clone());
        let weight = crate::adapters::normal(
            &[num_labels, hidden],
            SCORE_INIT_STD,
            &mut crate::adapters::seeded_rng(seed),
            spec.dtype,
            &device,
        )?;
        self.score = Some(Var::from_tensor(&weight)?);
        Ok(())
    }

    /// The classification head's label count, when it has one.
    pub fn score_labels(&self) -> Option<usize> {
        self.score.as_ref().map(|w| w.dims()[0])
    }

    /// The decoder.
    pub fn decoder(&self) -> &B {
        &self.decoder
    }

    /// The decoder, mutable.
    pub fn decoder_mut(&mut self) -> &mut B {
        &mut self.decoder
    }

    /// The final hidden states of `input`'s own positions, `(b·t, hidden)` (prompt rows
    /// dropped).
    fn flat_hidden(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let (hidden, prompt_len) = self.virtual_tokens.forward(&self.decoder, input, train)?;
        own_rows(&hidden, prompt_len)
    }

    /// Gradient checkpointing's step (see [`Model::checkpointed_token_grads`]): the layers
    /// run once without a graph, keeping each one's input and the dropout generator it
    /// started from; the head's backward gives the gradient at the last layer's output; then
    /// from the last layer down, each is rerun from its input with the same masks and
    /// differentiated alone, its parameters' gradients collected and its input's passed on.
    /// Prompt rows get theirs through the embeddings' own graph; prefix keys and values
    /// through each layer's.
    fn recomputed_token_grads(
        &self,
        input: &ModelInput,
        rows: &Tensor,
        labels: &Tensor,
        scale: f64,
        vars: &[Var],
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        let v = self.virtual_tokens.inputs(&self.decoder, input)?;
        let ctx = ForwardCtx {
            prompt_len: v.prompt_len,
            prefix: v.prefix.as_deref(),
            ..ForwardCtx::plain(true)
        };
        let shared = self.decoder.layer_inputs(&v.embeds, input, &ctx)?;
        // The first pass sees a prefix without its graph, so it records nothing.
        let untracked_prefix: Option<Vec<(Tensor, Tensor)>> = v
            .prefix
            .as_ref()
            .map(|p| p.iter().map(|(k, w)| (k.detach(), w.detach())).collect());
        let untracked = match &untracked_prefix {
            Some(prefix) => {
                let first_ctx = ForwardCtx {
                    prefix: Some(prefix),
                    ..ctx
                };
                Some(self.decoder.layer_inputs(&v.embeds, input, &first_ctx)?)
            }
            None => None,
        };
        let first = untracked.as_ref().unwrap_or(&shared);
        let n = self.decoder.num_layers();
        let mut saved = Vec::with_capacity(n);
        let mut x = v.embeds.detach();
        crate::ops::no_grad(|| -> Result<()> {
            for i in 0..n {
                saved.push((x.clone(), crate::ops::dropout_rng()));
                x = self.decoder.layer_forward(i, &x, first)?;
            }
            Ok(())
        })?;
        let mut grads = vec![None; vars.len()];
        let top = Var::from_tensor(&x)?;
        let hidden = self.decoder.final_norm(top.as_tensor())?;
        let loss = self.loss_at(&own_rows(&hidden, v.prompt_len)?, rows, labels, true)?;
        // Where one backward's forward would leave the masks: after the head's.
        let after = crate::ops::dropout_rng();
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = (loss * scale)?.backward()?;
        crate::models::add_grads(&store, vars, &mut grads)?;
        let grad_of = |store: &candle_core::backprop::GradStore, t: &Tensor| -> Result<Tensor> {
            Ok(match store.get(t) {
                Some(g) => g.clone(),
                None => t.zeros_like()?,
            })
        };
        let mut g = grad_of(&store, top.as_tensor())?;
        for (i, (layer_input, rng)) in saved.into_iter().enumerate().rev() {
            crate::ops::set_dropout_rng(rng);
            let xi = Var::from_tensor(&layer_input)?;
            let out = self.decoder.layer_forward(i, xi.as_tensor(), &shared)?;
            let store = (out * &g)?.sum_all()?.backward()?;
            crate::models::add_grads(&store, vars, &mut grads)?;
            g = grad_of(&store, xi.as_tensor())?;
        }
        crate::ops::set_dropout_rng(after);
        if v.embeds.track_op() {
            let store = (&v.embeds * &g)?.sum_all()?.backward()?;
            crate::models::add_grads(&store, vars, &mut grads)?;
        }
        Ok((value, grads))
    }

    /// The mean next-token loss at flat rows of hidden states against `labels`: through the
    /// fused [`linear_cross_entropy`](crate::ops::linear_cross_entropy) when the head is
    /// frozen, else the logits' cross-entropy.
    fn loss_at(
        &self,
        flat: &Tensor,
        rows: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        match self.decoder.frozen_lm_head() {
            Some(w) => {
                let picked = pick_rows(flat, rows)?;
                Ok(crate::ops::linear_cross_entropy(&picked, &w, labels)?.to_dtype(DType::F32)?)
            }
            None => {
                let logits = self.logits_at(flat, rows, train)?;
                crate::ops::cross_entropy(&logits.to_dtype(DType::F32)?, labels)
            }
        }
    }

    /// Logits at flat rows of hidden states `(rows, hidden)`.
    fn logits_at(&self, flat: &Tensor, rows: &Tensor, train: bool) -> Result<Tensor> {
        let picked = pick_rows(flat, rows)?;
        Ok(self
            .decoder
            .lm_logits(&picked.unsqueeze(0)?, train)?
            .squeeze(0)?)
    }
}

/// Rows `rows` (flat `b·t` indices) of `flat: (n, hidden)`, each checked below n:
/// `index_select` would read past the rows unchecked on some backends.
fn pick_rows(flat: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let n = flat.dim(0)?;
    let rows = rows.to_dtype(DType::U32)?;
    if let Some(m) = rows.to_vec1::<u32>()?.into_iter().max()
        && m as usize >= n
    {
        return Err(Error::TensorShape {
            op: "token rows (b·t positions)",
            expected: vec![n],
            got: vec![m as usize + 1],
        });
    }
    Ok(flat.index_select(&rows, 0)?)
}

/// Hidden states `(b, n, hidden)` without the `prompt_len` prompt rows in front, flat:
/// `(b·(n − prompt_len), hidden)`.
fn own_rows(hidden: &Tensor, prompt_len: usize) -> Result<Tensor> {
    let (b, n, h) = hidden.dims3()?;
    let hidden = hidden.narrow(1, prompt_len, n - prompt_len)?;
    Ok(hidden.reshape((b * (n - prompt_len), h))?)
}

/// The flat index `b·t + last` of each row's last real token (right padding).
///
/// # Errors
/// A mask that is not `(b, t)`.
pub fn last_token_rows(attention_mask: &Tensor) -> Result<Tensor> {
    let (_, t) = attention_mask.dims2()?;
    let lengths = attention_mask
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1::<u32>()?;
    let rows: Vec<u32> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| (i * t) as u32 + n.saturating_sub(1))
        .collect();
    Ok(Tensor::new(rows, attention_mask.device())?)
}

impl<B: Decoder> Model for CausalLm<B> {
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("causal-lm").entered();
        let flat = self.flat_hidden(input, train)?;
        let last = last_token_rows(&input.attention_mask)?;
        match &self.score {
            // HF pools the last non-pad token (right padding: the mask's last one).
            Some(w) => Ok(pick_rows(&flat, &last)?.matmul(&w.as_tensor().t()?)?),
            None => self.logits_at(&flat, &last, train),
        }
    }

    fn token_logits(&self, input: &ModelInput, rows: &Tensor, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("causal-lm-tokens").entered();
        let flat = self.flat_hidden(input, train)?;
        self.logits_at(&flat, rows, train)
    }

    fn token_loss(
        &self,
        input: &ModelInput,
        rows: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("causal-lm-loss").entered();
        let flat = self.flat_hidden(input, train)?;
        self.loss_at(&flat, rows, labels, train)
    }

    fn set_gradient_checkpointing(&mut self, on: bool) -> Result<()> {
        self.checkpoint_layers = on;
        Ok(())
    }

    fn gradient_checkpointing(&self) -> bool {
        self.checkpoint_layers
    }

    fn checkpointed_token_grads(
        &self,
        input: &ModelInput,
        rows: &Tensor,
        labels: &Tensor,
        scale: f64,
        vars: &[Var],
    ) -> Option<Result<(f64, Vec<Option<Tensor>>)>> {
        self.checkpoint_layers
            .then(|| self.recomputed_token_grads(input, rows, labels, scale, vars))
    }

    /// With a `score` head, HF's `…ForSequenceClassification` layout: the decoder without its
    /// LM head, which a classifier never runs (so neither targets, merges nor exports see it).
    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        let classifier = self.score.is_some();
        self.decoder.walk(&mut |name, e| {
            let (Entry::Linear(tag, _) | Entry::Tensor(tag, _)) = &e;
            if !(classifier && tag.module == Module::LmHead) {
                f(name, e);
            }
        });
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        let classifier = self.score.is_some();
        self.decoder.walk_mut(&mut |name, e| {
            let (EntryMut::Linear(tag, _) | EntryMut::Tensor(tag, _)) = &e;
            if !(classifier && tag.module == Module::LmHead) {
                f(name, e);
            }
        });
    }

    fn head_vars(&self) -> Vec<(String, Var)> {
        self.score
            .iter()
            .map(|w| (SCORE_HEAD.to_string(), w.clone()))
            .collect()
    }

    fn fresh_output_bias(&self) -> Option<Var> {
        None
    }

    fn default_targets(&self) -> &'static [&'static str] {
        self.decoder.default_targets()
    }

    fn virtual_spec(&self) -> VirtualSpec {
        self.decoder.virtual_spec()
    }

    fn max_seq_len(&self) -> Option<usize> {
        self.decoder.max_seq_len()
    }

    fn set_virtual_tokens(
        &mut self,
        adapter: &str,
        tokens: Option<(TokenPlacement, Var)>,
    ) -> Result<()> {
        self.virtual_tokens.set(&self.decoder, adapter, tokens)
    }

    fn virtual_tokens(&self) -> Result<Option<(TokenPlacement, Var)>> {
        self.virtual_tokens.active()
    }

    fn adapter_tokens(&self, adapter: &str) -> Option<(TokenPlacement, Var)> {
        self.virtual_tokens.of(adapter)
    }

    fn set_active(&mut self, adapters: &[&str]) -> Result<()> {
        activate_linears(self, adapters)?;
        self.virtual_tokens.set_active(adapters);
        Ok(())
    }

    fn peft_task_type(&self) -> &'static str {
        if self.score.is_some() {
            "SEQ_CLS"
        } else {
            "CAUSAL_LM"
        }
    }

    fn architecture(&self) -> &'static str {
        match (&self.score, self.decoder.architecture()) {
            (Some(_), "LlamaForCausalLM") => "LlamaForSequenceClassification",
            (Some(_), "MistralForCausalLM") => "MistralForSequenceClassification",
            (Some(_), "Qwen2ForCausalLM") => "Qwen2ForSequenceClassification",
            (_, name) => name,
        }
    }
}
