//! The token ids and last-token logits ttlora computes for a prompt on a decoder, with an
//! adapter or without, as JSON on stdout: what `scripts/check_decoder_consumers.py` compares
//! with transformers + PEFT and llama.cpp on the same files.
//!
//! `cargo run --release --example decoder_logits -- MODEL [ADAPTER_DIR|-] PROMPT [TEXT…]`:
//! MODEL a GGUF file, folder or packaged name; `-` for no adapter; each further TEXT is only
//! tokenized (its ids are printed too, for tokenizer parity).

use candle_core::{Device, Tensor};
use ttlora::jobs::generate::{Generator, decoder_location};
use ttlora::models::{Model, ModelInput};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, adapter, prompt, texts @ ..] = args.as_slice() else {
        eprintln!("usage: decoder_logits MODEL ADAPTER_DIR|- PROMPT [TEXT…]");
        std::process::exit(2);
    };
    let device = Device::Cpu;
    let g = if adapter == "-" {
        Generator::load(&decoder_location(model, true).expect("model"), &device)
    } else {
        let base = ttlora::jobs::generate::BaseDtype::F32;
        Generator::with_adapter(adapter.as_ref(), Some(model), &device, true, base)
    }
    .expect("the decoder loads");
    let encode = |text: &str| g.lm_encoder().prompt_ids(text, true).expect("tokenizes");
    let ids = encode(prompt);
    let input = ModelInput::new(
        Tensor::new(ids.as_slice(), &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        Tensor::ones((1, ids.len()), candle_core::DType::U32, &device).unwrap(),
    );
    let logits: Vec<f32> = ttlora::ops::no_grad(|| g.model.forward(&input, false))
        .expect("forward")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let texts: Vec<Vec<u32>> = texts.iter().map(|t| encode(t)).collect();
    let out = serde_json::json!({"ids": ids, "logits": logits, "texts": texts});
    println!("{out}");
}
