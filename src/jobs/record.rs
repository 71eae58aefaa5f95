//! The run record, `eval_results.json`: what a fine-tuning job did and scored, one typed
//! struct that `ttlora train` writes and `ttlora summarize` reads back, so the file has one
//! schema. Fields added over time are optional on read, so older run folders still load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::train::{TrainConfig, TrainSummary};

/// File name of the run record inside a run folder.
pub const RECORD_FILE: &str = "eval_results.json";

/// Parameter counts a user compares methods by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamCounts {
    /// Trainable adapter scalars.
    pub adapter: usize,
    /// Trainable head scalars (0 when the head is frozen).
    pub head: usize,
    /// LoRA r=8 on the same modules, for comparison.
    #[serde(default)]
    pub lora_r8: usize,
}

/// What a fine-tuning job did and scored (`eval_results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Task name.
    pub task: String,
    /// Method name.
    pub method: String,
    /// The method config as given (fields not given take the method's defaults).
    #[serde(default)]
    pub method_config: serde_json::Value,
    /// The config the run used: the method's defaults of this version with the given fields
    /// over them (so a later change of defaults cannot blur what was run). Absent in records
    /// written before ttlora kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_config: Option<serde_json::Value>,
    /// Resolved model folder.
    #[serde(default)]
    pub model_dir: PathBuf,
    /// Training outcome (held-out selection).
    #[serde(default)]
    pub summary: TrainSummary,
    /// Metric the task reports first.
    pub primary_metric: String,
    /// Official dev-split metrics of the selected weights (NaN is written `null`).
    #[serde(deserialize_with = "metrics_nan_if_null")]
    pub dev_metrics: BTreeMap<String, f64>,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Adapted module paths.
    #[serde(default)]
    pub adapted_modules: Vec<String>,
    /// Training examples used / held out / dev examples.
    pub examples: (usize, usize, usize),
    /// Wall-clock seconds for the whole job, plus the training seconds a resumed checkpoint
    /// carried over from the interrupted runs.
    pub wall_s: f64,
    /// Peak resident memory of the process, MiB (Linux `VmHWM`; 0 elsewhere). Absent in
    /// records written before ttlora measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Size of the saved weights file (`adapter_model.safetensors`), bytes. Absent in records
    /// written before ttlora measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_file_bytes: Option<u64>,
    /// The adapter folder.
    #[serde(default)]
    pub adapter_dir: PathBuf,
    /// Seed of the run's initialisation, batch order and dropout (absent in the earliest
    /// records).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Seed of the training sample and the held-out split, where it differs from `seed` (a
    /// search's trials share one split); absent when it is `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// Training settings used (absent in the earliest records).
    #[serde(default)]
    pub train_config: Option<TrainConfig>,
    /// Examples per micro-batch.
    #[serde(default)]
    pub batch_size: usize,
    /// Training-set sample size, if sampled.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// How a decoder on a prompted task was trained: `lm-score` (candidate cross-entropy),
    /// `lm-score-gold` (the gold answer's LM loss), `classify` (its `score` head trained) or
    /// `classify-frozen`; absent for other runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
    /// A decoder on a prompted task: prompts were cut to this many tokens from the left
    /// (`--max-len`); absent for other runs and in records written before ttlora kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

impl RunRecord {
    /// Writes `dir`/[`RECORD_FILE`] into a folder being built (see
    /// [`OutputLock::replace_folder`](crate::io::OutputLock::replace_folder)).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::io::output::write_synced_json(&dir.join(RECORD_FILE), self)
    }

    /// Reads a record file.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::DataFile`] naming the file for JSON that is not a run record.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::DataFile {
            path: path.to_path_buf(),
            reason: format!("not an eval_results.json written by ttlora train: {e}"),
        })
    }

    /// The config the run used as recorded: `resolved_config`, else (older records) the
    /// config as given.
    pub fn recorded_config(&self) -> &serde_json::Value {
        self.resolved_config.as_ref().unwrap_or(&self.method_config)
    }
}

/// Metric values that JSON wrote as `null` (serde_json's NaN) read back as NaN.
fn metrics_nan_if_null<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_run_record_reads_back() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runs");
        let mut seen = 0;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == RECORD_FILE) {
                    let r = RunRecord::read(&p).unwrap_or_else(|e| panic!("{e}"));
                    assert!(!r.task.is_empty(), "{}", p.display());
                    seen += 1;
                }
            }
        }
        assert!(seen > 100, "only {seen} records under runs/");
    }

    #[test]
    fn a_record_round_trips_with_nan_metrics() {
        let json = serde_json::json!({
            "task": "stsb", "method": "ttlora", "model_dir": "m",
            "summary": {"steps": 3, "best_step": 3, "best_primary": null,
                        "best_metrics": {}, "stopped_early": false, "elapsed_s": 1.0},
            "primary_metric": "pearson", "dev_metrics": {"pearson": null, "spearman": 0.5},
            "params": {"adapter": 10, "head": 2}, "examples": [1, 2, 3], "wall_s": 2.0,
            "adapter_dir": "out"
        });
        let r: RunRecord = serde_json::from_value(json).unwrap();
        assert!(r.dev_metrics["pearson"].is_nan());
        assert!(r.summary.best_primary.is_nan());
        assert_eq!(r.peak_rss_mib, None);
        let again: RunRecord = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(again.dev_metrics["spearman"], 0.5);
    }
}
