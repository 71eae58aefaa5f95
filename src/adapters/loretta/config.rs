//! LoRETTA's two configurations.

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::adapters::bottleneck::{BottleneckConfig, NonLinearity, Variant};
use crate::adapters::config::deserialize_validated;
use crate::adapters::ttlora::{TtInit, TtLoraConfig};
use crate::error::{Error, Result};

/// LoRETTA-rep: LoRA whose A `(r, in)` and B `(out, r)` are each a tensor train, scaled α/r.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LorettaRepConfig {
    /// LoRA rank r. Default 8.
    pub r: usize,
    /// α: the update B·A is scaled by α/r. Default 8.
    pub lora_alpha: f64,
    /// Rank of the inner bonds of both trains. Default 5.
    pub tensor_rank: usize,
    /// A's train (TT-LoRA's config of an `(r, in)` matrix: factors, ranks, path); planned when
    /// absent. Its bonds are `tensor_rank` unless it gives `rank` or `ranks` itself. Its `alpha`
    /// and `init` are always the method's (1; A a TT-SVD of a Kaiming-uniform
    /// matrix, B zero): the fields are there because a train config has them, not as options.
    pub a: Option<TtLoraConfig>,
    /// B's train (of an `(out, r)` matrix), as for `a`.
    pub b: Option<TtLoraConfig>,
}

impl Default for LorettaRepConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            tensor_rank: DEFAULT_TENSOR_RANK,
            a: None,
            b: None,
        }
    }
}

impl Config for LorettaRepConfig {
    /// Writes `tensor_rank` into the given trains first, so a train that sets no rank takes
    /// `tensor_rank`.
    fn from_json(method: &'static str, given: &serde_json::Value) -> Result<Self> {
        deserialize_validated(method, &with_tensor_rank(given, &["a", "b"]))
    }

    fn validate(&self) -> Result<()> {
        let cfg = self;
        let bad = |field, got: String| Error::InvalidConfig {
            method: "loretta-rep",
            field,
            reason: "must be >= 1".into(),
            got,
        };
        if cfg.r == 0 {
            return Err(bad("r", "0".into()));
        }
        if cfg.tensor_rank == 0 {
            return Err(bad("tensor_rank", "0".into()));
        }
        if !cfg.lora_alpha.is_finite() {
            return Err(Error::InvalidConfig {
                method: "loretta-rep",
                field: "lora_alpha",
                reason: "must be finite".into(),
                got: cfg.lora_alpha.to_string(),
            });
        }
        for t in [&cfg.a, &cfg.b].into_iter().flatten() {
            t.validate()?;
        }
        Ok(())
    }
}

impl LorettaRepConfig {
    /// α/r.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// `config` with `tensor_rank` (default 5) written into each given train of `trains` that sets
/// neither `rank` nor `ranks`: otherwise a train config's own default rank would silently win
/// over the method's `tensor_rank`.
fn with_tensor_rank(config: &serde_json::Value, trains: &[&str]) -> serde_json::Value {
    let mut config = config.clone();
    let tensor_rank = config
        .get("tensor_rank")
        .cloned()
        .unwrap_or_else(|| DEFAULT_TENSOR_RANK.into());
    for key in trains {
        if let Some(train) = config.get_mut(*key).and_then(|t| t.as_object_mut())
            && !train.contains_key("rank")
            && !train.contains_key("ranks")
        {
            train.insert("rank".into(), tensor_rank.clone());
        }
    }
    config
}

/// `tensor_rank` when a config does not set it.
const DEFAULT_TENSOR_RANK: usize = 5;

/// The train of one factor: the given config, else one of `tensor_rank` with `init`. Its α is
/// 1: the method's own scaling applies once, to the product.
pub(super) fn train_config(
    given: Option<&TtLoraConfig>,
    tensor_rank: usize,
    init: TtInit,
) -> TtLoraConfig {
    match given {
        Some(c) => TtLoraConfig {
            alpha: 1.0,
            init,
            ..c.clone()
        },
        None => TtLoraConfig {
            rank: tensor_rank,
            alpha: 1.0,
            init,
            ..TtLoraConfig::default()
        },
    }
}

/// LoRETTA-adp: bottleneck adapters whose down and up projections are tensor trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LorettaAdpConfig {
    /// Houlsby (after attention and FFN outputs) or Pfeiffer (after FFN). Default houlsby.
    pub variant: Variant,
    /// Bottleneck width m = hidden / reduction_factor, unless `bottleneck_size` is set.
    /// Default 16.
    pub reduction_factor: f64,
    /// Bottleneck width m, overriding `reduction_factor`.
    pub bottleneck_size: Option<usize>,
    /// f between the projections. Default relu.
    pub non_linearity: NonLinearity,
    /// Factor on the adapter's output. Default 1.
    pub scaling: f64,
    /// Rank of the inner bonds of both trains. Default 5.
    pub tensor_rank: usize,
    /// The down projection's train (an `(m, h)` matrix); planned when absent. Its bonds are
    /// `tensor_rank` unless it gives `rank` or `ranks` itself. Its `alpha` and
    /// `init` are the method's (1; down a TT-SVD of a Kaiming-uniform matrix, up zero).
    pub down: Option<TtLoraConfig>,
    /// The up projection's train (an `(h, m)` matrix), as for `down`.
    pub up: Option<TtLoraConfig>,
}

impl Default for LorettaAdpConfig {
    fn default() -> Self {
        let b = BottleneckConfig::default();
        Self {
            variant: b.variant,
            reduction_factor: b.reduction_factor,
            bottleneck_size: b.bottleneck_size,
            non_linearity: b.non_linearity,
            scaling: b.scaling,
            tensor_rank: DEFAULT_TENSOR_RANK,
            down: None,
            up: None,
        }
    }
}

impl Config for LorettaAdpConfig {
    /// Writes `tensor_rank` into the given trains first, so a train that sets no rank takes
    /// `tensor_rank`.
    fn from_json(method: &'static str, given: &serde_json::Value) -> Result<Self> {
        deserialize_validated(method, &with_tensor_rank(given, &["down", "up"]))
    }

    fn validate(&self) -> Result<()> {
        let cfg = self;
        cfg.bottleneck().check("loretta-adp")?;
        if cfg.tensor_rank == 0 {
            return Err(Error::InvalidConfig {
                method: "loretta-adp",
                field: "tensor_rank",
                reason: "must be >= 1".into(),
                got: "0".into(),
            });
        }
        for t in [&cfg.down, &cfg.up].into_iter().flatten() {
            t.validate()?;
        }
        Ok(())
    }
}

impl LorettaAdpConfig {
    /// The bottleneck fields as a plain bottleneck config (width, targets, checks).
    pub fn bottleneck(&self) -> BottleneckConfig {
        BottleneckConfig {
            variant: self.variant,
            reduction_factor: self.reduction_factor,
            bottleneck_size: self.bottleneck_size,
            non_linearity: self.non_linearity,
            init_std: 0.0,
            scaling: self.scaling,
        }
    }
}
