//! Task data: the task registry (GLUE, SuperGLUE, custom CSV/TSV/JSONL files), file readers,
//! tokenization, batching and the evaluation metrics.
//!
//! Owns: [`TaskSpec`] and the [`TASKS`] registry, [`Example`] and [`Label`], the readers
//! ([`read_task_split`], [`read_file`], [`read_custom`]), [`TextEncoder`] (a Hugging Face
//! `tokenizer.json` with padding off and longest-first truncation), batch order and collation
//! into a [`ModelInput`] (the batch type every model family takes), [`Metric`]s as
//! GLUE/SuperGLUE define them, and causal-LM rows (text, prompt/completion, chat) with the
//! spans their loss is taken on (`lm.rs`), and SuperGLUE as prompts and candidate
//! continuations for decoders scored as language models, with every template in one place
//! (`prompted.rs`).
//!
//! Must not know: models (they take its [`ModelInput`]),
//! training, adapters. Every error names the file and 1-based line, and says what was expected
//! and what was found.
//!
//! The flow: `task("sst2")` → [`read_task_split`] → [`TextEncoder::encode_batch`] →
//! [`batch_order`] → [`collate`] + [`label_tensor`] → model → [`compute`] on the predictions.
//! File layouts are those of the offline copies described in `shared/data/README.md`; the
//! bundled `data/glue/SST-2/` makes the quick start work without them.

mod batch;
mod example;
mod gguf_tokenizer;
mod lm;
mod metrics;
mod prompted;
mod readers;
mod task;
mod tokenize;

#[cfg(test)]
mod tests;

pub use batch::{
    ModelInput, batch_order, collate, held_out_split, label_tensor, sequential_batches,
};
pub use example::{Example, Label};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use lm::{
    ChatMessage, LmEncoder, LmRecord, LmRow, LmTokens, RenderChat, Rendered, lm_batch, read_lm_rows,
};
pub use metrics::{Metric, MultiRcScores, compute, multirc_scores};
pub use prompted::{
    CustomTemplate, PromptedExample, PromptedTask, read_custom_prompted,
    read_custom_prompted_unlabeled, read_prompted, read_prompted_unlabeled,
};
pub use readers::{
    CustomColumns, CustomLabels, read_custom, read_file, read_task_split, read_texts,
};
pub use task::{
    Column, Format, LabelKind, Split, SplitFiles, TASKS, TaskSpec, data_root, default_data_roots,
    task, task_names,
};
pub use tokenize::{Encoded, TextEncoder, load_tokenizer, quiet_guarded_panics};

use crate::error::Error;

/// An error of a data operation that has no file to name (metrics, batching): `"<op>: <reason>"`.
pub(crate) fn op_error(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Data {
        op,
        reason: reason.into(),
    }
}
