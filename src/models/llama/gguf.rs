//! A LLaMA-family decoder from a GGUF file: llama.cpp's tensor names mapped to HF's, q/k rows
//! of `llama` files un-permuted (llama.cpp interleaves them for GGML's rotary embedding;
//! ttlora rotates HF's halves), every tensor dequantized to f32 as it is loaded.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, LlamaFamily, unpermute_qk_rows};
use super::model::Llama;
use crate::error::Result;
use crate::io::{GgufSource, TensorSource};
use crate::models::weights::Loader;

/// HF's name for llama.cpp's `name`, if ttlora knows it.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// A GGUF file seen under HF's tensor names.
struct AsHf<'a> {
    gguf: &'a GgufSource,
    /// HF name → llama.cpp name.
    names: BTreeMap<String, String>,
    /// Heads of q and of k, when their rows are permuted (`llama` files).
    permuted: Option<(usize, usize)>,
}

impl TensorSource for AsHf<'_> {
    fn location(&self) -> &Path {
        self.gguf.location()
    }

    fn names(&self) -> Vec<&str> {
        self.names.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.gguf.shape(self.names.get(name)?)
    }

    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let file_name = self.names.get(name).map_or(name, String::as_str);
        let t = self.gguf.load(file_name, shape, device)?;
        match self.permuted {
            Some((q, _)) if name.contains(".self_attn.q_proj.") => unpermute_qk_rows(&t, q),
            Some((_, k)) if name.contains(".self_attn.k_proj.") => unpermute_qk_rows(&t, k),
            _ => Ok(t),
        }
    }
}

impl Llama {
    /// Loads the decoder a GGUF file holds (`general.architecture` `llama` or `qwen2`), its
    /// config from the metadata, every tensor dequantized and converted to `dtype`.
    ///
    /// # Errors
    /// As [`GgufSource::open`] and [`LlamaConfig::from_gguf`]; a tensor missing or of another
    /// shape.
    pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<(Self, GgufSource)> {
        let gguf = GgufSource::open(path)?;
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        let names = gguf
            .names()
            .into_iter()
            .filter_map(|n| hf_name(n).map(|hf| (hf, n.to_string())))
            .collect();
        let permuted = (cfg.model_type == LlamaFamily::Llama)
            .then(|| (cfg.num_attention_heads, cfg.kv_heads()));
        let source = AsHf {
            gguf: &gguf,
            names,
            permuted,
        };
        let mut ld = Loader::checkpoint(&source, "", dtype, device);
        let model = Self::build(&cfg, &mut ld)?;
        ld.log_unused("decoder");
        drop(ld);
        Ok((model, gguf))
    }
}
