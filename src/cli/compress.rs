//! `ttlora compress`: a LoRA (or any adapter, or a full fine-tune's weight change) into a
//! TT-LoRA by TT-SVD.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ttlora::jobs::compress::{CompressSpec, Source, compress};
use ttlora::jobs::inference;
use ttlora::tt::Truncation;

use super::export::OutputArgs;

use super::common::{JsonArgs, OfflineArgs};

/// Arguments of `ttlora compress`.
#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Adapter folder to compress: ttlora's own or a PEFT LoRA folder.
    #[arg(long, value_name = "DIR", required_unless_present = "finetuned")]
    adapter: Option<PathBuf>,
    /// A fully fine-tuned HF model folder instead: its change to the targeted layers
    /// (W_finetuned − W_base, with --model as the base) is compressed, its head kept.
    #[arg(long, value_name = "DIR", conflicts_with = "adapter")]
    finetuned: Option<PathBuf>,
    /// Base model (required with --finetuned; with --adapter it overrides the recorded one).
    #[arg(long)]
    model: Option<String>,
    /// With --finetuned: layers to take (as `train --targets`; default the architecture's
    /// query,value; `all-linear` for every linear layer).
    #[arg(long, value_delimiter = ',', requires = "finetuned")]
    targets: Option<Vec<String>>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    fetch: OfflineArgs,
    /// Largest TT rank of every bond.
    #[arg(long, value_name = "R")]
    max_rank: Option<usize>,
    /// Largest relative Frobenius error ‖ΔW − ΔW_TT‖ / ‖ΔW‖ per module (default 1e-6 when
    /// --max-rank is not given: an exact conversion).
    #[arg(long, value_name = "EPS", value_parser = super::common::non_negative_f64)]
    tolerance: Option<f64>,
    /// α of the TT-LoRA written (the cores hold ΔW / α).
    #[arg(long, default_value_t = 1.0, value_parser = super::common::finite_f64)]
    alpha: f64,
    /// TT shape fields as JSON (layout, in_factors/out_factors, factors, cores), as for
    /// `train --adapter-config`; default: the planner's 6-core input-output shape.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    #[command(flatten)]
    json: JsonArgs,
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
    a.output.check()?;
    let device = ttlora::parse_device("cpu")?;
    let (source, from) = match (&a.adapter, &a.finetuned) {
        (Some(dir), _) => {
            let adapted = inference::load(dir, a.model.as_deref(), &device, !a.fetch.offline)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            (Source::from_adapter(&adapted)?, dir)
        }
        (None, Some(dir)) => {
            let Some(model) = &a.model else {
                bail!("--finetuned needs --model, the base model it was fine-tuned from");
            };
            let base_dir = ttlora::io::resolve_model(model, !a.fetch.offline)?;
            let targets = super::train::module_set(&a.targets, &None);
            let source = Source::from_finetuned(&base_dir, model, dir, targets.as_ref(), &device)
                .with_context(|| format!("reading fine-tuned model {}", dir.display()))?;
            (source, dir)
        }
        (None, None) => bail!("give --adapter or --finetuned"),
    };
    let r = compress(&source, &spec, &a.output.out)
        .with_context(|| format!("compressing {}", from.display()))?;
    let mut out = std::io::stdout().lock();
    if a.json.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let width = super::format::column_width("module", r.modules.iter().map(|m| m.path.as_str()));
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
        a.output.out.display()
    )?;
    Ok(())
}
