//! Where a base model's tensors come from, apart from the file format: the [`TensorSource`]
//! trait (names and shapes held, one tensor loaded strictly by name), a [`TrackedSource`] that
//! remembers what a model loader took, and the [`LoadReport`] it gives back (STYLE §4,
//! "Loading reports what happened"). [`SafetensorsSource`](super::SafetensorsSource) is the
//! first implementation; a GGUF file (dequantized at load) is meant to be the second.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

#[cfg(doc)]
use crate::error::Error; // for the `# Errors` links
use crate::error::Result;

/// A read-only store of named tensors: one file, or several behind an index.
///
/// Every tensor comes out as f32, whatever the file stores (half floats converted, quantized
/// blocks dequantized), so a model loader sees one float type for every format and converts
/// to its own dtype itself.
pub trait TensorSource: Send + Sync {
    /// The file errors name for the source as a whole (a safetensors file, a shard index, a
    /// GGUF file): where a missing tensor was looked for.
    fn location(&self) -> &Path;

    /// Every tensor's name, sorted.
    fn names(&self) -> Vec<&str>;

    /// The shape of tensor `name` as it will load (the dequantized shape for quantized
    /// formats); `None` if the source holds no such tensor.
    fn shape(&self, name: &str) -> Option<&[usize]>;

    /// Whether the source holds a tensor of exactly that name.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// Loads tensor `name`, which must have exactly `shape`, as f32 on `device`. f32 is what
    /// every model computes in on CPU; a model built in another dtype converts from it, so
    /// an f64 checkpoint loses its extra precision (none is shipped as f64) and a half-precision
    /// build passes through one f32 copy per tensor.
    ///
    /// # Errors
    /// [`Error::WeightTensor`] naming the file and the tensor: `missing (expected shape …)` if
    /// the source lacks it, `has shape …, expected …` for another shape, or why it could not
    /// be read.
    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor>;

    /// Tensor `name` of exactly `shape` in its quantized blocks, when the source stores it
    /// quantized (a GGUF file's Q4_1, Q8_0, … tensors); `None` for a source or tensor held in
    /// floating point, which [`load`](Self::load) reads.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    fn load_quantized(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let _ = (name, shape, device);
        Ok(None)
    }
}

/// What a loader took from a [`TensorSource`] and what it left there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The tensors loaded, sorted.
    pub loaded: Vec<String>,
    /// The tensors the source holds that nothing asked for, sorted: weights the model ignores
    /// (a pretraining head, buffers), worth a log line so a user can see them.
    pub unused: Vec<String>,
}

/// A [`TensorSource`] that remembers which tensors were loaded through it, so the loader can
/// report what it left ([`report`](Self::report)).
pub struct TrackedSource<'a> {
    source: &'a dyn TensorSource,
    loaded: BTreeSet<String>,
}

impl<'a> TrackedSource<'a> {
    /// Tracks loads from `source`; nothing is loaded yet.
    pub fn new(source: &'a dyn TensorSource) -> Self {
        Self {
            source,
            loaded: BTreeSet::new(),
        }
    }

    /// The underlying source, for lookups that load nothing.
    pub fn source(&self) -> &'a dyn TensorSource {
        self.source
    }

    /// [`TensorSource::load`], recording `name` as loaded when it succeeds.
    ///
    /// # Errors
    /// As [`TensorSource::load`].
    pub fn load(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = self.source.load(name, shape, device)?;
        self.loaded.insert(name.to_string());
        Ok(t)
    }

    /// [`TensorSource::load_quantized`], recording `name` as loaded when it gives blocks.
    ///
    /// # Errors
    /// As [`TensorSource::load_quantized`].
    pub fn load_quantized(
        &mut self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let q = self.source.load_quantized(name, shape, device)?;
        if q.is_some() {
            self.loaded.insert(name.to_string());
        }
        Ok(q)
    }

    /// What was loaded so far and what the source holds besides.
    pub fn report(&self) -> LoadReport {
        LoadReport {
            loaded: self.loaded.iter().cloned().collect(),
            unused: self
                .source
                .names()
                .into_iter()
                .filter(|n| !self.loaded.contains(*n))
                .map(String::from)
                .collect(),
        }
    }
}
