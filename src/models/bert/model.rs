//! [`Bert`]: the encoder (embeddings, transformer layers, optional pooler), every linear an
//! [`adapters::Linear`](crate::adapters::Linear), every norm/softmax our differentiable ops.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{BertConfig, BertFamily};
use crate::adapters::{Linear, VirtualSpec};
use crate::error::{Error, Result};
use crate::io::{ResolvedModel, TensorSource};
use crate::models::backbone::ForwardCtx;
use crate::models::layers::{self, Norm, check_input, dropout};
use crate::models::walk::{Entry, EntryMut, LinearDims, Part, parts, tags};
use crate::models::weights::{self, Init, Loader};
use crate::models::{ModelInput, Pooling};
use crate::ops::{attention, dropout_add, gelu};

parts! {
    /// Word + position + token-type embeddings, then a layer norm; all frozen.
    struct Embeddings for<'c> |cfg: &'c BertConfig| {
        let h = cfg.hidden_size;
    } {
        word: Tensor = "word_embeddings.weight", tags::EMBEDDING_TABLE,
            (&[cfg.vocab_size, h], Init::Normal);
        position: Tensor = "position_embeddings.weight", tags::EMBEDDING_TABLE,
            (&[cfg.max_position_embeddings, h], Init::Normal);
        token_type: Tensor = "token_type_embeddings.weight", tags::EMBEDDING_TABLE,
            (&[cfg.type_vocab_size, h], Init::Normal);
        norm: Norm = "LayerNorm", tags::EMBEDDING_NORM, (h, cfg.layer_norm_eps);
    }
}

parts! {
    /// One transformer layer: self-attention and feed-forward, each with residual + layer norm.
    struct Layer for<'c> |cfg: &'c BertConfig| {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = (h, cfg.layer_norm_eps);
    } {
        query: Linear = "attention.self.query", tags::LINEAR, LinearDims::biased(h, h);
        key: Linear = "attention.self.key", tags::LINEAR, LinearDims::biased(h, h);
        value: Linear = "attention.self.value", tags::LINEAR, LinearDims::biased(h, h);
        attn_out: Linear = "attention.output.dense", tags::ATTENTION_OUTPUT,
            LinearDims::biased(h, h);
        attn_norm: Norm = "attention.output.LayerNorm", tags::NORM, norm;
        intermediate: Linear = "intermediate.dense", tags::LINEAR, LinearDims::biased(i, h);
        output: Linear = "output.dense", tags::FFN_OUTPUT, LinearDims::biased(h, i);
        out_norm: Norm = "output.LayerNorm", tags::NORM, norm;
    }
}

parts! {
    /// The one listing of a BERT encoder's tensors, in HF's names: embeddings, the layers,
    /// the pooler when wanted.
    struct Weights for<'c> |(cfg, with_pooler): (&'c BertConfig, bool)| {
        let h = cfg.hidden_size;
    } {
        embeddings: Embeddings = "embeddings", (), cfg;
        layers: Vec<Layer> = "encoder.layer", (), (cfg.num_hidden_layers, cfg);
        pooler: Option<Linear> = "pooler.dense", tags::POOLER,
            with_pooler.then_some(LinearDims::biased(h, h));
    }
}

impl Layer {
    /// `x: (b_sz, seq_len, hidden)`, `key_bias: (b_sz, seq_len)` additive → same shape as x.
    /// With `prefix = (keys, values)`, each `(n, hidden)`, the attention also sees those n
    /// keys and values before the sequence's own (prefix tuning, as HF's past key values).
    fn forward(
        &self,
        x: &Tensor,
        key_bias: &Tensor,
        cfg: &BertConfig,
        train: bool,
        prefix: Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("bert-layer").entered();
        let q = self.query.forward(x, train)?;
        let k = self.key.forward(x, train)?;
        let v = self.value.forward(x, train)?;
        let attn_p = if train {
            cfg.attention_probs_dropout_prob
        } else {
            0.0
        };
        let heads = cfg.num_attention_heads;
        let ctx = match prefix {
            None => attention(&q, &k, &v, key_bias, heads, attn_p)?,
            Some((pk, pv)) => {
                // The fused op attends equal-length q and k, so the prefix positions get
                // zero queries whose outputs are dropped; their gradient is zero.
                let (b_sz, seq_len, h) = x.dims3()?;
                let n = pk.dims2()?.0;
                let before = |t: &Tensor, p: &Tensor| -> Result<Tensor> {
                    let p = p.unsqueeze(0)?.broadcast_as((b_sz, n, h))?;
                    Ok(Tensor::cat(&[&p, t], 1)?)
                };
                let zeros = Tensor::zeros((n, h), q.dtype(), q.device())?;
                let key_bias = Tensor::cat(
                    &[
                        &Tensor::zeros((b_sz, n), key_bias.dtype(), key_bias.device())?,
                        key_bias,
                    ],
                    1,
                )?;
                let (q, k, v) = (before(&q, &zeros)?, before(&k, &pk)?, before(&v, &pv)?);
                attention(&q, &k, &v, &key_bias, heads, attn_p)?.narrow(1, n, seq_len)?
            }
        };
        let hidden_p = if train { cfg.hidden_dropout_prob } else { 0.0 };
        let attn = self.attn_out.forward(&ctx, train)?;
        let attn = self.attn_norm.forward(&dropout_add(&attn, x, hidden_p)?)?;
        let inner = gelu(&self.intermediate.forward(&attn, train)?)?;
        let out = self.output.forward(&inner, train)?;
        self.out_norm.forward(&dropout_add(&out, &attn, hidden_p)?)
    }
}

/// The BERT/RoBERTa encoder: token ids → hidden states `(b_sz, seq_len, hidden)`.
///
/// Embeddings, layer norms and linear weights are frozen tensors; adapters attached to the
/// linears (reached through [`walk_mut`](Self::walk_mut)) are the only trainable part.
pub struct Bert {
    config: BertConfig,
    weights: Weights,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("model_type", &self.config.model_type)
            .field("layers", &self.weights.layers.len())
            .field("hidden", &self.config.hidden_size)
            .field("pooler", &self.weights.pooler.is_some())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Where the encoder sits in a checkpoint: bare (`embeddings.…`, a `BertModel`) or under the
/// family prefix (`bert.embeddings.…`, a `BertFor…` model); `folder` is named in the error.
pub(crate) fn detect_prefix(
    source: &dyn TensorSource,
    cfg: &BertConfig,
    folder: &Path,
) -> Result<String> {
    weights::detect_prefix(
        source,
        "embeddings.word_embeddings.weight",
        &[cfg.model_type.prefix()],
        &format!("{:?}", cfg.model_type),
        folder,
    )
}

impl Bert {
    /// Builds the encoder from `ld`; the pooler (`pooler.dense`) only if `with_pooler`.
    pub(crate) fn build(cfg: &BertConfig, ld: &mut Loader, with_pooler: bool) -> Result<Self> {
        Ok(Self {
            config: cfg.clone(),
            weights: Weights::load(ld, "", (cfg, with_pooler))?,
            dtype: ld.dtype(),
            device: ld.device().clone(),
        })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or its sharded index), in `dtype`.
    /// The pooler is loaded when the checkpoint has one.
    ///
    /// # Errors
    /// As [`ResolvedModel::from_dir`] and [`Bert::load_from`].
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_from(&ResolvedModel::from_dir(dir)?, dtype, device)
    }

    /// Loads the encoder of an opened model in `dtype`; the pooler when the checkpoint has
    /// one.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an unsupported config; [`Error::WeightTensor`] for a missing
    /// or misshapen tensor.
    pub fn load_from(model: &ResolvedModel, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = BertConfig::from_value(model.config(), &model.config_path())?;
        let prefix = detect_prefix(model.tensors(), &cfg, model.dir())?;
        let mut ld = Loader::checkpoint(model.tensors(), &prefix, dtype, device);
        let with_pooler = ld.has("pooler.dense.weight");
        let bert = Self::build(&cfg, &mut ld, with_pooler)?;
        ld.log_unused("encoder");
        Ok(bert)
    }

    /// A freshly initialised encoder (with pooler): weights and biases N(0, initializer_range²),
    /// layer norms γ = 1, β = 0, drawn from `seed`. For tests and experiments.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid config.
    pub fn random(cfg: &BertConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate(Path::new("<in-memory config>"))?;
        let rng = crate::adapters::seeded_rng(seed);
        let mut ld = Loader::random(rng, cfg.initializer_range, dtype, device);
        Self::build(cfg, &mut ld, true)
    }

    /// The config the encoder was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Dtype of the hidden states.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a pooler (`pooler.dense`) was loaded.
    pub fn has_pooler(&self) -> bool {
        self.weights.pooler.is_some()
    }

    /// Position ids `(b_sz, seq_len)` as RoBERTa computes them: pad tokens get
    /// `pad_token_id`, every other token `pad_token_id + k` where `k` counts the non-pad tokens
    /// up to and including it (HF's `create_position_ids_from_input_ids`).
    ///
    /// # Errors
    /// `input_ids` is not `(b_sz, seq_len)` u32.
    pub fn roberta_position_ids(input_ids: &Tensor, pad_token_id: u32) -> Result<Tensor> {
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let pos: Vec<Vec<u32>> = ids
            .iter()
            .map(|row| {
                let mut count = 0;
                row.iter()
                    .map(|&t| {
                        if t == pad_token_id {
                            pad_token_id
                        } else {
                            count += 1;
                            pad_token_id + count
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Tensor::new(pos, input_ids.device())?)
    }

    /// The word embeddings of `input_ids`, `(b_sz, seq_len, hidden)`: the table lookup only
    /// (HF's `inputs_embeds`), what prompt tuning prepends its soft tokens to.
    ///
    /// # Errors
    /// Ids that are not `(b_sz, seq_len)` or out of the vocabulary.
    pub fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b_sz, seq_len) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self.weights.embeddings.word.embedding(&ids)?.reshape((
            b_sz,
            seq_len,
            self.config.hidden_size,
        ))?)
    }

    /// Embeddings from word embeddings `words: (b_sz, n + seq_len, hidden)`, where the first
    /// `ctx.prompt_len = n` rows are prompt tokens: positions, token types, norm, dropout.
    fn embed_words(&self, words: &Tensor, input: &ModelInput, ctx: &ForwardCtx) -> Result<Tensor> {
        let cfg = &self.config;
        let train = ctx.train;
        let prompt_len = ctx.prompt_len;
        // Prompt tokens take positions, and HF shifts positions past a prefix.
        let prefix_len = ctx
            .prefix
            .map_or(0, |p| p.first().map_or(0, |(k, _)| k.dims()[0]));
        let reserved = prompt_len + prefix_len;
        let max = cfg.max_seq_len().saturating_sub(reserved);
        let (b_sz, seq_len) = check_input(input, None)?;
        if seq_len > max {
            return Err(Error::TensorShape {
                op: if reserved > 0 {
                    "input_ids (longer than the position table less the virtual tokens)"
                } else {
                    "input_ids (longer than the model's position table)"
                },
                expected: vec![b_sz, max],
                got: vec![b_sz, seq_len],
            });
        }
        let h = cfg.hidden_size;
        let e = &self.weights.embeddings;
        let mut input_ids = input.input_ids.to_dtype(DType::U32)?;
        let mut token_type_ids = layers::token_types(input)?;
        if prompt_len > 0 {
            // Virtual tokens are real tokens to the position count, of segment 0.
            let not_pad = cfg.pad_token_id.wrapping_add(1);
            let shape = (b_sz, prompt_len);
            let virtual_ids = Tensor::full(not_pad, shape, input_ids.device())?;
            input_ids = Tensor::cat(&[&virtual_ids, &input_ids], 1)?;
            let zeros = Tensor::zeros(shape, DType::U32, input_ids.device())?;
            token_type_ids = Tensor::cat(&[&zeros, &token_type_ids], 1)?;
        }
        let total = seq_len + prompt_len;
        let shift = prefix_len;
        let positions = match (&input.position_ids, cfg.model_type) {
            (Some(_), _) if total != seq_len || shift != 0 => {
                return Err(Error::UnsupportedInput {
                    field: "position_ids",
                    reason: "not taken with prompt or prefix tokens attached, which shift the \
                             positions themselves",
                });
            }
            (Some(ids), _) => e
                .position
                .embedding(&ids.to_dtype(DType::U32)?.flatten_all()?)?
                .reshape((b_sz, total, h))?,
            (None, BertFamily::Bert) => e.position.narrow(0, shift, total)?.unsqueeze(0)?,
            (None, BertFamily::Roberta) => {
                let ids = Self::roberta_position_ids(&input_ids, cfg.pad_token_id)?;
                // Real tokens move past the prefix; padding keeps the padding position.
                let real = input_ids.ne(cfg.pad_token_id)?.to_dtype(DType::U32)?;
                let ids = (ids + (real * shift as f64)?)?;
                e.position
                    .embedding(&ids.flatten_all()?)?
                    .reshape((b_sz, total, h))?
            }
        };
        // With a single token type (RoBERTa) its one row is added everywhere, whatever the
        // tokenizer put in token_type_ids.
        let types = if cfg.type_vocab_size == 1 {
            e.token_type.unsqueeze(0)?
        } else {
            e.token_type
                .embedding(&token_type_ids.flatten_all()?)?
                .reshape((b_sz, total, h))?
        };
        // The tables are `Var`s under full fine-tuning: cut the graph inside `no_grad`.
        let x = crate::ops::track(words.broadcast_add(&positions)?.broadcast_add(&types)?);
        let x = e.norm.forward(&x)?;
        dropout(&x, cfg.hidden_dropout_prob, train)
    }

    /// What prompt-learning methods need to build tokens for this encoder.
    pub fn virtual_spec(&self) -> VirtualSpec {
        VirtualSpec {
            layers: self.weights.layers.len(),
            hidden: self.config.hidden_size,
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_attention_heads,
            kv_width: self.config.hidden_size,
            word_embeddings: self.weights.embeddings.word.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }

    /// Hidden states of the last layer, `(b_sz, seq_len, hidden)`. `train` enables dropout.
    ///
    /// # Errors
    /// [`Error::TensorShape`] if the three input tensors differ in shape or the sequence is
    /// longer than the position table; token ids out of the vocabulary; device mismatch.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let words = self.word_embeddings(&input.input_ids)?;
        self.forward_words(&words, input, &ForwardCtx::plain(train))
    }

    /// [`forward`](Self::forward) from word embeddings (see
    /// [`word_embeddings`](Self::word_embeddings)) with `ctx.prompt_len` prompt tokens in
    /// front and, with `ctx.prefix`, each layer's prefix keys and values. Hidden states
    /// `(b_sz, n + seq_len, hidden)`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); a prefix without one entry per layer.
    pub fn forward_words(
        &self,
        words: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("bert").entered();
        if let Some(p) = ctx.prefix
            && p.len() != self.weights.layers.len()
        {
            return Err(Error::TensorShape {
                op: "prefix key/values (one pair per layer)",
                expected: vec![self.weights.layers.len()],
                got: vec![p.len()],
            });
        }
        let mut x = self.embed_words(words, input, ctx)?;
        let mask = layers::with_prompt_mask(&input.attention_mask, ctx.prompt_len)?;
        let key_bias = layers::key_bias(&mask, self.dtype)?;
        for (i, layer) in self.weights.layers.iter().enumerate() {
            let prefix = ctx.prefix.map(|p| p[i].clone());
            x = layer.forward(&x, &key_bias, &self.config, ctx.train, prefix)?;
        }
        Ok(x)
    }

    /// Pools hidden states `(b_sz, seq_len, hidden)` into `(b_sz, hidden)`: the first token
    /// (`Cls`) or the mean over real tokens (`Mean`, as sentence-transformers).
    ///
    /// # Errors
    /// Shape mismatch between `hidden` and `attention_mask`.
    pub fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
        layers::pool(hidden, attention_mask, pooling)
    }

    /// Sentence embeddings `(b_sz, hidden)`: [`forward`](Self::forward) (no dropout) then
    /// [`pool`](Self::pool). Not normalised; sentence-transformers models add an L2 norm.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn embed(&self, input: &ModelInput, pooling: Pooling) -> Result<Tensor> {
        let hidden = self.forward(input, false)?;
        Self::pool(&hidden, &input.attention_mask, pooling)
    }

    /// BERT's pooler on the first token: `tanh(pooler.dense(hidden[:, 0]))`, `(b_sz, hidden)`.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if the encoder was built without a pooler.
    pub fn pooler_output(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        let pooler = self
            .weights
            .pooler
            .as_ref()
            .ok_or_else(|| Error::WeightTensor {
                path: "<loaded model>".into(),
                name: "pooler.dense.weight".into(),
                reason: "not loaded: the checkpoint has no pooler".into(),
            })?;
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(pooler.forward(&first, train)?.tanh()?)
    }

    /// Every tensor of the encoder, once, in HF's state-dict order, each name behind
    /// `prefix` (`bert.`, `roberta.` or none): `f(name, entry)`.
    pub fn walk<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.weights.walk(prefix, (), f);
    }

    /// The same walk with mutable access.
    pub fn walk_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        self.weights.walk_mut(prefix, (), f);
    }
}
