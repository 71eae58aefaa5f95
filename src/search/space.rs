//! The search space: per method, which settings vary and over what (a TOML file), and one
//! point of it, a [`Config`].
//!
//! ```toml
//! [ttlora]                       # a method of the registry; one table per method searched
//! cores = [4, 5, 6, 7, 8]        # a list: choices (categorical, Optuna's suggest_categorical)
//! rank = [2, 4, 5, 8, 10, 12, 16]
//! alpha = [1, 2, 4, 8, 10, 12, 14, 16]
//! lr = { low = 1e-4, high = 1e-2, log = true }   # a range: float unless both ends are integers
//! init = "paper"                 # a scalar: fixed, the same in every trial
//!
//! [lora]                         # conditional: LoRA's r is sampled only for LoRA trials
//! r = [1, 2, 4, 8, 16]
//! lr = { low = 1e-4, high = 5e-3, log = true }
//! ```
//!
//! Keys in [`TRAINING_KEYS`] set the training (`lr`, `weight_decay`, `batch_size`,
//! `warmup_ratio`, `targets`; `epochs` is named there only so that the study can refuse it,
//! since the scheduler's resource sets each trial's length); every other key is a field of
//! the method's config under the name `--adapter-config` uses (TT-LoRA's `rank`, `alpha`,
//! `cores`, `init`; LoRA's `r`, `lora_alpha`), checked against the method when the file is
//! read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::adapters::MethodSpec;
use crate::error::{Error, Result};

/// Keys that configure the training rather than the method.
pub const TRAINING_KEYS: [&str; 6] = [
    "lr",
    "weight_decay",
    "batch_size",
    "warmup_ratio",
    "epochs",
    "targets",
];

/// The values one setting may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Domain {
    /// One value in every trial.
    Fixed {
        /// The value.
        value: Value,
    },
    /// One of a list (unordered to the samplers; the grid's axis).
    Choice {
        /// The values.
        choices: Vec<Value>,
    },
    /// A real number in `[low, high]`, uniform or log-uniform.
    Float {
        /// Lower end.
        low: f64,
        /// Upper end.
        high: f64,
        /// Log-uniform (both ends > 0).
        log: bool,
    },
    /// An integer in `[low, high]`, uniform or log-uniform.
    Int {
        /// Lower end.
        low: i64,
        /// Upper end.
        high: i64,
        /// Log-uniform (both ends > 0).
        log: bool,
    },
}

impl Domain {
    /// The values a grid walks (None for ranges, which have no grid).
    pub fn grid(&self) -> Option<Vec<Value>> {
        match self {
            Domain::Fixed { value } => Some(vec![value.clone()]),
            Domain::Choice { choices } => Some(choices.clone()),
            Domain::Float { .. } | Domain::Int { .. } => None,
        }
    }

    /// Both ends of a range, or the first and last choice: the values checked against the
    /// method when the file is read.
    fn extremes(&self) -> Vec<Value> {
        match self {
            Domain::Fixed { value } => vec![value.clone()],
            Domain::Choice { choices } => choices.clone(),
            Domain::Float { low, high, .. } => vec![Value::from(*low), Value::from(*high)],
            Domain::Int { low, high, .. } => vec![Value::from(*low), Value::from(*high)],
        }
    }
}

/// One setting of a method's space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// The key: a training key or a method config field.
    pub name: String,
    /// Its values.
    pub domain: Domain,
}

/// The settings searched for one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpace {
    /// The method's registry name.
    pub method: String,
    /// Its settings, in file order.
    pub params: Vec<Param>,
}

/// The whole space: one table per method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// The methods, in file order.
    pub methods: Vec<MethodSpace>,
}

/// One point of the space: a method and a value per setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The method's registry name.
    pub method: String,
    /// A value for every setting of the method's space.
    pub params: BTreeMap<String, Value>,
}

impl Config {
    /// The method config fields (the settings that are not training keys).
    pub fn method_fields(&self) -> serde_json::Map<String, Value> {
        self.params
            .iter()
            .filter(|(k, _)| !TRAINING_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A training setting, if the space has it.
    pub fn training(&self, key: &str) -> Option<&Value> {
        debug_assert!(TRAINING_KEYS.contains(&key));
        self.params.get(key)
    }

    /// `method key=value …`, for logs and tables.
    pub fn label(&self) -> String {
        let mut s = self.method.clone();
        for (k, v) in &self.params {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// A space file that cannot be used.
fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::Study {
        path: PathBuf::from(path),
        reason: reason.into(),
    }
}

impl SearchSpace {
    /// Reads and checks a space file.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Study`] naming the table and key: TOML syntax, an unknown
    /// method, a malformed range, an empty list, a value the method refuses.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a space from TOML text; `path` names it in errors.
    ///
    /// # Errors
    /// As [`SearchSpace::read`].
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| invalid(path, format!("not valid TOML: {e}")))?;
        let mut methods = Vec::new();
        for (name, body) in &table {
            let toml::Value::Table(body) = body else {
                return Err(invalid(
                    path,
                    format!("`{name}` must be a table of settings ([{name}]), one per method"),
                ));
            };
            let method = crate::adapters::method(name)
                .map_err(|e| invalid(path, format!("[{name}]: {e}")))?;
            let mut params = Vec::new();
            for (key, value) in body {
                let domain = domain(value)
                    .map_err(|reason| invalid(path, format!("[{name}] {key}: {reason}")))?;
                params.push(Param {
                    name: key.clone(),
                    domain,
                });
            }
            methods.push(MethodSpace {
                method: method.name().to_string(),
                params,
            });
        }
        let space = Self { methods };
        space.validate(path)?;
        Ok(space)
    }

    /// Checks a space however it was made (a file, or `study.json` read back): at least one
    /// method, each known; non-empty lists, ranges with low ≤ high (low > 0 when log); every
    /// value one its method accepts. `path` names the file in errors.
    ///
    /// # Errors
    /// [`Error::Study`] naming the table and key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.methods.is_empty() {
            return Err(invalid(
                path,
                "no method table: add one, e.g. [ttlora] with rank = [4, 8]",
            ));
        }
        for m in &self.methods {
            crate::adapters::method(&m.method)
                .map_err(|e| invalid(path, format!("[{}]: {e}", m.method)))?;
            for p in &m.params {
                let bad =
                    |reason: String| invalid(path, format!("[{}] {}: {reason}", m.method, p.name));
                match p.domain {
                    Domain::Choice { ref choices } if choices.is_empty() => {
                        return Err(bad("an empty list of choices".into()));
                    }
                    Domain::Float { low, high, log } => check_range(low, high, log).map_err(bad)?,
                    Domain::Int { low, high, log } => {
                        check_range(low as f64, high as f64, log).map_err(bad)?;
                    }
                    _ => {}
                }
            }
            m.check()
                .map_err(|reason| invalid(path, format!("[{}] {reason}", m.method)))?;
        }
        Ok(())
    }

    /// The method's space, if searched.
    pub fn method(&self, name: &str) -> Option<&MethodSpace> {
        self.methods.iter().find(|m| m.method == name)
    }
}

impl MethodSpace {
    /// Every method field at a representative value: its first value (a list's choices, a
    /// range's ends) that the method accepts alone, else its first (a field valid only
    /// beside another, such as TT-LoRA's out_factors).
    fn first_method_values(&self) -> serde_json::Map<String, Value> {
        self.params
            .iter()
            .filter(|p| !TRAINING_KEYS.contains(&p.name.as_str()))
            .filter_map(|p| {
                let values = p.domain.extremes();
                let valid = values.iter().find(|v| {
                    let alone = serde_json::Map::from_iter([(p.name.clone(), (*v).clone())]);
                    MethodSpec::parse(&self.method, Value::Object(alone)).is_ok()
                });
                Some((p.name.clone(), valid.or(values.first())?.clone()))
            })
            .collect()
    }

    /// Checks the training keys' values and every method field's values against the method,
    /// one setting at a time (the others at their defaults, or at their first values).
    fn check(&self) -> std::result::Result<(), String> {
        for p in &self.params {
            let values = p.domain.extremes();
            match p.name.as_str() {
                "lr" | "weight_decay" | "warmup_ratio" => {
                    for v in &values {
                        let x = v
                            .as_f64()
                            .ok_or(format!("{} must be a number, got {v}", p.name))?;
                        let ok = match p.name.as_str() {
                            "lr" => x > 0.0 && x.is_finite(),
                            "warmup_ratio" => (0.0..1.0).contains(&x),
                            _ => x >= 0.0 && x.is_finite(),
                        };
                        if !ok {
                            return Err(format!("{} out of range: {v}", p.name));
                        }
                    }
                }
                "batch_size" | "epochs" => {
                    for v in &values {
                        if v.as_u64().is_none_or(|n| n == 0) {
                            return Err(format!("{} must be an integer >= 1, got {v}", p.name));
                        }
                    }
                }
                "targets" => {
                    for v in &values {
                        let ok = v
                            .as_array()
                            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
                        if !ok {
                            return Err(format!(
                                "targets values must be lists of module names, e.g. \
                                 targets = [[\"query\", \"value\"], [\"query\", \"key\", \"value\"]], got {v}"
                            ));
                        }
                    }
                }
                field => {
                    // A value passes alone (the other fields at their defaults) or beside the
                    // other fields' first values: fields that go together, such as TT-LoRA's
                    // in_factors and out_factors, are only valid as a pair.
                    let context = self.first_method_values();
                    for v in &values {
                        let alone = serde_json::Map::from_iter([(field.to_string(), v.clone())]);
                        let mut beside = context.clone();
                        beside.insert(field.to_string(), v.clone());
                        // Both failing, the value's own error names what is wrong with it.
                        if let Err(e) = MethodSpec::parse(&self.method, Value::Object(alone))
                            && MethodSpec::parse(&self.method, Value::Object(beside)).is_err()
                        {
                            return Err(format!("{field} = {v}: {e}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A TOML value as a domain: a list is a choice, a `{ low, high[, log] }` table a range,
/// anything else a fixed value.
fn domain(value: &toml::Value) -> std::result::Result<Domain, String> {
    match value {
        toml::Value::Array(items) => {
            if items.is_empty() {
                return Err("an empty list of choices".into());
            }
            let choices = items
                .iter()
                .map(json)
                .collect::<std::result::Result<_, _>>()?;
            Ok(Domain::Choice { choices })
        }
        toml::Value::Table(t) => range(t),
        other => Ok(Domain::Fixed {
            value: json(other)?,
        }),
    }
}

/// `{ low = …, high = …, log = true|false }`.
fn range(t: &toml::Table) -> std::result::Result<Domain, String> {
    if let Some(k) = t
        .keys()
        .find(|k| !["low", "high", "log"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key `{k}` in a range (a range is {{ low = …, high = …, log = true }})"
        ));
    }
    let log = match t.get("log") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => return Err(format!("log must be true or false, got {v}")),
    };
    let (Some(low), Some(high)) = (t.get("low"), t.get("high")) else {
        return Err("a range needs both low and high".into());
    };
    let domain = match (low, high) {
        (toml::Value::Integer(l), toml::Value::Integer(h)) => Domain::Int {
            low: *l,
            high: *h,
            log,
        },
        _ => {
            let number = |v: &toml::Value| match v {
                toml::Value::Integer(i) => Ok(*i as f64),
                toml::Value::Float(f) if f.is_finite() => Ok(*f),
                other => Err(format!("low and high must be numbers, got {other}")),
            };
            Domain::Float {
                low: number(low)?,
                high: number(high)?,
                log,
            }
        }
    };
    Ok(domain)
}

/// A range's ends: ordered, finite, and above 0 for a log range.
fn check_range(low: f64, high: f64, log: bool) -> std::result::Result<(), String> {
    if !(low.is_finite() && high.is_finite()) {
        return Err(format!("low and high must be finite, got {low} and {high}"));
    }
    if low > high {
        return Err(format!("low ({low}) is above high ({high})"));
    }
    if log && low <= 0.0 {
        return Err(format!("a log range needs low > 0, got {low}"));
    }
    Ok(())
}

/// A TOML value as JSON (dates are refused: no setting takes one).
fn json(v: &toml::Value) -> std::result::Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::from(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Array(a) => {
            Value::Array(a.iter().map(json).collect::<std::result::Result<_, _>>()?)
        }
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), json(v)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        toml::Value::Datetime(d) => return Err(format!("a date ({d}) is not a setting's value")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SearchSpace> {
        SearchSpace::parse(text, Path::new("space.toml"))
    }

    #[test]
    fn lists_are_choices_tables_ranges_scalars_fixed() {
        let s = parse(
            "[ttlora]\nrank = [2, 4]\nlr = { low = 1e-4, high = 1e-2, log = true }\n\
             cores = { low = 4, high = 8 }\ninit = \"paper\"\n[lora]\nr = [1, 8]\n",
        )
        .unwrap();
        assert_eq!(s.methods.len(), 2);
        let tt = s.method("ttlora").unwrap();
        let d: Vec<_> = tt
            .params
            .iter()
            .map(|p| (p.name.as_str(), &p.domain))
            .collect();
        assert_eq!(
            d[0],
            (
                "rank",
                &Domain::Choice {
                    choices: vec![2.into(), 4.into()]
                }
            )
        );
        assert_eq!(
            d[1],
            (
                "lr",
                &Domain::Float {
                    low: 1e-4,
                    high: 1e-2,
                    log: true
                }
            )
        );
        assert_eq!(
            d[2],
            (
                "cores",
                &Domain::Int {
                    low: 4,
                    high: 8,
                    log: false
                }
            )
        );
        assert_eq!(
            d[3],
            (
                "init",
                &Domain::Fixed {
                    value: "paper".into()
                }
            )
        );
        assert_eq!(s.method("lora").unwrap().params[0].name, "r");
    }

    #[test]
    fn bad_files_name_the_table_and_key() {
        let cases = [
            ("[ttlora\nrank = 1", "not valid TOML"),
            ("[nosuch]\nr = [1]", "[nosuch]"),
            ("rank = [1]", "must be a table"),
            ("[ttlora]\nrank = []", "[ttlora] rank: an empty list"),
            (
                "[ttlora]\nlr = { low = 1e-2, high = 1e-4 }",
                "low (0.01) is above high",
            ),
            (
                "[ttlora]\nlr = { low = 0.0, high = 1.0, log = true }",
                "needs low > 0",
            ),
            ("[ttlora]\nlr = { low = 1e-4 }", "needs both low and high"),
            (
                "[ttlora]\nlr = { low = 1e-4, high = 1.0, step = 2 }",
                "unknown key `step`",
            ),
            ("[ttlora]\nlr = [0.0]", "lr out of range"),
            (
                "[ttlora]\nbatch_size = [0, 8]",
                "batch_size must be an integer >= 1",
            ),
            (
                "[ttlora]\ntargets = [\"query\"]",
                "targets values must be lists",
            ),
            ("[ttlora]\nnot_a_field = [1]", "not_a_field = 1"),
            ("[ttlora]\nrank = [0, 4]", "rank = 0"),
            (
                "[ttlora]\nin_factors = [[4, 8]]\nout_factors = [[8, 4]]\nrank = [0, 4]",
                "rank = 0: ttlora config: field `rank` must be >= 1",
            ),
            ("[lora]\nrank = [4]", "rank = 4"),
            ("", "no method table"),
            // Fields that only go together are checked together.
            (
                "[ttlora]\nin_factors = [[4, 8]]",
                "in_factors/out_factors` must be given together",
            ),
        ];
        assert!(parse("[ttlora]\nin_factors = [[4, 8]]\nout_factors = [[8, 4]]\n").is_ok());
        for (text, needle) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains("space.toml"), "{e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn method_fields_leave_out_training_keys() {
        let c = Config {
            method: "ttlora".into(),
            params: [
                ("rank".to_string(), Value::from(4)),
                ("lr".to_string(), Value::from(1e-3)),
                ("epochs".to_string(), Value::from(3)),
            ]
            .into(),
        };
        assert_eq!(c.method_fields().keys().collect::<Vec<_>>(), ["rank"]);
        assert_eq!(c.training("lr"), Some(&Value::from(1e-3)));
        assert_eq!(c.label(), "ttlora epochs=3 lr=0.001 rank=4");
    }
}
