//! Resumable training checkpoints: trainable tensors, optimizer moments and the best
//! evaluation so far, in one safetensors file plus a small JSON state, written atomically.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::output::{replace_folder, write_safetensors, write_synced_json};
use crate::train::optim::Adam;

const TENSORS: &str = "state.safetensors";
const STATE: &str = "state.json";

/// The best evaluation kept during training: step, primary metric, all metrics, weights.
pub(crate) type Best = (usize, f64, BTreeMap<String, f64>, Vec<Tensor>);

/// A loaded checkpoint.
pub(crate) struct Checkpoint {
    pub step: usize,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub best: Option<Best>,
    pub evals_since_best: usize,
    /// Training seconds spent up to this checkpoint, over every earlier resumed run.
    pub trained_s: f64,
}

#[derive(Serialize, Deserialize)]
struct State {
    step: usize,
    optimizer_steps: u64,
    var_names: Vec<String>,
    best_step: Option<usize>,
    best_primary: Option<f64>,
    best_metrics: BTreeMap<String, f64>,
    evals_since_best: usize,
    /// Absent in checkpoints written before it was recorded.
    #[serde(default)]
    trained_s: f64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Saves the state after `step`, `trained_s` training seconds into the run.
pub(crate) fn save(
    dir: &Path,
    vars: &[(String, Var)],
    opt: &Adam,
    step: usize,
    best: Option<&Best>,
    evals_since_best: usize,
    trained_s: f64,
) -> Result<()> {
    let (opt_steps, m, v) = opt.state();
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (i, (name, var)) in vars.iter().enumerate() {
        tensors.insert(format!("var.{name}"), var.as_tensor().clone());
        tensors.insert(format!("m.{name}"), m[i].clone());
        tensors.insert(format!("v.{name}"), v[i].clone());
        if let Some((_, _, _, snapshot)) = best {
            tensors.insert(format!("best.{name}"), snapshot[i].clone());
        }
    }
    let state = State {
        step,
        optimizer_steps: opt_steps,
        var_names: vars.iter().map(|(n, _)| n.clone()).collect(),
        best_step: best.map(|b| b.0),
        best_primary: best.map(|b| b.1),
        best_metrics: best.map(|b| b.2.clone()).unwrap_or_default(),
        evals_since_best,
        trained_s,
    };
    // One folder swap, so the tensors and the state always belong to the same step.
    replace_folder(dir, |d| {
        write_safetensors(&d.join(TENSORS), &tensors)?;
        write_synced_json(&d.join(STATE), &state)
    })
}

/// Loads the checkpoint in `dir` into `vars` and returns the optimizer state; `None` when the
/// folder holds no checkpoint.
///
/// # Errors
/// [`Error::CheckpointMismatch`] for a checkpoint that was written for other trainable tensors
/// (names differ); a tensor missing from it or of another shape.
pub(crate) fn load(dir: &Path, vars: &[(String, Var)]) -> Result<Option<Checkpoint>> {
    let state_path = dir.join(STATE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: State = serde_json::from_str(&text).map_err(|e| Error::DataFile {
        path: state_path.clone(),
        reason: format!("not a ttlora checkpoint state: {e}"),
    })?;
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    if state.var_names != names {
        return Err(Error::CheckpointMismatch {
            dir: dir.to_path_buf(),
            saved: state.var_names.len(),
            current: names.len(),
        });
    }
    let path = dir.join(TENSORS);
    let device = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut tensors = crate::io::fs::read_safetensors(&path, &device)?;
    let mut take = |key: String, like: &Var| -> Result<Tensor> {
        let t = tensors.remove(&key).ok_or_else(|| Error::WeightTensor {
            path: path.clone(),
            name: key.clone(),
            reason: "is missing from the checkpoint".into(),
        })?;
        if t.dims() != like.dims() {
            return Err(Error::WeightTensor {
                path: path.clone(),
                name: key,
                reason: format!("has shape {:?}, expected {:?}", t.dims(), like.dims()),
            });
        }
        Ok(t.to_dtype(like.dtype())?)
    };
    let (mut m, mut v, mut snapshot) = (Vec::new(), Vec::new(), Vec::new());
    for (name, var) in vars {
        var.set(&take(format!("var.{name}"), var)?)?;
        m.push(take(format!("m.{name}"), var)?);
        v.push(take(format!("v.{name}"), var)?);
        if state.best_step.is_some() {
            snapshot.push(take(format!("best.{name}"), var)?);
        }
    }
    let best = match (state.best_step, state.best_primary) {
        (Some(s), Some(p)) => Some((s, p, state.best_metrics, snapshot)),
        _ => None,
    };
    Ok(Some(Checkpoint {
        step: state.step,
        m,
        v,
        best,
        evals_since_best: state.evals_since_best,
        trained_s: state.trained_s,
    }))
}
