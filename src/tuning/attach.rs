//! Putting a method onto a model, whatever its [`MethodKind`]: adapters onto the targeted
//! linear layers, or (full fine-tuning) the model's own tensors made trainable; and listing
//! what then trains.

use std::collections::BTreeMap;

use candle_core::Var;
use rand::rngs::StdRng;

use crate::adapters::{
    BaseTensorInfo, InjectReport, MethodKind, MethodSpec, ModuleSet, Targeting, inject,
};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::models::walk::{Entry, Module};

/// Where a method goes on a model: the target modules used (for the record) and the
/// compiled rules; both `None` for a method that attaches to no layer.
#[derive(Debug, Clone)]
pub struct Placing {
    /// The targets as used: the given ones, else the method's default for the architecture.
    pub targets: Option<ModuleSet>,
    /// The compiled targeting rules.
    pub targeting: Option<Targeting>,
}

/// The targeting rules for `method` on `model`: the given targets, else the method's default
/// (LoRA-style methods: the architecture's default targets; serial methods: the projections
/// they follow).
///
/// # Errors
/// Targets, exclusions or overrides given to a method that attaches to no layer (full
/// fine-tuning), which would otherwise be silently ignored; an invalid regex.
pub fn placing(
    spec: &MethodSpec,
    model: &dyn Model,
    targets: Option<&ModuleSet>,
    exclude: Option<&ModuleSet>,
    overrides: &BTreeMap<String, serde_json::Value>,
) -> Result<Placing> {
    let method = spec.method();
    if !matches!(method.kind(), MethodKind::Layer(_)) {
        if targets.is_some() || exclude.is_some() || !overrides.is_empty() {
            return Err(Error::InvalidConfig {
                method: method.name(),
                field: "target_modules",
                reason: "attaches to no chosen layer; target modules, exclusions and \
                         overrides do not apply"
                    .into(),
                got: format!("{targets:?} / {exclude:?} / {} overrides", overrides.len()),
            });
        }
        return Ok(Placing {
            targets: None,
            targeting: None,
        });
    }
    let targets = match targets {
        Some(t) => t.clone(),
        None => method.default_targets(spec.config(), &model.default_sites())?,
    };
    // The method's own patterns first; an explicit override of the same key adds its fields
    // over them.
    let mut all = method.pattern_overrides(spec.config())?;
    for (key, fields) in overrides {
        let entry = all
            .entry(key.clone())
            .or_insert_with(|| serde_json::json!({}));
        if let (Some(dst), Some(src)) = (entry.as_object_mut(), fields.as_object()) {
            dst.extend(src.iter().map(|(k, v)| (k.clone(), v.clone())));
        } else {
            *entry = fields.clone();
        }
    }
    let mut outputs = Vec::new();
    model.walk(&mut |name, e| {
        if let Entry::Linear(tag, _) = e
            && tag.module == Module::LmHead
        {
            outputs.push(name);
        }
    });
    let targeting = Targeting::new(&targets, exclude, &all)?.with_outputs(outputs);
    Ok(Placing {
        targets: Some(targets),
        targeting: Some(targeting),
    })
}

/// Attaches the method of `spec` to `model` under `adapter_name`:
/// adapters on every layer `placing` targets, or, for full fine-tuning, the base tensors the
/// config trains turned into `Var`s (the report then lists tensor names, not modules).
///
/// # Errors
/// As [`inject`]; a base method whose config trains no tensor; [`Error::PlacementMismatch`]
/// for a `placing` built for another kind of method; the model's refusal of virtual tokens
/// ([`Error::VirtualTokensUnsupported`]).
pub fn attach(
    model: &mut dyn Model,
    spec: &MethodSpec,
    placing: &Placing,
    adapter_name: &str,
    rng: &mut StdRng,
) -> Result<InjectReport> {
    let method = spec.method();
    match (&placing.targeting, method.kind()) {
        (None, MethodKind::BaseWeights) => unfreeze(model, spec),
        (None, MethodKind::VirtualTokens(placement)) => {
            let tokens = method.build_virtual(spec.config(), &model.virtual_spec(), rng)?;
            let var = Var::from_tensor(&tokens)?;
            model.set_virtual_tokens(adapter_name, Some((placement, var)))?;
            Ok(InjectReport {
                adapted: vec![crate::io::TOKENS_KEY.into()],
                params: tokens.elem_count(),
            })
        }
        (Some(targeting), MethodKind::Layer(_)) => {
            inject(model.linears_mut(), spec, targeting, adapter_name, rng)
        }
        (targeting, _) => {
            let (expected, got) = if targeting.is_some() {
                ("no layer targets", "layer targets")
            } else {
                ("layer targets", "none")
            };
            Err(Error::PlacementMismatch {
                method: method.name(),
                expected,
                got,
            })
        }
    }
}

/// Makes every base tensor the config trains a `Var` (shared with the model, so optimizer
/// updates are what the forward reads).
fn unfreeze(model: &mut dyn Model, spec: &MethodSpec) -> Result<InjectReport> {
    let mut report = InjectReport::default();
    for base in model.base_tensors_mut()? {
        let info = BaseTensorInfo {
            name: &base.name,
            embedding_module: base.tag.module == Module::Embeddings,
        };
        if !spec.method().trains_base_tensor(spec.config(), &info)? {
            continue;
        }
        let var = Var::from_tensor(base.tensor)?;
        *base.tensor = var.as_tensor().clone();
        report.params += base.tensor.elem_count();
        report.adapted.push(base.name);
    }
    if report.adapted.is_empty() {
        return Err(Error::InvalidConfig {
            method: spec.name(),
            field: "config",
            reason: "trains no tensor of this model".into(),
            got: spec.given().to_string(),
        });
    }
    Ok(report)
}

/// The base tensors that train (full fine-tuning), by state-dict name.
pub fn base_vars(model: &dyn Model) -> Vec<(String, Var)> {
    let head: std::collections::BTreeSet<String> =
        model.head_vars().into_iter().map(|(n, _)| n).collect();
    model
        .state_dict()
        .into_iter()
        .filter(|(n, t)| t.is_variable() && !head.contains(n))
        .filter_map(|(n, t)| Var::from_tensor(&t).ok().map(|v| (n, v)))
        .collect()
}

/// Everything that trains except the head: every active, unmerged adapter's tensors, named
/// `{module path}.{adapter name}.{tensor}`, the trainable base tensors by state-dict name, and
/// the active prompt or prefix tokens as `prompt_embeddings`.
///
/// # Errors
/// [`crate::Error::AmbiguousVirtualTokens`] when several
/// adapters hold tokens and none is active.
pub fn trainable_vars(model: &dyn Model) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    if let Some((_, tokens)) = model.virtual_tokens()? {
        vars.push((crate::io::TOKENS_KEY.to_string(), tokens));
    }
    for (path, layer) in model.linears() {
        for (adapter, name, var) in layer.trainable() {
            vars.push((format!("{path}.{adapter}.{name}"), var));
        }
    }
    vars.extend(base_vars(model));
    Ok(vars)
}
