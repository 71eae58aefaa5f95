//! What every reader shares: reading a file as text, numbering its lines, a row before its
//! label is interpreted ([`RawRow`]) and turning raw labels into [`Label`]s.

use std::path::{Path, PathBuf};

use crate::data::{Example, Label};
use crate::error::{Error, Result};

/// A row before its label is interpreted.
pub(crate) struct RawRow {
    /// 1-based line where the row starts.
    pub line: usize,
    pub text_a: String,
    pub text_b: Option<String>,
    /// The label as written (JSON bools as `false`/`true`, numbers as printed).
    pub label: Option<String>,
}

/// How raw labels become [`Label`]s.
pub(crate) enum LabelMode {
    /// These class names, in id order.
    Fixed(Vec<String>),
    /// The distinct labels of the file, sorted (numerically when all are integers).
    Infer,
    /// Real-valued scores.
    Score,
}

/// Reads a whole file as UTF-8, dropping a leading BOM.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    if path.exists() {
        // A FIFO or a device would block or never end.
        crate::io::fs::ensure_regular_file(path)?;
    }
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::DataFile {
                path: path.into(),
                reason: "no such file".into(),
            }
        } else {
            Error::Io {
                path: path.into(),
                source,
            }
        }
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        let col = 1 + at
            - bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        Error::DataRow {
            path: path.into(),
            line,
            reason: format!("invalid UTF-8 at byte {col} of the line; expected a UTF-8 text file"),
        }
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Non-blank lines with their 1-based numbers, a trailing `\r` removed.
pub(crate) fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Turns raw rows into examples; also returns the class names used (empty for scores).
pub(crate) fn resolve_labels(
    path: &Path,
    rows: Vec<RawRow>,
    mode: LabelMode,
) -> Result<(Vec<Example>, Vec<String>)> {
    if rows.is_empty() {
        return Err(Error::DataFile {
            path: path.into(),
            reason: "no examples".into(),
        });
    }
    let row_err = |line: usize, reason: String| Error::DataRow {
        path: PathBuf::from(path),
        line,
        reason,
    };
    let classes = match mode {
        LabelMode::Fixed(c) => c,
        LabelMode::Score => Vec::new(),
        LabelMode::Infer => infer_classes(path, &rows)?,
    };
    let is_score = classes.is_empty();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let label = match row.label.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(row_err(row.line, "empty label".into())),
            Some(raw) if is_score => match raw.parse::<f32>() {
                Ok(v) if v.is_finite() => Some(Label::Score(v)),
                _ => {
                    return Err(row_err(
                        row.line,
                        format!("score `{raw}` is not a finite number"),
                    ));
                }
            },
            Some(raw) => match classes.iter().position(|c| c == raw) {
                Some(id) => Some(Label::Class(id as u32)),
                None => {
                    return Err(row_err(
                        row.line,
                        format!(
                            "label `{raw}` is not one of the allowed labels: {}",
                            classes.join(", ")
                        ),
                    ));
                }
            },
        };
        out.push(Example {
            text_a: row.text_a,
            text_b: row.text_b,
            label,
        });
    }
    Ok((out, classes))
}

/// The distinct labels of `rows`, sorted numerically when all are integers, else as strings.
fn infer_classes(path: &Path, rows: &[RawRow]) -> Result<Vec<String>> {
    let mut seen: Vec<String> = Vec::new();
    for row in rows {
        let Some(raw) = row.label.as_deref().map(str::trim) else {
            continue;
        };
        if raw.is_empty() {
            return Err(Error::DataRow {
                path: path.into(),
                line: row.line,
                reason: "empty label".into(),
            });
        }
        if !seen.iter().any(|s| s == raw) {
            seen.push(raw.to_string());
        }
    }
    if seen.is_empty() {
        return Err(Error::DataFile {
            path: path.into(),
            reason: "no labels to infer the classes from".into(),
        });
    }
    if seen.iter().all(|s| s.parse::<i64>().is_ok()) {
        seen.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    } else {
        seen.sort();
    }
    Ok(seen)
}

/// The label of a JSON value as text: strings as they are, bools as `false`/`true`, numbers
/// as printed. `Err` holds what was found instead, for the message.
pub(crate) fn json_label(v: &serde_json::Value) -> std::result::Result<String, String> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(json_kind(other).to_string()),
    }
}

/// "null", "a bool", "a number", "a string", "an array", "an object".
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads one JSON Lines row: `text_a`, optional `text_b` and optional `label` keys (`label`
/// `None`: labels are not read). `label_seen` tracks whether earlier rows had a label, so a
/// file cannot mix both.
pub(crate) fn json_row(
    path: &Path,
    line: usize,
    raw: &str,
    text_a: &str,
    text_b: Option<&str>,
    label: Option<&str>,
    label_seen: &mut Option<bool>,
) -> Result<RawRow> {
    let err = |reason: String| Error::DataRow {
        path: path.into(),
        line,
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let serde_json::Value::Object(obj) = value else {
        return Err(err(format!(
            "expected a JSON object, got {}",
            json_kind(&value)
        )));
    };
    let keys = || {
        obj.keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = |key: &str| -> Result<String> {
        match obj.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(err(format!(
                "`{key}` is {}, expected a string",
                json_kind(other)
            ))),
            None => Err(err(format!("no `{key}` key; the object has: {}", keys()))),
        }
    };
    let a = text(text_a)?;
    let b = text_b.map(text).transpose()?;
    let Some(label) = label else {
        return Ok(RawRow {
            line,
            text_a: a,
            text_b: b,
            label: None,
        });
    };
    let lab = match obj.get(label) {
        None => None,
        Some(v) => Some(json_label(v).map_err(|got| {
            err(format!(
                "`{label}` is {got}, expected a string, number or bool"
            ))
        })?),
    };
    match (*label_seen, lab.is_some()) {
        (Some(true), false) => {
            return Err(err(format!(
                "no `{label}` key, but earlier lines have one; the object has: {}",
                keys()
            )));
        }
        (Some(false), true) => {
            return Err(err(format!(
                "a `{label}` key, but earlier lines have none; label every line or none"
            )));
        }
        _ => *label_seen = Some(lab.is_some()),
    }
    Ok(RawRow {
        line,
        text_a: a,
        text_b: b,
        label: lab,
    })
}
