//! Task heads over a [`Backbone`](crate::models::Backbone): the sequence classifier
//! ([`SequenceClassifier`], with HF's BERT, RoBERTa and DeBERTa head layouts as data in
//! [`HeadLayout`]) and the causal language model ([`CausalLm`]: a [`Decoder`] with its LM
//! head). Both put prompt and prefix tokens in place the same way (`virtual_tokens.rs`).

mod causal_lm;
mod classifier;
mod layout;
pub(crate) mod virtual_tokens;

pub use causal_lm::{CausalLm, Decoder, SCORE_HEAD, last_token_rows};
pub use classifier::SequenceClassifier;
pub use layout::{HeadActivation, HeadLayout, HiddenLayer};
