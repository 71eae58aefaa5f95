//! [`Linear`]: a frozen linear layer that carries adapters and can merge them.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Tensor, Var};

use crate::adapters::{Adapter, LayerSpec};
use crate::error::{Error, Result};
use crate::ops::{frozen_linear, frozen_linear_onto, quantized_linear, track};

/// A named adapter on a layer, and whether it is currently merged into the weight.
struct Slot {
    name: String,
    adapter: Box<dyn Adapter>,
    merged: bool,
    /// Whether the forward applies it (see [`Linear::set_active`]).
    active: bool,
}

impl Slot {
    /// Whether the forward adds this adapter's own term.
    fn applies(&self) -> bool {
        self.active && !self.merged
    }
}

/// `y = x·W0ᵀ + b + Σ_a ΔW_a(x)` with W0 and b frozen.
///
/// `weight: (out, in)`, `bias: (out)`. Adapters can be merged into W0 (`W0 ← W0 + ΔW`, in f32)
/// and unmerged again; a merged adapter no longer adds its term in [`forward`](Self::forward).
pub struct Linear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    adapters: Vec<Slot>,
    /// Entered for each [`forward`](Self::forward) (STYLE §5.10).
    span: tracing::Span,
}

/// The frozen weight W0: dense, or kept in its quantized blocks (a GGUF base).
#[derive(Clone)]
enum BaseWeight {
    /// A tensor in the model's dtype.
    Dense(Tensor),
    /// GGUF blocks, dequantized per product (`ops::quantized_linear`).
    Quantized(Arc<QTensor>),
}

impl BaseWeight {
    fn dims(&self) -> &[usize] {
        match self {
            Self::Dense(t) => t.dims(),
            Self::Quantized(q) => q.shape().dims(),
        }
    }
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("weight", &self.weight.dims())
            .field(
                "quantized",
                &matches!(self.weight, BaseWeight::Quantized(_)),
            )
            .field("bias", &self.bias.as_ref().map(|b| b.dims().to_vec()))
            .field(
                "adapters",
                &self
                    .adapters
                    .iter()
                    .map(|s| (s.name.as_str(), s.adapter.method(), s.merged))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Linear {
    /// A frozen layer from `weight: (out, in)` and an optional `bias: (out)`.
    ///
    /// # Errors
    /// A weight that is not 2-D or a bias that does not have `out` entries.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        weight.dims2()?;
        Self::with_base(BaseWeight::Dense(weight.detach()), bias)
    }

    /// A frozen layer whose weight `(out, in)` stays in its quantized blocks: the forward
    /// and the input gradient dequantize it per product, so it costs the blocks' size.
    ///
    /// # Errors
    /// A weight that is not 2-D or a bias that does not have `out` entries.
    pub fn quantized(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        weight.shape().dims2()?;
        Self::with_base(BaseWeight::Quantized(Arc::new(weight)), bias)
    }

    /// A layer of a 2-D `weight` and a bias checked to have `out` entries.
    fn with_base(weight: BaseWeight, bias: Option<Tensor>) -> Result<Self> {
        let out_f = weight.dims()[0];
        if let Some(b) = &bias
            && b.dims() != [out_f]
        {
            return Err(Error::TensorShape {
                op: "linear bias",
                expected: vec![out_f],
                got: b.dims().to_vec(),
            });
        }
        Ok(Self {
            weight,
            bias: bias.map(|b| b.detach()),
            adapters: Vec::new(),
            span: tracing::trace_span!("linear"),
        })
    }

    /// Whether the weight is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, BaseWeight::Quantized(_))
    }

    /// The quantized blocks of the weight, if it is kept quantized.
    pub fn quantized_weight(&self) -> Option<&QTensor> {
        match &self.weight {
            BaseWeight::Quantized(q) => Some(q),
            BaseWeight::Dense(_) => None,
        }
    }

    /// Replaces a quantized weight by its f32 values (a no-op for a dense one): what merging
    /// and full fine-tuning need.
    ///
    /// # Errors
    /// The blocks cannot be dequantized.
    pub fn dequantize(&mut self) -> Result<()> {
        if let BaseWeight::Quantized(q) = &self.weight {
            let device = self
                .bias
                .as_ref()
                .map_or(candle_core::Device::Cpu, |b| b.device().clone());
            self.weight = BaseWeight::Dense(q.dequantize(&device)?);
        }
        Ok(())
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    /// The current weight (W0, or W0 + merged updates); a quantized one dequantized into a
    /// fresh f32 tensor.
    pub fn weight(&self) -> Cow<'_, Tensor> {
        match &self.weight {
            BaseWeight::Dense(t) => Cow::Borrowed(t),
            BaseWeight::Quantized(q) => Cow::Owned(
                // candle's CPU dequantization of a block type it reads only allocates and
                // converts; `GgufSource` admits no other type.
                #[allow(clippy::expect_used)]
                q.dequantize(&candle_core::Device::Cpu)
                    .expect("CPU dequantization of GGUF blocks does not fail"),
            ),
        }
    }
    /// The frozen bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight and bias themselves, for full fine-tuning (which makes them `Var`s) and for
    /// loading a fully fine-tuned model's saved tensors; `None` while the weight is kept
    /// quantized ([`dequantize`](Self::dequantize) it first).
    pub fn params_mut(&mut self) -> Option<(&mut Tensor, Option<&mut Tensor>)> {
        match &mut self.weight {
            BaseWeight::Dense(w) => Some((w, self.bias.as_mut())),
            BaseWeight::Quantized(_) => None,
        }
    }

    /// Attaches an adapter under `name`.
    ///
    /// # Errors
    /// [`Error::AdapterMismatch`] if its sizes differ from the layer's or the name is taken.
    pub fn add_adapter(&mut self, name: &str, adapter: Box<dyn Adapter>) -> Result<()> {
        let mismatch = |reason: String| Error::AdapterMismatch {
            name: name.into(),
            layer_out: self.out_features(),
            layer_in: self.in_features(),
            reason,
        };
        // A serial adapter maps the layer's output to itself.
        let expected_in = if adapter.serial() {
            self.out_features()
        } else {
            self.in_features()
        };
        if adapter.in_features() != expected_in || adapter.out_features() != self.out_features() {
            return Err(mismatch(format!(
                "adapter is {}x{} (out x in){}",
                adapter.out_features(),
                adapter.in_features(),
                if adapter.serial() { ", serial" } else { "" }
            )));
        }
        if self.adapters.iter().any(|s| s.name == name) {
            return Err(mismatch(
                "an adapter of that name is already attached".into(),
            ));
        }
        self.adapters.push(Slot {
            name: name.into(),
            adapter,
            merged: false,
            active: true,
        });
        Ok(())
    }

    /// The attached adapters by name.
    pub fn adapters(&self) -> impl Iterator<Item = (&str, &dyn Adapter)> {
        self.adapters
            .iter()
            .map(|s| (s.name.as_str(), s.adapter.as_ref()))
    }

    /// Trainable tensors of every active unmerged adapter as `(adapter name, tensor name,
    /// var)`.
    pub fn trainable(&self) -> Vec<(String, String, Var)> {
        self.adapters
            .iter()
            .filter(|s| s.applies())
            .flat_map(|s| {
                s.adapter
                    .trainable()
                    .into_iter()
                    .map(|(n, v)| (s.name.clone(), n, v))
            })
            .collect()
    }

    /// `x: (…, in)` → `(…, out)`: the frozen path plus every unmerged parallel adapter's
    /// update, then each serial adapter in attachment order (`y ← y + g(y)`).
    ///
    /// # Errors
    /// `x`'s last dim is not `in_features`; dtype or device mismatch.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut y = self.forward_parallel(x, train)?;
        for s in self
            .adapters
            .iter()
            .filter(|s| s.applies() && s.adapter.serial())
        {
            let dims = y.dims().to_vec();
            let n: usize = dims[..dims.len().saturating_sub(1)].iter().product();
            let g = track(
                s.adapter
                    .forward_delta(&y.reshape((n, self.out_features()))?, train)?,
            );
            y = (y + g.reshape(dims)?)?;
        }
        Ok(y)
    }

    /// The frozen path plus every unmerged parallel adapter's update.
    fn forward_parallel(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((n, self.in_features()))?;
        // Inside `no_grad` each update is cut from the graph, so the network's activations are
        // freed as the forward goes instead of being kept for a backward.
        let mut deltas = self
            .adapters
            .iter()
            .filter(|s| s.applies() && !s.adapter.serial())
            .map(|s| -> Result<Tensor> { Ok(track(s.adapter.forward_delta(&x2, train)?)) });
        let Some(first) = deltas.next() else {
            // W and b are `Var`s under full fine-tuning: cut the graph inside `no_grad`.
            return Ok(track(match &self.weight {
                BaseWeight::Dense(w) => frozen_linear(x, w, self.bias.as_ref())?,
                BaseWeight::Quantized(q) => quantized_linear(x, q, self.bias.as_ref(), None)?,
            }));
        };
        let mut delta = first?;
        for d in deltas {
            delta = (delta + d?)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
        }
        // The frozen path accumulates onto the adapters' update: no separate add.
        let delta = delta.reshape(out_dims)?;
        Ok(track(match &self.weight {
            BaseWeight::Dense(w) => frozen_linear_onto(x, w, self.bias.as_ref(), &delta)?,
            BaseWeight::Quantized(q) => quantized_linear(x, q, self.bias.as_ref(), Some(&delta))?,
        }))
    }

    /// Merges every active unmerged adapter into the weight (`W ← W + ΔW`, computed in f32).
    ///
    /// Nothing changes if any merge would produce a non-finite weight.
    ///
    /// # Errors
    /// [`Error::NonFiniteMerge`]; [`Error::MergeState`] if nothing is left to merge.
    pub fn merge(&mut self) -> Result<()> {
        if !self.adapters.iter().any(Slot::applies) {
            return Err(Error::MergeState {
                op: "merge",
                reason: "no active unmerged adapter on this layer".into(),
            });
        }
        // A quantized W0 is dequantized: W0 + ΔW has no exact form in its blocks.
        let mut w = self.weight().into_owned();
        for s in self.adapters.iter().filter(|s| s.applies()) {
            w = s.adapter.merged_weight(&s.name, &w)?;
        }
        // ΔW was computed from the adapter's `Var`s; the merged weight is frozen like W0, so
        // it must not carry their graph (which would make every forward record one).
        self.weight = BaseWeight::Dense(w.detach());
        for s in &mut self.adapters {
            s.merged |= s.active;
        }
        Ok(())
    }

    /// Subtracts every merged adapter from the weight again (`W ← W − ΔW`, in f32).
    ///
    /// # Errors
    /// [`Error::MergeState`] if no adapter is merged; [`Error::NonFiniteMerge`].
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.adapters.iter().any(|s| s.merged) {
            return Err(Error::MergeState {
                op: "unmerge",
                reason: "no merged adapter on this layer".into(),
            });
        }
        let mut w = self.weight().into_owned();
        for s in self.adapters.iter().filter(|s| s.merged).rev() {
            w = s.adapter.unmerged_weight(&s.name, &w)?;
        }
        self.weight = BaseWeight::Dense(w.detach());
        for s in &mut self.adapters {
            s.merged = false;
        }
        Ok(())
    }

    /// Makes the adapters named in `names` the ones the forward applies (and training
    /// trains); the others stay attached, inactive. Layers without any of those names run
    /// their frozen path alone.
    ///
    /// # Errors
    /// [`Error::MergeState`] for deactivating a merged adapter (its update is in the
    /// weight; unmerge first).
    pub fn set_active(&mut self, names: &[&str]) -> Result<()> {
        if let Some(s) = self
            .adapters
            .iter()
            .find(|s| s.merged && !names.contains(&s.name.as_str()))
        {
            return Err(Error::MergeState {
                op: "set_active",
                reason: format!(
                    "adapter `{}` is merged into the weight; unmerge it first",
                    s.name
                ),
            });
        }
        for s in &mut self.adapters {
            s.active = names.contains(&s.name.as_str());
        }
        Ok(())
    }

    /// Whether any adapter is merged into the weight.
    pub fn is_merged(&self) -> bool {
        self.adapters.iter().any(|s| s.merged)
    }
}

impl LayerSpec {
    /// The spec of an existing layer: its sizes, dtype, device and weight.
    pub fn for_layer(layer: &Linear) -> Self {
        let (dtype, device, weight, blocks) = match &layer.weight {
            BaseWeight::Dense(w) => (w.dtype(), w.device().clone(), Some(w.clone()), None),
            // Quantized blocks compute in f32 on the CPU.
            BaseWeight::Quantized(q) => (
                candle_core::DType::F32,
                candle_core::Device::Cpu,
                None,
                Some(std::sync::Arc::clone(q)),
            ),
        };
        Self {
            in_features: layer.in_features(),
            out_features: layer.out_features(),
            dtype,
            device,
            weight,
            blocks,
        }
    }
}
