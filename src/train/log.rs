//! The machine-readable training log: one JSON object per line for every step, evaluation
//! and the end of the run (`{"event": "step", …}`), flushed as it is written so a crashed or
//! running job can be followed with `tail -f`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::train::{Control, EvalReport, Observer, StepReport, TrainSummary};

/// An [`Observer`] appending JSON lines to a file.
pub struct JsonlLog {
    file: std::io::BufWriter<std::fs::File>,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    event: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

impl JsonlLog {
    /// Opens `path` for appending (a resumed run continues the same log).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened.
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file: std::io::BufWriter::new(file),
        })
    }

    fn write<T: Serialize>(&mut self, event: &str, body: &T) {
        // A log line that cannot be written must not kill a long training run.
        if let Ok(line) = serde_json::to_string(&Line { event, body }) {
            let _ = writeln!(self.file, "{line}");
            let _ = self.file.flush();
        }
    }
}

impl Observer for JsonlLog {
    fn on_start(&mut self, total_steps: usize, start_step: usize) -> Control {
        self.write(
            "start",
            &serde_json::json!({ "total_steps": total_steps, "start_step": start_step }),
        );
        Control::Continue
    }
    fn on_step(&mut self, step: &StepReport) -> Control {
        self.write("step", step);
        Control::Continue
    }
    fn on_eval(&mut self, eval: &EvalReport) -> Control {
        self.write("eval", eval);
        Control::Continue
    }
    fn on_end(&mut self, summary: &TrainSummary) {
        self.write("end", summary);
    }
}
