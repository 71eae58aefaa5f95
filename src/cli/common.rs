//! Flags several commands share, declared once and flattened into each command's args.

use anyhow::Result;
use candle_core::Device;
use clap::Args;

/// `--device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// The parsed device.
    pub fn device(&self) -> Result<Device> {
        Ok(ttlora::parse_device(&self.device)?)
    }
}

/// `--offline`.
#[derive(Debug, Args)]
pub struct OfflineArgs {
    /// Never download: fail if the model is not available locally.
    #[arg(long)]
    pub offline: bool,
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the result as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}
