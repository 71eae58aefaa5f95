//! Learning-rate schedules: linear warm-up then linear decay to zero (HF's default), or
//! constant (the paper's preset).

use serde::{Deserialize, Serialize};

/// Shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up from 0, then linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

impl Schedule {
    /// Learning rate at optimizer step `step` (0-based) of `total`, with `warmup` warm-up steps.
    pub fn lr(self, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        match self {
            Schedule::Constant => base,
            Schedule::Linear => {
                let left = total.saturating_sub(step) as f64;
                let span = total.saturating_sub(warmup).max(1) as f64;
                base * (left / span).clamp(0.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        let s = Schedule::Linear;
        assert_eq!(s.lr(1.0, 0, 100, 10), 0.1);
        assert_eq!(s.lr(1.0, 9, 100, 10), 1.0);
        assert_eq!(s.lr(1.0, 10, 100, 10), 1.0);
        assert!((s.lr(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 100, 100, 10), 0.0);
        assert_eq!(Schedule::Constant.lr(2.0, 50, 100, 0), 2.0);
    }
}
