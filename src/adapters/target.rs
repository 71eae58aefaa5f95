//! Where adapters go, with HF PEFT's rules (`check_target_module_exists`): a list matches a
//! module path exactly or by `.name` suffix; a single string is a full-match regex;
//! `all-linear` takes every linear layer; `exclude` removes matches the same way. Per-module
//! overrides (PEFT's `rank_pattern`/`alpha_pattern`, generalised to any config field) change
//! the config of the layers whose path matches their key.

use std::collections::BTreeMap;
use std::collections::hash_map::{Entry, HashMap};

use rand::rngs::StdRng;
use regex::Regex;

use crate::adapters::{LayerSpec, Linear, MethodConfig, MethodSpec, ModuleSet};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Matcher {
    All,
    Regex(Regex),
    Names(Vec<String>),
}

impl Matcher {
    fn new(set: &ModuleSet, field: &'static str) -> Result<Self> {
        Ok(match set {
            ModuleSet::Pattern(p) if p == ModuleSet::ALL_LINEAR => Matcher::All,
            ModuleSet::Pattern(p) => Matcher::Regex(full_match(p, field)?),
            ModuleSet::List(names) => Matcher::Names(names.clone()),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Regex(r) => r.is_match(path),
            Matcher::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
        }
    }
}

fn full_match(pattern: &str, field: &'static str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::InvalidConfig {
        method: "targeting",
        field,
        reason: format!("is not a valid regex: {e}"),
        got: pattern.into(),
    })
}

/// Compiled targeting rules.
#[derive(Debug, Clone)]
pub struct Targeting {
    targets: Matcher,
    exclude: Option<Matcher>,
    overrides: Vec<(String, Regex, serde_json::Value)>,
    /// Output layers `all-linear` leaves out (a decoder's `lm_head`), as PEFT does.
    outputs: Vec<String>,
}

impl Targeting {
    /// Compiles `targets`, optional `exclude`, and `overrides` (key → partial config object;
    /// a key matches a path like PEFT's pattern keys: the path ends with `.key` or equals it,
    /// with `key` read as a regex).
    ///
    /// # Errors
    /// An invalid regex; an override that is not a JSON object.
    pub fn new(
        targets: &ModuleSet,
        exclude: Option<&ModuleSet>,
        overrides: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Self> {
        let overrides = overrides
            .iter()
            .map(|(k, v)| {
                if !v.is_object() {
                    return Err(Error::InvalidConfig {
                        method: "targeting",
                        field: "overrides",
                        reason: format!("entry `{k}` must be an object of config fields"),
                        got: v.to_string(),
                    });
                }
                Ok((
                    k.clone(),
                    full_match(&format!("(?:.*\\.)?(?:{k})"), "overrides")?,
                    v.clone(),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            targets: Matcher::new(targets, "target_modules")?,
            exclude: exclude
                .map(|e| Matcher::new(e, "exclude_modules"))
                .transpose()?,
            overrides,
            outputs: Vec::new(),
        })
    }

    /// The same rules with the model's output layers (a decoder's `lm_head`) left out of
    /// `all-linear`; a list or regex naming them still targets them.
    pub fn with_outputs(mut self, outputs: Vec<String>) -> Self {
        self.outputs = outputs;
        self
    }

    /// Whether an adapter goes on the module at `path`.
    pub fn matches(&self, path: &str) -> bool {
        let output_under_all =
            matches!(self.targets, Matcher::All) && self.outputs.iter().any(|o| o == path);
        self.targets.matches(path)
            && !output_under_all
            && !self.exclude.as_ref().is_some_and(|e| e.matches(path))
    }

    /// The fields the overrides whose keys match `path` set, `None` if none matches; a field
    /// two matching overrides set comes from the first in key order (PEFT resolves
    /// `rank_pattern` and `alpha_pattern` each by its first matching key, independently).
    pub fn patch_for(&self, path: &str) -> Option<serde_json::Value> {
        let mut patch = serde_json::Map::new();
        let mut any = false;
        for (_, _, extra) in self.overrides.iter().filter(|(_, re, _)| re.is_match(path)) {
            any = true;
            for (k, v) in extra.as_object().into_iter().flatten() {
                patch.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        any.then_some(serde_json::Value::Object(patch))
    }
}

/// What [`inject`] did.
#[derive(Debug, Clone, Default)]
pub struct InjectReport {
    /// Module paths that received an adapter, in order.
    pub adapted: Vec<String>,
    /// Trainable adapter parameters added.
    pub params: usize,
}

/// Attaches an adapter of `method` named `adapter_name` to every layer `targeting` matches.
///
/// `layers` are `(module path, layer)` pairs in a fixed order; layer k's init draws from `rng`
/// after layers 0..k, so a seed gives the same adapters every time.
///
/// # Errors
/// No layer matched (the message lists a few layer paths); a config that does not build.
pub fn inject(
    layers: Vec<(String, &mut Linear)>,
    spec: &MethodSpec,
    targeting: &Targeting,
    adapter_name: &str,
    rng: &mut StdRng,
) -> Result<InjectReport> {
    let mut report = InjectReport::default();
    let mut examples = Vec::new();
    // Layers an override reaches get the config with its fields, parsed once per patch.
    let mut patched: HashMap<String, Box<dyn MethodConfig>> = HashMap::new();
    for (path, layer) in layers {
        if examples.len() < 4 {
            examples.push(path.clone());
        }
        if !targeting.matches(&path) {
            continue;
        }
        let layer_spec = LayerSpec::for_layer(layer);
        let config = match targeting.patch_for(&path) {
            None => spec.config(),
            Some(patch) => match patched.entry(patch.to_string()) {
                Entry::Occupied(e) => &**e.into_mut(),
                Entry::Vacant(e) => {
                    let config =
                        spec.with_fields(&patch)
                            .map_err(|err| Error::AdapterMismatch {
                                name: path.clone(),
                                layer_out: layer_spec.out_features,
                                layer_in: layer_spec.in_features,
                                reason: format!("with the overrides {patch}: {err}"),
                            })?;
                    &**e.insert(config)
                }
            },
        };
        let adapter =
            spec.method()
                .build(config, &layer_spec, rng)
                .map_err(|e| Error::AdapterMismatch {
                    name: path.clone(),
                    layer_out: layer_spec.out_features,
                    layer_in: layer_spec.in_features,
                    reason: e.to_string(),
                })?;
        report.params += adapter.num_params();
        layer.add_adapter(adapter_name, adapter)?;
        report.adapted.push(path);
    }
    if report.adapted.is_empty() {
        return Err(Error::InvalidConfig {
            method: "targeting",
            field: "target_modules",
            reason: format!(
                "matched no layer; layer paths look like {}",
                examples.join(", ")
            ),
            got: format!("{:?}", targeting.targets),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use serde_json::json;

    use super::*;
    use crate::adapters::seeded_rng;

    const PATHS: [&str; 5] = [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.0.attention.output.dense",
    ];

    fn matched(t: &Targeting) -> Vec<&'static str> {
        PATHS.iter().copied().filter(|p| t.matches(p)).collect()
    }

    #[test]
    fn list_matches_exact_or_suffix() {
        let t = Targeting::new(
            &ModuleSet::List(vec!["query".into(), "value".into()]),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(matched(&t), [PATHS[0], PATHS[2], PATHS[3]]);
        // "ery" is not a `.name` suffix.
        let t =
            Targeting::new(&ModuleSet::List(vec!["ery".into()]), None, &BTreeMap::new()).unwrap();
        assert!(matched(&t).is_empty());
        let t = Targeting::new(
            &ModuleSet::List(vec![PATHS[4].into()]),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(matched(&t), [PATHS[4]]);
    }

    #[test]
    fn string_is_a_full_match_regex_and_all_linear_takes_all() {
        let t = Targeting::new(
            &ModuleSet::Pattern(r".*\.0\..*\.(query|key)".into()),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(matched(&t), [PATHS[0], PATHS[1]]);
        let t =
            Targeting::new(&ModuleSet::Pattern("query".into()), None, &BTreeMap::new()).unwrap();
        assert!(matched(&t).is_empty(), "full match, not search");
        let t = Targeting::new(
            &ModuleSet::Pattern("all-linear".into()),
            Some(&ModuleSet::List(vec!["key".into()])),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(matched(&t), [PATHS[0], PATHS[2], PATHS[3], PATHS[4]]);
    }

    #[test]
    fn overrides_apply_to_matching_paths() {
        let mut o = BTreeMap::new();
        o.insert("value".to_string(), json!({"rank": 2}));
        let t = Targeting::new(
            &ModuleSet::List(vec!["query".into(), "value".into()]),
            None,
            &o,
        )
        .unwrap();
        assert_eq!(t.patch_for(PATHS[2]), Some(json!({"rank": 2})));
        assert_eq!(t.patch_for(PATHS[0]), None);
    }

    #[test]
    fn every_matching_override_contributes_its_fields_first_key_first() {
        // PEFT resolves rank_pattern and alpha_pattern independently: a rank from one key and
        // an α from another both apply to a module both match.
        let mut o = BTreeMap::new();
        o.insert("value".to_string(), json!({"rank": 2}));
        o.insert(
            "layer.0.attention.self.value".to_string(),
            json!({"alpha": 32.0}),
        );
        o.insert("v.*".to_string(), json!({"rank": 9}));
        let t = Targeting::new(&ModuleSet::names(&["value"]), None, &o).unwrap();
        // Key order: "layer.0…" (α 32), "v.*" (rank 9; matches the whole name `value` only as
        // the last path segment), "value" (rank 2, shadowed for rank).
        assert_eq!(
            t.patch_for(PATHS[2]),
            Some(json!({"rank": 9, "alpha": 32.0}))
        );
    }

    #[test]
    fn bad_regex_and_no_match_are_clear_errors() {
        let err = Targeting::new(&ModuleSet::Pattern("(".into()), None, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("targeting config: field `target_modules` is not a valid regex"),
            "{err}"
        );
        let mut lin = Linear::new(
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
        let t = Targeting::new(
            &ModuleSet::List(vec!["query".into()]),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        let err = inject(
            vec![("encoder.layer.0.output.dense".into(), &mut lin)],
            &MethodSpec::parse("lora", json!({"r": 2})).unwrap(),
            &t,
            "default",
            &mut seeded_rng(0),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("matched no layer; layer paths look like encoder.layer.0.output.dense"),
            "{err}"
        );
    }

    #[test]
    fn inject_builds_per_layer_configs() {
        let mut a = Linear::new(
            Tensor::zeros((8, 8), DType::F32, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
        let mut b = Linear::new(
            Tensor::zeros((8, 8), DType::F32, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
        let mut o = BTreeMap::new();
        o.insert("value".to_string(), json!({"r": 1}));
        let t = Targeting::new(
            &ModuleSet::List(vec!["query".into(), "value".into()]),
            None,
            &o,
        )
        .unwrap();
        let report = inject(
            vec![("l.query".into(), &mut a), ("l.value".into(), &mut b)],
            &MethodSpec::parse("lora", json!({"r": 2})).unwrap(),
            &t,
            "default",
            &mut seeded_rng(0),
        )
        .unwrap();
        assert_eq!(report.adapted, ["l.query", "l.value"]);
        assert_eq!(report.params, 2 * 16 + 16);
    }
}
