//! A LLaMA-family decoder from a GGUF file: llama.cpp's tensor names mapped to HF's, q/k rows
//! of `llama` files un-permuted (llama.cpp interleaves them for GGML's rotary embedding;
//! ttlora rotates HF's halves), every tensor dequantized to f32 as it is loaded.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, LlamaFamily, unpermute_qk_rows};
use super::model::Llama;
use crate::error::Result;
use crate::io::gguf::permute_block_rows;
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

impl AsHf<'_> {
    /// The heads whose rows llama.cpp permuted in HF tensor `name` (q or k of a `llama`
    /// file), if any.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        match self.permuted {
            Some((q, _)) if name.contains(".self_attn.q_proj.") => Some(q),
            Some((_, k)) if name.contains(".self_attn.k_proj.") => Some(k),
            _ => None,
        }
    }
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
        match self.permuted_heads(name) {
            Some(heads) => unpermute_qk_rows(&t, heads),
            None => Ok(t),
        }
    }

    fn load_quantized(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let file_name = self.names.get(name).map_or(name, String::as_str);
        let Some(q) = self.gguf.load_quantized(file_name, shape, device)? else {
            return Ok(None);
        };
        let Some(heads) = self.permuted_heads(name) else {
            return Ok(Some(q));
        };
        // The row order `unpermute_qk_rows` gives, read off the row indices themselves.
        let rows = Tensor::arange(0u32, shape[0] as u32, &Device::Cpu)?.reshape((shape[0], 1))?;
        let order: Vec<usize> = unpermute_qk_rows(&rows, heads)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|r| r as usize)
            .collect();
        Ok(Some(permute_block_rows(&q, &order)?))
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
        Self::load_gguf_with(path, dtype, device, false)
    }

    /// As [`load_gguf`](Self::load_gguf); with `keep_quantized` (and an f32 CPU model) the
    /// layers' linear weights the file stores in blocks stay in them
    /// ([`Linear::quantized`](crate::adapters::Linear::quantized)): the model then needs
    /// about the file's size for them instead of 4 bytes a weight.
    ///
    /// # Errors
    /// As [`load_gguf`](Self::load_gguf).
    pub fn load_gguf_with(
        path: &Path,
        dtype: DType,
        device: &Device,
        keep_quantized: bool,
    ) -> Result<(Self, GgufSource)> {
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
        let mut ld = Loader::checkpoint(&source, "", dtype, device).keep_quantized(keep_quantized);
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
