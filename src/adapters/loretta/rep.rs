//! [`LorettaRepLayer`]: `ΔW(x) = (α/r)·B(A(x))` with A and B tensor trains.

use candle_core::{Tensor, Var};

use super::config::LorettaRepConfig;
use crate::adapters::ttlora::TtLoraLayer;
use crate::adapters::{Adapter, LoraFactors};
use crate::error::Result;

/// LoRETTA-rep on one layer.
pub struct LorettaRepLayer {
    /// `(r, in)` as a train.
    pub(super) a: TtLoraLayer,
    /// `(out, r)` as a train, last core zero at init.
    pub(super) b: TtLoraLayer,
    /// The method config, for [`Adapter::config`] (shapes filled in).
    pub(super) config: LorettaRepConfig,
    /// Entered for each [`Adapter::forward_delta`] (STYLE §5.10).
    span: tracing::Span,
}

impl LorettaRepLayer {
    /// The layer from its two trains and its config.
    pub(super) fn new(a: TtLoraLayer, b: TtLoraLayer, config: LorettaRepConfig) -> Self {
        Self {
            a,
            b,
            config,
            span: tracing::trace_span!("loretta-rep"),
        }
    }
}

/// A train's tensors under `{prefix}.cores.k`.
pub(super) fn cores_named(tt: &TtLoraLayer, prefix: &str) -> Vec<(String, Var)> {
    tt.trainable()
        .into_iter()
        .enumerate()
        .map(|(k, (_, v))| (format!("{prefix}.cores.{k}"), v))
        .collect()
}

impl Adapter for LorettaRepLayer {
    fn method(&self) -> &'static str {
        "loretta-rep"
    }
    fn in_features(&self) -> usize {
        self.a.in_features()
    }
    fn out_features(&self) -> usize {
        self.b.out_features()
    }

    fn forward_delta(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.a.forward_delta(x, train)?;
        Ok((self.b.forward_delta(&h, train)? * self.config.scaling())?)
    }

    fn delta_weight(&self) -> Result<Tensor> {
        let ba = self.b.delta_weight()?.matmul(&self.a.delta_weight()?)?;
        Ok((ba * self.config.scaling())?)
    }

    /// Exactly a LoRA of rank r: A and B densified, the same `lora_alpha`.
    fn as_lora(&self) -> Result<Option<LoraFactors>> {
        Ok(Some(LoraFactors {
            a: self.a.delta_weight()?,
            b: self.b.delta_weight()?,
            lora_alpha: self.config.lora_alpha,
            use_rslora: false,
            magnitude: None,
        }))
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = cores_named(&self.a, "loretta_rep_A");
        out.extend(cores_named(&self.b, "loretta_rep_B"));
        out
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "LoRETTA-rep r={} α={} A: {} B: {}",
            self.config.r,
            self.config.lora_alpha,
            self.a.describe(),
            self.b.describe()
        )
    }
}
