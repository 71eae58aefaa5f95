//! One adapter on one linear layer: the [`Adapter`] trait, what a method is told about the
//! layer it builds for ([`LayerSpec`]) and an update written as LoRA factors.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};

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
    /// (DoRA); `None` where it is not at hand (reading a folder without its base model) or
    /// kept in blocks (see `blocks`).
    pub weight: Option<Tensor>,
    /// W0 in GGUF blocks, when the layer keeps it so (a quantized base): a method that needs
    /// W0 dequantizes it when it uses it instead of holding an f32 copy.
    pub blocks: Option<std::sync::Arc<candle_core::quantized::QTensor>>,
}

impl LayerSpec {
    /// Refuses, before anything is allocated, a trainable tensor of `dims` for this layer
    /// with more elements than four times the layer's own weight (at least 65,536, at most
    /// 2^28): an
    /// adapter that large is a mistaken config (`r = 1000000`), and building it would exhaust
    /// memory and abort instead of failing.
    ///
    /// # Errors
    /// [`Error::AdapterTooLarge`] naming the method and the tensor.
    pub fn check_tensor(&self, method: &'static str, what: &str, dims: &[usize]) -> Result<()> {
        // Relative to the layer, and absolute (1 GiB of f32) for layers whose size itself came
        // from a file with no model behind it.
        let limit = self
            .in_features
            .saturating_mul(self.out_features)
            .saturating_mul(4)
            .clamp(1 << 16, 1 << 28);
        let elems = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX);
        if elems > limit {
            return Err(Error::AdapterTooLarge {
                method,
                what: what.to_string(),
                dims: dims.to_vec(),
                layer: [self.out_features, self.in_features],
            });
        }
        Ok(())
    }
}

/// One adapter on one linear layer.
///
/// A [`LayerPlacement::Parallel`](crate::adapters::LayerPlacement::Parallel) adapter adds an
/// update ΔW (already scaled) to the layer's input path, `y += ΔW(x)`; a
/// [`LayerPlacement::Serial`](crate::adapters::LayerPlacement::Serial) one maps the layer's
/// output, `y ← y + g(y)`.
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
