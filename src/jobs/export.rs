//! Adapter folders out to the ecosystem: an exact PEFT LoRA folder, a merged HF model
//! folder that needs no adapter code at all, or (decoders) a GGUF LoRA adapter that
//! llama.cpp loads with `--lora`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::adapters::{LayerPlacement, Method, MethodKind};
use crate::error::{Error, Result};
use crate::io::gguf_lora::{GGUF_LORA_FILE, GgufLoraPair, write_gguf_lora};
use crate::io::peft_lora::PeftLora;
use crate::jobs::generate::Generator;
use crate::jobs::inference::Inference;
use crate::jobs::trial::ADAPTER_NAME;
use crate::models::llama::{LlamaConfig, gguf_tensor_name, permute_qk_rows};
use crate::tuning::adapted::{AdapterMeta, to_peft_lora};
use crate::tuning::merged::{merge_adapters, write_merged, write_merged_folder};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A PEFT LoRA folder of the adapter's exact rank (TT-LoRA folded through its bond).
    PeftLora,
    /// A complete HF model folder with ΔW merged into the weights.
    Merged,
    /// llama.cpp's GGUF LoRA adapter (decoders), in a folder as `adapter.gguf`.
    GgufLora,
    /// A GGUF base with ΔW merged (decoders), in a folder as `model.gguf`: changed tensors
    /// F32, the rest in the base's blocks.
    MergedGguf,
}

/// The file name a merged GGUF export writes in its folder.
pub const MERGED_GGUF_FILE: &str = "model.gguf";

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft-lora" => Ok(Self::PeftLora),
            "merged" => Ok(Self::Merged),
            "gguf-lora" => Ok(Self::GgufLora),
            "merged-gguf" => Ok(Self::MergedGguf),
            _ => Err(format!(
                "unknown export format `{s}`; use peft-lora, merged, gguf-lora or merged-gguf"
            )),
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PeftLora => "peft-lora",
            Self::Merged => "merged",
            Self::GgufLora => "gguf-lora",
            Self::MergedGguf => "merged-gguf",
        })
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The format written.
    pub format: ExportFormat,
    /// The folder written.
    pub out: PathBuf,
    /// Adapted modules exported or merged.
    pub modules: usize,
    /// The distinct LoRA ranks written (empty for a merged export).
    pub ranks: BTreeSet<usize>,
    /// Each file written with its size in bytes.
    pub files: Vec<(String, u64)>,
}

/// Exports the adapter loaded in `inf` (see [`crate::jobs::inference::load`])
/// to `out`. A merged export merges the model in place.
///
/// # Errors
/// For `peft-lora`, an adapter that cannot be written as LoRA: [`Error::NoLoraForm`] for
/// methods that are not LoRA-shaped, or as [`to_peft_lora`] (TT shapes without a splitting
/// bond, …); a merge that would hold NaN/Inf; write errors.
/// Nothing is left at `out` on error.
pub fn export(inf: &mut Inference, format: ExportFormat, out: &Path) -> Result<ExportReport> {
    let cfg = &inf.config;
    let mut ranks = BTreeSet::new();
    let modules = match format {
        ExportFormat::PeftLora => {
            if let Some(err) = no_lora_form(crate::adapters::method(&cfg.method)?) {
                return Err(err);
            }
            let meta = meta_of(cfg, &inf.base_model, Some(inf.task.clone()));
            if inf.task.pooling != crate::io::Pooling::Cls {
                tracing::warn!(
                    "the adapter was trained with {} pooling; HF's {} pools the first token, \
                     so PEFT will load the LoRA weights exactly but its head will see another \
                     pooled vector",
                    inf.task.pooling,
                    inf.model.architecture()
                );
            }
            let lora = to_peft_lora(inf.model.as_ref(), ADAPTER_NAME, &meta)?;
            ranks.extend(lora.modules.values().map(|m| m.a.dims()[0]));
            lora.write(out)?;
            lora.modules.len()
        }
        ExportFormat::Merged => {
            check_tokenizer(&inf.model_dir)?;
            let n = merge_adapters(inf.model.as_mut(), ADAPTER_NAME)?;
            write_merged(inf.model.as_ref(), &inf.model_dir, Some(&inf.task), out)?;
            n
        }
        ExportFormat::GgufLora | ExportFormat::MergedGguf => {
            return Err(Error::UnsupportedInput {
                field: "--format",
                reason: "llama.cpp's GGUF files (gguf-lora, merged-gguf) are for decoders \
                         (llama, mistral, qwen2); this adapter is for a sequence classifier",
            });
        }
    };
    Ok(ExportReport {
        format,
        out: out.to_path_buf(),
        modules,
        ranks,
        files: list_files(out)?,
    })
}

/// The record of how the adapter in `cfg` was made, for writing it again.
fn meta_of(
    cfg: &crate::io::adapter_folder::AdapterConfig,
    base_model: &str,
    task: Option<crate::io::TaskInfo>,
) -> AdapterMeta {
    AdapterMeta {
        method: cfg.method.clone(),
        base_model: base_model.to_string(),
        base_model_config_sha256: cfg.base_model_config_sha256.clone(),
        config: cfg.config.clone(),
        target_modules: cfg.target_modules.clone(),
        exclude_modules: cfg.exclude_modules.clone(),
        overrides: cfg.overrides.clone(),
        save_head: !cfg.modules_to_save.is_empty(),
        task,
    }
}

/// Whether the adapter folder `dir` is a decoder's: PEFT's `task_type` `CAUSAL_LM`, or a
/// decoder classifier (see [`is_decoder_classifier`]).
///
/// # Errors
/// An unreadable or invalid config file.
pub fn is_decoder_adapter(dir: &Path) -> Result<bool> {
    let path = dir.join(crate::io::adapter_folder::CONFIG_FILE);
    let config: serde_json::Value = crate::io::read_json_if_present(&path)?.unwrap_or_default();
    if config["task_type"] == "CAUSAL_LM" {
        return Ok(true);
    }
    let names = safetensors_names(&dir.join(crate::io::adapter_folder::WEIGHTS_FILE));
    Ok(is_decoder_classifier(&config, names.as_deref()))
}

/// Whether an adapter is a decoder classifier's: PEFT's `SEQ_CLS` whose saved head is the
/// decoder's `score` (an encoder's is `classifier…`). ttlora's own folders list the tensor
/// (`score.weight`), which settles it; PEFT lists the modules `classifier` *and* `score` for
/// every SEQ_CLS adapter whatever the model, so for a PEFT folder the weights decide: a
/// `score.weight` and no `classifier` tensor (`names`, the weights file's tensor names; a
/// folder without a readable weights file is not taken for a decoder's).
pub fn is_decoder_classifier(config: &serde_json::Value, names: Option<&[String]>) -> bool {
    let head = crate::models::heads::SCORE_HEAD;
    let module = head.strip_suffix(".weight").unwrap_or(head);
    let listed = |name: &str| {
        config["modules_to_save"]
            .as_array()
            .is_some_and(|m| m.iter().any(|n| n == name))
    };
    if config["task_type"] != "SEQ_CLS" {
        return false;
    }
    if listed(head) {
        return true;
    }
    listed(module)
        && names.is_some_and(|names| {
            names.iter().any(|n| n.ends_with(&format!(".{head}")))
                && !names.iter().any(|n| n.contains("classifier"))
        })
}

/// The tensor names in a safetensors file's header; `None` when the file is missing or its
/// header is not one (the normal loader then reports it properly).
fn safetensors_names(path: &Path) -> Option<Vec<String>> {
    use std::io::Read;
    // Only a regular file: opening a FIFO would wait for a writer (the loader refuses it).
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // A header longer than the file (or than 100 MB) is damage, not something to allocate.
    let size = file.metadata().ok()?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    Some(
        header
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "__metadata__")
            .collect(),
    )
}

/// Exports the adapter loaded on the decoder `g` (see [`Generator::with_adapter`]; `cfg` is
/// its folder's config, `base_model` what names the base) to `out`: a PEFT `CAUSAL_LM` LoRA
/// folder, llama.cpp's GGUF LoRA adapter, or a merged HF folder.
///
/// A merged export writes an HF `…ForCausalLM` folder (for a GGUF base, the config and
/// tokenizer read from its metadata as HF files).
///
/// # Errors
/// As [`export`]; for `gguf-lora`, a module llama.cpp has no tensor for, or DoRA (which
/// llama.cpp adapters cannot hold).
pub fn export_decoder(
    g: &mut Generator,
    cfg: &crate::io::adapter_folder::AdapterConfig,
    base_model: &str,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportReport> {
    if matches!(format, ExportFormat::Merged | ExportFormat::MergedGguf) {
        if format == ExportFormat::MergedGguf && g.hf_folder().is_some() {
            return Err(Error::UnsupportedInput {
                field: "--format merged-gguf",
                reason: "needs a GGUF base (its metadata, tokenizer and blocks are copied); \
                         for an HF base write --format merged and convert that folder with \
                         llama.cpp's convert_hf_to_gguf.py",
            });
        }
        // ΔW folded into the weights (a quantized layer dequantized), then either a plain HF
        // `…ForCausalLM` folder with the tokenizer, or the base GGUF rewritten around the
        // changed tensors.
        let n = merge_adapters(&mut g.model, ADAPTER_NAME)?;
        if format == ExportFormat::Merged {
            let mut config = g.hf_config()?;
            let task = g.model.score_labels().and(cfg.task.as_ref());
            if let Some(n) = g.model.score_labels() {
                classifier_config(&mut config, n, cfg.task.as_ref(), g.pad_id());
            }
            let extra = g.hf_tokenizer_files()?;
            write_merged_folder(&g.model, &config, g.hf_folder(), &extra, task, out)?;
        } else {
            crate::io::OutputLock::acquire(out)?.replace_folder(|dir| {
                let file = dir.join(MERGED_GGUF_FILE);
                let merged = crate::models::llama::write_merged_gguf(g.decoder(), &g.path, &file)?;
                tracing::info!(
                    "{} tensors copied in the base's blocks, {} rewritten as F32",
                    merged.copied,
                    merged.rewritten.len()
                );
                Ok(())
            })?;
        }
        return Ok(ExportReport {
            format,
            out: out.to_path_buf(),
            modules: n,
            ranks: BTreeSet::new(),
            files: list_files(out)?,
        });
    }
    if let Some(err) = no_lora_form(crate::adapters::method(&cfg.method)?) {
        return Err(err);
    }
    // The prompted task and its --max-len travel with the export (eval reuses them).
    let meta = meta_of(cfg, base_model, cfg.task.clone());
    let lora = to_peft_lora(&g.model, ADAPTER_NAME, &meta)?;
    let ranks: BTreeSet<usize> = lora.modules.values().map(|m| m.a.dims()[0]).collect();
    if format == ExportFormat::PeftLora {
        lora.write(out)?;
    } else {
        let llama = g.decoder().config();
        let pairs = gguf_lora_pairs(&lora, llama)?;
        // Each pair carries its own α/r in lora_b, so llama.cpp's α/r must be 1: α = r where
        // the ranks agree, else 0 (which llama.cpp reads as "no scaling").
        let alpha = match ranks.iter().collect::<Vec<_>>().as_slice() {
            [r] => **r as f32,
            _ => 0.0,
        };
        let arch = llama.model_type.gguf_architecture();
        crate::io::OutputLock::acquire(out)?.replace_folder(|dir| {
            write_gguf_lora(&dir.join(GGUF_LORA_FILE), arch, alpha, &pairs)
        })?;
    }
    Ok(ExportReport {
        format,
        out: out.to_path_buf(),
        modules: lora.modules.len(),
        ranks,
        files: list_files(out)?,
    })
}

/// Makes a decoder's HF config a `…ForSequenceClassification` one for `n` classes: the label
/// names (the task's answers, else `LABEL_i`) and the pad token the head's last-token lookup
/// needs (transformers refuses batches without one): the one ttlora trained with (the
/// tokenizer's pad, else EOS).
fn classifier_config(
    config: &mut serde_json::Value,
    n: usize,
    task: Option<&crate::io::TaskInfo>,
    pad_id: u32,
) {
    let names: Vec<String> = match task {
        Some(t) if t.label_names.len() == n => t.label_names.clone(),
        _ => (0..n).map(|i| format!("LABEL_{i}")).collect(),
    };
    let id2label: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    config["num_labels"] = n.into();
    config["id2label"] = id2label.into();
    config["label2id"] = label2id.into();
    // The pad ttlora padded with in training: transformers reads the head at the last token
    // that is not this id, so any other id could move it.
    config["pad_token_id"] = pad_id.into();
}

/// llama.cpp's tensor pairs for a LoRA on a LLaMA-family decoder: each module's `lora_b`
/// scaled by its own α/r (or α/√r), its rows permuted as llama.cpp permutes q and k in
/// `llama` files.
///
/// # Errors
/// A module without a llama.cpp tensor; a DoRA module.
fn gguf_lora_pairs(lora: &PeftLora, cfg: &LlamaConfig) -> Result<Vec<GgufLoraPair>> {
    let permute = cfg.model_type.gguf_permutes_qk();
    lora.modules
        .iter()
        .map(|(path, m)| {
            let refuse = |reason: &'static str| Error::UnsupportedInput {
                field: "--format gguf-lora",
                reason,
            };
            if m.magnitude.is_some() {
                return Err(refuse(
                    "DoRA's magnitude vectors have no place in a llama.cpp LoRA adapter",
                ));
            }
            let name =
                gguf_tensor_name(&format!("{path}.weight")).ok_or_else(|| Error::ModelConfig {
                    path: PathBuf::from(path),
                    reason: "this module has no tensor in llama.cpp's LLaMA layout".into(),
                })?;
            let r = m.a.dims()[0] as f64;
            let scale = if lora.use_rslora {
                m.lora_alpha / r.sqrt()
            } else {
                m.lora_alpha / r
            };
            let mut b = (&m.b * scale)?;
            if permute && path.ends_with(".self_attn.q_proj") {
                b = permute_qk_rows(&b, cfg.num_attention_heads)?;
            } else if permute && path.ends_with(".self_attn.k_proj") {
                b = permute_qk_rows(&b, cfg.kv_heads())?;
            }
            Ok(GgufLoraPair {
                name,
                a: m.a.clone(),
                b,
            })
        })
        .collect()
}

/// [`Error::NoLoraForm`] saying what to do instead when an adapter of method `m` has no PEFT
/// LoRA form, or `None` for the LoRA family (whose every shape is still checked module by
/// module).
fn no_lora_form(m: &dyn Method) -> Option<Error> {
    let (what, instead) = match m.kind() {
        MethodKind::Layer(LayerPlacement::Parallel) => return None,
        MethodKind::Layer(LayerPlacement::Serial) => (
            "adapter",
            format!(
                "being non-linear, it cannot be merged either; its folder (peft_type {}) is what \
                 ttlora eval/predict load",
                m.peft_type()
            ),
        ),
        MethodKind::BaseWeights => (
            "fine-tune",
            "--format merged (or ttlora merge) writes it as a complete HF model folder".into(),
        ),
        MethodKind::VirtualTokens(_) => (
            "adapter",
            format!(
                "it cannot be merged either; its folder already uses PEFT's {} layout, which \
                 PeftModel.from_pretrained loads as it is",
                m.peft_type()
            ),
        ),
    };
    Some(Error::NoLoraForm {
        method: m.name(),
        what,
        instead,
    })
}

/// The files in `dir` with their sizes, sorted by name.
///
/// # Errors
/// [`Error::Io`] if the folder cannot be listed.
pub fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let meta = entry.metadata().map_err(io)?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// A merged model folder is only usable with its tokenizer: refuses a base whose
/// `tokenizer.json` is there but unusable, and warns about a base without one (the merged
/// folder then needs the tokenizer from elsewhere).
///
/// # Errors
/// [`Error::Tokenizer`] naming the file.
fn check_tokenizer(model_dir: &Path) -> Result<()> {
    let path = model_dir.join(crate::io::TOKENIZER_FILE);
    if !path.exists() {
        tracing::warn!(
            "{}: the base model has no tokenizer.json; the merged folder will have none either",
            model_dir.display()
        );
        return Ok(());
    }
    crate::data::TextEncoder::from_file(&path, 512).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEFT's config names the head module (`score`); ttlora's own the tensor (`score.weight`):
    /// both are decoder classifiers, an encoder's head and a CAUSAL_LM adapter are not.
    #[test]
    fn decoder_classifiers_are_known_by_either_head_name() {
        let config = |task: &str, heads: &[&str]| serde_json::json!({"task_type": task, "modules_to_save": heads});
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let decoder = names(&["base_model.model.score.weight", "base_model.model.x.lora_A"]);
        let encoder = names(&["base_model.model.classifier.weight"]);
        // ttlora's own folders name the tensor.
        assert!(is_decoder_classifier(
            &config("SEQ_CLS", &["score.weight"]),
            None
        ));
        // PEFT lists `classifier` and `score` for every SEQ_CLS adapter: the weights decide.
        let peft = config("SEQ_CLS", &["classifier", "score"]);
        assert!(is_decoder_classifier(&peft, Some(&decoder)));
        assert!(!is_decoder_classifier(&peft, Some(&encoder)));
        assert!(!is_decoder_classifier(&peft, None));
        assert!(!is_decoder_classifier(
            &config("SEQ_CLS", &["classifier"]),
            Some(&decoder)
        ));
        assert!(!is_decoder_classifier(
            &config("CAUSAL_LM", &["score"]),
            Some(&decoder)
        ));
        // The repository's PEFT fixture (a BERT classifier PEFT wrote) is an encoder's.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/lora");
        assert!(!is_decoder_adapter(&fixture).unwrap());
        let header = safetensors_names(&fixture.join("adapter_model.safetensors")).unwrap();
        assert!(
            header.iter().any(|n| n.contains("classifier")),
            "{header:?}"
        );
        let mut hf = serde_json::json!({"architectures": ["LlamaForSequenceClassification"]});
        let task = crate::io::TaskInfo {
            name: "rte".into(),
            label_names: vec!["Yes".into(), "No".into()],
            num_labels: 2,
            pooling: crate::io::Pooling::LastToken,
            max_len: 256,
        };
        classifier_config(&mut hf, 2, Some(&task), 7);
        assert_eq!(hf["id2label"], serde_json::json!({"0": "Yes", "1": "No"}));
        assert_eq!(hf["label2id"], serde_json::json!({"Yes": 0, "No": 1}));
        assert_eq!(
            (hf["num_labels"].as_u64(), hf["pad_token_id"].as_u64()),
            (Some(2), Some(7))
        );
        // The pad ttlora trained with replaces a config's own; without the task, HF's default
        // label names.
        let mut hf = serde_json::json!({"pad_token_id": 3});
        classifier_config(&mut hf, 2, None, 7);
        assert_eq!(hf["pad_token_id"].as_u64(), Some(7));
        assert_eq!(hf["id2label"]["1"], "LABEL_1");
    }
}
