//! Tensor ops with a hand-written backward, for the training path.
//!
//! Owns: [`frozen_linear`]. Must not know: models, adapters, files. Every op here states its
//! derivative next to its `bwd` and has a finite-difference test, because candle's own fused
//! ops (`softmax_last_dim`, `layer_norm`, `rms_norm`) record no backward at all and silently
//! stop gradients (DESIGN §2).

mod frozen_linear;

pub use frozen_linear::frozen_linear;
