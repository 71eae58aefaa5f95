//! Reads shared by every format in `io/`: strict safetensors reads, JSON reads, file hashes;
//! and, for tests, `TempDir`. Writes are `output.rs`'s.

use std::collections::BTreeMap;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Reads and parses the JSON file at `path`, `None` when there is no such file.
///
/// # Errors
/// [`Error::Io`] if it exists but cannot be read; [`Error::ModelConfig`] naming the file if it
/// is not valid JSON of the expected shape.
pub fn read_json_if_present<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| Error::ModelConfig {
        path: path.to_path_buf(),
        reason: format!("not the expected JSON: {reason}"),
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(Some(from_json(json).map_err(bad)?))
}

/// `value` read as `T`; an error says which field (`modules.x.ranks[1]: invalid type: …`),
/// which serde's own message does not.
///
/// # Errors
/// The deserialiser's message, prefixed with the path of the field it failed at.
pub fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            e.inner().to_string()
        } else {
            format!("field `{at}`: {}", e.inner())
        }
    })
}

/// SHA-256 of a file as lowercase hex.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of `bytes` as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Refuses anything at `path` but a regular file (a FIFO would block a read forever, a device
/// such as `/dev/zero` would be read until memory runs out).
///
/// # Errors
/// [`Error::ModelFile`] naming the path; [`Error::Io`] when it cannot be examined.
pub fn ensure_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(Error::ModelFile {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        })
    }
}

/// The index of the first NaN or infinite value of `t` in row-major order, `None` when every
/// value is finite (integer tensors always are).
///
/// # Errors
/// Copying a tensor off a device.
pub fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    use candle_core::{CpuStorage, Storage};
    if !t.dtype().is_float() {
        return Ok(None);
    }
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            // Scanned in place: no copy of the weights.
            let found = match cpu {
                CpuStorage::F32(v) => v[start..end].iter().position(|x| !x.is_finite()),
                CpuStorage::F64(v) => v[start..end].iter().position(|x| !x.is_finite()),
                CpuStorage::F16(v) => v[start..end].iter().position(|x| !x.is_finite()),
                CpuStorage::BF16(v) => v[start..end].iter().position(|x| !x.is_finite()),
                _ => None,
            };
            return Ok(found);
        }
    }
    let v = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    Ok(v.iter().position(|x| !x.is_finite()))
}

/// Refuses a tensor holding NaN or an infinity, naming it and the file it came from.
///
/// # Errors
/// [`Error::WeightTensor`] naming `path`, `name` and the first bad position.
pub fn ensure_finite(t: &Tensor, path: &Path, name: &str) -> Result<()> {
    match first_non_finite(t)? {
        None => Ok(()),
        Some(i) => Err(Error::WeightTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: format!(
                "holds NaN or infinite values (the first at flat index {i}); the file is \
                 corrupt or a training run diverged"
            ),
        }),
    }
}

/// Reads every tensor of a safetensors file, validating the header before trusting it.
///
/// # Errors
/// [`Error::ModelFile`] naming the file for anything malformed (truncated, lying offsets).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    ensure_regular_file(path)?;
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // `SafeTensors::deserialize` checks the header, offsets and sizes against the buffer.
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| {
            Error::WeightTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: e.to_string(),
            }
        })?;
        ensure_finite(&t, path, &name)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// A fresh folder under the system temp dir for one test, removed when dropped (also when
/// the test panics). Names carry the process id and a counter, so parallel tests never meet.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

#[cfg(test)]
impl TempDir {
    /// An empty folder whose name ends in `name`.
    pub(crate) fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ttlora-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Self(dir)
    }
}

/// Every file under `dir` (sub-folders included) with its bytes, by path relative to `dir`:
/// what the tests of saves compare before and after a fault.
#[cfg(test)]
pub(crate) fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("a readable folder").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir");
                let bytes = std::fs::read(&p).expect("a readable file");
                out.insert(rel.to_string_lossy().into_owned(), bytes);
            }
        }
    }
    out
}

#[cfg(test)]
impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
