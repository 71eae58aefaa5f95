//! Everything ttlora writes goes through here, so a crash, a full disk or a second writer never
//! leaves a half-written or mixed output:
//!
//! - a **folder** (an adapter, a merged model, a checkpoint) is built complete beside its
//!   target under a hidden staging name, every file and the folder fsync'd, then swapped in by
//!   one rename (`renameat2(RENAME_EXCHANGE)` on Linux, so the old folder stays in place until
//!   the new one is; two renames elsewhere) and the old one removed. An interrupted save
//!   leaves the old folder or the new one, never a mix;
//! - a **single file** is written to a hidden temporary sibling, fsync'd and renamed;
//! - an **output lock** ([`OutputLock`], `flock` on a hidden `.NAME.lock` sibling holding the
//!   writer's pid) makes a second writer to the same folder fail at once, naming the holder;
//!   taking it removes what killed writers left behind (staging folders, temporary files) and
//!   puts back a folder a kill caught between the two renames of the fallback swap.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The parent folder of `path` (`.` for a bare name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file or folder name",
            ),
        })?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((parent, name))
}

/// A unique hidden sibling name for `name`: `.NAME.KIND-PID-N`.
fn sibling(parent: &Path, name: &str, kind: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(".{name}.{kind}-{}-{n}", std::process::id()))
}

/// Makes the directory entry of `dir` durable (what a rename into it changed).
fn sync_dir(dir: &Path) -> Result<()> {
    failpoint(dir)?;
    // Opening a folder read-only and fsyncing it is how POSIX persists its entries; where the
    // platform refuses (not on Linux), the rename itself is still atomic.
    match File::open(dir).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems (FUSE, CIFS, vboxsf) refuse fsync on a folder; the rename
        // itself is still atomic there.
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.kind() == std::io::ErrorKind::Unsupported
                || e.raw_os_error() == Some(22) =>
        {
            Ok(())
        }
        Err(e) if cfg!(not(unix)) => {
            tracing::debug!("cannot fsync folder {}: {e}", dir.display());
            Ok(())
        }
        Err(source) => Err(Error::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to the new file `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    failpoint(path)?;
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Creates the new file `path`, lets `fill` write it through a buffer, and fsyncs it: for a
/// file too large to build in memory first.
///
/// # Errors
/// [`Error::Io`] naming the file; `fill`'s errors.
pub(crate) fn write_synced_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> Result<()>,
) -> Result<()> {
    failpoint(path)?;
    let mut w = std::io::BufWriter::new(File::create(path).map_err(io_err(path))?);
    fill(&mut w)?;
    let f = w.into_inner().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io_err(path))
}

/// Writes `contents` to `path` through a hidden temporary sibling, fsync'd, and a rename: a
/// reader sees the old file or the new one, never a part. The temporary file is removed if
/// anything fails.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let (parent, name) = split(path)?;
    let tmp = sibling(&parent, &name, "tmp");
    let result = write_synced(&tmp, contents.as_ref())
        .and_then(|()| rename(&tmp, path))
        .and_then(|()| sync_dir(&parent));
    if result.is_err() && !killed() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `tensors` as safetensors with PEFT's `{"format":"pt"}` metadata into the file
/// `path`, fsync'd; meant for a file inside a folder being built by [`replace_folder`] or
/// [`OutputLock::replace_folder`] (elsewhere, [`write_atomic`] the bytes).
///
/// # Errors
/// [`Error::ModelFile`] if serialising fails; [`Error::Io`] naming the file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| Error::ModelFile {
                path: path.to_path_buf(),
                reason: format!("cannot serialise safetensors: {e}"),
            })?;
    write_synced(path, &bytes)
}

/// Writes `value` as pretty JSON (with a final newline) into the new file `path`, fsync'd;
/// for a file inside a folder being built.
///
/// # Errors
/// [`Error::Io`] naming the file; serialisation errors.
pub fn write_synced_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    write_synced(
        path,
        (serde_json::to_string_pretty(value)? + "\n").as_bytes(),
    )
}

/// Copies the file `from` into the new file `to`, fsync'd (a log carried into a new folder).
///
/// # Errors
/// [`Error::Io`] naming the file that failed.
pub fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    File::open(from)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(from))?;
    write_synced(to, &bytes)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    failpoint(to)?;
    std::fs::rename(from, to).map_err(io_err(to))
}

/// Swaps the two existing folders `a` and `b` in one step where the platform can; `false`
/// where it cannot (the caller falls back to two renames).
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    failpoint(b)?;
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|e| Error::Io {
                path: p.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // The file system or kernel has no exchange: fall back.
            Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP) => Ok(false),
            _ => Err(Error::Io {
                path: b.to_path_buf(),
                source: e,
            }),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = a;
        Ok(false)
    }
}

/// Builds the folder `dir` complete through `fill` (which writes into the empty folder it is
/// given) and puts it in place of whatever `dir` held, in one swap; see the module docs. The
/// caller holds `dir`'s [`OutputLock`] or otherwise owns `dir` (a checkpoint inside a locked
/// run folder).
///
/// # Errors
/// Whatever `fill` returns; [`Error::Io`] naming the path whose operation failed: an error
/// while building leaves `dir` as it was and removes the part built; an error making the
/// swap durable comes after the new folder is in place. [`Error::OutputKept`] when the
/// complete new folder could not be moved into place: it is kept where the error says.
pub fn replace_folder(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (parent, name) = split(dir)?;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a folder; name a folder for the output",
            ),
        });
    }
    failpoint(&parent)?;
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let staging = sibling(&parent, &name, "partial");
    let built = failpoint(&staging)
        .and_then(|()| std::fs::create_dir(&staging).map_err(io_err(&staging)))
        .and_then(|()| fill(&staging))
        .and_then(|()| sync_dir(&staging));
    if let Err(e) = built {
        if !killed() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        return Err(e);
    }
    match swap(dir, &parent, &staging) {
        Ok(()) => {
            if !killed() {
                // The staging name now holds the old folder, or nothing.
                let _ = std::fs::remove_dir_all(&staging);
            }
            Ok(())
        }
        // The new folder is in place; only making that durable failed.
        Err(Swap::After(e)) => {
            if !killed() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e)
        }
        // The new folder is complete but could not be moved: never throw it away.
        Err(Swap::Before(e)) if !killed() => Err(Error::OutputKept {
            path: dir.to_path_buf(),
            kept: staging,
            reason: e.to_string(),
        }),
        Err(Swap::Before(e)) => Err(e),
    }
}

/// How a swap failed: before the new folder was in place (it is still at the staging name),
/// or after.
enum Swap {
    Before(Error),
    After(Error),
}

/// Puts the complete folder `staging` in place of `dir`.
fn swap(dir: &Path, parent: &Path, staging: &Path) -> std::result::Result<(), Swap> {
    if !dir.is_dir() {
        rename(staging, dir).map_err(Swap::Before)?;
    } else if no_exchange() || !exchange(staging, dir).map_err(Swap::Before)? {
        let (_, name) = split(dir).map_err(Swap::Before)?;
        let old = sibling(parent, &name, "old");
        rename(dir, &old).map_err(Swap::Before)?;
        if let Err(e) = rename(staging, dir) {
            if !killed() {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(Swap::Before(e));
        }
        rename(&old, staging).map_err(Swap::After)?;
    }
    sync_dir(parent).map_err(Swap::After)
}

/// Every name ttlora writes into an output folder (adapter, run, merged model, export). A
/// folder holding anything else was not written by ttlora, and replacing it would delete the
/// user's files, so [`OutputLock::acquire`] refuses it.
pub const OWN_NAMES: &[&str] = &[
    "adapter_config.json",
    "adapter_model.safetensors",
    "ttlora_task.json",
    "eval_results.json",
    "train_log.jsonl",
    "checkpoint",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
];

/// An advisory lock on an output folder, held until dropped: a second writer to the same
/// folder fails at once ([`Error::OutputLocked`], naming the holder's pid). The lock is a
/// `flock` on the hidden sibling `.NAME.lock`, which stays behind (removing a lock file races
/// with its next taker); the OS releases the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    dir: PathBuf,
}

impl OutputLock {
    /// Takes the lock on `dir` (which need not exist yet; its parent is created), then removes
    /// what killed writers to `dir` left behind.
    ///
    /// # Errors
    /// [`Error::OutputNotOwn`] when `dir` holds files ttlora does not write (see
    /// [`OWN_NAMES`]); [`Error::OutputLocked`] when another process holds it; [`Error::Io`]
    /// naming the lock file or the folder.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let (parent, name) = split(dir)?;
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        refuse_mount_point(dir, &parent)?;
        let path = parent.join(format!(".{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::OutputLocked {
                    path: dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(
                    "{}: the file system takes no locks; nothing stops a second writer",
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { path, source }),
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.write_all(format!("pid {}\n", std::process::id()).as_bytes())
            .map_err(io_err(&path))?;
        recover(&parent, &name, dir)?;
        // A checkpoint is swapped inside the locked folder; a kill mid-swap leaves its
        // siblings there.
        if dir.is_dir() {
            recover(dir, "checkpoint", &dir.join("checkpoint"))?;
        }
        check_own(dir)?;
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`replace_folder`] on the locked folder.
    ///
    /// # Errors
    /// As [`replace_folder`].
    pub fn replace_folder(&self, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        replace_folder(&self.dir, fill)
    }
}

/// Whether `file` is a sibling a save of `name` makes: `.NAME.KIND-PID-N`.
fn left_by_a_save(file: &str, name: &str) -> bool {
    ["partial", "old", "tmp"].iter().any(|kind| {
        file.strip_prefix(&format!(".{name}.{kind}-"))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, n)| {
                [pid, n]
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            })
    })
}

/// Refuses a `dir` that is a mount point: a folder is replaced by renames in its parent,
/// which cannot move a mount point, so the save would fail only at the end of a run.
fn refuse_mount_point(dir: &Path, parent: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(d), Ok(p)) = (std::fs::metadata(dir), std::fs::metadata(parent))
            && d.is_dir()
            && d.dev() != p.dev()
        {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a mount point, which a save cannot replace; name a folder inside it",
                ),
            });
        }
    }
    let _ = (dir, parent);
    Ok(())
}

/// Refuses an existing folder `dir` that holds anything but [`OWN_NAMES`].
fn check_own(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut foreign: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !OWN_NAMES.contains(&n.as_str()))
        .collect();
    if foreign.is_empty() && !is_model_without_marker(dir) {
        return Ok(());
    }
    if foreign.is_empty() {
        foreign.push("(a model or adapter folder with no ttlora record)".into());
    }
    foreign.sort();
    Err(Error::OutputNotOwn {
        path: dir.to_path_buf(),
        foreign,
    })
}

/// Whether `dir` holds model or adapter files with nothing saying ttlora wrote them: a base
/// model folder or an adapter from elsewhere, which a save must not replace.
fn is_model_without_marker(dir: &Path) -> bool {
    let has = |n: &str| dir.join(n).exists();
    let holds_model = [
        "model.safetensors",
        "config.json",
        "adapter_model.safetensors",
    ]
    .iter()
    .any(|n| has(n));
    let marked = [
        "ttlora_task.json",
        "eval_results.json",
        "train_log.jsonl",
        "checkpoint",
    ]
    .iter()
    .any(|n| has(n))
        || std::fs::read_to_string(dir.join("adapter_config.json"))
            .is_ok_and(|t| t.contains("\"ttlora_version\""));
    holds_model && !marked
}

/// Under `name`'s lock: puts back a folder a kill left renamed aside by the fallback swap, then
/// removes every staging folder, old folder and temporary file of `name` left by a killed
/// writer (nobody else can be writing them while the lock is held).
fn recover(parent: &Path, name: &str, dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let mut stale: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| left_by_a_save(&n.to_string_lossy(), name))
        })
        .collect();
    stale.sort();
    if !dir.exists()
        && let Some(old) = stale
            .iter()
            .find(|p| p.to_string_lossy().contains(&format!(".{name}.old-")))
    {
        tracing::warn!(
            "{}: a save was interrupted between its two renames; putting the previous folder \
             back",
            dir.display()
        );
        std::fs::rename(old, dir).map_err(io_err(dir))?;
    }
    for p in stale.iter().filter(|p| p.exists()) {
        tracing::debug!("removing {} left by an interrupted save", p.display());
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        removed.map_err(io_err(p))?;
    }
    Ok(())
}

#[cfg(not(test))]
fn failpoint(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(not(test))]
fn killed() -> bool {
    false
}

#[cfg(not(test))]
fn no_exchange() -> bool {
    false
}

#[cfg(test)]
pub(crate) use faults::{Fault, failpoint, force_two_renames, inject, killed, no_exchange, seen};

/// Fault injection for the tests: every file operation above first calls `failpoint`, which
/// can fail the n-th one with ENOSPC (an error path, cleanup runs) or as if the process were
/// killed there (no cleanup runs; the next lock holder must recover).
#[cfg(test)]
mod faults {
    use std::cell::Cell;
    use std::path::Path;

    use crate::error::{Error, Result};

    /// How the chosen operation fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fault {
        /// With ENOSPC; error paths clean up.
        NoSpace,
        /// As a kill: nothing after it runs, cleanup included.
        Kill,
    }

    thread_local! {
        static TWO_RENAMES: Cell<bool> = const { Cell::new(false) };
        static PLAN: Cell<Option<(usize, Fault)>> = const { Cell::new(None) };
        static SEEN: Cell<usize> = const { Cell::new(0) };
        static KILLED: Cell<bool> = const { Cell::new(false) };
    }

    /// Fails operation `n` (0-based) of what follows on this thread with `fault`; `None`
    /// counts without failing. Returns nothing; [`seen`] tells how many ran.
    pub(crate) fn inject(plan: Option<(usize, Fault)>) {
        PLAN.set(plan);
        SEEN.set(0);
        KILLED.set(false);
    }

    /// How many operations ran since [`inject`].
    pub(crate) fn seen() -> usize {
        SEEN.get()
    }

    pub(crate) fn failpoint(path: &Path) -> Result<()> {
        if KILLED.get() {
            return Err(killed_error(path));
        }
        let n = SEEN.get();
        SEEN.set(n + 1);
        match PLAN.get() {
            Some((at, fault)) if at == n => {
                if fault == Fault::Kill {
                    KILLED.set(true);
                    return Err(killed_error(path));
                }
                Err(Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(28),
                })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn killed() -> bool {
        KILLED.get()
    }

    /// Makes this thread's swaps take the two-rename path platforms without an atomic
    /// exchange take.
    pub(crate) fn force_two_renames(on: bool) {
        TWO_RENAMES.set(on);
    }

    pub(crate) fn no_exchange() -> bool {
        TWO_RENAMES.get()
    }

    fn killed_error(path: &Path) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("killed (fault injection)"),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::io::fs::{TempDir, files_in};

    /// What sits in `parent` besides `keep` and the lock files.
    fn leftovers(parent: &Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()) && !n.ends_with(".lock"))
            .collect()
    }

    /// A save of two files, the second in a sub-folder, as a run folder is built.
    fn save(lock: &OutputLock, version: &str) -> Result<()> {
        lock.replace_folder(|d| {
            write_synced(&d.join("adapter_model.safetensors"), version.as_bytes())?;
            std::fs::create_dir(d.join("checkpoint")).map_err(io_err(d))?;
            write_synced_json(&d.join("checkpoint").join("state.json"), &version)
        })
    }

    #[test]
    fn a_save_stopped_at_any_operation_leaves_the_old_folder_or_the_new_one() {
        // With Linux's atomic exchange, and with the two renames other platforms take.
        for two_renames in [false, true] {
            for occupied in [false, true] {
                stop_everywhere(two_renames, occupied);
            }
        }
        force_two_renames(false);
    }

    /// [`OutputLock::acquire`], retried for up to a second while this process itself is named
    /// as the holder. A lock file's descriptor (close-on-exec) is shared with any child that
    /// another test thread forks, until that child execs: for that moment the lock this test
    /// just dropped still looks held (seen once in about twenty full runs).
    fn acquire_settled(out: &Path) -> Result<OutputLock> {
        for _ in 0..50 {
            match OutputLock::acquire(out) {
                Err(Error::OutputLocked { holder, .. })
                    if holder == format!("pid {}", std::process::id()) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        OutputLock::acquire(out)
    }

    /// Stops a save into an empty or occupied folder at each of its operations, by ENOSPC
    /// and as by a kill; after the next writer's recovery the folder is the old one or the
    /// new one, and nothing else is left.
    fn stop_everywhere(two_renames: bool, occupied: bool) {
        force_two_renames(two_renames);
        let root = TempDir::new("output-faults");
        let out = root.join("run");
        let reset = || {
            let _ = std::fs::remove_dir_all(&out);
            if occupied {
                save(&acquire_settled(&out).unwrap(), "old").unwrap();
            }
        };
        reset();
        let before = out.is_dir().then(|| files_in(&out));
        inject(None);
        save(&acquire_settled(&out).unwrap(), "new").unwrap();
        let new = files_in(&out);
        let operations = seen();
        assert!(operations >= 5, "{operations} operations counted");
        for at in 0..operations {
            for fault in [Fault::NoSpace, Fault::Kill] {
                reset();
                let lock = acquire_settled(&out).unwrap();
                inject(Some((at, fault)));
                let err = save(&lock, "new").unwrap_err();
                inject(None);
                drop(lock);
                let case = format!("{fault:?} at operation {at} (two renames: {two_renames})");
                assert!(
                    matches!(err, Error::Io { .. } | Error::OutputKept { .. }),
                    "{case}: {err}"
                );
                if let Error::OutputKept { kept, .. } = &err {
                    // The complete new folder, kept where the error says.
                    assert_eq!(files_in(kept), new, "{case}");
                    std::fs::remove_dir_all(kept).unwrap();
                }
                if fault == Fault::NoSpace && before.is_some() && at + 2 < operations {
                    // An error before the swap leaves the old folder untouched at once.
                    assert_eq!(out.is_dir().then(|| files_in(&out)), before, "{case}");
                }
                drop(acquire_settled(&out).unwrap_or_else(|e| panic!("{case}: recovery: {e}")));
                let after = out.is_dir().then(|| files_in(&out));
                assert!(
                    after == before || after.as_ref() == Some(&new),
                    "{case} left a mix: {after:?}"
                );
                assert_eq!(leftovers(&root, &["run"]), Vec::<String>::new(), "{case}");
            }
        }
    }

    #[test]
    fn only_a_saves_own_sibling_names_count_as_left_behind() {
        assert!(left_by_a_save(".run.partial-12-0", "run"));
        assert!(left_by_a_save(".run.old-7-33", "run"));
        assert!(!left_by_a_save(".run.old-v1.partial-12-0", "run"));
        assert!(!left_by_a_save(".run.partial-12", "run"));
        assert!(!left_by_a_save(".runs.partial-1-2", "run"));
    }

    #[test]
    fn a_model_or_foreign_adapter_folder_is_not_replaced() {
        let root = TempDir::new("output-model");
        let model = root.join("bert");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("model.safetensors"), "x").unwrap();
        let err = OutputLock::acquire(&model).unwrap_err().to_string();
        assert!(err.contains("no ttlora record"), "{err}");
        let peft = root.join("peft");
        std::fs::create_dir(&peft).unwrap();
        std::fs::write(peft.join("adapter_config.json"), r#"{"peft_type": "LORA"}"#).unwrap();
        std::fs::write(peft.join("adapter_model.safetensors"), "x").unwrap();
        assert!(OutputLock::acquire(&peft).is_err());
        std::fs::write(peft.join("ttlora_task.json"), "{}").unwrap();
        OutputLock::acquire(&peft).unwrap();
    }

    #[test]
    fn a_second_writer_fails_at_once_naming_the_holder() {
        let root = TempDir::new("output-lock");
        let out = root.join("run");
        let held = OutputLock::acquire(&out).unwrap();
        let err = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "another ttlora process is writing this folder (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        OutputLock::acquire(&out).unwrap();
    }

    #[test]
    fn a_failed_single_file_write_keeps_the_old_file_and_leaves_no_temporary() {
        let root = TempDir::new("output-file");
        let path = root.join("predictions.tsv");
        write_atomic(&path, "complete\n").unwrap();
        for at in 0..3 {
            inject(Some((at, Fault::NoSpace)));
            assert!(write_atomic(&path, "new").is_err() || at >= 2);
            inject(None);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text == "complete\n" || text == "new", "{text}");
            assert_eq!(leftovers(&root, &["predictions.tsv"]), Vec::<String>::new());
        }
    }

    #[test]
    fn an_output_that_is_a_file_is_refused_and_left_alone() {
        let root = TempDir::new("output-is-file");
        let out = root.join("model");
        std::fs::write(&out, "a file").unwrap();
        let err = save(&OutputLock::acquire(&out).unwrap(), "new").unwrap_err();
        assert!(
            err.to_string().contains("exists and is not a folder"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a file");
        assert_eq!(leftovers(&root, &["model"]), Vec::<String>::new());
    }

    #[test]
    fn a_folder_with_files_ttlora_does_not_write_is_refused_untouched() {
        let root = TempDir::new("output-foreign");
        let out = root.join("project");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        std::fs::write(out.join("adapter_config.json"), "{}").unwrap();
        let err = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(
            err.contains("holds files ttlora did not write (`notes.txt`)"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("notes.txt")).unwrap(),
            "mine"
        );
    }

    /// A kill during a checkpoint swap leaves `.checkpoint.*` siblings inside the run folder;
    /// the next run's lock removes them instead of calling them the user's files.
    #[test]
    fn a_checkpoint_swap_left_by_a_kill_does_not_block_the_next_run() {
        let root = TempDir::new("output-checkpoint-kill");
        let out = root.join("run");
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::write(out.join("train_log.jsonl"), "").unwrap();
        std::fs::create_dir_all(out.join(".checkpoint.partial-99-0")).unwrap();
        std::fs::create_dir_all(out.join(".checkpoint.old-99-1")).unwrap();
        OutputLock::acquire(&out).unwrap();
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            2,
            "only checkpoint/ and the log remain"
        );
    }
}
