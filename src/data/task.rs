//! The task registry: every GLUE/SuperGLUE task ttlora knows, as data.
//!
//! A [`TaskSpec`] says where a task's files live under a data root (the folder holding `glue/`
//! and `superglue/`), how to read them ([`Format`]), its labels and its metrics. Lookup by name
//! is [`task`]. The SuperGLUE version of RTE is registered as `superglue-rte` (alias
//! `rte-superglue`); plain `rte` is GLUE's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::data::Metric;
use crate::error::{Error, Result};

/// A split of a task's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The (single) development split; SuperGLUE calls it `val`.
    Dev,
    /// MNLI's in-genre development split.
    DevMatched,
    /// MNLI's cross-genre development split.
    DevMismatched,
}

impl Split {
    /// Every split, in declaration order.
    pub const ALL: &'static [Split] = &[
        Split::Train,
        Split::Dev,
        Split::DevMatched,
        Split::DevMismatched,
    ];

    /// The split's name: `train`, `dev`, `dev_matched`, `dev_mismatched`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::DevMatched => "dev_matched",
            Split::DevMismatched => "dev_mismatched",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;

    /// Accepts the names of [`Split::name`] (case-insensitive, `-` for `_`) and `val` for `dev`.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        if wanted == "val" || wanted == "validation" {
            return Ok(Split::Dev);
        }
        Split::ALL
            .iter()
            .copied()
            .find(|sp| sp.name() == wanted)
            .ok_or_else(|| Error::DataFile {
                path: PathBuf::from("split"),
                reason: format!(
                    "unknown split `{s}`; expected one of train, dev, dev_matched, dev_mismatched"
                ),
            })
    }
}

/// What a task's label is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelKind {
    /// Classes, named as they appear in the files, in label-id order.
    Classes(&'static [&'static str]),
    /// A real-valued score (regression).
    Score,
}

impl LabelKind {
    /// Number of model outputs: the number of classes, or 1 for a score.
    pub fn num_labels(&self) -> usize {
        match self {
            LabelKind::Classes(c) => c.len(),
            LabelKind::Score => 1,
        }
    }
}

/// A column of a tab-separated file: found by `name` when the file has a header, by 0-based
/// `index` when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The header name.
    pub name: &'static str,
    /// The 0-based position in header-less files (`None`: the column needs a header).
    pub index: Option<usize>,
}

/// How a task's files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// GLUE TSV: UTF-8 (a leading BOM is dropped), split on tabs, **no quoting** (GLUE rows
    /// hold raw `"`). With `header`, columns are found by name in the first line, so the
    /// official 15-column MNLI and 6-column QQP files read as well as the 4-column derived ones.
    /// Without `header` (CoLA), rows must have `width` fields and columns are taken by index;
    /// a first line that contains the text column's name is still taken as a header (CoLA's
    /// unlabeled `test.tsv` has one).
    Tsv {
        /// Whether train/dev files start with a header line.
        header: bool,
        /// Fields per row in header-less files.
        width: usize,
        /// The first text.
        text_a: Column,
        /// The second text of pair tasks.
        text_b: Option<Column>,
        /// The label. A header without it means an unlabeled (test) file.
        label: Column,
    },
    /// SuperGLUE JSON Lines: one object per line, texts and label under these keys. A label
    /// may be a string, a number or a bool (`false`/`true` map to class names of that spelling).
    Jsonl {
        /// Key of the first text.
        text_a: &'static str,
        /// Key of the second text.
        text_b: Option<&'static str>,
        /// Key of the label; absent on every line means an unlabeled (test) file.
        label: &'static str,
    },
}

/// The files that may hold one split, relative to the task folder, official name first: the
/// first that exists is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitFiles {
    /// The split.
    pub split: Split,
    /// Candidate file names, in order of preference.
    pub files: &'static [&'static str],
    /// Why the split may be missing from the offline copy (empty when it is there).
    pub missing_note: &'static str,
}

/// One registered task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskSpec {
    /// The canonical name used on the command line (`sst2`, `mnli`, `superglue-rte`, …).
    pub name: &'static str,
    /// The name as the benchmark writes it (`SST-2`, `STS-B`, `RTE (SuperGLUE)`, …).
    pub display: &'static str,
    /// Other accepted names (besides case and `-`/`_` differences).
    pub aliases: &'static [&'static str],
    /// `glue` or `superglue`.
    pub benchmark: &'static str,
    /// The task's folder under the data root, e.g. `glue/SST-2`.
    pub folder: &'static str,
    /// Classes or score.
    pub labels: LabelKind,
    /// The metrics reported, primary first.
    pub metrics: &'static [Metric],
    /// The metric used for model selection.
    pub primary: Metric,
    /// How its files are laid out.
    pub format: Format,
    /// Its labelled splits.
    pub splits: &'static [SplitFiles],
}

impl TaskSpec {
    /// Number of model outputs: the number of classes, or 1 for a regression task.
    pub fn num_labels(&self) -> usize {
        self.labels.num_labels()
    }

    /// Whether the task predicts a score (STS-B).
    pub fn is_regression(&self) -> bool {
        matches!(self.labels, LabelKind::Score)
    }

    /// Whether the task's examples are text pairs.
    pub fn is_pair(&self) -> bool {
        match self.format {
            Format::Tsv { text_b, .. } => text_b.is_some(),
            Format::Jsonl { text_b, .. } => text_b.is_some(),
        }
    }

    /// The class names in label-id order (empty for a regression task).
    pub fn class_names(&self) -> &'static [&'static str] {
        match self.labels {
            LabelKind::Classes(c) => c,
            LabelKind::Score => &[],
        }
    }

    /// The splits this task has, in registry order.
    pub fn split_names(&self) -> Vec<Split> {
        self.splits.iter().map(|s| s.split).collect()
    }

    /// The splits to report results on: `dev`, or MNLI's `dev_matched` and `dev_mismatched`.
    pub fn eval_splits(&self) -> Vec<Split> {
        self.split_names()
            .into_iter()
            .filter(|s| *s != Split::Train)
            .collect()
    }

    /// The file holding `split` under the data root `root` (the folder with `glue/` and
    /// `superglue/`).
    ///
    /// # Errors
    /// [`Error::DataFile`] when the task has no such split (listing those it has), or when no
    /// candidate file exists (naming the expected path and, e.g., that MNLI train is absent
    /// from the offline copy).
    pub fn split_file(&self, root: &Path, split: Split) -> Result<PathBuf> {
        let dir = root.join(self.folder);
        let Some(entry) = self.splits.iter().find(|s| s.split == split) else {
            let have: Vec<_> = self.splits.iter().map(|s| s.split.name()).collect();
            return Err(Error::DataFile {
                path: dir,
                reason: format!(
                    "task {} has no `{split}` split; it has: {}",
                    self.name,
                    have.join(", ")
                ),
            });
        };
        if let Some(found) = entry
            .files
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
        {
            return Ok(found);
        }
        let expected = dir.join(entry.files[0]);
        let mut reason = format!("no such file: the {} {split} split", self.display);
        if entry.files.len() > 1 {
            reason.push_str(&format!(
                " (looked for {} in {})",
                entry.files.join(" and "),
                dir.display()
            ));
        }
        if !entry.missing_note.is_empty() {
            reason.push_str("; ");
            reason.push_str(entry.missing_note);
        }
        if !root.join(self.benchmark).is_dir() {
            reason.push_str(&format!(
                "; the data root {} has no `{}/` folder (it must hold glue/ and superglue/)",
                root.display(),
                self.benchmark
            ));
        }
        Err(Error::DataFile {
            path: expected,
            reason,
        })
    }
}

const fn col(name: &'static str) -> Column {
    Column { name, index: None }
}

const fn tsv(text_a: &'static str, text_b: Option<&'static str>, label: &'static str) -> Format {
    Format::Tsv {
        header: true,
        width: 0,
        text_a: col(text_a),
        text_b: match text_b {
            Some(b) => Some(col(b)),
            None => None,
        },
        label: col(label),
    }
}

const fn jsonl(text_a: &'static str, text_b: &'static str, label: &'static str) -> Format {
    Format::Jsonl {
        text_a,
        text_b: Some(text_b),
        label,
    }
}

const fn files(split: Split, files: &'static [&'static str]) -> SplitFiles {
    SplitFiles {
        split,
        files,
        missing_note: "",
    }
}

const GLUE_TRAIN_DEV: &[SplitFiles] = &[
    files(Split::Train, &["train.tsv"]),
    files(Split::Dev, &["dev.tsv"]),
];
const SUPERGLUE_TRAIN_DEV: &[SplitFiles] = &[
    files(Split::Train, &["train.jsonl"]),
    files(Split::Dev, &["val.jsonl"]),
];
const BINARY: LabelKind = LabelKind::Classes(&["0", "1"]);
const ENTAIL2: LabelKind = LabelKind::Classes(&["entailment", "not_entailment"]);
const ACC: &[Metric] = &[Metric::Accuracy];
const F1_ACC: &[Metric] = &[Metric::F1, Metric::Accuracy];

/// Every registered task. GLUE label ids follow Hugging Face `nyu-mll/glue`; SuperGLUE's follow
/// `super_glue` (BoolQ: false = 0, true = 1; CB: entailment, contradiction, neutral).
pub const TASKS: &[TaskSpec] = &[
    TaskSpec {
        name: "cola",
        display: "CoLA",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/CoLA",
        labels: BINARY,
        metrics: &[Metric::Mcc, Metric::Accuracy],
        primary: Metric::Mcc,
        format: Format::Tsv {
            header: false,
            width: 4,
            text_a: Column {
                name: "sentence",
                index: Some(3),
            },
            text_b: None,
            label: Column {
                name: "label",
                index: Some(1),
            },
        },
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "sst2",
        display: "SST-2",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/SST-2",
        labels: BINARY,
        metrics: ACC,
        primary: Metric::Accuracy,
        format: tsv("sentence", None, "label"),
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "mrpc",
        display: "MRPC",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/MRPC",
        labels: BINARY,
        metrics: F1_ACC,
        primary: Metric::F1,
        format: tsv("#1 String", Some("#2 String"), "Quality"),
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "stsb",
        display: "STS-B",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/STS-B",
        labels: LabelKind::Score,
        metrics: &[Metric::Pearson, Metric::Spearman],
        primary: Metric::Pearson,
        format: tsv("sentence1", Some("sentence2"), "score"),
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "qqp",
        display: "QQP",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/QQP",
        labels: BINARY,
        metrics: F1_ACC,
        primary: Metric::F1,
        format: tsv("question1", Some("question2"), "is_duplicate"),
        splits: &[
            SplitFiles {
                split: Split::Train,
                files: &["train.tsv"],
                missing_note: "QQP train (363,846 rows) is absent from the offline copy \
                    (every copy is over the snapshot limit); put GLUE's official QQP \
                    train.tsv there",
            },
            files(Split::Dev, &["dev.tsv", "dev.from_hf_parquet.tsv"]),
        ],
    },
    TaskSpec {
        name: "mnli",
        display: "MNLI",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/MNLI",
        labels: LabelKind::Classes(&["entailment", "neutral", "contradiction"]),
        metrics: ACC,
        primary: Metric::Accuracy,
        format: tsv("sentence1", Some("sentence2"), "gold_label"),
        splits: &[
            SplitFiles {
                split: Split::Train,
                files: &["train.tsv"],
                missing_note: "MNLI train (392,702 rows) is absent from the offline copy \
                    (every copy is over the snapshot limit); put GLUE's official MNLI \
                    train.tsv there",
            },
            files(
                Split::DevMatched,
                &["dev_matched.tsv", "dev_matched.from_hf_parquet.tsv"],
            ),
            files(
                Split::DevMismatched,
                &["dev_mismatched.tsv", "dev_mismatched.from_hf_parquet.tsv"],
            ),
        ],
    },
    TaskSpec {
        name: "qnli",
        display: "QNLI",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/QNLI",
        labels: ENTAIL2,
        metrics: ACC,
        primary: Metric::Accuracy,
        format: tsv("question", Some("sentence"), "label"),
        splits: &[
            SplitFiles {
                split: Split::Train,
                files: &["train.tsv"],
                missing_note: "QNLI train (104,743 rows) is absent from the offline copy \
                    (every copy is over the snapshot limit); put GLUE's official QNLI \
                    train.tsv there",
            },
            files(Split::Dev, &["dev.tsv"]),
        ],
    },
    TaskSpec {
        name: "rte",
        display: "RTE",
        aliases: &["glue-rte"],
        benchmark: "glue",
        folder: "glue/RTE",
        labels: ENTAIL2,
        metrics: ACC,
        primary: Metric::Accuracy,
        format: tsv("sentence1", Some("sentence2"), "label"),
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "wnli",
        display: "WNLI",
        aliases: &[],
        benchmark: "glue",
        folder: "glue/WNLI",
        labels: BINARY,
        metrics: ACC,
        primary: Metric::Accuracy,
        format: tsv("sentence1", Some("sentence2"), "label"),
        splits: GLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "boolq",
        display: "BoolQ",
        aliases: &[],
        benchmark: "superglue",
        folder: "superglue/BoolQ",
        labels: LabelKind::Classes(&["false", "true"]),
        metrics: ACC,
        primary: Metric::Accuracy,
        format: jsonl("question", "passage", "label"),
        splits: &[
            SplitFiles {
                split: Split::Train,
                files: &["train.jsonl", "train.from_hf_google_boolq.jsonl"],
                missing_note: "the offline copy has only the derived \
                    train.from_hf_google_boolq.jsonl (its passages lack the \
                    \"<title> -- \" prefix of val.jsonl)",
            },
            files(Split::Dev, &["val.jsonl"]),
        ],
    },
    TaskSpec {
        name: "cb",
        display: "CB",
        aliases: &["commitmentbank"],
        benchmark: "superglue",
        folder: "superglue/CB",
        labels: LabelKind::Classes(&["entailment", "contradiction", "neutral"]),
        metrics: &[Metric::MacroF1, Metric::Accuracy],
        primary: Metric::MacroF1,
        format: jsonl("premise", "hypothesis", "label"),
        splits: SUPERGLUE_TRAIN_DEV,
    },
    TaskSpec {
        name: "superglue-rte",
        display: "RTE (SuperGLUE)",
        aliases: &["rte-superglue", "sg-rte"],
        benchmark: "superglue",
        folder: "superglue/RTE",
        labels: ENTAIL2,
        metrics: ACC,
        primary: Metric::Accuracy,
        format: jsonl("premise", "hypothesis", "label"),
        splits: SUPERGLUE_TRAIN_DEV,
    },
];

/// Lower-case and drop `-`, `_` and spaces, so `SST-2`, `sst_2` and `sst2` compare equal.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The task registered under `name` (case-insensitive; `-`/`_` ignored, so `sst-2`, `STS-B`,
/// `rte_superglue` work).
///
/// # Errors
/// [`Error::UnknownTask`] listing the known names.
pub fn task(name: &str) -> Result<&'static TaskSpec> {
    let wanted = squash(name);
    TASKS
        .iter()
        .find(|t| {
            squash(t.name) == wanted
                || squash(t.display) == wanted
                || t.aliases.iter().any(|a| squash(a) == wanted)
        })
        .ok_or_else(|| Error::UnknownTask {
            got: name.into(),
            known: task_names().join(", "),
        })
}

/// Where the default data roots are looked for, in order: `$TTLORA_DATA`, `./data` (the
/// bundled SST-2), `../shared/data` (the full offline copy), then the same two next to this
/// crate's sources.
pub fn default_data_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(env) = std::env::var_os("TTLORA_DATA") {
        roots.push(PathBuf::from(env));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    roots.extend([
        PathBuf::from("data"),
        PathBuf::from("../shared/data"),
        manifest.join("data"),
        manifest.join("../shared/data"),
    ]);
    roots
}

/// The data root to read `spec` from: `given` when set, else the first of
/// [`default_data_roots`] that holds the task's folder.
///
/// # Errors
/// [`Error::DataFile`] when `given` is not a folder, or no default root holds the task (listing
/// the roots tried).
pub fn data_root(given: Option<&Path>, spec: &TaskSpec) -> Result<PathBuf> {
    if let Some(root) = given {
        if !root.is_dir() {
            return Err(Error::DataFile {
                path: root.into(),
                reason: "no such folder; expected a data root holding glue/ and superglue/".into(),
            });
        }
        return Ok(root.into());
    }
    let tried = default_data_roots();
    if let Some(root) = tried.iter().find(|r| r.join(spec.folder).is_dir()) {
        return Ok(root.clone());
    }
    let tried: Vec<String> = tried.iter().map(|r| r.display().to_string()).collect();
    Err(Error::DataFile {
        path: PathBuf::from(spec.folder),
        reason: format!(
            "the {} files were not found under any default data root (tried {}); give the \
             data root, the folder holding glue/ and superglue/",
            spec.display,
            tried.join(", ")
        ),
    })
}

/// Registered task names, in registry order.
pub fn task_names() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.name).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn registry_is_well_formed() {
        let mut seen = HashSet::new();
        for t in TASKS {
            for n in std::iter::once(t.name).chain(t.aliases.iter().copied()) {
                assert!(seen.insert(squash(n)), "duplicate task name {n}");
            }
            assert_eq!(
                t.metrics[0], t.primary,
                "{}: primary metric must come first",
                t.name
            );
            assert!(t.folder.starts_with(t.benchmark), "{}", t.name);
            assert!(
                !t.splits.is_empty() && !t.eval_splits().is_empty(),
                "{}",
                t.name
            );
            for m in t.metrics {
                assert_eq!(m.on_scores(), t.is_regression(), "{}: metric {m}", t.name);
            }
            let n_classes = t.class_names().len();
            assert_eq!(
                t.num_labels(),
                if t.is_regression() { 1 } else { n_classes }
            );
        }
        assert_eq!(TASKS.len(), 12);
    }

    #[test]
    fn lookup_accepts_spellings_and_lists_names_on_error() {
        for (given, want) in [
            ("sst2", "sst2"),
            ("SST-2", "sst2"),
            ("sst_2", "sst2"),
            ("stsb", "stsb"),
            ("STS-B", "stsb"),
            ("CoLA", "cola"),
            ("rte", "rte"),
            ("superglue-rte", "superglue-rte"),
            ("RTE-SuperGLUE", "superglue-rte"),
            ("BoolQ", "boolq"),
        ] {
            assert_eq!(task(given).unwrap().name, want, "{given}");
        }
        let err = task("imdb").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown task `imdb`; known tasks: cola, sst2, mrpc"),
            "{err}"
        );
        assert!(err.contains("superglue-rte"), "{err}");
    }

    #[test]
    fn task_facts() {
        let mnli = task("mnli").unwrap();
        assert_eq!(mnli.num_labels(), 3);
        assert_eq!(
            mnli.eval_splits(),
            vec![Split::DevMatched, Split::DevMismatched]
        );
        let stsb = task("stsb").unwrap();
        assert!(stsb.is_regression() && stsb.is_pair());
        assert_eq!(stsb.num_labels(), 1);
        assert_eq!(stsb.metrics, &[Metric::Pearson, Metric::Spearman]);
        assert_eq!(task("cola").unwrap().primary, Metric::Mcc);
        assert_eq!(task("mrpc").unwrap().primary, Metric::F1);
        assert_eq!(
            task("qqp").unwrap().metrics,
            &[Metric::F1, Metric::Accuracy]
        );
        assert_eq!(task("cb").unwrap().primary, Metric::MacroF1);
        assert!(!task("sst2").unwrap().is_pair());
    }

    #[test]
    fn data_root_prefers_the_given_folder_then_finds_the_bundled_one() {
        let sst2 = task("sst2").unwrap();
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(data_root(Some(here), sst2).unwrap(), here);
        let err = data_root(Some(Path::new("/no/such/root")), sst2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/no/such/root: no such folder; expected a data root holding glue/ and superglue/"
        );
        let found = data_root(None, sst2).unwrap();
        assert!(
            found.join("glue/SST-2/dev.tsv").is_file(),
            "{}",
            found.display()
        );
    }

    #[test]
    fn split_names_parse_and_print() {
        for &s in Split::ALL {
            assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
        }
        assert_eq!("val".parse::<Split>().unwrap(), Split::Dev);
        assert_eq!("dev-matched".parse::<Split>().unwrap(), Split::DevMatched);
        let err = "test".parse::<Split>().unwrap_err().to_string();
        assert_eq!(
            err,
            "split: unknown split `test`; expected one of train, dev, dev_matched, dev_mismatched"
        );
    }

    #[test]
    fn split_file_errors_name_the_path_and_the_reason() {
        let root = Path::new("/nonexistent-data-root");
        let err = task("mnli")
            .unwrap()
            .split_file(root, Split::Dev)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent-data-root/glue/MNLI: task mnli has no `dev` split; \
             it has: train, dev_matched, dev_mismatched"
        );
        let err = task("mnli")
            .unwrap()
            .split_file(root, Split::Train)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("/nonexistent-data-root/glue/MNLI/train.tsv: no such file"),
            "{msg}"
        );
        assert!(
            msg.contains("MNLI train (392,702 rows) is absent from the offline copy"),
            "{msg}"
        );
        assert!(msg.contains("has no `glue/` folder"), "{msg}");
        let err = task("sst2")
            .unwrap()
            .split_file(root, Split::DevMatched)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("has no `dev_matched` split; it has: train, dev")
        );
    }
}
