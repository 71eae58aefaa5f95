//! A worker: prepares the study once (model, tokenized data), then takes jobs from the
//! journal until the study is complete — a failed or abandoned job to retry, the promotion
//! ASHA makes, or a new trial the sampler draws — and runs each to its rung.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::error::Result;
use crate::jobs::study::{Study, prepare};
use crate::jobs::trial::{TrialOutput, run_trial};
use crate::search::journal::{
    Event, Journal, Locked, StudyState, TrialRecord, now, try_lock_trial,
};
use crate::search::sampler::{Observation, TPE_STARTUP, sample};
use crate::search::scheduler::Next;
use crate::search::settings::{Resource, SearchSettings};
use crate::search::space::Config;
use crate::train::{Control, EvalReport, Observer, StepReport};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Compute device.
    pub device: Device,
    /// How long to sleep when every possible job is running elsewhere.
    pub poll: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            poll: Duration::from_secs(2),
        }
    }
}

/// What one worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerSummary {
    /// Jobs run to their rung.
    pub reported: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// Seconds spent outside jobs (locking, reading the journal, choosing): the search's
    /// own overhead.
    pub overhead_s: f64,
    /// Seconds preparing the study.
    pub prepare_s: f64,
    /// Seconds running jobs.
    pub jobs_s: f64,
}

/// A trial's folder: its training log and checkpoint.
pub fn trial_dir(dir: &Path, trial: usize) -> PathBuf {
    dir.join("trials").join(format!("{trial:06}"))
}

/// Where a trial that reached `max_t` saves its adapter.
pub fn adapter_dir(dir: &Path, trial: usize) -> PathBuf {
    dir.join("adapters").join(format!("{trial:06}"))
}

/// This worker's name in the journal: host and pid.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// A job a worker has claimed (holding its trial's run lock).
struct Job {
    trial: TrialRecord,
    resource: usize,
    attempt: usize,
    _lock: File,
}

/// Runs jobs of the study in `dir` until it is complete; `on_event` sees
/// each job's outcome as it is recorded.
///
/// # Errors
/// The journal cannot be read or written; the study cannot be prepared. A trial's own error
/// is recorded in the journal (and retried), not returned.
pub fn run_worker(
    dir: &Path,
    settings: &SearchSettings,
    opts: &WorkerOptions,
    on_event: &mut dyn FnMut(&Config, &Event),
) -> Result<WorkerSummary> {
    let journal = Journal::open(dir)?;
    let name = worker_name();
    let mut study: Option<Study> = None;
    let mut summary = WorkerSummary::default();
    let mut warned = 0usize;
    let mut waiting_for_memory = false;
    loop {
        let choosing = Instant::now();
        let mut locked = journal.lock()?;
        let replay = locked.read()?;
        for w in &replay.warnings[warned.min(replay.warnings.len())..] {
            tracing::warn!("{}: {w}", dir.display());
        }
        warned = replay.warnings.len();
        let state = StudyState::replay(&replay.events);
        if let Some(short) = memory_short(dir, &state, &name)? {
            drop(locked);
            if !waiting_for_memory {
                tracing::warn!(
                    "{}: waiting for memory before the next job: {short}",
                    dir.display()
                );
            }
            waiting_for_memory = true;
            std::thread::sleep(opts.poll);
            continue;
        }
        waiting_for_memory = false;
        let job = match claim(dir, settings, &mut locked, &state, &name)? {
            Claim::Job(job) => job,
            Claim::Wait => {
                drop(locked);
                summary.overhead_s += choosing.elapsed().as_secs_f64();
                std::thread::sleep(opts.poll);
                continue;
            }
            Claim::Done => break,
        };
        drop(locked);
        summary.overhead_s += choosing.elapsed().as_secs_f64();

        if study.is_none() {
            let t = Instant::now();
            study = Some(prepare(settings.study_spec(opts.device.clone())?)?);
            summary.prepare_s += t.elapsed().as_secs_f64();
        }
        let Some(study) = study.as_ref() else {
            unreachable!("prepared above")
        };
        tracing::info!(
            trial = job.trial.id,
            resource = job.resource,
            attempt = job.attempt,
            "{}",
            job.trial.config.label()
        );
        let running = Instant::now();
        let result = run_job(dir, study, settings, &job);
        summary.jobs_s += running.elapsed().as_secs_f64();
        // Each job's recorded peak is its own, not an earlier job's (a larger rank, a longer
        // batch); the first job's includes preparing the study, what a worker needs at least.
        crate::io::reset_peak_rss();
        let event = match result {
            Ok(e) => {
                summary.reported += 1;
                e
            }
            Err(e) => {
                summary.failed += 1;
                tracing::warn!(trial = job.trial.id, "job failed: {e}");
                Event::Failed {
                    trial: job.trial.id,
                    resource: job.resource,
                    attempt: job.attempt,
                    error: e.to_string(),
                    permanent: !e.is_transient(),
                    time: now(),
                }
            }
        };
        let recording = Instant::now();
        journal.lock()?.append(std::slice::from_ref(&event))?;
        summary.overhead_s += recording.elapsed().as_secs_f64();
        on_event(&job.trial.config, &event);
        drop(job);
    }
    if summary.reported + summary.failed > 0 {
        journal.lock()?.append(&[Event::WorkerDone {
            worker: name,
            jobs: summary.reported + summary.failed,
            overhead_s: summary.overhead_s,
            prepare_s: summary.prepare_s,
            jobs_s: summary.jobs_s,
            time: now(),
        }])?;
    }
    Ok(summary)
}

/// The most memory a job of this study has needed: the largest peak RSS a report recorded
/// (a worker's peak, model and data included), MiB; `None` before any report.
pub fn recorded_peak_mib(state: &StudyState) -> Option<f64> {
    state
        .trials
        .iter()
        .flat_map(|t| &t.reports)
        .filter_map(|e| match e {
            Event::Reported { peak_rss_mib, .. } if *peak_rss_mib > 0.0 => Some(*peak_rss_mib),
            _ => None,
        })
        .reduce(f64::max)
}

/// How many of `n` workers fit in `available` MiB when each needs `peak` MiB at its peak
/// (with a tenth to spare); at least one, which the per-job guard then protects.
pub fn workers_that_fit(n: usize, available: f64, peak: f64) -> usize {
    if peak <= 0.0 {
        return n;
    }
    let fit = (available / (peak * 1.1)).floor();
    if fit >= n as f64 {
        n
    } else {
        (fit as usize).max(1)
    }
}

/// How many of `n` local workers to start on the study in `dir`: as many as the memory
/// available holds at the study's recorded peak (all before any job reported), and why fewer.
///
/// # Errors
/// The journal cannot be read.
pub fn local_workers_that_fit(dir: &Path, n: usize) -> Result<(usize, Option<String>)> {
    let state = StudyState::replay(&Journal::at(dir).read()?.events);
    let (Some(peak), Some(available)) =
        (recorded_peak_mib(&state), crate::io::available_memory_mib())
    else {
        return Ok((n, None));
    };
    let fit = workers_that_fit(n, available, peak);
    let why = (fit < n).then(|| {
        format!(
            "{fit} of {n} workers started: each has needed up to {peak:.0} MiB in this study \
             and {available:.0} MiB are available"
        )
    });
    Ok((fit, why))
}

/// Why this worker should not start a job now, if so: it would still grow by `need` MiB
/// (the study's recorded peak less what it holds already, a tenth to spare) and less is
/// available, while another worker runs a job that will give memory back. With none running
/// it goes on (waiting could never end).
fn memory_short_by(available: f64, need: f64, others_running: usize) -> Option<String> {
    (others_running > 0 && available < need).then(|| {
        format!(
            "{available:.0} MiB available, a job needs about {need:.0} MiB more; \
             {others_running} running elsewhere on this host"
        )
    })
}

/// [`memory_short_by`] on this machine's readings for `worker` (`host:pid`), counting jobs on its
/// host; no guard where the OS gives no readings.
fn memory_short(dir: &Path, state: &StudyState, worker: &str) -> Result<Option<String>> {
    let (Some(peak), Some(available)) =
        (recorded_peak_mib(state), crate::io::available_memory_mib())
    else {
        return Ok(None);
    };
    let need = (peak - crate::io::rss_mib()).max(0.0) * 1.1;
    if available >= need {
        return Ok(None);
    }
    // Jobs on this host only (a claim names its worker `host:pid`): one on another node of a
    // cluster gives no memory back here.
    let host = worker.rsplit_once(':').map_or(worker, |(h, _)| h);
    let mut running = 0;
    for t in state.trials.iter().filter(|t| !t.claim_closed) {
        let here = t
            .claim
            .as_ref()
            .is_some_and(|(_, w, _)| w.rsplit_once(':').is_some_and(|(h, _)| h == host));
        // A held run lock: a live worker's job.
        running += usize::from(here && try_lock_trial(dir, t.id)?.is_none());
    }
    Ok(memory_short_by(available, need, running))
}

enum Claim {
    Job(Job),
    Wait,
    Done,
}

/// Chooses and claims the next job, holding the journal lock: first, claims of dead workers
/// are closed as failed; then a due retry, else the scheduler's choice.
fn claim(
    dir: &Path,
    settings: &SearchSettings,
    locked: &mut Locked<'_>,
    state: &StudyState,
    worker: &str,
) -> Result<Claim> {
    // A claim still open whose run lock is free: its worker died.
    let mut dead = Vec::new();
    for t in state.trials.iter().filter(|t| !t.claim_closed) {
        if let Some(lock) = try_lock_trial(dir, t.id)? {
            drop(lock);
            let (resource, holder, attempt) = t.claim.clone().unwrap_or_default();
            dead.push(Event::Failed {
                trial: t.id,
                resource,
                attempt,
                error: format!("worker {holder} stopped before the job ended (killed or crashed)"),
                permanent: false,
                time: now(),
            });
        }
    }
    let replayed;
    let state = if dead.is_empty() {
        state
    } else {
        locked.append(&dead)?;
        replayed = StudyState::replay(&locked.read()?.events);
        &replayed
    };

    // A trial whose creation was recorded but not its claim (a write torn between the two
    // lines): start it now.
    if let Some(t) = state.trials.iter().find(|t| t.never_claimed()) {
        let resource = settings.scheduler.bracket_rungs(t.bracket)[0];
        return start_job(dir, locked, t.clone(), resource, 1, worker, None);
    }
    let max_retries = settings.max_retries;
    if let Some(t) = state.trials.iter().find(|t| t.retry_due(max_retries)) {
        let resource = t.target();
        return start_job(
            dir,
            locked,
            t.clone(),
            resource,
            t.failures + 1,
            worker,
            None,
        );
    }
    let views = state.views(max_retries);
    let mut budget = settings.trial_budget();
    loop {
        match settings.scheduler.next(&views, budget) {
            Next::Promote { trial, resource } => {
                let t = state.trials[trial].clone();
                return start_job(dir, locked, t, resource, 1, worker, None);
            }
            Next::Start { bracket, resource } => {
                let id = state.trials.len();
                let history = history(state);
                let Some(config) = sample_new(settings, id, &history, &state.trials) else {
                    // A grid used up: the study holds every point.
                    budget = id;
                    continue;
                };
                let record = TrialRecord::new(id, bracket, config.clone());
                let created = Event::Created {
                    trial: id,
                    bracket,
                    config,
                };
                return start_job(dir, locked, record, resource, 1, worker, Some(created));
            }
            Next::Wait => return Ok(Claim::Wait),
            Next::Done => return Ok(Claim::Done),
        }
    }
}

/// Draws trial `id`'s config, drawing again (up to 100 times, each draw seeded by the trial
/// and the attempt) while it repeats an earlier trial's: a small discrete space such as
/// LoRA's five ranks would otherwise spend trials on configs already run.
fn sample_new(
    settings: &SearchSettings,
    id: usize,
    history: &[Observation],
    trials: &[TrialRecord],
) -> Option<Config> {
    let mut config = None;
    for attempt in 0..100usize {
        let index = id + attempt * 1_000_003;
        config = sample(
            settings.sampler,
            &settings.space,
            settings.seed,
            index,
            history,
        );
        match &config {
            Some(c) if trials.iter().any(|t| t.config == *c) => continue,
            _ => return config,
        }
    }
    config
}

/// Takes the trial's run lock, then records the claim (and the trial's creation): the lock
/// is held before the claim is visible, so no other worker takes the claim for a dead one.
fn start_job(
    dir: &Path,
    locked: &mut Locked<'_>,
    trial: TrialRecord,
    resource: usize,
    attempt: usize,
    worker: &str,
    created: Option<Event>,
) -> Result<Claim> {
    let Some(lock) = try_lock_trial(dir, trial.id)? else {
        // Held by a live worker that has not recorded its claim yet: choose again later.
        return Ok(Claim::Wait);
    };
    let mut events: Vec<Event> = created.into_iter().collect();
    events.push(Event::Claimed {
        trial: trial.id,
        resource,
        worker: worker.to_string(),
        attempt,
        time: now(),
    });
    locked.append(&events)?;
    Ok(Claim::Job(Job {
        trial,
        resource,
        attempt,
        _lock: lock,
    }))
}

/// What TPE learns from: every trial's score at the highest rung that at least
/// `TPE_STARTUP` trials reached (BOHB's rule: the largest budget with enough observations).
fn history(state: &StudyState) -> Vec<Observation> {
    let mut per_rung: BTreeMap<usize, Vec<Observation>> = BTreeMap::new();
    for t in &state.trials {
        for (resource, score) in t.scores() {
            per_rung.entry(resource).or_default().push(Observation {
                config: t.config.clone(),
                score,
            });
        }
    }
    per_rung
        .into_iter()
        .rev()
        .find(|(_, obs)| obs.len() >= TPE_STARTUP)
        .map(|(_, obs)| obs)
        .unwrap_or_default()
}

/// Stops a trial at its rung and keeps the held-out curve of the job.
struct RungStop {
    resource: Resource,
    rung: usize,
    max_t: usize,
    steps_per_unit: usize,
    curve: Vec<(usize, f64)>,
}

impl Observer for RungStop {
    fn on_start(&mut self, total_steps: usize, start_step: usize) -> Control {
        self.steps_per_unit = match self.resource {
            Resource::Epochs => (total_steps / self.max_t.max(1)).max(1),
            Resource::Steps => 1,
        };
        // A job retried after its worker died once the rung's checkpoint was saved: the
        // rung is reached already, and training on would overshoot it.
        if start_step >= self.rung * self.steps_per_unit {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_step(&mut self, step: &StepReport) -> Control {
        // Stopping here makes the trainer evaluate and checkpoint at this very step, whatever
        // its evaluation interval: a rung is scored where it lies.
        if step.step >= self.rung * self.steps_per_unit {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_eval(&mut self, eval: &EvalReport) -> Control {
        self.curve.push((eval.step, eval.primary));
        Control::Continue
    }
}

/// Runs a job: the trial continues from its checkpoint up to the rung; at `max_t` its
/// adapter is saved in [`adapter_dir`].
fn run_job(dir: &Path, study: &Study, settings: &SearchSettings, job: &Job) -> Result<Event> {
    let spec = settings.trial_spec(&job.trial.config)?;
    // A trial's first job starts fresh: a checkpoint in its folder can only be another
    // config's (a journal that lost trials, reused ids). Later jobs continue from theirs.
    let first_job = job.trial.reports.is_empty() && job.attempt == 1;
    let out = TrialOutput {
        dir: trial_dir(dir, job.trial.id),
        resume: !first_job,
    };
    let mut rung = RungStop {
        resource: settings.resource,
        rung: job.resource,
        max_t: settings.scheduler.max_t,
        steps_per_unit: 1,
        curve: Vec::new(),
    };
    let started = Instant::now();
    // Also puts back a checkpoint a killed worker left mid-swap.
    let _trial_folder = crate::io::OutputLock::acquire(&out.dir)?;
    let trial = run_trial(study, &spec, &out, &mut [&mut rung])?;
    let adapter = if job.resource >= settings.scheduler.max_t {
        let path = adapter_dir(dir, job.trial.id);
        let lock = crate::io::OutputLock::acquire(&path)?;
        let wall_s = started.elapsed().as_secs_f64() + trial.summary.carried_s;
        crate::jobs::finetune::save_trial(study, &spec, &trial, lock, wall_s)?;
        Some(path)
    } else {
        None
    };
    Ok(Event::Reported {
        trial: job.trial.id,
        resource: job.resource,
        score: trial.summary.best_primary,
        curve: rung.curve,
        dev: trial.dev_metrics,
        params: trial.params.adapter,
        steps: trial.summary.steps,
        seconds: trial.summary.elapsed_s,
        wall_s: Some(started.elapsed().as_secs_f64()),
        peak_rss_mib: crate::io::peak_rss_mib(),
        adapter,
        time: now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::scheduler::{Scheduler, SchedulerKind};

    /// The memory guard: waits only while another job runs and memory is short; the
    /// launcher starts only the workers that fit.
    #[test]
    fn the_memory_guard_waits_only_when_another_job_can_free_memory() {
        assert!(memory_short_by(500.0, 1000.0, 1).is_some());
        assert!(
            memory_short_by(500.0, 1000.0, 0).is_none(),
            "nobody to wait for"
        );
        assert!(memory_short_by(1500.0, 1000.0, 3).is_none());
        assert_eq!(workers_that_fit(4, 10_000.0, 2000.0), 4);
        assert_eq!(
            workers_that_fit(8, 10_000.0, 2000.0),
            4,
            "4 × 2,200 MiB fit"
        );
        assert_eq!(workers_that_fit(4, 1000.0, 2000.0), 1);
        assert_eq!(workers_that_fit(4, 1000.0, 0.0), 4, "nothing recorded yet");
    }

    #[test]
    fn a_new_trial_does_not_repeat_an_earlier_config() {
        let settings = SearchSettings::for_tests(
            "[lora]\nr = [1, 2, 3]\n",
            Scheduler {
                kind: SchedulerKind::Asha,
                reduction_factor: 3,
                grace_period: 1,
                max_t: 3,
            },
        );
        let mut trials: Vec<TrialRecord> = Vec::new();
        for id in 0..3 {
            let config = sample_new(&settings, id, &[], &trials).unwrap();
            assert!(
                trials.iter().all(|t| t.config != config),
                "{config:?} repeats"
            );
            trials.push(TrialRecord::new(id, 0, config));
        }
        // The space is used up: a repeat is all there is.
        assert!(sample_new(&settings, 3, &[], &trials).is_some());
    }
}
