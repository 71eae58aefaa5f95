//! [`Llama`]: the LLaMA-family decoder (token embedding, pre-norm layers of grouped-query
//! attention with rotary positions and a SwiGLU feed-forward, a final RMS norm, a tied or
//! separate LM head), every linear an [`adapters::Linear`](crate::adapters::Linear) under HF's
//! module paths (`model.layers.0.self_attn.q_proj`), every norm and softmax ours (with a
//! backward).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor, TensorId};

use super::config::LlamaConfig;
use crate::adapters::{Linear, VirtualSpec};
use crate::error::{Error, Result};
use crate::models::Backbone;
use crate::models::ModelInput;
use crate::models::backbone::ForwardCtx;
use crate::models::layers::{RmsNorm, check_input, key_bias, with_prompt_mask};
use crate::models::walk::{Entry, EntryMut, LinearDims, Part, parts, tags};
use crate::models::weights::{Init, Loader};
use crate::ops::{causal_attention, rope_heads, rope_tables, swiglu};

parts! {
    /// One decoder layer: RMS norm, attention, residual; RMS norm, SwiGLU, residual.
    struct Layer for<'c> |cfg: &'c LlamaConfig| {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_width();
        let kv = cfg.kv_heads() * cfg.head_width();
        let qkv = |out| if cfg.qkv_bias() {
            LinearDims::biased(out, h)
        } else {
            LinearDims::unbiased(out, h)
        };
        let o = if cfg.attention_bias {
            LinearDims::biased(h, q)
        } else {
            LinearDims::unbiased(h, q)
        };
        let norm = (h, cfg.rms_norm_eps);
    } {
        input_layernorm: RmsNorm = "input_layernorm", tags::NORM, norm;
        q_proj: Linear = "self_attn.q_proj", tags::LINEAR, qkv(q);
        k_proj: Linear = "self_attn.k_proj", tags::LINEAR, qkv(kv);
        v_proj: Linear = "self_attn.v_proj", tags::LINEAR, qkv(kv);
        o_proj: Linear = "self_attn.o_proj", tags::ATTENTION_OUTPUT, o;
        post_attention_layernorm: RmsNorm = "post_attention_layernorm", tags::NORM, norm;
        gate_proj: Linear = "mlp.gate_proj", tags::LINEAR, LinearDims::unbiased(i, h);
        up_proj: Linear = "mlp.up_proj", tags::LINEAR, LinearDims::unbiased(i, h);
        down_proj: Linear = "mlp.down_proj", tags::FFN_OUTPUT, LinearDims::unbiased(h, i);
    }
}

parts! {
    /// The one listing of a LLaMA-family decoder's tensors, in HF's names.
    struct Weights for<'c> |cfg: &'c LlamaConfig| {
        let h = cfg.hidden_size;
    } {
        embed_tokens: Tensor = "model.embed_tokens.weight", tags::EMBEDDING_TABLE,
            (&[cfg.vocab_size, h], Init::Normal);
        layers: Vec<Layer> = "model.layers", (), (cfg.num_hidden_layers, cfg);
        norm: RmsNorm = "model.norm", tags::NORM, (h, cfg.rms_norm_eps);
        lm_head: Option<Linear> = "lm_head", tags::LM_HEAD,
            (!cfg.tie_word_embeddings).then_some(LinearDims::unbiased(cfg.vocab_size, h));
    }
}

/// One layer's cached keys and values `(1, kv_heads, t, head_dim)`, rotated.
type LayerCache = Option<(Tensor, Tensor)>;

/// The keys and values of the tokens a sequence has seen, per layer, for generation.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache holding prefix-tuning keys and values, `(m, kv_width)` per layer: what every
    /// later token attends to first, as the training forward attends to them.
    ///
    /// # Errors
    /// Not one pair per layer, or pairs not `(m, kv_heads · head_dim)`.
    pub fn from_prefix(llama: &Llama, prefix: &[(Tensor, Tensor)]) -> Result<Self> {
        let (m, layers) = llama.prefix_caches(prefix, 1)?;
        Ok(Self { layers, len: m })
    }
}

/// One layer's prefix keys (or values), `(m, kv_heads · head_dim)`, as cached keys for a batch
/// of `b`: `(b, kv_heads, m, head_dim)`.
///
/// # Errors
/// A tensor that is not `(m, kv_heads · head_dim)` (every layer's prefix has the same m).
fn prefix_heads(x: &Tensor, b: usize, m: usize, cfg: &LlamaConfig) -> Result<Tensor> {
    let (kv_heads, d) = (cfg.kv_heads(), cfg.head_width());
    if x.dims() != [m, kv_heads * d] {
        return Err(Error::TensorShape {
            op: "prefix keys and values (tokens, kv_heads · head_dim)",
            expected: vec![m, kv_heads * d],
            got: x.dims().to_vec(),
        });
    }
    Ok(x.reshape((1, m, kv_heads, d))?
        .transpose(1, 2)?
        .broadcast_as((b, kv_heads, m, d))?
        .contiguous()?)
}

/// What every layer of one forward shares: rotary tables for the positions, the per-key
/// attention bias, and each layer's prefix keys and values (none without prefix tuning).
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    key_bias: Tensor,
    prefix: Vec<LayerCache>,
    train: bool,
}

/// The LLaMA-family decoder: token ids → hidden states and next-token logits.
pub struct Llama {
    config: LlamaConfig,
    weights: Weights,
    dtype: DType,
    device: Device,
    /// The tied embedding table in the checkpoint's blocks (whatever block type the GGUF
    /// stores), kept with a quantized base so a decoded token's logits read those (SmolLM2's
    /// Q8_0 table is a quarter of the f32 copy's bytes);
    /// valid while `embed_tokens` is the tensor with this id and untrained.
    head_blocks: Option<(TensorId, Arc<QTensor>)>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("model_type", &self.config.model_type)
            .field("layers", &self.weights.layers.len())
            .field("hidden", &self.config.hidden_size)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Layer {
    /// `x: (b, t, hidden)`; `cos`/`sin`: `(b, 1, t, head_dim)`; `key_bias`: `(b, keys)`
    /// additive per key (padding), keys = cached ones and then the t tokens' own →
    /// `(b, t, hidden)`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        key_bias: &Tensor,
        cfg: &LlamaConfig,
        train: bool,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("llama-layer").entered();
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_width());
        let normed = self.input_layernorm.forward(x)?;
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        // Queries and keys split into heads and rotated in one pass each.
        let q = rope_heads(&self.q_proj.forward(&normed, train)?, heads, cos, sin)?;
        let k = rope_heads(&self.k_proj.forward(&normed, train)?, kv_heads, cos, sin)?;
        let v = split(self.v_proj.forward(&normed, train)?, kv_heads)?;
        // With a cache, the keys and values of earlier tokens come first.
        let (k, v) = match cache {
            None => (k, v),
            Some(c) => {
                let (k, v) = match c.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *c = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        let ctx = causal_attention(&q, &k, &v, key_bias)?;
        let x = (x + self.o_proj.forward(&ctx, train)?)?;
        let normed = self.post_attention_layernorm.forward(&x)?;
        let gate = self.gate_proj.forward(&normed, train)?;
        let up = self.up_proj.forward(&normed, train)?;
        Ok((&x + self.down_proj.forward(&swiglu(&gate, &up)?, train)?)?)
    }
}

impl Llama {
    /// Builds the decoder from `ld`.
    pub(crate) fn build(cfg: &LlamaConfig, ld: &mut Loader) -> Result<Self> {
        let weights = Weights::load(ld, "", cfg)?;
        let head_blocks = if cfg.tie_word_embeddings {
            let shape = [cfg.vocab_size, cfg.hidden_size];
            ld.kept_blocks("model.embed_tokens.weight", &shape)?
                .map(|q| (weights.embed_tokens.id(), Arc::new(q)))
        } else {
            None
        };
        Ok(Self {
            config: cfg.clone(),
            weights,
            dtype: ld.dtype(),
            device: ld.device().clone(),
            head_blocks,
        })
    }

    /// A freshly initialised decoder: weights N(0, std²), norms γ = 1, drawn from `seed`.
    /// For tests and experiments.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid config.
    pub fn random(
        cfg: &LlamaConfig,
        std: f64,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate(std::path::Path::new("<in-memory config>"))?;
        let mut ld = Loader::random(crate::adapters::seeded_rng(seed), std, dtype, device);
        Self::build(cfg, &mut ld)
    }

    /// Loads an HF checkpoint (`LlamaForCausalLM`, `MistralForCausalLM`,
    /// `Qwen2ForCausalLM`: `model.…` tensors and `lm_head` unless tied) in `dtype`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an unsupported config; [`Error::WeightTensor`] for a
    /// missing or misshapen tensor.
    pub fn load_from(
        model: &crate::io::ResolvedModel,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = LlamaConfig::from_value(model.config(), &model.config_path())?;
        let mut ld = Loader::checkpoint(model.tensors(), "", dtype, device);
        let llama = Self::build(&cfg, &mut ld)?;
        ld.log_unused("decoder");
        Ok(llama)
    }

    /// Whether any linear weight is kept in quantized blocks.
    pub fn is_quantized(&self) -> bool {
        let mut any = false;
        self.walk(&mut |_, e| {
            if let Entry::Linear(_, l) = e {
                any |= l.is_quantized();
            }
        });
        any
    }

    /// The config the decoder was built from.
    pub fn config(&self) -> &LlamaConfig {
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

    /// Position ids `(b, t)` for a right- or left-padded batch: each real token's index
    /// among the real tokens of its row (HF's `cumsum(mask) − 1`), 0 for padding.
    ///
    /// # Errors
    /// A mask that is not `(b, t)`.
    pub fn positions(attention_mask: &Tensor) -> Result<Tensor> {
        let mask = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let pos: Vec<Vec<u32>> = mask
            .iter()
            .map(|row| {
                let mut seen = 0u32;
                row.iter()
                    .map(|&m| {
                        seen += m.min(1);
                        if m > 0 { seen - 1 } else { 0 }
                    })
                    .collect()
            })
            .collect();
        Ok(Tensor::new(pos, attention_mask.device())?)
    }

    /// Hidden states after the final norm, `(b, t, hidden)`. Each token attends to itself
    /// and the real tokens before it; `input.position_ids` (else [`positions`](Self::positions)
    /// from the mask) place it for the rotary embeddings. `train` is accepted for symmetry
    /// with the encoders (LLaMA checkpoints use no dropout).
    ///
    /// # Errors
    /// Input shapes that disagree; ids outside the vocabulary.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let embeds = self.embed(&input.input_ids)?;
        self.decode(&embeds, input, &ForwardCtx::plain(train))
    }

    /// The token embeddings of `ids: (b, t)`.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .weights
            .embed_tokens
            .embedding(&ids.to_dtype(DType::U32)?.flatten_all()?)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    /// The layers and the final norm over `embeds: (b, n + t, hidden)`, `n =
    /// ctx.prompt_len` prompt rows in front of `input`'s t tokens. Prompt tokens count as
    /// real tokens for attention and positions; prefix keys and values (one pair per layer,
    /// `(m, kv_width)` each) are attended by every query before the sequence's own, as HF's
    /// past key values, and shift the positions by m.
    fn decode(&self, embeds: &Tensor, input: &ModelInput, ctx: &ForwardCtx) -> Result<Tensor> {
        let _span = tracing::trace_span!("llama").entered();
        let shared = self.layer_inputs(embeds, input, ctx)?;
        let mut x = crate::ops::track(embeds.clone());
        for i in 0..self.weights.layers.len() {
            x = self.layer_forward(i, &x, &shared)?;
        }
        self.weights.norm.forward(&x)
    }

    /// What every layer of one forward over `embeds: (b, n + t, hidden)` shares (see
    /// [`decode`](Self::decode)): rotary tables, the per-key bias, prefix keys and values.
    fn layer_inputs(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<LayerInputs> {
        let cfg = &self.config;
        let (b, t) = check_input(input, None)?;
        let n_prompt = ctx.prompt_len;
        let prefix = ctx.prefix.unwrap_or(&[]);
        let (n_prefix, prefix) = if prefix.is_empty() {
            (0, Vec::new())
        } else {
            self.prefix_caches(prefix, b)?
        };
        if embeds.dims() != [b, n_prompt + t, cfg.hidden_size] {
            return Err(Error::TensorShape {
                op: "decoder input embeddings",
                expected: vec![b, n_prompt + t, cfg.hidden_size],
                got: embeds.dims().to_vec(),
            });
        }
        let virtual_n = n_prompt + n_prefix;
        if virtual_n > 0 && input.position_ids.is_some() {
            return Err(Error::UnsupportedInput {
                field: "position_ids",
                reason: "not taken with prompt or prefix tokens attached, which shift the \
                         positions themselves",
            });
        }
        let mask = with_prompt_mask(&input.attention_mask, virtual_n)?;
        let positions = match &input.position_ids {
            Some(p) => p.clone(),
            None => Self::positions(&mask)?.narrow(1, n_prefix, n_prompt + t)?,
        };
        let (cos, sin) = rope_tables(&positions, cfg.head_width(), cfg.rope_theta, self.dtype)?;
        // Queries are the prompt and real tokens; keys the prefix too.
        let key_bias = key_bias(&mask, self.dtype)?;
        Ok(LayerInputs {
            cos,
            sin,
            key_bias,
            prefix,
            train: ctx.train,
        })
    }

    /// Prefix keys and values, one `(m, kv_width)` pair per layer, as each layer's cache for
    /// a batch of `b` (a prefix enters a layer as keys and values already cached); and m.
    fn prefix_caches(
        &self,
        prefix: &[(Tensor, Tensor)],
        b: usize,
    ) -> Result<(usize, Vec<LayerCache>)> {
        if prefix.len() != self.weights.layers.len() {
            return Err(Error::TensorShape {
                op: "prefix keys and values (one pair per layer)",
                expected: vec![self.weights.layers.len()],
                got: vec![prefix.len()],
            });
        }
        let m = match prefix.first() {
            Some((k, _)) => k.dims2()?.0,
            None => 0,
        };
        let cfg = &self.config;
        let caches = prefix
            .iter()
            .map(|(k, v)| {
                Ok(Some((
                    prefix_heads(k, b, m, cfg)?,
                    prefix_heads(v, b, m, cfg)?,
                )))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((m, caches))
    }

    /// Layer `i` over `x`, with what [`layer_inputs`](Self::layer_inputs) prepared.
    fn layer_forward(&self, i: usize, x: &Tensor, shared: &LayerInputs) -> Result<Tensor> {
        let layer = self.weights.layers.get(i).ok_or(Error::TensorShape {
            op: "decoder layer index",
            expected: vec![self.weights.layers.len()],
            got: vec![i],
        })?;
        let mut cache = shared.prefix.get(i).cloned().flatten();
        let cache = cache.is_some().then_some(&mut cache);
        let (cos, sin, bias) = (&shared.cos, &shared.sin, &shared.key_bias);
        layer.forward(x, cos, sin, bias, &self.config, shared.train, cache)
    }

    /// Hidden states after the final norm for `ids: (1, t)`, the tokens that follow those
    /// `cache` holds (none at first): they attend to the cached keys and values and to each
    /// other causally, and their own are added to the cache. Generation runs the prompt once,
    /// then one token at a time.
    ///
    /// # Errors
    /// Ids that are not `(1, t)` or outside the vocabulary; a context past
    /// `max_position_embeddings`.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_cached_embeds(&self.embed(ids)?, cache)
    }

    /// As [`forward_cached`](Self::forward_cached) from input embeddings `(1, t, hidden)`:
    /// prompt-tuning rows in front of a prompt's token embeddings.
    ///
    /// # Errors
    /// As [`forward_cached`](Self::forward_cached).
    pub fn forward_cached_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _span = tracing::trace_span!("llama-cached").entered();
        let cfg = &self.config;
        let (b, t, _) = embeds.dims3()?;
        let past = cache.len;
        if b != 1 || past + t > cfg.max_position_embeddings {
            return Err(Error::TensorShape {
                op: "cached decoding (one sequence, within the context)",
                expected: vec![1, cfg.max_position_embeddings.saturating_sub(past)],
                got: vec![b, t],
            });
        }
        if cache.layers.len() != self.weights.layers.len() {
            cache.layers = vec![None; self.weights.layers.len()];
        }
        let device = embeds.device();
        let positions = Tensor::arange(past as u32, (past + t) as u32, device)?.unsqueeze(0)?;
        let (cos, sin) = rope_tables(&positions, cfg.head_width(), cfg.rope_theta, self.dtype)?;
        // Every cached key is real; query i (at past + i) sees keys 0..=past + i.
        let key_bias = Tensor::zeros((1, past + t), self.dtype, device)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (layer, c) in self.weights.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, &key_bias, cfg, false, Some(c))?;
        }
        cache.len += t;
        self.weights.norm.forward(&x)
    }

    /// The logits `(vocab,)` of the token after `ids: (1, t)`, continuing `cache` (see
    /// [`forward_cached`](Self::forward_cached)), with prompt-tuning `rows: (1, n, hidden)`
    /// in front of the ids' embeddings when given. Runs on a rayon worker
    /// ([`on_worker`](crate::ops::on_worker)): one decoding step, the unit generation and its
    /// benchmark repeat.
    ///
    /// # Errors
    /// As [`forward_cached`](Self::forward_cached).
    pub fn next_logits(
        &self,
        ids: &Tensor,
        rows: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        crate::ops::on_worker(|| {
            let hidden = match rows {
                Some(rows) => {
                    let embeds = Tensor::cat(&[rows, &self.embed(ids)?], 1)?;
                    self.forward_cached_embeds(&embeds, cache)?
                }
                None => self.forward_cached(ids, cache)?,
            };
            let t = hidden.dim(1)?;
            Ok(self
                .logits(&hidden.narrow(1, t - 1, 1)?, false)?
                .flatten_all()?)
        })
    }

    /// Next-token logits `(b, t, vocab)` from hidden states: the LM head, or the token
    /// embedding when the two are tied.
    ///
    /// # Errors
    /// Hidden states that are not `(b, t, hidden)`.
    pub fn logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        match &self.weights.lm_head {
            Some(head) => head.forward(hidden, train),
            None => {
                let (b, t, h) = hidden.dims3()?;
                let flat = hidden.reshape((b * t, h))?;
                let table = &self.weights.embed_tokens;
                let logits = match &self.head_blocks {
                    Some((id, blocks))
                        if *id == table.id()
                            && !table.track_op()
                            && crate::ops::reads_blocks_in_place(&flat, blocks) =>
                    {
                        crate::ops::quantized_linear(&flat, blocks, None, None)?
                    }
                    // The frozen op: candle's matmul would also compute the table's gradient,
                    // (vocab × hidden) of work and memory per step, for a table not trained.
                    _ => crate::ops::frozen_linear(&flat, table, None)?,
                };
                Ok(logits.reshape((b, t, self.config.vocab_size))?)
            }
        }
    }

    /// Every tensor of the decoder, once, in HF's state-dict order: `f(name, entry)`.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.weights.walk("", (), f);
    }

    /// The same walk with mutable access.
    pub fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        self.weights.walk_mut("", (), f);
    }
}

impl Backbone for Llama {
    fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.embed(input_ids)
    }

    fn forward_embeds(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        self.decode(embeds, input, ctx)
    }

    fn pooler_output(&self, _hidden: &Tensor, _train: bool) -> Result<Tensor> {
        Err(Error::UnsupportedInput {
            field: "pooling",
            reason: "a decoder has no pooler",
        })
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(String, Entry<'a>)) {
        Llama::walk(self, f);
    }

    fn walk_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        Llama::walk_mut(self, f);
    }

    /// PEFT's defaults for LLaMA-family models.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn virtual_spec(&self) -> VirtualSpec {
        let cfg = &self.config;
        VirtualSpec {
            layers: self.weights.layers.len(),
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            kv_width: cfg.kv_heads() * cfg.head_width(),
            word_embeddings: self.weights.embed_tokens.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }

    /// Rotary positions index no table; the context the model was trained for is the limit.
    fn max_seq_len(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }
}

impl crate::models::heads::Decoder for Llama {
    type LayerInputs = LayerInputs;

    fn lm_logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        self.logits(hidden, train)
    }

    fn layer_inputs(
        &self,
        embeds: &Tensor,
        input: &ModelInput,
        ctx: &ForwardCtx,
    ) -> Result<LayerInputs> {
        Llama::layer_inputs(self, embeds, input, ctx)
    }

    fn num_layers(&self) -> usize {
        self.weights.layers.len()
    }

    fn layer_forward(&self, i: usize, x: &Tensor, shared: &LayerInputs) -> Result<Tensor> {
        Llama::layer_forward(self, i, x, shared)
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.weights.norm.forward(x)
    }

    fn architecture(&self) -> &'static str {
        self.config.model_type.architecture()
    }

    fn frozen_lm_head(&self) -> Option<Tensor> {
        let w = match &self.weights.lm_head {
            None => self.weights.embed_tokens.clone(),
            Some(head) => {
                let plain = head.adapters().next().is_none() && head.bias().is_none();
                if !plain || head.is_quantized() {
                    return None;
                }
                head.weight().into_owned()
            }
        };
        (!w.track_op()).then_some(w)
    }
}
