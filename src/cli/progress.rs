//! A progress bar for training: step, loss, throughput and ETA on stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ttlora::train::{Control, EvalReport, Observer, StepReport, TrainSummary};

/// Draws training progress with indicatif (hidden with `--quiet` or when stderr is no
/// terminal, where the JSONL log is the record).
pub struct ProgressBarObserver {
    bar: ProgressBar,
    loss_ema: Option<f64>,
    tokens: usize,
    start_step: usize,
}

impl ProgressBarObserver {
    /// A bar that is drawn unless `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bar = ProgressBar::hidden();
        if !quiet {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        Self {
            bar,
            loss_ema: None,
            tokens: 0,
            start_step: 0,
        }
    }
}

impl Observer for ProgressBarObserver {
    fn on_start(&mut self, total_steps: usize, start_step: usize) -> Control {
        self.bar.set_length(total_steps as u64);
        self.bar.set_position(start_step as u64);
        self.start_step = start_step;
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps | {msg} | ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar.reset_eta();
        Control::Continue
    }

    fn on_step(&mut self, s: &StepReport) -> Control {
        let ema = match self.loss_ema {
            Some(e) => 0.9 * e + 0.1 * s.loss,
            None => s.loss,
        };
        self.loss_ema = Some(ema);
        self.tokens += s.tokens;
        let tok_s = self.tokens as f64 / s.elapsed_s.max(1e-9);
        self.bar.set_position(s.step as u64);
        self.bar.set_message(format!(
            "loss {ema:.4} | lr {:.2e} | {tok_s:.0} tok/s",
            s.lr
        ));
        Control::Continue
    }

    fn on_eval(&mut self, e: &EvalReport) -> Control {
        let metrics: Vec<String> = e
            .metrics
            .iter()
            // The answer balance is a count; scores get four decimals.
            .map(|(k, v)| {
                if k.starts_with("predicted_") {
                    format!("{k} {v}")
                } else {
                    format!("{k} {v:.4}")
                }
            })
            .collect();
        self.bar.println(format!(
            "step {}: held-out {}{}",
            e.step,
            metrics.join(", "),
            if e.improved { " (best)" } else { "" }
        ));
        Control::Continue
    }

    fn on_end(&mut self, _summary: &TrainSummary) {
        self.bar.finish_and_clear();
    }
}
