//! `ttlora search` end to end on a tiny random BERT and the bundled SST-2 rows: ASHA's early
//! stopping recorded in the journal, a rerun that runs nothing twice, studies killed during a
//! trial and during a journal write that end as an uninterrupted one, two workers sharing a
//! study, and bad input.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use ttlora::models::BertConfig;

use crate::common::{
    TempDir, assert_clear_error, bundled_data, json_out, path_str, stderr, stdout,
    tiny_bert_folder, ttlora,
};

const SPACE: &str = "[ttlora]\nrank = [2, 4]\nalpha = [4, 8]\n\
                     lr = { low = 1e-3, high = 3e-2, log = true }\n[lora]\nr = [2, 4]\n";

/// The `search` command line of the tests' study in `out`.
fn search_args(model: &Path, space: &Path, out: &Path) -> Vec<String> {
    [
        "search",
        "--task",
        "sst2",
        "--data",
        path_str(&bundled_data()),
        "--model",
        path_str(model),
        "--space",
        path_str(space),
        "--out",
        path_str(out),
        "--trials",
        "6",
        "--max-t",
        "3",
        "--max-train",
        "48",
        "--batch-size",
        "16",
        "--seed",
        "1",
        "--offline",
        "--json",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ttlora ARGS` started in the background, its output discarded (to be killed).
fn spawn_quiet(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ttlora"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ttlora(&args)
}

/// The lines of a JSON-lines file (a journal, a training log) as JSON values.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The journal's events as JSON values.
fn journal(out: &Path) -> Vec<serde_json::Value> {
    json_lines(&out.join("journal.jsonl"))
}

/// The study's `study.json` (its settings) as JSON.
fn study_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap()
}

/// Fails when a job of the study in `out` was reported twice: a finished job run again.
fn assert_each_job_reported_once(out: &Path) {
    let mut done = BTreeSet::new();
    for e in journal(out).iter().filter(|e| e["event"] == "reported") {
        assert!(
            done.insert((e["trial"].as_u64(), e["resource"].as_u64())),
            "{}: reported twice (a finished job rerun): {e}",
            out.display()
        );
    }
}

/// (trial, config, highest rung, score there) of every trial: what two studies with the same
/// seed must agree on.
fn outcome(status: &serde_json::Value) -> BTreeSet<String> {
    status["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {}",
                t["id"], t["config"], t["resource"], t["score"]
            )
        })
        .collect()
}

/// A fresh study folder with the space file beside it.
fn setup(name: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let model = tiny_bert_folder(name, BertConfig::tiny());
    let space = model.join("space.toml");
    std::fs::write(&space, SPACE).unwrap();
    let out = model.join("study");
    (model, space, out)
}

#[test]
fn asha_prunes_at_rungs_and_a_rerun_runs_nothing_twice() {
    let (model, space, out) = setup("search-asha");
    let args = search_args(&model, &space, &out);
    let status = json_out(run(&args));
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    // Every trial reached rung 1; ASHA (η = 3) took the top third on to max_t = 3 and, the
    // study over, the others are pruned where they stopped.
    assert_eq!(status["per_rung"]["1"], 6);
    let complete = trials.iter().filter(|t| t["status"] == "complete").count();
    let pruned = trials.iter().filter(|t| t["status"] == "pruned").count();
    assert!((2..=3).contains(&complete), "{status}");
    assert_eq!(complete + pruned, 6, "{status}");
    for t in trials {
        let r = t["resource"].as_u64().unwrap();
        assert!(r == 1 || r == 3, "a trial stops at a rung: {t}");
        assert!(t["score"].as_f64().is_some(), "{t}");
    }
    let used = status["used"].as_u64().unwrap();
    assert!(
        used < 6 * 3,
        "early stopping saves compute: {used} of 18 epochs"
    );

    // The journal shows each pruned trial's one job, stopped at its rung after 1 epoch of
    // steps (48 examples, 10% held out → 43 → 3 batches of 16), and a complete trial's
    // adapter saved.
    let events = journal(&out);
    for t in trials.iter().filter(|t| t["status"] == "pruned") {
        let reports: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event"] == "reported" && e["trial"] == t["id"])
            .collect();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0]["steps"], 3);
        assert_eq!(reports[0]["resource"], 1);
        // The job's wall time holds its training time; its peak memory is recorded.
        let (wall, train) = (&reports[0]["wall_s"], &reports[0]["seconds"]);
        assert!(
            wall.as_f64().unwrap() >= train.as_f64().unwrap(),
            "{wall} {train}"
        );
        assert!(reports[0]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    }
    let done = trials.iter().find(|t| t["status"] == "complete").unwrap();
    let adapter = events
        .iter()
        .find(|e| e["event"] == "reported" && e["trial"] == done["id"] && e["resource"] == 3)
        .unwrap()["adapter"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(Path::new(&adapter).join("adapter_config.json").is_file());
    assert!(Path::new(&adapter).join("eval_results.json").is_file());
    // A promoted trial continues from its rung-1 checkpoint: its second job evaluates only
    // after epochs 2 and 3 (steps 6 and 9), not again after the first.
    let mut promoted = 0;
    for t in trials.iter().filter(|t| t["resource"] == 3) {
        let jobs: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event"] == "reported" && e["trial"] == t["id"])
            .collect();
        if jobs.len() < 2 {
            continue;
        }
        promoted += 1;
        let steps: Vec<u64> = jobs[1]["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(
            (jobs[0]["steps"].as_u64(), steps.as_slice()),
            (Some(3), &[6, 9][..])
        );
    }
    assert!(promoted > 0, "a trial was promoted from rung 1");

    // Running the same command again continues a complete study: nothing runs.
    let again = json_out(run(&args));
    assert_eq!(outcome(&again), outcome(&status));
    assert_eq!(journal(&out).len(), events.len(), "no job ran twice");
    let shown = json_out(ttlora(&["search", "status", path_str(&out), "--json"]));
    assert_eq!(outcome(&shown), outcome(&status));
    // --resume takes the folder's settings.
    let resumed = json_out(ttlora(&[
        "search",
        "--resume",
        "--out",
        path_str(&out),
        "--json",
        "--quiet",
    ]));
    assert_eq!(outcome(&resumed), outcome(&status));
    // `--offline` is this run's choice, not the study's: dropped, or given with --resume,
    // the study still continues.
    let online: Vec<String> = args.iter().filter(|a| *a != "--offline").cloned().collect();
    assert_eq!(outcome(&json_out(run(&online))), outcome(&status));
    let resumed = json_out(ttlora(&[
        "search",
        "--resume",
        "--offline",
        "--out",
        path_str(&out),
        "--json",
        "--quiet",
    ]));
    assert_eq!(outcome(&resumed), outcome(&status));
    assert_eq!(journal(&out).len(), events.len(), "no job ran twice");
    // `status` and `report` only read: a copy of the study gains no lock file.
    let copy = model.join("study-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["study.json", "journal.jsonl"] {
        std::fs::copy(out.join(f), copy.join(f)).unwrap();
    }
    let shown = json_out(ttlora(&["search", "status", path_str(&copy), "--json"]));
    assert_eq!(outcome(&shown), outcome(&status));
    assert!(!copy.join("journal.lock").exists());
    // A study that may fetch its model, continued with `--offline`: one worker in this
    // process, worker processes and `search worker` all refuse to download.
    let unfetched = model.join("study-unfetched");
    std::fs::create_dir_all(&unfetched).unwrap();
    let mut settings = study_json(&out);
    settings["model"] = "no-such-org/no-such-model".into();
    settings["allow_fetch"] = true.into();
    std::fs::write(unfetched.join("study.json"), settings.to_string()).unwrap();
    let dir = path_str(&unfetched);
    for args in [
        vec!["search", "--resume", "--out", dir, "--offline"],
        vec![
            "search",
            "--resume",
            "--out",
            dir,
            "--offline",
            "--workers",
            "2",
        ],
        vec!["search", "worker", dir, "--offline"],
    ] {
        let o = ttlora(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("because of --offline"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // A corrupt line in the middle is reported with its line number and skipped.
    let mut lines: Vec<String> = std::fs::read_to_string(copy.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.insert(2, "{\"event\":\"repor\u{0}ted".into());
    std::fs::write(copy.join("journal.jsonl"), lines.join("\n") + "\n").unwrap();
    let o = ttlora(&["search", "status", path_str(&copy)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("journal.jsonl:3: not a journal event"),
        "{}",
        stderr(&o)
    );
    let shown = json_out(ttlora(&["search", "status", path_str(&copy), "--json"]));
    assert_eq!(outcome(&shown), outcome(&status));
    assert_eq!(shown["warnings"].as_array().unwrap().len(), 1);

    // The report: Markdown with the front and every trial, plots as SVG and PNG.
    let report = json_out(ttlora(&["search", "report", path_str(&out), "--json"]));
    let front = report["front"].as_array().unwrap();
    assert!(!front.is_empty());
    assert!(
        front
            .iter()
            .all(|id| trials[id.as_u64().unwrap() as usize]["status"] == "complete")
    );
    assert_eq!(report["used"], status["used"]);
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("## Pareto front at max_t"), "{md}");
    assert_eq!(md.matches("| pruned |").count(), pruned, "{md}");
    assert!(md.contains("![Score against each searched setting"), "{md}");
    for plot in ["front", "history", "curves", "sensitivity"] {
        let svg = std::fs::read_to_string(out.join(format!("report/{plot}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("held-out"),
            "{plot}.svg"
        );
        let png = std::fs::read(out.join(format!("report/{plot}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{plot}.png");
        assert!(png.len() > 5_000, "{plot}.png holds a drawing");
    }
    // The search's own cost is measured by the workers and reported.
    let overhead = &report["overhead"];
    assert!(overhead["jobs"].as_u64().unwrap() >= 8, "{overhead}");
    assert!(overhead["per_job_s"].as_f64().unwrap() < overhead["job_s"].as_f64().unwrap());

    // The front confirmed with two further seeds on dev; a second report reuses the runs.
    let args = [
        "search",
        "report",
        path_str(&out),
        "--confirm-seeds",
        "2",
        "--json",
    ];
    let confirmed = json_out(ttlora(&args))["confirmed"].clone();
    assert_eq!(confirmed.as_array().unwrap().len(), front.len());
    for c in confirmed.as_array().unwrap() {
        assert_eq!(c["seeds"], serde_json::json!([2, 3]));
        assert_eq!(c["dev"].as_array().unwrap().len(), 2);
        let dir = out.join(format!("confirm/{:06}-seed2", c["trial"].as_u64().unwrap()));
        assert!(dir.join("eval_results.json").is_file());
    }
    assert_eq!(
        json_out(ttlora(&args))["confirmed"],
        confirmed,
        "reused, not rerun"
    );
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("## The front confirmed on dev"), "{md}");
    // A trial off the front confirmed too (a reference config): the front's runs reused, its
    // own two run; each mean ± std is its seeds' mean and sample deviation.
    let off = trials
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .find(|id| !front.iter().any(|f| f.as_u64() == Some(*id)))
        .unwrap();
    let mut with_off: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    with_off.extend(["--confirm-trial".to_string(), off.to_string()]);
    let all = json_out(run(&with_off))["confirmed"].clone();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), front.len() + 1);
    assert!(
        all.iter()
            .any(|c| c["trial"] == off && c["on_front"] == false)
    );
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains(&format!("| {off} (asked) |")), "{md}");
    for c in all {
        let dev: Vec<f64> = serde_json::from_value(c["dev"].clone()).unwrap();
        let mean = (dev[0] + dev[1]) / 2.0;
        let std = (dev[0] - dev[1]).abs() / 2f64.sqrt();
        assert!((c["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{c}");
        assert!((c["std"].as_f64().unwrap() - std).abs() < 1e-12, "{c}");
    }
    assert_clear_error(
        &run(&[
            with_off.clone(),
            vec!["--confirm-trial".into(), "99".into()],
        ]
        .concat()),
        &["--confirm-trial 99", "the study has trials 0 to 5"],
    );
    let no_seeds: Vec<String> = ["search", "report", path_str(&out), "--confirm-trial", "1"]
        .map(String::from)
        .to_vec();
    assert_clear_error(&run(&no_seeds), &["--confirm-trial needs --confirm-seeds"]);
    // A trial whose `created` line is damaged has no config to train again: refused.
    let damaged = model.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::copy(out.join("study.json"), damaged.join("study.json")).unwrap();
    let created = format!("{{\"event\":\"created\",\"trial\":{off},");
    let journal: String = std::fs::read_to_string(out.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix(&created) {
            Some(_) => "{\"event\":\"created\",\"tri\n".to_string(),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(damaged.join("journal.jsonl"), journal).unwrap();
    let lost: Vec<String> = [
        "search",
        "report",
        path_str(&damaged),
        "--confirm-seeds",
        "1",
        "--confirm-trial",
        &off.to_string(),
    ]
    .map(String::from)
    .to_vec();
    assert_clear_error(
        &run(&lost),
        &[&format!("--confirm-trial {off}: its config is unknown")],
    );

    // Another study beside this one: listed and drawn when it scores the same held-out
    // slice, refused (naming the setting) when its seed draws another.
    let twin = model.join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    for f in ["study.json", "journal.jsonl"] {
        std::fs::copy(out.join(f), twin.join(f)).unwrap();
    }
    let compared = json_out(ttlora(&[
        "search",
        "report",
        path_str(&out),
        "--compare",
        path_str(&twin),
        "--json",
    ]));
    let listed = compared["compared"][0]["trials"].as_array().unwrap();
    assert_eq!(listed.len(), complete, "{compared}");
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("## Compared: twin"), "{md}");
    let mut study: serde_json::Value =
        serde_json::from_slice(&std::fs::read(twin.join("study.json")).unwrap()).unwrap();
    study["seed"] = 7.into();
    std::fs::write(twin.join("study.json"), study.to_string()).unwrap();
    let o = ttlora(&[
        "search",
        "report",
        path_str(&out),
        "--compare",
        path_str(&twin),
    ]);
    assert_clear_error(&o, &["twin", "its seed", "not comparable"]);

    if std::env::var_os("TTLORA_KEEP_REPORT").is_some() {
        let keep = std::path::PathBuf::from(std::env::var_os("TTLORA_KEEP_REPORT").unwrap());
        let _ = std::fs::create_dir_all(&keep);
        for f in std::fs::read_dir(out.join("report")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn a_study_killed_mid_write_or_mid_trial_ends_as_an_uninterrupted_one() {
    let (model, space, out) = setup("search-kill");
    let reference = json_out(run(&search_args(&model, &space, &out)));

    // SIGKILLed while appending a journal batch, at seeded random points, each restart
    // killed again at its own point: half a line is left on disk every time. The fault hook
    // exists only with debug assertions (`cargo test`'s profile, not `--release`).
    let torn = model.join("study-torn");
    let args = search_args(&model, &space, &torn);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let rounds = if cfg!(debug_assertions) {
        3
    } else {
        eprintln!("no kills mid-write: this build has no fault hook (no debug assertions)");
        0
    };
    for round in 0..rounds {
        // A 6-trial study appends about 20 batches; three kills in the first 5 of each run
        // all land before its end.
        let at = 2 + next(4);
        let killed = Command::new(env!("CARGO_BIN_EXE_ttlora"))
            .args(&args)
            .env("TTLORA_KILL_IN_APPEND", at.to_string())
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&killed.status),
            Some(9),
            "round {round}: SIGKILLed at append {at}"
        );
        let text = std::fs::read_to_string(torn.join("journal.jsonl")).unwrap();
        assert!(!text.ends_with('\n'), "a torn last line is left");
    }
    let resumed = json_out(run(&args));
    assert_eq!(outcome(&resumed), outcome(&reference));
    assert!(resumed["warnings"].as_array().unwrap().is_empty());
    assert_each_job_reported_once(&torn);

    // SIGKILLed at seeded random moments of its run, three times, then rerun to the end.
    let timed = model.join("study-timed");
    let args = search_args(&model, &space, &timed);
    let mut landed = 0;
    for _ in 0..3 {
        let mut child = spawn_quiet(&args);
        std::thread::sleep(std::time::Duration::from_millis(200 + next(1200)));
        landed += usize::from(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(landed > 0, "a kill landed before the study ended");
    let resumed = json_out(run(&args));
    assert_eq!(outcome(&resumed), outcome(&reference));
    assert_each_job_reported_once(&timed);

    // SIGKILLed during a trial (once trial 2's job is claimed), then rerun.
    let mid = model.join("study-mid");
    let args = search_args(&model, &space, &mid);
    let mut child = spawn_quiet(&args);
    let claimed = |e: &serde_json::Value| e["event"] == "claimed" && e["trial"] == 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(mid.join("journal.jsonl").is_file() && journal(&mid).iter().any(claimed)) {
        assert!(
            std::time::Instant::now() < deadline,
            "trial 2 never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = json_out(run(&args));
    assert_eq!(outcome(&resumed), outcome(&reference));
    assert_each_job_reported_once(&mid);
    // If the kill landed before trial 2 reported, the rerun recorded the dead worker's job
    // as failed and ran it again; no trial failed for good.
    let events = journal(&mid);
    for f in events.iter().filter(|e| e["event"] == "failed") {
        assert!(
            f["error"]
                .as_str()
                .unwrap()
                .contains("stopped before the job ended"),
            "{f}"
        );
    }
    assert!(
        resumed["trials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] != "failed")
    );
}

#[test]
fn two_workers_share_a_study_without_running_a_job_twice() {
    let (model, space, out) = setup("search-workers");
    let mut args = search_args(&model, &space, &out);
    args.extend(["--workers", "2", "-v"].map(String::from));
    let o = run(&args);
    // The cores are shared out: each worker process gets its share of threads.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let each = format!("2 worker processes, {} threads each", (cores / 2).max(1));
    assert!(stderr(&o).contains(&each), "{each}: {}", stderr(&o));
    let status = json_out(o);
    assert_eq!(status["trials"].as_array().unwrap().len(), 6);
    let events = journal(&out);
    let workers: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "claimed")
        .map(|e| e["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "both workers took jobs");
    let mut claims = BTreeSet::new();
    for e in events.iter().filter(|e| e["event"] == "claimed") {
        assert!(
            claims.insert((e["trial"].as_u64(), e["resource"].as_u64())),
            "claimed twice: {e}"
        );
    }
    let ids: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "created")
        .map(|e| e["trial"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..6).collect::<Vec<_>>(),
        "trial ids are unique and dense"
    );

    // The memory guard: when a job of this study has needed more than the machine has
    // available, fewer workers start, and the run says why.
    let text = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    let huge: Vec<String> = text
        .lines()
        .map(|l| {
            let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
            if e["event"] == "reported" {
                e["peak_rss_mib"] = 1e12.into();
            }
            e.to_string()
        })
        .collect();
    std::fs::write(out.join("journal.jsonl"), huge.join("\n") + "\n").unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let why = stderr(&o);
    assert!(
        why.contains("1 of 2 workers started") && why.contains("MiB are available"),
        "{why}"
    );
    assert!(why.contains("1 worker processes, "), "{why}");
}

/// HyperBand and TPE end to end. HyperBand shares trials over the two brackets of max_t 3,
/// η 3 (one starting at 1 epoch, one at 3), each trial stopping only at its own bracket's
/// rungs. TPE under ASHA draws the random sampler's first 10 configs (its start-up), then
/// its own once 10 trials have a score at a rung. The terminal tables of `status` and
/// `report` show the study.
#[test]
fn hyperband_runs_its_brackets_and_tpe_models_after_its_start_up() {
    let (model, space, out) = setup("search-hyperband");
    let twelve = |out: &Path, extra: &[&str]| {
        let mut args = search_args(&model, &space, out);
        let trials = args.iter().position(|a| a == "--trials").unwrap();
        args[trials + 1] = "12".into();
        args.extend(extra.iter().map(|s| s.to_string()));
        json_out(run(&args))
    };
    let status = twelve(
        &out,
        &["--scheduler", "hyperband", "--reduction-factor", "3"],
    );
    assert_eq!(status["trials"].as_array().unwrap().len(), 12, "{status}");
    let events = journal(&out);
    let mut first_rung: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    for e in events.iter().filter(|e| e["event"] == "created") {
        let trial = e["trial"].clone();
        let reported: Vec<u64> = events
            .iter()
            .filter(|r| r["event"] == "reported" && r["trial"] == trial)
            .map(|r| r["resource"].as_u64().unwrap())
            .collect();
        assert!(!reported.is_empty(), "trial {trial} ran");
        assert!(reported.iter().all(|r| *r == 1 || *r == 3), "{reported:?}");
        first_rung
            .entry(e["bracket"].as_u64().unwrap())
            .or_default()
            .insert(reported[0]);
    }
    // Each bracket starts its trials at one resource, and the two brackets at 1 and at 3.
    let starts: Vec<&BTreeSet<u64>> = first_rung.values().collect();
    assert_eq!(starts.len(), 2, "{first_rung:?}");
    assert!(starts.iter().all(|s| s.len() == 1), "{first_rung:?}");
    let all: BTreeSet<u64> = starts.iter().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(all, BTreeSet::from([1, 3]), "{first_rung:?}");

    // TPE with the same seed: the random draws first, then its own.
    let tpe = twelve(&model.join("tpe"), &["--sampler", "tpe"]);
    let configs = |s: &serde_json::Value| -> Vec<String> {
        let trials = s["trials"].as_array().unwrap();
        trials.iter().map(|t| t["config"].to_string()).collect()
    };
    let (tpe, random) = (configs(&tpe), configs(&status));
    assert_eq!(tpe[..10], random[..10]);
    assert_ne!(tpe[10], random[10]);
    assert_ne!(tpe[11], random[11]);

    // The terminal tables.
    let text = stdout(&ttlora(&["search", "status", path_str(&out)]));
    assert!(text.starts_with("12 of 12 trials started:"), "{text}");
    assert!(text.contains("trials per rung: 1: "), "{text}");
    assert!(text.contains("best on the held-out slice: trial"), "{text}");
    assert!(text.lines().count() >= 12 + 3, "a line per trial: {text}");
    let text = stdout(&ttlora(&["search", "report", path_str(&out)]));
    assert!(text.starts_with("12 trials; resource used "), "{text}");
    assert!(text.contains("Pareto front at max_t"), "{text}");
    assert!(text.contains("report written to"), "{text}");
}

/// A trial whose config the model cannot take fails once, for good, with its error (a retry
/// would fail the same way); a claim left by a worker that died is closed as failed by the
/// next worker and retried from where it stood.
#[test]
fn a_config_error_fails_for_good_and_a_dead_workers_claim_is_retried() {
    let (model, space, out) = setup("search-failures");
    // Targets are checked against the model only when a trial attaches them.
    std::fs::write(
        &space,
        "[ttlora]\nrank = [2]\ntargets = [[\"no_such_layer\"]]\n",
    )
    .unwrap();
    let mut args = search_args(&model, &space, &out);
    let trials = args.iter().position(|a| a == "--trials").unwrap();
    args[trials + 1] = "1".into();
    let o = run(&args);
    let status = json_out(o);
    assert_eq!(status["trials"][0]["status"], "failed", "{status}");
    let failed: Vec<_> = journal(&out)
        .into_iter()
        .filter(|e| e["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "no retry of a config error: {failed:?}");
    assert_eq!(failed[0]["permanent"], true);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_layer"),
        "{failed:?}"
    );

    // A working study, then a second trial claimed by a worker that no longer runs (no lock
    // held): the next run records that claim as failed and runs the trial again.
    let (model, space, out) = setup("search-dead-worker");
    let mut args = search_args(&model, &space, &out);
    let trials = args.iter().position(|a| a == "--trials").unwrap();
    args[trials + 1] = "1".into();
    json_out(run(&args));
    let events = journal(&out);
    let created = events.iter().find(|e| e["event"] == "created").unwrap();
    let mut lines = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    let mut orphan = created.clone();
    orphan["trial"] = 1.into();
    let claim = serde_json::json!({"event": "claimed", "trial": 1, "resource": 1,
        "worker": "gone-host:4242", "attempt": 1, "time": 0.0});
    lines.push_str(&format!("{orphan}\n{claim}\n"));
    std::fs::write(out.join("journal.jsonl"), lines).unwrap();
    let status = json_out(run(&args));
    assert_eq!(status["trials"][1]["resource"], 1, "{status}");
    let events = journal(&out);
    let closed = events
        .iter()
        .find(|e| e["event"] == "failed" && e["trial"] == 1)
        .unwrap();
    assert!(
        closed["error"]
            .as_str()
            .unwrap()
            .contains("gone-host:4242 stopped"),
        "{closed}"
    );
    assert!(closed.get("permanent").is_none(), "{closed}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "claimed" && e["trial"] == 1 && e["attempt"] == 2),
        "retried as attempt 2"
    );

    // Out of retries: a trial whose first two tries failed and whose third died with its
    // worker is failed for good (the study's --max-retries is 2), with no fourth try.
    let mut lines = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    let mut third = created.clone();
    third["trial"] = 2.into();
    lines.push_str(&format!("{third}\n"));
    for attempt in 1..=3 {
        let claim = serde_json::json!({"event": "claimed", "trial": 2, "resource": 1,
            "worker": "gone-host:4242", "attempt": attempt, "time": 0.0});
        lines.push_str(&format!("{claim}\n"));
        if attempt < 3 {
            let failed = serde_json::json!({"event": "failed", "trial": 2, "resource": 1,
                "attempt": attempt, "error": "out of memory", "time": 0.0});
            lines.push_str(&format!("{failed}\n"));
        }
    }
    std::fs::write(out.join("journal.jsonl"), lines).unwrap();
    let status = json_out(run(&args));
    assert_eq!(status["trials"][2]["status"], "failed", "{status}");
    let events = journal(&out);
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "claimed" && e["trial"] == 2 && e["attempt"] == 4),
        "no fourth try"
    );
    let text = stdout(&ttlora(&["search", "status", path_str(&out)]));
    assert!(text.contains("failed"), "{text}");
}

#[test]
fn bad_input_is_refused_before_any_training() {
    let (model, space, out) = setup("search-bad");
    let mut args = search_args(&model, &space, &out);
    let bad_space = model.join("bad.toml");
    std::fs::write(&bad_space, "[ttlora]\nrank = [0]\n").unwrap();
    let pos = args.iter().position(|a| a == "--space").unwrap();
    args[pos + 1] = bad_space.to_str().unwrap().to_string();
    let o = run(&args);
    assert_clear_error(&o, &["bad.toml", "[ttlora] rank = 0"]);
    assert!(!out.exists(), "nothing written");

    // A grid over a range.
    let args = {
        let mut a = search_args(&model, &space, &out);
        a.extend(["--sampler".into(), "grid".into()]);
        a
    };
    assert_clear_error(&run(&args), &["grid needs lists only"]);

    // Another study's folder: the differing settings are named.
    let ok = search_args(&model, &space, &out);
    assert!(run(&ok).status.success());
    let mut other = ok.clone();
    let pos = other.iter().position(|a| a == "--seed").unwrap();
    other[pos + 1] = "2".into();
    assert_clear_error(&run(&other), &["other settings", "seed (study: 1, now: 2)"]);
    // --resume with a study flag.
    let o = ttlora(&[
        "search",
        "--resume",
        "--out",
        path_str(&out),
        "--trials",
        "9",
    ]);
    assert_clear_error(&o, &["--resume continues", "--trials"]);
    // A scheduler's flags without a scheduler.
    let mut none = search_args(&model, &space, &model.join("study-3"));
    none.extend(["--scheduler", "none", "--reduction-factor", "4"].map(String::from));
    assert_clear_error(&run(&none), &["--reduction-factor is for --scheduler asha"]);
    let mut none = search_args(&model, &space, &model.join("study-3"));
    none.extend(["--scheduler", "none", "--grace-period", "2"].map(String::from));
    assert_clear_error(&run(&none), &["--grace-period is for --scheduler asha"]);
    // The scheduler's resource in the space.
    let epochs_space = model.join("epochs.toml");
    std::fs::write(&epochs_space, "[ttlora]\nrank = [2]\nepochs = [1, 2]\n").unwrap();
    let o = run(&search_args(&model, &epochs_space, &model.join("study-3")));
    assert_clear_error(&o, &["epochs", "[ttlora] table", "cannot be searched"]);
    // Steps without the interval they are counted in.
    let mut steps = search_args(&model, &space, &model.join("study-3"));
    steps.extend(["--resource", "steps"].map(String::from));
    assert_clear_error(&run(&steps), &["--resource steps needs --grace-period"]);
    assert!(!model.join("study-3").exists(), "nothing written");
    // Slurm's flags without the Slurm executor.
    let mut local = search_args(&model, &space, &model.join("study-2"));
    local.extend(["--partition".into(), "gpu".into()]);
    assert_clear_error(&run(&local), &["--partition is for --executor slurm"]);
    assert!(!model.join("study-2").exists(), "nothing written");
    // status of a folder that is no study.
    let o = ttlora(&["search", "status", path_str(&model)]);
    assert_clear_error(&o, &["not a study folder"]);
    assert!(stderr(&o).lines().count() <= 2);
}

/// Submission without `--wait`, against a stand-in `sbatch` that records its arguments: with
/// `--json` the job id comes back as JSON, and each task's log path reaches sbatch as one
/// argument even when the study's path holds a space.
#[cfg(unix)]
#[test]
fn a_slurm_submission_prints_its_job_as_json_and_passes_the_log_path_whole() {
    use std::os::unix::fs::PermissionsExt;
    let (model, space, _) = setup("search-sbatch");
    let bin = model.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("sbatch");
    let argv = model.join("sbatch-args.txt");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\" >> '{}'; done\necho '4242;cluster'\n",
            argv.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = model.join("a study");
    let mut args = search_args(&model, &space, &out);
    args.extend(["--executor", "slurm", "--workers", "2"].map(String::from));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_ttlora"))
        .args(&args)
        .env("PATH", path)
        .output()
        .unwrap();
    let submitted = json_out(o);
    assert_eq!(submitted["slurm_job"], "4242", "{submitted}");
    assert_eq!(submitted["tasks"], 2);
    let given = std::fs::read_to_string(&argv).unwrap();
    let study = std::fs::canonicalize(&out).unwrap();
    let lines: Vec<&str> = given.lines().collect();
    assert!(lines.contains(&"--parsable"), "{given}");
    let log = format!("--output={}/slurm/worker-%A_%a.out", study.display());
    assert!(lines.contains(&log.as_str()), "{given}");
    assert_eq!(
        lines.last().copied(),
        Some(study.join("slurm/search.sbatch").to_str().unwrap())
    );
}

/// Whether a Slurm cluster answers here (`scripts/slurm_local.sh` starts a one-node one).
fn slurm_reachable() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && {
                let states = String::from_utf8_lossy(&o.stdout);
                states.contains("idle") || states.contains("mix")
            }
        })
}

#[test]
fn a_slurm_array_of_two_workers_runs_the_study() {
    if !slurm_reachable() {
        eprintln!(
            "skipped: no Slurm cluster reachable (`sinfo`); scripts/slurm_local.sh starts a \
             one-node cluster, as .ci/run does"
        );
        return;
    }
    let (model, space, out) = setup("search-slurm");
    let mut args = search_args(&model, &space, &out);
    args.extend(
        [
            "--executor",
            "slurm",
            "--workers",
            "2",
            "--cpus-per-task",
            "1",
            "--wait",
        ]
        .map(String::from),
    );
    let status = json_out(run(&args));
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    assert!(
        trials
            .iter()
            .all(|t| t["status"] == "complete" || t["status"] == "pruned"),
        "{status}"
    );
    let script = std::fs::read_to_string(out.join("slurm/search.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-1"), "{script}");
    assert!(script.contains("search worker"), "{script}");
    let logs = std::fs::read_dir(out.join("slurm"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("worker-")
        })
        .count();
    assert_eq!(logs, 2, "one log per array task");
    let events = journal(&out);
    let workers: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "worker_done")
        .map(|e| e["worker"].as_str().unwrap())
        .collect();
    assert!(!workers.is_empty(), "the array's workers ran jobs");
}

#[test]
fn with_steps_as_the_resource_each_rung_is_scored_at_its_step() {
    let (model, space, out) = setup("search-steps");
    let mut args = search_args(&model, &space, &out);
    for (flag, value) in [("--max-t", "6"), ("--trials", "3")] {
        let pos = args.iter().position(|a| a == flag).unwrap();
        args[pos + 1] = value.into();
    }
    args.extend(["--resource", "steps", "--grace-period", "2"].map(String::from));
    let status = json_out(run(&args));
    assert_eq!(status["per_rung"]["2"], 3, "{status}");
    assert_eq!(
        status["per_rung"]["6"], 1,
        "the top third went on: {status}"
    );
    let reports: Vec<serde_json::Value> = journal(&out)
        .into_iter()
        .filter(|e| e["event"] == "reported")
        .collect();
    assert_eq!(reports.len(), 4);
    for r in &reports {
        assert_eq!(
            r["steps"], r["resource"],
            "a rung is scored at its step: {r}"
        );
        let last = r["curve"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last[0], r["resource"],
            "the last evaluation is the rung's: {r}"
        );
    }
    // An evaluation every grace period: the promoted job, from step 2 to 6, at 4 and 6.
    let promoted = reports.iter().find(|r| r["resource"] == 6).unwrap();
    let at: Vec<u64> = promoted["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(at, [4, 6], "{promoted}");
}

/// Explicit TT shapes and per-bond ranks are searchable settings: each trial trains the
/// shape and ranks it drew, and its parameter count is the cores' sizes worked by hand.
#[test]
fn explicit_shapes_and_per_bond_ranks_are_searched() {
    let (model, space, out) = setup("search-shapes");
    // 32 × 32 (tiny BERT's query and value) as [4, 8 | 4, 8]: four cores, three bonds.
    std::fs::write(
        &space,
        "[ttlora]\nin_factors = [[4, 8]]\nout_factors = [[4, 8]]\n\
         ranks = [[2, 3, 2], [4, 4, 4]]\nlr = [1e-2]\n",
    )
    .unwrap();
    let mut args = search_args(&model, &space, &out);
    for (flag, value) in [("--max-t", "1"), ("--trials", "2")] {
        let pos = args.iter().position(|a| a == flag).unwrap();
        args[pos + 1] = value.into();
    }
    args.extend(["--sampler", "grid", "--scheduler", "none"].map(String::from));
    json_out(run(&args));
    let reports: Vec<serde_json::Value> = journal(&out)
        .into_iter()
        .filter(|e| e["event"] == "reported")
        .collect();
    assert_eq!(reports.len(), 2);
    // Cores r(k-1) × n(k) × r(k) over the input factors then the output ones reversed,
    // [4, 8, 8, 4]: 8 + 48 + 48 + 8 = 112 for ranks 2, 3, 2 and 16 + 128 + 128 + 16 = 288
    // for 4, 4, 4; four adapted matrices (query and value of two layers) each.
    for (r, (ranks, params)) in reports.iter().zip([([2, 3, 2], 448), ([4, 4, 4], 1152)]) {
        assert_eq!(r["params"], params, "{r}");
        let folder = Path::new(r["adapter"].as_str().unwrap());
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(folder.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let text = config.to_string();
        assert!(
            text.contains(&format!("\"ranks\":{}", serde_json::json!(ranks)))
                && text.contains("\"in_factors\":[4,8]"),
            "{text}"
        );
    }
}

/// Relative `--model`, `--data` paths are stored absolute in the study, so a worker started
/// from another folder (a Slurm task, a second terminal) reads the same files.
#[test]
fn relative_paths_are_stored_absolute() {
    let (model, space, out) = setup("search-relative");
    let cwd = model.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::os::unix::fs::symlink(bundled_data(), cwd.join("data")).unwrap();
    let mut args = search_args(&model, &space, &out);
    let mut set = |flag: &str, value: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.to_string();
    };
    set("--model", "..");
    set("--data", "data");
    set("--trials", "1");
    set("--max-t", "1");
    let o = Command::new(env!("CARGO_BIN_EXE_ttlora"))
        .args(&args)
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let study = study_json(&out);
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(study["model"], canonical(&model));
    assert_eq!(study["data"], canonical(&bundled_data()));
}

/// A promoted trial continues from its rung's checkpoint as if it had never paused: its
/// held-out curve and its training log over its jobs are those of the same config trained
/// straight to max_t (same seed, so same initialisation, data order and learning-rate
/// schedule).
#[test]
fn a_promoted_trial_continues_as_if_never_paused() {
    let (model, _, out) = setup("search-promoted");
    let space = |ranks: &str| {
        let path = model.join(format!("grid-{}.toml", ranks.replace(", ", "-")));
        let text = format!("[ttlora]\nrank = [{ranks}]\nalpha = [8]\nlr = [1e-2]\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    // ASHA over three configs, η 3, rungs at 1 and 3 epochs: one trial is promoted.
    let mut args = search_args(&model, &space("2, 4, 8"), &out);
    args.extend(["--sampler", "grid"].map(String::from));
    assert!(run(&args).status.success());
    let events = journal(&out);
    let curve_of = |events: &[serde_json::Value], trial: u64| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["event"] == "reported" && e["trial"] == trial)
            .flat_map(|e| e["curve"].as_array().unwrap().clone())
            .collect()
    };
    let promoted = events
        .iter()
        .find(|e| e["event"] == "reported" && e["resource"] == 3)
        .expect("a trial promoted to the second rung")["trial"]
        .as_u64()
        .unwrap();
    let rank = events
        .iter()
        .find(|e| e["event"] == "created" && e["trial"] == promoted)
        .unwrap()["config"]["params"]["rank"]
        .to_string();
    let paused = curve_of(&events, promoted);
    assert_eq!(
        paused.len(),
        3,
        "scored after epochs 1, 2 and 3: {paused:?}"
    );

    // The same config alone, without a scheduler: one job straight to max_t.
    let straight = model.join("straight");
    let mut args = search_args(&model, &space(&rank), &straight);
    args.extend(["--sampler", "grid", "--scheduler", "none"].map(String::from));
    assert!(run(&args).status.success());
    assert_eq!(curve_of(&journal(&straight), 0), paused);
    // Step by step: the same losses, learning rates and gradient norms, bit for bit (the
    // held-out score of so tiny a model may not move).
    let steps = |study: &Path, trial: u64| -> Vec<(u64, String, String, String)> {
        json_lines(&study.join(format!("trials/{trial:06}/train_log.jsonl")))
            .into_iter()
            .filter(|e| e["event"] == "step")
            .map(|e| {
                let f = |k: &str| e[k].to_string();
                (
                    e["step"].as_u64().unwrap(),
                    f("loss"),
                    f("lr"),
                    f("grad_norm"),
                )
            })
            .collect()
    };
    let resumed = steps(&out, promoted);
    assert_eq!(resumed.len(), 9, "three epochs of three batches");
    assert_eq!(steps(&straight, 0), resumed);
}
