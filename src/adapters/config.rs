//! Method configs as typed values: each method's config struct implements [`Config`]; a job
//! carries it type-erased as a [`MethodConfig`] (inside a `MethodSpec`), and JSON is crossed
//! once, where the user's or a file's config enters.

use std::any::Any;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A method's config struct: serde with `#[serde(default, deny_unknown_fields)]`, `Default` as
/// the single source of defaults, and the checks that need no model.
pub trait Config:
    Serialize + DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static
{
    /// Checks every field that can be checked without the layer or model it will meet.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    fn validate(&self) -> Result<()>;

    /// Reads the config from JSON (missing fields take their defaults, unknown fields are
    /// refused) and validates it. Methods whose JSON needs a rewrite first override this.
    ///
    /// # Errors
    /// [`Error::ConfigField`] for JSON that is not this config; [`Config::validate`]'s errors.
    fn from_json(method: &'static str, given: &serde_json::Value) -> Result<Self> {
        deserialize_validated(method, given)
    }
}

/// `value` read as `C` (missing fields take defaults, unknown fields are refused) and
/// validated: [`Config::from_json`]'s default, for overrides that rewrite the JSON first.
///
/// # Errors
/// [`Error::ConfigField`] naming the method; [`Config::validate`]'s errors.
pub fn deserialize_validated<C: Config>(
    method: &'static str,
    value: &serde_json::Value,
) -> Result<C> {
    let cfg: C = serde_json::from_value(value.clone()).map_err(|e| Error::ConfigField {
        method,
        reason: e.to_string(),
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// A validated config of some method, as jobs carry it.
pub trait MethodConfig: Debug + Send + Sync + 'static {
    /// Every field written out, defaults included (what adapter folders and run records keep).
    fn to_json(&self) -> serde_json::Value;
    /// The concrete config, for its own method to take back.
    fn as_any(&self) -> &dyn Any;
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn MethodConfig>;
}

impl<C: Config> MethodConfig for C {
    fn to_json(&self) -> serde_json::Value {
        // A config struct of named fields always serialises (serde_json fails only on maps
        // with non-string keys, which no config has).
        serde_json::to_value(self).unwrap_or_default()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn clone_box(&self) -> Box<dyn MethodConfig> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn MethodConfig> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Parses and validates `given` as `C`, boxed: the body of every [`Method::parse_config`](crate::adapters::Method::parse_config).
///
/// # Errors
/// As [`Config::from_json`].
pub fn parse<C: Config>(
    method: &'static str,
    given: &serde_json::Value,
) -> Result<Box<dyn MethodConfig>> {
    Ok(Box::new(C::from_json(method, given)?))
}

/// `config` as the method's own type `C`.
///
/// # Errors
/// [`Error::ConfigField`] if `config` belongs to another method (a caller's mistake, reported
/// rather than trusted).
pub fn downcast<'a, C: Config>(
    method: &'static str,
    config: &'a dyn MethodConfig,
) -> Result<&'a C> {
    config
        .as_any()
        .downcast_ref::<C>()
        .ok_or_else(|| Error::ConfigField {
            method,
            reason: format!("given another method's config: {config:?}"),
        })
}

/// `base` with the fields of the JSON object `patch` laid over it.
pub fn overlay(base: &serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
    let mut out = base.clone();
    if let (Some(dst), Some(src)) = (out.as_object_mut(), patch.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    out
}
