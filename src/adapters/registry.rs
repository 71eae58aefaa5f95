//! The registry of adapter methods: one line per method.

use crate::adapters::{Method, bottleneck, full, lora, loretta, prompt, ttlora};
use crate::error::{Error, Result};

/// Every adapter method ttlora knows. `--method`, config dispatch on `peft_type` and the test
/// matrix all read this slice.
pub static METHODS: &[&dyn Method] = &[
    &full::Full,
    &lora::Lora,
    &ttlora::TtLora,
    &bottleneck::Bottleneck,
    &loretta::LorettaRep,
    &loretta::LorettaAdp,
    &prompt::Prefix,
    &prompt::Prompt,
];

/// The method registered under `name`.
///
/// # Errors
/// [`Error::UnknownMethod`] listing the known names.
pub fn method(name: &str) -> Result<&'static dyn Method> {
    METHODS
        .iter()
        .copied()
        .find(|m| m.name() == name)
        .ok_or_else(|| Error::UnknownMethod {
            got: name.into(),
            known: method_names().join(", "),
        })
}

/// Registered method names, in registry order.
pub fn method_names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_types_and_prefixes_are_unique_and_well_formed() {
        let mut names = HashSet::new();
        let mut types = HashSet::new();
        let mut prefixes = HashSet::new();
        for m in METHODS {
            assert!(names.insert(m.name()), "duplicate name {}", m.name());
            assert!(
                types.insert(m.peft_type()),
                "duplicate peft_type {}",
                m.peft_type()
            );
            assert!(
                prefixes.insert(m.prefix()),
                "duplicate prefix {}",
                m.prefix()
            );
            assert_eq!(m.name(), m.name().to_lowercase());
            // Tensor names take the method name with `-` written `_`.
            assert_eq!(m.prefix(), format!("{}_", m.name().replace('-', "_")));
        }
        // No prefix may be a prefix of another, or key ownership would be ambiguous.
        for a in &prefixes {
            for b in &prefixes {
                assert!(a == b || !b.starts_with(a), "{a} is a prefix of {b}");
            }
        }
    }

    #[test]
    fn unknown_method_lists_known_ones() {
        let err = method("dora").err().unwrap().to_string();
        assert_eq!(
            err,
            "unknown adapter method `dora`; known methods: full, lora, ttlora, adapter, loretta-rep, loretta-adp, prefix, prompt"
        );
    }
}
