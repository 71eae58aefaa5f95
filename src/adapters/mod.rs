//! Adapted linear layers and the adapter methods that can sit on them.
//!
//! Owns: [`Linear`] (frozen W0 and b plus zero or more adapters), the [`Adapter`] trait (one
//! adapted layer's update), the [`Method`] trait (one kind of adapter: its name, key prefix,
//! config and builder) and the method registry [`METHODS`]. Uses `tt/` for TT-LoRA's math and
//! `ops/` for the frozen base matmul. Must not know: model architectures, files, training.
//!
//! # Adding a method
//! 1. Make a folder `adapters/<m>/` with `config.rs` (serde + `Default` + `validate()`),
//!    `layer.rs` (a type implementing [`Adapter`]), `mod.rs` (a unit struct implementing
//!    [`Method`]) and `tests.rs`.
//! 2. Add one line to [`METHODS`] in `registry.rs`. Names and prefixes must be unique; a unit
//!    test checks it.
//! 3. `Adapter::trainable` names every tensor under the method's prefix (`<prefix>…`), so
//!    saving, counting and freezing never look inside the method.

mod adapter;
pub mod bottleneck;
mod config;
pub mod full;
mod init;
mod linear;
pub mod lora;
pub mod loretta;
mod method;
mod module_set;
pub mod prompt;
mod registry;
mod spec;
mod target;
pub mod ttlora;

#[cfg(test)]
mod tests;

pub use adapter::{Adapter, LayerSpec, LoraFactors};
pub use config::{Config, MethodConfig, downcast, overlay, parse};
pub use init::{kaiming_uniform, normal, seeded_rng, standard_normal};
pub use linear::Linear;
pub use method::{
    BaseTensorInfo, ConfigFields, DefaultSites, LayerPlacement, Method, MethodKind, Shorthand,
    TokenPlacement, VirtualSpec, resolved_config,
};
pub use module_set::ModuleSet;
pub use registry::{METHODS, method, method_names};
pub use spec::MethodSpec;
pub use target::{InjectReport, Targeting, inject};
