//! GLUE's tab-separated files: split on tabs, no quoting (rows hold raw `"`).

use std::path::Path;

use super::rows::{RawRow, numbered_lines};
use crate::data::Column;
use crate::error::{Error, Result};

/// Reads a GLUE TSV (see [`crate::data::Format::Tsv`] for the rules).
pub(super) fn read_tsv(
    path: &Path,
    text: &str,
    header: bool,
    width: usize,
    text_a: Column,
    text_b: Option<Column>,
    label: Column,
) -> Result<Vec<RawRow>> {
    let mut lines = numbered_lines(text).peekable();
    let Some(first) = lines
        .peek()
        .map(|(_, l)| l.split('\t').collect::<Vec<&str>>())
    else {
        return Ok(Vec::new()); // an empty file: the caller reports "no examples"
    };
    let has_header = header || first.contains(&text_a.name);

    // Column positions: (text_a, text_b, label, fields per row).
    let (ia, ib, il, width, header_names) = if has_header {
        let names = first;
        lines.next();
        let find = |c: Column| names.iter().position(|n| n.trim() == c.name);
        let missing = |c: Column| Error::DataFile {
            path: path.into(),
            reason: format!(
                "no `{}` column; the header has: {}",
                c.name,
                names.join(", ")
            ),
        };
        let ia = find(text_a).ok_or_else(|| missing(text_a))?;
        let ib = match text_b {
            Some(b) => Some(find(b).ok_or_else(|| missing(b))?),
            None => None,
        };
        (ia, ib, find(label), names.len(), Some(names.join(", ")))
    } else {
        let index = |c: Column| {
            c.index.ok_or_else(|| Error::DataFile {
                path: path.into(),
                reason: format!("no header line naming the `{}` column", c.name),
            })
        };
        let ib = text_b.map(index).transpose()?;
        (index(text_a)?, ib, Some(index(label)?), width, None)
    };

    let mut rows = Vec::new();
    for (line, raw) in lines {
        let fields: Vec<&str> = raw.split('\t').collect();
        if fields.len() != width {
            let shape = match &header_names {
                Some(h) => format!("as in the header: {h}"),
                None => "this file has no header".to_string(),
            };
            return Err(Error::DataRow {
                path: path.into(),
                line,
                reason: format!(
                    "expected {width} tab-separated fields ({shape}), got {}",
                    fields.len()
                ),
            });
        }
        rows.push(RawRow {
            line,
            text_a: fields[ia].to_string(),
            text_b: ib.map(|i| fields[i].to_string()),
            label: il.map(|i| fields[i].to_string()),
        });
    }
    Ok(rows)
}
