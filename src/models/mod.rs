//! Transformer families built from an HF `config.json` + weights, every linear layer an
//! [`adapters::Linear`](crate::adapters::Linear) so it can carry adapters and merges.
//!
//! Owns: the [`Model`] trait (all the trainer sees), [`ModelInput`], [`Pooling`], the model
//! families and their heads: [`bert`] (BERT, RoBERTa, MiniLM) and [`deberta_v2`] (DeBERTa-v2
//! and -v3), and [`load_classifier_from`] (and its folder form [`load_classifier`]), which
//! picks the family from `model_type` (`families.rs`). The files and tensors come from an
//! [`io::ResolvedModel`](crate::io::ResolvedModel) (config parsed once, weights behind an
//! [`io::TensorSource`](crate::io::TensorSource)). Shared by the families: what model building
//! adds to a tensor source (`weights.rs`: the `bert.`/`roberta.`/`deberta.` prefix, dtype,
//! buffers left out of the load report, seeded random weights), config deserialising
//! (`hf_config.rs`), the building blocks (`layers.rs`) and, for tests, `test_util.rs`. Uses
//! `adapters/`, `ops/`, `io/`. Must not know: tasks, files of data, training.

mod backbone;
pub mod bert;
pub mod deberta_v2;
mod families;
pub mod heads;
mod hf_config;
mod layers;
pub mod llama;
#[cfg(test)]
pub(crate) mod test_util;
pub mod walk;
mod weights;

use candle_core::{Tensor, Var};

use crate::adapters::{DefaultSites, Linear, TokenPlacement, VirtualSpec};
use crate::error::{Error, Result};
use crate::models::walk::{BaseTensor, Entry, EntryMut, Kind, LinearRole};

/// The batch every family takes (declared in `data`, which builds it).
pub use crate::data::ModelInput;
/// How hidden states become one vector per example (declared in `io`, where adapter folders
/// record it).
pub use crate::io::Pooling;
pub use backbone::{Backbone, BuildBackbone};
pub use bert::{Bert, BertConfig, BertFamily, BertForSequenceClassification, load_bert};
pub use deberta_v2::{
    DebertaV2, DebertaV2Config, DebertaV2ForSequenceClassification, load_deberta_v2,
};
pub use families::{FAMILIES, Family, load_classifier, load_classifier_from, model_types};

/// What the trainer sees of a model.
pub trait Model: Send + Sync {
    /// Logits `(b_sz, num_labels)` (one column for regression). `train` enables dropout.
    ///
    /// # Errors
    /// Shape, dtype or device mismatches in the input.
    fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor>;

    /// Every tensor of the base model, once, in state-dict order, under its name in HF's
    /// `…ForSequenceClassification` checkpoint (e.g. `bert.encoder.layer.0.attention.self.query`
    /// for a linear, whose weight and bias are `<path>.weight` / `<path>.bias`): the names PEFT
    /// matches targets against and writes into adapter keys. The head is not part of it.
    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>));

    /// The same walk with mutable access: adapters are attached, merged and unmerged through
    /// it, full fine-tuning makes tensors `Var`s, a saved full fine-tune replaces them.
    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>));

    /// Every adapter-capable linear layer with its module path, in walk order.
    fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        self.walk(&mut |name, e| {
            if let Entry::Linear(_, l) = e {
                out.push((name, l));
            }
        });
        out
    }

    /// The same layers, mutable.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        self.walk_mut(&mut |name, e| {
            if let EntryMut::Linear(_, l) = e {
                out.push((name, l));
            }
        });
        out
    }

    /// Trainable tensors of the task head (e.g. `classifier.weight`), by full name.
    fn head_vars(&self) -> Vec<(String, Var)>;

    /// The bias of the head's output layer when that layer was freshly initialised (not
    /// loaded from the checkpoint), so a regression fine-tune can start it at the label mean.
    fn fresh_output_bias(&self) -> Option<Var>;

    /// Module names PEFT targets by default for this architecture (e.g. `query`, `value`).
    fn default_targets(&self) -> &'static [&'static str];

    /// Every default site a method may target: [`default_targets`](Model::default_targets)
    /// and, from the walk's tags, the per-layer output projections bottleneck adapters follow.
    fn default_sites(&self) -> DefaultSites {
        let mut sites = DefaultSites {
            parallel: self.default_targets(),
            attention_output: Vec::new(),
            ffn_output: Vec::new(),
        };
        self.walk(&mut |name, e| {
            if let Entry::Linear(tag, _) = e {
                match tag.kind {
                    Kind::Linear(LinearRole::AttentionOutput) => sites.attention_output.push(name),
                    Kind::Linear(LinearRole::FfnOutput) => sites.ffn_output.push(name),
                    _ => {}
                }
            }
        });
        sites
    }

    /// Every tensor under the names of HF's `…ForSequenceClassification` checkpoint, merged
    /// adapters included (unmerged ones are not part of the weights): the walk, then the head.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.walk(&mut |name, e| match e {
            Entry::Linear(_, l) => {
                out.push((format!("{name}.weight"), l.weight().into_owned()));
                if let Some(b) = l.bias() {
                    out.push((format!("{name}.bias"), b.clone()));
                }
            }
            Entry::Tensor(_, t) => out.push((name, t.clone())),
        });
        out.extend(
            self.head_vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().clone())),
        );
        out
    }

    /// What prompt-learning methods need to build tokens for this model.
    fn virtual_spec(&self) -> VirtualSpec;

    /// The longest input in tokens the model takes; `None` when it has no fixed limit.
    fn max_seq_len(&self) -> Option<usize>;

    /// Attaches `adapter`'s prompt-tuning or prefix-tuning tokens, replacing any it had
    /// (`None` removes them). Each adapter holds its own; the forward uses the active one's.
    ///
    /// # Errors
    /// A tensor of the wrong width; an architecture that does not take that placement.
    fn set_virtual_tokens(
        &mut self,
        adapter: &str,
        tokens: Option<(TokenPlacement, Var)>,
    ) -> Result<()>;

    /// The prompt or prefix tokens the forward uses: the first active adapter's that has
    /// some ([`set_active`](Model::set_active)); before any choice, the one adapter's that has
    /// some.
    ///
    /// # Errors
    /// [`Error::AmbiguousVirtualTokens`] when several adapters hold tokens and none is chosen.
    fn virtual_tokens(&self) -> Result<Option<(TokenPlacement, Var)>>;

    /// The prompt or prefix tokens `adapter` holds, active or not.
    fn adapter_tokens(&self, adapter: &str) -> Option<(TokenPlacement, Var)>;

    /// The base model's own tensors (the [`state_dict`](Model::state_dict) without the head),
    /// under the same names, with their tags, mutable: full fine-tuning makes them `Var`s, and
    /// loading a saved full fine-tune replaces them. Weights kept quantized are dequantized
    /// first (a full fine-tune trains f32 weights).
    ///
    /// # Errors
    /// Quantized blocks that cannot be dequantized.
    fn base_tensors_mut(&mut self) -> Result<Vec<BaseTensor<'_>>> {
        for (_, l) in self.linears_mut() {
            l.dequantize()?;
        }
        let mut out = Vec::new();
        self.walk_mut(&mut |name, e| match e {
            EntryMut::Linear(tag, l) => {
                let Some((w, b)) = l.params_mut() else {
                    return;
                };
                out.push(BaseTensor {
                    name: format!("{name}.weight"),
                    tag,
                    tensor: w,
                });
                if let Some(b) = b {
                    out.push(BaseTensor {
                        name: format!("{name}.bias"),
                        tag,
                        tensor: b,
                    });
                }
            }
            EntryMut::Tensor(tag, tensor) => out.push(BaseTensor { name, tag, tensor }),
        });
        Ok(out)
    }

    /// A fresh head for the adapter `adapter` (PEFT's `modules_to_save` per adapter), so one
    /// loaded base holds several adapters with heads of their own; initialised from `seed`,
    /// then usually overwritten from the adapter's folder. Inactive until
    /// [`set_active`](Model::set_active) names the adapter. Default: the model has one head.
    ///
    /// # Errors
    /// An adapter that has a head already; a model with a single head.
    fn add_head(&mut self, adapter: &str, num_labels: usize, seed: u64) -> Result<()> {
        let _ = (num_labels, seed);
        Err(Error::HeadExists {
            adapter: adapter.to_string(),
        })
    }

    /// Makes the adapters named in `adapters` the ones the forward applies (and training
    /// trains) on every linear layer, and the head of the first of them that has one the
    /// active head (else the model's own). The others stay attached.
    ///
    /// # Errors
    /// Deactivating an adapter that is merged into the weights.
    fn set_active(&mut self, adapters: &[&str]) -> Result<()> {
        activate_linears(self, adapters)
    }

    /// PEFT's `task_type` for adapters of this model: `SEQ_CLS` for a classifier,
    /// `CAUSAL_LM` for a decoder with its LM head.
    fn peft_task_type(&self) -> &'static str {
        "SEQ_CLS"
    }

    /// Next-token logits `(k, vocab)` at `rows`, flat indices `b·seq_len + t` into `input`'s
    /// positions (virtual tokens not counted): what a causal-LM loss needs, without the
    /// logits of positions it does not score.
    ///
    /// # Errors
    /// [`Error::NotALanguageModel`] for a model without an LM head; shape errors.
    fn token_logits(&self, input: &ModelInput, rows: &Tensor, train: bool) -> Result<Tensor> {
        let _ = (input, rows, train);
        Err(Error::NotALanguageModel {
            architecture: self.architecture(),
        })
    }

    /// Turns gradient checkpointing on or off: training then keeps each layer's input (and
    /// the loss head's tensors) and recomputes the layers one at a time during the backward:
    /// one more forward per step (1.4–1.5× the step time measured on SmolLM2), the activations
    /// of one layer at a time instead of all. Default: not supported.
    ///
    /// # Errors
    /// [`Error::UnsupportedInput`] turning it on for a model that cannot.
    fn set_gradient_checkpointing(&mut self, on: bool) -> Result<()> {
        if on {
            return Err(Error::UnsupportedInput {
                field: "--gradient-checkpointing",
                reason: "only decoders (--task causal-lm) recompute their layers",
            });
        }
        Ok(())
    }

    /// Whether gradient checkpointing is on.
    fn gradient_checkpointing(&self) -> bool {
        false
    }

    /// With gradient checkpointing on: the value of [`token_loss`](Model::token_loss) and
    /// the gradients of `scale ·` that loss for `vars`, in their order, each layer recomputed
    /// in the backward. `None` when checkpointing is off (the caller runs one backward).
    fn checkpointed_token_grads(
        &self,
        input: &ModelInput,
        rows: &Tensor,
        labels: &Tensor,
        scale: f64,
        vars: &[Var],
    ) -> Option<Result<(f64, Vec<Option<Tensor>>)>> {
        let _ = (input, rows, labels, scale, vars);
        None
    }

    /// The mean next-token cross-entropy at `rows` (as [`token_logits`](Model::token_logits)
    /// takes them) against `labels: (k)`, as an f32 scalar. Decoders with a frozen LM head
    /// compute it without keeping the `(k, vocab)` logits.
    ///
    /// # Errors
    /// As [`token_logits`](Model::token_logits); labels that do not match the rows.
    fn token_loss(
        &self,
        input: &ModelInput,
        rows: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let logits = self.token_logits(input, rows, train)?;
        crate::ops::cross_entropy(&logits.to_dtype(candle_core::DType::F32)?, labels)
    }

    /// HF's class name for this model (e.g. `BertForSequenceClassification`), written to a
    /// merged export's config.json `architectures`.
    fn architecture(&self) -> &'static str;
}

/// Adds the gradients `store` holds for `vars` into `slots` (one per var, in order).
///
/// # Errors
/// Tensor errors adding them.
pub(crate) fn add_grads(
    store: &candle_core::backprop::GradStore,
    vars: &[Var],
    slots: &mut [Option<Tensor>],
) -> Result<()> {
    for (slot, v) in slots.iter_mut().zip(vars) {
        if let Some(g) = store.get(v.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}

/// Makes `adapters` the active ones on every linear layer of `model` (the part of
/// [`Model::set_active`] every model shares).
///
/// # Errors
/// Deactivating an adapter that is merged into the weights.
pub(crate) fn activate_linears<M: Model + ?Sized>(model: &mut M, adapters: &[&str]) -> Result<()> {
    for (_, layer) in model.linears_mut() {
        layer.set_active(adapters)?;
    }
    Ok(())
}
