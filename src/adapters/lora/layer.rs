//! The LoRA update on one layer: ΔW = scaling · B·A.

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;

use crate::adapters::lora::LoraConfig;
use crate::adapters::{Adapter, LayerSpec, LoraFactors, kaiming_uniform};
use crate::error::Result;

/// LoRA with PEFT's semantics: `A: (r, in)` Kaiming-uniform, `B: (out, r)` zero, so the
/// adapted layer equals the base at step 0; `ΔW(x) = scaling · dropout(x)·Aᵀ·Bᵀ`.
pub struct LoraLayer {
    a: Var,
    b: Var,
    scaling: f64,
    dropout: f32,
    config: LoraConfig,
}

impl LoraLayer {
    /// Builds a freshly initialised adapter for `layer`.
    ///
    /// # Errors
    /// An invalid config; tensor creation failures.
    pub fn new(config: &LoraConfig, layer: &LayerSpec, rng: &mut StdRng) -> Result<Self> {
        config.validate()?;
        let (r, in_f, out_f) = (config.r, layer.in_features, layer.out_features);
        let a = kaiming_uniform(&[r, in_f], in_f, rng, layer.dtype, &layer.device)?;
        let b = Tensor::zeros((out_f, r), layer.dtype, &layer.device)?;
        Ok(Self {
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
        let x = if train && self.dropout > 0.0 {
            crate::ops::dropout(x, f64::from(self.dropout))?
        } else {
            x.clone()
        };
        let h = x.matmul(&self.a.as_tensor().t()?)?;
        // Scaling B (out × r) instead of the output (tokens × out) saves a pass over the
        // activations forward and backward.
        let b = (self.b.as_tensor() * self.scaling)?;
        Ok(h.matmul(&b.t()?)?)
    }

    fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling)?)
    }

    fn describe(&self) -> String {
        let rs = if self.config.use_rslora {
            " rsLoRA"
        } else {
            ""
        };
        format!("LoRA r={} α={}{rs}", self.config.r, self.config.lora_alpha)
    }

    fn as_lora(&self) -> Result<Option<LoraFactors>> {
        Ok(Some(LoraFactors {
            a: self.a.as_tensor().copy()?,
            b: self.b.as_tensor().copy()?,
            lora_alpha: self.config.lora_alpha,
            use_rslora: self.config.use_rslora,
        }))
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            ("lora_A.weight".into(), self.a.clone()),
            ("lora_B.weight".into(), self.b.clone()),
        ]
    }

    fn config(&self) -> serde_json::Value {
        // A plain struct of numbers always serialises.
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}
