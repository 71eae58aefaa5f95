//! `ttlora search`: start or continue a study (`--out DIR`), `search worker DIR` (what
//! `--workers` and cluster array tasks run), `search status DIR`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ttlora::search::journal::Event;
use ttlora::search::{
    Config, Report, Resource, SamplerKind, Scheduler, SchedulerKind, SearchSettings, SearchSpace,
    StudyStatus, WorkerOptions, run_worker, status,
};

use super::common::{DeviceArgs, JsonArgs, OfflineArgs};

/// Arguments of `ttlora search`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SearchArgs {
    #[command(subcommand)]
    command: Option<SearchCommand>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Subcommand)]
enum SearchCommand {
    /// Where a study stands: trials by status, rungs, compute used, the best trial.
    Status {
        /// The study folder.
        dir: PathBuf,
        #[command(flatten)]
        output: JsonArgs,
    },
    /// Writes the trade-off report: DIR/report/report.md with the Pareto front, every trial,
    /// each setting's sensitivity, and plots (SVG and PNG); prints the front.
    Report {
        /// The study folder.
        dir: PathBuf,
        /// Train each front config again with N further seeds and score it on dev (mean ±
        /// std in the report); runs saved under DIR/confirm/ are reused.
        #[arg(long, value_name = "N", default_value_t = 0)]
        confirm_seeds: usize,
        /// With --confirm-seeds: confirm this trial too, on the front or not (repeatable),
        /// e.g. the LoRA r = 8 trial of a rank sweep, the reference a TT-LoRA config is
        /// judged against.
        #[arg(long, value_name = "TRIAL")]
        confirm_trial: Vec<usize>,
        /// Another study to draw and list beside this one (repeatable): LoRA's rank sweep as
        /// the front plot's reference line, other methods' sizes. Its task, training sample,
        /// held-out share, seed, max length and max_t must be this study's, so both score the
        /// same held-out examples after the same training.
        #[arg(long, value_name = "DIR")]
        compare: Vec<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        output: JsonArgs,
    },
    /// Runs jobs of an existing study until it is complete; several may share a study (what
    /// `--workers` starts, and what a cluster's array tasks run).
    Worker {
        /// The study folder.
        dir: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
        /// Never fetch the model, even when the study was started without --offline.
        #[arg(long)]
        offline: bool,
        /// No line per finished job.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SamplerArg {
    Grid,
    Random,
    Tpe,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchedulerArg {
    Asha,
    Hyperband,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResourceArg {
    Epochs,
    Steps,
}

/// Starting (or continuing) a study.
#[derive(Debug, Args)]
struct StartArgs {
    /// Study folder: settings, journal, trials. Running the same command again continues the
    /// study; `--resume --out DIR` continues it without repeating the settings.
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Continue the study in --out with its own settings.
    #[arg(long)]
    resume: bool,
    /// Task (GLUE or SuperGLUE name).
    #[arg(long, required_unless_present = "resume")]
    task: Option<String>,
    /// Search space file (TOML): one table per method, lists as choices, `{ low, high,
    /// log }` as ranges (docs/SEARCH.md).
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    space: Option<PathBuf>,
    /// Base model: folder, packaged name or hub id [default: all-MiniLM-L6-v2].
    #[arg(long)]
    model: Option<String>,
    /// Data root holding glue/ and superglue/ [default: ./data, then ../shared/data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Trials to start in all [default: 20].
    #[arg(long)]
    trials: Option<usize>,
    /// Where configs come from [default: random].
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// Early stopping [default: asha].
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    /// η: each rung keeps the top 1/η of its trials [default: 3].
    #[arg(long, value_name = "ETA")]
    reduction_factor: Option<usize>,
    /// Resource of the first rung [default: 1 epoch]; with `--resource steps` it is needed,
    /// and it is also the evaluation interval of every trial, early-stopped or not.
    #[arg(long)]
    grace_period: Option<usize>,
    /// Resource of a complete trial [default: 9].
    #[arg(long)]
    max_t: Option<usize>,
    /// What grace-period and max-t count [default: epochs].
    #[arg(long, value_enum)]
    resource: Option<ResourceArg>,
    /// Tokens per example [default: 128].
    #[arg(long)]
    max_len: Option<usize>,
    /// Fraction of train held out; trials are selected and pruned on it [default: 0.1].
    #[arg(long, value_parser = super::common::positive_f64)]
    held_out: Option<f64>,
    /// Use at most N training examples (seeded sample).
    #[arg(long, value_name = "N")]
    max_train: Option<usize>,
    /// Seed of the split, the sampler and every trial's initialisation [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Examples per batch unless the space sets batch_size [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Retries of a failed job before its trial counts as failed [default: 2].
    #[arg(long)]
    max_retries: Option<usize>,
    /// Worker processes sharing the study (local: threads per worker = cores / N, and no
    /// more than the memory holds at the study's recorded peak; each waits before a job while
    /// memory is short and another job runs; slurm: the array's tasks).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where workers run: here, or as a Slurm job array (`sbatch`) whose tasks run `ttlora
    /// search worker DIR`.
    #[arg(long, value_enum, default_value = "local")]
    executor: ExecutorArg,
    /// Slurm: the partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: the time limit per task (e.g. 02:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Slurm: CPUs per task (each worker's threads).
    #[arg(long)]
    cpus_per_task: Option<usize>,
    /// Slurm: memory per task (e.g. 8G).
    #[arg(long)]
    mem: Option<String>,
    /// Slurm: a further #SBATCH option, verbatim (repeatable), e.g. --sbatch-arg=--account=abc.
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// Slurm: wait until every task has ended, then print the status.
    #[arg(long)]
    wait: bool,

    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    fetch: OfflineArgs,
    #[command(flatten)]
    output: JsonArgs,
    /// No line per finished job.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `ttlora search`.
pub fn run(a: SearchArgs) -> Result<()> {
    match a.command {
        Some(SearchCommand::Status { dir, output }) => print_status(&status(&dir)?, output.json),
        Some(SearchCommand::Report {
            dir,
            confirm_seeds,
            confirm_trial,
            compare,
            device,
            output,
        }) => {
            if confirm_seeds == 0 && !confirm_trial.is_empty() {
                bail!("--confirm-trial needs --confirm-seeds N (N ≥ 1)");
            }
            let confirm = Confirm {
                seeds: confirm_seeds,
                also: confirm_trial,
            };
            report(&dir, &confirm, &compare, device.device()?, output.json)
        }
        Some(SearchCommand::Worker {
            dir,
            device,
            offline,
            quiet,
        }) => {
            let mut settings = SearchSettings::read(&dir)?;
            settings.allow_fetch &= !offline;
            work(&dir, &settings, device.device()?, quiet)
        }
        None => start(a.start),
    }
}

/// The study's settings from the flags, defaults filled in.
fn settings(a: &StartArgs) -> Result<SearchSettings> {
    let (Some(task), Some(space)) = (&a.task, &a.space) else {
        bail!("--task and --space are needed to start a study");
    };
    let space = SearchSpace::read(space)?;
    // Paths are stored absolute: a worker started from another folder (a Slurm task, a
    // second terminal) must read the same files. A model that is no path (a packaged name,
    // a hub id) is kept as given.
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| ttlora::io::DEFAULT_MODEL.to_string());
    let settings = SearchSettings {
        task: task.to_ascii_lowercase(),
        data: a.data.as_deref().map(absolute),
        model: if Path::new(&model).exists() {
            absolute(Path::new(&model)).display().to_string()
        } else {
            model
        },
        max_len: a.max_len.unwrap_or(128),
        held_out: a.held_out.unwrap_or(0.1),
        max_train: a.max_train,
        seed: a.seed.unwrap_or(42),
        space,
        sampler: match a.sampler.unwrap_or(SamplerArg::Random) {
            SamplerArg::Grid => SamplerKind::Grid,
            SamplerArg::Random => SamplerKind::Random,
            SamplerArg::Tpe => SamplerKind::Tpe,
        },
        scheduler: Scheduler {
            kind: match a.scheduler.unwrap_or(SchedulerArg::Asha) {
                SchedulerArg::Asha => SchedulerKind::Asha,
                SchedulerArg::Hyperband => SchedulerKind::Hyperband,
                SchedulerArg::None => SchedulerKind::None,
            },
            reduction_factor: a.reduction_factor.unwrap_or(3),
            grace_period: a.grace_period.unwrap_or(1),
            max_t: a.max_t.unwrap_or(9),
        },
        resource: match a.resource.unwrap_or(ResourceArg::Epochs) {
            ResourceArg::Epochs => Resource::Epochs,
            ResourceArg::Steps => Resource::Steps,
        },
        trials: a.trials.unwrap_or(20),
        max_retries: a.max_retries.unwrap_or(2),
        batch_size: a.batch_size.unwrap_or(32),
        allow_fetch: !a.fetch.offline,
    };
    if settings.resource == Resource::Steps && a.grace_period.is_none() {
        bail!(
            "--resource steps needs --grace-period: the first rung and the evaluation interval, \
             in steps (e.g. a tenth of max-t)"
        );
    }
    settings.validate()?;
    if settings.scheduler.kind == SchedulerKind::None {
        if a.reduction_factor.is_some() {
            bail!("--reduction-factor is for --scheduler asha or hyperband (none stops no trial)");
        }
        if a.grace_period.is_some() && settings.resource == Resource::Epochs {
            bail!(
                "--grace-period is for --scheduler asha or hyperband, or with --resource steps \
                 the evaluation interval; with --scheduler none and epochs it would do nothing"
            );
        }
    }
    Ok(settings)
}

/// The study flags given with --resume (which takes the folder's settings).
fn study_flags_given(a: &StartArgs) -> Vec<&'static str> {
    [
        ("--task", a.task.is_some()),
        ("--space", a.space.is_some()),
        ("--model", a.model.is_some()),
        ("--data", a.data.is_some()),
        ("--trials", a.trials.is_some()),
        ("--sampler", a.sampler.is_some()),
        ("--scheduler", a.scheduler.is_some()),
        ("--reduction-factor", a.reduction_factor.is_some()),
        ("--grace-period", a.grace_period.is_some()),
        ("--max-t", a.max_t.is_some()),
        ("--resource", a.resource.is_some()),
        ("--max-len", a.max_len.is_some()),
        ("--held-out", a.held_out.is_some()),
        ("--max-train", a.max_train.is_some()),
        ("--seed", a.seed.is_some()),
        ("--batch-size", a.batch_size.is_some()),
        ("--max-retries", a.max_retries.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(flag, _)| flag)
    .collect()
}

fn start(a: StartArgs) -> Result<()> {
    let Some(dir) = a.out.clone() else {
        bail!("--out DIR names the study folder");
    };
    if a.workers == 0 {
        bail!("--workers must be >= 1");
    }
    let slurm_only = [
        ("--partition", a.partition.is_some()),
        ("--time", a.time.is_some()),
        ("--cpus-per-task", a.cpus_per_task.is_some()),
        ("--mem", a.mem.is_some()),
        ("--sbatch-arg", !a.sbatch_arg.is_empty()),
        ("--wait", a.wait),
    ];
    if a.executor != ExecutorArg::Slurm
        && let Some((flag, _)) = slurm_only.iter().find(|(_, given)| *given)
    {
        bail!("{flag} is for --executor slurm");
    }
    let mut settings = if a.resume {
        let given = study_flags_given(&a);
        if !given.is_empty() {
            bail!(
                "--resume continues the study in {} with its own settings; {} would change them \
                 (drop --resume to check them against the study instead)",
                dir.display(),
                given.join(", ")
            );
        }
        SearchSettings::read(&dir)?
    } else {
        settings(&a)?.create_or_check(&dir)?;
        // The folder's own settings: equal but for `allow_fetch`, which stays the study's.
        SearchSettings::read(&dir)?
    };
    // The study's choice to fetch is a default that `--offline` tightens for this run.
    settings.allow_fetch &= !a.fetch.offline;
    let offline = !settings.allow_fetch;
    if a.executor == ExecutorArg::Slurm {
        // Only the name is checked here: the nodes, not this host, must have the device.
        ttlora::check_device_name(&a.device.device)?;
        let exe = std::env::current_exe().context("cannot find the ttlora binary")?;
        let abs = std::fs::canonicalize(&dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let opts = ttlora::search::slurm::SlurmOptions {
            tasks: a.workers,
            partition: a.partition.clone(),
            time: a.time.clone(),
            cpus_per_task: a.cpus_per_task,
            mem: a.mem.clone(),
            extra: a.sbatch_arg.clone(),
            device: a.device.device.clone(),
            offline,
            quiet: a.quiet,
            log: super::logging::chosen().map(String::from),
        };
        let job = ttlora::search::slurm::submit(&exe, &abs, &opts, a.wait)?;
        if !a.wait {
            let mut out = std::io::stdout().lock();
            if a.output.json {
                let submitted = serde_json::json!({
                    "slurm_job": job,
                    "tasks": a.workers,
                    "study": abs,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&submitted)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "submitted Slurm job {job}: {} array tasks running `ttlora search worker {}`; \
                 follow it with `ttlora search status {}`",
                a.workers,
                abs.display(),
                dir.display()
            )?;
            return Ok(());
        }
        return print_status(&status(&dir)?, a.output.json);
    }
    // Resolved here, not before a Slurm submission: the login node may lack the device.
    let device = a.device.device()?;
    if a.workers == 1 {
        work(&dir, &settings, device, a.quiet)?;
    } else {
        let (n, why) = ttlora::search::local_workers_that_fit(&dir, a.workers)?;
        if let Some(why) = why {
            tracing::warn!("{why}");
        }
        spawn_workers(&dir, n, &a.device.device, offline, a.quiet)?;
    }
    print_status(&status(&dir)?, a.output.json)
}

/// Runs a worker in this process, a line per finished job on stderr.
fn work(
    dir: &Path,
    settings: &SearchSettings,
    device: candle_core::Device,
    quiet: bool,
) -> Result<()> {
    let opts = WorkerOptions {
        device,
        ..WorkerOptions::default()
    };
    let unit = match settings.resource {
        Resource::Epochs => "epoch",
        Resource::Steps => "step",
    };
    let mut line = |config: &Config, e: &Event| {
        if quiet {
            return;
        }
        let text = match e {
            Event::Reported {
                trial,
                resource,
                score,
                seconds,
                ..
            } => format!(
                "trial {trial} [{}] {unit} {resource}: held-out {score:.4} ({seconds:.0} s)",
                config.label()
            ),
            Event::Failed {
                trial,
                attempt,
                error,
                ..
            } => format!(
                "trial {trial} [{}] try {attempt} failed: {error}",
                config.label()
            ),
            _ => return,
        };
        let _ = writeln!(std::io::stderr(), "{text}");
    };
    let summary = run_worker(dir, settings, &opts, &mut line)
        .with_context(|| format!("search worker on {}", dir.display()))?;
    tracing::debug!(?summary, "worker done");
    Ok(())
}

/// Starts `n` worker processes on the study and waits for all; each gets cores / n threads.
fn spawn_workers(dir: &Path, n: usize, device: &str, offline: bool, quiet: bool) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the ttlora binary to start workers")?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n).max(1);
    if n > cores {
        tracing::warn!(
            "{n} workers on {cores} cores: each gets one thread and they share the cores, so \
             each job runs slower (--workers {cores} or fewer keeps one core per worker)"
        );
    }
    tracing::info!("{n} worker processes, {threads} threads each ({cores} cores)");
    let mut children = Vec::new();
    for _ in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["search", "worker"])
            .arg(dir)
            .args(["--device", device])
            .env("RAYON_NUM_THREADS", threads.to_string());
        super::logging::pass_on(&mut cmd);
        if quiet {
            cmd.arg("--quiet");
        }
        if offline {
            cmd.arg("--offline");
        }
        children.push(cmd.spawn().context("cannot start a worker process")?);
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait().context("waiting for a worker")?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {n} workers ended with an error (their messages are above); rerun the \
             same command to continue the study"
        );
    }
    Ok(())
}

fn print_status(s: &StudyStatus, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(s)?)?;
        return Ok(());
    }
    for w in &s.warnings {
        writeln!(std::io::stderr(), "warning: {w}")?;
    }
    let count = |st| s.trials.iter().filter(|t| t.status == st).count();
    use ttlora::search::status::TrialStatus as T;
    writeln!(
        out,
        "{} of {} trials started: {} complete, {} paused, {} pruned, {} running, {} retrying, \
         {} failed; resource used {}",
        s.trials.len(),
        s.budget,
        count(T::Complete),
        count(T::Paused),
        count(T::Pruned),
        count(T::Running),
        count(T::Retrying),
        count(T::Failed),
        s.used
    )?;
    let rungs: Vec<String> = s
        .per_rung
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect();
    writeln!(out, "trials per rung: {}", rungs.join(", "))?;
    writeln!(
        out,
        "{:>5}  {:>9}  {:>8}  {:>8}  config",
        "trial", "status", "resource", "held-out"
    )?;
    let mut order: Vec<_> = s.trials.iter().collect();
    order.sort_by(|a, b| {
        ttlora::search::status::best_first((a.resource, a.score, a.id), (b.resource, b.score, b.id))
    });
    for t in order {
        let status = format!("{:?}", t.status).to_ascii_lowercase();
        writeln!(
            out,
            "{:>5}  {:>9}  {:>8}  {:>8.4}  {}",
            t.id, status, t.resource, t.score, t.config
        )?;
    }
    if let Some(best) = s.best {
        writeln!(out, "best on the held-out slice: trial {best}")?;
    }
    Ok(())
}

/// What `search report` confirms on dev: the front and `also`, with `seeds` seeds (none
/// when 0).
struct Confirm {
    seeds: usize,
    also: Vec<usize>,
}

/// `search report`: the Markdown and plots into DIR/report/, the front on stdout.
fn report(
    dir: &Path,
    confirm: &Confirm,
    compare: &[PathBuf],
    device: candle_core::Device,
    json: bool,
) -> Result<()> {
    let mut r: Report = ttlora::search::build_report(dir)?;
    for other in compare {
        let theirs = ttlora::search::build_report(other)?;
        r.compare_with(other, theirs)?;
    }
    if confirm.seeds > 0 {
        let mut line = |trial: usize, seed: u64, score: f64| {
            let _ = writeln!(
                std::io::stderr(),
                "confirm: trial {trial} seed {seed}: dev {score:.4}"
            );
        };
        let front = r.configs_to_confirm(dir, &confirm.also)?;
        let confirmed = ttlora::search::confirm::confirm(
            dir,
            &r.settings,
            &front,
            confirm.seeds,
            device,
            &mut line,
        )?;
        r.confirmed = confirmed;
    }
    let out_dir = dir.join("report");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let plots = ttlora::search::plot::write_plots(&r, &out_dir)?;
    let refs: Vec<(&str, &str)> = plots.iter().map(|(n, f)| (*n, f.as_str())).collect();
    let md_path = out_dir.join("report.md");
    ttlora::io::write_atomic(&md_path, ttlora::search::report_markdown(&r, &refs))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} trials; resource used {} of {} without pruning",
        r.trials.len(),
        r.used,
        r.without_pruning
    )?;
    writeln!(
        out,
        "Pareto front at max_t (held-out score against trainable parameters):"
    )?;
    writeln!(
        out,
        "{:>5}  {:>10}  {:>8}  config",
        "trial", "trainable", "held-out"
    )?;
    for id in &r.front {
        let t = &r.trials[*id];
        writeln!(
            out,
            "{:>5}  {:>10}  {:>8.4}  {}",
            t.id,
            t.params,
            t.score,
            t.config.label()
        )?;
    }
    writeln!(out, "report written to {}", md_path.display())?;
    Ok(())
}
