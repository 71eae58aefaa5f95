//! [`DebertaV2`]: the encoder (embeddings, disentangled-attention layers, relative embeddings,
//! optional convolution beside layer 0), every linear an
//! [`adapters::Linear`](crate::adapters::Linear), every norm/softmax our differentiable ops.
//!
//! Attention of query i to key j, per head, with q = query_proj(x), k = key_proj(x),
//! r = LayerNorm(rel_embeddings) and δ(i, j) = clamp(bucket(i − j) + span, 0, 2·span − 1):
//!
//! `score(i, j) = (q_i·k_j + q_i·K_r[δ(i, j)] + k_j·Q_r[δ(j, i)]) / √(head_dim · scale_factor)`
//!
//! where `K_r = key_proj(r)`, `Q_r = query_proj(r)` (or `pos_key_proj`/`pos_query_proj` without
//! `share_att_key`); the second term is c2p, the third p2c, each present if `pos_att_type`
//! names it, and `scale_factor` = 1 + their count.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::DebertaV2Config;
use crate::adapters::Linear;
#[cfg(doc)]
use crate::error::Error; // for the `# Errors` links
use crate::error::Result;
use crate::io::{ResolvedModel, TensorSource};
use crate::models::heads::HeadActivation;
use crate::models::layers::{self, Norm, check_input, dropout};
use crate::models::walk::{Entry, EntryMut, LinearDims, Part, parts, tags};
use crate::models::weights::{self, Init, Loader};
use crate::models::{ModelInput, Pooling};
use crate::ops::{dropout_add, frozen_linear, frozen_linear_onto, gelu, softmax_last_dim};

/// The checkpoint prefix of the encoder in a `DebertaV2For…` model.
pub(crate) const PREFIX: &str = "deberta.";

/// HF's `make_log_bucket_position` for one relative position: distances below
/// `bucket_size / 2` keep their own bucket, larger ones share log-spaced buckets up to
/// `max_position`:
///
/// `mid = ⌊bucket_size/2⌋`; if |rel| ≤ mid then rel, else
/// `sign(rel) · (⌈ln(|rel|/mid) / ln((max_position−1)/mid) · (mid−1)⌉ + mid)`.
///
/// Computed in f32 like PyTorch's default dtype, so the buckets match HF's exactly.
/// `bucket_size` ≥ 2 and `max_position − 1 > bucket_size / 2` (checked by the config).
pub fn make_log_bucket_position(relative_pos: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    if relative_pos.abs() <= mid {
        return relative_pos;
    }
    let abs = relative_pos.abs();
    let ratio = ((max_position - 1) as f64 / mid as f64) as f32;
    let log = ((abs as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil();
    relative_pos.signum() * (log as i64 + mid)
}

/// HF's `build_relative_position`: `rel[i][j] = i − j` for query i and key j, log-bucketed
/// (see [`make_log_bucket_position`]) when `bucket_size > 0` and `max_position > 0`.
/// Row-major `(query_size, key_size)`.
pub fn build_relative_position(
    query_size: usize,
    key_size: usize,
    bucket_size: i64,
    max_position: i64,
) -> Vec<i64> {
    let bucketed = bucket_size > 0 && max_position > 0;
    (0..query_size as i64)
        .flat_map(|i| {
            (0..key_size as i64).map(move |j| {
                if bucketed {
                    make_log_bucket_position(i - j, bucket_size, max_position)
                } else {
                    i - j
                }
            })
        })
        .collect()
}

parts! {
    /// Word (+ absolute position) (+ token-type) embeddings, an optional `embed_proj` up to
    /// `hidden`, then a layer norm; padding rows are zeroed as HF does.
    struct Embeddings for<'c> |cfg: &'c DebertaV2Config| {
        let (e, h) = (cfg.embedding_size(), cfg.hidden_size);
    } {
        word: Tensor = "word_embeddings.weight", tags::EMBEDDING_TABLE,
            (&[cfg.vocab_size, e], Init::Normal);
        position: Option<Tensor> = "position_embeddings.weight", tags::EMBEDDING_TABLE,
            cfg.position_biased_input
                .then_some((&[cfg.max_position_embeddings, e][..], Init::Normal));
        token_type: Option<Tensor> = "token_type_embeddings.weight", tags::EMBEDDING_TABLE,
            (cfg.type_vocab_size > 0).then_some((&[cfg.type_vocab_size, e][..], Init::Normal));
        embed_proj: Option<Linear> = "embed_proj", tags::EMBEDDING_LINEAR,
            (e != h).then_some(LinearDims::unbiased(h, e));
        norm: Norm = "LayerNorm", tags::EMBEDDING_NORM, (h, cfg.layer_norm_eps);
    }
}

/// What every layer's attention shares in one forward pass: the (normalised) relative
/// embeddings and the flat gather indices of the c2p and p2c terms for this `seq_len`.
struct Relative {
    /// `(2·span, hidden)`.
    embeddings: Tensor,
    /// `idx[i·L + j] = i·2span + δ(i, j)`: picks c2p `(i, δ)` out of `(L, 2span)` rows.
    c2p: Tensor,
    /// `idx[i·L + j] = j·2span + δ(j, i)`: picks p2c `(j, δ)` out of `(L, 2span)` rows.
    p2c: Tensor,
    span: usize,
}

impl Relative {
    fn new(embeddings: Tensor, seq_len: usize, cfg: &DebertaV2Config) -> Result<Self> {
        let span = cfg.relative_span();
        let rel = build_relative_position(
            seq_len,
            seq_len,
            cfg.position_buckets,
            cfg.max_relative_positions(),
        );
        let two = 2 * span as i64;
        let delta = |r: i64| (r + span as i64).clamp(0, two - 1);
        let n = seq_len;
        let mut c2p = Vec::with_capacity(n * n);
        let mut p2c = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                c2p.push((i as i64 * two + delta(rel[i * n + j])) as u32);
                p2c.push((j as i64 * two + delta(-rel[j * n + i])) as u32);
            }
        }
        let device = embeddings.device().clone();
        Ok(Self {
            embeddings,
            c2p: Tensor::from_vec(c2p, n * n, &device)?,
            p2c: Tensor::from_vec(p2c, n * n, &device)?,
            span,
        })
    }
}

parts! {
    /// One transformer layer: disentangled self-attention and feed-forward, each with
    /// residual + layer norm.
    struct Layer for<'c> |cfg: &'c DebertaV2Config| {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = (h, cfg.layer_norm_eps);
        let own_pos = cfg.relative_attention && !cfg.share_att_key;
    } {
        query_proj: Linear = "attention.self.query_proj", tags::LINEAR, LinearDims::biased(h, h);
        key_proj: Linear = "attention.self.key_proj", tags::LINEAR, LinearDims::biased(h, h);
        value_proj: Linear = "attention.self.value_proj", tags::LINEAR, LinearDims::biased(h, h);
        pos_key_proj: Option<Linear> = "attention.self.pos_key_proj", tags::LINEAR,
            (own_pos && cfg.has_c2p()).then_some(LinearDims::biased(h, h));
        pos_query_proj: Option<Linear> = "attention.self.pos_query_proj", tags::LINEAR,
            (own_pos && cfg.has_p2c()).then_some(LinearDims::biased(h, h));
        attn_out: Linear = "attention.output.dense", tags::ATTENTION_OUTPUT,
            LinearDims::biased(h, h);
        attn_norm: Norm = "attention.output.LayerNorm", tags::NORM, norm;
        intermediate: Linear = "intermediate.dense", tags::LINEAR, LinearDims::biased(i, h);
        output: Linear = "output.dense", tags::FFN_OUTPUT, LinearDims::biased(h, i);
        out_norm: Norm = "output.LayerNorm", tags::NORM, norm;
    }
}

impl Layer {
    /// The attention context `(b_sz, seq_len, hidden)` before `attention.output.dense`.
    ///
    /// Computed head-major, `(heads, b_sz, seq_len, ·)`, so the relative terms of all
    /// examples come out of one matmul per head against the `(2·span, head_dim)` position
    /// keys/queries. `key_bias: (1, b_sz, 1, seq_len)` is 0 for real keys and
    /// [`MASK_VALUE`] for padding.
    fn self_attention(
        &self,
        x: &Tensor,
        key_bias: &Tensor,
        rel: Option<&Relative>,
        cfg: &DebertaV2Config,
        train: bool,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, hidden) = x.dims3()?;
        let (n_heads, head_dim) = (cfg.num_attention_heads, cfg.head_dim());
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b_sz, seq_len, n_heads, head_dim))?
                .permute((2, 0, 1, 3))?
                .contiguous()?)
        };
        // Every term shares the scale 1/√(head_dim · scale_factor), so it goes on q (and on
        // the position queries of p2c) rather than on seq_len² scores.
        let scale = 1.0 / ((head_dim * cfg.scale_factor()) as f64).sqrt();
        let q = heads(self.query_proj.forward(x, train)?.affine(scale, 0.0)?)?;
        let k = heads(self.key_proj.forward(x, train)?)?;
        let v = heads(self.value_proj.forward(x, train)?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(rel) = rel {
            let two_span = 2 * rel.span;
            let r = dropout(&rel.embeddings, cfg.hidden_dropout_prob, train)?;
            // (2·span, hidden) → (heads, 2·span, head_dim)
            let pos_heads = |t: Tensor| -> Result<Tensor> {
                Ok(t.reshape((two_span, n_heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            // (heads, b_sz·L, head_dim) · (heads, head_dim, 2·span), then each (i, j) picks
            // its bucket column: (heads·b_sz, L·2span) → (heads·b_sz, L·L).
            let relative_term = |content: &Tensor, pos: &Tensor, idx: &Tensor| -> Result<Tensor> {
                Ok(content
                    .reshape((n_heads, b_sz * seq_len, head_dim))?
                    .matmul(&pos.t()?)?
                    .reshape((n_heads * b_sz, seq_len * two_span))?
                    .index_select(idx, 1)?
                    .reshape((n_heads, b_sz, seq_len, seq_len))?)
            };
            if cfg.has_c2p() {
                let proj = self.pos_key_proj.as_ref().unwrap_or(&self.key_proj);
                let pos_key = pos_heads(proj.forward(&r, train)?)?;
                scores = (scores + relative_term(&q, &pos_key, &rel.c2p)?)?;
            }
            if cfg.has_p2c() {
                let proj = self.pos_query_proj.as_ref().unwrap_or(&self.query_proj);
                let pos_query = pos_heads(proj.forward(&r, train)?.affine(scale, 0.0)?)?;
                scores = (scores + relative_term(&k, &pos_query, &rel.p2c)?)?;
            }
        }
        let probs = softmax_last_dim(&scores.broadcast_add(key_bias)?)?;
        let probs = dropout(&probs, cfg.attention_probs_dropout_prob, train)?;
        Ok(probs
            .matmul(&v)?
            .permute((1, 2, 0, 3))?
            .reshape((b_sz, seq_len, hidden))?)
    }

    /// `x: (b_sz, seq_len, hidden)` → same shape.
    fn forward(
        &self,
        x: &Tensor,
        key_bias: &Tensor,
        rel: Option<&Relative>,
        cfg: &DebertaV2Config,
        train: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("deberta-layer").entered();
        let ctx = self.self_attention(x, key_bias, rel, cfg, train)?;
        let hidden_p = if train { cfg.hidden_dropout_prob } else { 0.0 };
        let attn = self.attn_out.forward(&ctx, train)?;
        let attn = self.attn_norm.forward(&dropout_add(&attn, x, hidden_p)?)?;
        let inner = gelu(&self.intermediate.forward(&attn, train)?)?;
        let out = self.output.forward(&inner, train)?;
        self.out_norm.forward(&dropout_add(&out, &attn, hidden_p)?)
    }
}

parts! {
    /// HF's `ConvLayer` beside layer 0 (`encoder.conv`): a same-length 1-D convolution over
    /// the embedding output, masked, activated, added to layer 0's output and layer-normed.
    /// Frozen; computed as `kernel` shifted frozen matmuls so gradients reach the input
    /// cheaply.
    struct Conv for<'c> |cfg: &'c DebertaV2Config| {
        let h = cfg.hidden_size;
    } {
        /// `(hidden, hidden, kernel)` as stored.
        weight: Tensor = "conv.weight", tags::OTHER,
            (&[h, h, cfg.conv_kernel_size], Init::Normal);
        bias: Tensor = "conv.bias", tags::OTHER, (&[h], Init::Normal);
        norm: Norm = "LayerNorm", tags::NORM, (h, cfg.layer_norm_eps);
    }
}

parts! {
    /// The one listing of a DeBERTa-v2 encoder's tensors, in HF's names: embeddings, the
    /// layers, then the relative embeddings, their norm and the conv where the config has
    /// them.
    struct Weights for<'c> |cfg: &'c DebertaV2Config| {
        let h = cfg.hidden_size;
    } {
        embeddings: Embeddings = "embeddings", (), cfg;
        layers: Vec<Layer> = "encoder.layer", (), (cfg.num_hidden_layers, cfg);
        /// `(2·span, hidden)`, with `relative_attention`.
        rel_embeddings: Option<Tensor> = "encoder.rel_embeddings.weight", tags::ENCODER_TABLE,
            cfg.relative_attention
                .then_some((&[2 * cfg.relative_span(), h][..], Init::Normal));
        /// With `norm_rel_ebd = layer_norm`.
        rel_norm: Option<Norm> = "encoder.LayerNorm", tags::NORM,
            cfg.norm_rel_layer_norm().then_some((h, cfg.layer_norm_eps));
        conv: Option<Conv> = "encoder.conv", (), (cfg.conv_kernel_size > 0).then_some(cfg);
    }
}

impl Conv {
    /// `embedded`, `residual: (b_sz, L, hidden)`, `mask: (b_sz, L, 1)` (1 real, 0 pad):
    /// `LN(residual + act(dropout(mask ∘ conv(embedded)))) ∘ mask`.
    fn forward(
        &self,
        embedded: &Tensor,
        residual: &Tensor,
        mask: &Tensor,
        cfg: &DebertaV2Config,
        train: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("deberta-conv").entered();
        let (_, seq_len, _) = embedded.dims3()?;
        // The taps are cut from the weight each pass (k small copies), so they always follow
        // it: trained in place as a `Var` under full fine-tuning, or replaced by a loaded
        // full fine-tune.
        let taps = conv_taps(&self.weight)?;
        let k = taps.len();
        let pad = (k - 1) / 2;
        let padded = embedded.pad_with_zeros(1, pad, k - 1 - pad)?;
        // out[t] = b + Σ_s W_s · x[t + s − pad]
        let mut out = frozen_linear(&padded.narrow(1, 0, seq_len)?, &taps[0], Some(&self.bias))?;
        for (s, tap) in taps.iter().enumerate().skip(1) {
            out = frozen_linear_onto(&padded.narrow(1, s, seq_len)?, tap, None, &out)?;
        }
        let out = out.broadcast_mul(mask)?;
        let out = HeadActivation::from_hf(&cfg.conv_act).apply(&dropout(
            &out,
            cfg.hidden_dropout_prob,
            train,
        )?)?;
        Ok(self.norm.forward(&(residual + out)?)?.broadcast_mul(mask)?)
    }
}

/// `weight: (hidden, hidden, kernel)` cut into its `kernel` taps `weight[:, :, t]`.
fn conv_taps(weight: &Tensor) -> Result<Vec<Tensor>> {
    let (_, _, k) = weight.dims3()?;
    (0..k)
        .map(|t| Ok(weight.narrow(2, t, 1)?.squeeze(2)?.contiguous()?))
        .collect()
}

/// The DeBERTa-v2/v3 encoder: token ids → hidden states `(b_sz, seq_len, hidden)`.
///
/// Embeddings, layer norms, relative embeddings and linear weights are frozen tensors;
/// adapters attached to the linears (reached through [`walk_mut`](Self::walk_mut)) are the only
/// trainable part.
///
/// Hidden states of real tokens match HF's; those of padding tokens do not (HF zeroes their
/// attention rows, we let them attend like real tokens), which nothing downstream reads.
pub struct DebertaV2 {
    config: DebertaV2Config,
    weights: Weights,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for DebertaV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebertaV2")
            .field("layers", &self.weights.layers.len())
            .field("hidden", &self.config.hidden_size)
            .field("relative_attention", &self.config.relative_attention)
            .field("pos_att_type", &self.config.pos_att_type)
            .field("conv", &self.weights.conv.is_some())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Where the encoder sits in a checkpoint: bare (`embeddings.…`, a `DebertaV2Model`) or under
/// `deberta.` (a `DebertaV2For…` model); `folder` is named in the error.
pub(super) fn detect_prefix(source: &dyn TensorSource, folder: &Path) -> Result<String> {
    weights::detect_prefix(
        source,
        "embeddings.word_embeddings.weight",
        &[PREFIX],
        "DeBERTa-v2",
        folder,
    )
}

impl DebertaV2 {
    /// Builds the encoder from `ld`.
    pub(super) fn build(cfg: &DebertaV2Config, ld: &mut Loader) -> Result<Self> {
        Ok(Self {
            config: cfg.clone(),
            weights: Weights::load(ld, "", cfg)?,
            dtype: ld.dtype(),
            device: ld.device().clone(),
        })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or its sharded index), in `dtype`;
    /// the encoder may sit bare or under `deberta.`.
    ///
    /// # Errors
    /// As [`ResolvedModel::from_dir`] and [`DebertaV2::load_from`].
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_from(&ResolvedModel::from_dir(dir)?, dtype, device)
    }

    /// Loads the encoder of an opened model in `dtype`; it may sit bare or under `deberta.`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an unsupported config; [`Error::WeightTensor`] for a missing
    /// or misshapen tensor.
    pub fn load_from(model: &ResolvedModel, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = DebertaV2Config::from_value(model.config(), &model.config_path())?;
        let prefix = detect_prefix(model.tensors(), model.dir())?;
        let mut ld = Loader::checkpoint(model.tensors(), &prefix, dtype, device);
        let encoder = Self::build(&cfg, &mut ld)?;
        ld.log_unused("encoder");
        Ok(encoder)
    }

    /// A freshly initialised encoder: weights, biases and embeddings N(0, initializer_range²),
    /// layer norms γ = 1, β = 0, drawn from `seed`. For tests and experiments.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid config.
    pub fn random(cfg: &DebertaV2Config, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate(Path::new("<in-memory config>"))?;
        let rng = crate::adapters::seeded_rng(seed);
        let mut ld = Loader::random(rng, cfg.initializer_range, dtype, device);
        Self::build(cfg, &mut ld)
    }

    /// The config the encoder was built from.
    pub fn config(&self) -> &DebertaV2Config {
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

    /// The word embeddings of `input_ids`, `(b_sz, L, embedding_size)`: the table lookup
    /// only (HF's `inputs_embeds`).
    ///
    /// # Errors
    /// Ids that are not `(b_sz, L)` or out of the vocabulary.
    pub fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b_sz, seq_len) = input_ids.dims2()?;
        let width = self.config.embedding_size();
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self
            .weights
            .embeddings
            .word
            .embedding(&ids)?
            .reshape((b_sz, seq_len, width))?)
    }

    /// Embeddings `(b_sz, L, hidden)` from word embeddings, padding rows zeroed;
    /// `mask: (b_sz, L, 1)`.
    fn embed_words(
        &self,
        words: &Tensor,
        input: &ModelInput,
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b_sz, seq_len) = check_input(input, self.config.max_seq_len())?;
        let cfg = &self.config;
        let e = &self.weights.embeddings;
        let width = cfg.embedding_size();
        let flat = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::U32)?.flatten_all()?) };
        let mut x = words.clone();
        if let Some(p) = &e.position {
            let positions = match &input.position_ids {
                Some(ids) => p.embedding(&flat(ids)?)?.reshape((b_sz, seq_len, width))?,
                None => p.narrow(0, 0, seq_len)?.unsqueeze(0)?,
            };
            x = x.broadcast_add(&positions)?;
        }
        if let Some(t) = &e.token_type {
            let types = t
                .embedding(&layers::token_types(input)?.flatten_all()?)?
                .reshape((b_sz, seq_len, width))?;
            x = (x + types)?;
        }
        // The tables are `Var`s under full fine-tuning: cut the graph inside `no_grad`.
        let mut x = crate::ops::track(x);
        if let Some(proj) = &e.embed_proj {
            x = proj.forward(&x, train)?;
        }
        let x = e.norm.forward(&x)?.broadcast_mul(mask)?;
        dropout(&x, cfg.hidden_dropout_prob, train)
    }

    /// The shared relative context for `seq_len`, with `relative_attention`.
    fn relative(&self, seq_len: usize) -> Result<Option<Relative>> {
        let Some(rel) = &self.weights.rel_embeddings else {
            return Ok(None);
        };
        let rel = match &self.weights.rel_norm {
            Some(norm) => norm.forward(rel)?,
            None => crate::ops::track(rel.clone()),
        };
        Ok(Some(Relative::new(rel, seq_len, &self.config)?))
    }

    /// Hidden states of the last layer, `(b_sz, seq_len, hidden)`. `train` enables dropout.
    ///
    /// # Errors
    /// [`Error::TensorShape`] if the three input tensors differ in shape or the sequence is
    /// longer than the absolute position table; token ids out of the vocabulary; device
    /// mismatch.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<Tensor> {
        let words = self.word_embeddings(&input.input_ids)?;
        self.forward_words(&words, input, train)
    }

    /// [`forward`](Self::forward) from word embeddings (see
    /// [`word_embeddings`](Self::word_embeddings)).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_words(&self, words: &Tensor, input: &ModelInput, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("deberta-v2").entered();
        let (b_sz, seq_len) = input.input_ids.dims2()?;
        let mask = input.attention_mask.to_dtype(self.dtype)?;
        let token_mask = mask.reshape((b_sz, seq_len, 1))?;
        let embedded = self.embed_words(words, input, &token_mask, train)?;
        let key_bias = layers::key_bias(&mask, self.dtype)?.reshape((1, b_sz, 1, seq_len))?;
        let rel = self.relative(seq_len)?;
        let mut x = embedded.clone();
        for (i, layer) in self.weights.layers.iter().enumerate() {
            x = layer.forward(&x, &key_bias, rel.as_ref(), &self.config, train)?;
            if i == 0
                && let Some(conv) = &self.weights.conv
            {
                x = conv.forward(&embedded, &x, &token_mask, &self.config, train)?;
            }
        }
        Ok(x)
    }

    /// Pools hidden states `(b_sz, seq_len, hidden)` into `(b_sz, hidden)`: the first token
    /// (`Cls`) or the mean over real tokens (`Mean`).
    ///
    /// # Errors
    /// Shape mismatch between `hidden` and `attention_mask`.
    pub fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
        layers::pool(hidden, attention_mask, pooling)
    }

    /// Every tensor of the encoder, once, in HF's state-dict order, each name behind
    /// `prefix` (`deberta.` or none): `f(name, entry)`.
    pub fn walk<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        self.weights.walk(prefix, (), f);
    }

    /// The same walk with mutable access.
    pub fn walk_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        self.weights.walk_mut(prefix, (), f);
    }

    /// What prompt-learning methods would need (they are refused for this family).
    pub(crate) fn virtual_spec(&self) -> crate::adapters::VirtualSpec {
        crate::adapters::VirtualSpec {
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

    /// Layer `i`'s attention context for `x` (no dropout), for tests that compare it with a
    /// direct computation.
    #[cfg(test)]
    pub(super) fn attention_context(
        &self,
        i: usize,
        x: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, _) = x.dims3()?;
        let key_bias =
            layers::key_bias(attention_mask, self.dtype)?.reshape((1, b_sz, 1, seq_len))?;
        let rel = self.relative(seq_len)?;
        self.weights.layers[i].self_attention(x, &key_bias, rel.as_ref(), &self.config, false)
    }
}
