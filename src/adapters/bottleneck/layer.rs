//! [`BottleneckLayer`]: `y ← y + s·up(f(down(y)))` after a projection, with dense or
//! tensor-train projections (the latter is LoRETTA-adp's).

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;

use super::config::NonLinearity;
use crate::adapters::ttlora::TtLoraLayer;
use crate::adapters::{Adapter, LayerSpec, normal};
use crate::error::{Error, Result};

/// One projection of a bottleneck: `x·Wᵀ + b` with W dense or a tensor train.
// Two per adapted layer, built once: the train's inline size (its span included) costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Projection {
    /// A dense weight `(out, in)`.
    Dense(Var),
    /// A tensor-train weight (TT-LoRA's cores, α = 1).
    Tt(TtLoraLayer),
}

impl Projection {
    /// A dense `(out, in)` weight drawn from N(0, std²).
    ///
    /// # Errors
    /// Tensor allocation.
    pub fn normal(
        out_f: usize,
        in_f: usize,
        std: f64,
        layer: &LayerSpec,
        rng: &mut StdRng,
    ) -> Result<Self> {
        let w = normal(&[out_f, in_f], std, rng, layer.dtype, &layer.device)?;
        Ok(Self::Dense(Var::from_tensor(&w)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => crate::ops::frozen_linear(x, w.as_tensor(), None),
            Self::Tt(tt) => tt.forward_delta(x, false),
        }
    }

    fn weight(&self) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(w.as_tensor().clone()),
            Self::Tt(tt) => tt.delta_weight(),
        }
    }

    fn trainable(&self, name: &str, out: &mut Vec<(String, Var)>) {
        match self {
            Self::Dense(w) => out.push((format!("{name}.weight"), w.clone())),
            Self::Tt(tt) => out.extend(tt.trainable().into_iter().map(|(n, v)| {
                let k = n.rsplit('.').next().unwrap_or_default().to_string();
                (format!("{name}.cores.{k}"), v)
            })),
        }
    }
}

/// A bottleneck adapter on a projection's output: `g(y) = s·(up(f(down(y) + b_d)) + b_u)`,
/// `down: (m, h)`, `up: (h, m)`, added to `y` by the layer ([`Adapter::serial`]).
pub struct BottleneckLayer {
    method: &'static str,
    prefix: &'static str,
    hidden: usize,
    down: Projection,
    down_bias: Var,
    up: Projection,
    up_bias: Var,
    non_linearity: NonLinearity,
    scaling: f64,
    config: serde_json::Value,
    /// Entered for each [`Adapter::forward_delta`] (STYLE §5.10).
    span: tracing::Span,
}

/// The parts of a [`BottleneckLayer`].
pub struct BottleneckParts {
    /// Registry name of the method building it.
    pub method: &'static str,
    /// The method's tensor-name prefix (`adapter_`).
    pub prefix: &'static str,
    /// `h → m`.
    pub down: Projection,
    /// `m → h`.
    pub up: Projection,
    /// f.
    pub non_linearity: NonLinearity,
    /// s.
    pub scaling: f64,
    /// The config that rebuilds exactly this structure.
    pub config: serde_json::Value,
}

impl BottleneckLayer {
    /// Assembles a layer on a projection of width `layer.out_features`; biases start at 0.
    ///
    /// # Errors
    /// Projections whose sizes do not chain `h → m → h`.
    pub fn new(parts: BottleneckParts, layer: &LayerSpec) -> Result<Self> {
        let h = layer.out_features;
        let (down_w, up_w) = (parts.down.weight()?, parts.up.weight()?);
        let (m, down_in) = down_w.dims2()?;
        let (up_out, up_in) = up_w.dims2()?;
        if down_in != h || up_out != h || up_in != m {
            return Err(Error::TensorShape {
                op: "bottleneck projections (down m x h, up h x m)",
                expected: vec![m, h, h, m],
                got: vec![m, down_in, up_out, up_in],
            });
        }
        let zeros = |n: usize| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::zeros(
                n,
                layer.dtype,
                &layer.device,
            )?)?)
        };
        Ok(Self {
            method: parts.method,
            prefix: parts.prefix,
            hidden: h,
            down: parts.down,
            down_bias: zeros(m)?,
            up: parts.up,
            up_bias: zeros(h)?,
            non_linearity: parts.non_linearity,
            scaling: parts.scaling,
            config: parts.config,
            // One name for every bottleneck method; `method` tells them apart.
            span: tracing::trace_span!("bottleneck", method = parts.method),
        })
    }

    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.non_linearity {
            NonLinearity::Relu => x.relu()?,
            NonLinearity::Gelu => crate::ops::gelu(x)?,
            NonLinearity::Swish => x.silu()?,
            NonLinearity::Tanh => x.tanh()?,
        })
    }
}

impl Adapter for BottleneckLayer {
    fn method(&self) -> &'static str {
        self.method
    }
    fn in_features(&self) -> usize {
        self.hidden
    }
    fn out_features(&self) -> usize {
        self.hidden
    }
    fn serial(&self) -> bool {
        true
    }

    fn forward_delta(&self, y: &Tensor, _train: bool) -> Result<Tensor> {
        let _enter = self.span.enter();
        let hidden = self
            .down
            .forward(y)?
            .broadcast_add(self.down_bias.as_tensor())?;
        let up = self
            .up
            .forward(&self.activate(&hidden)?)?
            .broadcast_add(self.up_bias.as_tensor())?;
        Ok((up * self.scaling)?)
    }

    fn delta_weight(&self) -> Result<Tensor> {
        Err(Error::NotMergeable {
            method: self.method,
            reason: "its update passes through a non-linearity; export the adapter folder, \
                     or fine-tune with a LoRA-family method to merge",
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let p = self.prefix;
        let mut out = Vec::new();
        self.down.trainable(&format!("{p}down"), &mut out);
        out.push((format!("{p}down.bias"), self.down_bias.clone()));
        self.up.trainable(&format!("{p}up"), &mut out);
        out.push((format!("{p}up.bias"), self.up_bias.clone()));
        out
    }

    fn config(&self) -> serde_json::Value {
        self.config.clone()
    }

    fn describe(&self) -> String {
        let m = self.down.weight().map_or(0, |w| w.dims()[0]);
        format!(
            "{} bottleneck {}→{m}→{} ({:?})",
            self.method, self.hidden, self.hidden, self.non_linearity
        )
    }
}
