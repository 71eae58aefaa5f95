//! One fine-tuning job end to end, as `ttlora train` runs it: prepare the study (model, task,
//! tokens, split), run one trial on it, save the adapter folder and the run record.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::Result;
use crate::io::{self, TaskInfo};
use crate::jobs::pipeline::EncodedSplit;
use crate::jobs::record::RunRecord;
use crate::jobs::study::{Study, StudySpec, prepare};
use crate::jobs::trial::{ADAPTER_NAME, LOG_FILE, Trial, TrialOutput, TrialSpec, run_trial};
use crate::models::Model;
use crate::train::Observer;
use crate::tuning::adapted::{AdapterMeta, collect, to_peft_lora};

/// Everything a fine-tuning job needs: the study (fixed) and the one trial run on it.
#[derive(Debug, Clone)]
pub struct FineTuneSpec {
    /// The model, task, tokenization and split.
    pub study: StudySpec,
    /// The method and its training.
    pub trial: TrialSpec,
    /// Output folder (adapter, run record, log, checkpoint).
    pub out: PathBuf,
    /// Whether to pick up `out/checkpoint` if present.
    pub resume: bool,
}

/// A finished job: the record plus the trained model and the tokenized dev split, for callers
/// that go on using them (tests compare them with the saved adapter).
pub struct Trained {
    /// What was measured and saved.
    pub report: RunRecord,
    /// The model with the selected adapter weights attached.
    pub model: Box<dyn Model>,
    /// The official dev split, tokenized.
    pub dev: EncodedSplit,
    /// The tokenizer's padding id.
    pub pad_id: u32,
}

/// The adapter folder a run saves, in the format its method is saved in.
enum SavedAdapter {
    /// PEFT's LoRA format.
    Peft(io::peft_lora::PeftLora),
    /// ttlora's own.
    Own(Box<io::AdapterFolder>),
}

impl SavedAdapter {
    fn write_files(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Peft(lora) => lora.write_files(dir),
            Self::Own(folder) => folder.write_files(dir),
        }
    }
}

/// Runs the job. Observers see every step and evaluation.
///
/// # Errors
/// Any step's error, with its context.
pub fn run(spec: &FineTuneSpec, observers: &mut [&mut dyn Observer]) -> Result<Trained> {
    let started = Instant::now();
    // Taken before anything slow, so a second run into the same folder fails at once.
    let lock = io::OutputLock::acquire(&spec.out)?;
    let study = prepare(spec.study.clone())?;
    let out = TrialOutput {
        dir: spec.out.clone(),
        resume: spec.resume,
    };
    let trial = run_trial(&study, &spec.trial, &out, observers)?;
    // A resumed run counts the training time its checkpoint carried over.
    let wall_s = started.elapsed().as_secs_f64() + trial.summary.carried_s;
    let record = save_trial(&study, &spec.trial, &trial, lock, wall_s)?;
    let pad_id = study.encoder.pad_id();
    Ok(Trained {
        report: record,
        model: trial.model,
        dev: study.dev,
        pad_id,
    })
}

/// Saves `trial`, run on `study`, as a run folder in the folder `lock` holds: the adapter,
/// its record and the training log, in one folder swap. `wall_s` is the run's wall time.
///
/// # Errors
/// Collecting the adapter; writing or swapping the folder.
pub fn save_trial(
    study: &Study,
    spec: &TrialSpec,
    trial: &Trial,
    lock: io::OutputLock,
    wall_s: f64,
) -> Result<RunRecord> {
    let method = spec.method.method();
    let meta = AdapterMeta {
        method: method.name().into(),
        base_model: study.spec.model.clone(),
        base_model_config_sha256: study.model.config_sha256().to_string(),
        config: spec.method.given().clone(),
        target_modules: serde_json::to_value(&trial.placing.targets)?,
        exclude_modules: spec
            .exclude
            .as_ref()
            .map(serde_json::to_value)
            .transpose()?,
        overrides: spec.overrides.clone(),
        save_head: spec.train_head,
        task: Some(TaskInfo {
            name: study.task.name.clone(),
            label_names: study.task.label_names.clone(),
            num_labels: study.num_labels,
            pooling: study.pooling,
            max_len: study.spec.max_len,
        }),
    };
    let record = RunRecord {
        task: study.task.name.clone(),
        method: method.name().into(),
        method_config: spec.method.given().clone(),
        resolved_config: Some(spec.method.resolved()),
        model_dir: study.model.dir().to_path_buf(),
        summary: trial.summary.clone(),
        primary_metric: study.task.metrics[0].name().into(),
        dev_metrics: trial.dev_metrics.clone(),
        params: trial.params.clone(),
        adapted_modules: trial.adapted.clone(),
        examples: (study.fit.len(), study.held.len(), study.dev.len()),
        wall_s,
        peak_rss_mib: Some(io::peak_rss_mib()),
        adapter_file_bytes: None,
        adapter_dir: lock.dir().to_path_buf(),
        seed: Some(spec.train.seed),
        data_seed: (study.spec.seed != spec.train.seed).then_some(study.spec.seed),
        train_config: Some(spec.train.clone()),
        batch_size: spec.batch_size,
        max_train: study.spec.max_train,
        objective: None,
        max_len: None,
    };
    save_run(lock, trial.model.as_ref(), &spec.method, &meta, record)
}

/// Saves a finished run into the folder `lock` holds: the adapter (LoRA in PEFT's own
/// format, so PEFT loads the run folder as it is; other methods, which PEFT does not know,
/// in ttlora's, docs/FORMAT.md), the run record with the adapter file's size, and the
/// training log, all in one swap: a run stopped at any point leaves the previous folder or
/// this one, never this adapter beside another's config or record. The checkpoint is not
/// carried over. Returns the record as written.
///
/// # Errors
/// Collecting the adapter; writing or swapping the folder.
pub(crate) fn save_run(
    lock: io::OutputLock,
    model: &dyn Model,
    method: &crate::adapters::MethodSpec,
    meta: &AdapterMeta,
    mut record: RunRecord,
) -> Result<RunRecord> {
    let adapter = if method.method().peft_type() == "LORA" {
        SavedAdapter::Peft(to_peft_lora(model, ADAPTER_NAME, meta)?)
    } else {
        SavedAdapter::Own(Box::new(collect(model, ADAPTER_NAME, meta)?))
    };
    let out = record.adapter_dir.clone();
    lock.replace_folder(|dir| {
        adapter.write_files(dir)?;
        let weights = dir.join(io::adapter_folder::WEIGHTS_FILE);
        record.adapter_file_bytes = Some(std::fs::metadata(&weights).map_or(0, |m| m.len()));
        record.write(dir)?;
        let log = out.join(LOG_FILE);
        if log.is_file() {
            io::output::copy_synced(&log, &dir.join(LOG_FILE))?;
        }
        Ok(())
    })?;
    Ok(record)
}
