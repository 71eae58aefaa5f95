//! One example of a sentence or sentence-pair task, and its label.

use std::fmt;

/// The gold (or predicted) label of one example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// A class id: the index of the class name in the task's [`crate::data::LabelKind`].
    Class(u32),
    /// A real-valued score (regression tasks such as STS-B).
    Score(f32),
}

impl Label {
    /// The class id, if this is a class label.
    pub fn class(self) -> Option<u32> {
        match self {
            Label::Class(c) => Some(c),
            Label::Score(_) => None,
        }
    }

    /// The score, if this is a regression label.
    pub fn score(self) -> Option<f32> {
        match self {
            Label::Score(s) => Some(s),
            Label::Class(_) => None,
        }
    }

    /// "class" or "score", for error messages.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Label::Class(_) => "class",
            Label::Score(_) => "score",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Class(c) => write!(f, "class {c}"),
            Label::Score(s) => write!(f, "score {s}"),
        }
    }
}

/// One example: a text, an optional second text, and a label (`None` in unlabeled test files).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The first (or only) text.
    pub text_a: String,
    /// The second text of a pair task (premise/hypothesis, question/passage, …).
    pub text_b: Option<String>,
    /// The label; `None` for unlabeled (test) files.
    pub label: Option<Label>,
}
