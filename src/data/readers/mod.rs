//! Readers: task files in their official formats ([`read_task_split`], [`read_file`]) and
//! custom CSV/TSV/JSONL files ([`read_custom`]; unlabeled texts to predict on: [`read_texts`]).
//!
//! Every reader reads the whole file as UTF-8 (a leading BOM is dropped, `\r\n` line ends are
//! accepted, blank lines are skipped) and reports problems as [`Error::DataRow`] with the file
//! and 1-based line, or [`Error::DataFile`] for the file as a whole.

mod custom;
mod glue;
mod rows;
mod superglue;

use std::path::Path;

use rows::{LabelMode, resolve_labels};

use crate::data::{Example, Format, LabelKind, Split, TaskSpec};
use crate::error::{Error, Result};

pub use custom::{CustomColumns, CustomLabels, read_custom, read_texts};
pub(crate) use rows::{numbered_lines, read_text};

/// Reads `split` of `spec` from the data root `root` (the folder holding `glue/` and
/// `superglue/`).
///
/// # Errors
/// Everything [`TaskSpec::split_file`] and [`read_file`] report, plus [`Error::DataFile`] when
/// the split's file carries no labels.
pub fn read_task_split(spec: &TaskSpec, root: &Path, split: Split) -> Result<Vec<Example>> {
    let path = spec.split_file(root, split)?;
    let examples = read_file(spec, &path)?;
    if examples.iter().any(|e| e.label.is_none()) {
        let label = match spec.format {
            Format::Tsv { label, .. } => label.name,
            Format::Jsonl { label, .. } => label,
        };
        return Err(Error::DataFile {
            path,
            reason: format!(
                "no labels (no `{label}` column); the {split} split of {} must be labelled",
                spec.display
            ),
        });
    }
    Ok(examples)
}

/// Reads one file in `spec`'s official format. Unlabeled (test) files are accepted: their
/// examples have `label: None`.
///
/// # Errors
/// A missing or non-UTF-8 file, a missing column/key (naming those present), a row with the
/// wrong number of fields, malformed JSON, a label outside the task's classes (naming the
/// allowed ones), a score that is not a finite number, or a file with no examples.
pub fn read_file(spec: &TaskSpec, path: &Path) -> Result<Vec<Example>> {
    let text = read_text(path)?;
    let rows = match spec.format {
        Format::Tsv {
            header,
            width,
            text_a,
            text_b,
            label,
        } => glue::read_tsv(path, &text, header, width, text_a, text_b, label)?,
        Format::Jsonl {
            text_a,
            text_b,
            label,
        } => superglue::read_jsonl(path, &text, text_a, text_b, label)?,
    };
    let mode = match spec.labels {
        LabelKind::Classes(c) => LabelMode::Fixed(c.iter().map(|s| s.to_string()).collect()),
        LabelKind::Score => LabelMode::Score,
    };
    let (examples, _) = resolve_labels(path, rows, mode)?;
    Ok(examples)
}
