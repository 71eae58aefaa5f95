//! A LLaMA-family decoder from a GGUF file: llama.cpp's tensor names mapped to HF's, q/k rows
//! of `llama` files un-permuted (llama.cpp interleaves them for GGML's rotary embedding;
//! ttlora rotates HF's halves), every tensor dequantized to f32 as it is loaded.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, permute_qk_rows, unpermute_qk_rows};
use super::model::Llama;
use crate::error::{Error, Result};
use crate::io::gguf::permute_block_rows;
use crate::io::{GgufSource, TensorSource};
use crate::models::walk::Entry;
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

impl<'a> AsHf<'a> {
    /// `gguf` under HF's names, for a decoder of config `cfg`.
    fn new(gguf: &'a GgufSource, cfg: &LlamaConfig) -> Self {
        let names = gguf
            .names()
            .into_iter()
            .filter_map(|n| hf_name(n).map(|hf| (hf, n.to_string())))
            .collect();
        let permuted = cfg
            .model_type
            .gguf_permutes_qk()
            .then(|| (cfg.num_attention_heads, cfg.kv_heads()));
        Self {
            gguf,
            names,
            permuted,
        }
    }

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
        let source = AsHf::new(&gguf, &cfg);
        let mut ld = Loader::checkpoint(&source, "", dtype, device).keep_quantized(keep_quantized);
        let model = Self::build(&cfg, &mut ld)?;
        ld.log_unused("decoder");
        drop(ld);
        Ok((model, gguf))
    }
}

/// What [`write_merged_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedGguf {
    /// Tensors copied from the base in their blocks.
    pub copied: usize,
    /// Tensors the model changed, written as F32.
    pub rewritten: Vec<String>,
}

/// Writes the decoder's weights to the new file `out` as a GGUF file for llama.cpp (fsync'd;
/// meant for a folder being built), built over the base GGUF it was loaded from: the base's metadata (tokenizer and chat template included) as it is, every tensor the
/// model holds unchanged (bit for bit what the base file dequantizes to, or still in its
/// blocks) copied in its blocks, and every changed one (a merged adapter, a trained norm)
/// written as F32 in llama.cpp's layout (q/k rows re-permuted for `llama` files). Keeping a
/// changed weight in F32 rather than re-quantizing it keeps ΔW: re-rounding to 4-bit blocks
/// would erase most of a low-rank update.
///
/// # Errors
/// As [`GgufSource::open`]; a base whose tensors do not match the model's shapes;
/// [`Error::ModelFile`] if the metadata cannot be read back or the file cannot be written;
/// [`Error::Io`] naming `out`.
pub fn write_merged_gguf(llama: &Llama, base: &Path, out: &Path) -> Result<MergedGguf> {
    let gguf = GgufSource::open(base)?;
    let bad = |reason: String| Error::ModelFile {
        path: base.to_path_buf(),
        reason,
    };
    // Typed metadata (llama.cpp checks each key's type): candle's reader, on a file our
    // reader has just checked.
    let mut file = std::fs::File::open(base).map_err(|source| Error::Io {
        path: base.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| bad(e.to_string()))?;
    let view = AsHf::new(&gguf, llama.config());
    // The model's tensors under HF names: `None` for a linear weight still in its blocks.
    let mut held: BTreeMap<String, Option<Tensor>> = BTreeMap::new();
    llama.walk(&mut |name, e| match e {
        Entry::Linear(_, l) => {
            let w = (!l.is_quantized()).then(|| l.weight().into_owned());
            held.insert(format!("{name}.weight"), w);
            if let Some(b) = l.bias() {
                held.insert(format!("{name}.bias"), Some(b.clone()));
            }
        }
        Entry::Tensor(_, t) => {
            held.insert(name, Some(t.clone()));
        }
    });
    let cpu = Device::Cpu;
    let (mut tensors, mut copied, mut rewritten) = (Vec::new(), 0, Vec::new());
    for name in gguf.names() {
        let hf = hf_name(name);
        let model_tensor = hf.as_ref().and_then(|h| held.get(h)).cloned().flatten();
        let changed = match (&hf, &model_tensor) {
            (Some(hf), Some(t)) => {
                let shape = gguf.shape(name).unwrap_or_default().to_vec();
                let was = view.load(hf, &shape, &cpu)?;
                let differ = (t.to_dtype(DType::F32)? - &was)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                (differ != 0.0).then_some((hf, t))
            }
            _ => None,
        };
        let q = match changed {
            None => {
                copied += 1;
                gguf.quantized(name, &cpu)?
            }
            Some((hf, t)) => {
                let t = t.to_dtype(DType::F32)?.to_device(&cpu)?;
                let t = match view.permuted_heads(hf) {
                    Some(heads) => permute_qk_rows(&t, heads)?,
                    None => t,
                };
                rewritten.push(name.to_string());
                QTensor::quantize(&t.contiguous()?, GgmlDType::F32)
                    .map_err(|e| bad(format!("tensor {name}: {e}")))?
            }
        };
        tensors.push((name.to_string(), q));
    }
    // The writer lays tensors out at its own 32-byte alignment.
    let mut keys: Vec<&String> = content
        .metadata
        .keys()
        .filter(|k| k.as_str() != "general.alignment")
        .collect();
    keys.sort_by_key(|k| (k.as_str() != "general.architecture", k.as_str()));
    let meta: Vec<(&str, &Value)> = keys
        .iter()
        .map(|k| (k.as_str(), &content.metadata[k.as_str()]))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::io::output::write_synced_with(out, |w| {
        gguf_file::write(w, &meta, &refs).map_err(|e| Error::ModelFile {
            path: out.to_path_buf(),
            reason: format!("cannot write GGUF: {e}"),
        })
    })?;
    Ok(MergedGguf { copied, rewritten })
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
