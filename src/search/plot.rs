//! The report's plots, as SVG and PNG (plotters; the text is set in DejaVu Sans compiled in,
//! so no system font library is needed): score against trainable parameters with the
//! Pareto front (all methods', and each method's in its colour) and LoRA's rank sweep as a
//! reference line, the optimisation history, the learning curves with rungs and pruned trials
//! marked, and each searched setting's scores at the sensitivity rung.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::search::report::{Report, TrialOutcome};
use crate::search::space::Domain;
use crate::search::status::TrialStatus;

const SIZE: (u32, u32) = (900, 560);
const FONT: &str = "sans-serif";

/// The plots a report has.
#[derive(Debug, Clone, Copy)]
enum Plot {
    /// Held-out score against trainable parameters.
    Front,
    /// Score by trial, best so far.
    History,
    /// Held-out score against resource, per trial.
    Curves,
    /// Score at the sensitivity rung against each searched setting, one panel each.
    Sensitivity,
}

impl Plot {
    const ALL: [Plot; 4] = [Plot::Front, Plot::History, Plot::Curves, Plot::Sensitivity];

    fn name(self) -> &'static str {
        match self {
            Plot::Front => "front",
            Plot::History => "history",
            Plot::Curves => "curves",
            Plot::Sensitivity => "sensitivity",
        }
    }

    /// Pixels: the sensitivity plot grows a row of panels per three settings.
    fn size(self, r: &Report) -> (u32, u32) {
        match self {
            Plot::Sensitivity => {
                let rows = sensitivity_panels(r).len().div_ceil(PANELS_PER_ROW).max(1);
                (SIZE.0, 60 + 260 * rows as u32)
            }
            _ => SIZE,
        }
    }
}

/// Panels side by side in the sensitivity plot.
const PANELS_PER_ROW: usize = 3;

/// Registers the compiled-in font once.
fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            tracing::warn!("the compiled-in font did not load; plot text may be missing");
        }
    });
}

/// A plot error, naming the file.
fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Study {
        path: path.to_path_buf(),
        reason: format!("cannot draw the plot: {e}"),
    }
}

/// Writes `NAME.svg` and `NAME.png` for each plot into `dir`, each atomically; returns
/// (name, SVG file name) pairs for the Markdown.
///
/// # Errors
/// A drawing or writing error, naming the file.
pub fn write_plots(r: &Report, dir: &Path) -> Result<Vec<(&'static str, String)>> {
    font();
    let mut written = Vec::new();
    for plot in Plot::ALL {
        let name = plot.name();
        let svg_path = dir.join(format!("{name}.svg"));
        let size = plot.size(r);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            draw(&root, r, plot).map_err(|e| plot_error(&svg_path, e))?;
            root.present().map_err(|e| plot_error(&svg_path, e))?;
        }
        crate::io::write_atomic(&svg_path, svg)?;
        // The PNG encoder writes to a path: a hidden sibling first, then renamed.
        let png_path = dir.join(format!("{name}.png"));
        let tmp = dir.join(format!(".{name}-{}.png", std::process::id()));
        let drawn = {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root, r, plot).and_then(|()| root.present().map_err(|e| e.to_string()))
        };
        if let Err(e) = drawn {
            // The backend wrote what it had when dropped above; a half-drawn file is no use.
            let _ = std::fs::remove_file(&tmp);
            return Err(plot_error(&png_path, e));
        }
        std::fs::rename(&tmp, &png_path).map_err(|source| Error::Io {
            path: png_path.clone(),
            source,
        })?;
        written.push((name, format!("{name}.svg")));
    }
    Ok(written)
}

type Drawn = std::result::Result<(), String>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report, plot: Plot) -> Drawn {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match plot {
        Plot::Front => front(root, r),
        Plot::History => history(root, r),
        Plot::Curves => curves(root, r),
        Plot::Sensitivity => sensitivity(root, r),
    }
}

/// The colour of a method: its place in the space file.
fn method_colour(r: &Report, method: &str) -> RGBColor {
    let i = r.methods().iter().position(|m| m == method).unwrap_or(0);
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// A score range with a margin, for the y axis.
fn score_range<'a>(scores: impl Iterator<Item = &'a f64>) -> std::ops::Range<f64> {
    let finite: Vec<f64> = scores.copied().filter(|s| s.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(0.01);
    (lo - pad)..(hi + pad)
}

/// The Pareto front of `(size, score)` points: in increasing size, each point scoring
/// higher than every point at most its size.
fn front_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for p in best_per_size(points) {
        if p.1 > best {
            best = p.1;
            front.push(p);
        }
    }
    front
}

/// The highest score at each x (points `(size, score)`), in increasing x.
fn best_per_size(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    sorted.dedup_by(|later, kept| later.0 == kept.0);
    sorted
}

fn front<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Drawn {
    let max_t = r.settings.scheduler.max_t;
    // The study's complete trials, then the compared studies' (complete by construction).
    let complete: Vec<&TrialOutcome> = r
        .trials
        .iter()
        .filter(|t| t.resource >= max_t)
        .chain(r.compared.iter().flat_map(|c| &c.trials))
        .filter(|t| t.score.is_finite() && t.params > 0)
        .collect();
    let (lo, hi) = complete
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
            (lo.min(t.params as f64), hi.max(t.params as f64))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 10.0)
    };
    let y = score_range(complete.iter().map(|t| &t.score));
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: held-out score at max_t against trainable parameters",
                r.settings.task
            ),
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("trainable parameters (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("held-out score")
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| e.to_string())?;
    for method in r.methods() {
        let colour = method_colour(r, &method);
        let points: Vec<(f64, f64)> = complete
            .iter()
            .filter(|t| t.config.method == method)
            .map(|t| (t.params as f64, t.score))
            .collect();
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
            .map_err(|e| e.to_string())?
            .label(method.clone())
            .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
        // LoRA's rank sweep, the reference line: the best score at each size (a rank's best
        // learning rate), joined in order of size; every other method its own front.
        let line = if method == "lora" {
            best_per_size(&points)
        } else {
            front_points(&points)
        };
        if line.len() > 1 {
            chart
                .draw_series(LineSeries::new(line, colour.mix(0.7).stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    let all: Vec<(f64, f64)> = complete
        .iter()
        .map(|t| (t.params as f64, t.score))
        .collect();
    chart
        .draw_series(LineSeries::new(front_points(&all), BLACK.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("Pareto front of every trial drawn")
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], BLACK.stroke_width(2)));
    draw_legend(&mut chart)
}

/// The series labels, boxed in the lower right.
fn draw_legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Drawn {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())
}

fn history<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Drawn {
    let max_t = r.settings.scheduler.max_t;
    let n = r.trials.len().max(1) as f64;
    let y = score_range(r.trials.iter().map(|t| &t.score));
    let mut chart = ChartBuilder::on(root)
        .caption(
            "optimisation history: each trial's held-out score at its last rung",
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("trial (in order of creation)")
        .y_desc("held-out score")
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let grey = RGBColor(170, 170, 170);
    chart
        .draw_series(r.trials.iter().filter(|t| t.score.is_finite()).map(|t| {
            let colour = if t.resource >= max_t {
                method_colour(r, &t.config.method).filled()
            } else {
                grey.filled()
            };
            Circle::new((t.id as f64, t.score), 4, colour)
        }))
        .map_err(|e| e.to_string())?;
    let mut best = f64::NEG_INFINITY;
    let mut steps = Vec::new();
    for t in &r.trials {
        if t.resource >= max_t && t.score > best {
            if best.is_finite() {
                steps.push((t.id as f64, best));
            }
            best = t.score;
            steps.push((t.id as f64, best));
        }
    }
    if best.is_finite() {
        steps.push((n - 0.5, best));
    }
    chart
        .draw_series(LineSeries::new(steps, BLACK.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("best at max_t so far (grey: stopped at a lower rung)")
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], BLACK.stroke_width(2)));
    draw_legend(&mut chart)
}

fn curves<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Drawn {
    let s = &r.settings.scheduler;
    let max_t = s.max_t as f64;
    let y = score_range(r.trials.iter().flat_map(|t| t.curve.iter().map(|(_, y)| y)));
    let mut chart = ChartBuilder::on(root)
        .caption("learning curves on the held-out slice", (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t * 1.02, y.clone())
        .map_err(|e| e.to_string())?;
    let unit = match r.settings.resource {
        crate::search::Resource::Epochs => "epochs",
        crate::search::Resource::Steps => "steps",
    };
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc("held-out score")
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let light = RGBColor(200, 200, 200);
    // Every bracket's rungs (HyperBand's later brackets start higher; without a scheduler
    // the one rung is max_t).
    let mut all_rungs: Vec<usize> = (0..s.brackets().len())
        .flat_map(|b| s.bracket_rungs(b))
        .collect();
    all_rungs.sort_unstable();
    all_rungs.dedup();
    for rung in all_rungs {
        let x = rung as f64;
        chart
            .draw_series(LineSeries::new(
                vec![(x, y.start), (x, y.end)],
                light.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
    }
    // Pruned trials first, in grey, so complete ones are drawn over them.
    let mut order: Vec<&TrialOutcome> = r.trials.iter().collect();
    order.sort_by_key(|t| t.status == TrialStatus::Complete);
    for t in order {
        let points: Vec<(f64, f64)> = t
            .curve
            .iter()
            .filter(|(_, y)| y.is_finite())
            .copied()
            .collect();
        if points.is_empty() {
            continue;
        }
        let colour = if t.status == TrialStatus::Complete {
            method_colour(r, &t.config.method)
        } else {
            RGBColor(160, 160, 160)
        };
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 2, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How a sensitivity panel places a setting's values on its x axis.
#[derive(Debug, Clone, PartialEq)]
enum Axis {
    /// The value itself.
    Linear,
    /// Its base-10 logarithm (log ranges; lists of positive numbers spanning 20× or more).
    Log10,
    /// The position of the value in this list (lists of text).
    Categories(Vec<String>),
}

/// One searched setting's panel: `(x, score)` per trial scored at the sensitivity rung.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    /// `method.setting`.
    name: String,
    axis: Axis,
    points: Vec<(f64, f64)>,
}

/// The panels of the sensitivity plot: each method's searched (not fixed) settings, in the
/// space file's order, with the trials' scores at [`Report::sensitivity_rung`].
fn sensitivity_panels(r: &Report) -> Vec<Panel> {
    let rung = r.sensitivity_rung;
    let mut panels = Vec::new();
    for m in &r.settings.space.methods {
        let scored: Vec<(&TrialOutcome, f64)> = r
            .trials
            .iter()
            .filter(|t| t.config.method == m.method)
            .filter_map(|t| {
                let s = t.rungs.iter().find(|(at, s)| *at == rung && s.is_finite());
                s.map(|(_, s)| (t, *s))
            })
            .collect();
        for p in &m.params {
            let axis = match &p.domain {
                Domain::Fixed { .. } => continue,
                Domain::Float { log, .. } | Domain::Int { log, .. } => {
                    if *log {
                        Axis::Log10
                    } else {
                        Axis::Linear
                    }
                }
                Domain::Choice { choices } => {
                    let numbers: Option<Vec<f64>> = choices.iter().map(|c| c.as_f64()).collect();
                    match numbers {
                        Some(v) if v.iter().all(|x| *x > 0.0) => {
                            let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
                                (lo.min(*x), hi.max(*x))
                            });
                            if hi >= 20.0 * lo {
                                Axis::Log10
                            } else {
                                Axis::Linear
                            }
                        }
                        Some(_) => Axis::Linear,
                        None => Axis::Categories(choices.iter().map(choice_label).collect()),
                    }
                }
            };
            let points = scored
                .iter()
                .filter_map(|(t, s)| {
                    let v = t.config.params.get(&p.name)?;
                    let x = match &axis {
                        Axis::Linear => v.as_f64()?,
                        Axis::Log10 => v.as_f64().filter(|x| *x > 0.0)?.log10(),
                        Axis::Categories(labels) => {
                            labels.iter().position(|l| *l == choice_label(v))? as f64
                        }
                    };
                    Some((x, *s))
                })
                .collect();
            panels.push(Panel {
                name: format!("{}.{}", m.method, p.name),
                axis,
                points,
            });
        }
    }
    panels
}

/// The label of a log-axis tick at `x` = log10(value): three significant digits at most,
/// in scientific notation below 0.01.
fn log_tick(x: f64) -> String {
    let v = 10f64.powf(x);
    if v < 0.01 {
        return format!("{v:.0e}");
    }
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// A list value as its panel label: text without JSON quotes.
fn choice_label(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn sensitivity<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Drawn {
    let panels = sensitivity_panels(r);
    let title = format!(
        "sensitivity: held-out score at rung {} against each searched setting",
        r.sensitivity_rung
    );
    let body = root.titled(&title, (FONT, 20)).map_err(|e| e.to_string())?;
    let rows = panels.len().div_ceil(PANELS_PER_ROW).max(1);
    let areas = body.split_evenly((rows, PANELS_PER_ROW));
    let y = score_range(panels.iter().flat_map(|p| p.points.iter().map(|(_, y)| y)));
    for (panel, area) in panels.iter().zip(&areas) {
        let (lo, hi) = match &panel.axis {
            Axis::Categories(labels) => (-0.5, labels.len() as f64 - 0.5),
            _ => {
                let xs = panel.points.iter().map(|(x, _)| *x);
                let lo = xs.clone().fold(f64::INFINITY, f64::min);
                let hi = xs.fold(f64::NEG_INFINITY, f64::max);
                if lo.is_finite() {
                    let pad = ((hi - lo) * 0.08).max(0.1);
                    (lo - pad, hi + pad)
                } else {
                    (0.0, 1.0)
                }
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.name, (FONT, 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(lo..hi, y.clone())
            .map_err(|e| e.to_string())?;
        let axis = panel.axis.clone();
        let x_label = move |x: &f64| match &axis {
            Axis::Linear => format!("{x}"),
            Axis::Log10 => log_tick(*x),
            Axis::Categories(labels) => {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_label_formatter(&x_label).label_style((FONT, 11));
        match &panel.axis {
            Axis::Categories(labels) => mesh.x_labels(labels.len() * 2 + 1),
            Axis::Log10 => mesh.x_labels(4),
            Axis::Linear => mesh.x_labels(6),
        };
        mesh.draw().map_err(|e| e.to_string())?;
        let method = panel.name.split('.').next().unwrap_or_default();
        let colour = method_colour(r, method);
        chart
            .draw_series(
                panel
                    .points
                    .iter()
                    .map(|p| Circle::new(*p, 3, colour.mix(0.8).filled())),
            )
            .map_err(|e| e.to_string())?;
        // The mean score at each value, joined: the trend the table's numbers summarise.
        let means = mean_per_x(&panel.points);
        if means.len() > 1 {
            chart
                .draw_series(LineSeries::new(means, BLACK.stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The mean y at each distinct x, in increasing x.
fn mean_per_x(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for (x, y) in sorted {
        match out.last_mut() {
            Some(last) if last.0 == x => {
                last.1 += y;
                last.2 += 1;
            }
            _ => out.push((x, y, 1)),
        }
    }
    out.into_iter()
        .map(|(x, sum, n)| (x, sum / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_keep_points_no_smaller_one_beats_and_means_group_by_x() {
        let points = [
            (4.0, 0.7),
            (9.0, 0.69),
            (9.0, 0.8),
            (18.0, 0.75),
            (30.0, 0.85),
        ];
        assert_eq!(
            front_points(&points),
            [(4.0, 0.7), (9.0, 0.8), (30.0, 0.85)]
        );
        assert_eq!(
            mean_per_x(&[(2.0, 0.5), (1.0, 0.2), (2.0, 0.7)]),
            [(1.0, 0.2), (2.0, 0.6)]
        );
        let ticks: Vec<String> = [-4.0, -2.0, 0.5, 1.0].map(log_tick).to_vec();
        assert_eq!(ticks, ["1e-4", "0.01", "3.162", "10"]);
    }

    #[test]
    fn the_reference_line_keeps_each_sizes_best_score_in_size_order() {
        let points = [
            (18.0, 0.76),
            (9.0, 0.81),
            (9.0, 0.80),
            (18.0, 0.81),
            (4.0, 0.7),
        ];
        assert_eq!(
            best_per_size(&points),
            [(4.0, 0.7), (9.0, 0.81), (18.0, 0.81)]
        );
    }
}
