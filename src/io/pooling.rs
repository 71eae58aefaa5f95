//! How an encoder's hidden states become one vector per example: a model's head uses it, and
//! adapter folders record it (`TaskInfo::pooling`), so the type lives with the files.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::io::read_json_if_present;

/// How an encoder's hidden states `(b_sz, seq_len, hidden)` become one vector per example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token (`[CLS]` / `<s>`), through the architecture's own head (HF's
    /// `…ForSequenceClassification`).
    #[default]
    Cls,
    /// The mean over real (unmasked) tokens, as sentence-transformers models are trained.
    Mean,
    /// The last real token of each row (left or right padding), as HF's decoder
    /// `…ForSequenceClassification` models pool.
    #[serde(rename = "last-token")]
    LastToken,
}

impl Pooling {
    /// The names `--pooling` accepts.
    pub const NAMES: &'static [&'static str] = &["cls", "mean", "last-token"];

    /// The pooling a sentence-transformers folder declares in `1_Pooling/config.json`
    /// (`pooling_mode_mean_tokens` / `pooling_mode_cls_token`); `None` if the folder has no
    /// such file or declares another mode.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::ModelConfig`] if the file exists but cannot be read or parsed.
    pub fn from_sentence_transformers(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("1_Pooling").join("config.json");
        let Some(v) = read_json_if_present::<serde_json::Value>(&path)? else {
            return Ok(None);
        };
        let on = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
        Ok(if on("pooling_mode_mean_tokens") {
            Some(Self::Mean)
        } else if on("pooling_mode_cls_token") {
            Some(Self::Cls)
        } else {
            None
        })
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cls => "cls",
            Self::Mean => "mean",
            Self::LastToken => "last-token",
        })
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            "last-token" => Ok(Self::LastToken),
            _ => Err(format!(
                "unknown pooling `{s}`; known: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}
