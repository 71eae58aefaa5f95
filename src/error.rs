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
    /// A method config that is not the method's JSON: an unknown field, a value of the wrong
    /// type, not an object.
    #[error("{method} config: {reason}")]
    ConfigField {
        /// The adapter method (lora, ttlora, ...).
        method: &'static str,
        /// What is wrong, as the JSON reader says it (names the field).
        reason: String,
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
    /// An adapter tensor far larger than the layer it adapts: a mistaken config, refused
    /// before it is allocated.
    #[error(
        "{method}: {what} would have shape {dims:?}, far larger than the {}x{} table or layer \
         it belongs to; lower the rank, size or token count in the config",
        layer[0], layer[1]
    )]
    AdapterTooLarge {
        /// The method.
        method: &'static str,
        /// Which tensor.
        what: String,
        /// Its shape.
        dims: Vec<usize>,
        /// The layer's `(out, in)` (the word-embedding table's `(vocab, hidden)` for tokens).
        layer: [usize; 2],
    },
    /// The model's output for an example is NaN or infinite: weights or a scale (α) out of
    /// range, which a score or prediction computed from it would hide.
    #[error(
        "the model's output for example {example} (0-based, in file order) is NaN or \
         infinite; the adapter's scale (alpha) or the weights are out of range"
    )]
    NonFiniteOutput {
        /// Index of the example in its split.
        example: usize,
    },
    /// `--max-len` longer than the model's position table: every longer example would fail
    /// mid-training.
    #[error(
        "--max-len {max_len} is longer than the {positions} positions the model takes ({}); \
         use --max-len {positions} or less",
        config.display()
    )]
    MaxLenTooLong {
        /// The requested length.
        max_len: usize,
        /// The model's limit.
        positions: usize,
        /// Its config.json.
        config: std::path::PathBuf,
    },
    /// A complete output folder could not be put in place; it is kept under another name.
    #[error(
        "{}: could not put the new folder in place ({reason}); it is complete and kept at {}",
        path.display(),
        kept.display()
    )]
    OutputKept {
        /// The output folder.
        path: std::path::PathBuf,
        /// Where the new folder is.
        kept: std::path::PathBuf,
        /// Why the move failed.
        reason: String,
    },
    /// A chat template that is missing or fails to render.
    #[error("{}: chat template: {reason}", path.display())]
    ChatTemplate {
        /// The model file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An example whose prompt and answers the model's context cannot hold.
    #[error(
        "example `{example}`: its prompt and answers are {tokens} tokens, past the model's context of {context}; give --max-len (at most {room}) to cut prompts from the left, which keeps the question and the answers"
    )]
    ExampleTooLong {
        /// The row's `idx` (or line number).
        example: String,
        /// Its tokens, prompt and answers (and an adapter's virtual tokens).
        tokens: usize,
        /// The model's context.
        context: usize,
        /// What the context leaves for an example after an adapter's virtual tokens.
        room: usize,
    },
    /// A prompt the model's context cannot hold (or an empty one).
    #[error(
        "the prompt is {tokens} tokens; the model's context holds {context} (and the prompt must not be empty)"
    )]
    PromptTooLong {
        /// Its tokens.
        tokens: usize,
        /// The context.
        context: usize,
    },
    /// Another process is writing the same output folder.
    #[error(
        "{}: another ttlora process is writing this folder ({holder}); wait for it or choose \
         another --out",
        path.display()
    )]
    OutputLocked {
        /// The output folder.
        path: std::path::PathBuf,
        /// What the lock file says of its holder (`pid N`).
        holder: String,
    },
    /// An output folder holds files ttlora did not write; replacing it would delete them.
    #[error(
        "{}: holds files ttlora did not write ({}); a save replaces the whole folder, so name \
         an empty or new folder",
        path.display(),
        foreign.iter().take(5).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    OutputNotOwn {
        /// The output folder.
        path: std::path::PathBuf,
        /// What it holds that ttlora does not write.
        foreign: Vec<String>,
    },
    /// A search's file (space, study settings, journal) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Study {
        /// The file or study folder.
        path: std::path::PathBuf,
        /// What is wrong, naming the table, key or line.
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

    /// An adapter to write that holds no module.
    #[error("{format}: the adapter holds no module; expected at least one")]
    EmptyAdapter {
        /// The format being written (e.g. "PEFT LoRA").
        format: &'static str,
    },

    // ---- models: attaching methods and virtual tokens ------------------------------------------
    /// An input field the model cannot take in this setting.
    #[error("model input `{field}`: {reason}")]
    UnsupportedInput {
        /// The input field.
        field: &'static str,
        /// Why it cannot be taken.
        reason: &'static str,
    },
    /// A [`Placing`](crate::tuning::attach::Placing) built for another kind of method than the
    /// one attached: layer targets for a method that attaches to no layer, or none for one that
    /// does.
    #[error(
        "attach {method}: the placing was built for another kind of method; expected {expected}, \
         got {got}"
    )]
    PlacementMismatch {
        /// The method being attached.
        method: &'static str,
        /// What the method's placement needs.
        expected: &'static str,
        /// What the placing holds.
        got: &'static str,
    },
    /// A head for an adapter that has one already (or a model with a single head).
    #[error("adapter `{adapter}` has a head already")]
    HeadExists {
        /// The adapter name.
        adapter: String,
    },
    /// Several adapters hold prompt or prefix tokens and none was made active; a forward can
    /// put only one set in front of the input.
    #[error(
        "adapters {} each hold virtual tokens and none is active; choose one with set_active",
        adapters.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousVirtualTokens {
        /// The adapters holding tokens.
        adapters: Vec<String>,
    },
    /// A language-model objective on a model without an LM head.
    #[error(
        "{architecture} has no language-model head; causal-LM training and LM scoring need a \
         decoder (llama, mistral, qwen2)"
    )]
    NotALanguageModel {
        /// The model's architecture.
        architecture: &'static str,
    },
    /// Prompt or prefix tuning on an architecture that has no place for virtual tokens.
    #[error("{method} tuning is not available for {architecture}: {reason}")]
    VirtualTokensUnsupported {
        /// The prompt-learning method ("prompt" or "prefix").
        method: &'static str,
        /// The architecture (e.g. "deberta-v2").
        architecture: &'static str,
        /// Why it has no place for them.
        reason: &'static str,
    },

    // ---- tuning::adapted: saving and exporting what is attached -------------------------------
    /// Saving or exporting an adapter name that no layer of the model carries.
    #[error("no layer carries an adapter named `{adapter}`; nothing to {op}")]
    AdapterNotAttached {
        /// What was asked: "save" or "export".
        op: &'static str,
        /// The adapter name looked for.
        adapter: String,
    },
    /// Saving a prompt-learning adapter from a model that carries no virtual tokens.
    #[error("the model carries no {method} tokens; nothing to save")]
    NoVirtualTokens {
        /// The prompt-learning method (prompt-tuning, prefix-tuning, ...).
        method: &'static str,
    },
    /// Saving a full fine-tune from a model none of whose base tensors trains.
    #[error("{method}: no base tensor of the model trains; nothing to save")]
    NoTrainedBaseTensors {
        /// The method (full fine-tuning).
        method: &'static str,
    },
    /// Export as PEFT LoRA of a method that has no LoRA form; says what to do instead.
    #[error("export as PEFT LoRA: a {method} {what} has no LoRA form; {instead}")]
    NoLoraForm {
        /// The adapter method.
        method: &'static str,
        /// "adapter" or "fine-tune".
        what: &'static str,
        /// What to do instead.
        instead: String,
    },
    /// Export as PEFT LoRA of a module whose adapter is LoRA-shaped in general but not in this
    /// instance (a TT shape without a splitting bond).
    #[error("export as PEFT LoRA: module `{module}` cannot be written as LoRA: {source}")]
    NotLoraShaped {
        /// The module path.
        module: String,
        /// Why its adapter has no rank-r factors.
        #[source]
        source: Box<Error>,
    },
    /// Export as PEFT LoRA of modules that mix a LoRA variant and plain LoRA, which one PEFT
    /// config cannot say.
    #[error(
        "export as PEFT LoRA: modules mix {variant} ({with}) and plain LoRA ({without}), which \
         one PEFT config (`{field}`) cannot say"
    )]
    MixedLoraVariants {
        /// The variant (rsLoRA, DoRA).
        variant: &'static str,
        /// PEFT's config field for it.
        field: &'static str,
        /// Modules that use it.
        with: usize,
        /// Modules that do not.
        without: usize,
    },

    // ---- train: the trainer, its checkpoints and the data going in ----------------------------
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
    /// A training job with nothing to optimize.
    #[error("training: no trainable tensors; the method attached nothing that trains")]
    NoTrainableTensors,
    /// A training job whose training split yields no batch.
    #[error("training: the training split produced no batches")]
    NoBatches,
    /// A checkpoint folder written by a run with other trainable tensors (names or shapes).
    #[error(
        "checkpoint {}: written for other trainable tensors ({saved} saved, {current} now); use \
         a fresh --out folder or the same adapter settings",
        dir.display()
    )]
    CheckpointMismatch {
        /// The checkpoint folder.
        dir: std::path::PathBuf,
        /// Trainable tensors the checkpoint holds.
        saved: usize,
        /// Trainable tensors of this run.
        current: usize,
    },
    /// A task whose label count differs from the adapter head's outputs.
    #[error("task {task} has {labels} label(s), but the adapter's head has {outputs} outputs")]
    TaskHeadMismatch {
        /// The task's name.
        task: String,
        /// Labels the task has (1 for regression).
        labels: usize,
        /// Outputs of the adapter's head.
        outputs: usize,
    },
    /// Scoring an adapter trained on the user's own files, without a file to score.
    #[error("this adapter was trained on custom files; pass a file of labelled examples (--file)")]
    CustomTaskNeedsFile,
    /// A registry task that names no split to evaluate on.
    #[error("task {task}: no dev split to evaluate on")]
    NoEvalSplit {
        /// The task's name.
        task: &'static str,
    },
    /// An example without a label where every example needs one.
    #[error("{op}: example {index} has no label; expected a labelled split")]
    UnlabelledExample {
        /// The operation that needs labels.
        op: &'static str,
        /// 0-based index of the example in its split.
        index: usize,
    },
    /// A split without a label for every example where labels are needed.
    #[error(
        "{op}: the split has {labels} labels for {examples} examples; expected one per example"
    )]
    UnlabelledSplit {
        /// The operation that needs labels.
        op: &'static str,
        /// Examples in the split.
        examples: usize,
        /// Labels it carries.
        labels: usize,
    },
    /// An empty split where examples are needed.
    #[error("{op}: the split holds no example")]
    EmptySplit {
        /// The operation that needs examples.
        op: &'static str,
    },

    // ---- jobs::compress: fine-tunes and adapters into TT-LoRA --------------------------------
    /// A layer one side of a compression has and the other lacks.
    #[error("compress: the {model} model has no layer `{path}` (another architecture or size?)")]
    CompressLayerMissing {
        /// Which model lacks it ("fine-tuned" or "base").
        model: &'static str,
        /// The layer's module path.
        path: String,
    },
    /// Targets that match no linear layer of the model to compress.
    #[error(
        "compress: the targets match no linear layer; layer paths look like {}",
        examples.join(", ")
    )]
    CompressNoTargets {
        /// A few of the model's layer paths.
        examples: Vec<String>,
    },
    /// A compression source that carries no layer update.
    #[error("compress: the source carries no layer update to compress")]
    NothingToCompress,

    // ---- bench -------------------------------------------------------------------------------
    /// A training-step benchmark of a method that trains nothing.
    #[error("bench: method `{method}` has nothing to train (`full` trains every weight)")]
    NothingToTrain {
        /// The method asked for.
        method: String,
    },

    // ---- wrapped errors from dependencies ----------------------------------------------------
    /// An error from the candle tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A JSON config that does not parse.
    #[error("config JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Whether the same work could succeed when tried again: the file system or the compute
    /// backend failed (a full disk, a lost device, memory), not the input, the config or the
    /// training itself (a diverged loss repeats with the same seed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Candle(_)
                | Error::OutputLocked { .. }
                | Error::OutputKept { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_variants_print_their_fields() {
        let cases = [
            (
                Error::CheckpointMismatch {
                    dir: "run/checkpoint".into(),
                    saved: 4,
                    current: 6,
                },
                "checkpoint run/checkpoint: written for other trainable tensors (4 saved, 6 now); \
                 use a fresh --out folder or the same adapter settings",
            ),
            (
                Error::CompressNoTargets {
                    examples: vec!["a.query".into(), "a.value".into()],
                },
                "compress: the targets match no linear layer; layer paths look like a.query, \
                 a.value",
            ),
            (
                Error::NotLoraShaped {
                    module: "a.query".into(),
                    source: Box::new(Error::PathUnavailable {
                        path: "factored",
                        reason: "no splitting bond".into(),
                    }),
                },
                "export as PEFT LoRA: module `a.query` cannot be written as LoRA: tt path \
                 factored: no splitting bond",
            ),
            (
                Error::MixedLoraVariants {
                    variant: "DoRA",
                    field: "use_dora",
                    with: 1,
                    without: 3,
                },
                "export as PEFT LoRA: modules mix DoRA (1) and plain LoRA (3), which one PEFT \
                 config (`use_dora`) cannot say",
            ),
            (
                Error::VirtualTokensUnsupported {
                    method: "prefix",
                    architecture: "deberta-v2",
                    reason: "no place for them",
                },
                "prefix tuning is not available for deberta-v2: no place for them",
            ),
            (
                Error::UnlabelledSplit {
                    op: "evaluate",
                    examples: 5,
                    labels: 0,
                },
                "evaluate: the split has 0 labels for 5 examples; expected one per example",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
