//! Forward + backward time of one adapted linear layer: frozen base alone, + LoRA r=8, and
//! + TT-LoRA on each of the three paths (issue 2's benchmark).

use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::adapters::lora::{LoraConfig, LoraLayer};
use crate::adapters::ttlora::{TtInit, TtLoraConfig, TtLoraLayer};
use crate::adapters::{Adapter, LayerSpec, Linear, kaiming_uniform, seeded_rng};
use crate::error::Result;
use crate::tt::{TtPath, TtShape};

/// One layer size to benchmark and the TT shape used on it.
#[derive(Debug, Clone)]
pub struct LayerCase {
    /// The TT shape (its in/out features give the layer size).
    pub shape: TtShape,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TtBenchConfig {
    /// Token counts T (rows of x).
    pub tokens: Vec<usize>,
    /// Layers and their TT shapes.
    pub layers: Vec<LayerCase>,
    /// LoRA rank to compare against.
    pub lora_rank: usize,
    /// Minimum timed iterations per row.
    pub min_iters: usize,
    /// Minimum timed duration per row.
    pub min_time: Duration,
    /// Device to run on.
    pub device: Device,
}

/// A variant to time: its label, its shape/rank text and the adapter (none: frozen only).
struct Variant {
    name: String,
    detail: String,
    adapter: Option<Box<dyn Adapter>>,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct TtBenchRow {
    /// `out x in`.
    pub layer: String,
    /// Tokens T.
    pub tokens: usize,
    /// `frozen`, `lora r=8`, `ttlora factored`, …
    pub variant: String,
    /// TT shape or LoRA rank.
    pub detail: String,
    /// Trainable parameters of the adapter (0 for the frozen layer).
    pub params: usize,
    /// Median forward + backward milliseconds.
    pub ms: f64,
    /// `ms` divided by the LoRA row's for the same layer and T.
    pub vs_lora: f64,
}

/// Runs every (layer, T, variant) and reports rows in a fixed order; `progress` is called
/// with each row as it completes.
///
/// # Errors
/// Tensor errors (e.g. out of memory on a device).
pub fn run(cfg: &TtBenchConfig, mut progress: impl FnMut(&TtBenchRow)) -> Result<Vec<TtBenchRow>> {
    let mut rows = Vec::new();
    for case in &cfg.layers {
        let (in_f, out_f) = (case.shape.in_features(), case.shape.out_features());
        let mut rng = seeded_rng(0);
        let spec = LayerSpec {
            in_features: in_f,
            out_features: out_f,
            dtype: DType::F32,
            device: cfg.device.clone(),
            weight: None,
            blocks: None,
        };
        let w = kaiming_uniform(&[out_f, in_f], in_f, &mut rng, DType::F32, &cfg.device)?;
        let b = Tensor::zeros(out_f, DType::F32, &cfg.device)?;
        for &tokens in &cfg.tokens {
            let x = Var::from_tensor(&kaiming_uniform(
                &[tokens, in_f],
                1,
                &mut rng,
                DType::F32,
                &cfg.device,
            )?)?;
            let mut variants = vec![Variant {
                name: "frozen".into(),
                detail: "-".into(),
                adapter: None,
            }];
            let lora = LoraConfig {
                r: cfg.lora_rank,
                ..Default::default()
            };
            let lora_layer = LoraLayer::new(&lora, &spec, &mut rng)?;
            // B = 0 would let nothing flow into A; give it values so backward does full work.
            lora_layer.b().set(&kaiming_uniform(
                lora_layer.b().dims(),
                cfg.lora_rank,
                &mut rng,
                DType::F32,
                &cfg.device,
            )?)?;
            variants.push(Variant {
                name: format!("lora r={}", cfg.lora_rank),
                detail: format!("r={}", cfg.lora_rank),
                adapter: Some(Box::new(lora_layer)),
            });
            for path in TtPath::ALL {
                let tt_cfg = TtLoraConfig {
                    init: TtInit::Paper,
                    path,
                    ..TtLoraConfig::for_shape(&case.shape)
                };
                let layer = TtLoraLayer::new(&tt_cfg, &spec, &mut seeded_rng(1))?;
                variants.push(Variant {
                    name: format!("ttlora {path}"),
                    detail: case.shape.to_string(),
                    adapter: Some(Box::new(layer)),
                });
            }
            let mut lora_ms = f64::NAN;
            let start = rows.len();
            for Variant {
                name: variant,
                detail,
                adapter,
            } in variants
            {
                let mut lin = Linear::new(w.clone(), Some(b.clone()))?;
                let params = adapter.as_ref().map_or(0, |a| a.num_params());
                if let Some(a) = adapter {
                    lin.add_adapter("bench", a)?;
                }
                let elapsed = crate::bench::time_median(cfg.min_iters, cfg.min_time, || {
                    let y = lin.forward(x.as_tensor(), true)?;
                    let grads = y.sum_all()?.backward()?;
                    // Keep the gradients alive until here so their cost is counted.
                    drop(grads);
                    Ok::<(), crate::Error>(())
                })?;
                let ms = elapsed.as_secs_f64() * 1e3;
                if variant.starts_with("lora") {
                    lora_ms = ms;
                }
                let row = TtBenchRow {
                    layer: format!("{out_f}x{in_f}"),
                    tokens,
                    variant,
                    detail,
                    params,
                    ms,
                    vs_lora: f64::NAN,
                };
                progress(&row);
                rows.push(row);
            }
            for row in &mut rows[start..] {
                row.vs_lora = row.ms / lora_ms;
            }
        }
    }
    Ok(rows)
}
