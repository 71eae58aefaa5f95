//! `ttlora compress`: a LoRA (or any adapter with a dense ΔW) into a TT-LoRA by TT-SVD.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use ttlora::train::compress::{CompressSpec, compress};
use ttlora::tt::Truncation;

use super::export::ExportSource;

/// Arguments of `ttlora compress`.
#[derive(Debug, Args)]
pub struct CompressArgs {
    #[command(flatten)]
    source: ExportSource,
    /// Largest TT rank of every bond.
    #[arg(long, value_name = "R")]
    max_rank: Option<usize>,
    /// Largest relative Frobenius error ‖ΔW − ΔW_TT‖ / ‖ΔW‖ per module (default 1e-6 when
    /// --max-rank is not given: an exact conversion).
    #[arg(long, value_name = "EPS")]
    tolerance: Option<f64>,
    /// α of the TT-LoRA written (the cores hold ΔW / α).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// TT shape fields as JSON (layout, in_factors/out_factors, factors, cores), as for
    /// `train --config`; default: the planner's 6-core input-output shape.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ttlora compress`.
pub fn run(a: CompressArgs) -> Result<()> {
    let shape_config: serde_json::Value =
        serde_json::from_str(&a.config).context("--config is not valid JSON")?;
    let tolerance = match (a.tolerance, a.max_rank) {
        (None, None) => Some(1e-6),
        (t, _) => t,
    };
    let spec = CompressSpec {
        shape_config,
        alpha: a.alpha,
        truncation: Truncation {
            max_ranks: a.max_rank.map(|r| vec![r]),
            rel_tol: tolerance,
        },
    };
    let src = a.source.load()?;
    let r = compress(&src, &spec, &a.source.out)
        .with_context(|| format!("compressing {}", a.source.adapter.display()))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let width = super::column_width("module", r.modules.iter().map(|m| m.path.as_str()));
    writeln!(
        out,
        "{:<width$}  {:<28}  {:>8}  {:>8}  {:>9}",
        "module", "TT shape", "before", "after", "rel. err"
    )?;
    for m in &r.modules {
        writeln!(
            out,
            "{:<width$}  {:<28}  {:>8}  {:>8}  {:>9.2e}",
            m.path, m.shape, m.params_before, m.params_after, m.rel_error
        )?;
    }
    writeln!(
        out,
        "\n{} modules: {} -> {} parameters ({:.2}x), relative error of ΔW {:.3e}; adapter written to {}",
        r.modules.len(),
        r.params_before,
        r.params_after,
        r.params_before as f64 / r.params_after.max(1) as f64,
        r.rel_error,
        a.source.out.display()
    )?;
    Ok(())
}
