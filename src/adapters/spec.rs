//! A method with its validated config ([`MethodSpec`]): what a job is given, built at the door.

use std::fmt::Debug;

use crate::adapters::config::overlay;
use crate::adapters::{Method, MethodConfig, method, resolved_config};
use crate::error::{Error, Result};

/// A method with its config, parsed and validated: what a job is given. Built before any
/// model is loaded or data read, so a bad config fails at once.
#[derive(Clone)]
pub struct MethodSpec {
    method: &'static dyn Method,
    given: serde_json::Value,
    config: Box<dyn MethodConfig>,
}

impl MethodSpec {
    /// `method` with the config fields `given` (a JSON object; missing fields take defaults).
    ///
    /// # Errors
    /// [`Error::ConfigField`] / [`Error::InvalidConfig`] naming the method and field.
    pub fn new(method: &'static dyn Method, given: serde_json::Value) -> Result<Self> {
        if !given.is_object() {
            return Err(Error::ConfigField {
                method: method.name(),
                reason: format!("expected a JSON object, got {given}"),
            });
        }
        let config = method.parse_config(&given)?;
        Ok(Self {
            method,
            given,
            config,
        })
    }

    /// The registered method `name` with the config fields `given`.
    ///
    /// # Errors
    /// [`Error::UnknownMethod`]; as [`MethodSpec::new`].
    pub fn parse(name: &str, given: serde_json::Value) -> Result<Self> {
        Self::new(method(name)?, given)
    }

    /// The method.
    pub fn method(&self) -> &'static dyn Method {
        self.method
    }

    /// The method's registry name.
    pub fn name(&self) -> &'static str {
        self.method.name()
    }

    /// The config fields as the user gave them.
    pub fn given(&self) -> &serde_json::Value {
        &self.given
    }

    /// The parsed config.
    pub fn config(&self) -> &dyn MethodConfig {
        self.config.as_ref()
    }

    /// The config the job uses: this version's defaults with the given fields over them (so
    /// a later change of defaults cannot blur what was run).
    pub fn resolved(&self) -> serde_json::Value {
        resolved_config(self.method, &self.given)
    }

    /// The config with the fields of `patch` over the given ones (a per-module override).
    ///
    /// # Errors
    /// As [`MethodSpec::new`], for the patched config.
    pub fn with_fields(&self, patch: &serde_json::Value) -> Result<Box<dyn MethodConfig>> {
        self.method.parse_config(&overlay(&self.given, patch))
    }
}

impl Debug for MethodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodSpec")
            .field("method", &self.method.name())
            .field("config", &self.config)
            .finish()
    }
}
