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

/// llama.cpp's names of a layer's tensors and HF's, below `blk.N.` / `model.layers.N.`.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// llama.cpp's names of the tensors outside the layers and HF's.
const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// HF's name for llama.cpp's `name`, if ttlora knows it.
fn hf_name(name: &str) -> Option<String> {
    if let Some((_, hf)) = TOP_NAMES.iter().find(|(g, _)| *g == name) {
        return Some((*hf).into());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's name for HF's tensor `name` (`model.layers.0.self_attn.q_proj.weight` →
/// `blk.0.attn_q.weight`), if ttlora knows it.
pub fn gguf_tensor_name(name: &str) -> Option<String> {
    if let Some((g, _)) = TOP_NAMES.iter().find(|(_, hf)| *hf == name) {
        return Some((*g).into());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (g, hf) in [
            (
                "blk.3.attn_q.weight",
                "model.layers.3.self_attn.q_proj.weight",
            ),
            (
                "blk.0.ffn_down.weight",
                "model.layers.0.mlp.down_proj.weight",
            ),
            ("output.weight", "lm_head.weight"),
        ] {
            assert_eq!(hf_name(g).as_deref(), Some(hf));
            assert_eq!(gguf_tensor_name(hf).as_deref(), Some(g));
        }
        assert_eq!(
            gguf_tensor_name("model.layers.0.self_attn.rotary.weight"),
            None
        );
    }
}
