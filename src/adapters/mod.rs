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

pub mod bottleneck;
pub mod full;
mod init;
mod linear;
pub mod lora;
pub mod loretta;
pub mod prompt;
mod registry;
mod target;
pub mod ttlora;

#[cfg(test)]
mod tests;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;

use crate::error::{Error, Result};

pub use init::{kaiming_uniform, normal, seeded_rng, standard_normal};
pub use linear::Linear;
pub use registry::{METHODS, method, method_names};
pub use target::{InjectReport, ModuleSet, Targeting, inject};

/// What a method needs to know about the layer it builds an adapter for.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Input features of the frozen weight (columns of W0).
    pub in_features: usize,
    /// Output features (rows of W0).
    pub out_features: usize,
    /// Dtype of the trainable tensors.
    pub dtype: DType,
    /// Device of the trainable tensors.
    pub device: Device,
    /// The layer's frozen weight W0 `(out, in)`, for methods whose update depends on it
    /// (DoRA); `None` where it is not at hand (reading a folder without its base model).
    pub weight: Option<Tensor>,
}

impl LayerSpec {
    /// The spec of an existing layer: its sizes, dtype, device and weight.
    pub fn for_layer(layer: &Linear) -> Self {
        let w = layer.weight();
        Self {
            in_features: layer.in_features(),
            out_features: layer.out_features(),
            dtype: w.dtype(),
            device: w.device().clone(),
            weight: Some(w.clone()),
        }
    }
}

/// Where a method's trainable tensors sit in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On chosen linear layers, beside the frozen weight: `y = W0·x + b + ΔW(x)` (the LoRA
    /// family). Mergeable.
    Parallel,
    /// On chosen linear layers, after them: `y ← y + g(y)` with `g` non-linear (bottleneck
    /// adapters). Not mergeable.
    Serial,
    /// The base model's own weights (full fine-tuning); nothing is attached.
    Base,
    /// Soft tokens before the input embeddings (prompt tuning). Not mergeable.
    Prompt,
    /// Keys and values before every attention layer's own (prefix tuning). Not mergeable.
    Prefix,
}

/// What a prompt-learning method needs to know about the model it builds tokens for.
#[derive(Debug, Clone)]
pub struct VirtualSpec {
    /// Transformer layers.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Attention heads (recorded in PEFT's config).
    pub heads: usize,
    /// The word-embedding table `(vocab, hidden)` (prompt init from vocabulary rows).
    pub word_embeddings: Tensor,
    /// Dtype of the trainable tensor.
    pub dtype: DType,
    /// Device of the trainable tensor.
    pub device: Device,
}

/// The modules of an architecture that methods target by default (declared by the model,
/// so methods never know model names).
#[derive(Debug, Clone, Copy)]
pub struct DefaultSites {
    /// Where LoRA-style methods go: PEFT's default target names for the architecture
    /// (e.g. `query`, `value`).
    pub parallel: &'static [&'static str],
    /// Full-match regex of every layer's attention output projection.
    pub attention_output: &'static str,
    /// Full-match regex of every layer's feed-forward output projection.
    pub ffn_output: &'static str,
}

/// One adapter on one linear layer.
///
/// A [`Placement::Parallel`] adapter adds an update ΔW (already scaled) to the layer's input
/// path, `y += ΔW(x)`; a [`Placement::Serial`] one maps the layer's output, `y ← y + g(y)`.
///
/// Required: [`forward_delta`](Adapter::forward_delta), [`delta_weight`](Adapter::delta_weight),
/// [`trainable`](Adapter::trainable) and the sizes; provided: parameter counting and merging.
pub trait Adapter: Send + Sync {
    /// The method's registry name (`lora`, `ttlora`).
    fn method(&self) -> &'static str;
    /// Input features the adapter expects (the layer's output width when serial).
    fn in_features(&self) -> usize;
    /// Output features the adapter produces.
    fn out_features(&self) -> usize;

    /// Whether the adapter acts on the layer's output (`y ← y + g(y)`) instead of beside it.
    fn serial(&self) -> bool {
        false
    }

    /// The adapter's term for a batch, already scaled: `ΔW(x)` for `x: (n, in)` when parallel,
    /// `g(y)` for the layer output `y: (n, out)` when serial; `(n, out)` either way. `train`
    /// enables dropout and similar training-only behaviour.
    ///
    /// # Errors
    /// A shape, dtype or device mismatch.
    fn forward_delta(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// The scaled dense update ΔW, shape `(out, in)`, so that merging is `W0 + ΔW`.
    ///
    /// # Errors
    /// As the underlying tensor ops; [`Error::NotMergeable`] for a non-linear (serial) adapter.
    fn delta_weight(&self) -> Result<Tensor>;

    /// The trainable tensors, named under the method's prefix (e.g. `ttlora_cores.0`).
    fn trainable(&self) -> Vec<(String, Var)>;

    /// The method config that rebuilds an adapter of exactly this structure (shapes, ranks,
    /// scaling) for this layer, with every planned value written out. Loaders build from it
    /// and then overwrite the trainable tensors, so an init scheme it names is irrelevant.
    fn config(&self) -> serde_json::Value;

    /// The update as an exact PEFT LoRA, for methods that are one in disguise (LoRA itself,
    /// TT-LoRA through its splitting bond); `None` for methods that are not.
    ///
    /// # Errors
    /// A method that is LoRA-shaped in general but not in this instance (a TT shape without a
    /// splitting bond) says why.
    fn as_lora(&self) -> Result<Option<LoraFactors>> {
        Ok(None)
    }

    /// A short human description of the structure (e.g. `TT [24,4,4|4,4,24] r=5 α=64`).
    fn describe(&self) -> String {
        self.method().to_string()
    }

    /// Number of trainable scalars.
    fn num_params(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// `W0 + ΔW`, computed in f32 and returned in W0's dtype.
    ///
    /// # Errors
    /// [`Error::NonFiniteMerge`] if the result holds NaN or Inf.
    fn merged_weight(&self, name: &str, w0: &Tensor) -> Result<Tensor> {
        combine(name, w0, &self.delta_weight()?, 1.0)
    }

    /// `W − ΔW`, the inverse of [`merged_weight`](Adapter::merged_weight).
    ///
    /// # Errors
    /// [`Error::NonFiniteMerge`] if the result holds NaN or Inf.
    fn unmerged_weight(&self, name: &str, w: &Tensor) -> Result<Tensor> {
        combine(name, w, &self.delta_weight()?, -1.0)
    }
}

/// An update written as PEFT LoRA factors: `ΔW = s · B·A` with `s = lora_alpha / r`
/// (`lora_alpha / √r` with rsLoRA), `A: (r, in)`, `B: (out, r)`.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// `lora_A.weight`, `(r, in)`.
    pub a: Tensor,
    /// `lora_B.weight`, `(out, r)`.
    pub b: Tensor,
    /// PEFT's `lora_alpha`.
    pub lora_alpha: f64,
    /// PEFT's `use_rslora`.
    pub use_rslora: bool,
    /// DoRA's magnitude `(out)` (PEFT's `lora_magnitude_vector`, with `use_dora`), if any.
    pub magnitude: Option<Tensor>,
}

/// `w + sign·delta` in f32, checked finite before it is returned.
fn combine(name: &str, w: &Tensor, delta: &Tensor, sign: f64) -> Result<Tensor> {
    let w32 = w.to_dtype(DType::F32)?;
    let d32 = delta.to_dtype(DType::F32)?.to_device(w.device())?;
    if w32.dims() != d32.dims() {
        return Err(Error::TensorShape {
            op: "merge",
            expected: w32.dims().to_vec(),
            got: d32.dims().to_vec(),
        });
    }
    let out = (w32 + (d32 * sign)?)?;
    // 0·x is 0 for every finite x and NaN for NaN/Inf, so one sum detects both.
    let check = out.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if check != 0.0 {
        return Err(Error::NonFiniteMerge { name: name.into() });
    }
    Ok(out.to_dtype(w.dtype())?)
}

/// `method`'s default config with the fields of `given` (a JSON object) laid over it: the
/// config a job actually uses.
pub fn resolved_config(method: &dyn Method, given: &serde_json::Value) -> serde_json::Value {
    let mut cfg = method.default_config();
    if let (Some(dst), Some(src)) = (cfg.as_object_mut(), given.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    cfg
}

/// One kind of adapter: how it is named, configured and built.
pub trait Method: Sync {
    /// Registry name, lowercase, used by `--method` (e.g. `ttlora`).
    fn name(&self) -> &'static str;
    /// `peft_type` written to adapter configs (e.g. `TTLORA`).
    fn peft_type(&self) -> &'static str;
    /// Prefix of every trainable tensor name (e.g. `ttlora_`).
    fn prefix(&self) -> &'static str;
    /// One-line description for `--help` and listings.
    fn summary(&self) -> &'static str;
    /// The method's default config as JSON.
    fn default_config(&self) -> serde_json::Value;

    /// The config field the CLI's `--rank` sets (e.g. `r`), if the method has a rank.
    fn rank_field(&self) -> Option<&'static str> {
        None
    }

    /// The config field the CLI's `--alpha` sets (e.g. `lora_alpha`), if the method scales.
    fn alpha_field(&self) -> Option<&'static str> {
        None
    }

    /// The peak learning rate a run uses unless told otherwise. Default 5e-3 (LoRA and
    /// TT-LoRA on MiniLM/GLUE, RESULTS.md); methods that train more or differently say theirs.
    fn default_lr(&self) -> f64 {
        5e-3
    }

    /// Where the method's trainable tensors sit. Default: beside linear layers.
    fn placement(&self) -> Placement {
        Placement::Parallel
    }

    /// The modules the method targets when the user names none. Default: the architecture's
    /// LoRA targets.
    ///
    /// # Errors
    /// A config that does not parse.
    fn default_targets(
        &self,
        config: &serde_json::Value,
        sites: &DefaultSites,
    ) -> Result<ModuleSet> {
        let _ = config;
        Ok(ModuleSet::names(sites.parallel))
    }

    /// Per-module overrides the config itself carries (PEFT's `rank_pattern` and
    /// `alpha_pattern` for LoRA), applied like `--overrides`. Default: none.
    ///
    /// # Errors
    /// A config that does not parse.
    fn pattern_overrides(
        &self,
        config: &serde_json::Value,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        let _ = config;
        Ok(Default::default())
    }

    /// Checks a config without building anything.
    ///
    /// # Errors
    /// A config that does not parse or validate.
    fn validate_config(&self, config: &serde_json::Value) -> Result<()>;

    /// Builds an adapter for one layer from a JSON config (unknown fields are an error).
    /// Only [`Placement::Parallel`] and [`Placement::Serial`] methods build adapters.
    ///
    /// # Errors
    /// A config that does not parse or validate; a config that does not fit the layer; a
    /// method that attaches no adapters to layers.
    fn build(
        &self,
        config: &serde_json::Value,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        let _ = (config, layer, rng);
        Err(Error::InvalidConfig {
            method: self.name(),
            field: "method",
            reason: "attaches no adapter to a linear layer".into(),
            got: self.name().into(),
        })
    }

    /// For a [`Placement::Prompt`] or [`Placement::Prefix`] method: its one trainable tensor
    /// (PEFT's `prompt_embeddings`), freshly initialised for a model like `spec`.
    ///
    /// # Errors
    /// A config that does not parse or validate; a method without virtual tokens.
    fn build_virtual(
        &self,
        config: &serde_json::Value,
        spec: &VirtualSpec,
        rng: &mut StdRng,
    ) -> Result<Tensor> {
        let _ = (config, spec, rng);
        Err(Error::InvalidConfig {
            method: self.name(),
            field: "method",
            reason: "has no virtual tokens".into(),
            got: self.name().into(),
        })
    }

    /// For a [`Placement::Base`] method: whether the base tensor `name` (a state-dict name,
    /// e.g. `bert.embeddings.word_embeddings.weight`) trains under `config`.
    ///
    /// # Errors
    /// A config that does not parse or validate.
    fn trains_base_tensor(&self, config: &serde_json::Value, name: &str) -> Result<bool> {
        let _ = (config, name);
        Ok(false)
    }
}
