//! Building blocks both model families share: the frozen layer norm [`Norm`] (a
//! [`Part`] of the walk), train-only [`dropout`], the trainable head layer
//! [`Dense`], and the encoder/head checks and pooling that do not depend on the architecture.

use std::path::Path;

use candle_core::{DType, Tensor, Var};

use crate::adapters::kaiming_uniform;
use crate::error::{Error, Result};
use crate::models::walk::{Entry, EntryMut, Part, Tag, join};
use crate::models::weights::{Init, Loader};
use crate::models::{ModelInput, Pooling};
use crate::ops::layer_norm;

pub(crate) use crate::ops::MASK_VALUE;

/// The additive attention bias per key of a `(b, s)` 0/1 mask: 0 for real tokens,
/// [`MASK_VALUE`] for padding, in `dtype`.
pub(crate) fn key_bias(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(attention_mask
        .to_dtype(dtype)?
        .affine(-MASK_VALUE, MASK_VALUE)?)
}

/// Dropout that is the identity unless training.
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        crate::ops::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

/// A frozen layer norm (`…LayerNorm.weight` / `.bias`).
pub(crate) struct Norm {
    /// γ, `…LayerNorm.weight`.
    pub(crate) gamma: Tensor,
    /// β, `…LayerNorm.bias`.
    pub(crate) beta: Tensor,
    eps: f64,
}

/// A frozen RMS norm (`…norm.weight`, no bias), as LLaMA-family decoders use.
pub(crate) struct RmsNorm {
    /// γ.
    pub(crate) gamma: Tensor,
    eps: f64,
}

/// An RMS norm: `<name>.weight` (γ, ones when random), `(hidden)`, with the config's epsilon.
impl Part for RmsNorm {
    type Spec<'s> = (usize, f64);
    type Label = Tag;

    fn load(ld: &mut Loader, name: &str, (hidden, eps): (usize, f64)) -> Result<Self> {
        Ok(Self {
            gamma: ld.tensor(&join(name, "weight"), &[hidden], Init::Ones)?,
            eps,
        })
    }

    fn walk<'a>(&'a self, name: &str, tag: Tag, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(join(name, "weight"), Entry::Tensor(tag, &self.gamma));
    }

    fn walk_mut<'a>(&'a mut self, name: &str, tag: Tag, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(join(name, "weight"), EntryMut::Tensor(tag, &mut self.gamma));
    }
}

impl RmsNorm {
    /// `x / √(mean(x²) + eps) ∘ γ` over the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // γ is a `Var` under full fine-tuning: cut the graph inside `no_grad`.
        Ok(crate::ops::track(crate::ops::rms_norm(
            x,
            &self.gamma,
            self.eps,
        )?))
    }
}

/// A layer norm: `<name>.weight` (γ, ones when random) and `<name>.bias` (β, zeros), both
/// `(hidden)`, with the config's epsilon.
impl Part for Norm {
    type Spec<'s> = (usize, f64);
    type Label = Tag;

    fn load(ld: &mut Loader, name: &str, (hidden, eps): (usize, f64)) -> Result<Self> {
        Ok(Self {
            gamma: ld.tensor(&join(name, "weight"), &[hidden], Init::Ones)?,
            beta: ld.tensor(&join(name, "bias"), &[hidden], Init::Zeros)?,
            eps,
        })
    }

    fn walk<'a>(&'a self, name: &str, tag: Tag, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(join(name, "weight"), Entry::Tensor(tag, &self.gamma));
        f(join(name, "bias"), Entry::Tensor(tag, &self.beta));
    }

    fn walk_mut<'a>(&'a mut self, name: &str, tag: Tag, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(join(name, "weight"), EntryMut::Tensor(tag, &mut self.gamma));
        f(join(name, "bias"), EntryMut::Tensor(tag, &mut self.beta));
    }
}

impl Norm {
    /// `γ · (x − mean) / √(var + eps) + β` over the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("norm").entered();
        // γ and β are `Var`s under full fine-tuning: cut the graph inside `no_grad`.
        Ok(crate::ops::track(layer_norm(
            x,
            &self.gamma,
            &self.beta,
            self.eps,
        )?))
    }
}

/// A trainable dense layer of a head: `y = x·Wᵀ + b`, W `(out, in)`, b `(out)`.
pub(crate) struct Dense {
    name: &'static str,
    weight: Var,
    bias: Var,
    /// `false` when the checkpoint supplied the weights.
    fresh: bool,
}

impl Dense {
    /// Loads `{name}.weight`/`.bias` if the checkpoint has them, else PyTorch's `nn.Linear`
    /// init: W and b ~ U(±1/√in).
    pub(crate) fn build(
        ld: &mut Loader,
        name: &'static str,
        (out_f, in_f): (usize, usize),
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Self> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let w = ld.head_tensor(&wn, &[out_f, in_f])?;
        let b = ld.head_tensor(&bn, &[out_f])?;
        let (dtype, device) = (ld.dtype(), ld.device().clone());
        let fresh = w.is_none() && b.is_none();
        let (w, b) = match (w, b) {
            (Some(w), Some(b)) => (w, b),
            (None, None) => (
                kaiming_uniform(&[out_f, in_f], in_f, rng, dtype, &device)?,
                kaiming_uniform(&[out_f], in_f, rng, dtype, &device)?,
            ),
            // Half a pair is an error naming the missing half.
            (Some(w), None) => (w, ld.head_tensor_required(&bn, &[out_f])?),
            (None, Some(b)) => (ld.head_tensor_required(&wn, &[out_f, in_f])?, b),
        };
        Ok(Self {
            name,
            weight: Var::from_tensor(&w)?,
            bias: Var::from_tensor(&b)?,
            fresh,
        })
    }

    /// The bias, if the layer was initialised here rather than loaded from the checkpoint.
    pub(crate) fn fresh_bias(&self) -> Option<Var> {
        self.fresh.then(|| self.bias.clone())
    }

    /// `x·Wᵀ + b` (detached inside [`no_grad`](crate::ops::no_grad)).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("head-dense").entered();
        let y = x
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?;
        Ok(crate::ops::track(y))
    }

    /// Appends `{name}.weight` and `{name}.bias` to `out`.
    pub(crate) fn vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.weight", self.name), self.weight.clone()));
        out.push((format!("{}.bias", self.name), self.bias.clone()));
    }
}

/// Rejects `num_labels = 0` as a config error at `path`.
pub(crate) fn check_labels(num_labels: usize, path: &Path) -> Result<()> {
    if num_labels == 0 {
        return Err(Error::ModelConfig {
            path: path.to_path_buf(),
            reason: "num_labels must be at least 1 (1 = regression)".into(),
        });
    }
    Ok(())
}

/// The segment ids of `input`, u32: the given ones, else zeros `(b_sz, seq_len)`.
pub(crate) fn token_types(input: &ModelInput) -> Result<Tensor> {
    Ok(match &input.token_type_ids {
        Some(t) => t.to_dtype(DType::U32)?,
        None => input.input_ids.zeros_like()?.to_dtype(DType::U32)?,
    })
}

/// Checks that the given input tensors share one `(b_sz, seq_len)` shape and that `seq_len`
/// fits `max_seq_len` (if the model has a bound); returns `(b_sz, seq_len)`.
pub(crate) fn check_input(
    input: &ModelInput,
    max_seq_len: Option<usize>,
) -> Result<(usize, usize)> {
    let (b_sz, seq_len) = input.input_ids.dims2()?;
    let optional = [
        ("token_type_ids", input.token_type_ids.as_ref()),
        ("position_ids", input.position_ids.as_ref()),
    ];
    let given = optional
        .into_iter()
        .filter_map(|(what, t)| t.map(|t| (what, t)));
    for (what, t) in [
        ("input_ids", &input.input_ids),
        ("attention_mask", &input.attention_mask),
    ]
    .into_iter()
    .chain(given)
    {
        if t.dims() != [b_sz, seq_len] {
            return Err(Error::TensorShape {
                op: what,
                expected: vec![b_sz, seq_len],
                got: t.dims().to_vec(),
            });
        }
    }
    if let Some(max) = max_seq_len
        && seq_len > max
    {
        return Err(Error::TensorShape {
            op: "input_ids (longer than the model's position table)",
            expected: vec![b_sz, max],
            got: vec![b_sz, seq_len],
        });
    }
    Ok((b_sz, seq_len))
}

/// Pools hidden states `(b_sz, seq_len, hidden)` into `(b_sz, hidden)`: the first token
/// (`Cls`) or the mean over real tokens (`Mean`).
pub(crate) fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?),
        Pooling::Mean => {
            let mask = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
            let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
            Ok(sum.broadcast_div(&count)?)
        }
        Pooling::LastToken => {
            // The largest position whose mask is 1, for left or right padding alike.
            let (b_sz, seq_len, hidden_size) = hidden.dims3()?;
            let positions = Tensor::arange(0u32, seq_len as u32, hidden.device())?
                .unsqueeze(0)?
                .broadcast_as((b_sz, seq_len))?;
            let last = positions
                .mul(&attention_mask.to_dtype(DType::U32)?)?
                .max_keepdim(1)?;
            let idx = last
                .unsqueeze(2)?
                .broadcast_as((b_sz, 1, hidden_size))?
                .contiguous()?;
            Ok(hidden.gather(&idx, 1)?.squeeze(1)?)
        }
    }
}

/// `attention_mask` with `prompt_len` real tokens in front: what the layers attend and the
/// head pools over.
pub(crate) fn with_prompt_mask(attention_mask: &Tensor, prompt_len: usize) -> Result<Tensor> {
    if prompt_len == 0 {
        return Ok(attention_mask.clone());
    }
    let (b_sz, _) = attention_mask.dims2()?;
    let ones = Tensor::ones(
        (b_sz, prompt_len),
        attention_mask.dtype(),
        attention_mask.device(),
    )?;
    Ok(Tensor::cat(&[&ones, attention_mask], 1)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn pooling_takes_the_first_token_the_mean_or_the_last_real_token() {
        let dev = Device::Cpu;
        // Two rows of three positions, hidden 2: row 0 right-padded, row 1 left-padded.
        let hidden = Tensor::new(
            &[
                [[1f32, 10.], [2., 20.], [3., 30.]],
                [[4., 40.], [5., 50.], [6., 60.]],
            ],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0], [0, 1, 1]], &dev).unwrap();
        let rows = |p| pool(&hidden, &mask, p).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows(Pooling::Cls), [[1., 10.], [4., 40.]]);
        assert_eq!(rows(Pooling::Mean), [[1.5, 15.], [5.5, 55.]]);
        assert_eq!(rows(Pooling::LastToken), [[2., 20.], [6., 60.]]);
    }

    #[test]
    fn last_token_pooling_passes_gradients_to_the_pooled_positions() {
        let dev = Device::Cpu;
        let hidden = Var::new(&[[[1f32], [2.], [3.]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev).unwrap();
        let out = pool(hidden.as_tensor(), &mask, Pooling::LastToken).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let g = grads.get(hidden.as_tensor()).unwrap();
        assert_eq!(g.to_vec3::<f32>().unwrap(), [[[0.], [1.], [0.]]]);
    }
}
