//! Decoder speed at batch 1: prefill (the prompt in one forward) and decode (one token at a
//! time through the KV cache), in tokens per second.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::Result;
use crate::jobs::generate::Generator;
use crate::models::llama::KvCache;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRow {
    /// What was measured.
    pub kind: &'static str,
    /// The model file.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    pub new_tokens: usize,
    /// Best prefill time over the repetitions, ms.
    pub prefill_ms: f64,
    /// Prompt tokens per second at that time.
    pub prefill_tok_s: f64,
    /// Best decode time per token over the repetitions, ms.
    pub decode_ms_per_token: f64,
    /// Decoded tokens per second at that time.
    pub decode_tok_s: f64,
    /// Whether the base's linear weights were kept in their quantized blocks.
    pub quantized_base: bool,
    /// The machine's threads candle used.
    pub threads: usize,
}

/// Runs `reps` times: a prompt of `prompt_tokens` token ids (cycling through the vocabulary
/// from id 1000, so no special token), then `new_tokens` greedy steps with the cache; keeps
/// the best time of each phase.
///
/// # Errors
/// A prompt past the model's context; model errors.
pub fn decode_rate(
    g: &Generator,
    prompt_tokens: usize,
    new_tokens: usize,
    reps: usize,
) -> Result<GenerateRow> {
    let cfg = g.decoder().config();
    if prompt_tokens == 0 || prompt_tokens + new_tokens > cfg.max_position_embeddings {
        return Err(crate::Error::PromptTooLong {
            tokens: prompt_tokens + new_tokens,
            context: cfg.max_position_embeddings,
        });
    }
    let vocab = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| 1000u32.min(vocab - 1) + i % vocab.saturating_sub(1000).max(1))
        .collect();
    let device = g.decoder().device().clone();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps.max(1) {
        let mut cache = KvCache::new();
        let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
        let start = Instant::now();
        let argmax = |logits: Tensor| -> Result<u32> {
            Ok(logits.argmax(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()?)
        };
        let llama = g.decoder();
        let mut next = argmax(llama.next_logits(&input, None, &mut cache)?)?;
        best_prefill = best_prefill.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..new_tokens {
            let input = Tensor::new(&[[next]], &device)?;
            next = argmax(llama.next_logits(&input, None, &mut cache)?)?;
        }
        best_decode = best_decode.min(start.elapsed().as_secs_f64());
    }
    let per_token = best_decode / new_tokens.max(1) as f64;
    Ok(GenerateRow {
        kind: "generate",
        model: g.path.display().to_string(),
        prompt_tokens,
        new_tokens,
        prefill_ms: best_prefill * 1e3,
        prefill_tok_s: prompt_tokens as f64 / best_prefill,
        decode_ms_per_token: per_token * 1e3,
        decode_tok_s: 1.0 / per_token,
        quantized_base: g.decoder().is_quantized(),
        threads: crate::ops::cpu_threads(),
    })
}
