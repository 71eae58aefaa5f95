//! Files written so a crash never leaves a half-written one: atomic file and folder writes,
//! strict safetensors reads, JSON reads and file hashes shared by every format in `io/`, the
//! checkpoints and the merged export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let value = serde_json::from_str(&text).map_err(|e| Error::ModelConfig {
        path: path.to_path_buf(),
        reason: format!("not the expected JSON: {e}"),
    })?;
    Ok(Some(value))
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

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Fills the folder `dir` through `fill` without ever leaving a half-written folder: a new
/// folder is filled under a temporary sibling name and renamed into place (removed again on
/// error); an existing folder has each file replaced atomically by `fill`'s writes.
///
/// # Errors
/// Whatever `fill` returns; [`Error::Io`] creating or renaming the folder.
pub fn write_folder(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.is_dir() {
        return fill(dir);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let name = dir
        .file_name()
        .map_or_else(|| "adapter".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    match fill(&tmp) {
        Ok(()) => rename(&tmp, dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, contents).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    rename(&tmp, path)
}

/// Writes `tensors` as safetensors with PEFT's `{"format":"pt"}` metadata, atomically.
///
/// # Errors
/// [`Error::ModelFile`] if serialising fails; [`Error::Io`] naming the file.
pub fn write_safetensors_atomic(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let tmp = tmp_name(path);
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, t)| (k.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .map_err(|e| Error::ModelFile {
        path: tmp.clone(),
        reason: format!("cannot write safetensors: {e}"),
    })?;
    rename(&tmp, path)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads every tensor of a safetensors file, validating the header before trusting it.
///
/// # Errors
/// [`Error::ModelFile`] naming the file for anything malformed (truncated, lying offsets).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ttlora-io-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_failed_fill_leaves_no_folder_and_no_partial_sibling() {
        let dir = temp("failed");
        let err = write_folder(&dir, |d| {
            write_atomic(&d.join("a.json"), "{}")?;
            Err(Error::Io {
                path: d.to_path_buf(),
                source: std::io::Error::other("boom"),
            })
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(!dir.exists());
        let parent = dir.parent().unwrap();
        let stray = std::fs::read_dir(parent).unwrap().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(&format!("ttlora-io-{}-failed.partial", std::process::id()))
        });
        assert!(!stray, "a .partial folder was left behind");
    }

    #[test]
    fn a_successful_fill_appears_whole_and_can_be_rewritten() {
        let dir = temp("ok");
        write_folder(&dir, |d| write_atomic(&d.join("a.json"), "1")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "1");
        write_folder(&dir, |d| write_atomic(&d.join("a.json"), "2")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.json")).unwrap(), "2");
        assert!(!dir.join("a.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
