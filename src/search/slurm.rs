//! Running a study's workers as a Slurm job array: an `sbatch` script whose every task runs
//! `ttlora search worker DIR`, the tasks coordinating through the study's journal alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// What the array asks Slurm for (each passed through to `#SBATCH` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmOptions {
    /// Array tasks (workers).
    pub tasks: usize,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (Slurm's format, e.g. `02:00:00`).
    pub time: Option<String>,
    /// `--cpus-per-task` (each worker's threads follow it).
    pub cpus_per_task: Option<usize>,
    /// `--mem` (e.g. `8G`).
    pub mem: Option<String>,
    /// Further `#SBATCH` options, verbatim (e.g. `--account=abc`).
    pub extra: Vec<String>,
    /// Each worker's `--device` (e.g. `cuda`).
    pub device: String,
    /// Workers never fetch the model (`--offline`).
    pub offline: bool,
    /// Workers print no line per job.
    pub quiet: bool,
    /// The tasks' `RUST_LOG` (the submitting command's `-v`); None leaves theirs.
    pub log: Option<String>,
}

/// A path as one shell word.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Each task's log: `--output=DIR/slurm/worker-JOB_TASK.out`.
fn output_option(dir: &Path) -> String {
    format!("--output={}/slurm/worker-%A_%a.out", dir.display())
}

/// The `sbatch` script: one array task per worker, logs under `DIR/slurm/`, each worker's
/// threads set to its CPUs.
pub fn script(exe: &Path, dir: &Path, o: &SlurmOptions) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("#SBATCH --job-name=ttlora-search\n");
    s.push_str(&format!("#SBATCH --array=0-{}\n", o.tasks.max(1) - 1));
    let output = output_option(dir);
    if output.contains(char::is_whitespace) {
        // `#SBATCH` lines are split at whitespace: `submit` gives it on sbatch's command line
        // (this script resubmitted by hand logs to slurm-JOB_TASK.out in the current folder).
        s.push_str("# --output is on sbatch's command line: the study's path holds a space\n");
    } else {
        s.push_str(&format!("#SBATCH {output}\n"));
    }
    if let Some(p) = &o.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &o.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(c) = o.cpus_per_task {
        s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    if let Some(m) = &o.mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    for e in &o.extra {
        s.push_str(&format!("#SBATCH {e}\n"));
    }
    s.push_str("export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n");
    if let Some(level) = &o.log {
        s.push_str(&format!("export RUST_LOG={}\n", quote(Path::new(level))));
    }
    s.push_str(&format!(
        "exec {} search worker {} --device {}{}{}\n",
        quote(exe),
        quote(dir),
        quote(Path::new(&o.device)),
        if o.offline { " --offline" } else { "" },
        if o.quiet { " --quiet" } else { "" }
    ));
    s
}

/// Writes the script to `DIR/slurm/search.sbatch` and submits it; with `wait`, returns once
/// every task has ended (`sbatch --wait`). Returns the job id.
///
/// # Errors
/// No `sbatch` on the PATH; `sbatch` refusing the job (its message included); I/O errors.
pub fn submit(exe: &Path, dir: &Path, o: &SlurmOptions, wait: bool) -> Result<String> {
    let slurm_dir = dir.join("slurm");
    std::fs::create_dir_all(&slurm_dir).map_err(|source| Error::Io {
        path: slurm_dir.clone(),
        source,
    })?;
    let path: PathBuf = slurm_dir.join("search.sbatch");
    crate::io::write_atomic(&path, script(exe, dir, o))?;
    let mut cmd = Command::new("sbatch");
    // On the command line too, one argument whatever the path holds (it overrides the
    // script's line, which is there for a resubmission by hand).
    cmd.args(["--parsable", &output_option(dir)]);
    if wait {
        cmd.arg("--wait");
    }
    let out = cmd.arg(&path).output().map_err(|e| Error::Study {
        path: path.clone(),
        reason: format!("cannot run sbatch ({e}); is Slurm installed and on the PATH?"),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job = stdout.trim().split(';').next().unwrap_or("").to_string();
    if !out.status.success() {
        return Err(Error::Study {
            path,
            reason: format!(
                "sbatch {}{}: {}",
                if job.is_empty() {
                    "refused the job"
                } else {
                    "job "
                },
                job,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_one_worker_per_array_task_with_the_flags_passed_through() {
        let o = SlurmOptions {
            tasks: 4,
            partition: Some("gpu".into()),
            time: Some("01:00:00".into()),
            cpus_per_task: Some(8),
            mem: Some("16G".into()),
            extra: vec!["--account=abc".into()],
            device: "cuda:1".into(),
            offline: true,
            quiet: true,
            log: Some("debug".into()),
        };
        let s = script(
            Path::new("/opt/ttlora"),
            Path::new("/data/it's a study"),
            &o,
        );
        let expected = "#!/bin/bash\n\
            #SBATCH --job-name=ttlora-search\n\
            #SBATCH --array=0-3\n\
            # --output is on sbatch's command line: the study's path holds a space\n\
            #SBATCH --partition=gpu\n\
            #SBATCH --time=01:00:00\n\
            #SBATCH --cpus-per-task=8\n\
            #SBATCH --mem=16G\n\
            #SBATCH --account=abc\n\
            export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n\
            export RUST_LOG='debug'\n\
            exec '/opt/ttlora' search worker '/data/it'\\''s a study' --device 'cuda:1' --offline --quiet\n";
        assert_eq!(s, expected);
        let plain = script(Path::new("/opt/ttlora"), Path::new("/data/study"), &o);
        assert!(
            plain.contains("\n#SBATCH --output=/data/study/slurm/worker-%A_%a.out\n"),
            "{plain}"
        );
    }
}
