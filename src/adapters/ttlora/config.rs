//! TT-LoRA's configuration: shape (explicit or planned), ranks, α, init and forward path.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::adapters::Config;
use crate::error::{Error, Result};
use crate::tt::{Ranks, TtLayout, TtPath, TtShape, propose_shapes};

/// Total core count the planner aims for when no factors are given (the paper's 768-wide
/// shapes, e.g. `[64,4,3|3,4,64]`, have six).
pub const DEFAULT_CORES: usize = 6;

/// How the cores are initialised. Each scheme's doc says whether ΔW = 0 at step 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtInit {
    /// Last core zero, the others Kaiming-uniform scaled to unit Frobenius norm: ΔW = 0 at
    /// step 0, so the adapted model starts as the base model (like LoRA's B = 0).
    #[default]
    Zero,
    /// Every core Kaiming-uniform scaled to unit Frobenius norm (the paper's code): ΔW ≠ 0.
    Paper,
    /// TT-SVD of a random Kaiming-uniform (out, in) matrix, truncated to the ranks (the 2024
    /// code): ΔW ≠ 0.
    TtSvd,
    /// LoRA's scale: the input cores are scaled so the folded A (r, in) has the RMS of PEFT's
    /// Kaiming-uniform `lora_A`, the output cores so that folding them preserves the scale of
    /// the one core left at zero (the last; the first in the reshape layout). ΔW = 0 at step 0,
    /// and α plays the role of LoRA's `lora_alpha / r`. Needs a splitting bond.
    LoraScale,
}

impl TtInit {
    /// The names configs and `--init` use, in [`TtInit::ALL`]'s order.
    pub const NAMES: [&'static str; 4] = ["zero", "paper", "tt-svd", "lora-scale"];

    /// Every scheme, in a fixed order.
    pub const ALL: [TtInit; 4] = [
        TtInit::Zero,
        TtInit::Paper,
        TtInit::TtSvd,
        TtInit::LoraScale,
    ];
}

/// TT-LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtLoraConfig {
    /// Rank of every inner bond. Default 5.
    pub rank: usize,
    /// Per-bond ranks (`d − 1` inner ranks); overrides `rank` when set.
    pub ranks: Option<Vec<usize>>,
    /// α: the update is `α·ΔW` (the paper multiplies; no division by the rank). Default 8,
    /// chosen over 64 on MiniLM/GLUE with 3 seeds per task (RESULTS.md, "The α default").
    pub alpha: f64,
    /// Core layout: `input-output` (default) or `reshape`.
    pub layout: TtLayout,
    /// Input factors `[m_1..m_p]` (least significant first, = the input cores in core order).
    /// With `out_factors`; both absent means "plan the cheapest shape".
    pub in_factors: Option<Vec<usize>>,
    /// Output factors `[n_1..n_q]` (least significant first; the output cores are these reversed).
    pub out_factors: Option<Vec<usize>>,
    /// Factors of the reshape layout (product out·in); required with `layout = "reshape"`.
    pub factors: Option<Vec<usize>>,
    /// Total cores the planner aims for when factors are absent. Default 6.
    pub cores: usize,
    /// Initialisation: `zero` (default), `paper`, `tt-svd` or `lora-scale`.
    pub init: TtInit,
    /// Forward path: `factored` (default), `contract` or `reconstruct`.
    pub path: TtPath,
}

impl Default for TtLoraConfig {
    fn default() -> Self {
        Self {
            rank: 5,
            ranks: None,
            alpha: 8.0,
            layout: TtLayout::InputOutput,
            in_factors: None,
            out_factors: None,
            factors: None,
            cores: DEFAULT_CORES,
            init: TtInit::Zero,
            path: TtPath::Factored,
        }
    }
}

impl Config for TtLoraConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str, got: String| Error::InvalidConfig {
            method: "ttlora",
            field,
            reason: reason.into(),
            got,
        };
        if self.rank == 0 {
            return Err(bad("rank", "must be >= 1", self.rank.to_string()));
        }
        if !self.alpha.is_finite() {
            return Err(bad("alpha", "must be finite", self.alpha.to_string()));
        }
        if self.cores < 2 {
            return Err(bad("cores", "must be >= 2", self.cores.to_string()));
        }
        match self.layout {
            TtLayout::InputOutput => {
                if self.in_factors.is_some() != self.out_factors.is_some() {
                    return Err(bad(
                        "in_factors/out_factors",
                        "must be given together",
                        format!("{:?} / {:?}", self.in_factors, self.out_factors),
                    ));
                }
                if self.factors.is_some() {
                    return Err(bad(
                        "factors",
                        "belongs to the reshape layout; use in_factors/out_factors",
                        format!("{:?}", self.factors),
                    ));
                }
            }
            TtLayout::Reshape => {
                if self.factors.is_none() {
                    return Err(bad(
                        "factors",
                        "is required with layout = reshape",
                        "none".into(),
                    ));
                }
                if self.in_factors.is_some() || self.out_factors.is_some() {
                    return Err(bad(
                        "in_factors/out_factors",
                        "belong to the input-output layout; use factors",
                        format!("{:?} / {:?}", self.in_factors, self.out_factors),
                    ));
                }
            }
        }
        let lists = [
            ("in_factors", &self.in_factors),
            ("out_factors", &self.out_factors),
            ("factors", &self.factors),
        ];
        for (field, list) in lists {
            if let Some(f) = list
                && (f.is_empty() || f.contains(&0))
            {
                let reason = "must be a non-empty list of factors >= 1 (their product is the \
                              layer's size)";
                return Err(bad(field, reason, format!("{f:?}")));
            }
        }
        let given_cores = match (&self.in_factors, &self.out_factors, &self.factors) {
            (Some(i), Some(o), _) => Some(i.len() + o.len()),
            (_, _, Some(f)) => Some(f.len()),
            _ => None,
        };
        if let Some(ranks) = &self.ranks {
            if ranks.contains(&0) {
                return Err(bad("ranks", "must all be >= 1", format!("{ranks:?}")));
            }
            if let Some(d) = given_cores
                && ranks.len() + 1 != d
            {
                let reason = format!("needs {} inner ranks for {d} cores", d.saturating_sub(1));
                return Err(bad("ranks", &reason, format!("{ranks:?}")));
            }
        }
        Ok(())
    }
}

impl TtLoraConfig {
    /// A default config (α, init, path) whose layout, factors and ranks are `shape`'s.
    pub fn for_shape(shape: &TtShape) -> Self {
        let ranks = shape.ranks();
        let base = Self {
            layout: shape.layout(),
            rank: ranks.get(1).copied().unwrap_or(1),
            ranks: Some(ranks[1..ranks.len() - 1].to_vec()),
            cores: shape.num_cores().max(2),
            ..Default::default()
        };
        match shape.layout() {
            TtLayout::InputOutput => Self {
                in_factors: Some(shape.in_factors().to_vec()),
                out_factors: Some(shape.out_factors().to_vec()),
                ..base
            },
            TtLayout::Reshape => Self {
                factors: Some(shape.core_dims().to_vec()),
                ..base
            },
        }
    }

    fn ranks(&self) -> Ranks {
        match &self.ranks {
            Some(v) => Ranks::PerBond(v.clone()),
            None => Ranks::Uniform(self.rank),
        }
    }

    /// The TT shape for an (out, in) layer: the given factors, or the planner's cheapest shape
    /// with [`cores`](Self::cores) cores (any count if none has that many).
    ///
    /// # Errors
    /// An invalid config; factors that do not multiply out to the layer's sizes.
    pub fn shape_for(&self, in_features: usize, out_features: usize) -> Result<TtShape> {
        self.validate()?;
        match (
            self.layout,
            &self.in_factors,
            &self.out_factors,
            &self.factors,
        ) {
            (TtLayout::InputOutput, Some(i), Some(o), _) => TtShape::new(
                in_features,
                out_features,
                i.clone(),
                o.clone(),
                self.ranks(),
            ),
            (TtLayout::InputOutput, _, _, _) => {
                let (n_in, n_out) = (in_features, out_features);
                let planned = match propose_shapes(n_in, n_out, self.rank, Some(self.cores)) {
                    Ok(p) => p,
                    Err(_) => {
                        let p = propose_shapes(n_in, n_out, self.rank, None)?;
                        say_cores_changed(n_in, n_out, self.cores, p[0].num_cores());
                        p
                    }
                };
                planned[0].with_ranks(self.ranks())
            }
            (TtLayout::Reshape, _, _, factors) => TtShape::reshape(
                in_features,
                out_features,
                factors.clone().unwrap_or_default(),
                self.ranks(),
            ),
        }
    }
}

/// Warns, once per layer shape and core count in a process, that the planner had no shape
/// with the cores asked for: a search's `cores` label and a user's parameter budget assume
/// that count.
fn say_cores_changed(in_features: usize, out_features: usize, asked: usize, used: usize) {
    static SAID: Mutex<BTreeSet<(usize, usize, usize)>> = Mutex::new(BTreeSet::new());
    let first =
        SAID.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((in_features, out_features, asked));
    if first {
        tracing::warn!(
            "TT-LoRA: {in_features}×{out_features} has no {asked}-core shape; using {used} \
             cores (give in_factors/out_factors to choose)"
        );
    }
}
