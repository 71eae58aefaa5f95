//! SuperGLUE's JSON Lines files: one object per line.

use std::path::Path;

use super::rows::{RawRow, json_row, numbered_lines};
use crate::error::Result;

/// Reads a SuperGLUE JSONL file (see [`crate::data::Format::Jsonl`]).
pub(super) fn read_jsonl(
    path: &Path,
    text: &str,
    text_a: &str,
    text_b: Option<&str>,
    label: &str,
) -> Result<Vec<RawRow>> {
    let mut label_seen = None;
    numbered_lines(text)
        .map(|(line, raw)| {
            json_row(
                path,
                line,
                raw,
                text_a,
                text_b,
                Some(label),
                &mut label_seen,
            )
        })
        .collect()
}
