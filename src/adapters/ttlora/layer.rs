//! The TT-LoRA update on one layer: `α·ΔW(x)` with ΔW a tensor train.

use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;

use crate::adapters::ttlora::{TtInit, TtLoraConfig};
use crate::adapters::{Adapter, LayerSpec, LoraFactors, kaiming_uniform};
use crate::error::{Error, Result};
use crate::tt::{self, Truncation, TtLayout, TtPath, TtShape, decompose_matrix};

/// TT-LoRA on one layer: cores `(r_{k-1}, s_k, r_k)` as trainable `Var`s, `y += α·ΔW(x)`.
pub struct TtLoraLayer {
    shape: TtShape,
    cores: Vec<Var>,
    alpha: f64,
    path: TtPath,
    /// Entered for each [`Adapter::forward_delta`] (STYLE §5.10).
    span: tracing::Span,
}

impl TtLoraLayer {
    /// Builds a freshly initialised adapter for `layer` (see [`TtInit`] for the schemes).
    ///
    /// # Errors
    /// An invalid config or one whose factors do not fit the layer; a path the shape does not
    /// support (factored/contract need a splitting bond).
    pub fn new(config: &TtLoraConfig, layer: &LayerSpec, rng: &mut StdRng) -> Result<Self> {
        let shape = config.shape_for(layer.in_features, layer.out_features)?;
        for k in 0..shape.num_cores() {
            let (a, s, b) = shape.core_shape(k);
            layer.check_tensor("ttlora", &format!("core {k}"), &[a, s, b])?;
        }
        let cores = init_cores(&shape, config.init, layer, rng)?;
        Self::from_cores(shape, cores, config.alpha, config.path)
    }

    /// An adapter from existing cores (e.g. loaded from a file or found by TT-SVD).
    ///
    /// # Errors
    /// A core whose shape does not fit `shape`; a path the shape does not support.
    pub fn from_cores(
        shape: TtShape,
        cores: Vec<Tensor>,
        alpha: f64,
        path: TtPath,
    ) -> Result<Self> {
        let dims: Vec<Vec<usize>> = cores.iter().map(|c| c.dims().to_vec()).collect();
        shape.check_cores(&dims)?;
        if path != TtPath::Reconstruct && shape.split_rank().is_none() {
            return Err(Error::PathUnavailable {
                path: path.name(),
                reason: format!(
                    "shape {shape} has no bond splitting it into output and input cores; use \
                     the reconstruct path"
                ),
            });
        }
        let cores = cores
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            shape,
            cores,
            alpha,
            path,
            span: tracing::trace_span!("ttlora"),
        })
    }

    /// The TT shape.
    pub fn shape(&self) -> &TtShape {
        &self.shape
    }
    /// The cores as plain tensors (sharing storage with the `Var`s).
    pub fn cores(&self) -> Vec<Tensor> {
        self.cores.iter().map(|v| v.as_tensor().clone()).collect()
    }
    /// α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// The forward path in use.
    pub fn path(&self) -> TtPath {
        self.path
    }
    /// Switches the forward path (all paths compute the same ΔW(x)).
    ///
    /// # Errors
    /// A path the shape does not support.
    pub fn set_path(&mut self, path: TtPath) -> Result<()> {
        if path != TtPath::Reconstruct && self.shape.split_rank().is_none() {
            return Err(Error::PathUnavailable {
                path: path.name(),
                reason: format!("shape {} has no splitting bond", self.shape),
            });
        }
        self.path = path;
        Ok(())
    }

    /// The exact rank-r factors of the scaled update: `α·ΔW = (α·B)·A`, `A: (r, in)`,
    /// `B: (out, r)` — a PEFT LoRA of rank r with scaling 1.
    ///
    /// # Errors
    /// A shape without a splitting bond.
    pub fn lora_factors(&self) -> Result<(Tensor, Tensor)> {
        let f = tt::fold(&self.shape, &self.cores())?;
        Ok((f.a, (f.b * self.alpha)?))
    }
}

impl Adapter for TtLoraLayer {
    fn method(&self) -> &'static str {
        "ttlora"
    }
    fn in_features(&self) -> usize {
        self.shape.in_features()
    }
    fn out_features(&self) -> usize {
        self.shape.out_features()
    }

    fn forward_delta(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let _enter = self.span.enter();
        // α scales the last core (a few hundred numbers) rather than the output (tokens × out):
        // the product, and so ΔW, is linear in each core.
        let mut cores = self.cores();
        if let Some(last) = cores.last_mut() {
            *last = (&*last * self.alpha)?;
        }
        tt::apply(&self.shape, &cores, x, self.path)
    }

    fn describe(&self) -> String {
        format!("TT {} α={}", self.shape, self.alpha)
    }

    /// Rank r with `lora_alpha = r` (PEFT's scaling 1) and `lora_B = α·B`, exact.
    fn as_lora(&self) -> Result<Option<LoraFactors>> {
        let (a, b) = self.lora_factors()?;
        let r = a.dims()[0];
        Ok(Some(LoraFactors {
            a,
            b,
            lora_alpha: r as f64,
            use_rslora: false,
            magnitude: None,
        }))
    }

    fn delta_weight(&self) -> Result<Tensor> {
        let cores = self.cores();
        let dense = match self.shape.split_rank() {
            Some(_) => {
                let f = tt::fold(&self.shape, &cores)?;
                f.b.matmul(&f.a)?
            }
            None => tt::reconstruct(&self.shape, &cores)?,
        };
        Ok((dense * self.alpha)?)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.cores
            .iter()
            .enumerate()
            .map(|(k, v)| (format!("ttlora_cores.{k}"), v.clone()))
            .collect()
    }

    fn config(&self) -> serde_json::Value {
        let cfg = TtLoraConfig {
            alpha: self.alpha,
            path: self.path,
            ..TtLoraConfig::for_shape(&self.shape)
        };
        // A plain struct of numbers and enums always serialises.
        serde_json::to_value(cfg).unwrap_or_default()
    }
}

/// Kaiming-uniform core (fan-in = s_k·r_k, as PyTorch computes it for a 3-D tensor), scaled to
/// unit Frobenius norm, in f64 on the CPU.
fn unit_core_f64(shape: (usize, usize, usize), rng: &mut StdRng) -> Result<Tensor> {
    let (a, s, b) = shape;
    let c = kaiming_uniform(
        &[a, s, b],
        s * b,
        rng,
        DType::F64,
        &candle_core::Device::Cpu,
    )?;
    let norm = (c.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()).max(f64::MIN_POSITIVE);
    Ok((c / norm)?)
}

/// [`unit_core_f64`] in the layer's dtype and device.
fn unit_core(shape: (usize, usize, usize), layer: &LayerSpec, rng: &mut StdRng) -> Result<Tensor> {
    Ok(unit_core_f64(shape, rng)?
        .to_dtype(layer.dtype)?
        .to_device(&layer.device)?)
}

/// Root mean square of a tensor's entries.
fn rms(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt())
}

/// The [`TtInit::LoraScale`] cores (see there for the scheme).
fn lora_scale_cores(shape: &TtShape, layer: &LayerSpec, rng: &mut StdRng) -> Result<Vec<Tensor>> {
    let d = shape.num_cores();
    let (a_side, b_side) = shape.fold_sides().ok_or_else(|| Error::InvalidConfig {
        method: "ttlora",
        field: "init",
        reason: format!("lora-scale needs a bond splitting shape {shape} into A and B"),
        got: "lora-scale".into(),
    })?;
    // The B core at the far end from the bond starts at zero (the last core in the
    // input-output layout, the first in the reshape layout).
    let zeroed = match shape.layout() {
        TtLayout::InputOutput => d - 1,
        TtLayout::Reshape => 0,
    };
    let mut cores = (0..d)
        .map(|i| unit_core_f64(shape.core_shape(i), rng))
        .collect::<Result<Vec<_>>>()?;
    let folded = tt::fold(shape, &cores)?;
    // PEFT's lora_A is U(±1/√in): RMS 1/√(3·in). A is linear in each of its cores, so an
    // equal share of the correction goes to each.
    let target_a = 1.0 / (3.0 * shape.in_features() as f64).sqrt();
    let gain_a = (target_a / rms(&folded.a)?).powf(1.0 / a_side.len() as f64);
    // B's other cores map the zeroed core to B; scale them so that map keeps the RMS, so
    // B's entries move as fast as that core's (as LoRA's B does under Adam).
    let others = b_side.len() - 1;
    let gain_b = if others == 0 {
        1.0
    } else {
        (rms(&cores[zeroed])? / rms(&folded.b)?).powf(1.0 / others as f64)
    };
    for (i, core) in cores.iter_mut().enumerate() {
        let gain = if i == zeroed {
            0.0
        } else if a_side.contains(&i) {
            gain_a
        } else {
            gain_b
        };
        *core = (&*core * gain)?
            .to_dtype(layer.dtype)?
            .to_device(&layer.device)?;
    }
    Ok(cores)
}

fn init_cores(
    shape: &TtShape,
    init: TtInit,
    layer: &LayerSpec,
    rng: &mut StdRng,
) -> Result<Vec<Tensor>> {
    let d = shape.num_cores();
    match init {
        TtInit::Paper => (0..d)
            .map(|k| unit_core(shape.core_shape(k), layer, rng))
            .collect(),
        TtInit::Zero => (0..d)
            .map(|k| {
                if k + 1 == d {
                    let (a, s, b) = shape.core_shape(k);
                    Ok(Tensor::zeros((a, s, b), layer.dtype, &layer.device)?)
                } else {
                    unit_core(shape.core_shape(k), layer, rng)
                }
            })
            .collect(),
        TtInit::LoraScale => lora_scale_cores(shape, layer, rng),
        TtInit::TtSvd => {
            let (out_f, in_f) = (shape.out_features(), shape.in_features());
            let w = kaiming_uniform(
                &[out_f, in_f],
                in_f,
                rng,
                DType::F64,
                &candle_core::Device::Cpu,
            )?;
            let inner = shape.ranks()[1..d].to_vec();
            let trunc = Truncation {
                max_ranks: Some(inner),
                rel_tol: None,
            };
            let dec = decompose_matrix(&w, shape, &trunc)?;
            // A bond can hold at most min(Π left, Π right) independent directions; pad any
            // bond TT-SVD found smaller with zeros so the configured shape is kept.
            (0..d)
                .map(|k| {
                    let (a, s, b) = shape.core_shape(k);
                    let (da, _, db) = dec.shape.core_shape(k);
                    let c =
                        dec.cores[k]
                            .pad_with_zeros(0, 0, a - da)?
                            .pad_with_zeros(2, 0, b - db)?;
                    Ok(c.reshape((a, s, b))?
                        .to_dtype(layer.dtype)?
                        .to_device(&layer.device)?)
                })
                .collect()
        }
    }
}
