//! `ttlora shapes`: the TT shape planner.

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use ttlora::tt::{self, Ranks, TtShape};

use super::common::JsonArgs;

/// Plan TT shapes for an (out x in) matrix, or count a given shape.
///
/// Without a shape it lists, for each total core count, the cheapest input|output shape at the
/// given rank (largest factors at the two ends of the train). `--cores N` lists alternatives
/// with exactly N cores; `--budget P` finds the highest rank that fits in P parameters.
/// Shapes print in core order: input factors | reversed output factors.
#[derive(Debug, Args)]
pub struct ShapesArgs {
    /// Input features (columns of W).
    #[arg(long = "in", value_name = "N")]
    in_features: usize,
    /// Output features (rows of W).
    #[arg(long = "out", value_name = "N")]
    out_features: usize,
    /// Uniform TT rank of every inner bond.
    #[arg(long, default_value_t = 5)]
    rank: usize,
    /// Per-bond ranks (d-1 inner ranks) for an explicit shape; overrides --rank.
    #[arg(long, value_delimiter = ',', value_name = "R1,R2,..")]
    ranks: Option<Vec<usize>>,
    /// Only shapes with exactly this many cores (input + output).
    #[arg(long, value_name = "D")]
    cores: Option<usize>,
    /// Highest rank whose cheapest shape fits in this many parameters.
    #[arg(long, value_name = "PARAMS", conflicts_with = "rank")]
    budget: Option<usize>,
    /// Input factors m_1..m_p (least significant first = the input cores in core order).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "M1,M2,..",
        requires = "output_factors"
    )]
    input_factors: Option<Vec<usize>>,
    /// Output factors n_1..n_q (least significant first; the output cores are these reversed).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N1,N2,..",
        requires = "input_factors"
    )]
    output_factors: Option<Vec<usize>>,
    /// An input|output shape in core order, e.g. "64,4,3|3,4,64".
    #[arg(long, value_name = "IN|OUT", conflicts_with_all = ["input_factors", "reshape"])]
    shape: Option<String>,
    /// A reshape-layout shape: factors of the row-major (out, in) matrix, product out*in.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "S1,S2,..",
        conflicts_with = "input_factors"
    )]
    reshape: Option<Vec<usize>>,
    /// LoRA rank to compare against.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// How many alternatives to list with --cores.
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[command(flatten)]
    output: JsonArgs,
}

#[derive(Debug, Serialize)]
struct ShapeRow {
    shape: String,
    layout: String,
    core_dims: Vec<usize>,
    in_factors: Vec<usize>,
    out_factors: Vec<usize>,
    ranks: Vec<usize>,
    cores: usize,
    params: usize,
    lora_rank: usize,
    lora_params: usize,
    ratio_to_lora: f64,
}

impl ShapeRow {
    fn new(s: &TtShape, lora_rank: usize) -> Self {
        Self {
            shape: s.to_string(),
            layout: s.layout().to_string(),
            core_dims: s.core_dims().to_vec(),
            in_factors: s.in_factors().to_vec(),
            out_factors: s.out_factors().to_vec(),
            ranks: s.ranks().to_vec(),
            cores: s.num_cores(),
            params: s.num_params(),
            lora_rank,
            lora_params: tt::lora_params(s.in_features(), s.out_features(), lora_rank),
            ratio_to_lora: s.ratio_to_lora(lora_rank),
        }
    }
}

pub fn run(args: ShapesArgs) -> Result<()> {
    let (in_f, out_f) = (args.in_features, args.out_features);
    let ranks = match &args.ranks {
        Some(r) => Ranks::PerBond(r.clone()),
        None => Ranks::Uniform(args.rank),
    };
    let explicit = if let (Some(i), Some(o)) = (&args.input_factors, &args.output_factors) {
        Some(TtShape::new(
            in_f,
            out_f,
            i.clone(),
            o.clone(),
            ranks.clone(),
        )?)
    } else if let Some(text) = &args.shape {
        let (i, o) = tt::parse_core_order(text).with_context(|| format!("--shape {text}"))?;
        if o.is_empty() {
            bail!(
                "--shape {text}: expected input and output cores separated by `|`, e.g. 64,4,3|3,4,64"
            );
        }
        Some(TtShape::from_core_order(
            in_f,
            out_f,
            &i,
            &o,
            ranks.clone(),
        )?)
    } else if let Some(f) = &args.reshape {
        Some(TtShape::reshape(in_f, out_f, f.clone(), ranks.clone())?)
    } else {
        None
    };
    if args.ranks.is_some() && explicit.is_none() {
        bail!(
            "--ranks needs an explicit shape (--shape, --input-factors/--output-factors or --reshape)"
        );
    }
    let (title, shapes) = match (&explicit, args.budget, args.cores) {
        (Some(s), _, _) => {
            return print_explicit(s, args.lora_rank, args.output.json);
        }
        (None, Some(budget), cores) => (
            format!("highest rank within {budget} parameters, per core count"),
            tt::fit_budget(in_f, out_f, budget, cores)?,
        ),
        (None, None, Some(d)) => {
            let mut all = tt::propose_shapes(in_f, out_f, args.rank, Some(d))?;
            all.truncate(args.top);
            (
                format!("cheapest shapes with {d} cores at rank {}", args.rank),
                all,
            )
        }
        (None, None, None) => (
            format!("cheapest shape per core count at rank {}", args.rank),
            tt::best_per_core_count(in_f, out_f, args.rank)?,
        ),
    };
    let rows: Vec<ShapeRow> = shapes
        .iter()
        .map(|s| ShapeRow::new(s, args.lora_rank))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.output.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let lora = tt::lora_params(in_f, out_f, args.lora_rank);
    writeln!(
        out,
        "TT shapes for a {out_f}x{in_f} matrix (out x in): {title}; LoRA r={} has {lora} parameters",
        args.lora_rank
    )?;
    writeln!(
        out,
        "{:>5}  {:<40} {:>9} {:>11}",
        "cores",
        "shape (core order: in | reversed out)",
        "params",
        format!("vs LoRA r={}", args.lora_rank)
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:>5}  {:<40} {:>9} {:>11.4}",
            r.cores, r.shape, r.params, r.ratio_to_lora
        )?;
    }
    Ok(())
}

fn print_explicit(s: &TtShape, lora_rank: usize, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let row = ShapeRow::new(s, lora_rank);
    if json {
        serde_json::to_writer_pretty(&mut out, &row)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "shape {s} ({} layout) for a {}x{} matrix (out x in)",
        s.layout(),
        s.out_features(),
        s.in_features()
    )?;
    writeln!(
        out,
        "{:>5}  {:<24} {:>9}",
        "core", "(r_prev, s, r_next)", "params"
    )?;
    for k in 0..s.num_cores() {
        let (a, m, b) = s.core_shape(k);
        writeln!(
            out,
            "{:>5}  {:<24} {:>9}",
            k + 1,
            format!("({a}, {m}, {b})"),
            a * m * b
        )?;
    }
    writeln!(
        out,
        "total {} parameters; LoRA r={lora_rank}: {} (ratio {:.4}, {:.1}x fewer)",
        row.params,
        row.lora_params,
        row.ratio_to_lora,
        1.0 / row.ratio_to_lora
    )?;
    Ok(())
}
