//! `ttlora summarize`: the results table of a folder of runs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use ttlora::jobs::results;

/// Print a markdown table (mean ± std over seeds) of the runs in a folder.
///
/// Reads every `<DIR>/*/eval_results.json` written by `ttlora train` and groups them by task
/// and method; metrics are shown in percent.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Folder whose sub-folders are `ttlora train --out` folders.
    dir: PathBuf,
    /// The paper's layout instead: methods in rows, the five GLUE tasks in columns (primary
    /// metric), with trainable parameters, file size, time and peak memory.
    #[arg(long)]
    by_method: bool,
}

/// Runs `ttlora summarize`.
pub fn run(a: SummarizeArgs) -> Result<()> {
    let runs = results::read_runs(&a.dir)?;
    if runs.is_empty() {
        bail!("{}: no */eval_results.json found", a.dir.display());
    }
    let table = if a.by_method {
        results::pivot_table(&runs)
    } else {
        results::markdown_table(&runs)
    };
    std::io::stdout().lock().write_all(table.as_bytes())?;
    Ok(())
}
