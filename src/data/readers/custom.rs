//! Custom task files: `.csv` (RFC 4180 quoting), `.tsv` (no quoting) and `.jsonl`.
//!
//! CSV and TSV files need a header row naming the columns. CSV fields may be quoted with `"`;
//! inside quotes, `""` is a literal quote and commas and line breaks are part of the field. A
//! `"` inside an unquoted field is kept literally (as Python's `csv` and pandas do). TSV fields
//! are split on tabs with no quoting, like GLUE's files (write them with
//! `quoting=csv.QUOTE_NONE`).

use std::path::Path;

use super::rows::{LabelMode, RawRow, json_row, numbered_lines, read_text, resolve_labels};
use crate::data::Example;
use crate::error::{Error, Result};

/// Which columns (CSV/TSV header names, or JSONL keys) of a custom file hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomColumns {
    /// The first (or only) text.
    pub text: String,
    /// The second text, for pair tasks.
    pub text_pair: Option<String>,
    /// The label.
    pub label: String,
}

/// How the labels of a custom file are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomLabels {
    /// Classes are the distinct labels found in the file, sorted (numerically when all are
    /// integers, else as strings), so the order does not depend on row order. Read the train
    /// file this way, then pass its classes as [`CustomLabels::Classes`] for the dev file.
    Infer,
    /// These classes, in label-id order; any other label is an error.
    Classes(Vec<String>),
    /// Real-valued scores (regression).
    Score,
}

/// Reads a custom `.csv`, `.tsv` or `.jsonl` file. Returns the examples and the class names in
/// label-id order (empty for [`CustomLabels::Score`]).
///
/// # Errors
/// A missing or non-UTF-8 file, an unsupported extension, a missing column (naming those
/// present) or key, a row with the wrong number of fields, unbalanced CSV quotes, malformed
/// JSON, an empty label, a label outside `labels` (naming the allowed ones), a score that is
/// not a finite number, or no examples.
pub fn read_custom(
    path: &Path,
    cols: &CustomColumns,
    labels: &CustomLabels,
) -> Result<(Vec<Example>, Vec<String>)> {
    let rows = raw_rows(
        path,
        &cols.text,
        cols.text_pair.as_deref(),
        Some(&cols.label),
    )?;
    if let Some(row) = rows.iter().find(|r| r.label.is_none()) {
        return Err(Error::DataRow {
            path: path.into(),
            line: row.line,
            reason: format!("no `{}` key; custom files must be labelled", cols.label),
        });
    }
    let mode = match labels {
        CustomLabels::Infer => LabelMode::Infer,
        CustomLabels::Classes(c) => LabelMode::Fixed(c.clone()),
        CustomLabels::Score => LabelMode::Score,
    };
    resolve_labels(path, rows, mode)
}

/// Reads texts to predict on, without labels (any label column is ignored): a `.csv`, `.tsv`
/// or `.jsonl` file with the `text` (and `text_pair`) column or key, or a `.txt` file with one
/// text per non-blank line (the column names are then unused).
///
/// # Errors
/// As [`read_custom`], less the label checks.
pub fn read_texts(path: &Path, text: &str, text_pair: Option<&str>) -> Result<Vec<Example>> {
    let rows = raw_rows(path, text, text_pair, None)?;
    if rows.is_empty() {
        return Err(Error::DataFile {
            path: path.into(),
            reason: "no examples".into(),
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| Example {
            text_a: r.text_a,
            text_b: r.text_b,
            label: None,
        })
        .collect())
}

/// The rows of a custom file, by extension; labels are read only when `label` is given.
fn raw_rows(
    path: &Path,
    text: &str,
    text_pair: Option<&str>,
    label: Option<&str>,
) -> Result<Vec<RawRow>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let txt_ok = label.is_none() && ext == "txt";
    if !matches!(ext.as_str(), "csv" | "tsv" | "jsonl") && !txt_ok {
        let allowed = if label.is_none() {
            ".csv, .tsv, .jsonl or .txt"
        } else {
            ".csv, .tsv or .jsonl"
        };
        return Err(Error::DataFile {
            path: path.into(),
            reason: format!(
                "unsupported file type `{}`; expected {allowed}",
                if ext.is_empty() {
                    "(no extension)"
                } else {
                    &ext
                }
            ),
        });
    }
    let content = read_text(path)?;
    match ext.as_str() {
        "csv" => tabular(path, parse_csv(path, &content)?, text, text_pair, label),
        "tsv" => {
            let records = numbered_lines(&content)
                .map(|(line, l)| (line, l.split('\t').map(str::to_string).collect()))
                .collect();
            tabular(path, records, text, text_pair, label)
        }
        "txt" => Ok(numbered_lines(&content)
            .map(|(line, l)| RawRow {
                line,
                text_a: l.to_string(),
                text_b: None,
                label: None,
            })
            .collect()),
        _ => {
            let mut label_seen = None;
            numbered_lines(&content)
                .map(|(line, raw)| {
                    json_row(path, line, raw, text, text_pair, label, &mut label_seen)
                })
                .collect()
        }
    }
}

/// Header-first records → raw rows, columns found by name.
fn tabular(
    path: &Path,
    records: Vec<(usize, Vec<String>)>,
    text: &str,
    text_pair: Option<&str>,
    label: Option<&str>,
) -> Result<Vec<RawRow>> {
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(Error::DataFile {
            path: path.into(),
            reason: "no examples (the file is empty; expected a header row first)".into(),
        });
    };
    let names = header.iter().map(|h| h.trim()).collect::<Vec<_>>();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::DataFile {
                path: path.into(),
                reason: format!("no `{name}` column; the header has: {}", names.join(", ")),
            })
    };
    let ia = find(text)?;
    let ib = text_pair.map(find).transpose()?;
    let il = label.map(find).transpose()?;
    let mut rows = Vec::new();
    for (line, mut fields) in records {
        if fields.len() != names.len() {
            return Err(Error::DataRow {
                path: path.into(),
                line,
                reason: format!(
                    "expected {} fields (as in the header: {}), got {}",
                    names.len(),
                    names.join(", "),
                    fields.len()
                ),
            });
        }
        let mut take = |i: usize| std::mem::take(&mut fields[i]);
        let label = il.map(&mut take);
        let text_b = ib.map(&mut take);
        rows.push(RawRow {
            line,
            text_a: take(ia),
            text_b,
            label,
        });
    }
    Ok(rows)
}

/// Splits CSV text into records of fields, each with the 1-based line where it starts.
/// Blank lines are skipped.
pub(crate) fn parse_csv(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let err = |line: usize, reason: String| Error::DataRow {
        path: path.into(),
        line,
        reason,
    };
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // the current field began with a quote
    let mut in_quotes = false; // inside a quoted section
    let mut line = 1;
    let mut start_line = 1; // where the current record starts
    let mut quote_line = 1; // where the open quote is
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                // A CRLF inside quotes is a line break of the field: keep just the `\n`.
                '\r' if chars.peek() == Some(&'\n') => {}
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                let blank = fields.is_empty() && field.is_empty() && !quoted;
                fields.push(std::mem::take(&mut field));
                let record = std::mem::take(&mut fields);
                if !blank {
                    records.push((start_line, record));
                }
                quoted = false;
                line += 1;
                start_line = line;
            }
            '"' if field.is_empty() && !quoted => {
                quoted = true;
                in_quotes = true;
                quote_line = line;
            }
            _ if quoted => {
                return Err(err(
                    line,
                    format!(
                        "field {}: expected `,` or a line end after the closing quote, got `{}`",
                        fields.len() + 1,
                        c.escape_default()
                    ),
                ));
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(err(
            quote_line,
            format!(
                "field {}: the quote opened on this line is never closed",
                fields.len() + 1
            ),
        ));
    }
    if !(fields.is_empty() && field.is_empty() && !quoted) {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Vec<(usize, Vec<String>)> {
        parse_csv(Path::new("t.csv"), text).unwrap()
    }

    fn rec(line: usize, fields: &[&str]) -> (usize, Vec<String>) {
        (line, fields.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn csv_quoting_follows_rfc_4180() {
        assert_eq!(
            csv("a,b\n\"x, y\",\"say \"\"hi\"\"\"\n"),
            vec![rec(1, &["a", "b"]), rec(2, &["x, y", "say \"hi\""])]
        );
        // A line break inside quotes; records report the line they start on.
        assert_eq!(
            csv("a,b\r\n\"one\r\ntwo\",3\r\n4,5"),
            vec![
                rec(1, &["a", "b"]),
                rec(2, &["one\ntwo", "3"]),
                rec(4, &["4", "5"])
            ]
        );
        // Empty fields, empty quoted fields, blank lines, a literal quote in an unquoted field.
        assert_eq!(
            csv("a,b,c\n\n,\"\",5'11\"\n"),
            vec![rec(1, &["a", "b", "c"]), rec(3, &["", "", "5'11\""])]
        );
        // A lone empty quoted field is a record, not a blank line.
        assert_eq!(csv("\"\"\n"), vec![rec(1, &[""])]);
        assert!(csv("").is_empty());
    }

    #[test]
    fn csv_errors_name_line_and_field() {
        let err = parse_csv(Path::new("t.csv"), "a,b\n1,\"open\n2,3\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:2: field 2: the quote opened on this line is never closed"
        );
        let err = parse_csv(Path::new("t.csv"), "a,b\n\"x\"y,2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:2: field 1: expected `,` or a line end after the closing quote, got `y`"
        );
    }
}
