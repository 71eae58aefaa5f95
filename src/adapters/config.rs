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
    check_numbers(method, value, "")?;
    let cfg: C = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let reason = if path == "." {
            e.inner().to_string()
        } else {
            format!("field `{path}`: {}", e.inner())
        };
        Error::ConfigField { method, reason }
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// The largest integer a method config may hold (ranks, sizes, factors, token counts): far
/// above any real setting, far below what would exhaust memory before a layer-size check.
pub const MAX_CONFIG_INT: u64 = 1 << 20;

/// Refuses, naming the field, any number in `value` that no config field can mean: an
/// integer above [`MAX_CONFIG_INT`] or a negative one beyond `i32`, or a float that is not
/// finite as f32 (what the model computes in: `1e39` is finite as f64 but not as f32).
fn check_numbers(method: &'static str, value: &serde_json::Value, path: &str) -> Result<()> {
    use serde_json::Value;
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let refuse = |reason: String| {
        Err(Error::ConfigField {
            method,
            reason: format!(
                "field `{}`: {reason}",
                if path.is_empty() { "." } else { path }
            ),
        })
    };
    match value {
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_numbers(method, v, &at(k))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_numbers(method, v, &format!("{path}[{i}]"))),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u > MAX_CONFIG_INT {
                    return refuse(format!("{u} is above the limit {MAX_CONFIG_INT}"));
                }
            } else if let Some(i) = n.as_i64() {
                if i < i64::from(i32::MIN) {
                    return refuse(format!("{i} is out of range"));
                }
            } else if let Some(f) = n.as_f64()
                && !(f.is_finite() && f.abs() <= f64::from(f32::MAX))
            {
                return refuse(format!("{f} is not a finite 32-bit float"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
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
