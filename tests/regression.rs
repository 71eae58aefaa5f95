//! One test per fixed defect, named `issue_<n>_<what>`: each failed on the code before the fix.

use std::time::Instant;

use ttlora::models::BertConfig;

use crate::common::{
    assert_clear_error, bundled_data, path_str as s, stderr, tiny_bert_folder, ttlora,
};

/// `ttlora train` on the tiny model in `model` and the bundled SST-2, into `out`, 16 to 32
/// examples of 24 tokens, with `extra` flags.
fn train(model: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let data = bundled_data();
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--task",
        "sst2",
        "--data",
        s(&data),
        "--max-train",
        "32",
        "--epochs",
        "1",
        "--out",
        s(out),
        "--quiet",
    ];
    if !extra.contains(&"--max-len") {
        args.extend_from_slice(&["--max-len", "24"]);
    }
    args.extend_from_slice(extra);
    ttlora(&args)
}

/// `ttlora train` of LoRA with `alpha` into `out` on the tiny BERT in `model`.
fn train_lora(model: &std::path::Path, out: &std::path::Path, alpha: &str) -> std::process::Output {
    let config = format!(r#"{{"r": 4, "lora_alpha": {alpha}}}"#);
    train(
        model,
        out,
        &["--method", "lora", "--adapter-config", &config],
    )
}

/// Names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Before: a second run into an occupied folder wrote its files one by one beside the old
/// ones, so a stop between two renames left new weights under the old config (α = 64 weights
/// read as α = 8). Now the whole folder is replaced in one swap: config, weights, record and
/// log are all the new run's, and nothing else is left beside it.
#[test]
fn issue_17_retraining_into_an_occupied_folder_replaces_it_whole() {
    let model = tiny_bert_folder("reg17-occupied", BertConfig::tiny());
    let parent = model.join("runs");
    let out = parent.join("run");
    let o = train_lora(&model, &out, "8");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train_lora(&model, &out, "64");
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["lora_alpha"], 64);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval_results.json")).unwrap())
            .unwrap();
    assert_eq!(record["method_config"]["lora_alpha"], 64);
    assert_eq!(
        names(&out),
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "eval_results.json",
            "train_log.jsonl",
            "ttlora_task.json"
        ]
    );
    // Only the lock file stays beside the folder: no staging folder, no temporary file.
    assert_eq!(names(&parent), [".run.lock", "run"]);
}

/// Before: two trainings into one folder both exited 0 and one result was lost. Now the
/// second fails at once, before loading anything, naming the holder.
#[test]
fn issue_17_a_second_writer_fails_at_once_naming_the_holder() {
    let model = tiny_bert_folder("reg17-lock", BertConfig::tiny());
    let out = model.join("run");
    let held = ttlora::io::OutputLock::acquire(&out).unwrap();
    let started = Instant::now();
    let o = train_lora(&model, &out, "8");
    assert_clear_error(
        &o,
        &[
            "another ttlora process is writing this folder",
            &format!("pid {}", std::process::id()),
        ],
    );
    assert!(started.elapsed().as_secs_f64() < 5.0);
    drop(held);
    assert!(!out.join("adapter_config.json").exists());
}

/// A save replaces the whole folder, so a folder holding the user's own files is refused
/// before training, and left as it was.
#[test]
fn issue_17_an_output_folder_with_user_files_is_refused_untouched() {
    let model = tiny_bert_folder("reg17-foreign", BertConfig::tiny());
    let out = model.join("project");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.md"), "mine").unwrap();
    let o = train_lora(&model, &out, "8");
    assert_clear_error(&o, &["holds files ttlora did not write (`notes.md`)"]);
    assert_eq!(names(&out), ["notes.md"]);
}

// ---- issue 17: values checked before use --------------------------------------------------------

use crate::adapter_files::{A0, edit_tensors, export_fails, lora_copy, own_copy, weights};
use crate::common::TempDir;

/// Before: NaN in an adapter tensor was exported, evaluated and printed with exit 0.
#[test]
fn issue_17_a_nan_in_an_adapter_tensor_is_refused_naming_it() {
    let tmp = TempDir::new("reg17-nan-adapter");
    let dir = lora_copy(&tmp);
    edit_tensors(&dir, |t| {
        let a = &t[A0];
        let mut v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[5] = f32::NAN;
        let bad = candle_core::Tensor::from_vec(v, a.dims(), a.device()).unwrap();
        t.insert(A0.to_string(), bad);
    });
    export_fails(
        &dir,
        &[
            A0,
            "holds NaN or infinite values (the first at flat index 5)",
        ],
    );
}

/// Before: an infinite base weight gave NaN predictions with exit 0.
#[test]
fn issue_17_an_infinite_base_weight_is_refused_naming_it() {
    let tmp = TempDir::new("reg17-inf-base");
    let base = tmp.join("base");
    std::fs::create_dir(&base).unwrap();
    let fixture = crate::common::peft_fixture("base");
    for e in std::fs::read_dir(&fixture).unwrap().flatten() {
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let file = base.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let name = "bert.encoder.layer.1.output.dense.weight";
    let w = &tensors[name];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = f32::INFINITY;
    let bad = candle_core::Tensor::from_vec(v, w.dims(), w.device()).unwrap();
    tensors.insert(name.to_string(), bad);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let dir = lora_copy(&tmp);
    let out = tmp.join("merged");
    let o = ttlora(&[
        "merge",
        "--adapter",
        s(&dir),
        "--model",
        s(&base),
        "--out",
        s(&out),
        "--offline",
    ]);
    assert_clear_error(&o, &[name, "holds NaN or infinite values"]);
    assert!(!out.exists());
}

/// Before: a FIFO as the weights file blocked forever, `/dev/zero` was read until memory ran
/// out. Now anything but a regular file is refused.
#[test]
fn issue_17_weights_that_are_not_a_regular_file_are_refused() {
    let tmp = TempDir::new("reg17-fifo");
    let dir = lora_copy(&tmp);
    std::fs::remove_file(weights(&dir)).unwrap();
    let fifo = std::ffi::CString::new(weights(&dir).to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    export_fails(&dir, &["adapter_model.safetensors", "not a regular file"]);
    assert!(started.elapsed().as_secs_f64() < 10.0);
    std::fs::remove_file(weights(&dir)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", weights(&dir)).unwrap();
    export_fails(&dir, &["adapter_model.safetensors", "not a regular file"]);
}

/// Before: sizes from a config were allocated unchecked: `bottleneck_size = 2^63` panicked
/// with "capacity overflow", TT ranks of 2^40 aborted the process. Now each is one error
/// naming the field.
#[test]
fn issue_17_huge_sizes_in_an_adapter_config_are_refused_naming_the_field() {
    let tmp = TempDir::new("reg17-huge");
    let own = own_copy(&tmp);
    let cfg_path = own.join("adapter_config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    let module = cfg["modules"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    cfg["modules"][&module]["ranks"] = serde_json::json!([1, 1_099_511_627_776u64, 1]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    export_fails(&own, &["ranks[1]", "1099511627776 is above the limit"]);
    // α beyond f32: finite as f64, infinite in the model.
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["modules"][&module]["alpha"] = serde_json::json!(1e39);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    export_fails(&own, &["alpha", "is not a finite 32-bit float"]);
}

/// Before: `--rank 1000000` aborted with "memory allocation of … failed". Now the adapter's
/// size is checked against the layer before anything is allocated.
#[test]
fn issue_17_a_rank_far_beyond_the_layer_is_refused_before_allocating() {
    let model = tiny_bert_folder("reg17-rank", BertConfig::tiny());
    let o = train(
        &model,
        &model.join("run"),
        &["--method", "lora", "--rank", "1000000"],
    );
    assert_clear_error(
        &o,
        &["lora: lora_A (r x in_features) would have shape [1000000, 32]"],
    );
}

/// Before: `--max-grad-norm NaN` was accepted (and clipping silently off); a NaN for
/// `--min-seconds` panicked. Float flags are now parsed as finite numbers.
#[test]
fn issue_17_non_finite_float_flags_are_refused_by_the_parser() {
    let o = ttlora(&["train", "--max-grad-norm", "NaN", "--offline"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("NaN is not a finite number"),
        "{}",
        stderr(&o)
    );
    let o = ttlora(&["bench", "matmul", "--min-seconds", "inf"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Before: `layer_norm_eps = -1` in config.json gave NaN outputs with exit 0.
#[test]
fn issue_17_a_negative_layer_norm_eps_is_refused_naming_the_field() {
    let model = tiny_bert_folder("reg17-eps", BertConfig::tiny());
    let path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["layer_norm_eps"] = serde_json::json!(-1.0);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let o = train(&model, &model.join("run"), &[]);
    assert_clear_error(
        &o,
        &[
            "config.json",
            "field `layer_norm_eps` must be a finite number > 0",
        ],
    );
}

// ---- issue 17: third-party failures contained ------------------------------------------------------

/// Edits the `tokenizer.json` in `dir` through `edit`.
fn edit_tokenizer(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut t);
    std::fs::write(&path, t.to_string()).unwrap();
}

/// Before: a post-processor whose template names a special token the file does not define
/// panicked inside the tokenizers crate (exit 101). Now it is one error naming the file.
#[test]
fn issue_17_a_tokenizer_that_panics_inside_the_crate_is_one_error() {
    let model = tiny_bert_folder("reg17-tok-panic", BertConfig::tiny());
    edit_tokenizer(&model, |t| {
        let map = t["post_processor"]["special_tokens"]
            .as_object_mut()
            .unwrap();
        map.remove("[SEP]");
    });
    let o = train(&model, &model.join("run"), &[]);
    assert_clear_error(&o, &["tokenizer.json"]);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// Before: a token id past the model's embedding table failed in the forward with candle's
/// "index-select invalid index", naming no file. Now the tokenizer and the model are named.
#[test]
fn issue_17_a_tokenizer_of_another_model_is_named_with_the_model() {
    let model = tiny_bert_folder("reg17-tok-vocab", BertConfig::tiny());
    edit_tokenizer(&model, |t| {
        t["post_processor"]["special_tokens"]["[CLS]"]["ids"] = serde_json::json!([5000]);
    });
    let o = train(&model, &model.join("run"), &[]);
    assert_clear_error(
        &o,
        &[
            "tokenizer.json",
            "gives token id 5000",
            "embedding rows",
            "does not belong",
        ],
    );
}

/// Before: a `--max-len` past the position table failed only once training met a long
/// example. Now it is refused before any text is tokenized.
#[test]
fn issue_17_a_max_len_past_the_position_table_is_refused_up_front() {
    let model = tiny_bert_folder("reg17-maxlen", BertConfig::tiny());
    let o = train(&model, &model.join("run"), &["--max-len", "4096"]);
    assert_clear_error(
        &o,
        &[
            "--max-len 4096 is longer than the 128 positions",
            "config.json",
        ],
    );
}

/// Before: an I/O error printed the OS message twice ("…: No such file or directory (os
/// error 2): No such file or directory (os error 2)").
#[test]
fn issue_17_an_io_error_says_its_os_message_once() {
    let tmp = TempDir::new("reg17-io-once");
    let dir = lora_copy(&tmp);
    std::fs::remove_file(weights(&dir)).unwrap();
    let o = ttlora(&["inspect", s(&dir)]);
    assert_clear_error(&o, &["adapter_model.safetensors"]);
    let line = stderr(&o);
    let os = "No such file or directory";
    assert_eq!(line.matches(os).count(), 1, "{line}");
}
