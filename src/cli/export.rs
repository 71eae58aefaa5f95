//! `ttlora export` and `ttlora merge`: a saved adapter out to the ecosystem's formats.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::jobs::export::{self, ExportFormat, ExportReport};
use ttlora::jobs::generate::Generator;
use ttlora::jobs::inference::{self, Inference};

use super::common::{OfflineArgs, PoolingArgs, report_pooling};

/// The adapter to export and where to.
#[derive(Debug, Args)]
pub struct ExportSource {
    /// Adapter folder: ttlora's own (`ttlora train`) or a PEFT LoRA folder.
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Base model, overriding the one recorded in the adapter config.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    fetch: OfflineArgs,
    #[command(flatten)]
    pooling: PoolingArgs,
}

/// `ttlora export` (its help text lives on the command in `cli/mod.rs`).
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: ExportSource,
    /// Output format: peft-lora, merged (an HF model folder), gguf-lora (decoders:
    /// llama.cpp's `--lora` file) or merged-gguf (decoders with a GGUF base: the base file
    /// with ΔW merged, changed tensors in F32, for `llama-cli -m`).
    #[arg(long, default_value = "peft-lora")]
    format: ExportFormat,
}

/// `ttlora merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    source: ExportSource,
}

/// Runs `ttlora export`.
pub fn run_export(a: ExportArgs) -> Result<()> {
    write(&a.source, a.format)
}

/// Runs `ttlora merge`.
pub fn run_merge(a: MergeArgs) -> Result<()> {
    write(&a.source, ExportFormat::Merged)
}

/// Where a command writes its folder.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Folder to write; it must not exist or be empty (see --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing non-empty --out folder written by ttlora (the whole folder is
    /// replaced in one step; a folder holding other files is refused).
    #[arg(long)]
    pub force: bool,
}

impl OutputArgs {
    /// Refuses to write into a non-empty --out unless --force.
    pub fn check(&self) -> Result<()> {
        let occupied = std::fs::read_dir(&self.out).is_ok_and(|mut d| d.next().is_some());
        if occupied && !self.force {
            bail!(
                "{} exists and is not empty; choose another --out or pass --force",
                self.out.display()
            );
        }
        Ok(())
    }
}

impl ExportSource {
    /// Refuses a non-empty --out without --force, then loads the adapter onto its base model.
    pub fn load(&self) -> Result<Inference> {
        self.output.check()?;
        let inf = inference::load_with(
            &self.adapter,
            self.model.as_deref(),
            self.pooling.pooling,
            &ttlora::parse_device("cpu")?,
            !self.fetch.offline,
        )
        .with_context(|| format!("loading adapter {}", self.adapter.display()))?;
        report_pooling(&inf);
        Ok(inf)
    }
}

fn write(s: &ExportSource, format: ExportFormat) -> Result<()> {
    use ttlora::models::heads::SCORE_HEAD;
    if export::is_decoder_adapter(&s.adapter)? {
        if s.pooling.pooling.is_some() {
            bail!("--pooling does not apply to a decoder adapter (its LM head reads every token)");
        }
        s.output.check()?;
        let device = ttlora::parse_device("cpu")?;
        let allow_fetch = !s.fetch.offline;
        // Kept in its blocks: merging dequantizes only the adapted layers, and a merged GGUF
        // copies the rest as they are.
        let base_dtype = ttlora::jobs::generate::BaseDtype::Quantized;
        let folder = ttlora::io::AdapterFolder::read(&s.adapter, &device)?;
        let classifier = folder
            .config
            .modules_to_save
            .iter()
            .any(|m| m == SCORE_HEAD);
        if classifier && matches!(format, ExportFormat::GgufLora | ExportFormat::MergedGguf) {
            bail!(
                "{} is a decoder classifier (trained with --objective classify): llama.cpp's \
                 LLaMA files hold no sequence-classification head (`score`); export it \
                 --format peft-lora (PEFT SEQ_CLS with `score` in modules_to_save) or \
                 --format merged (a transformers …ForSequenceClassification folder)",
                s.adapter.display()
            );
        }
        let mut g = Generator::with_adapter_folder(
            &folder,
            &s.adapter,
            s.model.as_deref(),
            &device,
            allow_fetch,
            base_dtype,
        )
        .with_context(|| format!("loading adapter {}", s.adapter.display()))?;
        let base = s
            .model
            .clone()
            .unwrap_or_else(|| folder.config.base_model_name_or_path.clone());
        let report = export::export_decoder(&mut g, &folder.config, &base, format, &s.output.out)
            .with_context(|| format!("exporting {} as {format}", s.adapter.display()))?;
        return print_report(&report);
    }
    let mut inf = s.load()?;
    let report = export::export(&mut inf, format, &s.output.out)
        .with_context(|| format!("exporting {} as {format}", s.adapter.display()))?;
    print_report(&report)
}

fn print_report(r: &ExportReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match r.format {
        ExportFormat::PeftLora => {
            let ranks: Vec<String> = r.ranks.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "wrote a PEFT LoRA ({} modules, rank {}) to {}",
                r.modules,
                ranks.join("/"),
                r.out.display()
            )?;
        }
        ExportFormat::GgufLora => {
            let ranks: Vec<String> = r.ranks.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "wrote a llama.cpp LoRA adapter ({} modules, rank {}) to {} (llama-cli --lora {}/{})",
                r.modules,
                ranks.join("/"),
                r.out.display(),
                r.out.display(),
                ttlora::io::gguf_lora::GGUF_LORA_FILE
            )?;
        }
        ExportFormat::Merged => writeln!(
            out,
            "wrote a merged model ({} layers merged) to {}",
            r.modules,
            r.out.display()
        )?,
        ExportFormat::MergedGguf => writeln!(
            out,
            "wrote a merged GGUF ({} layers merged) to {} (llama-cli -m {}/{})",
            r.modules,
            r.out.display(),
            r.out.display(),
            export::MERGED_GGUF_FILE
        )?,
    }
    for (name, size) in &r.files {
        writeln!(out, "  {name:<28} {size:>12} bytes")?;
    }
    Ok(())
}
