//! Binding adapter folders to models: collect a model's adapters (and trained head) into an
//! [`AdapterFolder`], and rebuild them onto a freshly loaded base model.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;

use crate::adapters::{MethodKind, TokenPlacement, method, seeded_rng};
use crate::error::{Error, Result};
use crate::io::TOKENS_KEY;
use crate::io::adapter_folder::{AdapterConfig, AdapterFolder, FORMAT_VERSION, KEY_PREFIX};
use crate::models::Model;

/// The parts of an adapter config that describe how it was made (the rest is read off the
/// model).
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    /// Registry name of the method.
    pub method: String,
    /// `--model` as given.
    pub base_model: String,
    /// SHA-256 of the base model's config.json.
    pub base_model_config_sha256: String,
    /// The method config as given.
    pub config: serde_json::Value,
    /// Targets as given.
    pub target_modules: serde_json::Value,
    /// Exclusions as given.
    pub exclude_modules: Option<serde_json::Value>,
    /// Per-module overrides as given.
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Whether the head was trained (and so is saved).
    pub save_head: bool,
    /// Task description.
    pub task: Option<crate::io::TaskInfo>,
}

impl AdapterMeta {
    /// The record of an adapter of `method` made outside a training run: no base model
    /// name or hash, the default config, no targeting record, the head saved, no task.
    pub fn bare(method: &str) -> Self {
        Self {
            method: method.into(),
            base_model: String::new(),
            base_model_config_sha256: String::new(),
            config: serde_json::json!({}),
            target_modules: serde_json::Value::Null,
            exclude_modules: None,
            overrides: BTreeMap::new(),
            save_head: true,
            task: None,
        }
    }
}

/// Every layer of `model` carrying the adapter called `adapter_name`: its path, the layer and
/// that adapter, in the model's layer order.
pub fn adapters_named<'m>(
    model: &'m dyn Model,
    adapter_name: &str,
) -> Vec<(
    String,
    &'m crate::adapters::Linear,
    &'m dyn crate::adapters::Adapter,
)> {
    let mut out = Vec::new();
    for (path, layer) in model.linears() {
        if let Some((_, a)) = layer.adapters().find(|(n, _)| *n == adapter_name) {
            out.push((path, layer, a));
        }
    }
    out
}

/// Collects the adapter called `adapter_name` from every layer of `model` (and the head when
/// `meta.save_head`) into a folder ready to write.
///
/// # Errors
/// [`Error::AdapterNotAttached`] when no layer carries that adapter,
/// [`Error::NoVirtualTokens`] / [`Error::NoTrainedBaseTensors`] for a prompt-learning method or
/// a full fine-tune with nothing to save; an unknown method.
pub fn collect(model: &dyn Model, adapter_name: &str, meta: &AdapterMeta) -> Result<AdapterFolder> {
    let m = method(&meta.method)?;
    let mut modules = BTreeMap::new();
    let mut layer_shapes = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    let mut peft_fields = BTreeMap::new();
    for (path, layer, adapter) in adapters_named(model, adapter_name) {
        modules.insert(path.clone(), adapter.config());
        layer_shapes.insert(path.clone(), [layer.out_features(), layer.in_features()]);
        for (tname, var) in adapter.trainable() {
            tensors.insert(
                format!("{KEY_PREFIX}{path}.{tname}"),
                var.as_tensor().copy()?,
            );
        }
    }
    if m.kind() == MethodKind::BaseWeights {
        // Full fine-tuning: the trained base tensors under their state-dict names.
        for (name, var) in crate::tuning::attach::base_vars(model) {
            tensors.insert(format!("{KEY_PREFIX}{name}"), var.as_tensor().copy()?);
        }
        if tensors.is_empty() {
            return Err(Error::NoTrainedBaseTensors { method: m.name() });
        }
    } else if let MethodKind::VirtualTokens(placement) = m.kind() {
        // PEFT's layout: the one table under PEFT's own key, and PEFT's config fields.
        let Some((_, tokens)) = model.adapter_tokens(adapter_name) else {
            return Err(Error::NoVirtualTokens { method: m.name() });
        };
        tensors.insert(TOKENS_KEY.to_string(), tokens.as_tensor().copy()?);
        peft_fields = peft_prompt_fields(placement, &model.virtual_spec(), tokens.dims());
    } else if modules.is_empty() {
        return Err(Error::AdapterNotAttached {
            op: "save",
            adapter: adapter_name.to_string(),
        });
    }
    let mut modules_to_save = Vec::new();
    if meta.save_head {
        for (name, var) in model.head_vars() {
            tensors.insert(head_key(m.kind(), &name), var.as_tensor().copy()?);
            modules_to_save.push(name);
        }
    }
    // PEFT's task type, so a reader knows the head the adapter expects (CAUSAL_LM: a
    // decoder's LM head).
    peft_fields.insert(
        "task_type".into(),
        serde_json::json!(model.peft_task_type()),
    );
    let config = AdapterConfig {
        peft_type: m.peft_type().into(),
        format_version: FORMAT_VERSION,
        ttlora_version: env!("CARGO_PKG_VERSION").into(),
        method: m.name().into(),
        base_model_name_or_path: meta.base_model.clone(),
        base_model_config_sha256: meta.base_model_config_sha256.clone(),
        config: meta.config.clone(),
        target_modules: meta.target_modules.clone(),
        exclude_modules: meta.exclude_modules.clone(),
        overrides: meta.overrides.clone(),
        modules,
        layer_shapes,
        modules_to_save,
        task: meta.task.clone(),
        unknown: peft_fields,
    };
    Ok(AdapterFolder { config, tensors })
}

/// The weights-file key of head tensor `name`: PEFT's own for the placement. A prompt-learning
/// PeftModel holds the transformers model directly (`base_model.classifier…`); the tuner
/// wrappers of every other method add a level (`base_model.model.classifier…`).
fn head_key(kind: MethodKind, name: &str) -> String {
    match kind {
        MethodKind::VirtualTokens(_) => format!("base_model.{name}"),
        _ => format!("{KEY_PREFIX}{name}"),
    }
}

/// PEFT's `PromptTuningConfig` / `PrefixTuningConfig` fields for tokens of `dims` on a model
/// like `spec`, so PEFT reads the folder ttlora writes (it ignores ttlora's own fields).
fn peft_prompt_fields(
    placement: TokenPlacement,
    spec: &crate::adapters::VirtualSpec,
    dims: &[usize],
) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    // Under grouped-query attention PEFT sizes a prefix by the key/value heads (its
    // `_prepare_prompt_learning_config`): `token_dim` and `num_attention_heads` say so.
    let (token_dim, heads) = match placement {
        TokenPlacement::Prompt => (spec.hidden, spec.heads),
        TokenPlacement::Prefix => (spec.kv_width, spec.kv_heads),
    };
    let mut f = BTreeMap::from([
        ("inference_mode".to_string(), json!(true)),
        (
            "num_virtual_tokens".to_string(),
            json!(dims.first().copied().unwrap_or(0)),
        ),
        ("token_dim".to_string(), json!(token_dim)),
        ("num_transformer_submodules".to_string(), json!(1)),
        ("num_attention_heads".to_string(), json!(heads)),
        ("num_layers".to_string(), json!(spec.layers)),
    ]);
    if placement == TokenPlacement::Prompt {
        f.insert("prompt_tuning_init".into(), json!("RANDOM"));
    } else {
        f.insert("prefix_projection".into(), json!(false));
        f.insert("encoder_hidden_size".into(), json!(spec.hidden));
    }
    f
}

/// Rebuilds the adapter of module `path` from its config in `folder` for a layer like `spec`
/// and loads its tensors; returns it with the tensor keys it used.
///
/// # Errors
/// [`Error::AdapterMismatch`] if the config does not fit the layer; [`Error::WeightTensor`]
/// for a missing tensor or one of the wrong shape.
pub fn restore_adapter(
    folder: &AdapterFolder,
    path: &str,
    module_cfg: &serde_json::Value,
    spec: &crate::adapters::LayerSpec,
) -> Result<(Box<dyn crate::adapters::Adapter>, Vec<String>)> {
    let m = method(&folder.config.method)?;
    let file = std::path::PathBuf::from(crate::io::adapter_folder::WEIGHTS_FILE);
    let bad = |name: &str, reason: String| Error::WeightTensor {
        path: file.clone(),
        name: name.to_string(),
        reason,
    };
    let adapter = m
        .build_from_json(module_cfg, spec, &mut seeded_rng(0))
        .map_err(|e| Error::AdapterMismatch {
            name: path.to_string(),
            layer_out: spec.out_features,
            layer_in: spec.in_features,
            reason: e.to_string(),
        })?;
    let mut keys = Vec::new();
    for (tname, var) in adapter.trainable() {
        let key = format!("{KEY_PREFIX}{path}.{tname}");
        let t = folder
            .tensors
            .get(&key)
            .ok_or_else(|| bad(&key, format!("missing (expected shape {:?})", var.dims())))?;
        if t.dims() != var.dims() {
            return Err(bad(
                &key,
                format!("has shape {:?}, expected {:?}", t.dims(), var.dims()),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        keys.push(key);
    }
    Ok((adapter, keys))
}

/// Rebuilds the adapters of `folder` onto `model` under `adapter_name` and loads the saved
/// head tensors. Every module the config names must exist in the model, every tensor must be
/// used and have the shape the rebuilt adapter expects.
///
/// # Errors
/// [`Error::WeightTensor`] / [`Error::ModelConfig`] naming the module or tensor that does not
/// fit; nothing is attached if any module fails.
pub fn load_into(model: &mut dyn Model, folder: &AdapterFolder, adapter_name: &str) -> Result<()> {
    let cfg = &folder.config;
    // An unknown method fails here, before any module is looked at.
    method(&cfg.method)?;
    let file = std::path::PathBuf::from(crate::io::adapter_folder::WEIGHTS_FILE);
    let bad = |name: &str, reason: String| Error::WeightTensor {
        path: file.clone(),
        name: name.to_string(),
        reason,
    };
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let kind = method(&cfg.method)?.kind();
    let mut virtual_tokens = None;
    if let MethodKind::VirtualTokens(placement) = kind {
        let (key, t) = folder.tensors.get_key_value(TOKENS_KEY).ok_or_else(|| {
            bad(
                TOKENS_KEY,
                "missing: a prompt-learning folder holds it".into(),
            )
        })?;
        used.insert(key.as_str());
        virtual_tokens = Some((placement, t.clone()));
    }
    let base_updates = base_tensors_from(model, folder)?;
    used.extend(base_updates.iter().map(|(key, _)| key.as_str()));
    // Build every adapter first, attach only when all fit.
    let mut built = Vec::new();
    let mut found = BTreeSet::new();
    for (path, layer) in model.linears() {
        // ttlora 0.1 folders named modules without the family prefix (`encoder.layer.0…` for
        // `bert.encoder.layer.0…`); they still load.
        let legacy = path.split_once('.').map(|(_, rest)| rest);
        let Some((cfg_path, module_cfg)) = cfg
            .modules
            .get_key_value(&path)
            .or_else(|| legacy.and_then(|p| cfg.modules.get_key_value(p)))
        else {
            continue;
        };
        found.insert(cfg_path.clone());
        let spec = crate::adapters::LayerSpec::for_layer(layer);
        let (adapter, keys) = restore_adapter(folder, cfg_path, module_cfg, &spec)?;
        for k in keys {
            if let Some((k, _)) = folder.tensors.get_key_value(&k) {
                used.insert(k.as_str());
            }
        }
        built.push((path, adapter));
    }
    if let Some(missing) = cfg.modules.keys().find(|p| !found.contains(*p)) {
        let some: Vec<String> = model
            .linears()
            .into_iter()
            .take(3)
            .map(|(p, _)| p)
            .collect();
        return Err(Error::ModelConfig {
            path: crate::io::adapter_folder::CONFIG_FILE.into(),
            reason: format!(
                "module `{missing}` is not a linear layer of this model (its layers look like {})",
                some.join(", ")
            ),
        });
    }
    let head = model.head_vars();
    let mut head_updates: Vec<(candle_core::Var, Tensor)> = Vec::new();
    for name in &cfg.modules_to_save {
        let key = head_key(kind, name);
        let t = folder
            .tensors
            .get(&key)
            .ok_or_else(|| bad(&key, "listed in modules_to_save but missing".into()))?;
        let var = head
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| bad(&key, "is not a head tensor of this model".into()))?;
        if t.dims() != var.dims() {
            return Err(bad(
                &key,
                format!(
                    "has shape {:?}, expected {:?} (another num_labels?)",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        used.insert(
            folder
                .tensors
                .get_key_value(&key)
                .map_or("", |(k, _)| k.as_str()),
        );
        head_updates.push((var, t.clone()));
    }
    if let Some(extra) = folder.tensors.keys().find(|k| !used.contains(k.as_str())) {
        return Err(bad(
            extra,
            "belongs to no adapted module or saved head tensor".into(),
        ));
    }
    // Virtual tokens first: attaching them checks the architecture and their width, and a
    // refusal must leave the model as it was.
    if let Some((placement, t)) = virtual_tokens {
        let spec = model.virtual_spec();
        let t = t.to_dtype(spec.dtype)?.to_device(&spec.device)?;
        let var = candle_core::Var::from_tensor(&t)?;
        model.set_virtual_tokens(adapter_name, Some((placement, var)))?;
    }
    for (var, t) in head_updates {
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    let mut base_updates: BTreeMap<String, Tensor> = base_updates.into_iter().collect();
    // Only a saved full fine-tune replaces base tensors; walking them dequantizes a base
    // kept quantized, which an adapter must leave as it is.
    if !base_updates.is_empty() {
        for base in model.base_tensors_mut()? {
            if let Some(saved) = base_updates.remove(&format!("{KEY_PREFIX}{}", base.name)) {
                *base.tensor = saved;
            }
        }
    }
    let mut built: BTreeMap<String, _> = built.into_iter().collect();
    for (path, layer) in model.linears_mut() {
        if let Some(adapter) = built.remove(&path) {
            layer.add_adapter(adapter_name, adapter)?;
        }
    }
    Ok(())
}

/// The saved base tensors of a full fine-tune in `folder` (none for other methods), by key,
/// checked against the model's own: the same shapes, converted to its dtype and device.
///
/// # Errors
/// [`Error::WeightTensor`] for a tensor of the wrong shape; a full fine-tune that saved no
/// base tensor.
fn base_tensors_from(
    model: &mut dyn Model,
    folder: &AdapterFolder,
) -> Result<Vec<(String, Tensor)>> {
    if method(&folder.config.method)?.kind() != MethodKind::BaseWeights {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for base in model.base_tensors_mut()? {
        let (key, t) = (format!("{KEY_PREFIX}{}", base.name), base.tensor);
        let Some(saved) = folder.tensors.get(&key) else {
            continue;
        };
        if saved.dims() != t.dims() {
            return Err(Error::WeightTensor {
                path: crate::io::adapter_folder::WEIGHTS_FILE.into(),
                name: key,
                reason: format!("has shape {:?}, expected {:?}", saved.dims(), t.dims()),
            });
        }
        out.push((key, saved.to_dtype(t.dtype())?.to_device(t.device())?));
    }
    if out.is_empty() {
        return Err(Error::ModelConfig {
            path: crate::io::adapter_folder::CONFIG_FILE.into(),
            reason: "a full fine-tune whose weights hold no tensor of this model".into(),
        });
    }
    Ok(out)
}

/// The adapter called `adapter_name` on `model` as an exact PEFT LoRA (DESIGN §3, path 3):
/// LoRA adapters as they are, TT-LoRA folded into rank-r factors with `lora_B = α·B` and
/// `lora_alpha = r`; the head too when `meta.save_head`.
///
/// # Errors
/// [`Error::AdapterNotAttached`] when no layer carries the adapter; [`Error::NoLoraForm`] for a
/// method that is not LoRA-shaped; [`Error::NotLoraShaped`] naming a module whose adapter cannot
/// be folded (a TT shape without a splitting bond); [`Error::MixedLoraVariants`] for modules
/// that mix rsLoRA or DoRA with plain LoRA.
pub fn to_peft_lora(
    model: &dyn Model,
    adapter_name: &str,
    meta: &AdapterMeta,
) -> Result<crate::io::peft_lora::PeftLora> {
    use crate::io::peft_lora::{LoraModule, PeftLora};
    let mut modules = BTreeMap::new();
    let mut with_rslora = 0;
    for (path, _, adapter) in adapters_named(model, adapter_name) {
        let f = adapter
            .as_lora()
            .map_err(|e| Error::NotLoraShaped {
                module: path.clone(),
                source: Box::new(e),
            })?
            .ok_or_else(|| Error::NoLoraForm {
                method: adapter.method(),
                what: "adapter",
                instead: "export it as a merged model instead".into(),
            })?;
        with_rslora += usize::from(f.use_rslora);
        modules.insert(
            path,
            LoraModule {
                a: f.a,
                b: f.b,
                lora_alpha: f.lora_alpha,
                magnitude: f.magnitude,
            },
        );
    }
    if modules.is_empty() {
        return Err(Error::AdapterNotAttached {
            op: "export",
            adapter: adapter_name.to_string(),
        });
    }
    if with_rslora != 0 && with_rslora != modules.len() {
        return Err(Error::MixedLoraVariants {
            variant: "rsLoRA",
            field: "use_rslora",
            with: with_rslora,
            without: modules.len() - with_rslora,
        });
    }
    let with_dora = modules.values().filter(|m| m.magnitude.is_some()).count();
    if with_dora != 0 && with_dora != modules.len() {
        return Err(Error::MixedLoraVariants {
            variant: "DoRA",
            field: "use_dora",
            with: with_dora,
            without: modules.len() - with_dora,
        });
    }
    let mut head = BTreeMap::new();
    if meta.save_head {
        for (name, var) in model.head_vars() {
            head.insert(name, var.as_tensor().copy()?);
        }
    }
    Ok(PeftLora {
        base_model: meta.base_model.clone(),
        modules,
        use_rslora: with_rslora > 0,
        // PEFT's default when the method config does not say (TT-LoRA has no dropout).
        lora_dropout: meta
            .config
            .get("lora_dropout")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
        head,
        task_type: model.peft_task_type().into(),
        task: meta.task.clone(),
        base_model_config_sha256: meta.base_model_config_sha256.clone(),
    })
}
