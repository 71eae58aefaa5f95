//! One test per fixed defect, named `issue_<n>_<what>`: each failed on the code before the fix.

use std::time::Instant;

use ttlora::models::BertConfig;

use crate::common::{
    assert_clear_error, bundled_data, path_str as s, stderr, tiny_bert_folder, ttlora,
};

/// `ttlora train` of LoRA with `alpha` into `out` on the tiny BERT in `model`.
fn train_lora(model: &std::path::Path, out: &std::path::Path, alpha: &str) -> std::process::Output {
    let config = format!(r#"{{"r": 4, "lora_alpha": {alpha}}}"#);
    ttlora(&[
        "train",
        "--model",
        s(model),
        "--task",
        "sst2",
        "--data",
        s(&bundled_data()),
        "--method",
        "lora",
        "--adapter-config",
        &config,
        "--max-train",
        "32",
        "--epochs",
        "1",
        "--max-len",
        "24",
        "--out",
        s(out),
        "--quiet",
    ])
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
