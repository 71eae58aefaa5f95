//! The trade-off report of a study: every trial's outcome, the Pareto front of held-out score
//! against trainable parameters, the optimisation history, each setting's sensitivity and the
//! learning curves, as data ([`Report`]) and as Markdown ([`markdown`]); the plots are drawn
//! by `search::plot`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::search::journal::{Event, Journal, StudyState};
use crate::search::settings::{Resource, SearchSettings};
use crate::search::space::{Config, Domain};
use crate::search::status::{TrialStatus, best_first, status_of};

/// One trial as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrialOutcome {
    /// Its index.
    pub id: usize,
    /// Its config.
    pub config: Config,
    /// Its standing.
    pub status: TrialStatus,
    /// The highest rung reached.
    pub resource: usize,
    /// The held-out score there (NaN before any).
    pub score: f64,
    /// (rung, held-out score) at each rung reached.
    pub rungs: Vec<(usize, f64)>,
    /// The held-out curve over all its jobs: (resource done, score), fractional between rungs
    /// when evaluations are more frequent.
    pub curve: Vec<(f64, f64)>,
    /// Dev metrics of its selected weights at its highest rung (reference only).
    pub dev: BTreeMap<String, f64>,
    /// Trainable adapter parameters.
    pub params: usize,
    /// Training seconds in all.
    pub seconds: f64,
    /// The adapter saved at `max_t`.
    pub adapter: Option<std::path::PathBuf>,
    /// Its last error.
    pub error: Option<String>,
    /// Its `created` journal line was damaged, so its config is unknown.
    pub lost: bool,
}

/// How much one setting moves the score at the first rung.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    /// `method.setting`.
    pub name: String,
    /// For a list: the mean score and count per value; for a range: empty.
    pub per_value: Vec<(String, f64, usize)>,
    /// For a range: Spearman's rank correlation of value and score (None for lists).
    pub spearman: Option<f64>,
    /// Trials that contributed.
    pub trials: usize,
}

/// What the search itself cost, from the workers' own accounts.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// Workers that finished.
    pub workers: usize,
    /// Jobs they ran.
    pub jobs: usize,
    /// Mean seconds per job spent choosing and recording it (lock, journal, sampler,
    /// scheduler).
    pub per_job_s: f64,
    /// Mean seconds per job spent training and scoring.
    pub job_s: f64,
    /// Mean seconds a worker spent preparing the study once (what every trial would pay if
    /// each loaded the model and tokenized the data itself).
    pub prepare_s: f64,
}

/// A study's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The settings.
    pub settings: SearchSettings,
    /// Every trial.
    pub trials: Vec<TrialOutcome>,
    /// Trials on the Pareto front at `max_t` (fewest parameters first).
    pub front: Vec<usize>,
    /// The best trial at `max_t`.
    pub best: Option<usize>,
    /// Resource used by all trials.
    pub used: usize,
    /// What the same trials run to `max_t` without early stopping would use.
    pub without_pruning: usize,
    /// Training seconds of all trials.
    pub seconds: f64,
    /// Per-setting sensitivity at the first rung.
    pub sensitivity: Vec<Sensitivity>,
    /// The rung the sensitivity is measured at.
    pub sensitivity_rung: usize,
    /// The search's own cost (None until a worker finished).
    pub overhead: Option<Overhead>,
    /// The front re-run with further seeds on dev (`search report --confirm-seeds N`).
    pub confirmed: Vec<crate::search::confirm::Confirmed>,
    /// Damaged journal lines.
    pub warnings: Vec<String>,
    /// Other studies drawn beside this one (`search report --compare DIR`): their trials
    /// complete at `max_t`, on the same held-out slice.
    pub compared: Vec<Compared>,
}

/// Another study's complete trials, drawn and listed beside a report's (LoRA's rank sweep as
/// the trade-off plot's reference line, LoRETTA's sizes).
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    /// The study's folder name.
    pub study: String,
    /// Its trials complete at `max_t` with a score.
    pub trials: Vec<TrialOutcome>,
}

impl Report {
    /// Adds another study's complete trials beside this report's. Their held-out scores are
    /// comparable only when both studies hold out the same examples and train as long, so the
    /// settings that decide those must agree.
    ///
    /// # Errors
    /// [`Error::Study`](crate::error::Error::Study) naming the first setting that differs.
    pub fn compare_with(&mut self, dir: &Path, other: Report) -> Result<()> {
        let (a, b) = (&self.settings, &other.settings);
        let differs = [
            ("task", a.task != b.task),
            ("model", a.model != b.model),
            ("data", a.data != b.data),
            ("max_train", a.max_train != b.max_train),
            ("held_out", a.held_out != b.held_out),
            ("max_len", a.max_len != b.max_len),
            ("seed (it draws the held-out slice)", a.seed != b.seed),
            ("resource", a.resource != b.resource),
            ("max_t", a.scheduler.max_t != b.scheduler.max_t),
            (
                "grace_period (with steps, the evaluation interval a trial selects among)",
                a.resource == crate::search::Resource::Steps
                    && a.scheduler.grace_period != b.scheduler.grace_period,
            ),
        ];
        if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(crate::error::Error::Study {
                path: dir.to_path_buf(),
                reason: format!(
                    "its {field} differs from the reported study's, so its held-out scores \
                     are not comparable"
                ),
            });
        }
        let max_t = other.settings.scheduler.max_t;
        let trials = other
            .trials
            .into_iter()
            .filter(|t| t.resource >= max_t && t.score.is_finite())
            .collect();
        let study = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.compared.push(Compared { study, trials });
        Ok(())
    }

    /// Every method the report draws, its own first, then the compared studies' in order.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let own = self.settings.space.methods.iter().map(|m| &m.method);
        let theirs = self
            .compared
            .iter()
            .flat_map(|c| c.trials.iter().map(|t| &t.config.method));
        for m in own.chain(theirs) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    /// The configs to confirm, for [`crate::search::confirm::confirm`]: the front's, and
    /// the trials in `also` (a reference such as LoRA r = 8 that is not on the front), fewest
    /// parameters first, each once.
    ///
    /// # Errors
    /// [`Error::Study`](crate::error::Error::Study) for a trial the study does not have.
    pub fn configs_to_confirm(
        &self,
        dir: &Path,
        also: &[usize],
    ) -> Result<Vec<crate::search::confirm::FrontConfig<'_>>> {
        if let Some(id) = also.iter().find(|id| **id >= self.trials.len()) {
            return Err(crate::error::Error::Study {
                path: dir.to_path_buf(),
                reason: format!(
                    "--confirm-trial {id}: the study has trials 0 to {}",
                    self.trials.len().saturating_sub(1)
                ),
            });
        }
        if let Some(id) = also.iter().find(|id| self.trials[**id].lost) {
            return Err(crate::error::Error::Study {
                path: dir.to_path_buf(),
                reason: format!(
                    "--confirm-trial {id}: its config is unknown (its journal line is damaged)"
                ),
            });
        }
        let mut ids: Vec<usize> = self.front.iter().chain(also).copied().collect();
        ids.sort_by_key(|&id| (self.trials[id].params, id));
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|id| crate::search::confirm::FrontConfig {
                trial: id,
                config: &self.trials[id].config,
                params: self.trials[id].params,
                on_front: self.front.contains(&id),
            })
            .collect())
    }
}

/// Sums the workers' accounts.
fn overhead(events: &[Event]) -> Option<Overhead> {
    let (mut workers, mut jobs, mut over, mut run, mut prep) = (0, 0, 0.0, 0.0, 0.0);
    for e in events {
        if let Event::WorkerDone {
            jobs: j,
            overhead_s,
            prepare_s,
            jobs_s,
            ..
        } = e
        {
            workers += 1;
            jobs += j;
            over += overhead_s;
            run += jobs_s;
            prep += prepare_s;
        }
    }
    (jobs > 0).then(|| Overhead {
        workers,
        jobs,
        per_job_s: over / jobs as f64,
        job_s: run / jobs as f64,
        prepare_s: prep / workers as f64,
    })
}

/// Builds the report of the study in `dir`.
///
/// # Errors
/// Not a study folder; the journal cannot be read.
pub fn build(dir: &Path) -> Result<Report> {
    let settings = SearchSettings::read(dir)?;
    // One read of the journal for both the status and the curves.
    let replay = Journal::at(dir).read()?;
    let state = StudyState::replay(&replay.events);
    let st = status_of(dir, &settings, &state, replay.warnings.clone());
    let max_t = settings.scheduler.max_t;
    let mut trials = Vec::new();
    for (record, line) in state.trials.iter().zip(&st.trials) {
        let mut curve = Vec::new();
        let mut dev = BTreeMap::new();
        let mut params = 0;
        let mut adapter = None;
        for e in &record.reports {
            if let Event::Reported {
                resource,
                curve: c,
                dev: d,
                params: p,
                steps,
                adapter: a,
                ..
            } = e
            {
                let per_unit = match settings.resource {
                    Resource::Epochs => (*steps as f64 / *resource as f64).max(1.0),
                    Resource::Steps => 1.0,
                };
                curve.extend(c.iter().map(|(step, s)| (*step as f64 / per_unit, *s)));
                dev.clone_from(d);
                params = *p;
                adapter.clone_from(a);
            }
        }
        trials.push(TrialOutcome {
            id: record.id,
            config: record.config.clone(),
            status: line.status,
            resource: line.resource,
            score: line.score,
            rungs: record.scores(),
            curve,
            dev,
            params,
            seconds: line.seconds,
            adapter,
            error: record.last_error.clone(),
            lost: record.lost,
        });
    }
    let complete: Vec<&TrialOutcome> = trials
        .iter()
        .filter(|t| t.resource >= max_t && t.score.is_finite())
        .collect();
    let front = pareto_front(&complete);
    let best = complete
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score).then(b.id.cmp(&a.id)))
        .map(|t| t.id);
    let sensitivity_rung = trials
        .iter()
        .filter_map(|t| t.rungs.first().map(|r| r.0))
        .min()
        .unwrap_or(0);
    let sensitivity = sensitivity(&settings, &trials, sensitivity_rung);
    Ok(Report {
        without_pruning: trials.len() * max_t,
        used: st.used,
        seconds: trials.iter().map(|t| t.seconds).sum(),
        settings,
        trials,
        front,
        best,
        sensitivity,
        sensitivity_rung,
        overhead: overhead(&replay.events),
        confirmed: Vec::new(),
        warnings: st.warnings,
        compared: Vec::new(),
    })
}

/// Trials no other beats on both axes: sorted by parameters, each with a higher score than
/// every trial with as few parameters.
fn pareto_front(complete: &[&TrialOutcome]) -> Vec<usize> {
    let mut sorted: Vec<&&TrialOutcome> = complete.iter().collect();
    sorted.sort_by(|a, b| {
        a.params
            .cmp(&b.params)
            .then(b.score.total_cmp(&a.score))
            .then(a.id.cmp(&b.id))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for t in sorted {
        if t.score > best {
            best = t.score;
            front.push(t.id);
        }
    }
    front
}

/// Each searched setting's effect on the score at `rung`, per method.
fn sensitivity(
    settings: &SearchSettings,
    trials: &[TrialOutcome],
    rung: usize,
) -> Vec<Sensitivity> {
    let mut out = Vec::new();
    for m in &settings.space.methods {
        let at_rung: Vec<(&Config, f64)> = trials
            .iter()
            .filter(|t| t.config.method == m.method)
            .filter_map(|t| {
                t.rungs
                    .iter()
                    .find(|(r, s)| *r == rung && s.is_finite())
                    .map(|(_, s)| (&t.config, *s))
            })
            .collect();
        for p in &m.params {
            let name = format!("{}.{}", m.method, p.name);
            let pairs: Vec<(&serde_json::Value, f64)> = at_rung
                .iter()
                .filter_map(|(c, s)| c.params.get(&p.name).map(|v| (v, *s)))
                .collect();
            match &p.domain {
                Domain::Fixed { .. } => {}
                Domain::Choice { choices } => {
                    let per_value = choices
                        .iter()
                        .map(|c| {
                            let scores: Vec<f64> = pairs
                                .iter()
                                .filter(|(v, _)| *v == c)
                                .map(|(_, s)| *s)
                                .collect();
                            let mean = if scores.is_empty() {
                                f64::NAN
                            } else {
                                scores.iter().sum::<f64>() / scores.len() as f64
                            };
                            (c.to_string(), mean, scores.len())
                        })
                        .collect();
                    out.push(Sensitivity {
                        name,
                        per_value,
                        spearman: None,
                        trials: pairs.len(),
                    });
                }
                Domain::Float { .. } | Domain::Int { .. } => {
                    let xs: Vec<f64> = pairs.iter().filter_map(|(v, _)| v.as_f64()).collect();
                    let ys: Vec<f64> = pairs.iter().map(|(_, s)| *s).collect();
                    out.push(Sensitivity {
                        name,
                        per_value: Vec::new(),
                        spearman: spearman(&xs, &ys),
                        trials: pairs.len(),
                    });
                }
            }
        }
    }
    out
}

/// Ranks with ties sharing their mean rank.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            r[*k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (None below 3 pairs or when a side is constant).
pub fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    if xs.len() != ys.len() || xs.len() < 3 {
        return None;
    }
    let (rx, ry) = (ranks(xs), ranks(ys));
    let n = xs.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

/// The report as Markdown; `plots` names the image files beside it (none: no plot lines).
pub fn markdown(r: &Report, plots: &[(&str, &str)]) -> String {
    let s = &r.settings;
    let unit = match s.resource {
        Resource::Epochs => "epochs",
        Resource::Steps => "steps",
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Search report: {} on {}\n", s.task, s.model);
    let _ = writeln!(
        md,
        "Sampler {}, scheduler {} (reduction factor {}, grace period {}, max_t {} {unit}), \
         {} of {} trials started, seed {}, {:.0}% of the training examples held out for \
         selection (max {} training examples, max length {}). Scores are the held-out slice's \
         {}; dev metrics are shown for reference and were not used to choose.\n",
        format!("{:?}", s.sampler).to_ascii_lowercase(),
        format!("{:?}", s.scheduler.kind).to_ascii_lowercase(),
        s.scheduler.reduction_factor,
        s.scheduler.grace_period,
        s.scheduler.max_t,
        r.trials.len(),
        s.trials,
        s.seed,
        100.0 * s.held_out,
        s.max_train.map_or("all".to_string(), |n| n.to_string()),
        s.max_len,
        crate::data::task(&s.task).map_or("primary metric", |t| t.primary.name()),
    );
    let _ = writeln!(
        md,
        "Compute: {} trial-{unit} used, against {} for the same trials run to max_t \
         ({:.0}%); {:.0} s of training.\n",
        r.used,
        r.without_pruning,
        100.0 * r.used as f64 / r.without_pruning.max(1) as f64,
        r.seconds
    );
    if let Some(o) = &r.overhead {
        let _ = writeln!(
            md,
            "The search's own cost: {:.1} ms per job for choosing and recording it ({:.3}% of \
             a job's {:.1} s), over {} jobs; preparing the study (the tokenized data and the \
             first copy of the model) took {:.1} s once per worker ({} worker{}), {:.1}% of a \
             job, which a process per trial would pay every time (a later trial still copies \
             the base weights from the memory-mapped file, inside its job).\n",
            1e3 * o.per_job_s,
            100.0 * o.per_job_s / o.job_s.max(1e-9),
            o.job_s,
            o.jobs,
            o.prepare_s,
            o.workers,
            if o.workers == 1 { "" } else { "s" },
            100.0 * o.prepare_s / o.job_s.max(1e-9),
        );
    }
    for w in &r.warnings {
        let _ = writeln!(md, "Warning: {w}\n");
    }
    let _ = writeln!(
        md,
        "## Pareto front at max_t (held-out score against trainable parameters)\n"
    );
    table_header(&mut md);
    for id in &r.front {
        table_row(&mut md, &r.trials[*id]);
    }
    for (name, file) in plots {
        if *name == "front" {
            let _ = writeln!(md, "\n![score against parameters]({file})");
        }
    }
    for c in &r.compared {
        let _ = writeln!(
            md,
            "\n## Compared: {} (its trials complete at max_t, the same held-out slice)\n",
            c.study
        );
        table_header(&mut md);
        let mut order: Vec<&TrialOutcome> = c.trials.iter().collect();
        order.sort_by_key(|t| t.params);
        for t in order {
            table_row(&mut md, t);
        }
    }
    if !r.confirmed.is_empty() {
        let _ = writeln!(
            md,
            "\n## The front confirmed on dev\n\nEach front config (and each trial named by \
             --confirm-trial) trained again from scratch with seeds {:?} (the study's data \
             split), scored on the official dev split.\n",
            r.confirmed[0].seeds
        );
        let _ = writeln!(
            md,
            "| trial | trainable | dev mean ± std | per seed | config |\n|---:|---:|---:|---|---|"
        );
        for c in &r.confirmed {
            let per: Vec<String> = c.dev.iter().map(|x| format!("{x:.4}")).collect();
            let _ = writeln!(
                md,
                "| {}{} | {} | {:.4} ± {:.4} | {} | {} |",
                c.trial,
                if c.on_front { "" } else { " (asked)" },
                c.params,
                c.mean,
                c.std,
                per.join(", "),
                c.config
            );
        }
    }
    let _ = writeln!(md, "\n## All trials, best first\n");
    table_header(&mut md);
    let mut order: Vec<&TrialOutcome> = r.trials.iter().collect();
    order.sort_by(|a, b| best_first((a.resource, a.score, a.id), (b.resource, b.score, b.id)));
    for t in order {
        table_row(&mut md, t);
    }
    let _ = writeln!(
        md,
        "\n## Sensitivity at rung {} (every trial's score there)\n",
        r.sensitivity_rung
    );
    let _ = writeln!(md, "| setting | trials | effect |\n|---|---:|---|");
    for sn in &r.sensitivity {
        let effect = match sn.spearman {
            Some(rho) => format!("Spearman ρ = {rho:+.2}"),
            None if sn.per_value.is_empty() => "—".into(),
            None => sn
                .per_value
                .iter()
                .map(|(v, mean, n)| {
                    if *n == 0 {
                        format!("{v}: —")
                    } else {
                        format!("{v}: {mean:.4} ({n})")
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let _ = writeln!(md, "| {} | {} | {effect} |", sn.name, sn.trials);
    }
    if let Some((_, file)) = plots.iter().find(|(name, _)| *name == "sensitivity") {
        let title = "Score against each searched setting at that rung (black: the mean per value)";
        let _ = writeln!(md, "\n![{title}]({file})");
    }
    for (name, file) in plots {
        let title = match *name {
            "history" => "Optimisation history",
            "curves" => "Learning curves (pruned trials grey, rungs dotted)",
            _ => continue,
        };
        let _ = writeln!(md, "\n## {title}\n\n![{title}]({file})");
    }
    let failed: Vec<&TrialOutcome> = r
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Failed)
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n## Failed trials\n");
        for t in failed {
            let _ = writeln!(
                md,
                "- trial {} ({}): {}",
                t.id,
                t.config.label(),
                t.error.as_deref().unwrap_or("?")
            );
        }
    }
    md
}

fn table_header(md: &mut String) {
    let _ = writeln!(
        md,
        "| trial | status | rung | held-out | dev | trainable | config |\n|---:|---|---:|---:|---|---:|---|"
    );
}

fn table_row(md: &mut String, t: &TrialOutcome) {
    let dev: Vec<String> = t
        .dev
        .iter()
        .filter(|(k, _)| !k.contains("predicted_"))
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    let _ = writeln!(
        md,
        "| {} | {} | {} | {:.4} | {} | {} | {} |",
        t.id,
        format!("{:?}", t.status).to_ascii_lowercase(),
        t.resource,
        t.score,
        dev.join(", "),
        t.params,
        t.config.label()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_reversed_and_tied_data() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(spearman(&x, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&x, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&x, &[1.0, 1.0, 1.0, 1.0]), None);
        assert_eq!(spearman(&x[..2], &[1.0, 2.0]), None);
        // Ties share ranks: x ranks 1.5 1.5 3 4, y ranks 1 2 3 4.
        let rho = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((rho - 0.948_683).abs() < 1e-5, "{rho}");
    }

    #[test]
    fn the_front_keeps_trials_no_other_beats_on_both_axes() {
        let t = |id, params, score| TrialOutcome {
            id,
            config: Config {
                method: "ttlora".into(),
                params: BTreeMap::new(),
            },
            status: TrialStatus::Complete,
            resource: 9,
            score,
            rungs: vec![],
            curve: vec![],
            dev: BTreeMap::new(),
            params,
            seconds: 0.0,
            adapter: None,
            error: None,
            lost: false,
        };
        let trials = [
            t(0, 1000, 0.80),
            t(1, 500, 0.78),
            t(2, 2000, 0.79), // more parameters, lower score than 0: dominated
            t(3, 500, 0.70),  // same parameters as 1, lower: dominated
            t(4, 4000, 0.85),
            t(5, 100, 0.60),
        ];
        let refs: Vec<&TrialOutcome> = trials.iter().collect();
        assert_eq!(pareto_front(&refs), [5, 1, 0, 4]);
    }
}
