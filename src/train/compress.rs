//! `compress`: any dense update — a LoRA (PEFT's or ours), a TT-LoRA of higher rank — into a
//! TT-LoRA by TT-SVD, with a rank cap and/or a relative-error tolerance.

use std::path::Path;

use serde_json::Value;

use crate::adapters::ttlora::{TtLoraConfig, TtLoraLayer};
use crate::error::{Error, Result};
use crate::models::adapted::{AdapterMeta, collect};
use crate::models::{Pooling, load_classifier};
use crate::train::finetune::{ADAPTER_NAME, Adapted};
use crate::tt::{Truncation, TtPath, decompose_matrix};

/// What to compress into.
#[derive(Debug, Clone)]
pub struct CompressSpec {
    /// TT-LoRA config fields choosing the shape (`layout`, `in_factors`/`out_factors`,
    /// `factors`, `cores`); ranks come from the truncation, α from `alpha`.
    pub shape_config: Value,
    /// α of the result; the cores hold `ΔW / α`.
    pub alpha: f64,
    /// Rank cap and/or relative-error tolerance per module.
    pub truncation: Truncation,
}

/// One module's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressedModule {
    /// Module path.
    pub path: String,
    /// The TT shape found, with its ranks.
    pub shape: String,
    /// Scalars before (the source adapter's trainable parameters).
    pub params_before: usize,
    /// Scalars after.
    pub params_after: usize,
    /// ‖ΔW − ΔW_TT‖_F / ‖ΔW‖_F.
    pub rel_error: f64,
}

/// The whole adapter's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressReport {
    /// Per module, in path order.
    pub modules: Vec<CompressedModule>,
    /// Relative error of all modules' ΔW together (Frobenius).
    pub rel_error: f64,
    /// Adapter scalars before.
    pub params_before: usize,
    /// Adapter scalars after.
    pub params_after: usize,
}

/// Compresses the adapter loaded in `src` into a TT-LoRA adapter folder at `out` (ttlora's
/// own format; the source's trained head is kept as it is).
///
/// # Errors
/// A shape config that does not fit a layer; a truncation that is invalid; SVD failure; write
/// errors (nothing is left at `out`).
pub fn compress(src: &Adapted, spec: &CompressSpec, out: &Path) -> Result<CompressReport> {
    if !(spec.alpha.is_finite() && spec.alpha != 0.0) {
        return Err(Error::InvalidConfig {
            method: "ttlora",
            field: "alpha",
            reason: "must be finite and non-zero".into(),
            got: spec.alpha.to_string(),
        });
    }
    let template: TtLoraConfig = serde_json::from_value(spec.shape_config.clone())?;
    let pooling: Pooling = src
        .task
        .pooling
        .parse()
        .map_err(|reason| Error::ModelConfig {
            path: src.model_dir.join("config.json"),
            reason,
        })?;
    let device = src
        .model
        .linears()
        .first()
        .map_or(candle_core::Device::Cpu, |(_, l)| {
            l.weight().device().clone()
        });
    let mut target = load_classifier(&src.model_dir, src.task.num_labels, pooling, &device, 0)?;
    let mut modules = Vec::new();
    let mut built = Vec::new();
    let (mut err_sq, mut norm_sq) = (0.0, 0.0);
    for (path, layer) in src.model.linears() {
        let Some((_, adapter)) = layer.adapters().find(|(n, _)| *n == ADAPTER_NAME) else {
            continue;
        };
        let delta = adapter.delta_weight()?;
        let shape = template.shape_for(layer.in_features(), layer.out_features())?;
        let d = decompose_matrix(&(&delta / spec.alpha)?, &shape, &spec.truncation)?;
        let norm = delta
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt()
            / spec.alpha.abs();
        err_sq += (d.rel_error * norm).powi(2);
        norm_sq += norm * norm;
        let tt_path = if d.shape.split_rank().is_some() {
            TtPath::Factored
        } else {
            TtPath::Reconstruct
        };
        let tt = TtLoraLayer::from_cores(d.shape.clone(), d.cores, spec.alpha, tt_path)?;
        modules.push(CompressedModule {
            path: path.clone(),
            shape: d.shape.to_string(),
            params_before: adapter.num_params(),
            params_after: crate::adapters::Adapter::num_params(&tt),
            rel_error: d.rel_error,
        });
        built.push((path, tt));
    }
    if built.is_empty() {
        return Err(Error::Training(
            "the source carries no adapter to compress".into(),
        ));
    }
    let mut built: std::collections::BTreeMap<String, TtLoraLayer> = built.into_iter().collect();
    for (path, layer) in target.linears_mut() {
        if let Some(tt) = built.remove(&path) {
            layer.add_adapter(ADAPTER_NAME, Box::new(tt))?;
        }
    }
    let src_head = src.model.head_vars();
    for (name, var) in target.head_vars() {
        if let Some((_, v)) = src_head.iter().find(|(n, _)| *n == name) {
            var.set(v.as_tensor())?;
        }
    }
    let cfg = &src.config;
    let mut method_config = spec.shape_config.clone();
    if let Some(obj) = method_config.as_object_mut() {
        obj.insert("alpha".into(), spec.alpha.into());
    }
    let meta = AdapterMeta {
        method: "ttlora".into(),
        base_model: src.base_model.clone(),
        base_model_config_sha256: cfg.base_model_config_sha256.clone(),
        config: method_config,
        target_modules: Value::Array(
            modules
                .iter()
                .map(|m| Value::String(m.path.clone()))
                .collect(),
        ),
        exclude_modules: None,
        overrides: Default::default(),
        save_head: !cfg.modules_to_save.is_empty(),
        task: Some(src.task.clone()),
    };
    collect(target.as_ref(), ADAPTER_NAME, &meta)?.write(out)?;
    Ok(CompressReport {
        rel_error: if norm_sq > 0.0 {
            (err_sq / norm_sq).sqrt()
        } else {
            0.0
        },
        params_before: modules.iter().map(|m| m.params_before).sum(),
        params_after: modules.iter().map(|m| m.params_after).sum(),
        modules,
    })
}
