//! What model building adds to an [`io::TensorSource`](crate::io::TensorSource): the encoder's
//! name prefix (`bert.`, `roberta.`, `deberta.`) found in the checkpoint and put before every
//! encoder name, the conversion to the model's dtype, the non-parameter buffers a load report
//! leaves out, and a seeded random source that builds the same models without a checkpoint.
//! Strictness (missing tensor, wrong shape) is the source's: loading fails naming the file,
//! the tensor, the expected and the given shape.

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::io::{LoadReport, TensorSource, TrackedSource};

/// Name endings of non-parameter buffers HF checkpoints carry (DESIGN §5); no model asks for
/// them, so a load report does not call them unused.
const BUFFERS: &[&str] = &["position_ids"];

/// Where the encoder sits in `source`: bare, or under one of `prefixes` (e.g. `bert.` in a
/// `BertFor…` checkpoint), found by looking for `probe`; `family` and `folder` only serve the
/// error.
///
/// # Errors
/// [`Error::WeightTensor`] naming `probe` if it is under none of them.
pub(crate) fn detect_prefix(
    source: &dyn TensorSource,
    probe: &str,
    prefixes: &[&str],
    family: &str,
    folder: &Path,
) -> Result<String> {
    let found = std::iter::once("")
        .chain(prefixes.iter().copied())
        .find(|p| source.contains(&format!("{p}{probe}")));
    found.map(String::from).ok_or_else(|| {
        let also: Vec<String> = prefixes.iter().map(|p| format!("`{p}{probe}`")).collect();
        Error::WeightTensor {
            path: folder.to_path_buf(),
            name: probe.into(),
            reason: format!(
                "missing (also looked for {}); not a {family} checkpoint?",
                also.join(", ")
            ),
        }
    })
}

/// How a tensor of a freshly built (random) model starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// N(0, std²): weights, embeddings and biases.
    Normal,
    /// All ones: layer-norm gains.
    Ones,
    /// All zeros: layer-norm shifts.
    Zeros,
}

enum Source<'a> {
    Checkpoint {
        tensors: TrackedSource<'a>,
        prefix: String,
    },
    Random {
        rng: Box<StdRng>,
        std: f64,
    },
}

/// Hands tensors to a model under construction, from a checkpoint or a seeded RNG, and reports
/// which checkpoint tensors were used.
pub struct Loader<'a> {
    source: Source<'a>,
    dtype: DType,
    device: Device,
    /// Keep linear weights the checkpoint stores in blocks as blocks (f32 CPU models only).
    keep_quantized: bool,
}

/// A linear layer's weight as the loader hands it over.
pub(crate) enum LinearWeight {
    /// A tensor in the loader's dtype.
    Dense(Tensor),
    /// The checkpoint's quantized blocks, kept.
    Quantized(QTensor),
}

impl<'a> Loader<'a> {
    /// Reads from `source`, putting `prefix` (e.g. `bert.`) before every encoder name.
    pub(crate) fn checkpoint(
        source: &'a dyn TensorSource,
        prefix: &str,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            source: Source::Checkpoint {
                tensors: TrackedSource::new(source),
                prefix: prefix.into(),
            },
            dtype,
            device: device.clone(),
            keep_quantized: false,
        }
    }

    /// Keeps linear weights the checkpoint stores quantized in their blocks (when the model
    /// computes in f32 on the CPU, which the quantized product needs).
    pub(crate) fn keep_quantized(mut self, keep: bool) -> Self {
        self.keep_quantized = keep && self.dtype == DType::F32 && self.device.is_cpu();
        self
    }

    /// A linear layer's weight `name` (prefix added) of exactly `shape`: its quantized
    /// blocks when [`keep_quantized`](Self::keep_quantized) is on and the checkpoint stores
    /// it so, else a tensor as [`tensor`](Self::tensor) gives it.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub(crate) fn linear_weight(&mut self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        if let Some(q) = self.kept_blocks(name, shape)? {
            return Ok(LinearWeight::Quantized(q));
        }
        Ok(LinearWeight::Dense(self.tensor(
            name,
            shape,
            Init::Normal,
        )?))
    }

    /// Tensor `name`'s (prefix added) quantized blocks, of exactly `shape`, when
    /// [`keep_quantized`](Self::keep_quantized) is on and the checkpoint stores it so.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub(crate) fn kept_blocks(&mut self, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
        match &mut self.source {
            Source::Checkpoint { tensors, prefix } if self.keep_quantized => {
                tensors.load_quantized(&format!("{prefix}{name}"), shape, &self.device)
            }
            _ => Ok(None),
        }
    }

    /// Draws every tensor from a seeded N(0, std²) (or ones/zeros, per [`Init`]).
    pub(crate) fn random(rng: StdRng, std: f64, dtype: DType, device: &Device) -> Self {
        Self {
            source: Source::Random {
                rng: Box::new(rng),
                std,
            },
            dtype,
            device: device.clone(),
            keep_quantized: false,
        }
    }

    /// Loads `name` from a checkpoint in the loader's dtype.
    fn load(
        tensors: &mut TrackedSource<'_>,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Ok(tensors.load(name, shape, device)?.to_dtype(dtype)?)
    }

    /// The encoder tensor `name` (prefix added) with exactly `shape`.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if it is missing or has another shape.
    pub(crate) fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match &mut self.source {
            Source::Checkpoint { tensors, prefix } => {
                let full = format!("{prefix}{name}");
                Self::load(tensors, &full, shape, self.dtype, &self.device)
            }
            Source::Random { rng, std } => {
                let n: usize = shape.iter().product();
                let data: Vec<f64> = match init {
                    Init::Normal => (0..n)
                        .map(|_| crate::adapters::standard_normal(rng) * *std)
                        .collect(),
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                };
                Ok(Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?)
            }
        }
    }

    /// Whether the encoder tensor `name` (prefix added) exists; a random source has none.
    pub(crate) fn has(&self, name: &str) -> bool {
        match &self.source {
            Source::Checkpoint { tensors, prefix } => {
                tensors.source().contains(&format!("{prefix}{name}"))
            }
            Source::Random { .. } => false,
        }
    }

    /// A head tensor under its exact name (no prefix): `None` if the checkpoint lacks it or the
    /// source is random; checked against `shape` if present.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if present with another shape.
    pub(crate) fn head_tensor(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match &mut self.source {
            Source::Checkpoint { tensors, .. } if tensors.source().contains(name) => Ok(Some(
                Self::load(tensors, name, shape, self.dtype, &self.device)?,
            )),
            _ => Ok(None),
        }
    }

    /// A head tensor that must exist (its partner does).
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if it is missing or has another shape.
    pub(crate) fn head_tensor_required(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match &mut self.source {
            Source::Checkpoint { tensors, .. } => {
                Self::load(tensors, name, shape, self.dtype, &self.device)
            }
            Source::Random { .. } => Err(Error::WeightTensor {
                path: "<random weights>".into(),
                name: name.into(),
                reason: "a random source holds no head tensors".into(),
            }),
        }
    }

    /// What was loaded and what the checkpoint holds besides, without non-parameter buffers
    /// (`position_ids`); empty for a random source.
    pub(crate) fn report(&self) -> LoadReport {
        match &self.source {
            Source::Checkpoint { tensors, .. } => {
                let mut report = tensors.report();
                report
                    .unused
                    .retain(|n| !BUFFERS.iter().any(|b| n.ends_with(b)));
                report
            }
            Source::Random { .. } => LoadReport::default(),
        }
    }

    /// Logs the checkpoint tensors `what` did not use, if any.
    pub(crate) fn log_unused(&self, what: &str) {
        let unused = self.report().unused;
        if !unused.is_empty() {
            tracing::debug!(?unused, "checkpoint tensors not used by the {what}");
        }
    }

    /// The dtype tensors are converted to.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::io::SafetensorsSource;
    use crate::io::fs::TempDir;

    #[test]
    fn the_prefix_is_found_and_buffers_are_not_reported_unused() {
        let dir = TempDir::new("weights-report");
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let map = HashMap::from([
            ("bert.embeddings.word_embeddings.weight".to_string(), t(4)),
            ("bert.embeddings.position_ids".to_string(), t(2)),
            ("classifier.bias".to_string(), t(2)),
            ("cls.predictions.bias".to_string(), t(3)),
        ]);
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
        let src = SafetensorsSource::open(&dir).unwrap();
        let probe = "embeddings.word_embeddings.weight";
        let prefix = detect_prefix(&src, probe, &["roberta.", "bert."], "Bert", &dir).unwrap();
        assert_eq!(prefix, "bert.");
        let err = detect_prefix(&src, "nope", &["bert."], "Bert", &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: tensor `nope` missing (also looked for `bert.nope`); not a Bert checkpoint?",
                dir.display()
            )
        );

        let mut ld = Loader::checkpoint(&src, &prefix, DType::F64, &Device::Cpu);
        assert!(ld.has(probe) && !ld.has("position_ids"));
        let w = ld.tensor(probe, &[4], Init::Normal).unwrap();
        assert_eq!(w.dtype(), DType::F64);
        assert!(ld.head_tensor("classifier.weight", &[2]).unwrap().is_none());
        assert!(ld.head_tensor("classifier.bias", &[2]).unwrap().is_some());
        let report = ld.report();
        assert_eq!(
            report.loaded,
            ["bert.embeddings.word_embeddings.weight", "classifier.bias"]
        );
        assert_eq!(report.unused, ["cls.predictions.bias"]);
    }
}
