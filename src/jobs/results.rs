//! Aggregating finished runs (`eval_results.json` files) into the mean ± std tables of
//! RESULTS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::jobs::record::RunRecord;

/// One finished run as a row of the tables, read from its `eval_results.json`.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Where it was read from.
    pub path: PathBuf,
    /// Task name.
    pub task: String,
    /// Method name.
    pub method: String,
    /// The config the run used over this version's defaults for its method, compact JSON
    /// without null fields: a field added since the run was made shows its default, so runs
    /// of the same settings group together (files written before ttlora recorded
    /// `resolved_config`: the config as given over the defaults).
    pub config: String,
    /// Seed (None in files written before ttlora recorded it).
    pub seed: Option<u64>,
    /// The task's primary metric.
    pub primary_metric: String,
    /// Official dev metrics.
    pub dev_metrics: BTreeMap<String, f64>,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Trainable head parameters.
    pub head_params: usize,
    /// Wall seconds of the job.
    pub wall_s: f64,
    /// Peak resident memory, MiB (None in files written before ttlora recorded it).
    pub peak_rss_mib: Option<f64>,
    /// Size of the saved weights file, bytes (None before ttlora recorded it).
    pub adapter_file_bytes: Option<u64>,
    /// Training examples used.
    pub train_examples: usize,
    /// Epochs (None in files written before ttlora recorded it).
    pub epochs: Option<usize>,
    /// Peak learning rate (None in files written before ttlora recorded it).
    pub lr: Option<f64>,
}

/// Reads one `eval_results.json` into a table row.
///
/// # Errors
/// An unreadable file or one that is not a run record.
pub fn read_run(path: &Path) -> Result<RunRow> {
    let r = RunRecord::read(path)?;
    let train = r.train_config.as_ref();
    Ok(RunRow {
        path: path.to_path_buf(),
        config: run_config(r.recorded_config(), &r.method),
        task: r.task,
        method: r.method,
        seed: r.seed,
        primary_metric: r.primary_metric,
        dev_metrics: r.dev_metrics,
        adapter_params: r.params.adapter,
        head_params: r.params.head,
        wall_s: r.wall_s,
        peak_rss_mib: r.peak_rss_mib,
        adapter_file_bytes: r.adapter_file_bytes,
        train_examples: r.examples.0,
        epochs: train.map(|t| t.epochs),
        lr: train.map(|t| t.lr),
    })
}

/// The recorded config of a run of `method` laid over the method's current defaults (as
/// recorded when the method is unknown to this version).
fn run_config(recorded: &serde_json::Value, method: &str) -> String {
    let empty = serde_json::json!({});
    let recorded = if recorded.is_null() { &empty } else { recorded };
    match crate::adapters::method(method) {
        Ok(m) => compact_config(&crate::adapters::resolved_config(m, recorded)),
        Err(_) => compact_config(recorded),
    }
}

/// A config as one-line JSON, null fields (unset options) left out.
fn compact_config(config: &serde_json::Value) -> String {
    match config.as_object() {
        Some(fields) => serde_json::Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
        .to_string(),
        None => config.to_string(),
    }
}

/// Every `eval_results.json` directly inside the sub-folders of `root`, sorted by path.
///
/// # Errors
/// An unreadable folder or result file.
pub fn read_runs(root: &Path) -> Result<Vec<RunRow>> {
    let entries = std::fs::read_dir(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        // A hidden folder is a save in progress or one a kill left behind, not a run.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("eval_results.json"))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| read_run(p)).collect()
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// A learning rate as the tables print it (`5e-3`; `?` where not recorded).
fn lr_label(lr: Option<f64>) -> String {
    lr.map_or_else(|| "?".into(), |lr| format!("{lr:.0e}"))
}

fn or_unknown<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "?".into(), |x| x.to_string())
}

/// A markdown table: one row per (task, method, lr, epochs, training examples) with every dev
/// metric as mean ± std over the seeds found, parameters and mean wall time per run. Values a
/// result file does not record show as `?`.
pub fn markdown_table(runs: &[RunRow]) -> String {
    type Key = (String, String, String, String, String, usize);
    let mut groups: BTreeMap<Key, Vec<&RunRow>> = BTreeMap::new();
    for r in runs {
        let lr = lr_label(r.lr);
        groups
            .entry((
                r.task.clone(),
                r.method.clone(),
                r.config.clone(),
                lr,
                or_unknown(r.epochs),
                r.train_examples,
            ))
            .or_default()
            .push(r);
    }
    let mut out = String::from(
        "| task | method | config | dev metrics (mean ± std) | seeds | train ex. × epochs | lr | adapter params | + head | file KiB | wall s / run | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for ((task, method, config, lr, epochs, examples), rs) in &groups {
        let first = rs[0];
        let mut metrics = Vec::new();
        // Primary metric first, then the others in name order.
        let mut names: Vec<&String> = first.dev_metrics.keys().collect();
        names.sort_by_key(|n| (**n != first.primary_metric, (*n).clone()));
        for name in names {
            let xs: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.dev_metrics.get(name).copied())
                .map(|x| as_shown(name, x))
                .collect();
            let (m, s) = mean_std(&xs);
            metrics.push(format!("{name} {m:.2} ± {s:.2}"));
        }
        let seeds: Vec<String> = rs.iter().map(|r| or_unknown(r.seed)).collect();
        let (wall, _) = mean_std(&rs.iter().map(|r| r.wall_s).collect::<Vec<_>>());
        let file = first
            .adapter_file_bytes
            .map_or_else(|| "?".into(), |b| format!("{:.0}", b as f64 / 1024.0));
        let rss: Vec<f64> = rs.iter().filter_map(|r| r.peak_rss_mib).collect();
        let rss = if rss.is_empty() {
            "?".into()
        } else {
            format!("{:.0}", mean_std(&rss).0)
        };
        let _ = writeln!(
            out,
            "| {task} | {method} | `{config}` | {} | {} | {examples} × {epochs} | {lr} | {} | {} | {file} | {wall:.0} | {rss} |",
            metrics.join(", "),
            seeds.join(","),
            first.adapter_params,
            first.adapter_params + first.head_params,
        );
    }
    out
}

/// The tasks of the paper's GLUE table, in its column order.
const PIVOT_TASKS: [&str; 5] = ["sst2", "mrpc", "cola", "rte", "stsb"];

/// The paper's layout: one row per method (and configuration), one column per task holding
/// the primary dev metric as mean ± std (n seeds), then the adapter's trainable parameters,
/// its largest saved weights file, the mean wall time per run and the largest peak RSS over
/// all its runs. A method run with several configurations or learning rates gets a numbered
/// row each; every row's learning rate and config are listed under the table. Tasks outside
/// the paper's five are left out.
pub fn pivot_table(runs: &[RunRow]) -> String {
    let mut groups: BTreeMap<(String, String, String), Vec<&RunRow>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| PIVOT_TASKS.contains(&r.task.as_str()))
    {
        groups
            .entry((r.method.clone(), r.config.clone(), lr_label(r.lr)))
            .or_default()
            .push(r);
    }
    let mut per_method: BTreeMap<&str, usize> = BTreeMap::new();
    for (method, _, _) in groups.keys() {
        *per_method.entry(method.as_str()).or_default() += 1;
    }
    let mut out = String::from("| method |");
    for t in PIVOT_TASKS {
        let _ = write!(out, " {t} |");
    }
    out.push_str(" trainable params | file KiB | wall s / run | peak RSS MiB |\n|---|");
    out.push_str(&"---:|".repeat(PIVOT_TASKS.len() + 4));
    out.push('\n');
    let mut legend = String::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for ((method, config, lr), rs) in &groups {
        let label = if per_method[method.as_str()] > 1 {
            let k = seen.entry(method.as_str()).or_default();
            *k += 1;
            format!("{method} ({k})")
        } else {
            method.clone()
        };
        let _ = writeln!(legend, "- {label}: lr {lr}, `{config}`");
        let _ = write!(out, "| {label} |");
        for t in PIVOT_TASKS {
            let xs: Vec<f64> = rs
                .iter()
                .filter(|r| r.task == t)
                .filter_map(|r| r.dev_metrics.get(&r.primary_metric).map(|x| 100.0 * x))
                .collect();
            if xs.is_empty() {
                out.push_str(" — |");
            } else {
                let (m, sd) = mean_std(&xs);
                let _ = write!(out, " {m:.1} ± {sd:.1} ({}) |", xs.len());
            }
        }
        let file = rs.iter().filter_map(|r| r.adapter_file_bytes).max();
        let rss = rs
            .iter()
            .filter_map(|r| r.peak_rss_mib)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let (wall, _) = mean_std(&rs.iter().map(|r| r.wall_s).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            " {} | {} | {wall:.0} | {} |",
            rs[0].adapter_params,
            file.map_or_else(|| "?".into(), |b| format!("{:.0}", b as f64 / 1024.0)),
            rss.map_or_else(|| "?".into(), |m| format!("{m:.0}")),
        );
    }
    out.push('\n');
    out.push_str(&legend);
    out
}

/// A metric as the tables show it: fractions (accuracy, F1, correlations) in percent;
/// perplexity and losses as they are.
fn as_shown(name: &str, x: f64) -> f64 {
    if name.ends_with("perplexity") || name.ends_with("loss") {
        x
    } else {
        100.0 * x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn recorded_config_is_laid_over_the_current_defaults() {
        let dir = crate::models::test_util::temp_dir("results", "resolved");
        let path = dir.join("eval_results.json");
        let lora = crate::adapters::method("lora").unwrap();
        let current = |given| compact_config(&crate::adapters::resolved_config(lora, &given));
        let mut v = serde_json::json!({
            "task": "rte", "method": "lora", "method_config": {},
            "primary_metric": "accuracy", "dev_metrics": {"accuracy": 0.5},
            "params": {"adapter": 10, "head": 2}, "wall_s": 1.0, "examples": [5, 1, 3]
        });
        std::fs::write(&path, v.to_string()).unwrap();
        assert_eq!(
            read_run(&path).unwrap().config,
            current(serde_json::json!({}))
        );
        // A run made before `use_dora` existed groups with today's run of the same settings.
        v["resolved_config"] = serde_json::json!({"lora_alpha": 16.0, "r": 8, "lora_dropout": 0.0, "use_rslora": false});
        std::fs::write(&path, v.to_string()).unwrap();
        let config = read_run(&path).unwrap().config;
        assert_eq!(config, current(serde_json::json!({"lora_alpha": 16.0})));
        assert!(config.contains(r#""use_dora":false"#), "{config}");
        // A method this version does not know: the record as it is, null fields left out.
        v["method"] = "retired".into();
        v["resolved_config"] = serde_json::json!({"alpha": 8.0, "ranks": null});
        std::fs::write(&path, v.to_string()).unwrap();
        assert_eq!(read_run(&path).unwrap().config, r#"{"alpha":8.0}"#);
    }

    #[test]
    fn table_groups_seeds_per_task_and_method() {
        let run = |seed, acc| RunRow {
            path: PathBuf::new(),
            task: "rte".into(),
            method: "ttlora".into(),
            config: "{}".into(),
            seed: Some(seed),
            primary_metric: "accuracy".into(),
            dev_metrics: BTreeMap::from([("accuracy".to_string(), acc)]),
            adapter_params: 7680,
            head_params: 770,
            wall_s: 100.0,
            peak_rss_mib: Some(500.0),
            adapter_file_bytes: Some(33 * 1024),
            train_examples: 2365,
            epochs: Some(3),
            lr: Some(5e-3),
        };
        let t = markdown_table(&[run(1, 0.6), run(2, 0.7)]);
        assert!(
            t.contains("| rte | ttlora | `{}` | accuracy 65.00 ± 7.07 | 1,2 | 2365 × 3 |"),
            "{t}"
        );
        assert!(t.contains("| 5e-3 | 7680 | 8450 | 33 | 100 | 500 |"), "{t}");
        let old = RunRow {
            seed: None,
            peak_rss_mib: None,
            adapter_file_bytes: None,
            epochs: None,
            lr: None,
            ..run(1, 0.5)
        };
        let t = markdown_table(&[old]);
        assert!(
            t.contains("accuracy 50.00 ± 0.00 | ? | 2365 × ? | ? |"),
            "{t}"
        );
    }

    #[test]
    fn pivot_puts_methods_in_rows_and_tasks_in_columns() {
        let rec = |task: &str, method: &str, config: &str, seed: u64, x: f64| RunRow {
            path: PathBuf::new(),
            task: task.into(),
            method: method.into(),
            config: config.into(),
            seed: Some(seed),
            primary_metric: "accuracy".into(),
            dev_metrics: BTreeMap::from([("accuracy".to_string(), x)]),
            adapter_params: 100,
            head_params: 2,
            wall_s: 10.0,
            peak_rss_mib: Some(300.0 + seed as f64),
            adapter_file_bytes: Some(2048),
            train_examples: 10,
            epochs: Some(1),
            lr: Some(1e-3),
        };
        let t = pivot_table(&[
            rec("rte", "lora", "{}", 1, 0.5),
            rec("rte", "lora", "{}", 2, 0.7),
            rec("sst2", "lora", "{}", 1, 0.9),
            rec("rte", "adapter", "{\"variant\":\"a\"}", 1, 0.6),
            rec("rte", "adapter", "{\"variant\":\"b\"}", 1, 0.4),
            rec("qqp", "lora", "{}", 1, 0.1),
            rec("rte", "prompt", "{}", 1, 0.5),
            RunRow {
                lr: Some(1e-2),
                ..rec("rte", "prompt", "{}", 1, 0.6)
            },
        ]);
        assert!(
            t.contains(
                "| lora | 90.0 ± 0.0 (1) | — | — | 60.0 ± 14.1 (2) | — | 100 | 2 | 10 | 302 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| adapter (1) |") && t.contains("| adapter (2) |"),
            "{t}"
        );
        assert!(
            t.contains("- adapter (2): lr 1e-3, `{\"variant\":\"b\"}`"),
            "{t}"
        );
        // Another learning rate is another row, never averaged in.
        assert!(t.contains("- prompt (1): lr 1e-2, `{}`"), "{t}");
        assert!(
            t.contains("| prompt (1) | — | — | — | 60.0 ± 0.0 (1) |"),
            "{t}"
        );
        assert!(!t.contains("qqp"), "{t}");
    }
}
