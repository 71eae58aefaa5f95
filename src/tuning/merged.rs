//! Merged export: a complete HF model folder with the adapters folded into the weights, which
//! any runtime loads as a plain `…ForSequenceClassification` (DESIGN §5).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::io::TaskInfo;
use crate::io::output::{OutputLock, copy_synced, write_safetensors, write_synced_json};
use crate::io::peft_lora::{TASK_FILE, TaskFile};
use crate::models::Model;

/// Files copied from the base model folder when present (tokenizer and its configs).
const COPIED: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
];

/// Merges every adapter called `adapter_name` into its layer's weight (`W ← W + ΔW`).
/// Returns how many layers were merged.
///
/// # Errors
/// [`Error::NonFiniteMerge`] naming the adapter whose merge would hold NaN/Inf (that layer is
/// left as it was); [`Error::NotMergeable`] for a non-linear adapter or virtual tokens.
pub fn merge_adapters(model: &mut dyn Model, adapter_name: &str) -> Result<usize> {
    // Virtual tokens are inputs, not weights: a merged folder would silently drop them.
    if let Some((placement, _)) = model.adapter_tokens(adapter_name) {
        return Err(Error::NotMergeable {
            method: placement.method(),
            reason: "its tokens are inputs to the model, not a change of its weights; keep \
                     the adapter folder",
        });
    }
    let mut merged = 0;
    for (_, layer) in model.linears_mut() {
        if layer.adapters().any(|(n, _)| n == adapter_name) && !layer.is_merged() {
            layer.merge()?;
            merged += 1;
        }
    }
    Ok(merged)
}

/// The base model's config.json turned into the merged model's: HF's class name for this
/// model in `architectures`, the task's labels as `id2label` / `label2id`, and the
/// `problem_type` HF's sequence-classification loss reads.
///
/// # Errors
/// [`Error::ModelConfig`] if the base config is not a JSON object.
pub fn merged_config(base: &Value, model: &dyn Model, task: Option<&TaskInfo>) -> Result<Value> {
    let mut cfg = base.clone();
    let obj = cfg.as_object_mut().ok_or_else(|| Error::ModelConfig {
        path: "config.json".into(),
        reason: "is not a JSON object".into(),
    })?;
    obj.insert("architectures".into(), json!([model.architecture()]));
    if let Some(task) = task {
        let names: Vec<String> = if task.label_names.is_empty() {
            (0..task.num_labels).map(|i| format!("LABEL_{i}")).collect()
        } else {
            task.label_names.clone()
        };
        let id2label: BTreeMap<String, &String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n))
            .collect();
        let label2id: BTreeMap<&String, usize> =
            names.iter().enumerate().map(|(i, n)| (n, i)).collect();
        obj.insert("id2label".into(), json!(id2label));
        obj.insert("label2id".into(), json!(label2id));
        obj.insert("num_labels".into(), json!(task.num_labels));
        let problem = if task.label_names.is_empty() {
            "regression"
        } else {
            "single_label_classification"
        };
        obj.insert("problem_type".into(), json!(problem));
    }
    Ok(cfg)
}

/// Writes `model` (adapters already merged, see [`merge_adapters`]) as a complete HF folder
/// at `out`: `model.safetensors` with every weight under HF's names, config.json from
/// [`merged_config`], and the base folder's tokenizer files. Nothing is left at `out` if any
/// step fails.
///
/// # Errors
/// [`Error::MergeState`] if some layer still carries an unmerged adapter (its update would be
/// lost); unreadable base files; [`Error::Io`] writing.
pub fn write_merged(
    model: &dyn Model,
    base_dir: &Path,
    task: Option<&TaskInfo>,
    out: &Path,
) -> Result<()> {
    let cfg_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let base: Value = serde_json::from_str(&text).map_err(|e| Error::ModelConfig {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    let config = merged_config(&base, model, task)?;
    if let Some(t) = task
        && t.pooling != crate::io::Pooling::Cls
    {
        tracing::warn!(
            "the adapter was trained with {} pooling; HF's {} pools the first token \
             instead, so other runtimes will not reproduce its outputs (ttlora will: it reads \
             the pooling from {TASK_FILE})",
            t.pooling,
            model.architecture()
        );
    }
    write_merged_folder(model, &config, Some(base_dir), &[], task, out)
}

/// Writes `model` (adapters merged) at `out` as an HF folder: `model.safetensors` under HF's
/// names, `config` as config.json, the tokenizer files of `copy_from` (a base folder) and
/// the `extra` files given by name, and for a classifier the task side file. Nothing is left
/// at `out` if any step fails.
///
/// # Errors
/// [`Error::MergeState`] if some layer still carries an unmerged adapter; [`Error::Io`]
/// reading or writing.
pub fn write_merged_folder(
    model: &dyn Model,
    config: &Value,
    copy_from: Option<&Path>,
    extra: &[(&str, Vec<u8>)],
    task: Option<&TaskInfo>,
    out: &Path,
) -> Result<()> {
    if let Some((path, _)) = model
        .linears()
        .into_iter()
        .find(|(_, l)| l.adapters().next().is_some() && !l.is_merged())
    {
        return Err(Error::MergeState {
            op: "export merged",
            reason: format!("{path} carries an unmerged adapter; merge it first"),
        });
    }
    let tensors: BTreeMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<Result<_>>()?;
    OutputLock::acquire(out)?.replace_folder(|dir| {
        write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        for name in COPIED {
            let Some(from) = copy_from.map(|d| d.join(name)) else {
                continue;
            };
            if from.is_file() {
                copy_synced(&from, &dir.join(name))?;
            }
        }
        for (name, bytes) in extra {
            crate::io::output::write_synced(&dir.join(name), bytes)?;
        }
        if let Some(t) = task {
            let side = TaskFile {
                base_model_config_sha256: String::new(),
                task: Some(t.clone()),
            };
            side.write(dir)?;
        }
        write_synced_json(&dir.join("config.json"), config)
    })
}

#[cfg(test)]
mod tests {

    use candle_core::{DType, Device};

    use super::*;
    use crate::io::Pooling;
    use crate::io::output::{Fault, inject, seen};
    use crate::models::test_util::{temp_dir, write_model};
    use crate::models::{BertConfig, BertForSequenceClassification};

    /// Issue 17: a merged export stopped at any of its file operations, by ENOSPC or as by a
    /// kill, into an empty or an occupied `--out`, leaves the previous model folder byte for
    /// byte or the new one complete.
    #[test]
    fn an_interrupted_merged_export_leaves_the_old_folder_or_the_new_one() {
        let tmp = temp_dir("merged", "faults");
        let base = tmp.join("base");
        std::fs::create_dir(&base).unwrap();
        let model = |seed| {
            BertForSequenceClassification::random(
                &BertConfig::tiny(),
                2,
                Pooling::Cls,
                DType::F32,
                &Device::Cpu,
                seed,
            )
            .unwrap()
        };
        write_model(&base, &BertConfig::tiny(), model(1).state_dict());
        let task = TaskInfo {
            name: "sst2".into(),
            label_names: vec!["0".into(), "1".into()],
            num_labels: 2,
            pooling: Pooling::Cls,
            max_len: 32,
        };
        let (old_model, new_model) = (model(2), model(3));
        for occupied in [false, true] {
            let out = tmp.join(format!("merged-{occupied}"));
            let reset = || {
                let _ = std::fs::remove_dir_all(&out);
                if occupied {
                    write_merged(&old_model, &base, Some(&task), &out).unwrap();
                }
            };
            reset();
            let old = out.is_dir().then(|| crate::io::fs::files_in(&out));
            inject(None);
            write_merged(&new_model, &base, Some(&task), &out).unwrap();
            let new = crate::io::fs::files_in(&out);
            let operations = seen();
            for at in 0..operations {
                for fault in [Fault::NoSpace, Fault::Kill] {
                    reset();
                    inject(Some((at, fault)));
                    let failed = write_merged(&new_model, &base, Some(&task), &out).is_err();
                    inject(None);
                    assert!(failed, "{fault:?} at operation {at}");
                    drop(crate::io::OutputLock::acquire(&out).unwrap());
                    let got = out.is_dir().then(|| crate::io::fs::files_in(&out));
                    assert!(
                        got == old || got.as_ref() == Some(&new),
                        "{fault:?} at operation {at} left a mix"
                    );
                }
            }
        }
    }
}
