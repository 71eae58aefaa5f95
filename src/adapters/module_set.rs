//! Which modules a method adapts, as the user gives them: names or a regex.

use serde::{Deserialize, Serialize};

/// Which modules a rule names: a list (exact path or `.name` suffix) or one full-match regex.
/// The string `all-linear` means every linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSet {
    /// Exact module paths or trailing names, e.g. `["query", "value"]`.
    List(Vec<String>),
    /// A regex matched against the whole module path, or `all-linear`.
    Pattern(String),
}

impl ModuleSet {
    /// A list of module names, e.g. a model's default targets.
    pub fn names(names: &[&str]) -> Self {
        Self::List(names.iter().map(ToString::to_string).collect())
    }

    /// The PEFT shorthand for every linear layer.
    pub const ALL_LINEAR: &'static str = "all-linear";
}
