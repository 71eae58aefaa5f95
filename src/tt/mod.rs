//! Pure tensor-train math: shapes and their factorization, parameter counting, the three
//! computations of ΔW(x) (reconstruct, contract, factored), TT-SVD and rounding.
//!
//! Owns: [`TtShape`], [`TtPath`], the contraction functions, [`tt_svd`]. Must not know: models,
//! adapters, files. Index conventions are DESIGN §3's: the flat input index is
//! `i = Σ_k i_k Π_{j<k} m_j` (core 1 holds the least significant input digit); output cores run
//! from the most significant output digit to the least.

mod contract;
mod factorize;
mod shape;
mod svd;

pub use contract::{Folded, TtPath, apply, contract, fold, reconstruct};
pub use factorize::{
    MAX_CORES_PER_SIDE, best_per_core_count, factor_multisets, fit_budget, propose_shapes,
};
pub use shape::{Ranks, TtLayout, TtShape, lora_params, parse_core_order, parse_list};
pub use svd::{
    Decomposition, Truncation, TtTensor, decompose_matrix, numerical_rank, round_cores,
    singular_values, tt_svd,
};

#[cfg(test)]
mod tests;
