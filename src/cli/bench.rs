//! `ttlora bench`: micro-benchmarks that print a table.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use ttlora::bench::tt::{LayerCase, TtBenchConfig, TtBenchRow};
use ttlora::tt::{Ranks, TtShape};

use super::common::{DeviceArgs, JsonArgs, OfflineArgs};

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward+backward time of one linear layer: frozen, +LoRA, +TT-LoRA on each path.
    Tt(TtArgs),
    /// One whole model: training step (forward, backward, AdamW) or inference, and the
    /// process's peak memory. One configuration per process, so peak memory is its own;
    /// scripts/bench_compare.sh runs the grid against PyTorch + PEFT.
    Model(ModelArgs),
    /// The machine's f32 matmul rate (the roofline ceiling for `bench model`'s GFLOP/s), one
    /// JSON line per shape.
    Matmul(MatmulArgs),
    /// A decoder's prefill and decode speed at batch 1 (tokens/s, KV cache), one JSON line.
    Generate(GenerateArgs),
}

/// Options of `ttlora bench generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A GGUF file, an HF decoder folder, or a packaged model.
    #[arg(long, default_value = "SmolLM2-135M-Instruct")]
    model: String,
    /// Prompt tokens run in one forward.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Repetitions; the best time of each phase is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// How a GGUF base's linear weights are held: quantized (the file's blocks, read in
    /// place by each decoded token; the default) or f32 (dequantized at load).
    #[arg(long)]
    base_dtype: Option<ttlora::jobs::generate::BaseDtype>,
}

/// Options of `ttlora bench matmul`.
#[derive(Debug, Args)]
pub struct MatmulArgs {
    /// Shapes as MxNxK; the defaults are a large square and MiniLM's FFN at 32 × 128 tokens.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2048x2048x2048,4096x1536x384"
    )]
    shapes: Vec<String>,
    /// Minimum timed iterations per shape (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Minimum seconds per shape.
    #[arg(long, default_value_t = 2.0, value_parser = super::common::non_negative_f64)]
    min_seconds: f64,
}

/// `bench model --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepKind {
    /// A training step: forward, backward, clipping and AdamW (the trainer's own step).
    Train,
    /// Inference with the adapters unmerged, then merged.
    Infer,
}

/// Options of `ttlora bench model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model folder or packaged name.
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    model: String,
    /// What to time.
    #[arg(long, value_enum, default_value_t = StepKind::Train)]
    kind: StepKind,
    /// `none` (the base model; infer only) or a method (`ttlora methods` lists them).
    #[arg(long, default_value = "lora",
          value_parser = clap::builder::PossibleValuesParser::new(
              std::iter::once("none").chain(ttlora::adapters::method_names())))]
    method: String,
    /// Method config as JSON, e.g. '{"r": 8}' or '{"path": "contract"}'.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Minimum timed iterations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Minimum seconds.
    #[arg(long, default_value_t = 5.0, value_parser = super::common::non_negative_f64)]
    min_seconds: f64,
    /// A decoder (GGUF file or folder, smollm2, an HF llama/mistral/qwen2 folder): time a
    /// causal-LM training step with its base held as given (f32 or quantized); `--kind train`
    /// only. A GGUF model needs no flag: its step is the decoder's, base quantized.
    #[arg(long)]
    base_dtype: Option<ttlora::jobs::generate::BaseDtype>,
    /// A decoder's step (a GGUF, or --base-dtype): recompute each decoder layer in the
    /// backward instead of keeping its activations (less memory, more compute), as `train
    /// --gradient-checkpointing`.
    #[arg(long)]
    gradient_checkpointing: bool,
    #[command(flatten)]
    fetch: OfflineArgs,
}

/// Options of `ttlora bench tt`.
#[derive(Debug, Args)]
pub struct TtArgs {
    /// Token counts T (rows of the input batch).
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    tokens: Vec<usize>,
    /// Layer sizes to run: 768 uses [64,4,3|3,4,64] r=5; 4096 uses [16,4,4,4,2,2|2,2,4,4,4,16] r=10.
    #[arg(long, value_delimiter = ',', default_value = "768,4096")]
    sizes: Vec<usize>,
    /// LoRA rank to compare against.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Minimum timed iterations per row (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Minimum seconds per row.
    #[arg(long, default_value_t = 1.0, value_parser = super::common::non_negative_f64)]
    min_seconds: f64,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    output: JsonArgs,
}

/// Writes a result row as one JSON line with the CPU it ran on (`cpu`: model, threads,
/// vector extensions), so rows from different machines are never compared unawares.
fn write_row(out: &mut impl Write, row: &impl serde::Serialize) -> Result<()> {
    let mut value = serde_json::to_value(row)?;
    if let Some(obj) = value.as_object_mut() {
        // Read once per process: /proc/cpuinfo does not change between rows.
        static CPU: std::sync::OnceLock<ttlora::bench::machine::Cpu> = std::sync::OnceLock::new();
        let cpu = CPU.get_or_init(ttlora::bench::machine::Cpu::detect);
        obj.insert("cpu".into(), serde_json::to_value(cpu)?);
    }
    writeln!(out, "{}", serde_json::to_string(&value)?)?;
    Ok(())
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Tt(args) => run_tt(args),
        BenchCommand::Model(args) => run_model(args),
        BenchCommand::Matmul(args) => run_matmul(args),
        BenchCommand::Generate(args) => run_generate(args),
    }
}

/// Prints one JSON line.
fn run_generate(a: GenerateArgs) -> Result<()> {
    if a.prompt_tokens == 0 {
        anyhow::bail!("--prompt-tokens must be at least 1");
    }
    let path = std::path::Path::new(&a.model);
    let location = if path.exists() {
        path.to_path_buf()
    } else {
        ttlora::io::resolve_model(&a.model, true)?
    };
    let device = candle_core::Device::Cpu;
    let base = a.base_dtype.unwrap_or_default();
    let g = ttlora::jobs::generate::Generator::load_with(&location, &device, base)?;
    let row = ttlora::bench::generate::decode_rate(&g, a.prompt_tokens, a.new_tokens, a.reps)?;
    write_row(&mut std::io::stdout().lock(), &row)?;
    Ok(())
}

/// Prints one JSON line per shape.
fn run_matmul(a: MatmulArgs) -> Result<()> {
    let device = ttlora::parse_device("cpu")?;
    let mut out = std::io::stdout().lock();
    for shape in &a.shapes {
        let dims: Vec<usize> = shape
            .split('x')
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--shapes: `{shape}` is not MxNxK"))?;
        let [m, n, k] = dims[..] else {
            anyhow::bail!("--shapes: `{shape}` is not MxNxK");
        };
        let row = ttlora::bench::roofline::matmul_rate(
            (m, n, k),
            a.iters,
            Duration::try_from_secs_f64(a.min_seconds).unwrap_or(Duration::MAX),
            &device,
        )?;
        write_row(&mut out, &row)?;
    }
    Ok(())
}

/// Prints one JSON line per measured row.
fn run_model(a: ModelArgs) -> Result<()> {
    use ttlora::bench::model_step::{ModelStepConfig, inference, train_step};
    let method_config: serde_json::Value = serde_json::from_str(&a.config)
        .map_err(|e| anyhow::anyhow!("--config is not valid JSON: {e}"))?;
    // The method and its config are checked before the model is looked for.
    if a.method != "none" {
        ttlora::adapters::MethodSpec::parse(&a.method, method_config.clone())?;
    }
    let allow_fetch = !a.fetch.offline;
    let located = ttlora::jobs::generate::decoder_location(&a.model, allow_fetch)?;
    // A GGUF is always a decoder: its step is the decoder's, base held quantized by default.
    let base_dtype = match (a.base_dtype, is_gguf(&located)) {
        (None, true) if a.kind == StepKind::Infer => bail!(
            "{} is a GGUF decoder: `bench model --kind infer` times encoders; \
             `ttlora bench generate` times a decoder's prefill and decoding",
            located.display()
        ),
        (None, true) => Some(ttlora::jobs::generate::BaseDtype::default()),
        (given, _) => given,
    };
    if a.gradient_checkpointing && base_dtype.is_none() {
        bail!("--gradient-checkpointing is for a decoder's step (a GGUF, or --base-dtype)");
    }
    let dir = match base_dtype {
        Some(_) => located,
        None => ttlora::io::resolve_model(&a.model, allow_fetch)?,
    };
    let cfg = ModelStepConfig {
        method: a.method,
        method_config,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        iters: a.iters,
        min_time: Duration::try_from_secs_f64(a.min_seconds).unwrap_or(Duration::MAX),
        seed: 0,
    };
    let device = ttlora::parse_device("cpu")?;
    let rows = match (a.kind, base_dtype) {
        (StepKind::Train, Some(base)) => {
            vec![ttlora::bench::model_step::decoder_train_step(
                &dir,
                base,
                a.gradient_checkpointing,
                &cfg,
                &device,
            )?]
        }
        (StepKind::Infer, Some(_)) => bail!("--base-dtype times decoder training (--kind train)"),
        (StepKind::Train, None) => vec![train_step(&dir, &cfg, &device)?],
        (StepKind::Infer, None) => inference(&dir, &cfg, &device)?,
    };
    let mut out = std::io::stdout().lock();
    for r in rows {
        write_row(&mut out, &r)?;
    }
    Ok(())
}

/// Whether `path` is a GGUF file or a folder holding one and no HF `config.json`.
fn is_gguf(path: &std::path::Path) -> bool {
    let is_gguf_file = |p: &std::path::Path| p.extension().is_some_and(|x| x == "gguf");
    if path.is_dir() {
        !path.join("config.json").is_file()
            && std::fs::read_dir(path)
                .is_ok_and(|entries| entries.flatten().any(|e| is_gguf_file(&e.path())))
    } else {
        is_gguf_file(path)
    }
}

fn paper_shape(size: usize) -> Result<TtShape> {
    Ok(match size {
        768 => TtShape::from_core_order(768, 768, &[64, 4, 3], &[3, 4, 64], Ranks::Uniform(5))?,
        4096 => TtShape::from_core_order(
            4096,
            4096,
            &[16, 4, 4, 4, 2, 2],
            &[2, 2, 4, 4, 4, 16],
            Ranks::Uniform(10),
        )?,
        other => {
            let planned = ttlora::tt::propose_shapes(other, other, 5, Some(6))
                .or_else(|_| ttlora::tt::propose_shapes(other, other, 5, None))?;
            planned[0].clone()
        }
    })
}

fn run_tt(args: TtArgs) -> Result<()> {
    let layers = args
        .sizes
        .iter()
        .map(|&s| {
            Ok(LayerCase {
                shape: paper_shape(s)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = TtBenchConfig {
        tokens: args.tokens,
        layers,
        lora_rank: args.lora_rank,
        min_iters: args.iters,
        min_time: Duration::try_from_secs_f64(args.min_seconds).unwrap_or(Duration::MAX),
        device: args.device.device()?,
    };
    eprintln!(
        "ttlora bench tt: forward+backward of y = x W0^T + b + dW(x), x a Var (dx computed), f32, \
         device {}, CPU {}",
        args.device.device,
        ttlora::bench::machine::Cpu::detect().kind()
    );
    let mut out = std::io::stdout().lock();
    if !args.output.json {
        writeln!(
            out,
            "| layer | T | variant | shape / rank | params | fwd+bwd ms | vs LoRA |"
        )?;
        writeln!(out, "|---|---:|---|---|---:|---:|---:|")?;
    }
    let rows = ttlora::bench::tt::run(&cfg, |r| {
        eprintln!("  {} T={} {}: {:.2} ms", r.layer, r.tokens, r.variant, r.ms);
    })?;
    for r in &rows {
        if args.output.json {
            write_row(&mut out, r)?;
        } else {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} | {:.3} |",
                r.layer, r.tokens, r.variant, r.detail, r.params, r.ms, r.vs_lora
            )?;
        }
    }
    if !args.output.json {
        for verdict in verdicts(&rows) {
            writeln!(out, "{verdict}")?;
        }
    }
    Ok(())
}

/// The issue's targets, checked on the largest T: factored ≤ 1.10× LoRA and faster than the
/// other TT paths.
fn verdicts(rows: &[TtBenchRow]) -> Vec<String> {
    let Some(t_max) = rows.iter().map(|r| r.tokens).max() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut layers: Vec<&str> = rows.iter().map(|r| r.layer.as_str()).collect();
    layers.dedup();
    for layer in layers {
        let find = |v: &str| {
            rows.iter()
                .find(|r| r.layer == layer && r.tokens == t_max && r.variant == v)
                .map(|r| r.ms)
        };
        let (Some(f), Some(c), Some(rc)) = (
            find("ttlora factored"),
            find("ttlora contract"),
            find("ttlora reconstruct"),
        ) else {
            continue;
        };
        let vs = rows
            .iter()
            .find(|r| r.layer == layer && r.tokens == t_max && r.variant == "ttlora factored")
            .map_or(f64::NAN, |r| r.vs_lora);
        out.push(format!(
            "{layer} T={t_max}: factored = {vs:.3}x LoRA (target <= 1.10: {}); faster than contract ({c:.1} ms) and reconstruct ({rc:.1} ms): {}",
            if vs <= 1.10 { "met" } else { "MISSED" },
            if f < c && f < rc { "yes" } else { "NO" }
        ));
    }
    out
}
