//! The LoRA update on one layer: ΔW = scaling · B·A.

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;

use crate::adapters::Config;
use crate::adapters::lora::LoraConfig;
use crate::adapters::{Adapter, LayerSpec, LoraFactors, kaiming_uniform};
use crate::error::{Error, Result};

/// LoRA with PEFT's semantics: `A: (r, in)` Kaiming-uniform, `B: (out, r)` zero, so the
/// adapted layer equals the base at step 0; `ΔW(x) = scaling · dropout(x)·Aᵀ·Bᵀ`.
///
/// With `use_dora` (DoRA, Liu et al. 2024, as PEFT computes it) the adapted weight is
/// `W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖` with row norms (one per output) taken without
/// gradient and the magnitude `m: (out)` trainable, starting at `‖W0‖`.
pub struct LoraLayer {
    a: Var,
    b: Var,
    scaling: f64,
    dropout: f32,
    config: LoraConfig,
    dora: Option<Dora>,
    /// Entered for each [`Adapter::forward_delta`] (STYLE §5.10).
    span: tracing::Span,
}

/// DoRA's state on a layer: the trainable magnitude and the frozen weight it rescales.
struct Dora {
    /// `m`, `(out)`: PEFT's `lora_magnitude_vector`.
    magnitude: Var,
    /// W0, `(out, in)`.
    w0: FrozenWeight,
}

/// DoRA's W0: an f32 copy, or the base's own blocks (a quantized base), dequantized for each
/// use as PEFT's DoRA does on a 4-bit base, so the adapter adds no copy of the weight.
enum FrozenWeight {
    Dense(Tensor),
    Blocks(std::sync::Arc<candle_core::quantized::QTensor>),
}

impl FrozenWeight {
    /// W0 as a tensor.
    fn dense(&self) -> Result<std::borrow::Cow<'_, Tensor>> {
        Ok(match self {
            Self::Dense(w) => std::borrow::Cow::Borrowed(w),
            Self::Blocks(q) => std::borrow::Cow::Owned(q.dequantize(&candle_core::Device::Cpu)?),
        })
    }

    /// `x·W0ᵀ`, differentiable in `x`.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => crate::ops::frozen_linear(x, w, None),
            Self::Blocks(q) => crate::ops::quantized_linear(x, q, None, None),
        }
    }
}

impl LoraLayer {
    /// Builds a freshly initialised adapter for `layer`.
    ///
    /// # Errors
    /// An invalid config; tensor creation failures.
    pub fn new(config: &LoraConfig, layer: &LayerSpec, rng: &mut StdRng) -> Result<Self> {
        config.validate()?;
        let (r, in_f, out_f) = (config.r, layer.in_features, layer.out_features);
        layer.check_tensor("lora", "lora_A (r x in_features)", &[r, in_f])?;
        layer.check_tensor("lora", "lora_B (out_features x r)", &[out_f, r])?;
        let a = kaiming_uniform(&[r, in_f], in_f, rng, layer.dtype, &layer.device)?;
        let b = Tensor::zeros((out_f, r), layer.dtype, &layer.device)?;
        let dora = if config.use_dora {
            let w0 = match (&layer.weight, &layer.blocks) {
                (Some(w), _) => {
                    FrozenWeight::Dense(w.to_dtype(layer.dtype)?.to_device(&layer.device)?.detach())
                }
                (None, Some(q)) => FrozenWeight::Blocks(std::sync::Arc::clone(q)),
                (None, None) => {
                    return Err(Error::InvalidConfig {
                        method: "lora",
                        field: "use_dora",
                        reason: "DoRA needs the layer's frozen weight, which this caller did not \
                                 give"
                            .into(),
                        got: "true".into(),
                    });
                }
            };
            // B = 0, so ‖W0 + s·B·A‖ = ‖W0‖.
            let magnitude = Var::from_tensor(&row_norms(w0.dense()?.as_ref())?)?;
            Some(Dora { magnitude, w0 })
        } else {
            None
        };
        Ok(Self {
            dora,
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scaling: config.scaling(),
            dropout: config.lora_dropout as f32,
            // The patterns chose this layer's r and α; its own config is plain.
            config: LoraConfig {
                rank_pattern: Default::default(),
                alpha_pattern: Default::default(),
                ..config.clone()
            },
            span: tracing::trace_span!("lora"),
        })
    }

    /// A, shape (r, in).
    pub fn a(&self) -> &Var {
        &self.a
    }
    /// B, shape (out, r).
    pub fn b(&self) -> &Var {
        &self.b
    }
    /// The scale applied to B·A.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }
}

impl LoraLayer {
    /// DoRA's per-output factor `m / ‖W0 + s·B·A‖`, `(1, out)`, the norm without gradient.
    fn dora_scale(&self, dora: &Dora) -> Result<Tensor> {
        let delta = (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling)?;
        let norm = row_norms(&(dora.w0.dense()?.as_ref() + delta.detach())?)?;
        Ok((dora.magnitude.as_tensor() / norm)?.unsqueeze(0)?)
    }
}

/// The L2 norm of each row of `w: (out, in)`, `(out)`.
fn row_norms(w: &Tensor) -> Result<Tensor> {
    Ok(w.sqr()?.sum(1)?.sqrt()?)
}

impl Adapter for LoraLayer {
    fn method(&self) -> &'static str {
        "lora"
    }
    fn in_features(&self) -> usize {
        self.a.dims()[1]
    }
    fn out_features(&self) -> usize {
        self.b.dims()[0]
    }

    fn forward_delta(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let _enter = self.span.enter();
        let x = if train && self.dropout > 0.0 {
            crate::ops::dropout(x, f64::from(self.dropout))?
        } else {
            x.clone()
        };
        let h = x.matmul(&self.a.as_tensor().t()?)?;
        // Scaling B (out × r) instead of the output (tokens × out) saves a pass over the
        // activations forward and backward.
        let b = (self.b.as_tensor() * self.scaling)?;
        let lora = h.matmul(&b.t()?)?;
        let Some(dora) = &self.dora else {
            return Ok(lora);
        };
        // PEFT's DoRA term: (m/‖W0 + s·B·A‖ − 1)·(x·W0ᵀ) + m/‖W0 + s·B·A‖ · s·x·Aᵀ·Bᵀ, the norm
        // detached (DoRA §4.3); the layer adds x·W0ᵀ + b itself.
        let scale = self.dora_scale(dora)?;
        let base = dora.w0.product(&x)?;
        let lora = lora.broadcast_mul(&scale)?;
        Ok((base.broadcast_mul(&(scale - 1.0)?)? + lora)?)
    }

    fn delta_weight(&self) -> Result<Tensor> {
        let delta = (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling)?;
        let Some(dora) = &self.dora else {
            return Ok(delta);
        };
        // W' − W0 with W' = (m/‖W0 + ΔW‖) ⊙ (W0 + ΔW), rows scaled.
        let scale = self.dora_scale(dora)?;
        let w0 = dora.w0.dense()?;
        let adapted = (w0.as_ref() + delta)?.broadcast_mul(&scale.t()?)?;
        Ok((adapted - w0.as_ref())?)
    }

    fn describe(&self) -> String {
        let rs = if self.config.use_rslora {
            " rsLoRA"
        } else {
            ""
        };
        let dora = if self.dora.is_some() { " DoRA" } else { "" };
        format!(
            "LoRA r={} α={}{rs}{dora}",
            self.config.r, self.config.lora_alpha
        )
    }

    fn as_lora(&self) -> Result<Option<LoraFactors>> {
        Ok(Some(LoraFactors {
            a: self.a.as_tensor().copy()?,
            b: self.b.as_tensor().copy()?,
            lora_alpha: self.config.lora_alpha,
            use_rslora: self.config.use_rslora,
            magnitude: self
                .dora
                .as_ref()
                .map(|d| d.magnitude.as_tensor().copy())
                .transpose()?,
        }))
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = vec![
            ("lora_A.weight".into(), self.a.clone()),
            ("lora_B.weight".into(), self.b.clone()),
        ];
        if let Some(d) = &self.dora {
            out.push(("lora_magnitude_vector".into(), d.magnitude.clone()));
        }
        out
    }

    fn config(&self) -> serde_json::Value {
        // A plain struct of numbers always serialises.
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}
