//! [`BertConfig`]: the fields of an HF `config.json` the BERT family needs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::hf_config;

/// Which member of the family a config describes; decides positions, token types and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BertFamily {
    /// BERT and BERT-shaped models (MiniLM, all-MiniLM-L6-v2): positions `0..seq_len`,
    /// a pooler (dense + tanh on `[CLS]`) before the classifier.
    Bert,
    /// RoBERTa: positions count non-pad tokens from `pad_token_id + 1`, one token type,
    /// head `classifier.dense` + tanh + `classifier.out_proj` on `<s>`.
    Roberta,
}

impl BertFamily {
    /// The `model_type` values we accept, as written in config.json.
    pub const SUPPORTED: &'static [&'static str] = &["bert", "roberta"];

    /// The HF checkpoint prefix of a `…ForSequenceClassification` model (`bert.`, `roberta.`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert.",
            Self::Roberta => "roberta.",
        }
    }

    /// The HF class-name prefix of this family's architectures (`Bert`, `Roberta`).
    fn class_prefix(self) -> &'static str {
        match self {
            Self::Bert => "Bert",
            Self::Roberta => "Roberta",
        }
    }
}

/// An HF BERT/RoBERTa `config.json`, read tolerantly (unknown keys are ignored).
///
/// Defaults are HF's `BertConfig` defaults where a key may be absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `bert` or `roberta`.
    pub model_type: BertFamily,
    /// HF class names of the checkpoint (e.g. `BertModel`); empty if absent.
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
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation; only `gelu` (the exact, erf form) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; `hidden_dropout_prob` if absent.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Rows of `embeddings.position_embeddings`.
    pub max_position_embeddings: usize,
    /// Rows of `embeddings.token_type_embeddings` (RoBERTa: 1).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Std of the normal init of a freshly built model.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// ε of every layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token (RoBERTa positions start after it).
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `absolute` is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// A tiny BERT for tests: vocab 100, hidden 32, 2 layers of 4 heads, intermediate 64,
    /// 64 positions. Change fields with struct update syntax (`vocab_size: 500, ..tiny()`).
    pub fn tiny() -> Self {
        Self {
            model_type: BertFamily::Bert,
            architectures: vec!["BertModel".into()],
            vocab_size: 100,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: default_act(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            classifier_dropout: None,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: default_pos_type(),
        }
    }

    /// [`tiny`](Self::tiny) as a RoBERTa: one token type, pad id 1, positions up to 66.
    pub fn tiny_roberta() -> Self {
        Self {
            model_type: BertFamily::Roberta,
            architectures: vec!["RobertaModel".into()],
            type_vocab_size: 1,
            pad_token_id: 1,
            max_position_embeddings: 66,
            layer_norm_eps: 1e-5,
            ..Self::tiny()
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
        let cfg: Self = hf_config::from_value(value, path, BertFamily::SUPPORTED)?;
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
        crate::models::hf_config::check_sizes(path, &[("type_vocab_size", self.type_vocab_size)])?;
        if self.hidden_act != "gelu" {
            return bad(format!(
                "field `hidden_act`: unsupported value \"{}\"; supported: gelu",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "field `position_embedding_type`: unsupported value \"{}\"; supported: absolute",
                self.position_embedding_type
            ));
        }
        let prefix = self.model_type.class_prefix();
        if let Some(a) = self.architectures.iter().find(|a| !a.starts_with(prefix)) {
            return bad(format!(
                "field `architectures`: \"{a}\" is not a {prefix} architecture; supported: \
                 {prefix}Model, {prefix}For* (encoder models)"
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "field `hidden_size` ({}) must be a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("field `{field}` must be in [0, 1) (got {p})"));
            }
        }
        if self.model_type == BertFamily::Roberta
            && self.max_position_embeddings <= self.pad_token_id as usize + 1
        {
            return bad(format!(
                "field `max_position_embeddings` ({}) leaves no position after \
                 `pad_token_id` + 1 ({})",
                self.max_position_embeddings,
                self.pad_token_id + 1
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The longest input, in tokens, the position table can index.
    pub fn max_seq_len(&self) -> usize {
        match self.model_type {
            BertFamily::Bert => self.max_position_embeddings,
            BertFamily::Roberta => self.max_position_embeddings - self.pad_token_id as usize - 1,
        }
    }
}
