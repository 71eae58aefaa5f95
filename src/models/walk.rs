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
