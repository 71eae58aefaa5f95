//! Which trial a free worker runs next, and how far: ASHA (asynchronous successive halving,
//! Li et al. 2020), HyperBand's brackets run as ASHAs, or every trial to the end.
//!
//! ASHA's rungs sit at `grace_period · η^k` of the resource (epochs or steps) below
//! `max_t`, and at `max_t`. A trial runs to the first rung and pauses there; whenever a
//! worker is free, the best trial in the top `1/η` of the highest rung that has one not yet
//! promoted goes on to the next rung; when none can, a new trial starts. Trials never
//! promoted are the pruned ones: they used only the resource of the rungs they reached.
//! The names follow Ray Tune: `reduction_factor` (η), `grace_period`, `max_t`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which scheduler a study uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Asynchronous successive halving, one bracket.
    Asha,
    /// HyperBand's brackets (each an ASHA with its own grace period), trials shared out in
    /// HyperBand's proportions.
    Hyperband,
    /// No early stopping: every trial runs to `max_t`.
    None,
}

/// A scheduler and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    /// Which one.
    pub kind: SchedulerKind,
    /// η: a rung keeps the top 1/η of its trials (Ray's `reduction_factor`).
    pub reduction_factor: usize,
    /// Resource of the first rung (Ray's `grace_period`, Optuna's `min_resource`).
    pub grace_period: usize,
    /// Resource of a complete trial (Ray's `max_t`, Optuna's `max_resource`).
    pub max_t: usize,
}

/// The bracket of a trial whose `created` line is lost: it counts in no bracket's share.
pub const NO_BRACKET: usize = usize::MAX;

/// One HyperBand bracket: how many configs it starts and the resource each first gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bracket {
    /// Configurations it starts (HyperBand's n_s).
    pub configs: usize,
    /// Resource of its first rung (HyperBand's r_s).
    pub resource: usize,
}

/// What the scheduler sees of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialView {
    /// Its index.
    pub id: usize,
    /// Its bracket (0 under ASHA and none; [`NO_BRACKET`] when unknown).
    pub bracket: usize,
    /// (resource, held-out score) at each rung reached.
    pub reports: Vec<(usize, f64)>,
    /// The resource its latest job runs (or ran) to.
    pub target: usize,
    /// A job of it is running or waiting to be retried.
    pub busy: bool,
    /// It failed for good.
    pub failed: bool,
}

impl TrialView {
    fn score_at(&self, resource: usize) -> Option<f64> {
        self.reports
            .iter()
            .find(|(r, _)| *r == resource)
            .map(|(_, s)| *s)
    }
}

/// What a free worker should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run a paused trial on to `resource`.
    Promote {
        /// The trial.
        trial: usize,
        /// The rung it goes to.
        resource: usize,
    },
    /// Start a new trial in `bracket`, running it to `resource`.
    Start {
        /// Its bracket.
        bracket: usize,
        /// Its first rung.
        resource: usize,
    },
    /// Nothing to start now; running trials may make a promotion possible.
    Wait,
    /// The study is complete.
    Done,
}

/// Rungs from `grace · η^k` up to and including `max_t`.
pub fn rungs(grace: usize, eta: usize, max_t: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut r = grace.max(1);
    while r < max_t {
        out.push(r);
        r = r.saturating_mul(eta.max(2));
    }
    out.push(max_t);
    out
}

/// HyperBand's bracket table for `max_t / grace` = R and η: bracket s = s_max … 0 starts
/// ⌈(s_max + 1) η^s / (s + 1)⌉ configs at `max_t · η^-s` (R = 81, η = 3: 81/1, 34/3,
/// 15/9, 8/27, 5/81).
pub fn hyperband_brackets(grace: usize, eta: usize, max_t: usize) -> Vec<Bracket> {
    let grace = grace.max(1);
    let eta = eta.max(2);
    let mut s_max = 0u32;
    while eta
        .checked_pow(s_max + 1)
        .and_then(|p| p.checked_mul(grace))
        .is_some_and(|r| r <= max_t)
    {
        s_max += 1;
    }
    (0..=s_max)
        .rev()
        .map(|s| {
            let scale = eta.pow(s);
            Bracket {
                configs: ((s_max as usize + 1) * scale).div_ceil(s as usize + 1),
                resource: (max_t / scale).max(grace),
            }
        })
        .collect()
}

impl Scheduler {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: usize| Error::InvalidConfig {
            method: "search",
            field,
            reason: reason.into(),
            got: got.to_string(),
        };
        if self.reduction_factor < 2 {
            return Err(bad(
                "reduction_factor",
                "must be >= 2",
                self.reduction_factor,
            ));
        }
        if self.grace_period == 0 {
            return Err(bad("grace_period", "must be >= 1", 0));
        }
        if self.max_t < self.grace_period {
            return Err(bad(
                "max_t",
                "must be >= grace_period (the first rung)",
                self.max_t,
            ));
        }
        Ok(())
    }

    /// The rungs of `bracket`.
    pub fn bracket_rungs(&self, bracket: usize) -> Vec<usize> {
        match self.kind {
            SchedulerKind::None => vec![self.max_t],
            SchedulerKind::Asha => rungs(self.grace_period, self.reduction_factor, self.max_t),
            SchedulerKind::Hyperband => {
                let brackets = self.brackets();
                let start = brackets[bracket.min(brackets.len() - 1)].resource;
                rungs(start, self.reduction_factor, self.max_t)
            }
        }
    }

    /// The brackets trials are shared out over (one, under ASHA and none).
    pub fn brackets(&self) -> Vec<Bracket> {
        match self.kind {
            SchedulerKind::Hyperband => {
                hyperband_brackets(self.grace_period, self.reduction_factor, self.max_t)
            }
            SchedulerKind::Asha => vec![Bracket {
                configs: 1,
                resource: self.grace_period,
            }],
            SchedulerKind::None => vec![Bracket {
                configs: 1,
                resource: self.max_t,
            }],
        }
    }

    /// The bracket of the next new trial: the one furthest below its share of HyperBand's
    /// proportions (ties to the most aggressive), so trials are shared out as the table says
    /// whatever the budget.
    pub fn bracket_for_new(&self, trials: &[TrialView]) -> usize {
        let brackets = self.brackets();
        let mut counts = vec![0usize; brackets.len()];
        for t in trials {
            if let Some(c) = counts.get_mut(t.bracket) {
                *c += 1;
            }
        }
        (0..brackets.len())
            .min_by(|&a, &b| {
                let fa = (counts[a] + 1) as f64 / brackets[a].configs as f64;
                let fb = (counts[b] + 1) as f64 / brackets[b].configs as f64;
                fa.total_cmp(&fb)
            })
            .unwrap_or(0)
    }

    /// What a free worker does next, given every trial so far and how many trials the study
    /// may start in all.
    pub fn next(&self, trials: &[TrialView], budget: usize) -> Next {
        if let Some(p) = self.promotion(trials) {
            return p;
        }
        if trials.len() < budget {
            let bracket = self.bracket_for_new(trials);
            return Next::Start {
                bracket,
                resource: self.bracket_rungs(bracket)[0],
            };
        }
        if trials.iter().any(|t| t.busy) {
            Next::Wait
        } else {
            Next::Done
        }
    }

    /// The promotion ASHA makes now: over every bracket, the highest rung first, the best
    /// trial in the rung's top 1/η that has not gone on yet.
    fn promotion(&self, trials: &[TrialView]) -> Option<Next> {
        let eta = self.reduction_factor;
        let mut best: Option<(usize, Next)> = None;
        for bracket in 0..self.brackets().len() {
            let rungs = self.bracket_rungs(bracket);
            for k in (0..rungs.len().saturating_sub(1)).rev() {
                if best.as_ref().is_some_and(|(level, _)| *level >= rungs[k]) {
                    break;
                }
                let mut rung: Vec<(&TrialView, f64)> = trials
                    .iter()
                    .filter(|t| t.bracket == bracket)
                    .filter_map(|t| t.score_at(rungs[k]).map(|s| (t, s)))
                    .collect();
                let keep = rung.len() / eta;
                // Best first; a NaN score (a diverged trial) ranks last; ties by age.
                rung.sort_by(|(a, sa), (b, sb)| {
                    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
                    key(*sb).total_cmp(&key(*sa)).then(a.id.cmp(&b.id))
                });
                let pick = rung
                    .iter()
                    .take(keep)
                    .find(|(t, _)| t.target <= rungs[k] && !t.busy && !t.failed);
                if let Some((t, _)) = pick {
                    best = Some((
                        rungs[k],
                        Next::Promote {
                            trial: t.id,
                            resource: rungs[k + 1],
                        },
                    ));
                    break;
                }
            }
        }
        best.map(|(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(eta: usize, grace: usize, max_t: usize) -> Scheduler {
        Scheduler {
            kind: SchedulerKind::Asha,
            reduction_factor: eta,
            grace_period: grace,
            max_t,
        }
    }

    fn paused(id: usize, reports: &[(usize, f64)]) -> TrialView {
        TrialView {
            id,
            bracket: 0,
            reports: reports.to_vec(),
            target: reports.last().map_or(0, |r| r.0),
            busy: false,
            failed: false,
        }
    }

    #[test]
    fn rungs_grow_by_eta_up_to_max_t() {
        assert_eq!(rungs(1, 3, 81), [1, 3, 9, 27, 81]);
        assert_eq!(rungs(1, 3, 10), [1, 3, 9, 10]);
        assert_eq!(rungs(2, 2, 16), [2, 4, 8, 16]);
        assert_eq!(rungs(5, 3, 5), [5]);
    }

    #[test]
    fn hyperband_table_for_r81_eta3() {
        let table: Vec<(usize, usize)> = hyperband_brackets(1, 3, 81)
            .iter()
            .map(|b| (b.configs, b.resource))
            .collect();
        assert_eq!(table, [(81, 1), (34, 3), (15, 9), (8, 27), (5, 81)]);
        // R = 9, η = 3: s_max = 2.
        let table: Vec<(usize, usize)> = hyperband_brackets(1, 3, 9)
            .iter()
            .map(|b| (b.configs, b.resource))
            .collect();
        assert_eq!(table, [(9, 1), (5, 3), (3, 9)]);
    }

    #[test]
    fn asha_starts_trials_until_a_rung_has_eta_then_promotes_the_best() {
        let s = asha(3, 1, 9);
        let start = Next::Start {
            bracket: 0,
            resource: 1,
        };
        assert_eq!(s.next(&[], 10), start);
        // Two results at rung 1: ⌊2/3⌋ = 0 may go on.
        let t = vec![paused(0, &[(1, 0.5)]), paused(1, &[(1, 0.7)])];
        assert_eq!(s.next(&t, 10), start);
        // Three: the best of them goes to rung 3.
        let mut t = t;
        t.push(paused(2, &[(1, 0.6)]));
        assert_eq!(
            s.next(&t, 10),
            Next::Promote {
                trial: 1,
                resource: 3
            }
        );
        // Once promoted (its target is 3), the others are not in the top third: start anew.
        t[1].target = 3;
        t[1].busy = true;
        assert_eq!(s.next(&t, 10), start);
        // Six at rung 1: the top two are trials 1 and 5; 1 went on, so 5 goes next.
        t[1].busy = false;
        t[1].reports.push((3, 0.72));
        t.extend([
            paused(3, &[(1, 0.1)]),
            paused(4, &[(1, 0.2)]),
            paused(5, &[(1, 0.65)]),
        ]);
        assert_eq!(
            s.next(&t, 10),
            Next::Promote {
                trial: 5,
                resource: 3
            }
        );
    }

    /// One worker, η = 3, grace 2, max_t 54 (rungs 2, 6, 18, 54), 27 trials whose held-out
    /// score falls with their id at every rung, so a rung's ranking never changes: the rungs
    /// end with 27, 9, 3 and 1 trials, as synchronous successive halving would, for 27·2 +
    /// 9·4 + 3·12 + 1·36 = 162 resource units against 27·54 = 1,458 run to max_t.
    #[test]
    fn asha_with_grace_2_halves_27_trials_to_9_3_and_1() {
        let s = asha(3, 2, 54);
        assert_eq!(s.bracket_rungs(0), [2, 6, 18, 54]);
        let score = |id: usize| 1.0 - id as f64 / 100.0;
        let mut trials: Vec<TrialView> = Vec::new();
        let mut jobs = Vec::new();
        loop {
            match s.next(&trials, 27) {
                Next::Start { bracket, resource } => {
                    assert_eq!((bracket, resource), (0, 2));
                    let id = trials.len();
                    trials.push(paused(id, &[(2, score(id))]));
                    jobs.push((id, 2));
                }
                Next::Promote { trial, resource } => {
                    let t = &mut trials[trial];
                    t.reports.push((resource, score(trial)));
                    t.target = resource;
                    jobs.push((trial, resource));
                }
                Next::Wait => panic!("one worker never waits"),
                Next::Done => break,
            }
        }
        // Hand-worked start: trials 0–2 fill rung 2, whose top third is trial 0.
        assert_eq!(jobs[..4], [(0, 2), (1, 2), (2, 2), (0, 6)]);
        let reached = |rung: usize| trials.iter().filter(|t| t.score_at(rung).is_some()).count();
        assert_eq!([2, 6, 18, 54].map(reached), [27, 9, 3, 1]);
        let at_54: Vec<usize> = trials
            .iter()
            .filter(|t| t.target == 54)
            .map(|t| t.id)
            .collect();
        assert_eq!(at_54, [0], "the best trial alone runs to max_t");
        let used: usize = trials.iter().map(|t| t.target).sum();
        assert_eq!(used, 162);
    }

    #[test]
    fn asha_promotes_from_the_highest_rung_first() {
        let s = asha(3, 1, 9);
        let mut t: Vec<TrialView> = (0..9).map(|i| paused(i, &[(1, i as f64 / 10.0)])).collect();
        // Three trials at rung 3 (8, 7, 6 were promoted there), all paused.
        for (i, score) in [(8, 0.9), (7, 0.95), (6, 0.5)] {
            t[i].reports.push((3, score));
            t[i].target = 3;
        }
        // Rung 3 has 3 results: its best (7) goes to 9 before rung 1's next (none left:
        // ⌊9/3⌋ = 3 = the three promoted).
        assert_eq!(
            s.next(&t, 9),
            Next::Promote {
                trial: 7,
                resource: 9
            }
        );
        t[7].target = 9;
        t[7].busy = true;
        // Nothing else can move, the budget is spent, one trial runs: wait.
        assert_eq!(s.next(&t, 9), Next::Wait);
        t[7].busy = false;
        t[7].reports.push((9, 0.96));
        assert_eq!(s.next(&t, 9), Next::Done);
    }

    #[test]
    fn failed_busy_and_nan_trials_are_not_promoted() {
        let s = asha(2, 1, 4);
        let mut t = vec![paused(0, &[(1, f64::NAN)]), paused(1, &[(1, 0.3)])];
        assert_eq!(
            s.next(&t, 2),
            Next::Promote {
                trial: 1,
                resource: 2
            },
            "a NaN score ranks last"
        );
        t[1].failed = true;
        assert_eq!(s.next(&t, 2), Next::Done, "the failed one is not promoted");
    }

    #[test]
    fn without_a_scheduler_every_trial_runs_to_max_t() {
        let s = Scheduler {
            kind: SchedulerKind::None,
            ..asha(3, 1, 9)
        };
        assert_eq!(
            s.next(&[paused(0, &[(9, 0.5)])], 3),
            Next::Start {
                bracket: 0,
                resource: 9
            }
        );
        assert_eq!(s.next(&[paused(0, &[(9, 0.5)])], 1), Next::Done);
    }

    #[test]
    fn hyperband_shares_trials_out_in_its_proportions() {
        let s = Scheduler {
            kind: SchedulerKind::Hyperband,
            ..asha(3, 1, 9)
        };
        assert_eq!(s.bracket_rungs(0), [1, 3, 9]);
        assert_eq!(s.bracket_rungs(1), [3, 9]);
        assert_eq!(s.bracket_rungs(2), [9]);
        let mut trials = Vec::new();
        for id in 0..17 {
            let Next::Start { bracket, resource } = s.next(&trials, 17) else {
                panic!("start expected")
            };
            assert_eq!(resource, s.bracket_rungs(bracket)[0]);
            let mut t = paused(id, &[]);
            t.bracket = bracket;
            t.busy = true;
            trials.push(t);
        }
        let per: Vec<usize> = (0..3)
            .map(|b| trials.iter().filter(|t| t.bracket == b).count())
            .collect();
        assert_eq!(per, [9, 5, 3]);

        // A lost trial (bracket unknown) counts in no share: the next new trial goes where
        // it would have gone without it.
        let before = s.bracket_for_new(&trials);
        let mut lost = paused(17, &[]);
        lost.bracket = NO_BRACKET;
        trials.push(lost);
        assert_eq!(s.bracket_for_new(&trials), before);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(asha(1, 1, 9).validate().is_err());
        assert!(asha(3, 0, 9).validate().is_err());
        assert!(asha(3, 4, 3).validate().is_err());
        assert!(asha(3, 1, 9).validate().is_ok());
    }
}
