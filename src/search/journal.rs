//! A study's record: an append-only journal of JSON lines that any number of worker
//! processes share without a server, on one machine or on a cluster's shared file system.
//!
//! Every change is one appended line, written while holding an exclusive `flock` on
//! `journal.lock` and synced before the lock is let go. The study's state is what replaying
//! the lines gives ([`StudyState`]). A writer killed mid-line leaves a torn last line: readers
//! ignore it and the next writer cuts it off before appending. A damaged line elsewhere is
//! reported with its line number and skipped.
//!
//! A running job holds a second lock, on its trial's `trials/NNNNNN.lock`, for as long as it
//! runs; the OS drops it when the process dies however it dies, so a claim whose lock is free
//! belongs to a dead worker and its job is retried.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::search::scheduler::{NO_BRACKET, TrialView};
use crate::search::space::Config;

/// The journal's file name in a study folder.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The lock writers take.
pub const LOCK_FILE: &str = "journal.lock";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A trial was drawn.
    Created {
        /// Its index (0, 1, … in order of creation).
        trial: usize,
        /// Its bracket (HyperBand; 0 otherwise).
        bracket: usize,
        /// The config.
        config: Config,
    },
    /// A worker took a job: run `trial` on to `resource`.
    Claimed {
        /// The trial.
        trial: usize,
        /// The rung the job runs to.
        resource: usize,
        /// Which worker (host and pid).
        worker: String,
        /// 1 for the first try, 2 for the first retry, …
        attempt: usize,
        /// Seconds since the Unix epoch.
        time: f64,
    },
    /// A job reached its rung.
    Reported {
        /// The trial.
        trial: usize,
        /// The rung reached (epochs or steps done).
        resource: usize,
        /// The best held-out score so far (the selected weights'; null when it diverged).
        #[serde(with = "nan_as_null")]
        score: f64,
        /// The held-out score after each evaluation of this job, by step.
        #[serde(with = "nan_as_null::pairs")]
        curve: Vec<(usize, f64)>,
        /// The official dev metrics of the selected weights (not used to select).
        dev: BTreeMap<String, f64>,
        /// Trainable adapter parameters (the head, the same for every method, not counted;
        /// 0 in journals written before it was recorded).
        #[serde(default)]
        params: usize,
        /// Optimizer steps done in all.
        steps: usize,
        /// Training seconds of this job.
        seconds: f64,
        /// Wall seconds of this job: loading the base model, training, scoring dev, saving
        /// (None in journals written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_s: Option<f64>,
        /// Peak resident memory of the worker during this job, MiB: with the prepared data and
        /// model it holds, and for its first job the preparing itself (the worker's lifetime
        /// peak where the OS cannot reset it, and in journals without `wall_s`).
        peak_rss_mib: f64,
        /// The adapter saved at the top rung.
        adapter: Option<PathBuf>,
        /// Seconds since the Unix epoch.
        time: f64,
    },
    /// A worker finished: what it spent outside jobs, for the overhead measurement.
    WorkerDone {
        /// Which worker.
        worker: String,
        /// Jobs it ran (reported and failed).
        jobs: usize,
        /// Seconds spent choosing and recording jobs (lock, journal read, sampler,
        /// scheduler, append): the search's own overhead.
        overhead_s: f64,
        /// Seconds spent preparing the study (model and tokenized data), once per worker.
        prepare_s: f64,
        /// Seconds spent running jobs.
        jobs_s: f64,
        /// Seconds since the Unix epoch.
        time: f64,
    },
    /// A job failed (a retry follows until the study's limit, unless it is permanent).
    Failed {
        /// The trial.
        trial: usize,
        /// The rung the job was running to.
        resource: usize,
        /// Which try failed.
        attempt: usize,
        /// The error, or why the worker is taken to be dead.
        error: String,
        /// The error comes from the trial's config or input (a shape its model cannot take, a
        /// diverged loss), so a retry would fail the same way: the trial fails for good.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        permanent: bool,
        /// Seconds since the Unix epoch.
        time: f64,
    },
}

/// `f64` NaN written as JSON `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    /// The same for a curve of (step, score) pairs.
    pub mod pairs {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(xs: &[(usize, f64)], s: S) -> Result<S::Ok, S::Error> {
            let shown: Vec<(usize, Option<f64>)> = xs
                .iter()
                .map(|(k, x)| (*k, x.is_finite().then_some(*x)))
                .collect();
            shown.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64)>, D::Error> {
            let read = Vec::<(usize, Option<f64>)>::deserialize(d)?;
            Ok(read
                .into_iter()
                .map(|(k, x)| (k, x.unwrap_or(f64::NAN)))
                .collect())
        }
    }
}

/// Seconds since the Unix epoch, for the journal's timestamps.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The journal lines as read: the events, and a warning per damaged line.
#[derive(Debug, Default)]
pub struct Replay {
    /// The events in order.
    pub events: Vec<Event>,
    /// `DIR/journal.jsonl:LINE: …` for each line skipped.
    pub warnings: Vec<String>,
}

/// A study folder's journal.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    lock_path: PathBuf,
    /// Opened by [`Journal::at`]: a missing file reads as empty (a study not started yet).
    /// A worker's journal exists from [`Journal::open`] on, so its disappearing is an error.
    read_only: bool,
}

/// The journal held exclusively: read it, append to it; dropped, the lock goes.
pub struct Locked<'a> {
    journal: &'a Journal,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// The journal of the study folder `dir` (created if missing).
    ///
    /// # Errors
    /// The folder or files cannot be created.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let journal = Self {
            path: dir.join(JOURNAL_FILE),
            lock_path: dir.join(LOCK_FILE),
            read_only: false,
        };
        for p in [&journal.path, &journal.lock_path] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io_err(p))?;
        }
        Ok(journal)
    }

    /// The journal of the study folder `dir` for reading only: nothing is created, so a
    /// study on a read-only copy can still be shown.
    pub fn at(dir: &Path) -> Self {
        Self {
            path: dir.join(JOURNAL_FILE),
            lock_path: dir.join(LOCK_FILE),
            read_only: true,
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the exclusive lock.
    ///
    /// # Errors
    /// The lock file cannot be opened or locked.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.lock_path)
            .map_err(io_err(&self.lock_path))?;
        file.lock().map_err(io_err(&self.lock_path))?;
        Ok(Locked {
            journal: self,
            _lock: file,
        })
    }

    /// Reads every line without the lock (for `status` and reports: a line being written is
    /// a torn last line, ignored).
    ///
    /// # Errors
    /// The file cannot be read (opened by [`Journal::at`], a missing one is empty).
    pub fn read(&self) -> Result<Replay> {
        let mut text = Vec::new();
        match File::open(&self.path).and_then(|mut f| f.read_to_end(&mut text)) {
            Err(e) if self.read_only && e.kind() == std::io::ErrorKind::NotFound => {}
            r => {
                r.map_err(io_err(&self.path))?;
            }
        }
        Ok(parse(&text, &self.path))
    }
}

impl Locked<'_> {
    /// Reads every line.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(&self) -> Result<Replay> {
        self.journal.read()
    }

    /// Appends events as lines and syncs them to disk; a torn last line left by a killed
    /// writer is cut off first.
    ///
    /// # Errors
    /// The file cannot be written or synced.
    pub fn append(&mut self, events: &[Event]) -> Result<()> {
        let path = &self.journal.path;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1)).map_err(io_err(path))?;
            file.read_exact(&mut last).map_err(io_err(path))?;
            if last[0] != b'\n' {
                let mut text = Vec::new();
                file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
                file.read_to_end(&mut text).map_err(io_err(path))?;
                let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    "{}: cutting off a torn last line ({} bytes) a killed writer left",
                    path.display(),
                    text.len() - keep
                );
                file.set_len(keep as u64).map_err(io_err(path))?;
            }
        }
        let mut lines = Vec::new();
        for e in events {
            serde_json::to_writer(&mut lines, e)?;
            lines.push(b'\n');
        }
        fail_point::before_append(path, &lines)?;
        file.write_all(&lines).map_err(io_err(path))?;
        file.sync_data().map_err(io_err(path))
    }
}

/// The events of a journal's bytes: a last line without its newline is torn (ignored); any
/// other line that is not an event is reported, by `path` and line number, and skipped.
fn parse(text: &[u8], path: &Path) -> Replay {
    let mut replay = Replay::default();
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(line) {
            Ok(e) => replay.events.push(e),
            Err(e) => replay.warnings.push(format!(
                "{}:{}: not a journal event ({e}); skipped",
                path.display(),
                i + 1
            )),
        }
    }
    replay
}

/// The method name a lost trial's config shows (its `created` line is damaged).
pub const LOST_METHOD: &str = "(lost)";

/// A trial as the journal tells it.
#[derive(Debug, Clone)]
pub struct TrialRecord {
    /// Its index.
    pub id: usize,
    /// Its bracket.
    pub bracket: usize,
    /// Its config.
    pub config: Config,
    /// The `Reported` events, in order.
    pub reports: Vec<Event>,
    /// The latest claim: (resource, worker, attempt).
    pub claim: Option<(usize, String, usize)>,
    /// Whether the latest claim has ended (reported or failed).
    pub claim_closed: bool,
    /// Failed tries of the latest claimed resource.
    pub failures: usize,
    /// A failure no retry can mend ([`Event::Failed`]'s `permanent`).
    pub failed_permanently: bool,
    /// The last error.
    pub last_error: Option<String>,
    /// Its `created` line was damaged: its config is unknown, so it counts as failed and its
    /// id stays taken (a later trial never reuses it, nor overwrites its folder).
    pub lost: bool,
}

impl TrialRecord {
    /// A trial just drawn: no claim, no report.
    pub fn new(id: usize, bracket: usize, config: Config) -> Self {
        Self {
            id,
            bracket,
            config,
            reports: Vec::new(),
            claim: None,
            claim_closed: true,
            failures: 0,
            failed_permanently: false,
            last_error: None,
            lost: false,
        }
    }

    /// A trial known only by its id: a later trial's `created` line came first.
    fn lost(id: usize) -> Self {
        let unknown = Config {
            method: LOST_METHOD.into(),
            params: Default::default(),
        };
        Self {
            failed_permanently: true,
            last_error: Some(
                "its `created` journal line is damaged (reported when the journal is read), so \
                 its config is unknown"
                    .into(),
            ),
            lost: true,
            ..Self::new(id, 0, unknown)
        }
    }

    /// The rung resources reached and their scores.
    pub fn scores(&self) -> Vec<(usize, f64)> {
        self.reports
            .iter()
            .filter_map(|e| match e {
                Event::Reported {
                    resource, score, ..
                } => Some((*resource, *score)),
                _ => None,
            })
            .collect()
    }

    /// The highest resource reached.
    pub fn reached(&self) -> usize {
        self.scores().iter().map(|(r, _)| *r).max().unwrap_or(0)
    }

    /// Whether its first job still has to be claimed: its `created` line stands alone (a
    /// write torn between the two lines). A trial with a report has run, whatever happened
    /// to its claim's line.
    pub fn never_claimed(&self) -> bool {
        !self.lost && self.claim.is_none() && self.reports.is_empty() && self.failures == 0
    }

    /// The resource its latest job runs to (0 before any).
    pub fn target(&self) -> usize {
        self.claim.as_ref().map_or(0, |c| c.0)
    }

    /// Whether its latest job failed and may be tried again.
    pub fn retry_due(&self, max_retries: usize) -> bool {
        !self.lost
            && self.claim_closed
            && !self.failed_permanently
            && self.failures > 0
            && self.failures <= max_retries
            && self.reached() < self.target()
    }

    /// Whether it failed for good: out of retries, or by an error a retry cannot mend.
    pub fn failed_for_good(&self, max_retries: usize) -> bool {
        self.lost
            || self.claim_closed
                && (self.failures > max_retries || self.failed_permanently)
                && self.reached() < self.target()
    }
}

/// The study as the journal's events leave it.
#[derive(Debug, Default)]
pub struct StudyState {
    /// Every trial, by index.
    pub trials: Vec<TrialRecord>,
}

impl StudyState {
    /// Replays events in order.
    pub fn replay(events: &[Event]) -> Self {
        let mut s = Self::default();
        for (line, e) in events.iter().enumerate() {
            match e {
                Event::Created {
                    trial,
                    bracket,
                    config,
                } => {
                    s.fill_lost_below(*trial, line);
                    if *trial == s.trials.len() {
                        s.trials
                            .push(TrialRecord::new(*trial, *bracket, config.clone()));
                    }
                }
                Event::Claimed {
                    trial,
                    resource,
                    worker,
                    attempt,
                    ..
                } => {
                    if let Some(t) = s.live(*trial, line) {
                        if t.target() != *resource {
                            t.failures = 0;
                        }
                        t.claim = Some((*resource, worker.clone(), *attempt));
                        t.claim_closed = false;
                    }
                }
                Event::Reported { trial, .. } => {
                    if let Some(t) = s.live(*trial, line) {
                        t.reports.push(e.clone());
                        t.claim_closed = true;
                    }
                }
                Event::WorkerDone { .. } => {}
                Event::Failed {
                    trial,
                    error,
                    permanent,
                    ..
                } => {
                    if let Some(t) = s.live(*trial, line) {
                        t.failures += 1;
                        t.failed_permanently |= *permanent;
                        t.last_error = Some(error.clone());
                        t.claim_closed = true;
                    }
                }
            }
        }
        s
    }

    /// What the scheduler sees of each trial.
    pub fn views(&self, max_retries: usize) -> Vec<TrialView> {
        self.trials
            .iter()
            .map(|t| TrialView {
                id: t.id,
                // A lost trial's bracket is unknown: it counts in none of the shares, so the
                // bracket it was drawn for is the one short and gets the next new trial.
                bracket: if t.lost { NO_BRACKET } else { t.bracket },
                reports: t.scores(),
                target: t.target(),
                busy: !t.claim_closed || t.retry_due(max_retries),
                failed: t.failed_for_good(max_retries),
            })
            .collect()
    }

    /// Placeholders for trials below `id` whose `created` line was lost. Every trial has a
    /// line of its own before any event names it, so an id past the event's index is no
    /// trial's (a damaged number), and nothing is allocated for it.
    fn fill_lost_below(&mut self, id: usize, index: usize) {
        if id <= index {
            while self.trials.len() < id {
                self.trials.push(TrialRecord::lost(self.trials.len()));
            }
        }
    }

    /// The trial an event at `index` names, if it is known; a trial seen first through a
    /// claim, report or failure (the newest trial's `created` line lost) is recorded lost.
    fn live(&mut self, id: usize, index: usize) -> Option<&mut TrialRecord> {
        self.fill_lost_below(id + 1, index + 1);
        self.trials.get_mut(id).filter(|t| !t.lost)
    }
}

/// Lock files of running jobs: one per trial, held by the worker running it.
pub fn trial_lock_path(dir: &Path, trial: usize) -> PathBuf {
    dir.join("trials").join(format!("{trial:06}.lock"))
}

/// Takes trial `trial`'s run lock if free (None when a live worker holds it).
///
/// # Errors
/// The lock file cannot be created or locked for another reason.
pub fn try_lock_trial(dir: &Path, trial: usize) -> Result<Option<File>> {
    let path = trial_lock_path(dir, trial);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

/// Fault injection for the kill tests: `TTLORA_KILL_IN_APPEND=N` makes the N-th append of
/// the process write half its bytes and then SIGKILL the process, as a kill mid-write would.
/// Only in builds with debug assertions (what `cargo test` builds): a release binary ignores
/// the variable, so no environment can make a user's study kill itself.
mod fail_point {
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::error::{Error, Result};

    static APPENDS: AtomicUsize = AtomicUsize::new(0);

    pub fn before_append(path: &Path, bytes: &[u8]) -> Result<()> {
        if !cfg!(debug_assertions) {
            return Ok(());
        }
        let n = APPENDS.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(kill_at) = std::env::var("TTLORA_KILL_IN_APPEND")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        else {
            return Ok(());
        };
        if n == kill_at {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            let _ = f.write_all(&bytes[..bytes.len() / 2]);
            let _ = f.sync_data();
            // SIGKILL, as the tests promise: no destructor, no flush, no unwinding.
            #[cfg(unix)]
            // SAFETY: kill(2) on this process's own pid has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first claim of `trial`, to `resource` (for tests here and in `status`).
    pub(crate) fn claimed(trial: usize, resource: usize) -> Event {
        Event::Claimed {
            trial,
            resource,
            worker: "w".into(),
            attempt: 1,
            time: 0.0,
        }
    }

    /// The creation of `trial`, a TT-LoRA config (for tests here and in `status`).
    pub(crate) fn created(trial: usize) -> Event {
        Event::Created {
            trial,
            bracket: 0,
            config: Config {
                method: "ttlora".into(),
                params: [("rank".to_string(), serde_json::Value::from(4))].into(),
            },
        }
    }

    /// A report of `trial` at `resource` with held-out `score`, the rest fixed (for tests
    /// here and in `status`).
    pub(crate) fn reported(trial: usize, resource: usize, score: f64) -> Event {
        Event::Reported {
            trial,
            resource,
            score,
            curve: vec![(3, score)],
            dev: BTreeMap::new(),
            params: 100,
            steps: 3,
            seconds: 1.0,
            wall_s: Some(1.5),
            peak_rss_mib: 10.0,
            adapter: None,
            time: 0.0,
        }
    }

    #[test]
    fn appended_events_read_back_in_order_with_nan_as_null() {
        let dir = std::env::temp_dir().join(format!("ttlora-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(&dir).unwrap();
        let events = [created(0), reported(0, 1, f64::NAN), created(1)];
        j.lock().unwrap().append(&events[..2]).unwrap();
        j.lock().unwrap().append(&events[2..]).unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert!(text.contains("\"score\":null"), "{text}");
        let r = j.read().unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.events.len(), 3);
        assert_eq!(r.events[0], events[0]);
        assert!(matches!(r.events[1], Event::Reported { score, .. } if score.is_nan()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ignored_then_cut_a_damaged_line_reported_by_number() {
        let dir = std::env::temp_dir().join(format!("ttlora-journal-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(&dir).unwrap();
        j.lock().unwrap().append(&[created(0)]).unwrap();
        // A damaged second line, then a torn third.
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"{\"event\":\"created\",\"tri\n{\"event\":\"cre")
            .unwrap();
        let r = j.read().unwrap();
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with(&format!(
                "{}:2: not a journal event",
                dir.join(JOURNAL_FILE).display()
            )),
            "{:?}",
            r.warnings
        );
        // The next append cuts the torn line off; the damaged one stays, reported.
        j.lock().unwrap().append(&[created(1)]).unwrap();
        let r = j.read().unwrap();
        assert_eq!(r.events, vec![created(0), created(1)]);
        assert_eq!(r.warnings.len(), 1);
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert!(!text.contains("{\"event\":\"cre\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_tracks_claims_reports_and_failures() {
        let claim = |trial, resource, attempt| Event::Claimed {
            trial,
            resource,
            worker: "w".into(),
            attempt,
            time: 0.0,
        };
        let failed = |trial, resource, attempt| Event::Failed {
            trial,
            resource,
            attempt,
            error: "boom".into(),
            permanent: false,
            time: 0.0,
        };
        let s = StudyState::replay(&[
            created(0),
            claim(0, 1, 1),
            reported(0, 1, 0.5),
            created(1),
            claim(1, 1, 1),
            failed(1, 1, 1),
            claim(1, 1, 2),
            claim(0, 3, 1),
        ]);
        assert_eq!(s.trials.len(), 2);
        let (t0, t1) = (&s.trials[0], &s.trials[1]);
        assert_eq!(t0.scores(), vec![(1, 0.5)]);
        assert_eq!((t0.target(), t0.claim_closed, t0.reached()), (3, false, 1));
        assert_eq!((t1.target(), t1.failures, t1.claim_closed), (1, 1, false));
        assert_eq!(t1.last_error.as_deref(), Some("boom"));
    }

    /// Trial 1's `created` line was lost (a damaged line, skipped): trial 1 stays taken and
    /// failed, its later lines are ignored, trial 2 keeps its id, and a new trial gets 3.
    #[test]
    fn a_trial_whose_created_line_is_lost_keeps_its_id_and_counts_as_failed() {
        let claim = |trial| claimed(trial, 1);
        let s = StudyState::replay(&[
            created(0),
            claim(0),
            reported(0, 1, 0.5),
            claim(1),
            reported(1, 1, 0.9),
            created(2),
            claim(2),
        ]);
        assert_eq!(s.trials.len(), 3, "the next trial is 3");
        let lost = &s.trials[1];
        assert!(lost.lost && lost.failed_permanently && lost.claim_closed);
        assert_eq!(
            s.views(0)[1].bracket,
            NO_BRACKET,
            "in no bracket's HyperBand share"
        );
        assert!(
            lost.reports.is_empty(),
            "a score without its config is not used"
        );
        assert!(
            lost.failed_for_good(0) && !lost.retry_due(2),
            "failed, never retried"
        );
        assert_eq!(s.trials[2].id, 2);
        assert_eq!(s.trials[2].config, s.trials[0].config);
        assert_eq!(s.trials[2].target(), 1);

        // Trial 0's `claimed` line lost, its report kept: it has run, nothing to start again.
        let s = StudyState::replay(&[created(0), reported(0, 1, 0.5)]);
        assert!(!s.trials[0].never_claimed());
        let s = StudyState::replay(&[created(0)]);
        assert!(s.trials[0].never_claimed());

        // The newest trial's `created` line lost: its claim makes it known, and lost.
        let s = StudyState::replay(&[created(0), claim(1), reported(1, 1, 0.9)]);
        assert_eq!(s.trials.len(), 2, "the next trial is 2, not a second 1");
        assert!(s.trials[1].lost && s.trials[1].reports.is_empty());
        // A damaged id past every line is no trial: nothing is allocated for it.
        let s = StudyState::replay(&[created(0), claim(1_000_000_000)]);
        assert_eq!(s.trials.len(), 1);
    }

    #[test]
    fn a_missing_journal_is_empty_to_readers_and_an_error_to_workers() {
        let dir = std::env::temp_dir().join(format!("ttlora-journal-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(Journal::at(&dir).read().unwrap().events.is_empty());
        assert!(!dir.exists(), "reading creates nothing");
        let j = Journal::open(&dir).unwrap();
        std::fs::remove_file(j.path()).unwrap();
        assert!(j.read().is_err(), "a worker's journal deleted under it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trial_lock_is_exclusive_until_dropped() {
        let dir = std::env::temp_dir().join(format!("ttlora-trial-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let held = try_lock_trial(&dir, 3).unwrap().expect("free");
        assert!(try_lock_trial(&dir, 3).unwrap().is_none(), "held");
        assert!(try_lock_trial(&dir, 4).unwrap().is_some(), "another trial");
        drop(held);
        assert!(try_lock_trial(&dir, 3).unwrap().is_some(), "released");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
