//! `compress`: any dense update — a LoRA (PEFT's or ours), a TT-LoRA of higher rank, the
//! weight change of a full fine-tune — into a TT-LoRA by TT-SVD, with a rank cap and/or a
//! relative-error tolerance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::adapters::ttlora::{TtLoraConfig, TtLoraLayer};
use crate::adapters::{ModuleSet, Targeting};
use crate::error::{Error, Result};
use crate::io::TaskInfo;
use crate::jobs::inference::Inference;
use crate::jobs::trial::ADAPTER_NAME;
use crate::models::{Model, load_classifier};
use crate::tt::{Truncation, TtPath, decompose_matrix};
use crate::tuning::adapted::{AdapterMeta, adapters_named, collect};

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

/// One layer's dense update to compress.
#[derive(Debug, Clone)]
pub struct DenseUpdate {
    /// Module path.
    pub path: String,
    /// The scaled update ΔW, `(out, in)`.
    pub delta: Tensor,
    /// Scalars the source spends on it (adapter parameters, or out·in for a dense ΔW).
    pub params: usize,
}

/// Where the updates come from and what the written folder should say about it.
pub struct Source {
    /// The updates, one per layer.
    pub updates: Vec<DenseUpdate>,
    /// The head tensors to keep, by full name (empty: the head is not saved).
    pub head: Vec<(String, Tensor)>,
    /// The base model folder the result attaches to.
    pub base_dir: PathBuf,
    /// The base model as named, for the folder's config.
    pub base_model: String,
    /// SHA-256 of the base model's config.json (empty when unknown).
    pub base_model_config_sha256: String,
    /// The task the result is for.
    pub task: TaskInfo,
}

/// The updates the adapter loaded in `src` applies.
///
/// # Errors
/// As the adapters' `delta_weight`.
pub fn adapter_updates(src: &Inference) -> Result<Vec<DenseUpdate>> {
    adapters_named(src.model.as_ref(), ADAPTER_NAME)
        .into_iter()
        .map(|(path, _, adapter)| {
            Ok(DenseUpdate {
                path,
                delta: adapter.delta_weight()?,
                params: adapter.num_params(),
            })
        })
        .collect()
}

/// The updates full fine-tuning made to the targeted layers: `W_finetuned − W_base`. Other
/// weights the fine-tune changed (layer norms, embeddings, untargeted layers) are not
/// carried over; target `all-linear` to keep every linear layer.
///
/// # Errors
/// [`Error::CompressLayerMissing`] when the two models' layers differ (another architecture or
/// size); [`Error::CompressNoTargets`] when the targets match no layer.
pub fn finetuned_updates(
    base: &dyn Model,
    finetuned: &dyn Model,
    targeting: &Targeting,
) -> Result<Vec<DenseUpdate>> {
    let tuned: BTreeMap<String, &crate::adapters::Linear> =
        finetuned.linears().into_iter().collect();
    let mut out = Vec::new();
    for (path, layer) in base.linears() {
        if !targeting.matches(&path) {
            continue;
        }
        let other = tuned
            .get(&path)
            .ok_or_else(|| Error::CompressLayerMissing {
                model: "fine-tuned",
                path: path.clone(),
            })?;
        let dims = |l: &crate::adapters::Linear| vec![l.out_features(), l.in_features()];
        if dims(other) != dims(layer) {
            return Err(Error::TensorShape {
                op: "fine-tuned minus base weight",
                expected: dims(layer),
                got: dims(other),
            });
        }
        let delta =
            (other.weight().to_dtype(DType::F32)? - layer.weight().to_dtype(DType::F32)?)?;
        out.push(DenseUpdate {
            params: delta.elem_count(),
            path,
            delta,
        });
    }
    if out.is_empty() {
        return Err(Error::CompressNoTargets {
            examples: base.linears().into_iter().take(4).map(|(p, _)| p).collect(),
        });
    }
    Ok(out)
}

/// Compresses every update of `src` into a TT-LoRA adapter by TT-SVD and writes it as a
/// ttlora adapter folder at `out`, with the source's head when it has one.
///
/// # Errors
/// [`Error::NothingToCompress`]; [`Error::CompressLayerMissing`] for an update the base model
/// has no layer for; a shape config that does not fit a layer; a truncation that is invalid;
/// SVD failure; write errors (nothing is left at `out`).
pub fn compress(src: &Source, spec: &CompressSpec, out: &Path) -> Result<CompressReport> {
    if !(spec.alpha.is_finite() && spec.alpha != 0.0) {
        return Err(Error::InvalidConfig {
            method: "ttlora",
            field: "alpha",
            reason: "must be finite and non-zero".into(),
            got: spec.alpha.to_string(),
        });
    }
    if src.updates.is_empty() {
        return Err(Error::NothingToCompress);
    }
    let template: TtLoraConfig = serde_json::from_value(spec.shape_config.clone())?;
    let pooling = src.task.pooling;
    let device = src.updates[0].delta.device().clone();
    let mut target = load_classifier(&src.base_dir, src.task.num_labels, pooling, &device, 0)?;
    let mut modules = Vec::new();
    let mut built = BTreeMap::new();
    let (mut err_sq, mut norm_sq) = (0.0, 0.0);
    for u in &src.updates {
        let (out_f, in_f) = u.delta.dims2()?;
        let shape = template.shape_for(in_f, out_f)?;
        let d = decompose_matrix(&(&u.delta / spec.alpha)?, &shape, &spec.truncation)?;
        let norm = u
            .delta
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt();
        err_sq += (d.rel_error * norm).powi(2);
        norm_sq += norm * norm;
        let tt_path = if d.shape.split_rank().is_some() {
            TtPath::Factored
        } else {
            TtPath::Reconstruct
        };
        let tt = TtLoraLayer::from_cores(d.shape.clone(), d.cores, spec.alpha, tt_path)?;
        modules.push(CompressedModule {
            path: u.path.clone(),
            shape: d.shape.to_string(),
            params_before: u.params,
            params_after: crate::adapters::Adapter::num_params(&tt),
            rel_error: d.rel_error,
        });
        built.insert(u.path.clone(), tt);
    }
    for (path, layer) in target.linears_mut() {
        if let Some(tt) = built.remove(&path) {
            layer.add_adapter(ADAPTER_NAME, Box::new(tt))?;
        }
    }
    if let Some(path) = built.keys().next() {
        return Err(Error::CompressLayerMissing {
            model: "base",
            path: path.clone(),
        });
    }
    for (name, var) in target.head_vars() {
        if let Some((_, t)) = src.head.iter().find(|(n, _)| *n == name) {
            var.set(t)?;
        }
    }
    let mut method_config = spec.shape_config.clone();
    if let Some(obj) = method_config.as_object_mut() {
        obj.insert("alpha".into(), spec.alpha.into());
    }
    let paths = modules
        .iter()
        .map(|m| Value::String(m.path.clone()))
        .collect();
    let meta = AdapterMeta {
        method: "ttlora".into(),
        base_model: src.base_model.clone(),
        base_model_config_sha256: src.base_model_config_sha256.clone(),
        config: method_config,
        target_modules: Value::Array(paths),
        exclude_modules: None,
        overrides: BTreeMap::new(),
        save_head: !src.head.is_empty(),
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

impl Source {
    /// The adapter loaded in `src` as a compression source: its updates, head and task.
    ///
    /// # Errors
    /// As [`adapter_updates`].
    pub fn from_adapter(src: &Inference) -> Result<Self> {
        let head = if src.config.modules_to_save.is_empty() {
            Vec::new()
        } else {
            head_tensors(src.model.as_ref())?
        };
        Ok(Self {
            updates: adapter_updates(src)?,
            head,
            base_dir: src.model_dir.clone(),
            base_model: src.base_model.clone(),
            base_model_config_sha256: src.config.base_model_config_sha256.clone(),
            task: src.task.clone(),
        })
    }

    /// A fully fine-tuned model folder as a compression source: the targeted layers'
    /// `W_finetuned − W_base` (see [`finetuned_updates`]) and its head. The label count
    /// comes from the fine-tuned config's `id2label` (or `num_labels`), the pooling from the
    /// fine-tuned folder as for training; `targets` default to the architecture's.
    ///
    /// # Errors
    /// Unreadable folders; a config without labels; models that do not match.
    pub fn from_finetuned(
        base_dir: &Path,
        base_model: &str,
        finetuned_dir: &Path,
        targets: Option<&ModuleSet>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let cfg_path = finetuned_dir.join("config.json");
        let cfg: Value =
            crate::io::read_json_if_present(&cfg_path)?.ok_or_else(|| Error::ModelFile {
                path: finetuned_dir.to_path_buf(),
                reason: "no config.json; expected a fine-tuned HF model folder".into(),
            })?;
        let label_names: Vec<String> = match cfg.get("id2label").and_then(Value::as_object) {
            Some(m) => {
                let mut pairs: Vec<(usize, String)> = m
                    .iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect();
                pairs.sort();
                pairs.into_iter().map(|(_, n)| n).collect()
            }
            None => Vec::new(),
        };
        let num_labels = cfg
            .get("num_labels")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(label_names.len());
        if num_labels == 0 {
            return Err(Error::ModelConfig {
                path: cfg_path,
                reason: "says nothing about the labels (no `id2label` or `num_labels`)".into(),
            });
        }
        let regression = cfg.get("problem_type").and_then(Value::as_str) == Some("regression")
            || num_labels == 1;
        let pooling = crate::jobs::study::choose_pooling(None, finetuned_dir)?;
        let tuned = load_classifier(finetuned_dir, num_labels, pooling, device, 0)?;
        let base = load_classifier(base_dir, num_labels, pooling, device, 0)?;
        let defaults = ModuleSet::names(base.default_targets());
        let targeting = Targeting::new(targets.unwrap_or(&defaults), None, &BTreeMap::new())?;
        Ok(Self {
            updates: finetuned_updates(base.as_ref(), tuned.as_ref(), &targeting)?,
            head: head_tensors(tuned.as_ref())?,
            base_dir: base_dir.to_path_buf(),
            base_model: base_model.to_string(),
            base_model_config_sha256: crate::io::sha256_file(&base_dir.join("config.json"))?,
            task: TaskInfo {
                name: "custom".into(),
                label_names: if regression { Vec::new() } else { label_names },
                num_labels,
                pooling,
                max_len: 128,
            },
        })
    }
}

fn head_tensors(model: &dyn Model) -> Result<Vec<(String, Tensor)>> {
    model
        .head_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
        .collect()
}
