//! Binding adapters to a model: putting a method onto a model (`attach`), an adapter folder
//! to and from a model's layers with the exact PEFT LoRA factors (`adapted`), and merging
//! adapters into the weights for a plain HF folder (`merged`).
//!
//! Owns: what trains once a method is attached, the run's saved adapter, the merged export.
//! Uses `models/` (the layers), `adapters/` (the methods), `io/` (the folder files). Must not
//! know: tasks, data files, the training loop.

pub mod adapted;
pub mod attach;
pub mod merged;
