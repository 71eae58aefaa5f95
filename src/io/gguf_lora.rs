//! llama.cpp's LoRA adapter file: a GGUF whose metadata says `general.type = adapter`,
//! `adapter.type = lora` and the base's `general.architecture`, holding for each adapted base
//! tensor `<name>.lora_a` `(r, in)` and `<name>.lora_b` `(out, r)` in PyTorch's row-major
//! order (GGUF lists the dimensions innermost first), as llama.cpp's
//! `convert_lora_to_gguf.py` writes them and `llama_adapter_lora_init` reads them (`--lora`).
//! llama.cpp scales every pair by `adapter.lora.alpha / r`.

use std::path::Path;

use candle_core::Tensor;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{Error, Result};

/// The file name a GGUF LoRA export writes in its folder.
pub const GGUF_LORA_FILE: &str = "adapter.gguf";

/// One adapted base tensor: its llama.cpp name (`blk.0.attn_q.weight`) and its factors.
#[derive(Debug, Clone)]
pub struct GgufLoraPair {
    /// The base tensor's name in the model's GGUF file.
    pub name: String,
    /// `lora_a`, `(r, in)`.
    pub a: Tensor,
    /// `lora_b`, `(out, r)`.
    pub b: Tensor,
}

/// Writes the adapter file `path` (inside a folder being built, fsync'd) for a base of
/// llama.cpp architecture `architecture`, with `alpha` as `adapter.lora.alpha`.
///
/// # Errors
/// [`Error::TensorShape`] for factors that do not chain (`a`'s rows ≠ `b`'s columns);
/// [`Error::ModelFile`] if serialising fails; [`Error::Io`] naming the file.
pub(crate) fn write_gguf_lora(
    path: &Path,
    architecture: &str,
    alpha: f32,
    pairs: &[GgufLoraPair],
) -> Result<()> {
    let bad = |reason: String| Error::ModelFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut tensors = Vec::with_capacity(2 * pairs.len());
    for p in pairs {
        let (r, _) = p.a.dims2()?;
        let (_, rb) = p.b.dims2()?;
        if r != rb {
            return Err(Error::TensorShape {
                op: "LoRA factors (lora_a rows = lora_b columns)",
                expected: vec![r],
                got: vec![rb],
            });
        }
        for (suffix, t) in [("lora_a", &p.a), ("lora_b", &p.b)] {
            let q = QTensor::quantize(&t.contiguous()?, GgmlDType::F32)
                .map_err(|e| bad(format!("tensor {}.{suffix}: {e}", p.name)))?;
            tensors.push((format!("{}.{suffix}", p.name), q));
        }
    }
    let metadata = [
        ("general.architecture", Value::String(architecture.into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(alpha)),
        ("general.name", Value::String("ttlora adapter".into())),
    ];
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &meta, &refs)
        .map_err(|e| bad(format!("cannot write GGUF: {e}")))?;
    super::output::write_synced(path, bytes.get_ref())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::io::{GgufSource, MetaValue, TensorSource};

    #[test]
    fn the_file_reads_back_with_llama_cpps_keys_and_pytorch_shapes() {
        let tmp = crate::io::fs::TempDir::new("gguf-lora");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6., &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::arange(0f32, 8., &dev)
            .unwrap()
            .reshape((4, 2))
            .unwrap();
        let pair = GgufLoraPair {
            name: "blk.0.attn_q.weight".into(),
            a: a.clone(),
            b: b.clone(),
        };
        let path = tmp.join(GGUF_LORA_FILE);
        write_gguf_lora(&path, "llama", 2.0, &[pair]).unwrap();
        let g = GgufSource::open(&path).unwrap();
        let s = |k: &str| g.meta(k).and_then(MetaValue::as_str).map(String::from);
        assert_eq!(s("general.type").as_deref(), Some("adapter"));
        assert_eq!(s("adapter.type").as_deref(), Some("lora"));
        assert_eq!(s("general.architecture").as_deref(), Some("llama"));
        assert_eq!(g.meta("adapter.lora.alpha"), Some(&MetaValue::F64(2.0)));
        let got_a = g.load("blk.0.attn_q.weight.lora_a", &[2, 3], &dev).unwrap();
        let got_b = g.load("blk.0.attn_q.weight.lora_b", &[4, 2], &dev).unwrap();
        assert_eq!(got_a.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(got_b.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());

        let bad = GgufLoraPair {
            name: "x".into(),
            a,
            b: Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap(),
        };
        let err = write_gguf_lora(&tmp.join("bad.gguf"), "llama", 2.0, &[bad]).unwrap_err();
        assert!(err.to_string().contains("lora_a rows"), "{err}");
    }
}
