//! The causal language model: a decoder backbone with its LM head (HF's `…ForCausalLM`).
//! Implements [`Model`] once for every decoder family; its logits are next-token
//! distributions, computed only at the positions asked for.

use candle_core::{DType, Tensor, Var};

use crate::adapters::{TokenPlacement, VirtualSpec};
use crate::error::{Error, Result};
use crate::models::heads::virtual_tokens::VirtualTokens;
use crate::models::walk::{Entry, EntryMut};
use crate::models::{Backbone, Model, ModelInput, activate_linears};

/// What a decoder backbone adds for the LM head.
pub trait Decoder: Backbone {
    /// Next-token logits `(b, t, vocab)` from final hidden states `(b, t, hidden)`.
    ///
    /// # Errors
    /// Hidden states of the wrong shape.
    fn lm_logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor>;

    /// HF's class name (`LlamaForCausalLM`).
    fn architecture(&self) -> &'static str;
}

/// A decoder with its LM head: [`Model::forward`] gives each example's next-token logits
/// after its last real token `(b, vocab)`; [`Model::token_logits`] those at any positions.
/// The LM head is part of the base model (its walk), so there are no head variables.
pub struct CausalLm<B> {
    decoder: B,
    virtual_tokens: VirtualTokens,
}

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
        }
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
        let (b, n, h) = hidden.dims3()?;
        let hidden = hidden.narrow(1, prompt_len, n - prompt_len)?;
        Ok(hidden.reshape((b * (n - prompt_len), h))?)
    }

    /// Logits at flat rows of hidden states `(rows, hidden)`.
    fn logits_at(&self, flat: &Tensor, rows: &Tensor, train: bool) -> Result<Tensor> {
        let picked = flat.index_select(&rows.to_dtype(DType::U32)?, 0)?;
        Ok(self
            .decoder
            .lm_logits(&picked.unsqueeze(0)?, train)?
            .squeeze(0)?)
    }
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
        self.logits_at(&flat, &last_token_rows(&input.attention_mask)?, train)
    }

    fn token_logits(&self, input: &ModelInput, rows: &Tensor, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("causal-lm-tokens").entered();
        let flat = self.flat_hidden(input, train)?;
        let n = flat.dim(0)?;
        // index_select would read past the rows unchecked on some backends: say which.
        if let Some(m) = rows
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?
            .into_iter()
            .max()
            && m as usize >= n
        {
            return Err(Error::TensorShape {
                op: "token rows (b·t positions)",
                expected: vec![n],
                got: vec![m as usize + 1],
            });
        }
        self.logits_at(&flat, rows, train)
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.decoder.walk(f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        self.decoder.walk_mut(f);
    }

    fn head_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
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
        "CAUSAL_LM"
    }

    fn architecture(&self) -> &'static str {
        self.decoder.architecture()
    }
}
