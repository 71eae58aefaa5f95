//! `ttlora methods`: the registered methods, from the registry itself.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use ttlora::adapters::{LayerPlacement, METHODS, MethodKind, TokenPlacement};

use super::common::JsonArgs;

/// List every fine-tuning method with its placement, default learning rate and config.
///
/// The config is the method's defaults as JSON: every field it accepts in
/// `--adapter-config`, with its default value.
#[derive(Debug, Args)]
pub struct MethodsArgs {
    #[command(flatten)]
    output: JsonArgs,
}

/// Runs `ttlora methods`.
pub fn run(a: MethodsArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for m in METHODS {
        let placement = match m.kind() {
            MethodKind::Layer(LayerPlacement::Parallel) => "beside linear layers (mergeable)",
            MethodKind::Layer(LayerPlacement::Serial) => "after linear layers (not mergeable)",
            MethodKind::BaseWeights => "the base weights",
            MethodKind::VirtualTokens(TokenPlacement::Prompt) => {
                "soft tokens before the input (not mergeable)"
            }
            MethodKind::VirtualTokens(TokenPlacement::Prefix) => {
                "keys and values before each attention's (not mergeable)"
            }
        };
        if a.output.json {
            let row = serde_json::json!({
                "name": m.name(), "peft_type": m.peft_type(), "prefix": m.prefix(),
                "placement": placement, "default_lr": m.default_lr(),
                "summary": m.summary(), "config": m.default_config(),
            });
            writeln!(out, "{row}")?;
        } else {
            writeln!(
                out,
                "{}  ({}, lr {:e})",
                m.name(),
                placement,
                m.default_lr()
            )?;
            writeln!(out, "    {}", m.summary())?;
            writeln!(
                out,
                "    peft_type {}, config {}",
                m.peft_type(),
                m.default_config()
            )?;
        }
    }
    Ok(())
}
