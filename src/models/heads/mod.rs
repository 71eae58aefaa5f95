//! Task heads over a [`Backbone`](crate::models::Backbone): the sequence classifier
//! ([`SequenceClassifier`], with HF's BERT, RoBERTa and DeBERTa head layouts as data in
//! [`HeadLayout`]). A language-model head for decoders joins here.

mod classifier;

pub use classifier::{HeadActivation, HeadLayout, HiddenLayer, SequenceClassifier};
