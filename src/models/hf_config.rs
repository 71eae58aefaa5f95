//! Reading an HF `config.json`: the file, the JSON and the `model_type` check every family
//! does before deserialising its own config type (from text, or from the JSON an
//! [`io::ResolvedModel`](crate::io::ResolvedModel) parsed once).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The config error at `path` with `reason`.
fn bad(path: &Path, reason: String) -> Error {
    Error::ModelConfig {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads the config file at `path` as text.
///
/// # Errors
/// [`Error::Io`] if unreadable.
pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses config text as JSON; `path` is only used in error messages.
///
/// # Errors
/// [`Error::ModelConfig`] if the text is not valid JSON.
pub(crate) fn parse_value(text: &str, path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| bad(path, format!("not valid JSON: {e}")))
}

/// Deserialises parsed config JSON whose `model_type` must be one of `supported` into `T`
/// (not validated); `path` is only used in error messages.
///
/// # Errors
/// [`Error::ModelConfig`] for a missing or unsupported `model_type`, or a field that does not
/// deserialise.
pub(crate) fn from_value<T: DeserializeOwned>(
    value: &serde_json::Value,
    path: &Path,
    supported: &[&str],
) -> Result<T> {
    match value.get("model_type").and_then(|v| v.as_str()) {
        Some(t) if supported.contains(&t) => {}
        Some(t) => {
            return Err(bad(
                path,
                format!(
                    "field `model_type`: unsupported value \"{t}\"; supported: {}",
                    supported.join(", ")
                ),
            ));
        }
        None => {
            return Err(bad(
                path,
                format!(
                    "field `model_type` missing or not a string; supported: {}",
                    supported.join(", ")
                ),
            ));
        }
    }
    crate::io::fs::from_json(value.clone()).map_err(|e| bad(path, e))
}

/// Checks the config's float fields a forward divides by or scales with: each finite and, as
/// f32 (what the model computes in), neither overflowing nor (where `positive`) zero or
/// negative. `fields` are `(name, value, positive)`.
///
/// # Errors
/// [`Error::ModelConfig`] naming the file and the field.
pub(crate) fn check_floats(path: &Path, fields: &[(&str, f64, bool)]) -> Result<()> {
    for &(field, v, positive) in fields {
        let finite = v.is_finite() && v.abs() <= f64::from(f32::MAX);
        if !finite || (positive && v <= 0.0) || v < 0.0 {
            let want = if positive {
                "a finite number > 0"
            } else {
                "a finite number >= 0"
            };
            return Err(bad(
                path,
                format!("field `{field}` must be {want} (got {v})"),
            ));
        }
    }
    Ok(())
}

/// The largest size any config field may give (vocabulary, widths, layers, positions):
/// above every released model, and small enough that no product of two sizes overflows.
pub(crate) const MAX_CONFIG_SIZE: usize = 1 << 24;

/// Checks the config's size fields: each 1 to [`MAX_CONFIG_SIZE`]. `fields` are
/// `(name, value)`.
///
/// # Errors
/// [`Error::ModelConfig`] naming the file and the field.
pub(crate) fn check_sizes(path: &Path, fields: &[(&str, usize)]) -> Result<()> {
    for &(field, v) in fields {
        if v == 0 || v > MAX_CONFIG_SIZE {
            return Err(bad(
                path,
                format!("field `{field}` must be 1 to {MAX_CONFIG_SIZE} (got {v})"),
            ));
        }
    }
    Ok(())
}

/// The sizes every encoder config has, in HF's names, for [`check_encoder`].
pub(crate) struct EncoderSizes {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

/// Checks what BERT-like and DeBERTa configs share: the six sizes 1 to
/// [`MAX_CONFIG_SIZE`], `layer_norm_eps` > 0 and `initializer_range` ≥ 0, both finite.
///
/// # Errors
/// [`Error::ModelConfig`] naming the file and the field.
pub(crate) fn check_encoder(
    path: &Path,
    sizes: &EncoderSizes,
    layer_norm_eps: f64,
    initializer_range: f64,
) -> Result<()> {
    check_floats(
        path,
        &[
            ("layer_norm_eps", layer_norm_eps, true),
            ("initializer_range", initializer_range, false),
        ],
    )?;
    check_sizes(
        path,
        &[
            ("vocab_size", sizes.vocab_size),
            ("hidden_size", sizes.hidden_size),
            ("num_hidden_layers", sizes.num_hidden_layers),
            ("num_attention_heads", sizes.num_attention_heads),
            ("intermediate_size", sizes.intermediate_size),
            ("max_position_embeddings", sizes.max_position_embeddings),
        ],
    )
}
