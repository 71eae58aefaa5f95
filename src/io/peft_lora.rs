//! HF PEFT LoRA folders (DESIGN §5), read and written with PEFT's own conventions.
//!
//! A PEFT LoRA folder holds `adapter_config.json` (`"peft_type": "LORA"`, `r`, `lora_alpha`,
//! `target_modules`, …, keys sorted) and `adapter_model.safetensors` (metadata
//! `{"format":"pt"}`, keys `base_model.model.<module path>.lora_A.weight` `(r, in)` and
//! `.lora_B.weight` `(out, r)`, trained heads under their module path). Reading turns it into an
//! [`AdapterFolder`] of method `lora` with one exact config per module, so the rest of ttlora
//! handles it like its own folders. PEFT has no place for what ttlora knows about the task, so
//! that goes into a side file, [`TASK_FILE`], which PEFT never reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::{Value, json};

use super::adapter_folder::{
    AdapterConfig, AdapterFolder, CONFIG_FILE, FORMAT_VERSION, KEY_PREFIX, TaskInfo, WEIGHTS_FILE,
};
use super::fs::{read_json_if_present, read_safetensors};
use super::output::{OutputLock, write_safetensors, write_synced_json};
use crate::error::{Error, Result};

/// ttlora's side file in an exported PEFT folder: the task (labels, pooling, max length) and
/// the base model's config hash, which PEFT's config has no fields for.
pub const TASK_FILE: &str = "ttlora_task.json";

const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";
/// DoRA's magnitude, keyed without `.weight` as PEFT saves it.
const MAGNITUDE_SUFFIX: &str = ".lora_magnitude_vector";

/// One adapted module of a PEFT LoRA: the factors and PEFT's scaling fields.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// `lora_A.weight`, `(r, in)`.
    pub a: Tensor,
    /// `lora_B.weight`, `(out, r)`.
    pub b: Tensor,
    /// PEFT's `lora_alpha` (the update is `lora_alpha / r · B·A`).
    pub lora_alpha: f64,
    /// DoRA's `lora_magnitude_vector`, `(out)`, when the module uses DoRA.
    pub magnitude: Option<Tensor>,
}

/// A PEFT LoRA adapter in memory, ready to write.
#[derive(Debug, Clone)]
pub struct PeftLora {
    /// `base_model_name_or_path` (the model id or folder the adapter belongs to).
    pub base_model: String,
    /// Module path (e.g. `bert.encoder.layer.0.attention.self.query`) → its factors.
    pub modules: BTreeMap<String, LoraModule>,
    /// Rank-stabilised scaling `lora_alpha / √r` for every module.
    pub use_rslora: bool,
    /// PEFT's `lora_dropout` (training only; recorded so training can resume alike).
    pub lora_dropout: f64,
    /// Trained head tensors by full name (e.g. `classifier.weight`).
    pub head: BTreeMap<String, Tensor>,
    /// PEFT's `task_type` (`SEQ_CLS` for a classifier).
    pub task_type: String,
    /// What ttlora knows beyond PEFT's fields, written to [`TASK_FILE`].
    pub task: Option<TaskInfo>,
    /// SHA-256 of the base model's config.json, written to [`TASK_FILE`].
    pub base_model_config_sha256: String,
}

/// The side file [`TASK_FILE`]: what ttlora knows about an exported folder that the
/// ecosystem's own config files have no fields for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct TaskFile {
    /// SHA-256 of the base model's config.json (empty when unknown).
    #[serde(default)]
    pub base_model_config_sha256: String,
    /// The task the adapter was trained for.
    #[serde(default)]
    pub task: Option<TaskInfo>,
}

impl TaskFile {
    /// Reads `dir`/[`TASK_FILE`], `None` when the folder has none.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::ModelConfig`] for an unreadable or malformed file.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        read_json_if_present(&dir.join(TASK_FILE))
    }

    /// Writes `dir`/[`TASK_FILE`] into a folder being built.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_synced_json(&dir.join(TASK_FILE), self)
    }
}

/// The fields of PEFT's `LoraConfig` that decide what a saved adapter computes.
#[derive(Debug, Deserialize)]
struct PeftLoraConfig {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: Value,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// Options that change the computation and that ttlora does not implement: set, they are an
/// error rather than a silently different model. `(field, value PEFT uses when off)`.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("fan_in_fan_out", "false (GPT-2 style Conv1D weights)"),
    ("bias", "\"none\" (trained biases)"),
    ("lora_bias", "false (a bias on lora_B)"),
    ("layer_replication", "null"),
    ("use_qalora", "false (QA-LoRA)"),
    ("target_parameters", "null (LoRA on parameters)"),
    ("trainable_token_indices", "null (trainable tokens)"),
];

/// PEFT fields that only steer training, initialisation or which modules get adapted (the
/// weights file already says which): read and ignored without a warning.
const IGNORED: [&str; 22] = [
    "peft_type",
    "task_type",
    "inference_mode",
    "init_lora_weights",
    "revision",
    "peft_version",
    "auto_mapping",
    "modules_to_save",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "loftq_config",
    "megatron_config",
    "megatron_core",
    "eva_config",
    "corda_config",
    "qalora_group_size",
    "ensure_weight_tying",
    "alora_invocation_tokens",
    "arrow_config",
    "runtime_config",
    "use_bdlora",
];

/// Whether `config` is a PEFT LoRA config rather than ttlora's own (which carries
/// `format_version`).
pub fn is_peft_lora(config: &Value) -> bool {
    config.get("peft_type").and_then(Value::as_str) == Some("LORA")
        && config.get("format_version").is_none()
}

/// PEFT's lookup in `rank_pattern` / `alpha_pattern`: an exact key first, then the first key
/// `k` for which the module path full-matches `(.*\.)?k`.
fn pattern_value<V: Copy>(patterns: &BTreeMap<String, V>, path: &str) -> Result<Option<V>> {
    if let Some(v) = patterns.get(path) {
        return Ok(Some(*v));
    }
    for (key, v) in patterns {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
            Error::ModelConfig {
                path: CONFIG_FILE.into(),
                reason: format!("pattern `{key}` is not a valid regex: {e}"),
            }
        })?;
        if re.is_match(path) {
            return Ok(Some(*v));
        }
    }
    Ok(None)
}

/// Whether a value is what PEFT writes for an option that is off.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s == "none",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) | Value::Number(_) => false,
    }
}

/// Reads the PEFT LoRA folder in `dir` as an [`AdapterFolder`] of method `lora`: one module
/// config per `lora_A`/`lora_B` pair found in the weights, with the rank and α PEFT would use
/// for it, and every other tensor kept as a head tensor (`modules_to_save`).
///
/// # Errors
/// [`Error::ModelConfig`] for a config that does not parse or sets an option ttlora does not
/// implement (DoRA, trained biases, …); [`Error::WeightTensor`] for a key outside
/// `base_model.model.`, an A without its B, factors whose shapes disagree with each other or
/// with the config's rank; [`Error::ModelFile`] for a missing or malformed weights file.
pub fn read(dir: &Path, config: &Value, device: &Device) -> Result<AdapterFolder> {
    let cfg_path = dir.join(CONFIG_FILE);
    let bad_cfg = |reason: String| Error::ModelConfig {
        path: cfg_path.clone(),
        reason,
    };
    let cfg: PeftLoraConfig =
        super::fs::from_json(config.clone()).map_err(|e| bad_cfg(format!("PEFT LoRA: {e}")))?;
    for (field, off) in UNSUPPORTED {
        if let Some(v) = cfg.rest.get(field)
            && !is_off(v)
        {
            return Err(bad_cfg(format!(
                "`{field}` is {v}; ttlora supports only {off} for PEFT LoRA adapters"
            )));
        }
    }
    for (key, v) in &cfg.rest {
        let known = IGNORED.contains(&key.as_str()) || UNSUPPORTED.iter().any(|(f, _)| f == key);
        if !known && !is_off(v) {
            tracing::warn!("{}: ignoring unknown field `{key}`", cfg_path.display());
        }
    }
    if cfg.r == 0 {
        return Err(bad_cfg("`r` must be >= 1".into()));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(Error::ModelFile {
            path: dir.join("adapter_model.bin"),
            reason: "pickled PyTorch weights are not read (they can run code); save the adapter \
                     with safe_serialization=True to get adapter_model.safetensors"
                .into(),
        });
    }
    let tensors = read_safetensors(&weights_path, device)?;
    let bad_t = |name: &str, reason: String| Error::WeightTensor {
        path: weights_path.clone(),
        name: name.to_string(),
        reason,
    };

    let mut modules = BTreeMap::new();
    let mut layer_shapes = BTreeMap::new();
    let mut head = Vec::new();
    for (key, t) in &tensors {
        let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
            return Err(bad_t(key, format!("does not start with `{KEY_PREFIX}`")));
        };
        if let Some(path) = rest.strip_suffix(A_SUFFIX) {
            let b_key = format!("{KEY_PREFIX}{path}{B_SUFFIX}");
            let b = tensors
                .get(&b_key)
                .ok_or_else(|| bad_t(key, format!("has no partner `{b_key}`")))?;
            let (a_dims, b_dims) = (t.dims(), b.dims());
            if a_dims.len() != 2 || b_dims.len() != 2 || a_dims[0] != b_dims[1] {
                return Err(bad_t(
                    key,
                    format!(
                        "has shape {a_dims:?} and lora_B {b_dims:?}; expected (r, in) and (out, r)"
                    ),
                ));
            }
            let r = pattern_value(&cfg.rank_pattern, path)?.unwrap_or(cfg.r);
            if a_dims[0] != r {
                return Err(bad_t(
                    key,
                    format!(
                        "has rank {}, but the config gives this module r = {r}",
                        a_dims[0]
                    ),
                ));
            }
            layer_shapes.insert(path.to_string(), [b_dims[0], a_dims[1]]);
            let alpha = pattern_value(&cfg.alpha_pattern, path)?.unwrap_or(cfg.lora_alpha);
            let m_key = format!("{KEY_PREFIX}{path}{MAGNITUDE_SUFFIX}");
            if cfg.use_dora != tensors.contains_key(&m_key) {
                return Err(bad_t(
                    &m_key,
                    format!(
                        "is {} while the config says use_dora = {}",
                        if cfg.use_dora { "missing" } else { "present" },
                        cfg.use_dora
                    ),
                ));
            }
            modules.insert(
                path.to_string(),
                json!({
                    "r": r,
                    "lora_alpha": alpha,
                    "lora_dropout": cfg.lora_dropout,
                    "use_rslora": cfg.use_rslora,
                    "use_dora": cfg.use_dora,
                }),
            );
        } else if let Some(path) = rest.strip_suffix(MAGNITUDE_SUFFIX) {
            let a_key = format!("{KEY_PREFIX}{path}{A_SUFFIX}");
            if !tensors.contains_key(&a_key) {
                return Err(bad_t(key, format!("has no partner `{a_key}`")));
            }
        } else if let Some(path) = rest.strip_suffix(B_SUFFIX) {
            let a_key = format!("{KEY_PREFIX}{path}{A_SUFFIX}");
            if !tensors.contains_key(&a_key) {
                return Err(bad_t(key, format!("has no partner `{a_key}`")));
            }
        } else if rest.contains(".lora_") {
            return Err(bad_t(
                key,
                "is a LoRA tensor of a kind ttlora does not support (only lora_A/lora_B and \
                 DoRA's lora_magnitude_vector of linear layers)"
                    .into(),
            ));
        } else {
            head.push(rest.to_string());
        }
    }
    if modules.is_empty() {
        return Err(bad_t(
            "*.lora_A.weight",
            "not found: the weights file holds no LoRA factors".into(),
        ));
    }
    let side = TaskFile::read(dir)?;
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        format_version: FORMAT_VERSION,
        ttlora_version: String::new(),
        method: "lora".into(),
        base_model_name_or_path: cfg.base_model_name_or_path.unwrap_or_default(),
        base_model_config_sha256: side
            .as_ref()
            .map(|s| s.base_model_config_sha256.clone())
            .unwrap_or_default(),
        config: json!({
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "use_rslora": cfg.use_rslora,
        }),
        target_modules: cfg.target_modules,
        exclude_modules: None,
        overrides: BTreeMap::new(),
        modules,
        layer_shapes,
        modules_to_save: head,
        task: side.and_then(|s| s.task),
        unknown: BTreeMap::new(),
    };
    Ok(AdapterFolder { config, tensors })
}

/// `x` as a JSON integer when it is one (PEFT's `lora_alpha` is an int in Python), else a
/// float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 2f64.powi(53) {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The most common value, ties to the smallest (PEFT's `r`/`lora_alpha` for the patterns).
fn most_common<T: Copy + PartialOrd>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(c, _)| *c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.sort_by(|(a, na), (b, nb)| {
        nb.cmp(na)
            .then(a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
    });
    counts.first().map(|(v, _)| *v)
}

impl PeftLora {
    /// PEFT's `adapter_config.json` for this adapter: the most common rank and α as `r` and
    /// `lora_alpha`, the others as exact-path `rank_pattern` / `alpha_pattern` entries, the
    /// adapted module paths as `target_modules`, the head's top-level modules as
    /// `modules_to_save`. Keys sorted, as PEFT writes them.
    ///
    /// # Errors
    /// [`Error::EmptyAdapter`] when there is no module to write.
    pub fn config_json(&self) -> Result<Value> {
        let rank = |m: &LoraModule| m.a.dims()[0];
        let r = most_common(self.modules.values().map(rank)).ok_or(Error::EmptyAdapter {
            format: "PEFT LoRA",
        })?;
        let alpha = most_common(self.modules.values().map(|m| m.lora_alpha)).unwrap_or(r as f64);
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for (path, m) in &self.modules {
            if rank(m) != r {
                rank_pattern.insert(path.clone(), json!(rank(m)));
            }
            if m.lora_alpha != alpha {
                alpha_pattern.insert(path.clone(), number(m.lora_alpha));
            }
        }
        let head_modules: BTreeSet<&str> = self
            .head
            .keys()
            .filter_map(|n| n.split('.').next())
            .collect();
        let base = (!self.base_model.is_empty()).then(|| self.base_model.clone());
        // serde_json's Map is a BTreeMap here: keys come out sorted, as PEFT sorts them.
        Ok(json!({
            "alpha_pattern": alpha_pattern,
            "base_model_name_or_path": base,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": number(alpha),
            "lora_dropout": self.lora_dropout,
            "modules_to_save": if head_modules.is_empty() { Value::Null } else { json!(head_modules) },
            "peft_type": "LORA",
            "r": r,
            "rank_pattern": rank_pattern,
            "target_modules": self.modules.keys().collect::<Vec<_>>(),
            "task_type": self.task_type,
            "use_dora": self.modules.values().any(|m| m.magnitude.is_some()),
            "use_rslora": self.use_rslora,
        }))
    }

    /// Writes the folder `dir` as one atomic replacement of whatever it held, under its
    /// [`OutputLock`] (see [`super::output`]).
    ///
    /// # Errors
    /// [`Error::OutputLocked`]; [`Error::Io`] naming the file; serialisation errors.
    pub fn write(&self, dir: &Path) -> Result<()> {
        OutputLock::acquire(dir)?.replace_folder(|d| self.write_files(d))
    }

    /// Writes the folder's files into the empty folder `dir` being built (see
    /// [`OutputLock::replace_folder`]).
    ///
    /// # Errors
    /// As [`write`](Self::write), the lock aside.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        let config = self.config_json()?;
        let mut tensors = BTreeMap::new();
        for (path, m) in &self.modules {
            tensors.insert(format!("{KEY_PREFIX}{path}{A_SUFFIX}"), m.a.contiguous()?);
            tensors.insert(format!("{KEY_PREFIX}{path}{B_SUFFIX}"), m.b.contiguous()?);
            if let Some(mag) = &m.magnitude {
                tensors.insert(
                    format!("{KEY_PREFIX}{path}{MAGNITUDE_SUFFIX}"),
                    mag.contiguous()?,
                );
            }
        }
        for (name, t) in &self.head {
            tensors.insert(format!("{KEY_PREFIX}{name}"), t.contiguous()?);
        }
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        TaskFile {
            base_model_config_sha256: self.base_model_config_sha256.clone(),
            task: self.task.clone(),
        }
        .write(dir)?;
        write_synced_json(&dir.join(CONFIG_FILE), &config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_peft_exact_first_then_suffix_regex() {
        let p: BTreeMap<String, usize> = BTreeMap::from([
            ("query".to_string(), 4),
            (r"layer\.1\..*value".to_string(), 16),
            ("bert.encoder.layer.0.attention.self.query".to_string(), 2),
        ]);
        let get = |path: &str| pattern_value(&p, path).unwrap();
        assert_eq!(get("bert.encoder.layer.0.attention.self.query"), Some(2));
        assert_eq!(get("bert.encoder.layer.1.attention.self.query"), Some(4));
        assert_eq!(get("bert.encoder.layer.1.attention.self.value"), Some(16));
        assert_eq!(get("bert.encoder.layer.0.attention.self.value"), None);
        // A suffix must start at a `.` boundary.
        assert_eq!(get("bert.encoder.layer.1.attention.self.subquery"), None);
        let bad = BTreeMap::from([("(".to_string(), 1usize)]);
        assert!(pattern_value(&bad, "x").is_err());
    }

    #[test]
    fn off_values_are_what_peft_writes_for_an_unused_option() {
        for v in [
            json!(null),
            json!(false),
            json!("none"),
            json!([]),
            json!({}),
        ] {
            assert!(is_off(&v), "{v}");
        }
        for v in [
            json!(true),
            json!("all"),
            json!(0),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert!(!is_off(&v), "{v}");
        }
    }

    #[test]
    fn the_most_common_rank_becomes_r_and_the_rest_rank_pattern() {
        let t = |r: usize| Tensor::zeros((r, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let module = |r: usize, alpha: f64| LoraModule {
            a: t(r),
            b: Tensor::zeros((4, r), candle_core::DType::F32, &Device::Cpu).unwrap(),
            lora_alpha: alpha,
            magnitude: None,
        };
        let lora = PeftLora {
            base_model: String::new(),
            modules: BTreeMap::from([
                ("m.a".to_string(), module(8, 8.0)),
                ("m.b".to_string(), module(8, 8.0)),
                ("m.c".to_string(), module(4, 2.5)),
            ]),
            use_rslora: false,
            lora_dropout: 0.0,
            head: BTreeMap::new(),
            task_type: "SEQ_CLS".into(),
            task: None,
            base_model_config_sha256: String::new(),
        };
        let c = lora.config_json().unwrap();
        assert_eq!(c["r"], 8);
        assert_eq!(
            c["lora_alpha"], 8,
            "an integral alpha is written as an int, like PEFT"
        );
        assert_eq!(c["rank_pattern"], json!({"m.c": 4}));
        assert_eq!(c["alpha_pattern"], json!({"m.c": 2.5}));
        assert_eq!(c["base_model_name_or_path"], Value::Null);
        assert_eq!(c["modules_to_save"], Value::Null);

        // Read back, each module gets its own rank and α through the patterns.
        let dir = std::env::temp_dir().join(format!("ttlora-peft-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        lora.write(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        let folder = read(&dir, &serde_json::from_str(&text).unwrap(), &Device::Cpu).unwrap();
        assert_eq!(folder.config.modules["m.a"]["r"], 8);
        assert_eq!(folder.config.modules["m.c"]["r"], 4);
        assert_eq!(folder.config.modules["m.c"]["lora_alpha"], 2.5);
        assert_eq!(folder.config.layer_shapes["m.c"], [4, 4]);

        // A config whose rank disagrees with the tensors is an error naming the tensor.
        let lying = text.replace("\"m.c\": 4", "\"m.c\": 2");
        let err = read(&dir, &serde_json::from_str(&lying).unwrap(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.c.lora_A.weight") && err.contains("r = 2"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
