//! Jobs: what a command does end to end, built from the lower layers. A task's examples
//! (`task`); a study prepared once (`study`: model, tokenizer, tokenized split) and trials run
//! on it (`trial`: a method and its training, what a search repeats); fine-tuning as
//! `ttlora train` runs it (`finetune`: one study, one trial, the adapter and the run record
//! `record` saved); a saved adapter on its base model (`inference`) scored or used to predict
//! (`eval`); text generation with a decoder (`generate`) and the scoring of candidate
//! continuations (`lm_score`, SuperGLUE on decoders); tokenized splits and scoring
//! (`pipeline`); export (`export`), compression of any
//! update to TT-LoRA (`compress`), adapter folder summaries (`inspect`) and run tables
//! (`results`).
//!
//! Owns: the job specs and reports. Uses everything below it; the CLI calls one job per
//! command. Must not know: clap, printing, progress bars.

pub mod causal_lm;
pub mod compress;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod inference;
pub mod inspect;
pub mod lm_score;
pub mod pipeline;
pub mod prompted_train;
pub mod record;
pub mod results;
pub mod study;
pub mod task;
pub mod trial;
