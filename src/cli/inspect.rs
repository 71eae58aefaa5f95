//! `ttlora inspect`: what an adapter folder holds.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ttlora::jobs::inspect::{InspectReport, inspect};

use super::common::JsonArgs;

/// Arguments of `ttlora inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Adapter folder: ttlora's own or a PEFT LoRA folder.
    dir: PathBuf,
    #[command(flatten)]
    output: JsonArgs,
}

/// Runs `ttlora inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let r = inspect(&a.dir).with_context(|| format!("inspecting {}", a.dir.display()))?;
    let mut out = std::io::stdout().lock();
    if a.output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    print_table(&mut out, &a.dir, &r)?;
    Ok(())
}

fn print_table(out: &mut impl Write, dir: &std::path::Path, r: &InspectReport) -> Result<()> {
    let task = r.task.as_ref().map_or("not recorded".into(), |t| {
        format!(
            "{} ({} labels, {} pooling)",
            t.name, t.num_labels, t.pooling
        )
    });
    writeln!(out, "{}", dir.display())?;
    writeln!(
        out,
        "  peft_type {} | method {} | base model {}",
        r.peft_type,
        r.method,
        or_unknown(&r.base_model)
    )?;
    writeln!(out, "  task {task}")?;
    let width = super::format::column_width("module", r.modules.iter().map(|m| m.path.as_str()));
    let swidth =
        super::format::column_width("structure", r.modules.iter().map(|m| m.structure.as_str()));
    writeln!(
        out,
        "\n{:<width$}  {:<swidth$}  {:>9}  {:>8}  {:>8}  {:>4}  {:>9}",
        "module", "structure", "out×in", "params", "LoRA r=8", "rank", "‖ΔW‖_F"
    )?;
    for m in &r.modules {
        // A bottleneck adapter, virtual tokens or saved weights have no ΔW to measure.
        let rank = m
            .effective_rank
            .map_or_else(|| "—".into(), |r| r.to_string());
        let norm = m
            .delta_norm
            .map_or_else(|| "—".into(), |n| format!("{n:.4}"));
        writeln!(
            out,
            "{:<width$}  {:<swidth$}  {:>9}  {:>8}  {:>8}  {:>4}  {:>9}",
            m.path,
            m.structure,
            format!("{}×{}", m.out_features, m.in_features),
            m.params,
            m.lora_r8_params,
            rank,
            norm
        )?;
    }
    let params = super::format::params_line(
        r.adapter_params,
        r.head_params,
        r.modules.len(),
        r.lora_r8_params,
    );
    writeln!(out, "\n{params}")?;
    writeln!(out, "files: {} bytes", r.file_bytes)?;
    Ok(())
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "(not recorded)" } else { s }
}
