//! [`DebertaV2Config`]: the fields of an HF DeBERTa-v2/v3 `config.json` the model needs.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::models::hf_config;

/// The `model_type` of the family, as written in config.json.
pub const MODEL_TYPE: &str = "deberta-v2";

/// The attention terms `pos_att_type` may name besides content→content.
const POS_ATT_TYPES: &[&str] = &["c2p", "p2c"];

/// An HF DeBERTa-v2/v3 `config.json`, read tolerantly (unknown keys are ignored).
///
/// Defaults are HF's `DebertaV2Config` defaults (and the `getattr` fallbacks of
/// `modeling_deberta_v2.py`) where a key may be absent; the five sizes are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebertaV2Config {
    /// Always `deberta-v2` (DeBERTa-v3 checkpoints use it too).
    pub model_type: String,
    /// HF class names of the checkpoint (e.g. `DebertaV2ForMaskedLM`); empty if absent.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Rows of `embeddings.word_embeddings`.
    pub vocab_size: usize,
    /// Width of every hidden state (`hidden`).
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of one head; if given, `num_attention_heads × attention_head_size` must equal
    /// `hidden_size` (the attention output projection is `hidden × hidden`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_head_size: Option<usize>,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation; only `gelu` (the exact, erf form) is supported.
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    /// Dropout on embeddings, relative embeddings and sub-layer outputs (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Rows of `embeddings.position_embeddings` (used only with `position_biased_input`), and
    /// the relative span when `max_relative_positions` < 1.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Rows of `embeddings.token_type_embeddings`; 0 (DeBERTa-v3) means no token types.
    #[serde(default)]
    pub type_vocab_size: usize,
    /// Std of the normal init of a freshly built model.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// ε of every layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Whether attention adds the disentangled relative-position terms (`encoder.rel_embeddings`).
    #[serde(default)]
    pub relative_attention: bool,
    /// Largest relative distance; < 1 means `max_position_embeddings`.
    #[serde(default = "default_minus_one")]
    pub max_relative_positions: i64,
    /// Log-bucket count of relative positions (v3: 256); ≤ 0 means no bucketing.
    #[serde(default = "default_minus_one")]
    pub position_buckets: i64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Whether absolute position embeddings are added to the input (v2/v3: false).
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    /// Relative terms besides content→content: `c2p` and/or `p2c`; HF accepts a list or a
    /// `|`-separated string (`"p2c|c2p"`), and so do we.
    #[serde(default, deserialize_with = "pos_att_type_from_json")]
    pub pos_att_type: Vec<String>,
    /// Whether the relative terms reuse `query_proj`/`key_proj` (v3) instead of their own
    /// `pos_query_proj`/`pos_key_proj`.
    #[serde(default)]
    pub share_att_key: bool,
    /// `layer_norm` normalises the relative embeddings with `encoder.LayerNorm`; `none` does not.
    #[serde(default = "default_none")]
    pub norm_rel_ebd: String,
    /// Width of the token embeddings; if it differs from `hidden_size`, `embeddings.embed_proj`
    /// maps them up. Absent means `hidden_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// Width of the context pooler; absent means `hidden_size`, the only supported value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_hidden_size: Option<usize>,
    /// Dropout on the context token before `pooler.dense` (training only).
    #[serde(default)]
    pub pooler_dropout: f64,
    /// Activation after `pooler.dense`: `gelu` or `tanh`.
    #[serde(default = "default_gelu")]
    pub pooler_hidden_act: String,
    /// Dropout before `classifier`; `hidden_dropout_prob` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_dropout: Option<f64>,
    /// Kernel of the convolution beside layer 0 (v2 xlarge: 3); 0 means none. Must be odd.
    #[serde(default)]
    pub conv_kernel_size: usize,
    /// Groups of that convolution; only 1 is supported.
    #[serde(default = "default_one")]
    pub conv_groups: usize,
    /// Activation of that convolution: `gelu` or `tanh`.
    #[serde(default = "default_tanh")]
    pub conv_act: String,
}

fn default_gelu() -> String {
    "gelu".into()
}
fn default_tanh() -> String {
    "tanh".into()
}
fn default_none() -> String {
    "none".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> usize {
    512
}
fn default_init_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-7
}
fn default_minus_one() -> i64 {
    -1
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}

/// `pos_att_type` as HF's config class reads it: null, a list, or `"p2c|c2p"`.
fn pos_att_type_from_json<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => Vec::new(),
        Some(Raw::List(v)) => v.into_iter().map(|s| s.trim().to_lowercase()).collect(),
        Some(Raw::Joined(s)) => s
            .split('|')
            .map(|p| p.trim().to_lowercase())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

impl DebertaV2Config {
    /// A tiny DeBERTa-v3 for tests: vocab 100, hidden 32, 2 layers of 4 heads, intermediate
    /// 64, 64 positions; relative attention with 8 log buckets, `p2c|c2p`, shared keys,
    /// layer-normed relative embeddings, no absolute positions, no token types. Change fields
    /// with struct update syntax (`conv_kernel_size: 3, ..tiny()`).
    pub fn tiny() -> Self {
        Self {
            model_type: MODEL_TYPE.into(),
            architectures: vec!["DebertaV2Model".into()],
            vocab_size: 100,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            attention_head_size: None,
            intermediate_size: 64,
            hidden_act: default_gelu(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-7,
            relative_attention: true,
            max_relative_positions: -1,
            position_buckets: 8,
            pad_token_id: 0,
            position_biased_input: false,
            pos_att_type: vec!["p2c".into(), "c2p".into()],
            share_att_key: true,
            norm_rel_ebd: "layer_norm".into(),
            embedding_size: None,
            pooler_hidden_size: None,
            pooler_dropout: 0.0,
            pooler_hidden_act: default_gelu(),
            cls_dropout: None,
            conv_kernel_size: 0,
            conv_groups: 1,
            conv_act: default_tanh(),
        }
    }

    /// Reads and validates `config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if unreadable; [`Error::ModelConfig`] naming the field for a bad value.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&hf_config::read(path)?, path)
    }

    /// Parses and validates config JSON; `path` is only used in error messages.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the field for a missing, malformed or unsupported value.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        Self::from_value(&hf_config::parse_value(text, path)?, path)
    }

    /// Deserialises and validates parsed config JSON (e.g.
    /// [`ResolvedModel::config`](crate::io::ResolvedModel::config)); `path` is only used in
    /// error messages.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the field for a missing, malformed or unsupported value.
    pub fn from_value(value: &serde_json::Value, path: &Path) -> Result<Self> {
        let cfg: Self = hf_config::from_value(value, path, &[MODEL_TYPE])?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the fields the model code relies on.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the field, the value and what is supported.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::ModelConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        crate::models::hf_config::check_encoder(
            path,
            &crate::models::hf_config::EncoderSizes {
                vocab_size: self.vocab_size,
                hidden_size: self.hidden_size,
                num_hidden_layers: self.num_hidden_layers,
                num_attention_heads: self.num_attention_heads,
                intermediate_size: self.intermediate_size,
                max_position_embeddings: self.max_position_embeddings,
            },
            self.layer_norm_eps,
            self.initializer_range,
        )?;
        let limit = crate::models::hf_config::MAX_CONFIG_SIZE;
        for (field, v) in [
            ("max_relative_positions", self.max_relative_positions),
            ("position_buckets", self.position_buckets),
            (
                "type_vocab_size",
                i64::try_from(self.type_vocab_size).unwrap_or(i64::MAX),
            ),
            (
                "conv_kernel_size",
                i64::try_from(self.conv_kernel_size).unwrap_or(i64::MAX),
            ),
        ] {
            if !(-1..=limit as i64).contains(&v) {
                return bad(format!("field `{field}` must be -1 to {limit} (got {v})"));
            }
        }
        if self.model_type != MODEL_TYPE {
            return bad(format!(
                "field `model_type`: unsupported value \"{}\"; supported: {MODEL_TYPE}",
                self.model_type
            ));
        }
        if let Some(a) = self
            .architectures
            .iter()
            .find(|a| !a.starts_with("DebertaV2"))
        {
            return bad(format!(
                "field `architectures`: \"{a}\" is not a DebertaV2 architecture; supported: \
                 DebertaV2Model, DebertaV2For* (encoder models)"
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "field `hidden_size` ({}) must be a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(s) = self.attention_head_size
            && s * self.num_attention_heads != self.hidden_size
        {
            return bad(format!(
                "field `attention_head_size` ({s}) × `num_attention_heads` ({}) must equal \
                 `hidden_size` ({}); other head widths are not supported",
                self.num_attention_heads, self.hidden_size
            ));
        }
        for (field, value, supported) in [
            ("hidden_act", &self.hidden_act, &["gelu"][..]),
            (
                "pooler_hidden_act",
                &self.pooler_hidden_act,
                &["gelu", "tanh"],
            ),
            ("conv_act", &self.conv_act, &["gelu", "tanh"]),
        ] {
            if !supported.contains(&value.as_str()) {
                return bad(format!(
                    "field `{field}`: unsupported value \"{value}\"; supported: {}",
                    supported.join(", ")
                ));
            }
        }
        if let Some(p) = self
            .pos_att_type
            .iter()
            .find(|p| !POS_ATT_TYPES.contains(&p.as_str()))
        {
            return bad(format!(
                "field `pos_att_type`: unsupported entry \"{p}\"; supported: {}",
                POS_ATT_TYPES.join(", ")
            ));
        }
        if let Some(n) = self
            .norm_rel_ebd
            .split('|')
            .map(str::trim)
            .find(|n| !["none", "layer_norm"].contains(&n.to_lowercase().as_str()))
        {
            return bad(format!(
                "field `norm_rel_ebd`: unsupported value \"{n}\"; supported: none, layer_norm"
            ));
        }
        if self.embedding_size == Some(0) {
            return bad("field `embedding_size` must be at least 1 (got 0)".into());
        }
        if let Some(p) = self.pooler_hidden_size
            && p != self.hidden_size
        {
            return bad(format!(
                "field `pooler_hidden_size` ({p}) must equal `hidden_size` ({}): the classifier \
                 reads the pooler's output as a hidden-size vector",
                self.hidden_size
            ));
        }
        if self.relative_attention && self.position_buckets > 0 {
            let mid = self.position_buckets / 2;
            let max = self.max_relative_positions();
            if mid < 1 || max.saturating_sub(1) <= mid {
                return bad(format!(
                    "field `position_buckets` ({}): log buckets need at least 2 buckets and \
                     `max_relative_positions` − 1 ({}) above half the bucket count ({mid})",
                    self.position_buckets,
                    max.saturating_sub(1)
                ));
            }
        }
        if self.conv_kernel_size > 0 {
            if self.conv_kernel_size.is_multiple_of(2) {
                return bad(format!(
                    "field `conv_kernel_size` ({}) must be odd: an even kernel changes the \
                     sequence length (HF fails on it too)",
                    self.conv_kernel_size
                ));
            }
            if self.conv_groups != 1 {
                return bad(format!(
                    "field `conv_groups`: unsupported value {}; supported: 1",
                    self.conv_groups
                ));
            }
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("pooler_dropout", self.pooler_dropout),
            ("cls_dropout", self.cls_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("field `{field}` must be in [0, 1) (got {p})"));
            }
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of the token embeddings (`embedding_size`, else `hidden_size`).
    pub fn embedding_size(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// The largest relative distance: `max_relative_positions`, or `max_position_embeddings`
    /// when that is < 1 (as HF resolves it).
    pub fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// Half the rows of `encoder.rel_embeddings` (HF's `pos_ebd_size`, the attention span):
    /// `position_buckets` if > 0, else the resolved `max_relative_positions`.
    pub fn relative_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative_positions() as usize
        }
    }

    /// Whether attention adds the content→position term.
    pub fn has_c2p(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "c2p")
    }

    /// Whether attention adds the position→content term.
    pub fn has_p2c(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "p2c")
    }

    /// HF's `scale_factor`: 1 + the number of relative terms; scores are divided by
    /// √(head_dim · scale_factor). Counted even without `relative_attention`, as HF does.
    pub fn scale_factor(&self) -> usize {
        1 + usize::from(self.has_c2p()) + usize::from(self.has_p2c())
    }

    /// Whether `encoder.LayerNorm` normalises the relative embeddings.
    pub fn norm_rel_layer_norm(&self) -> bool {
        self.norm_rel_ebd
            .split('|')
            .any(|n| n.trim().eq_ignore_ascii_case("layer_norm"))
    }

    /// The longest input, in tokens: the position table with `position_biased_input`, else
    /// unbounded (relative positions beyond the span share the outermost buckets).
    pub fn max_seq_len(&self) -> Option<usize> {
        self.position_biased_input
            .then_some(self.max_position_embeddings)
    }
}
