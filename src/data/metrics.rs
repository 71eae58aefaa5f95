//! Evaluation metrics as GLUE/SuperGLUE define them (DESIGN §6).
//!
//! Conventions follow scikit-learn / scipy, which the GLUE and SuperGLUE reference code call:
//! - F1 is the binary F1 of class 1 (GLUE's MRPC and QQP); 0 when there is no true or predicted
//!   positive (sklearn's `zero_division=0`).
//! - MCC is sklearn's multi-class `matthews_corrcoef`; 0 when undefined (a constant column).
//! - Macro-F1 averages the per-class F1 over the classes present in the golds or the predictions
//!   (sklearn `average="macro"`).
//! - Pearson and Spearman (average ranks for ties) are 0 when one side is constant, where scipy
//!   returns NaN, so a constant early-training prediction does not poison model selection.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::data::{Label, op_error};
use crate::error::{Error, Result};

/// One evaluation metric. All of them are "higher is better".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Fraction of exact class matches.
    Accuracy,
    /// Binary F1 of class 1.
    F1,
    /// Matthews correlation coefficient.
    Mcc,
    /// Pearson correlation of scores.
    Pearson,
    /// Spearman rank correlation of scores.
    Spearman,
    /// Unweighted mean of per-class F1.
    MacroF1,
}

impl Metric {
    /// Every metric, in declaration order.
    pub const ALL: &'static [Metric] = &[
        Metric::Accuracy,
        Metric::F1,
        Metric::Mcc,
        Metric::Pearson,
        Metric::Spearman,
        Metric::MacroF1,
    ];

    /// The metric's name as it appears in reports: `accuracy`, `f1`, `mcc`, `pearson`,
    /// `spearman`, `macro_f1`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::MacroF1 => "macro_f1",
        }
    }

    /// Whether the metric compares scores (true) or classes (false).
    pub fn on_scores(self) -> bool {
        matches!(self, Metric::Pearson | Metric::Spearman)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.name() == wanted || (wanted == "macrof1" && *m == Metric::MacroF1))
            .ok_or_else(|| {
                let known: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
                op_error(
                    "metric",
                    format!("unknown metric `{s}`; expected one of {}", known.join(", ")),
                )
            })
    }
}

/// Computes `metrics` of `preds` against `golds`, keyed by [`Metric::name`].
///
/// Class metrics need [`Label::Class`] on both sides; Pearson/Spearman need [`Label::Score`] on
/// both sides.
///
/// # Errors
/// No examples, different lengths, or a label of the wrong kind (naming its index).
pub fn compute(
    metrics: &[Metric],
    preds: &[Label],
    golds: &[Label],
) -> Result<BTreeMap<String, f64>> {
    if preds.len() != golds.len() {
        return Err(op_error(
            "metrics",
            format!(
                "{} predictions for {} gold labels; expected equal counts",
                preds.len(),
                golds.len()
            ),
        ));
    }
    if golds.is_empty() {
        return Err(op_error("metrics", "no examples to score"));
    }
    let mut out = BTreeMap::new();
    for &metric in metrics {
        let value = if metric.on_scores() {
            let p = scores(metric, preds, "prediction")?;
            let g = scores(metric, golds, "gold label")?;
            match metric {
                Metric::Pearson => pearson(&p, &g),
                _ => spearman(&p, &g),
            }
        } else {
            let p = classes(metric, preds, "prediction")?;
            let g = classes(metric, golds, "gold label")?;
            match metric {
                Metric::Accuracy => accuracy(&p, &g),
                Metric::F1 => binary_f1(&p, &g),
                Metric::Mcc => mcc(&p, &g),
                _ => macro_f1(&p, &g),
            }
        };
        out.insert(metric.name().to_string(), value);
    }
    Ok(out)
}

/// MultiRC's official scores over answer options grouped by question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiRcScores {
    /// F1 of the "true" class over every answer option (F1a).
    pub f1a: f64,
    /// Fraction of questions whose every answer option is predicted right.
    pub exact_match: f64,
}

/// [`MultiRcScores`] of `preds` against `golds` (0 = false, 1 = true per answer option), the
/// options grouped into questions by `groups` (any key; a question's options need not be
/// adjacent).
///
/// # Errors
/// No examples, or slices of different lengths.
pub fn multirc_scores(preds: &[u32], golds: &[u32], groups: &[&str]) -> Result<MultiRcScores> {
    if preds.len() != golds.len() || groups.len() != golds.len() {
        return Err(op_error(
            "MultiRC metrics",
            format!(
                "{} predictions, {} gold labels and {} question keys; expected equal counts",
                preds.len(),
                golds.len(),
                groups.len()
            ),
        ));
    }
    if golds.is_empty() {
        return Err(op_error("MultiRC metrics", "no examples to score"));
    }
    let mut all_right: BTreeMap<&str, bool> = BTreeMap::new();
    for ((p, g), &q) in preds.iter().zip(golds).zip(groups) {
        *all_right.entry(q).or_insert(true) &= p == g;
    }
    let exact = all_right.values().filter(|&&right| right).count();
    Ok(MultiRcScores {
        f1a: binary_f1(preds, golds),
        exact_match: exact as f64 / all_right.len() as f64,
    })
}

fn classes(metric: Metric, labels: &[Label], side: &str) -> Result<Vec<u32>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.class().ok_or_else(|| {
                op_error(
                    "metrics",
                    format!(
                        "{metric} needs class labels, but {side} {i} is a {}",
                        l.kind()
                    ),
                )
            })
        })
        .collect()
}

fn scores(metric: Metric, labels: &[Label], side: &str) -> Result<Vec<f64>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.score().map(f64::from).ok_or_else(|| {
                op_error(
                    "metrics",
                    format!("{metric} needs scores, but {side} {i} is a {}", l.kind()),
                )
            })
        })
        .collect()
}

fn accuracy(p: &[u32], g: &[u32]) -> f64 {
    let hits = p.iter().zip(g).filter(|(a, b)| a == b).count();
    hits as f64 / g.len() as f64
}

/// F1 of one class `c`: `2tp / (2tp + fp + fn)`, 0 when the denominator is 0.
fn class_f1(p: &[u32], g: &[u32], c: u32) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&a, &b) in p.iter().zip(g) {
        match (a == c, b == c) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denom as f64
    }
}

fn binary_f1(p: &[u32], g: &[u32]) -> f64 {
    class_f1(p, g, 1)
}

fn macro_f1(p: &[u32], g: &[u32]) -> f64 {
    let present: std::collections::BTreeSet<u32> = p.iter().chain(g).copied().collect();
    let sum: f64 = present.iter().map(|&c| class_f1(p, g, c)).sum();
    sum / present.len() as f64
}

/// sklearn's multi-class MCC from the confusion matrix:
/// `(c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))`, with `c` correct, `s` samples,
/// `p_k`/`t_k` predicted/true counts of class k; 0 when the denominator is 0.
fn mcc(p: &[u32], g: &[u32]) -> f64 {
    let mut pred_counts: BTreeMap<u32, f64> = BTreeMap::new();
    let mut true_counts: BTreeMap<u32, f64> = BTreeMap::new();
    for (&a, &b) in p.iter().zip(g) {
        *pred_counts.entry(a).or_default() += 1.0;
        *true_counts.entry(b).or_default() += 1.0;
    }
    let s = g.len() as f64;
    let c = p.iter().zip(g).filter(|(a, b)| a == b).count() as f64;
    let pt: f64 = pred_counts
        .iter()
        .map(|(k, pk)| pk * true_counts.get(k).copied().unwrap_or(0.0))
        .sum();
    let pp: f64 = pred_counts.values().map(|v| v * v).sum();
    let tt: f64 = true_counts.values().map(|v| v * v).sum();
    let cov_pt = c * s - pt;
    let cov_pp = s * s - pp;
    let cov_tt = s * s - tt;
    if cov_pp * cov_tt == 0.0 {
        0.0
    } else {
        cov_pt / (cov_pp * cov_tt).sqrt()
    }
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 || !(sxx * syy).is_finite() {
        0.0
    } else {
        (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
    }
}

/// 1-based ranks, ties sharing the average of the ranks they span.
fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cls(v: &[u32]) -> Vec<Label> {
        v.iter().map(|&c| Label::Class(c)).collect()
    }

    fn sc(v: &[f32]) -> Vec<Label> {
        v.iter().map(|&s| Label::Score(s)).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn names_round_trip() {
        for &m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
        }
        assert_eq!("Macro-F1".parse::<Metric>().unwrap(), Metric::MacroF1);
        let err = "auc".parse::<Metric>().unwrap_err().to_string();
        assert!(
            err.contains("unknown metric `auc`") && err.contains("macro_f1"),
            "{err}"
        );
    }

    #[test]
    fn binary_class_metrics_by_hand() {
        // golds 1 1 1 0 0 0 1 0 ; preds 1 0 1 0 1 0 1 1
        // tp = 3 (0,2,6), fp = 2 (4,7), fn = 1 (1), tn = 2 (3,5)
        let g = cls(&[1, 1, 1, 0, 0, 0, 1, 0]);
        let p = cls(&[1, 0, 1, 0, 1, 0, 1, 1]);
        let m = compute(
            &[Metric::Accuracy, Metric::F1, Metric::Mcc, Metric::MacroF1],
            &p,
            &g,
        )
        .unwrap();
        close(m["accuracy"], 5.0 / 8.0);
        close(m["f1"], 6.0 / 9.0); // 2tp / (2tp + fp + fn)
        // MCC = (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (6 − 2) / sqrt(5·4·4·3)
        close(m["mcc"], 4.0 / 240f64.sqrt());
        // class 0: tp 2, fp 1, fn 2 → 4/7; class 1: 6/9
        close(m["macro_f1"], (4.0 / 7.0 + 6.0 / 9.0) / 2.0);
    }

    #[test]
    fn multiclass_mcc_and_macro_f1_by_hand() {
        // golds 0 0 1 1 2 2 ; preds 0 1 1 1 2 0
        let g = cls(&[0, 0, 1, 1, 2, 2]);
        let p = cls(&[0, 1, 1, 1, 2, 0]);
        let m = compute(&[Metric::Mcc, Metric::MacroF1, Metric::Accuracy], &p, &g).unwrap();
        // c = 4, s = 6, p = (2,3,1), t = (2,2,2): Σ p_k t_k = 4+6+2 = 12
        // cov_pt = 24 − 12 = 12; cov_pp = 36 − 14 = 22; cov_tt = 36 − 12 = 24
        close(m["mcc"], 12.0 / (22.0f64 * 24.0).sqrt());
        // F1: class 0: tp1 fp1 fn1 → 1/2; class 1: tp2 fp1 fn0 → 4/5; class 2: tp1 fp0 fn1 → 2/3
        close(m["macro_f1"], (0.5 + 0.8 + 2.0 / 3.0) / 3.0);
        close(m["accuracy"], 4.0 / 6.0);
    }

    #[test]
    fn multirc_f1a_and_exact_match_by_hand() {
        // Question a: 3 options, all right. Question b: 2 options, one wrong. Question c: 1
        // option, right; c's option sits between b's (grouping is by key, not position).
        let golds = [1, 0, 1, 1, 0, 0];
        let preds = [1, 0, 1, 1, 0, 1];
        let groups = ["a", "a", "a", "b", "c", "b"];
        let m = multirc_scores(&preds, &golds, &groups).unwrap();
        // True class: tp 3 (0, 2, 3), fp 1 (5), fn 0 → F1a = 6 / 7.
        close(m.f1a, 6.0 / 7.0);
        // a and c exactly right, b not: 2 of 3 questions.
        close(m.exact_match, 2.0 / 3.0);
        assert!(multirc_scores(&preds, &golds, &groups[..5]).is_err());
        assert!(multirc_scores(&[], &[], &[]).is_err());
    }

    #[test]
    fn degenerate_class_cases_are_zero_not_nan() {
        // All predictions the same class: MCC undefined → 0; no positives anywhere: F1 → 0.
        let g = cls(&[0, 1, 0, 1]);
        let p = cls(&[0, 0, 0, 0]);
        let m = compute(&[Metric::Mcc, Metric::F1], &p, &g).unwrap();
        assert_eq!(m["mcc"], 0.0);
        assert_eq!(m["f1"], 0.0);
        let none = cls(&[0, 0]);
        let m = compute(&[Metric::F1, Metric::Mcc, Metric::Accuracy], &none, &none).unwrap();
        assert_eq!((m["f1"], m["mcc"], m["accuracy"]), (0.0, 0.0, 1.0));
        // Perfect and perfectly wrong binary predictions.
        let m = compute(&[Metric::Mcc], &g, &g).unwrap();
        close(m["mcc"], 1.0);
        let m = compute(&[Metric::Mcc], &cls(&[1, 0, 1, 0]), &g).unwrap();
        close(m["mcc"], -1.0);
        // Macro-F1 counts a class that appears only in the predictions.
        let m = compute(&[Metric::MacroF1], &cls(&[0, 2]), &cls(&[0, 0])).unwrap();
        close(m["macro_f1"], (2.0 / 3.0 + 0.0) / 2.0);
    }

    #[test]
    fn pearson_and_spearman_by_hand() {
        let x = sc(&[1.0, 2.0, 3.0, 4.0]);
        let y = sc(&[2.0, 4.0, 6.0, 9.0]);
        let m = compute(&[Metric::Pearson, Metric::Spearman], &x, &y).unwrap();
        // mean x 2.5, mean y 5.25; dx = -1.5 -.5 .5 1.5; dy = -3.25 -1.25 .75 3.75
        // sxy = 4.875 + .625 + .375 + 5.625 = 11.5; sxx = 5; syy = 10.5625+1.5625+.5625+14.0625
        close(m["pearson"], 11.5 / (5.0f64 * 26.75).sqrt());
        close(m["spearman"], 1.0); // monotone
    }

    #[test]
    fn spearman_uses_average_ranks_for_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 30.0]),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        assert_eq!(average_ranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
        // x ranks 1 2.5 2.5 4; y ranks 1 2 3 4 (y = 1 2 3 4):
        // dx = -1.5 0 0 1.5; dy = -1.5 -.5 .5 1.5 → sxy = 4.5, sxx = 4.5, syy = 5
        let m = compute(
            &[Metric::Spearman],
            &sc(&[10.0, 20.0, 20.0, 30.0]),
            &sc(&[1.0, 2.0, 3.0, 4.0]),
        )
        .unwrap();
        close(m["spearman"], 4.5 / (4.5f64 * 5.0).sqrt());
        // Reversed order → −1.
        let m = compute(
            &[Metric::Spearman],
            &sc(&[3.0, 2.0, 1.0]),
            &sc(&[1.0, 2.0, 3.0]),
        )
        .unwrap();
        close(m["spearman"], -1.0);
    }

    #[test]
    fn constant_scores_give_zero_correlation() {
        let m = compute(
            &[Metric::Pearson, Metric::Spearman],
            &sc(&[2.0, 2.0, 2.0]),
            &sc(&[1.0, 2.0, 3.0]),
        )
        .unwrap();
        assert_eq!((m["pearson"], m["spearman"]), (0.0, 0.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let err = compute(&[Metric::Accuracy], &cls(&[1]), &cls(&[1, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metrics: 1 predictions for 2 gold labels; expected equal counts"
        );
        let err = compute(&[Metric::Accuracy], &[], &[]).unwrap_err();
        assert_eq!(err.to_string(), "metrics: no examples to score");
        let err = compute(&[Metric::Pearson], &sc(&[1.0, 2.0]), &cls(&[1, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metrics: pearson needs scores, but gold label 0 is a class"
        );
        let err = compute(
            &[Metric::F1],
            &[Label::Class(1), Label::Score(0.5)],
            &cls(&[1, 0]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metrics: f1 needs class labels, but prediction 1 is a score"
        );
    }
}
