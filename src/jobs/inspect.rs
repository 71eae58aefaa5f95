//! `inspect`: what an adapter folder holds, read without the base model.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::adapters::LayerSpec;
use crate::error::{Error, Result};
use crate::io::adapter_folder::{CONFIG_FILE, KEY_PREFIX};
use crate::io::{AdapterFolder, TaskInfo};
use crate::tt::{lora_params, numerical_rank, singular_values};
use crate::tuning::adapted::restore_adapter;

/// One adapted module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleReport {
    /// Module path.
    pub path: String,
    /// The adapter's structure (method, shape, ranks, scaling).
    pub structure: String,
    /// The layer's output features.
    pub out_features: usize,
    /// The layer's input features.
    pub in_features: usize,
    /// Trainable scalars of the adapter.
    pub params: usize,
    /// Scalars LoRA r = 8 would need on this layer.
    pub lora_r8_params: usize,
    /// Numerical rank of the scaled ΔW (NumPy's `matrix_rank` rule for f32); `None` where
    /// the method's update is no weight matrix (bottleneck adapters, virtual tokens, a full
    /// fine-tune's saved weights).
    pub effective_rank: Option<usize>,
    /// Frobenius norm of the scaled ΔW; `None` as for the rank.
    pub delta_norm: Option<f64>,
}

/// An adapter folder, summarised.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    /// `peft_type` of the folder.
    pub peft_type: String,
    /// Registry name of the method.
    pub method: String,
    /// The base model the adapter was made for.
    pub base_model: String,
    /// The task it was trained for, if recorded.
    pub task: Option<TaskInfo>,
    /// Every adapted module, in path order.
    pub modules: Vec<ModuleReport>,
    /// Adapter scalars, all modules.
    pub adapter_params: usize,
    /// Saved head scalars.
    pub head_params: usize,
    /// LoRA r = 8 scalars on the same modules.
    pub lora_r8_params: usize,
    /// Size of every file in the folder, in bytes.
    pub file_bytes: u64,
}

/// The largest layer whose ΔW `inspect` computes (a 16k × 16k matrix) for its rank and norm.
const MAX_LAYER_ELEMS: usize = 1 << 28;

/// Reads and summarises the adapter folder in `dir` (ttlora's own or a PEFT LoRA).
///
/// # Errors
/// An unreadable folder; a module whose layer shape the folder does not record (folders
/// written before `layer_shapes` existed) and cannot be read off its tensors; tensors that do
/// not fit their configs.
pub fn inspect(dir: &Path) -> Result<InspectReport> {
    let folder = AdapterFolder::read(dir, &Device::Cpu)?;
    let cfg = &folder.config;
    let mut modules = Vec::new();
    let mut used = BTreeSet::new();
    for (path, module_cfg) in &cfg.modules {
        let [out_features, in_features] = cfg
            .layer_shapes
            .get(path)
            .copied()
            .or_else(|| implied_shape(&folder, path, module_cfg))
            .ok_or_else(|| Error::ModelConfig {
                path: dir.join(CONFIG_FILE),
                reason: format!(
                    "module `{path}` has no entry in `layer_shapes` (written by an older \
                     ttlora) and its config does not imply the layer's shape"
                ),
            })?;
        // ΔW is computed at the layer's size; past MAX_LAYER_ELEMS (a lie, or an lm_head of a
        // very large vocabulary) its rank and norm are left out rather than allocated.
        let weights = out_features.checked_mul(in_features);
        if weights.is_none_or(|n| n > 1 << 36) {
            return Err(Error::ModelConfig {
                path: dir.join(CONFIG_FILE),
                reason: format!(
                    "field `layer_shapes.{path}`: [{out_features}, {in_features}] is larger \
                     than any model's layer"
                ),
            });
        }
        let small = weights.is_some_and(|n| n <= MAX_LAYER_ELEMS);
        // DoRA's update depends on the base weight, which is not at hand: restore its tensors
        // against a stand-in and report no ΔW.
        let needs_base = module_cfg.get("use_dora").and_then(Value::as_bool) == Some(true);
        let stand_in = if needs_base && small {
            Some(Tensor::zeros(
                (out_features, in_features),
                DType::F32,
                &Device::Cpu,
            )?)
        } else {
            None
        };
        let spec = LayerSpec {
            in_features,
            out_features,
            dtype: DType::F32,
            device: Device::Cpu,
            weight: stand_in,
            blocks: None,
        };
        let (adapter, keys) = restore_adapter(&folder, path, module_cfg, &spec)?;
        used.extend(keys);
        let (effective_rank, delta_norm) = if adapter.serial() || needs_base || !small {
            (None, None)
        } else {
            let sv = singular_values(&adapter.delta_weight()?)?;
            (
                Some(numerical_rank(&sv, out_features, in_features)),
                Some(sv.iter().map(|s| s * s).sum::<f64>().sqrt()),
            )
        };
        modules.push(ModuleReport {
            path: path.clone(),
            structure: adapter.describe(),
            out_features,
            in_features,
            params: adapter.num_params(),
            lora_r8_params: lora_params(in_features, out_features, 8),
            effective_rank,
            delta_norm,
        });
    }
    // Head tensors sit under PEFT's key for the method: one level up for prompt learning.
    let head_keys: BTreeSet<String> = cfg
        .modules_to_save
        .iter()
        .flat_map(|n| [format!("{KEY_PREFIX}{n}"), format!("base_model.{n}")])
        .filter(|k| folder.tensors.contains_key(k))
        .collect();
    let head_params = head_keys
        .iter()
        .filter_map(|k| folder.tensors.get(k))
        .map(Tensor::elem_count)
        .sum();
    // What no module owns: virtual tokens, or a full fine-tune's base tensors.
    let rest: Vec<(&String, &Tensor)> = folder
        .tensors
        .iter()
        .filter(|(k, _)| !used.contains(*k) && !head_keys.contains(*k))
        .collect();
    if !rest.is_empty() {
        let params: usize = rest.iter().map(|(_, t)| t.elem_count()).sum();
        let (path, structure, dims) = match rest.as_slice() {
            [(key, t)] => ((*key).clone(), cfg.method.clone(), t.dims().to_vec()),
            _ => (
                "(base model)".to_string(),
                format!("{}: {} tensors", cfg.method, rest.len()),
                vec![0, 0],
            ),
        };
        modules.push(ModuleReport {
            path,
            structure,
            out_features: dims.first().copied().unwrap_or(0),
            in_features: dims.get(1).copied().unwrap_or(0),
            params,
            lora_r8_params: 0,
            effective_rank: None,
            delta_norm: None,
        });
    }
    let file_bytes = crate::jobs::export::list_files(dir)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    Ok(InspectReport {
        peft_type: cfg.peft_type.clone(),
        method: cfg.method.clone(),
        base_model: cfg.base_model_name_or_path.clone(),
        task: cfg.task.clone(),
        adapter_params: modules.iter().map(|m| m.params).sum(),
        lora_r8_params: modules.iter().map(|m| m.lora_r8_params).sum(),
        modules,
        head_params,
        file_bytes,
    })
}

/// A layer's `[out, in]` read off a module's tensors (LoRA's A and B) or its TT factors
/// (input-output layout), for folders that predate `layer_shapes`.
fn implied_shape(folder: &AdapterFolder, path: &str, module_cfg: &Value) -> Option<[usize; 2]> {
    let dim = |name: &str, i: usize| {
        let t = folder.tensors.get(&format!("{KEY_PREFIX}{path}.{name}"))?;
        t.dims().get(i).copied()
    };
    if let (Some(out_f), Some(in_f)) = (dim("lora_B.weight", 0), dim("lora_A.weight", 1)) {
        return Some([out_f, in_f]);
    }
    let product = |key: &str| -> Option<usize> {
        let factors = module_cfg.get(key)?.as_array()?;
        factors
            .iter()
            .map(Value::as_u64)
            .map(|f| f.and_then(|f| usize::try_from(f).ok()))
            .product()
    };
    Some([product("out_factors")?, product("in_factors")?])
}
