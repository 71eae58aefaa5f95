//! Where a study stands, from its journal alone (no lock taken, so it never blocks a
//! worker): trials started, running, paused, pruned, complete and failed, per-rung counts, the
//! compute used and the best trial on the held-out slice.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::search::journal::{Event, Journal, StudyState, TrialRecord, trial_lock_path};
use crate::search::settings::SearchSettings;

/// A trial's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// A worker is running it.
    Running,
    /// Stopped at a rung below `max_t`, and may still be promoted.
    Paused,
    /// Stopped at a rung below `max_t` in a study with nothing left to run: early stopping
    /// ended it there.
    Pruned,
    /// Reached `max_t`.
    Complete,
    /// Its latest job failed and a retry is due.
    Retrying,
    /// Failed more times than the study retries.
    Failed,
}

/// One trial in the status.
#[derive(Debug, Clone, Serialize)]
pub struct TrialLine {
    /// Its index.
    pub id: usize,
    /// `method key=value …`.
    pub config: String,
    /// Its standing.
    pub status: TrialStatus,
    /// The highest rung reached.
    pub resource: usize,
    /// The held-out score there (NaN before any).
    pub score: f64,
    /// Resource used in all (epochs or steps).
    pub used: usize,
    /// Training seconds in all.
    pub seconds: f64,
    /// The last error, if any.
    pub error: Option<String>,
}

/// The whole study.
#[derive(Debug, Clone, Serialize)]
pub struct StudyStatus {
    /// Trials the study may start.
    pub budget: usize,
    /// Every trial.
    pub trials: Vec<TrialLine>,
    /// Trials per rung reached.
    pub per_rung: BTreeMap<usize, usize>,
    /// Resource used by all trials (what random search would spend is `budget · max_t`).
    pub used: usize,
    /// The best trial on the held-out slice at the highest rung any reached.
    pub best: Option<usize>,
    /// Damaged journal lines, with their numbers.
    pub warnings: Vec<String>,
}

/// The order trials are listed in: highest rung first, then best score there, then oldest.
pub fn best_first(
    (a_resource, a_score, a_id): (usize, f64, usize),
    (b_resource, b_score, b_id): (usize, f64, usize),
) -> std::cmp::Ordering {
    b_resource
        .cmp(&a_resource)
        .then(b_score.total_cmp(&a_score))
        .then(a_id.cmp(&b_id))
}

/// Reads the study in `dir`.
///
/// # Errors
/// Not a study folder; the journal cannot be read.
pub fn status(dir: &Path) -> Result<StudyStatus> {
    let settings = SearchSettings::read(dir)?;
    let replay = Journal::at(dir).read()?;
    let state = StudyState::replay(&replay.events);
    Ok(status_of(dir, &settings, &state, replay.warnings))
}

/// The status of a study already read (its settings and replayed journal).
pub fn status_of(
    dir: &Path,
    settings: &SearchSettings,
    state: &StudyState,
    warnings: Vec<String>,
) -> StudyStatus {
    let max_t = settings.scheduler.max_t;
    let mut per_rung = BTreeMap::new();
    let mut trials = Vec::new();
    for t in &state.trials {
        let scores = t.scores();
        for (r, _) in &scores {
            *per_rung.entry(*r).or_insert(0) += 1;
        }
        let reached = t.reached();
        let running = !t.claim_closed && lock_held(dir, t.id);
        // A claim left open by a dead worker is seen as closed with the failure the next
        // worker records, so the record's own predicates decide.
        let closed;
        let seen = if !t.claim_closed && !running {
            closed = TrialRecord {
                claim_closed: true,
                failures: t.failures + 1,
                ..t.clone()
            };
            &closed
        } else {
            t
        };
        let status = if running {
            TrialStatus::Running
        } else if reached >= max_t {
            TrialStatus::Complete
        } else if seen.failed_for_good(settings.max_retries) {
            TrialStatus::Failed
        } else if seen.retry_due(settings.max_retries) {
            TrialStatus::Retrying
        } else {
            TrialStatus::Paused
        };
        let seconds = t
            .reports
            .iter()
            .map(|e| match e {
                Event::Reported { seconds, .. } => *seconds,
                _ => 0.0,
            })
            .sum();
        trials.push(TrialLine {
            id: t.id,
            config: t.config.label(),
            status,
            resource: reached,
            score: scores
                .iter()
                .find(|(r, _)| *r == reached)
                .map_or(f64::NAN, |(_, s)| *s),
            used: reached,
            seconds,
            error: t.last_error.clone(),
        });
    }
    // Once the scheduler has nothing left to start, promote or wait for, a paused trial
    // stays where it is: pruned.
    let finished = settings
        .scheduler
        .next(&state.views(settings.max_retries), settings.trial_budget())
        == crate::search::scheduler::Next::Done;
    if finished {
        for t in trials
            .iter_mut()
            .filter(|t| t.status == TrialStatus::Paused)
        {
            t.status = TrialStatus::Pruned;
        }
    }
    let top = trials.iter().map(|t| t.resource).max().unwrap_or(0);
    let best = trials
        .iter()
        .filter(|t| t.resource == top && t.score.is_finite())
        .max_by(|a, b| a.score.total_cmp(&b.score).then(b.id.cmp(&a.id)))
        .map(|t| t.id);
    StudyStatus {
        budget: settings.trial_budget(),
        used: trials.iter().map(|t| t.used).sum(),
        trials,
        per_rung,
        best,
        warnings,
    }
}

/// Whether a live worker holds the trial's run lock.
fn lock_held(dir: &Path, trial: usize) -> bool {
    let path = trial_lock_path(dir, trial);
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::journal::tests::{claimed, created, reported};
    use crate::search::sampler::SamplerKind;
    use crate::search::scheduler::{Scheduler, SchedulerKind};

    /// A grid of two points under ASHA with `--trials 3`: once both stopped at rung 1 and
    /// neither is promoted, the study is over (the grid is used up), so they are pruned,
    /// not paused forever waiting for a third trial that cannot be drawn.
    #[test]
    fn a_grid_smaller_than_the_trials_asked_for_ends_when_it_is_used_up() {
        let scheduler = Scheduler {
            kind: SchedulerKind::Asha,
            reduction_factor: 3,
            grace_period: 1,
            max_t: 9,
        };
        let settings = SearchSettings {
            sampler: SamplerKind::Grid,
            ..SearchSettings::for_tests("[lora]\nr = [1, 2]\n", scheduler)
        };
        assert_eq!((settings.trials, settings.trial_budget()), (3, 2));
        let state = StudyState::replay(&[
            created(0),
            claimed(0, 1),
            reported(0, 1, 0.5),
            created(1),
            claimed(1, 1),
            reported(1, 1, 0.6),
        ]);
        let st = status_of(Path::new("/nonexistent-study"), &settings, &state, vec![]);
        assert_eq!(st.budget, 2);
        let statuses: Vec<TrialStatus> = st.trials.iter().map(|t| t.status).collect();
        assert_eq!(statuses, [TrialStatus::Pruned, TrialStatus::Pruned]);
    }

    /// A claim whose worker is gone (no lock held) shows as the failure the next worker will
    /// record: retrying while retries are left, failed after.
    #[test]
    fn a_dead_workers_claim_shows_as_its_coming_failure() {
        let scheduler = Scheduler {
            kind: SchedulerKind::Asha,
            reduction_factor: 3,
            grace_period: 1,
            max_t: 9,
        };
        let state = StudyState::replay(&[created(0), claimed(0, 1)]);
        let dir = Path::new("/nonexistent-study");
        for (max_retries, expected) in [(0, TrialStatus::Failed), (2, TrialStatus::Retrying)] {
            let settings = SearchSettings {
                max_retries,
                ..SearchSettings::for_tests("[lora]\nr = [1, 2]\n", scheduler)
            };
            let st = status_of(dir, &settings, &state, vec![]);
            assert_eq!(st.trials[0].status, expected, "max_retries {max_retries}");
        }
    }
}
