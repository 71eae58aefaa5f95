//! [`SafetensorsSource`]: an HF checkpoint's `model.safetensors`, or the shards a
//! `model.safetensors.index.json` names, memory-mapped and read strictly by name and shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::tensor_source::TensorSource;
use crate::error::{Error, Result};

/// The single-file checkpoint in a model folder.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The shard index of a sharded checkpoint in a model folder.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The tensors of one safetensors file, or of the shards behind an index, memory-mapped:
/// opening reads only the headers, and each tensor is copied out when it is loaded.
pub struct SafetensorsSource {
    /// The file or the index, named in errors about a missing tensor.
    location: PathBuf,
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    /// Per tensor: the shard that holds it and its shape. A name in several shards is taken
    /// from the last.
    tensors: BTreeMap<String, (usize, Vec<usize>)>,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field("location", &self.location)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsSource {
    /// Opens the weights of the model folder `dir`: `model.safetensors`, else the shards of
    /// `model.safetensors.index.json`.
    ///
    /// # Errors
    /// [`Error::ModelFile`] if neither file exists, the index is malformed or a file is not
    /// valid safetensors; [`Error::Io`] for an unreadable index.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SAFETENSORS_FILE);
        let index = dir.join(SAFETENSORS_INDEX);
        if single.is_file() {
            Self::open_file(&single)
        } else if index.is_file() {
            Self::open_index(&index)
        } else {
            Err(Error::ModelFile {
                path: dir.to_path_buf(),
                reason: format!("no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}"),
            })
        }
    }

    /// Opens one safetensors file.
    ///
    /// # Errors
    /// [`Error::ModelFile`] if it is missing or not valid safetensors.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::from_shards(path, vec![path.to_path_buf()])
    }

    /// Opens the shards an HF index (`{"weight_map": {tensor: file}}`) names, relative to the
    /// index's folder; which shard holds a tensor is read from the shards themselves.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable index; [`Error::ModelFile`] for a malformed or empty
    /// one, or a shard that is missing or not valid safetensors.
    pub fn open_index(index: &Path) -> Result<Self> {
        let dir = index.parent().unwrap_or(Path::new("."));
        Self::from_shards(index, shard_paths(dir, index)?)
    }

    fn from_shards(location: &Path, paths: Vec<PathBuf>) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors = BTreeMap::new();
        for path in paths {
            super::fs::ensure_regular_file(&path)?;
            // SAFETY: the file is mapped read-only and every tensor is copied out when loaded;
            // as with any mmap, it must not be truncated or rewritten while the model loads.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::ModelFile {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for (name, view) in st.tensors() {
                tensors.insert(name, (shards.len(), view.shape().to_vec()));
            }
            shards.push((path, st));
        }
        Ok(Self {
            location: location.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// The files read: the single file, or every shard.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }
}

impl TensorSource for SafetensorsSource {
    fn location(&self) -> &Path {
        &self.location
    }

    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(_, s)| s.as_slice())
    }

    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some((shard, stored)) = self.tensors.get(name) else {
            return Err(Error::WeightTensor {
                path: self.location.clone(),
                name: name.into(),
                reason: format!("missing (expected shape {shape:?})"),
            });
        };
        let (path, st) = &self.shards[*shard];
        let err = |reason: String| Error::WeightTensor {
            path: path.clone(),
            name: name.into(),
            reason,
        };
        if stored != shape {
            return Err(err(format!("has shape {stored:?}, expected {shape:?}")));
        }
        let t = st.load(name, device).map_err(|e| err(e.to_string()))?;
        super::fs::ensure_finite(&t, path, name)?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// The distinct shard files named by a `model.safetensors.index.json`.
fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| Error::ModelFile {
        path: index.to_path_buf(),
        reason: format!("not a safetensors index: {e}"),
    })?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    if files.is_empty() {
        return Err(Error::ModelFile {
            path: index.to_path_buf(),
            reason: "the weight_map is empty".into(),
        });
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::io::TrackedSource;
    use crate::io::fs::TempDir;

    /// `(name, shape)` tensors filled with 0, 1, 2, … as f32.
    fn tensors(specs: &[(&str, &[usize])]) -> HashMap<String, Tensor> {
        specs
            .iter()
            .map(|(n, s)| {
                let len: usize = s.iter().product();
                let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
                let t = Tensor::from_vec(data, *s, &Device::Cpu).unwrap();
                (n.to_string(), t)
            })
            .collect()
    }

    fn write(path: &Path, specs: &[(&str, &[usize])]) {
        candle_core::safetensors::save(&tensors(specs), path).unwrap();
    }

    const TWO: &[(&str, &[usize])] = &[("a.weight", &[2, 3]), ("a.bias", &[2])];

    #[test]
    fn a_single_file_lists_names_and_shapes_and_loads_f32() {
        let tmp = TempDir::new("single");
        let file = tmp.join(SAFETENSORS_FILE);
        let half: HashMap<String, Tensor> = tensors(TWO)
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, &file).unwrap();
        let src = SafetensorsSource::open(&tmp).unwrap();
        assert_eq!(src.location(), file);
        assert_eq!(src.names(), ["a.bias", "a.weight"]);
        assert_eq!(src.shape("a.weight"), Some(&[2, 3][..]));
        assert_eq!(src.shape("b"), None);
        assert!(src.contains("a.bias") && !src.contains("a"));
        let t = src.load("a.weight", &[2, 3], &Device::Cpu).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        );
    }

    #[test]
    fn a_missing_tensor_and_a_wrong_shape_name_file_and_tensor() {
        let tmp = TempDir::new("strict");
        let file = tmp.join(SAFETENSORS_FILE);
        write(&file, TWO);
        let src = SafetensorsSource::open(&tmp).unwrap();
        let err = |name: &str, shape: &[usize]| {
            src.load(name, shape, &Device::Cpu).unwrap_err().to_string()
        };
        assert_eq!(
            err("b.weight", &[4]),
            format!(
                "{}: tensor `b.weight` missing (expected shape [4])",
                file.display()
            )
        );
        assert_eq!(
            err("a.weight", &[3, 2]),
            format!(
                "{}: tensor `a.weight` has shape [2, 3], expected [3, 2]",
                file.display()
            )
        );
    }

    #[test]
    fn a_folder_without_weights_or_with_a_bad_file_is_a_clear_error() {
        let tmp = TempDir::new("none");
        let err = SafetensorsSource::open(&tmp).unwrap_err().to_string();
        assert!(
            err.ends_with("no model.safetensors or model.safetensors.index.json"),
            "{err}"
        );
        std::fs::write(tmp.join(SAFETENSORS_FILE), b"not safetensors").unwrap();
        let err = SafetensorsSource::open(&tmp).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }

    #[test]
    fn a_two_shard_index_routes_every_tensor_to_its_shard() {
        let tmp = TempDir::new("shards");
        let (one, two) = (
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        );
        write(&tmp.join(one), TWO);
        write(&tmp.join(two), &[("b.weight", &[4])]);
        let index = tmp.join(SAFETENSORS_INDEX);
        let map = serde_json::json!({
            "metadata": {"total_size": 32},
            "weight_map": {"a.weight": one, "a.bias": one, "b.weight": two},
        });
        std::fs::write(&index, map.to_string()).unwrap();
        let src = SafetensorsSource::open(&tmp).unwrap();
        assert_eq!(src.location(), index);
        assert_eq!(src.files().count(), 2);
        assert_eq!(src.names(), ["a.bias", "a.weight", "b.weight"]);
        let b = src.load("b.weight", &[4], &Device::Cpu).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            src.load("a.bias", &[2], &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [0.0, 1.0]
        );
        // A wrong shape names the shard holding the tensor; a missing one names the index.
        let err = src.load("b.weight", &[5], &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: tensor `b.weight` has shape [4], expected [5]",
                tmp.join(two).display()
            )
        );
        let err = src.load("c", &[1], &Device::Cpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: tensor `c` missing (expected shape [1])",
                index.display()
            )
        );
        // An index naming a shard that is not there.
        let map = serde_json::json!({"weight_map": {"x": "gone.safetensors"}});
        std::fs::write(&index, map.to_string()).unwrap();
        let err = SafetensorsSource::open_index(&index)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gone.safetensors") && err.contains("No such file"),
            "{err}"
        );
        std::fs::write(&index, r#"{"weight_map": {}}"#).unwrap();
        let err = SafetensorsSource::open_index(&index)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("the weight_map is empty"), "{err}");
    }

    #[test]
    fn tensors_left_unused_are_reported() {
        let tmp = TempDir::new("unused");
        write(
            &tmp.join(SAFETENSORS_FILE),
            &[
                ("a.weight", &[2, 3]),
                ("a.bias", &[2]),
                ("lm_head.weight", &[1]),
            ],
        );
        let src = SafetensorsSource::open(&tmp).unwrap();
        let mut tracked = TrackedSource::new(&src);
        tracked.load("a.weight", &[2, 3], &Device::Cpu).unwrap();
        tracked.load("a.bias", &[2], &Device::Cpu).unwrap();
        // A failed load is not counted as loaded.
        assert!(tracked.load("lm_head.weight", &[2], &Device::Cpu).is_err());
        let report = tracked.report();
        assert_eq!(report.loaded, ["a.bias", "a.weight"]);
        assert_eq!(report.unused, ["lm_head.weight"]);
    }
}
