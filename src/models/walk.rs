//! One walk over a model's named tensors. Each family lists its tensors once, in a macro
//! that expands for shared ([`Entry`]) and for mutable ([`EntryMut`]) access; adapters' linears,
//! the state dict, full fine-tuning's base tensors and a saved full fine-tune's reload are
//! all read from that one listing, and ask its tags rather than names.

use candle_core::Tensor;

use crate::adapters::Linear;

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
}

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A lookup table (token, position, type or relative-position embeddings).
    Embedding,
    /// A layer norm's weight or bias.
    Norm,
    /// Anything else (a convolution's weight or bias).
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
}

/// One named entry of a walk with shared access.
pub enum Entry<'a> {
    /// A linear layer (weight and bias under `<path>.weight` / `<path>.bias`), with where it
    /// sits.
    Linear(Module, &'a Linear),
    /// Any other tensor.
    Tensor(Tag, &'a Tensor),
}

/// One named entry of a walk with mutable access.
pub enum EntryMut<'a> {
    /// A linear layer, with where it sits.
    Linear(Module, &'a mut Linear),
    /// Any other tensor.
    Tensor(Tag, &'a mut Tensor),
}

/// A base tensor as full fine-tuning sees it: its state-dict name, its tags (a linear's
/// weight and bias carry [`Kind::Other`] and the linear's module), mutable.
pub struct BaseTensor<'a> {
    /// The state-dict name.
    pub name: String,
    /// Where it sits and what it is.
    pub tag: Tag,
    /// The tensor.
    pub tensor: &'a mut Tensor,
}
