//! The model families ttlora knows, as a registry like the adapters' `METHODS`: each
//! [`Family`] names the `model_type` values of `config.json` it builds and loads its
//! sequence-classification model from an opened [`ResolvedModel`]. [`load_classifier_from`]
//! dispatches on `model_type` through [`FAMILIES`].
//!
//! # Adding a family
//! 1. A folder `models/<family>/` with `config.rs` (serde from config.json, `from_value`),
//!    `model.rs` (the backbone: every linear an [`adapters::Linear`](crate::adapters::Linear),
//!    HF's module paths, its tensors listed once with `walk::parts!`) and `tests.rs`.
//! 2. Implement [`Backbone`](crate::models::Backbone) and [`BuildBackbone`] for the
//!    backbone (its config, checkpoint prefix, HF head layout), then one line in
//!    [`FAMILIES`]: `&Classifiers::<YourBackbone>::new("name", &["model_type"])`. The
//!    registry test checks that no `model_type` is claimed twice.
//! 3. A tiny random config (`Config::tiny()`) so the method matrix (`tests/methods.rs`) and
//!    the golden test (`tests/golden.rs`) can run every method on it.

use std::marker::PhantomData;
use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::io::ResolvedModel;
use crate::models::bert::Bert;
use crate::models::deberta_v2::DebertaV2;
use crate::models::heads::SequenceClassifier;
use crate::models::{BuildBackbone, Model, Pooling};

/// One model family: the architectures it covers and how it loads them.
pub trait Family: Sync {
    /// Short name for listings (`bert`).
    fn name(&self) -> &'static str;
    /// The `model_type` values of config.json this family builds.
    fn model_types(&self) -> &'static [&'static str];
    /// The sequence-classification model of `model` in `dtype` (`seed` initialises a head
    /// the checkpoint lacks).
    ///
    /// # Errors
    /// The family's config and weight errors.
    fn load_classifier(
        &self,
        model: &ResolvedModel,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Box<dyn Model>>;
}

/// A family whose backbone [`BuildBackbone`] describes, under the shared sequence classifier.
pub struct Classifiers<B> {
    name: &'static str,
    model_types: &'static [&'static str],
    backbone: PhantomData<fn() -> B>,
}

impl<B> Classifiers<B> {
    /// The family `name`, building the `model_types` of config.json.
    pub const fn new(name: &'static str, model_types: &'static [&'static str]) -> Self {
        Self {
            name,
            model_types,
            backbone: PhantomData,
        }
    }
}

impl<B: BuildBackbone + 'static> Family for Classifiers<B> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn model_types(&self) -> &'static [&'static str] {
        self.model_types
    }
    fn load_classifier(
        &self,
        model: &ResolvedModel,
        num_labels: usize,
        pooling: Pooling,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Box<dyn Model>> {
        Ok(Box::new(SequenceClassifier::<B>::load_from(
            model, num_labels, pooling, dtype, device, seed,
        )?))
    }
}

/// Every model family ttlora knows; `model_type` dispatch and listings read this slice.
pub static FAMILIES: &[&dyn Family] = &[
    &Classifiers::<Bert>::new("bert", &["bert", "roberta"]),
    &Classifiers::<DebertaV2>::new("deberta-v2", &["deberta-v2"]),
];

/// Every `model_type` the registry accepts, in registry order.
pub fn model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types())
        .copied()
        .collect()
}

/// Loads the sequence-classification model of any supported family from an HF folder
/// (f32; `seed` initialises a head the checkpoint lacks): [`ResolvedModel::from_dir`] then
/// [`load_classifier_from`].
///
/// # Errors
/// As [`ResolvedModel::from_dir`] and [`load_classifier_from`].
pub fn load_classifier(
    dir: &Path,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn Model>> {
    let model = ResolvedModel::from_dir(dir)?;
    load_classifier_from(&model, num_labels, pooling, device, seed)
}

/// Loads the sequence-classification model of any registered family from an opened model
/// (f32; `seed` initialises a head the checkpoint lacks), dispatching on its config's
/// `model_type`. Opens no file: the config was parsed and the weight files mapped when
/// `model` was opened; only the tensors the model needs are read.
///
/// # Errors
/// [`Error::ModelConfig`] naming `model_type` and the supported values; the family loader's
/// errors otherwise.
pub fn load_classifier_from(
    model: &ResolvedModel,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
    seed: u64,
) -> Result<Box<dyn Model>> {
    let bad = |reason: String| Error::ModelConfig {
        path: model.config_path(),
        reason,
    };
    let supported = model_types().join(", ");
    let Some(model_type) = model.model_type() else {
        return Err(bad(format!(
            "field `model_type` missing or not a string; supported: {supported}"
        )));
    };
    let family = FAMILIES
        .iter()
        .find(|f| f.model_types().contains(&model_type))
        .ok_or_else(|| {
            bad(format!(
                "field `model_type`: unsupported value \"{model_type}\"; supported: {supported}"
            ))
        })?;
    family.load_classifier(model, num_labels, pooling, DType::F32, device, seed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_model_type_is_claimed_twice() {
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        for f in FAMILIES {
            assert!(names.insert(f.name()), "duplicate family {}", f.name());
            for t in f.model_types() {
                assert!(seen.insert(*t), "model_type {t} claimed twice");
            }
        }
        assert_eq!(model_types(), ["bert", "roberta", "deberta-v2"]);
    }
}
