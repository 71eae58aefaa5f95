//! The machine's measured f32 matmul rate (the roofline's ceiling) and the matmul work of one
//! encoder step, so a step's time converts to achieved GFLOP/s.

use std::time::Duration;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::bench::time_median;
use crate::error::Result;

/// One measured matmul shape.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulRow {
    /// Rows of the left operand and the result.
    pub m: usize,
    /// Columns of the right operand and the result.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Median milliseconds per product.
    pub ms: f64,
    /// 2·m·n·k / time, in GFLOP/s.
    pub gflops: f64,
}

/// Times `(m × k)·(k × n)` in f32 with candle's matmul (the gemm crate, all threads), the
/// kernel every linear layer of a step runs.
///
/// # Errors
/// Tensor errors on `device`.
pub fn matmul_rate(
    (m, n, k): (usize, usize, usize),
    iters: usize,
    min_time: Duration,
    device: &Device,
) -> Result<MatmulRow> {
    let a = Tensor::randn(0f32, 1., (m, k), device)?;
    let b = Tensor::randn(0f32, 1., (k, n), device)?;
    let t = time_median(iters, min_time, || -> Result<()> {
        a.matmul(&b)?;
        device.synchronize()?;
        Ok(())
    })?;
    let secs = t.as_secs_f64().max(1e-12);
    Ok(MatmulRow {
        m,
        n,
        k,
        ms: secs * 1e3,
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
    })
}

/// The sizes of a BERT-style encoder that set its matmul work.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSize {
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
}

impl EncoderSize {
    /// Reads the three sizes from an HF `config.json` value; `None` if one is missing.
    pub fn from_config(cfg: &serde_json::Value) -> Option<Self> {
        let get = |k: &str| cfg.get(k)?.as_u64().map(|v| v as usize);
        Some(Self {
            hidden: get("hidden_size")?,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
        })
    }

    /// FLOPs of the encoder's matmuls for `batch × seq` tokens: the six linears per layer
    /// (2·tokens·(4h² + 2h·i)) and attention's scores and context (2 × 2·batch·seq²·h).
    /// Training adds the linears' input gradients and attention's four products; full
    /// fine-tuning also the linears' weight gradients (frozen weights get none). Adapters,
    /// the head, embeddings and element-wise work are not counted, so this is the work a
    /// perfect step cannot avoid.
    pub fn step_flops(&self, batch: usize, seq: usize, work: StepWork) -> f64 {
        let (h, i) = (self.hidden as f64, self.intermediate as f64);
        let tokens = (batch * seq) as f64;
        let linears = 2.0 * tokens * (4.0 * h * h + 2.0 * h * i);
        let attention = 2.0 * 2.0 * batch as f64 * (seq * seq) as f64 * h;
        let per_layer = match work {
            StepWork::Inference => linears + attention,
            StepWork::FrozenTraining => 2.0 * linears + 3.0 * attention,
            StepWork::FullTraining => 3.0 * linears + 3.0 * attention,
        };
        per_layer * self.layers as f64
    }
}

/// What a measured step does, for counting its matmul work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepWork {
    /// A forward pass.
    Inference,
    /// Forward and backward with the encoder's weights frozen (adapters train).
    FrozenTraining,
    /// Forward and backward with every weight training.
    FullTraining,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_step_work_by_hand() {
        let size = EncoderSize::from_config(&serde_json::json!({
            "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6
        }))
        .unwrap();
        // Per layer: linears 2·4096·(4·384² + 2·384·1536) = 14.50 GFLOP; attention
        // 4·32·128²·384 = 0.805 GFLOP. Training 6·(2·14.50 + 3·0.805) = 188.44 GFLOP, inference
        // 6·(14.50 + 0.805) = 91.80 GFLOP; full fine-tuning 6·(3·14.50 + 3·0.805) = 275.5.
        let train = size.step_flops(32, 128, StepWork::FrozenTraining) / 1e9;
        assert!((train - 188.44).abs() < 0.01, "{train}");
        let infer = size.step_flops(32, 128, StepWork::Inference) / 1e9;
        assert!((infer - 91.80).abs() < 0.01, "{infer}");
        let full = size.step_flops(32, 128, StepWork::FullTraining) / 1e9;
        assert!((full - 275.5).abs() < 0.1, "{full}");
        assert!(EncoderSize::from_config(&serde_json::json!({"hidden_size": 1})).is_none());
    }

    #[test]
    fn matmul_rate_counts_two_flops_per_multiply_add() {
        let row = matmul_rate((64, 32, 16), 3, Duration::ZERO, &Device::Cpu).unwrap();
        assert_eq!((row.m, row.n, row.k), (64, 32, 16));
        let expected = 2.0 * 64.0 * 32.0 * 16.0 / (row.ms / 1e3) / 1e9;
        assert!((row.gflops - expected).abs() <= 1e-9 * expected.max(1.0));
    }
}
