//! Confirming the front: each Pareto-front config trained again from scratch with further
//! seeds and scored on the official dev split, reported as mean ± std. The search selected
//! on the held-out slice; this is where a config's dev score is measured, seed noise included.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::error::Result;
use crate::jobs::record::{RECORD_FILE, RunRecord};
use crate::jobs::study::{Study, prepare};
use crate::jobs::trial::{TrialOutput, run_trial};
use crate::search::settings::SearchSettings;
use crate::search::space::Config;

/// One front config's confirmation.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmed {
    /// The trial whose config it is.
    pub trial: usize,
    /// `method key=value …`.
    pub config: String,
    /// Trainable adapter parameters.
    pub params: usize,
    /// On the study's Pareto front (else confirmed because `--confirm-trial` named it).
    pub on_front: bool,
    /// The training seeds run.
    pub seeds: Vec<u64>,
    /// The dev primary metric per seed.
    pub dev: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation (0 for one seed).
    pub std: f64,
}

/// A front config to confirm: its trial, config and parameter count.
#[derive(Debug, Clone, Copy)]
pub struct FrontConfig<'a> {
    /// The trial.
    pub trial: usize,
    /// Its config.
    pub config: &'a Config,
    /// Its trainable adapter parameters.
    pub params: usize,
    /// On the study's Pareto front (else asked for by `--confirm-trial`).
    pub on_front: bool,
}

/// Where a confirmation run is saved.
pub fn confirm_dir(dir: &Path, trial: usize, seed: u64) -> PathBuf {
    dir.join("confirm").join(format!("{trial:06}-seed{seed}"))
}

/// The training seeds of a confirmation: the `n` after the study's.
pub fn confirm_seeds(settings: &SearchSettings, n: usize) -> Vec<u64> {
    (1..=n as u64)
        .map(|k| settings.seed.wrapping_add(k))
        .collect()
}

/// Runs (or reads, when saved already) `n` seeds of every front config; the data split
/// stays the study's. `on_run` sees each finished run.
///
/// # Errors
/// Preparing the study; a run's error; a saved record that cannot be read.
pub fn confirm(
    dir: &Path,
    settings: &SearchSettings,
    front: &[FrontConfig<'_>],
    n: usize,
    device: Device,
    on_run: &mut dyn FnMut(usize, u64, f64),
) -> Result<Vec<Confirmed>> {
    let seeds = confirm_seeds(settings, n);
    let mut study: Option<Study> = None;
    let mut out = Vec::new();
    for t in front {
        let id = t.trial;
        let mut dev = Vec::new();
        for &seed in &seeds {
            let run_dir = confirm_dir(dir, id, seed);
            let record_path = run_dir.join(RECORD_FILE);
            let record = if record_path.is_file() {
                RunRecord::read(&record_path)?
            } else {
                let lock = crate::io::OutputLock::acquire(&run_dir)?;
                if study.is_none() {
                    study = Some(prepare(settings.study_spec(device.clone())?)?);
                }
                let Some(study) = study.as_ref() else {
                    unreachable!("prepared above")
                };
                let mut spec = settings.trial_spec(t.config)?;
                spec.train.seed = seed;
                let started = Instant::now();
                let trial = run_trial(
                    study,
                    &spec,
                    &TrialOutput {
                        dir: run_dir.clone(),
                        resume: true,
                    },
                    &mut [],
                )?;
                let wall_s = started.elapsed().as_secs_f64() + trial.summary.carried_s;
                crate::jobs::finetune::save_trial(study, &spec, &trial, lock, wall_s)?
            };
            let score = record
                .dev_metrics
                .get(&record.primary_metric)
                .copied()
                .unwrap_or(f64::NAN);
            on_run(id, seed, score);
            dev.push(score);
        }
        let (mean, std) = mean_std(&dev);
        out.push(Confirmed {
            trial: id,
            config: t.config.label(),
            params: t.params,
            on_front: t.on_front,
            seeds: seeds.clone(),
            dev,
            mean,
            std,
        });
    }
    Ok(out)
}

/// The mean and the sample standard deviation (n − 1; 0 for one value) of `xs`.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let std = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::mean_std;

    #[test]
    fn mean_and_sample_std_by_hand() {
        // Deviations -0.02, 0, +0.02: the sum of squares 8e-4 over n - 1 = 2 is 4e-4.
        let (mean, std) = mean_std(&[0.80, 0.82, 0.84]);
        assert!(
            (mean - 0.82).abs() < 1e-12 && (std - 0.02).abs() < 1e-12,
            "{mean} {std}"
        );
        assert_eq!(mean_std(&[0.7]), (0.7, 0.0));
    }
}
