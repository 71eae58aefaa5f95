//! One kind of adapter: the [`Method`] trait (name, key prefix, config, builders), where its
//! tensors sit ([`MethodKind`]) and what it is told about the model ([`DefaultSites`],
//! [`VirtualSpec`]).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

use crate::adapters::config::overlay;
use crate::adapters::{Adapter, LayerSpec, MethodConfig, ModuleSet};
use crate::error::{Error, Result};

/// What a method changes in a model; the binding layer (`tuning::attach`) has the one match
/// that decides how each kind is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Adapters on chosen linear layers.
    Layer(LayerPlacement),
    /// Virtual tokens the model reads before the sequence. Not mergeable.
    VirtualTokens(TokenPlacement),
    /// The base model's own weights (full fine-tuning); nothing is attached.
    BaseWeights,
}

/// Where a layer adapter sits on its linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPlacement {
    /// Beside the frozen weight: `y = W0·x + b + ΔW(x)` (the LoRA family). Mergeable.
    Parallel,
    /// After the layer: `y ← y + g(y)` with `g` non-linear (bottleneck adapters). Not
    /// mergeable.
    Serial,
}

/// Where virtual tokens go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// Soft tokens before the input embeddings (prompt tuning).
    Prompt,
    /// Keys and values before every attention layer's own (prefix tuning).
    Prefix,
}

impl TokenPlacement {
    /// The method's registry name (`prompt`, `prefix`).
    pub fn method(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Prefix => "prefix",
        }
    }
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
    /// Key/value heads: `heads`, or fewer under grouped-query attention (PEFT then records
    /// these as a prefix's `num_attention_heads`).
    pub kv_heads: usize,
    /// Width of one layer's keys (or values): `hidden`, or `kv_heads · head_dim` under
    /// grouped-query attention. A prefix holds keys and values of this width per layer.
    pub kv_width: usize,
    /// The word-embedding table `(vocab, hidden)` (prompt init from vocabulary rows).
    pub word_embeddings: Tensor,
    /// Dtype of the trainable tensor.
    pub dtype: DType,
    /// Device of the trainable tensor.
    pub device: Device,
}

impl VirtualSpec {
    /// Values per prefix-tuning token: every layer's key and value (PEFT's table width).
    pub fn prefix_width(&self) -> usize {
        self.layers.saturating_mul(2).saturating_mul(self.kv_width)
    }

    /// Refuses, before anything is allocated, `n` virtual tokens of `width` values each when
    /// the table would outgrow the model's own word-embedding table (at least 65,536
    /// values): a mistaken `num_virtual_tokens`.
    ///
    /// # Errors
    /// [`Error::AdapterTooLarge`] naming the method.
    pub fn check_tokens(&self, method: &'static str, n: usize, width: usize) -> Result<()> {
        let (vocab, hidden) = self.word_embeddings.dims2().unwrap_or((0, 0));
        let limit = vocab.saturating_mul(hidden).max(1 << 16);
        if n.checked_mul(width).is_none_or(|e| e > limit) {
            return Err(Error::AdapterTooLarge {
                method,
                what: "the virtual-token table (num_virtual_tokens x width)".into(),
                dims: vec![n, width],
                layer: [vocab, hidden],
            });
        }
        Ok(())
    }
}

/// A base-model tensor as a [`MethodKind::BaseWeights`] method is asked about it: what the model's
/// walk tags it with, so methods never match model names.
#[derive(Debug, Clone, Copy)]
pub struct BaseTensorInfo<'a> {
    /// Its state-dict name (e.g. `bert.embeddings.word_embeddings.weight`), for messages.
    pub name: &'a str,
    /// Whether it belongs to the embedding module: token, position and type tables, their
    /// layer norm, an input projection.
    pub embedding_module: bool,
}

/// The modules of a model that methods target by default (found by the model from its tagged
/// tensors, so methods never know model names).
#[derive(Debug, Clone)]
pub struct DefaultSites {
    /// Where LoRA-style methods go: PEFT's default target names for the architecture
    /// (e.g. `query`, `value`).
    pub parallel: &'static [&'static str],
    /// The module path of every layer's attention output projection.
    pub attention_output: Vec<String>,
    /// The module path of every layer's feed-forward output projection.
    pub ffn_output: Vec<String>,
}

/// `method`'s default config with the fields of `given` (a JSON object) laid over it: the
/// config a job actually uses.
pub fn resolved_config(method: &dyn Method, given: &serde_json::Value) -> serde_json::Value {
    overlay(&method.default_config(), given)
}

/// Config fields by name, as a shorthand or preset sets them.
pub type ConfigFields = serde_json::Map<String, serde_json::Value>;

/// A CLI shorthand a method may take in place of a config field (`--rank 4` for
/// `{"r": 4}`), so the CLI never asks which method it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// `--rank`: the method's rank.
    Rank,
    /// `--alpha`: the method's scaling.
    Alpha,
    /// `--shape`: a TT core shape in core order, `IN|OUT` (e.g. `64,4,3|3,4,64`).
    Shape,
    /// `--init`: the initialisation scheme.
    Init,
    /// `--tt-path`: the TT forward path.
    TtPath,
}

impl Shorthand {
    /// The flag as typed.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Rank => "--rank",
            Self::Alpha => "--alpha",
            Self::Shape => "--shape",
            Self::Init => "--init",
            Self::TtPath => "--tt-path",
        }
    }
}

/// One kind of adapter: how it is named, configured and built.
///
/// Configs cross from JSON once, in [`parse_config`](Method::parse_config); every other call
/// takes the parsed [`MethodConfig`], which the method turns back into its own type with
/// [`downcast`](crate::adapters::downcast).
pub trait Method: Sync {
    /// Registry name, lowercase, used by `--method` (e.g. `ttlora`).
    fn name(&self) -> &'static str;
    /// `peft_type` written to adapter configs (e.g. `TTLORA`).
    fn peft_type(&self) -> &'static str;
    /// Prefix of every trainable tensor name (e.g. `ttlora_`).
    fn prefix(&self) -> &'static str;
    /// One-line description for `--help` and listings.
    fn summary(&self) -> &'static str;

    /// Parses and validates a config given as JSON (missing fields take the defaults, unknown
    /// fields are refused): `config::parse::<OwnConfig>(self.name(), given)`.
    ///
    /// # Errors
    /// [`Error::ConfigField`] / [`Error::InvalidConfig`] naming the field.
    fn parse_config(&self, given: &serde_json::Value) -> Result<Box<dyn MethodConfig>>;

    /// The method's default config as JSON.
    fn default_config(&self) -> serde_json::Value {
        self.parse_config(&serde_json::json!({}))
            .map(|c| c.to_json())
            .unwrap_or_default()
    }

    /// The config fields the CLI shorthand `flag` sets to `value`; `None` where the flag does
    /// not apply to this method. Default: none applies.
    ///
    /// # Errors
    /// A value the flag cannot take.
    fn shorthand(
        &self,
        flag: Shorthand,
        value: &serde_json::Value,
    ) -> Option<Result<ConfigFields>> {
        let _ = (flag, value);
        None
    }

    /// The config fields the paper's preset (`--preset paper`) sets. Default: none.
    fn paper_preset(&self) -> ConfigFields {
        ConfigFields::new()
    }

    /// The peak learning rate a run uses unless told otherwise. Default 5e-3 (LoRA and
    /// TT-LoRA on MiniLM/GLUE, RESULTS.md); methods that train more or differently say theirs.
    fn default_lr(&self) -> f64 {
        5e-3
    }

    /// What the method changes. Default: adapters beside linear layers.
    fn kind(&self) -> MethodKind {
        MethodKind::Layer(LayerPlacement::Parallel)
    }

    /// The modules the method targets when the user names none. Default: the architecture's
    /// LoRA targets.
    ///
    /// # Errors
    /// A config of another method.
    fn default_targets(
        &self,
        config: &dyn MethodConfig,
        sites: &DefaultSites,
    ) -> Result<ModuleSet> {
        let _ = config;
        Ok(ModuleSet::names(sites.parallel))
    }

    /// Per-module overrides the config itself carries (PEFT's `rank_pattern` and
    /// `alpha_pattern` for LoRA), applied like `--overrides`. Default: none.
    ///
    /// # Errors
    /// A config of another method.
    fn pattern_overrides(
        &self,
        config: &dyn MethodConfig,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let _ = config;
        Ok(BTreeMap::new())
    }

    /// Builds an adapter for one layer. Only [`MethodKind::Layer`] methods build
    /// adapters.
    ///
    /// # Errors
    /// A config that does not fit the layer; a method that attaches no adapters to layers.
    fn build(
        &self,
        config: &dyn MethodConfig,
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

    /// Builds an adapter from a config read from a file (an adapter folder's per-module
    /// config): [`parse_config`](Method::parse_config), then [`build`](Method::build).
    ///
    /// # Errors
    /// As the two.
    fn build_from_json(
        &self,
        config: &serde_json::Value,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Box<dyn Adapter>> {
        self.build(self.parse_config(config)?.as_ref(), layer, rng)
    }

    /// For a [`MethodKind::VirtualTokens`] method: its one trainable tensor
    /// (PEFT's `prompt_embeddings`), freshly initialised for a model like `spec`.
    ///
    /// # Errors
    /// A config of another method; a method without virtual tokens.
    fn build_virtual(
        &self,
        config: &dyn MethodConfig,
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

    /// For a [`MethodKind::BaseWeights`] method: whether the base tensor `tensor` trains under
    /// `config`.
    ///
    /// # Errors
    /// A config of another method.
    fn trains_base_tensor(
        &self,
        config: &dyn MethodConfig,
        tensor: &BaseTensorInfo,
    ) -> Result<bool> {
        let _ = (config, tensor);
        Ok(false)
    }
}
