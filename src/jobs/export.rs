//! Adapter folders out to the ecosystem: an exact PEFT LoRA folder, or a merged HF model
//! folder that needs no adapter code at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::adapters::{LayerPlacement, Method, MethodKind};
use crate::error::{Error, Result};
use crate::jobs::inference::Inference;
use crate::jobs::trial::ADAPTER_NAME;
use crate::tuning::adapted::{AdapterMeta, to_peft_lora};
use crate::tuning::merged::{merge_adapters, write_merged};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A PEFT LoRA folder of the adapter's exact rank (TT-LoRA folded through its bond).
    PeftLora,
    /// A complete HF model folder with ΔW merged into the weights.
    Merged,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft-lora" => Ok(Self::PeftLora),
            "merged" => Ok(Self::Merged),
            _ => Err(format!(
                "unknown export format `{s}`; use peft-lora or merged"
            )),
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PeftLora => "peft-lora",
            Self::Merged => "merged",
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
            let meta = AdapterMeta {
                method: cfg.method.clone(),
                base_model: inf.base_model.clone(),
                base_model_config_sha256: cfg.base_model_config_sha256.clone(),
                config: cfg.config.clone(),
                target_modules: cfg.target_modules.clone(),
                exclude_modules: cfg.exclude_modules.clone(),
                overrides: cfg.overrides.clone(),
                save_head: !cfg.modules_to_save.is_empty(),
                task: Some(inf.task.clone()),
            };
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
    };
    Ok(ExportReport {
        format,
        out: out.to_path_buf(),
        modules,
        ranks,
        files: list_files(out)?,
    })
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
