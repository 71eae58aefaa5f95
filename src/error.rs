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
    /// A merge of an adapter whose update is not a weight matrix (a non-linear adapter).
    #[error("`{method}` adapters cannot be merged into the weights: {reason}")]
    NotMergeable {
        /// The adapter method.
        method: &'static str,
        /// Why not.
        reason: &'static str,
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

    // ---- data: tasks, readers, tokenization ---------------------------------------------------
    /// A row of a data file that cannot be used (bad label, missing column, …).
    #[error("{}:{line}: {reason}", path.display())]
    DataRow {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the row.
        reason: String,
    },
    /// A data file (or split) that cannot be used as a whole (missing, empty, no such column).
    #[error("{}: {reason}", path.display())]
    DataFile {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data operation that has no file to name (metrics, batching, labels) got bad input.
    #[error("{op}: {reason}")]
    Data {
        /// The operation (e.g. `collate`, `metrics`).
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A task name nobody registered.
    #[error("unknown task `{got}`; known tasks: {known}")]
    UnknownTask {
        /// The name given.
        got: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// A tokenizer that cannot be loaded or used.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        /// The tokenizer.json file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },

    // ---- io / models: model folders, configs, weights ----------------------------------------
    /// A model folder or file that cannot be used.
    #[error("{}: {reason}", path.display())]
    ModelFile {
        /// The folder or file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A config.json field that is missing, unsupported or inconsistent.
    #[error("model config {}: {reason}", path.display())]
    ModelConfig {
        /// The config.json file.
        path: std::path::PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A weight tensor that is missing or has the wrong shape or dtype.
    #[error("{}: tensor `{name}` {reason}", path.display())]
    WeightTensor {
        /// The weights file.
        path: std::path::PathBuf,
        /// The tensor's full name.
        name: String,
        /// What is wrong (expected vs got).
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- train ---------------------------------------------------------------------------------
    /// The loss became NaN or infinite; training stops instead of corrupting the adapter.
    #[error(
        "training step {step}: the loss is {value}; stopped (try a lower learning rate, \
         gradient clipping, or check the labels)"
    )]
    NonFiniteLoss {
        /// Optimizer step at which it happened.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// A training setup that cannot run (no trainable tensors, no batches, …).
    #[error("training: {0}")]
    Training(String),

    // ---- wrapped errors from dependencies ----------------------------------------------------
    /// An error from the candle tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A JSON config that does not parse.
    #[error("config JSON: {0}")]
    Json(#[from] serde_json::Error),
}
