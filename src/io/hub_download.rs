//! Downloading a model folder from the HuggingFace hub by id, when online.
//!
//! The transfer runs through `python3`'s standard library (`urllib`), which ttlora already
//! needs for `pip download`: no HTTP/TLS stack is compiled into the binary. Files land in
//! `<cache>/hub/<org>--<name>/` and are moved into place only when complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The hub's address; `$HF_ENDPOINT` overrides it as in `huggingface_hub`.
pub fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Whether `spec` looks like a hub id (`org/name`, no path syntax).
pub fn is_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Where a downloaded hub model lives.
pub fn hub_model_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join("hub").join(id.replace('/', "--"))
}

/// Downloads `config.json`, `tokenizer.json` and the safetensors weights (single file, or the
/// index and its shards) of `id` at `revision` from `endpoint` into `dest`.
///
/// # Errors
/// [`Error::ModelFile`] naming the file and the transfer's own message (offline, 404, …).
pub fn download(endpoint: &str, id: &str, revision: &str, dest: &Path) -> Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let work = parent.join(format!(
        ".download-{}-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;
    let result = download_into(endpoint, id, revision, &work).and_then(|()| {
        let _ = std::fs::remove_dir_all(dest);
        std::fs::rename(&work, dest).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })
    });
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest.to_path_buf())
}

fn download_into(endpoint: &str, id: &str, revision: &str, work: &Path) -> Result<()> {
    let url = |file: &str| {
        format!(
            "{}/{id}/resolve/{revision}/{file}",
            endpoint.trim_end_matches('/')
        )
    };
    let get = |file: &str| fetch(&url(file), &work.join(file));
    get("config.json")?;
    get("tokenizer.json")?;
    if get("model.safetensors").is_err() {
        // Large models are sharded: the index names the shard files.
        get("model.safetensors.index.json").map_err(|e| Error::ModelFile {
            path: PathBuf::from(url("model.safetensors")),
            reason: format!("neither model.safetensors nor a sharded index could be fetched: {e}"),
        })?;
        let index = work.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::ModelFile {
            path: index.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in shards {
            if shard.contains('/') || shard.starts_with('.') {
                return Err(Error::ModelFile {
                    path: index,
                    reason: format!("shard name `{shard}` is not a plain file name"),
                });
            }
            get(&shard)?;
        }
    }
    // Optional sentence-transformers pooling config.
    let pooling = work.join("1_Pooling");
    if std::fs::create_dir_all(&pooling).is_ok()
        && fetch(&url("1_Pooling/config.json"), &pooling.join("config.json")).is_err()
    {
        let _ = std::fs::remove_dir_all(&pooling);
    }
    Ok(())
}

/// Fetches one URL to a file with python3's urllib.
fn fetch(url: &str, to: &Path) -> Result<()> {
    const SCRIPT: &str = "import sys, shutil, urllib.request\n\
        req = urllib.request.Request(sys.argv[1], headers={'User-Agent': 'ttlora'})\n\
        with urllib.request.urlopen(req, timeout=60) as r, open(sys.argv[2], 'wb') as f:\n    \
        shutil.copyfileobj(r, f)\n";
    tracing::info!(url, "downloading");
    let out = Command::new("python3")
        .args(["-c", SCRIPT, url])
        .arg(to)
        .output()
        .map_err(|e| Error::ModelFile {
            path: to.to_path_buf(),
            reason: format!("cannot run python3 to download {url} ({e})"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let _ = std::fs::remove_file(to);
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    Err(Error::ModelFile {
        path: PathBuf::from(url),
        reason: format!("download failed: {last}"),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_hub_id("org/model.v2"));
        assert!(!is_hub_id("minilm"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("../x"));
        assert!(!is_hub_id("a/b/c"));
    }

    /// A one-thread HTTP server answering `/{id}/resolve/main/{file}` from a map.
    fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let _ = reader.read_line(&mut line);
                // Drain the headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = files
                    .iter()
                    .find(|(f, _)| path.ends_with(&format!("/resolve/main/{f}")))
                    .map(|(_, b)| b.clone());
                let resp = match body {
                    Some(b) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .into_bytes();
                        r.extend(b);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&resp);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn downloads_a_model_folder_and_reports_missing_files() {
        let endpoint = serve(vec![
            ("config.json", b"{\"model_type\": \"bert\"}".to_vec()),
            ("tokenizer.json", b"{}".to_vec()),
            ("model.safetensors", vec![1, 2, 3]),
        ]);
        let root = std::env::temp_dir().join(format!("ttlora-hubdl-{}", std::process::id()));
        let dest = hub_model_dir(&root, "org/tiny");
        let dir = download(&endpoint, "org/tiny", "main", &dest).unwrap();
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            vec![1, 2, 3]
        );
        assert!(dir.join("config.json").is_file());
        assert!(!dir.join("1_Pooling").exists());

        // A server without the model: one clear error, nothing left behind.
        let empty = serve(vec![]);
        let dest2 = hub_model_dir(&root, "org/missing");
        let err = download(&empty, "org/missing", "main", &dest2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("org/missing/resolve/main/config.json"),
            "{err}"
        );
        assert!(err.contains("404"), "{err}");
        assert!(!dest2.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
