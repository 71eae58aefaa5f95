//! Task heads over a [`Backbone`](crate::models::Backbone): the sequence classifier
//! ([`SequenceClassifier`], with HF's BERT, RoBERTa and DeBERTa head layouts as data in
//! [`HeadLayout`]). A language-model head for decoders joins here.

mod classifier;
mod layout;

pub use classifier::SequenceClassifier;
pub use layout::{HeadActivation, HeadLayout, HiddenLayer};
