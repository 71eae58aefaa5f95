//! One walk over a model's named tensors. Each family lists its tensors once, with
//! `parts!`: each entry's field, name, tag and shape. The macro makes from that one listing
//! the struct, its loading (from a checkpoint or a seeded random source) and its walks with
//! shared ([`Entry`]) and mutable ([`EntryMut`]) access. Adapters' linears, the state dict,
//! full fine-tuning's base tensors and a saved full fine-tune's reload are all read from the
//! walk, and ask its tags rather than names.

use candle_core::Tensor;

use crate::adapters::Linear;
use crate::error::Result;
use crate::models::weights::{Init, LinearWeight, Loader};

/// Which part of the model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// The embedding module: token, position and type tables, their layer norm, an input
    /// projection.
    Embeddings,
    /// The transformer layers and what sits between them (relative embeddings, conv).
    Encoder,
    /// The backbone's pooler (BERT's `pooler.dense`), which some heads use.
    Pooler,
    /// A decoder's LM head (`lm_head`), which PEFT's `all-linear` leaves out.
    LmHead,
}

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A lookup table (token, position, type or relative-position embeddings).
    Embedding,
    /// A layer norm's weight or bias.
    Norm,
    /// A linear layer, with its role.
    Linear(LinearRole),
    /// Anything else (a convolution's weight or bias).
    Other,
}

/// What a linear layer does in its block, for methods that follow particular projections
/// (bottleneck adapters sit after the attention and feed-forward outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearRole {
    /// The attention block's output projection (BERT's `attention.output.dense`).
    AttentionOutput,
    /// The feed-forward block's output projection (BERT's `output.dense`).
    FfnOutput,
    /// Any other projection (queries, keys, values, the feed-forward input, poolers).
    Other,
}

/// A tensor's tags: where it sits and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// Where it sits.
    pub module: Module,
    /// What it is.
    pub kind: Kind,
}

impl Tag {
    /// A tag.
    pub const fn new(module: Module, kind: Kind) -> Self {
        Self { module, kind }
    }

    /// A linear layer's tag.
    pub const fn linear(module: Module, role: LinearRole) -> Self {
        Self::new(module, Kind::Linear(role))
    }
}

/// One named entry of a walk with shared access.
pub enum Entry<'a> {
    /// A linear layer (weight and bias under `<path>.weight` / `<path>.bias`), with its tag
    /// (`kind` is [`Kind::Linear`]).
    Linear(Tag, &'a Linear),
    /// Any other tensor.
    Tensor(Tag, &'a Tensor),
}

/// One named entry of a walk with mutable access.
pub enum EntryMut<'a> {
    /// A linear layer, with its tag.
    Linear(Tag, &'a mut Linear),
    /// Any other tensor.
    Tensor(Tag, &'a mut Tensor),
}

/// A base tensor as full fine-tuning sees it: its state-dict name, its tags (a linear's
/// weight and bias carry the linear's tag), mutable.
pub struct BaseTensor<'a> {
    /// The state-dict name.
    pub name: String,
    /// Where it sits and what it is.
    pub tag: Tag,
    /// The tensor.
    pub tensor: &'a mut Tensor,
}

/// The tags the families use.
pub(crate) mod tags {
    use super::{Kind, LinearRole, Module, Tag};

    /// A lookup table of the embedding module.
    pub(crate) const EMBEDDING_TABLE: Tag = Tag::new(Module::Embeddings, Kind::Embedding);
    /// The embedding module's layer norm.
    pub(crate) const EMBEDDING_NORM: Tag = Tag::new(Module::Embeddings, Kind::Norm);
    /// A linear of the embedding module (DeBERTa's `embed_proj`).
    pub(crate) const EMBEDDING_LINEAR: Tag = Tag::linear(Module::Embeddings, LinearRole::Other);
    /// A lookup table inside the encoder (DeBERTa's relative embeddings).
    pub(crate) const ENCODER_TABLE: Tag = Tag::new(Module::Encoder, Kind::Embedding);
    /// A layer norm inside the encoder.
    pub(crate) const NORM: Tag = Tag::new(Module::Encoder, Kind::Norm);
    /// A projection with no particular role (queries, keys, values, the feed-forward input).
    pub(crate) const LINEAR: Tag = Tag::linear(Module::Encoder, LinearRole::Other);
    /// The attention block's output projection.
    pub(crate) const ATTENTION_OUTPUT: Tag =
        Tag::linear(Module::Encoder, LinearRole::AttentionOutput);
    /// The feed-forward block's output projection.
    pub(crate) const FFN_OUTPUT: Tag = Tag::linear(Module::Encoder, LinearRole::FfnOutput);
    /// Any other encoder tensor (a convolution's weight or bias).
    pub(crate) const OTHER: Tag = Tag::new(Module::Encoder, Kind::Other);
    /// The backbone's pooler.
    pub(crate) const POOLER: Tag = Tag::linear(Module::Pooler, LinearRole::Other);
    /// A decoder's LM head.
    pub(crate) const LM_HEAD: Tag = Tag::linear(Module::LmHead, LinearRole::Other);
}

/// `parent.child`, or `child` alone at the top (an empty parent or one ending in `.`, as the
/// `bert.` prefix does).
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() || parent.ends_with('.') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// A piece of a model listed in a [`parts!`] struct: it loads itself from the tensors under a
/// name and walks them again under the same name, so the name is written once.
pub(crate) trait Part: Sized {
    /// What loading needs besides the name: a shape, a config.
    type Spec<'s>: Copy;
    /// What the walk reports it as: a [`Tag`] for a tensor, a linear or a norm; nothing for a
    /// struct of parts, whose fields carry their own.
    type Label: Copy;

    /// Loads the part named `name` (the loader adds the checkpoint's prefix).
    ///
    /// # Errors
    /// A tensor missing from the checkpoint or of another shape.
    fn load(ld: &mut Loader, name: &str, spec: Self::Spec<'_>) -> Result<Self>;

    /// Reports each tensor (or linear) of the part under `name`.
    fn walk<'a>(&'a self, name: &str, label: Self::Label, f: &mut dyn FnMut(String, Entry<'a>));

    /// The same walk with mutable access.
    fn walk_mut<'a>(
        &'a mut self,
        name: &str,
        label: Self::Label,
        f: &mut dyn FnMut(String, EntryMut<'a>),
    );
}

/// A frozen tensor: its exact shape and how a random model draws it.
impl Part for Tensor {
    type Spec<'s> = (&'s [usize], Init);
    type Label = Tag;

    fn load(ld: &mut Loader, name: &str, (shape, init): Self::Spec<'_>) -> Result<Self> {
        ld.tensor(name, shape, init)
    }

    fn walk<'a>(&'a self, name: &str, tag: Tag, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(name.to_string(), Entry::Tensor(tag, self));
    }

    fn walk_mut<'a>(&'a mut self, name: &str, tag: Tag, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(name.to_string(), EntryMut::Tensor(tag, self));
    }
}

/// A linear's size: `weight` is `(out, in)`, `bias` (when it has one) `(out)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinearDims {
    out: usize,
    inp: usize,
    bias: bool,
}

impl LinearDims {
    /// With a bias.
    pub(crate) const fn biased(out: usize, inp: usize) -> Self {
        Self {
            out,
            inp,
            bias: true,
        }
    }

    /// Without a bias.
    pub(crate) const fn unbiased(out: usize, inp: usize) -> Self {
        Self {
            out,
            inp,
            bias: false,
        }
    }
}

/// An adapter-capable linear: `<name>.weight`, `<name>.bias`, both N(0, std²) when random.
impl Part for Linear {
    type Spec<'s> = LinearDims;
    type Label = Tag;

    fn load(ld: &mut Loader, name: &str, dims: LinearDims) -> Result<Self> {
        let w = ld.linear_weight(&join(name, "weight"), &[dims.out, dims.inp])?;
        let b = if dims.bias {
            Some(ld.tensor(&join(name, "bias"), &[dims.out], Init::Normal)?)
        } else {
            None
        };
        match w {
            LinearWeight::Dense(w) => Linear::new(w, b),
            LinearWeight::Quantized(q) => Linear::quantized(q, b),
        }
    }

    fn walk<'a>(&'a self, name: &str, tag: Tag, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(name.to_string(), Entry::Linear(tag, self));
    }

    fn walk_mut<'a>(&'a mut self, name: &str, tag: Tag, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(name.to_string(), EntryMut::Linear(tag, self));
    }
}

/// A part the config may leave out: loaded with `Some(spec)`, absent with `None`.
impl<T: Part> Part for Option<T> {
    type Spec<'s> = Option<T::Spec<'s>>;
    type Label = T::Label;

    fn load(ld: &mut Loader, name: &str, spec: Self::Spec<'_>) -> Result<Self> {
        spec.map(|s| T::load(ld, name, s)).transpose()
    }

    fn walk<'a>(&'a self, name: &str, label: T::Label, f: &mut dyn FnMut(String, Entry<'a>)) {
        if let Some(part) = self {
            part.walk(name, label, f);
        }
    }

    fn walk_mut<'a>(
        &'a mut self,
        name: &str,
        label: T::Label,
        f: &mut dyn FnMut(String, EntryMut<'a>),
    ) {
        if let Some(part) = self {
            part.walk_mut(name, label, f);
        }
    }
}

/// `count` parts alike, named `<name>.0`, `<name>.1`, … (the layers of a stack).
impl<T: Part> Part for Vec<T> {
    type Spec<'s> = (usize, T::Spec<'s>);
    type Label = T::Label;

    fn load(ld: &mut Loader, name: &str, (count, spec): Self::Spec<'_>) -> Result<Self> {
        (0..count)
            .map(|i| T::load(ld, &join(name, &i.to_string()), spec))
            .collect()
    }

    fn walk<'a>(&'a self, name: &str, label: T::Label, f: &mut dyn FnMut(String, Entry<'a>)) {
        for (i, part) in self.iter().enumerate() {
            part.walk(&join(name, &i.to_string()), label, f);
        }
    }

    fn walk_mut<'a>(
        &'a mut self,
        name: &str,
        label: T::Label,
        f: &mut dyn FnMut(String, EntryMut<'a>),
    ) {
        for (i, part) in self.iter_mut().enumerate() {
            part.walk_mut(&join(name, &i.to_string()), label, f);
        }
    }
}

/// Declares a struct of model parts from one listing of its fields: name (relative to the
/// struct's), label ([`Tag`] or `()`) and load spec. It implements [`Part`], so the struct
/// loads (in field order, which a random model's draws follow) and walks (in the same order)
/// from the one listing.
///
/// ```text
/// parts! {
///     /// One transformer layer.
///     struct Layer for<'c> |cfg: &'c BertConfig| {
///         let h = cfg.hidden_size;
///     } {
///         query: Linear = "attention.self.query", tags::LINEAR, LinearDims::biased(h, h);
///         norm: Norm = "output.LayerNorm", tags::NORM, (h, cfg.layer_norm_eps);
///     }
/// }
/// ```
macro_rules! parts {
    (
        $(#[$meta:meta])*
        struct $Name:ident for<$lt:lifetime> |$spec:tt : $Spec:ty| {
            $(let $var:tt = $val:expr;)*
        } {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $Ty:ty = $path:literal, $label:expr, $fspec:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        struct $Name {
            $($(#[$fmeta])* $field: $Ty,)*
        }

        impl $crate::models::walk::Part for $Name {
            type Spec<$lt> = $Spec;
            type Label = ();

            fn load(
                ld: &mut $crate::models::weights::Loader,
                name: &str,
                $spec: Self::Spec<'_>,
            ) -> $crate::error::Result<Self> {
                $(let $var = $val;)*
                Ok(Self {
                    $($field: <$Ty as $crate::models::walk::Part>::load(
                        ld,
                        &$crate::models::walk::join(name, $path),
                        $fspec,
                    )?,)*
                })
            }

            fn walk<'a>(
                &'a self,
                name: &str,
                (): (),
                f: &mut dyn FnMut(String, $crate::models::walk::Entry<'a>),
            ) {
                $(<$Ty as $crate::models::walk::Part>::walk(
                    &self.$field,
                    &$crate::models::walk::join(name, $path),
                    $label,
                    f,
                );)*
            }

            fn walk_mut<'a>(
                &'a mut self,
                name: &str,
                (): (),
                f: &mut dyn FnMut(String, $crate::models::walk::EntryMut<'a>),
            ) {
                $(<$Ty as $crate::models::walk::Part>::walk_mut(
                    &mut self.$field,
                    &$crate::models::walk::join(name, $path),
                    $label,
                    f,
                );)*
            }
        }
    };
}
pub(crate) use parts;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};

    use super::*;
    use crate::io::SafetensorsSource;
    use crate::io::fs::TempDir;

    parts! {
        /// A block: a biased and an unbiased linear, an optional table.
        struct Block for<'c> |(width, with_table): (usize, bool)| {} {
            up: Linear = "up", tags::LINEAR, LinearDims::biased(2 * width, width);
            down: Linear = "down", tags::FFN_OUTPUT, LinearDims::unbiased(width, 2 * width);
            table: Option<Tensor> = "table.weight", tags::ENCODER_TABLE,
                with_table.then_some((&[3, width][..], Init::Normal));
        }
    }

    parts! {
        /// Two blocks, the first with its table.
        struct Stack for<'c> |width: usize| {} {
            blocks: Vec<Block> = "blocks", (), (2, (width, true));
            last: Block = "last", (), (width, false);
        }
    }

    /// Each name the walk reports, a linear's expanded to its weight and bias.
    fn names(stack: &Stack, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        stack.walk(prefix, (), &mut |name, e| match e {
            Entry::Linear(_, l) => {
                out.push(join(&name, "weight"));
                if l.bias().is_some() {
                    out.push(join(&name, "bias"));
                }
            }
            Entry::Tensor(..) => out.push(name),
        });
        out
    }

    #[test]
    fn one_listing_loads_and_walks_the_same_names_in_the_same_order() {
        let rng = crate::adapters::seeded_rng(7);
        let mut ld = Loader::random(rng, 0.02, DType::F32, &Device::Cpu);
        let stack = Stack::load(&mut ld, "", 4).unwrap();
        assert_eq!(
            names(&stack, "model."),
            [
                "model.blocks.0.up.weight",
                "model.blocks.0.up.bias",
                "model.blocks.0.down.weight",
                "model.blocks.0.table.weight",
                "model.blocks.1.up.weight",
                "model.blocks.1.up.bias",
                "model.blocks.1.down.weight",
                "model.blocks.1.table.weight",
                "model.last.up.weight",
                "model.last.up.bias",
                "model.last.down.weight",
            ]
        );
        let mut tags = Vec::new();
        stack.walk("", (), &mut |_, e| match e {
            Entry::Linear(t, _) | Entry::Tensor(t, _) => tags.push(t),
        });
        assert_eq!(
            tags[..3],
            [tags::LINEAR, tags::FFN_OUTPUT, tags::ENCODER_TABLE]
        );

        // What the walk reports is what a checkpoint load asks for, no more and no less.
        let mut saved = HashMap::new();
        stack.walk("", (), &mut |name, e| match e {
            Entry::Linear(_, l) => {
                saved.insert(join(&name, "weight"), l.weight().into_owned());
                if let Some(b) = l.bias() {
                    saved.insert(join(&name, "bias"), b.clone());
                }
            }
            Entry::Tensor(_, t) => {
                saved.insert(name, t.clone());
            }
        });
        let dir = TempDir::new("walk-round-trip");
        candle_core::safetensors::save(&saved, dir.join("model.safetensors")).unwrap();
        let src = SafetensorsSource::open(&dir).unwrap();
        let mut ld = Loader::checkpoint(&src, "", DType::F32, &Device::Cpu);
        let again = Stack::load(&mut ld, "", 4).unwrap();
        let report = ld.report();
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        assert_eq!(report.loaded.len(), saved.len());
        let w = |s: &Stack| s.blocks[1].down.weight().to_vec2::<f32>().unwrap();
        assert_eq!(w(&again), w(&stack));
    }

    #[test]
    fn a_missing_optional_part_is_named_in_the_error() {
        let dir = TempDir::new("walk-missing");
        let t = Tensor::zeros((8, 4), DType::F32, &Device::Cpu).unwrap();
        let saved = HashMap::from([("up.weight".to_string(), t)]);
        candle_core::safetensors::save(&saved, dir.join("model.safetensors")).unwrap();
        let src = SafetensorsSource::open(&dir).unwrap();
        let mut ld = Loader::checkpoint(&src, "", DType::F32, &Device::Cpu);
        let err = Block::load(&mut ld, "", (4, false))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`up.bias`"), "{err}");
    }

    #[test]
    fn names_join_under_a_dotted_prefix_or_none() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("bert.", "a"), "bert.a");
        assert_eq!(join("x.y", "0"), "x.y.0");
    }
}
