//! The library's one error type, in sections per module.
//!
//! Each variant names the operation or field that failed, what was expected and what was
//! given, so a user sees one clear line. `anyhow` is used only in `cli/` and `main.rs`.

/// Result alias used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

/// Every error the ttlora library reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- tt: tensor-train shapes and math ----------------------------------------------------
    /// A list of factors does not multiply out to the size it must cover.
    #[error("{what}: factors {factors:?} multiply to {product}, expected {expected}")]
    FactorProduct {
        /// Which factor list (e.g. "input factors").
        what: &'static str,
        /// The factors as given.
        factors: Vec<usize>,
        /// Their product.
        product: usize,
        /// The size they must multiply to.
        expected: usize,
    },
    /// A factor list is empty or holds a zero or one where a real factor is required.
    #[error("{what}: {reason} (got {factors:?})")]
    BadFactors {
        /// Which factor list.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
        /// The factors as given.
        factors: Vec<usize>,
    },
    /// A rank list has the wrong length, a zero rank, or non-unit boundary ranks.
    #[error("tt ranks: {reason}; expected {expected}, got {got:?}")]
    BadRanks {
        /// What is wrong with the ranks.
        reason: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The ranks as given.
        got: Vec<usize>,
    },
    /// A core tensor has a shape that does not fit its place in the train.
    #[error("tt core {index}: shape {got:?}, expected {expected:?}")]
    CoreShape {
        /// Index of the core (0-based, in core order).
        index: usize,
        /// The shape the train needs at this position.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// The requested computation path is not available for this shape.
    #[error("tt path {path}: {reason}")]
    PathUnavailable {
        /// The path asked for.
        path: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// A dense matrix or tensor does not match the shape a TT needs.
    #[error("{op}: tensor shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The operation that checked it.
        op: &'static str,
        /// The shape needed.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// The SVD at the heart of TT-SVD or rounding failed to converge.
    #[error("{op}: SVD of a {rows}x{cols} unfolding did not converge")]
    SvdFailed {
        /// The operation (tt-svd, round).
        op: &'static str,
        /// Rows of the unfolding.
        rows: usize,
        /// Columns of the unfolding.
        cols: usize,
    },
    /// A TT-SVD / rounding request that cannot be met.
    #[error("{op}: {reason}")]
    BadTolerance {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },

    // ---- adapters: adapted layers and their configs ------------------------------------------
    /// A config field holds a value outside what the method accepts.
    #[error("{method} config: field `{field}` {reason} (got {got})")]
    InvalidConfig {
        /// The adapter method (lora, ttlora, ...).
        method: &'static str,
        /// The field name as it appears in the config.
        field: &'static str,
        /// What is wrong.
        reason: String,
        /// The value given, printed.
        got: String,
    },
    /// An adapter does not fit the layer it is attached to.
    #[error("adapter `{name}` on a {layer_out}x{layer_in} layer: {reason}")]
    AdapterMismatch {
        /// The adapter's name.
        name: String,
        /// Layer output features.
        layer_out: usize,
        /// Layer input features.
        layer_in: usize,
        /// What does not fit.
        reason: String,
    },
    /// Merge produced non-finite weights; nothing was written.
    #[error(
        "merge of adapter `{name}`: the merged weight holds NaN or Inf; weights left unchanged"
    )]
    NonFiniteMerge {
        /// The adapter's name.
        name: String,
    },
    /// A merge/unmerge call that makes no sense in the layer's current state.
    #[error("{op}: {reason}")]
    MergeState {
        /// merge or unmerge.
        op: &'static str,
        /// Why not.
        reason: String,
    },
    /// An adapter method name nobody registered.
    #[error("unknown adapter method `{got}`; known methods: {known}")]
    UnknownMethod {
        /// The name given.
        got: String,
        /// The registered names, comma separated.
        known: String,
    },

    // ---- wrapped errors from dependencies ----------------------------------------------------
    /// An error from the candle tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A JSON config that does not parse.
    #[error("config JSON: {0}")]
    Json(#[from] serde_json::Error),
}
