//! One training batch: the model's input and the labels.

use candle_core::Tensor;

use crate::models::ModelInput;

/// One training batch: model input plus labels (`u32` class ids or `f32` scores).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, segments, mask.
    pub input: ModelInput,
    /// Labels, `(b_sz)`.
    pub labels: Tensor,
}
