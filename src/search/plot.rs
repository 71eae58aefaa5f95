//! The report's plots, as SVG and PNG (plotters; the text is set in DejaVu Sans compiled in,
//! so no system font library is needed): score against trainable parameters with the
//! Pareto front and LoRA's rank sweep as a reference line, the optimisation history, and the
//! learning curves with rungs and pruned trials marked.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::search::report::{Report, TrialOutcome};
use crate::search::scheduler::rungs;
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
}

impl Plot {
    const ALL: [Plot; 3] = [Plot::Front, Plot::History, Plot::Curves];

    fn name(self) -> &'static str {
        match self {
            Plot::Front => "front",
            Plot::History => "history",
            Plot::Curves => "curves",
        }
    }
}

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
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            draw(&root, r, plot).map_err(|e| plot_error(&svg_path, e))?;
            root.present().map_err(|e| plot_error(&svg_path, e))?;
        }
        crate::io::write_atomic(&svg_path, svg)?;
        // The PNG encoder writes to a path: a hidden sibling first, then renamed.
        let png_path = dir.join(format!("{name}.png"));
        let tmp = dir.join(format!(".{name}-{}.png", std::process::id()));
        {
            let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
            draw(&root, r, plot).map_err(|e| plot_error(&png_path, e))?;
            root.present().map_err(|e| plot_error(&png_path, e))?;
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
        // learning rate), joined in order of size.
        if method == "lora" && points.len() > 1 {
            let sweep = best_per_size(&points);
            chart
                .draw_series(LineSeries::new(sweep, colour.mix(0.6).stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    let front: Vec<(f64, f64)> = r
        .front
        .iter()
        .map(|id| &r.trials[*id])
        .filter(|t| t.params > 0)
        .map(|t| (t.params as f64, t.score))
        .collect();
    chart
        .draw_series(LineSeries::new(front, BLACK.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("Pareto front")
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
    for rung in rungs(s.grace_period, s.reduction_factor, s.max_t) {
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

#[cfg(test)]
mod tests {
    use super::best_per_size;

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
