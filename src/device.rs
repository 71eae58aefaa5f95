//! Device selection: the only place a backend feature shows.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N` into a candle device.
///
/// # Errors
/// An unknown name, or `cuda` in a build without the `cuda` feature or without a GPU.
pub fn parse_device(name: &str) -> Result<Device> {
    match check_device_name(name)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => Ok(Device::new_cuda(ordinal)?),
    }
}

/// Checks a device name (`cpu`, `cuda`, `cuda:N`) without opening the device, as before
/// submitting a job that runs on other nodes: the CUDA ordinal, None for the CPU.
///
/// # Errors
/// [`Error::InvalidConfig`] for an unknown name, or CUDA in a build without it.
pub fn check_device_name(name: &str) -> Result<Option<usize>> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(None);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad_device(&name))?,
        None => return Err(bad_device(&name)),
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::InvalidConfig {
            method: "device",
            field: "device",
            reason: "needs a build with `--features cuda`".into(),
            got: name,
        });
    }
    Ok(Some(ordinal))
}

fn bad_device(name: &str) -> Error {
    Error::InvalidConfig {
        method: "device",
        field: "device",
        reason: "must be cpu, cuda or cuda:N".into(),
        got: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("CPU").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert_eq!(
            err,
            "device config: field `device` must be cpu, cuda or cuda:N (got tpu)"
        );
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_one_clear_error() {
        let err = parse_device("cuda").unwrap_err().to_string();
        assert_eq!(
            err,
            "device config: field `device` needs a build with `--features cuda` (got cuda)"
        );
    }
}
