//! Strict weight loading for the model families: every tensor a model asks for must exist with
//! exactly the expected shape, or loading fails naming the file, the tensor, the expected and
//! the given shape. A seeded random source builds the same models without a checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

use crate::error::{Error, Result};

/// An HF checkpoint: `model.safetensors`, or the shards of `model.safetensors.index.json`.
pub(crate) struct Checkpoint {
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    /// Which shard holds each tensor.
    route: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens the weights of the model folder `dir`.
    ///
    /// # Errors
    /// [`Error::ModelFile`] if neither file exists, the index is malformed or a file is not
    /// valid safetensors; [`Error::Io`] for an unreadable index.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_paths(dir, &index)?
        } else {
            return Err(Error::ModelFile {
                path: dir.to_path_buf(),
                reason: "no model.safetensors or model.safetensors.index.json".into(),
            });
        };
        let mut shards = Vec::with_capacity(paths.len());
        let mut route = HashMap::new();
        for path in paths {
            // SAFETY: the file is mapped read-only and every tensor is copied out when loaded;
            // as with any mmap, it must not be truncated or rewritten while the model loads.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::ModelFile {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for (name, _) in st.tensors() {
                route.insert(name, shards.len());
            }
            shards.push((path, st));
        }
        Ok(Self { shards, route })
    }

    /// Whether the checkpoint holds a tensor of that exact name.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.route.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub(crate) fn names(&self) -> BTreeSet<&str> {
        self.route.keys().map(String::as_str).collect()
    }

    /// Loads `name` with exactly `shape`, converted to `dtype` on `device`.
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let shard = self.route.get(name).copied();
        let (path, st) = &self.shards[shard.unwrap_or(0)];
        let err = |reason: String| Error::WeightTensor {
            path: path.clone(),
            name: name.into(),
            reason,
        };
        if shard.is_none() {
            return Err(err(format!("missing (expected shape {shape:?})")));
        }
        let view = st.get(name).map_err(|e| err(e.to_string()))?;
        if view.shape() != shape {
            return Err(err(format!(
                "has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        let t = st.load(name, device).map_err(|e| err(e.to_string()))?;
        Ok(t.to_dtype(dtype)?)
    }
}

/// The distinct shard files named by a `model.safetensors.index.json`.
fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| Error::ModelFile {
        path: index.to_path_buf(),
        reason: format!("not a safetensors index: {e}"),
    })?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    if files.is_empty() {
        return Err(Error::ModelFile {
            path: index.to_path_buf(),
            reason: "the weight_map is empty".into(),
        });
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
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
        ckpt: &'a Checkpoint,
        prefix: String,
    },
    Random {
        rng: Box<StdRng>,
        std: f64,
    },
}

/// Hands tensors to a model under construction, from a checkpoint or a seeded RNG, and records
/// which checkpoint tensors were used.
pub(crate) struct Loader<'a> {
    source: Source<'a>,
    dtype: DType,
    device: Device,
    used: BTreeSet<String>,
}

impl<'a> Loader<'a> {
    /// Reads from `ckpt`, putting `prefix` (e.g. `bert.`) before every encoder name.
    pub(crate) fn checkpoint(
        ckpt: &'a Checkpoint,
        prefix: &str,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            source: Source::Checkpoint {
                ckpt,
                prefix: prefix.into(),
            },
            dtype,
            device: device.clone(),
            used: BTreeSet::new(),
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
            used: BTreeSet::new(),
        }
    }

    /// The encoder tensor `name` (prefix added) with exactly `shape`.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if it is missing or has another shape.
    pub(crate) fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match &mut self.source {
            Source::Checkpoint { ckpt, prefix } => {
                let full = format!("{prefix}{name}");
                let t = ckpt.load(&full, shape, self.dtype, &self.device)?;
                self.used.insert(full);
                Ok(t)
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
            Source::Checkpoint { ckpt, prefix } => ckpt.contains(&format!("{prefix}{name}")),
            Source::Random { .. } => false,
        }
    }

    /// A head tensor under its exact name (no prefix): `None` if the checkpoint lacks it or the
    /// source is random; checked against `shape` if present.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if present with another shape.
    pub(crate) fn head_tensor(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match &self.source {
            Source::Checkpoint { ckpt, .. } if ckpt.contains(name) => {
                let t = ckpt.load(name, shape, self.dtype, &self.device)?;
                self.used.insert(name.into());
                Ok(Some(t))
            }
            _ => Ok(None),
        }
    }

    /// A head tensor that must exist (its partner does).
    ///
    /// # Errors
    /// [`Error::WeightTensor`] if it is missing or has another shape.
    pub(crate) fn head_tensor_required(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match &self.source {
            Source::Checkpoint { ckpt, .. } => {
                let t = ckpt.load(name, shape, self.dtype, &self.device)?;
                self.used.insert(name.into());
                Ok(t)
            }
            Source::Random { .. } => Err(Error::WeightTensor {
                path: "<random weights>".into(),
                name: name.into(),
                reason: "a random source holds no head tensors".into(),
            }),
        }
    }

    /// Checkpoint tensors no model part asked for, without non-parameter buffers
    /// (`position_ids`); logged so a user can see what a checkpoint carried that we ignore.
    pub(crate) fn unused(&self) -> Vec<String> {
        match &self.source {
            Source::Checkpoint { ckpt, .. } => ckpt
                .names()
                .into_iter()
                .filter(|n| !self.used.contains(*n) && !n.ends_with("position_ids"))
                .map(String::from)
                .collect(),
            Source::Random { .. } => Vec::new(),
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
