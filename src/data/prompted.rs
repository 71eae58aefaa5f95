//! SuperGLUE for decoders scored as language models (MeZO, LoRETTA): each example becomes a
//! prompt and a few candidate continuations through its task's template and verbaliser; the
//! model's prediction is the candidate its tokens score best.
//!
//! Every template and verbaliser lives here, with the exact strings of MeZO's
//! `large_models/templates.py` (the ones LoRETTA reuses), so one place says what a prompt
//! looks like:
//!
//! | task | prompt | candidates (gold index) |
//! |---|---|---|
//! | BoolQ | `{passage} {Question?}\n` (`?` added if missing, first letter upper-cased) | `No`, `Yes` (label false, true) |
//! | CB | `Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n` | `Yes`, `No`, `Maybe` (entailment, contradiction, neutral) |
//! | COPA | `{premise without its final "."}` + ` so ` (effect) or ` because ` (cause) | `choice1`, `choice2`, first word lower-cased unless it is "I" (label 0, 1) |
//! | RTE | `{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n` | `Yes`, `No` (entailment, not_entailment) |
//! | WiC | `Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n` | `No`, `Yes` (label false, true) |
//! | WSC | `{text}\nIn the previous sentence, does the pronoun "{span2 lower-cased}" refer to {span1}? Yes or No?\n` | `No`, `Yes` (label false, true) |
//! | MultiRC | `{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n`, one example per answer | `No`, `Yes` (label 0, 1) |
//!
//! A candidate is the text that follows the prompt (MeZO's `verbalize` is `encode` + the
//! candidate for every task here). Files are the official SuperGLUE JSON Lines
//! (`shared/data/superglue/<Task>/{train,val}.jsonl`); a test reads one real example of each.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use super::readers::{numbered_lines, read_text};
use crate::data::op_error;
use crate::error::{Error, Result};

/// A SuperGLUE task scored by candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptedTask {
    /// Yes/no questions about a passage.
    BoolQ,
    /// CommitmentBank: three-way entailment.
    Cb,
    /// Choice of plausible alternatives: cause or effect.
    Copa,
    /// Recognising textual entailment.
    Rte,
    /// Words in context: the same sense or not.
    Wic,
    /// Winograd schema: does the pronoun refer to the span.
    Wsc,
    /// Multi-sentence reading comprehension: each answer of each question true or false.
    MultiRc,
}

impl PromptedTask {
    /// Every task, in the order of SuperGLUE's paper.
    pub const ALL: &'static [PromptedTask] = &[
        PromptedTask::BoolQ,
        PromptedTask::Cb,
        PromptedTask::Copa,
        PromptedTask::MultiRc,
        PromptedTask::Rte,
        PromptedTask::Wic,
        PromptedTask::Wsc,
    ];

    /// The task's name on the command line: `boolq`, `cb`, `copa`, `multirc`, `rte`, `wic`,
    /// `wsc`.
    pub fn name(self) -> &'static str {
        match self {
            PromptedTask::BoolQ => "boolq",
            PromptedTask::Cb => "cb",
            PromptedTask::Copa => "copa",
            PromptedTask::Rte => "rte",
            PromptedTask::Wic => "wic",
            PromptedTask::Wsc => "wsc",
            PromptedTask::MultiRc => "multirc",
        }
    }

    /// The file of `split` (`train` or `val`) in the task's folder under one of `roots`, the
    /// first root holding it: `<split>.jsonl`, or for `train` another `train*.jsonl` (the
    /// BoolQ training file in `shared/data` is `train.from_hf_google_boolq.jsonl`).
    ///
    /// # Errors
    /// No root holds the file (the message lists where it looked).
    pub fn split_file(
        self,
        split: &str,
        roots: &[std::path::PathBuf],
    ) -> Result<std::path::PathBuf> {
        for root in roots {
            let dir = root.join("superglue").join(self.folder());
            let exact = dir.join(format!("{split}.jsonl"));
            if exact.is_file() {
                return Ok(exact);
            }
            if split != "train" {
                continue;
            }
            let mut others: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|x| x == "jsonl")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{split}.")))
                })
                .collect();
            others.sort();
            match others.as_slice() {
                [] => {}
                [one] => return Ok(one.clone()),
                several => {
                    let names: Vec<String> =
                        several.iter().map(|p| p.display().to_string()).collect();
                    return Err(op_error(
                        "SuperGLUE files",
                        format!(
                            "several training files and no {split}.jsonl: {}; give the one to \
                             use with --train-file",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        let looked: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(op_error(
            "SuperGLUE files",
            format!(
                "no superglue/{}/{split}.jsonl under {}; give --data DIR (a folder holding \
                 superglue/) or the file itself",
                self.folder(),
                looked.join(", ")
            ),
        ))
    }

    /// Puts the task's first class where a row (or, for MultiRC, an answer) has no label (or
    /// a null or negative one).
    fn fill_missing_labels(self, value: &mut Value) {
        let first = match self {
            PromptedTask::BoolQ | PromptedTask::Wic | PromptedTask::Wsc => Value::Bool(false),
            PromptedTask::Cb | PromptedTask::Rte => Value::from("entailment"),
            PromptedTask::Copa | PromptedTask::MultiRc => Value::from(0),
        };
        // Absent, null or -1 (HF `datasets` exports of the test splits) all mean unknown.
        let put = |v: &mut Value| {
            if let Some(obj) = v.as_object_mut() {
                let label = obj.entry("label").or_insert(Value::Null);
                if label.is_null() || label.as_i64().is_some_and(|n| n < 0) {
                    *label = first.clone();
                }
            }
        };
        if self != PromptedTask::MultiRc {
            put(value);
            return;
        }
        let questions = value
            .get_mut("passage")
            .and_then(|p| p.get_mut("questions"))
            .and_then(Value::as_array_mut);
        for q in questions.into_iter().flatten() {
            let answers = q.get_mut("answers").and_then(Value::as_array_mut);
            answers.into_iter().flatten().for_each(put);
        }
    }

    /// The task's folder in SuperGLUE's distribution (`BoolQ`, `CB`, …).
    pub fn folder(self) -> &'static str {
        match self {
            PromptedTask::BoolQ => "BoolQ",
            PromptedTask::Cb => "CB",
            PromptedTask::Copa => "COPA",
            PromptedTask::Rte => "RTE",
            PromptedTask::Wic => "WiC",
            PromptedTask::Wsc => "WSC",
            PromptedTask::MultiRc => "MultiRC",
        }
    }

    /// Turns one JSON line of the official file into its prompted examples (one, or one per
    /// answer for MultiRC).
    fn examples(self, row: &Row) -> Result<Vec<PromptedExample>> {
        let yes_no = |label: bool| usize::from(label);
        let one = |prompt: String, candidates: &[&str], gold: usize| {
            Ok(vec![PromptedExample {
                prompt,
                candidates: candidates.iter().map(|c| (*c).to_string()).collect(),
                gold,
                group: None,
                id: String::new(),
            }])
        };
        match self {
            PromptedTask::BoolQ => {
                let question = question_mark_capitalised(row.str("question")?);
                let prompt = format!("{} {question}\n", row.str("passage")?);
                one(prompt, &["No", "Yes"], yes_no(row.bool("label")?))
            }
            PromptedTask::Cb => {
                let prompt = format!(
                    "Suppose {} Can we infer that \"{}\"? Yes, No, or Maybe?\n",
                    row.str("premise")?,
                    row.str("hypothesis")?
                );
                let gold = row.class("label", &["entailment", "contradiction", "neutral"])?;
                one(prompt, &["Yes", "No", "Maybe"], gold)
            }
            PromptedTask::Copa => {
                let premise = row.str("premise")?.trim_end();
                let premise = premise.strip_suffix('.').unwrap_or(premise);
                let conjunction = match row.class("question", &["effect", "cause"])? {
                    0 => " so ",
                    _ => " because ",
                };
                let choices = [row.str("choice1")?, row.str("choice2")?].map(copa_choice);
                let gold = row.index("label", 2)?;
                Ok(vec![PromptedExample {
                    prompt: format!("{premise}{conjunction}"),
                    candidates: choices.to_vec(),
                    gold,
                    group: None,
                    id: String::new(),
                }])
            }
            PromptedTask::Rte => {
                let prompt = format!(
                    "{}\nDoes this mean that \"{}\" is true? Yes or No?\n",
                    row.str("premise")?,
                    row.str("hypothesis")?
                );
                let gold = row.class("label", &["entailment", "not_entailment"])?;
                one(prompt, &["Yes", "No"], gold)
            }
            PromptedTask::Wic => {
                let prompt = format!(
                    "Does the word \"{}\" have the same meaning in these two sentences? \
                     Yes, No?\n{}\n{}\n",
                    row.str("word")?,
                    row.str("sentence1")?,
                    row.str("sentence2")?
                );
                one(prompt, &["No", "Yes"], yes_no(row.bool("label")?))
            }
            PromptedTask::Wsc => {
                let target = row.nested(row.field("target")?, "target.");
                let prompt = format!(
                    "{}\nIn the previous sentence, does the pronoun \"{}\" refer to {}? \
                     Yes or No?\n",
                    row.str("text")?,
                    target.str("span2_text")?.to_lowercase(),
                    target.str("span1_text")?
                );
                one(prompt, &["No", "Yes"], yes_no(row.bool("label")?))
            }
            PromptedTask::MultiRc => multirc_examples(row),
        }
    }
}

impl fmt::Display for PromptedTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PromptedTask {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        PromptedTask::ALL
            .iter()
            .copied()
            .find(|t| t.name() == wanted)
            .ok_or_else(|| {
                let known: Vec<_> = PromptedTask::ALL.iter().map(|t| t.name()).collect();
                op_error(
                    "SuperGLUE task",
                    format!("unknown task `{s}`; expected one of {}", known.join(", ")),
                )
            })
    }
}

/// One example as the model scores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptedExample {
    /// The text every candidate continues.
    pub prompt: String,
    /// The continuations, in the verbaliser's order.
    pub candidates: Vec<String>,
    /// The index of the right candidate.
    pub gold: usize,
    /// MultiRC: the question an answer belongs to (`"<passage idx>-<question idx>"`), for the
    /// exact-match metric; `None` elsewhere.
    pub group: Option<String>,
    /// Which row this is, for predictions a user joins back to the file: the row's `idx` as
    /// SuperGLUE writes it (MultiRC: `"<passage>-<question>-<answer>"`), or its line number
    /// when the row has no `idx`.
    pub id: String,
}

/// Reads an official SuperGLUE JSON Lines file of `task` into prompted examples, in file
/// order.
///
/// # Errors
/// An unreadable file; a line that is not a JSON object, lacks a field the template needs, or
/// has a label outside the task's label set (each naming the file, line and field).
pub fn read_prompted(task: PromptedTask, path: &Path) -> Result<Vec<PromptedExample>> {
    read_rows(path, task.name(), None, |row| task.examples(row))
}

/// As [`read_prompted`], for files whose rows may lack their labels (SuperGLUE's test
/// files): a missing label reads as the task's first class, so `gold` means nothing for
/// those rows; for prediction.
///
/// # Errors
/// As [`read_prompted`], the missing labels aside.
pub fn read_prompted_unlabeled(task: PromptedTask, path: &Path) -> Result<Vec<PromptedExample>> {
    let fill = |value: &mut Value| task.fill_missing_labels(value);
    read_rows(path, task.name(), Some(&fill), |row| task.examples(row))
}

/// Every line of `path` as a JSON object through `examples`.
fn read_rows(
    path: &Path,
    what: &str,
    unlabeled: Option<&dyn Fn(&mut Value)>,
    examples: impl Fn(&Row) -> Result<Vec<PromptedExample>>,
) -> Result<Vec<PromptedExample>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (line, raw) in numbered_lines(&text) {
        let mut value: Value = serde_json::from_str(raw).map_err(|e| Error::DataRow {
            path: path.into(),
            line,
            reason: format!("not a JSON object: {e}"),
        })?;
        if let Some(fill) = unlabeled {
            fill(&mut value);
        }
        let row = Row {
            value: &value,
            path,
            line,
            prefix: "",
        };
        let id = value.get("idx").map_or_else(|| line.to_string(), idx_text);
        out.extend(examples(&row)?.into_iter().map(|mut e| {
            if e.id.is_empty() {
                e.id.clone_from(&id);
            }
            e
        }));
    }
    if out.is_empty() {
        return Err(Error::DataFile {
            path: path.into(),
            reason: format!("no {what} examples in the file"),
        });
    }
    Ok(out)
}

/// A user's template for a task of their own: `{field}` placeholders filled from each JSON
/// Lines row (`{{` and `}}` for literal braces), the candidate continuations, and the values
/// of the label field in candidate order (the candidates' indices `0`, `1`, … by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTemplate {
    pieces: Vec<Piece>,
    candidates: Vec<String>,
    label_field: String,
    label_values: Vec<String>,
}

/// Literal text or a field to fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

impl CustomTemplate {
    /// Parses and checks a template.
    ///
    /// # Errors
    /// An unclosed or empty `{}`, a stray `}`, fewer than two candidates, or label values
    /// that are not one per candidate (or repeat).
    pub fn new(
        template: &str,
        candidates: Vec<String>,
        label_field: &str,
        label_values: Option<Vec<String>>,
    ) -> Result<Self> {
        let bad = |reason: String| op_error("prompt template", reason);
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed || name.trim().is_empty() || name.contains('{') {
                        return Err(bad(format!(
                            "`{{{name}` in \"{template}\": a placeholder is a field name in \
                             braces, `{{premise}}` (`{{{{` and `}}}}` for literal braces)"
                        )));
                    }
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.push(Piece::Field(name.trim().to_string()));
                }
                '}' => {
                    return Err(bad(format!(
                        "a `}}` without its `{{` in \"{template}\" (`}}}}` for a literal brace)"
                    )));
                }
                c => text.push(c),
            }
        }
        pieces.push(Piece::Text(text));
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(bad(format!(
                "\"{template}\" names no field; write the row's fields as `{{field}}`"
            )));
        }
        if candidates.len() < 2 {
            return Err(bad(format!(
                "{} candidate(s); give at least two continuations to choose from",
                candidates.len()
            )));
        }
        let label_values =
            label_values.unwrap_or_else(|| (0..candidates.len()).map(|i| i.to_string()).collect());
        let distinct: std::collections::BTreeSet<_> = label_values.iter().collect();
        if label_values.len() != candidates.len() || distinct.len() != label_values.len() {
            return Err(bad(format!(
                "{} distinct label values for {} candidates; give one per candidate, in the \
                 candidates' order",
                distinct.len(),
                candidates.len()
            )));
        }
        Ok(Self {
            pieces,
            candidates,
            label_field: label_field.to_string(),
            label_values,
        })
    }

    /// The row's prompt, candidates and gold index.
    fn example(&self, row: &Row) -> Result<PromptedExample> {
        let mut prompt = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => prompt.push_str(t),
                Piece::Field(name) => prompt.push_str(&row.text(name)?),
            }
        }
        let label = row.text(&self.label_field)?;
        let gold = self
            .label_values
            .iter()
            .position(|v| *v == label)
            .ok_or_else(|| {
                row.error(
                    &self.label_field,
                    format!(
                        "\"{label}\" is not one of the label values {}",
                        self.label_values.join(", ")
                    ),
                )
            })?;
        Ok(PromptedExample {
            prompt,
            candidates: self.candidates.clone(),
            gold,
            group: None,
            id: String::new(),
        })
    }

    /// How many candidates each example has.
    pub fn num_candidates(&self) -> usize {
        self.candidates.len()
    }
}

/// Reads a JSON Lines file with a [`CustomTemplate`] into prompted examples, in file order.
///
/// # Errors
/// As [`read_prompted`]; a row lacking a field the template names, or whose label is not one
/// of the template's label values.
pub fn read_custom_prompted(
    template: &CustomTemplate,
    path: &Path,
) -> Result<Vec<PromptedExample>> {
    read_rows(path, "custom", None, |row| Ok(vec![template.example(row)?]))
}

/// As [`read_custom_prompted`], for prediction, where labels are not used: a row whose label
/// is absent, `null` or not one of the template's label values (another column's coding)
/// reads as the first label value, so `gold` means nothing for it.
///
/// # Errors
/// As [`read_custom_prompted`], the missing labels aside.
pub fn read_custom_prompted_unlabeled(
    template: &CustomTemplate,
    path: &Path,
) -> Result<Vec<PromptedExample>> {
    let fill = |value: &mut Value| {
        if let Some(obj) = value.as_object_mut() {
            let label = obj
                .entry(template.label_field.clone())
                .or_insert(Value::Null);
            let text = match &*label {
                Value::String(s) => Some(s.clone()),
                v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
                _ => None,
            };
            if !text.is_some_and(|t| template.label_values.contains(&t)) {
                *label = Value::from(template.label_values[0].clone());
            }
        }
    };
    read_rows(path, "custom", Some(&fill), |row| {
        Ok(vec![template.example(row)?])
    })
}

/// One JSON object of a file, with where it came from for errors.
struct Row<'a> {
    value: &'a Value,
    path: &'a Path,
    line: usize,
    /// The path of this object inside the line's (`target.` for WSC's spans).
    prefix: &'static str,
}

impl<'a> Row<'a> {
    /// An object inside this row's line, `prefix` its path there (for errors).
    fn nested(&self, value: &'a Value, prefix: &'static str) -> Row<'a> {
        Row {
            value,
            path: self.path,
            line: self.line,
            prefix,
        }
    }

    fn error(&self, field: &str, reason: impl fmt::Display) -> Error {
        Error::DataRow {
            path: self.path.into(),
            line: self.line,
            reason: format!("field `{}{field}`: {reason}", self.prefix),
        }
    }

    fn field(&self, field: &str) -> Result<&'a Value> {
        self.value
            .get(field)
            .ok_or_else(|| self.error(field, "missing"))
    }

    fn str(&self, field: &str) -> Result<&'a str> {
        let v = self.field(field)?;
        v.as_str()
            .ok_or_else(|| self.error(field, format!("expected a string, found {v}")))
    }

    /// A field as text: a string as it is, a number or a boolean as JSON writes it.
    fn text(&self, field: &str) -> Result<String> {
        match self.field(field)? {
            Value::String(s) => Ok(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(v.to_string()),
            v => Err(self.error(
                field,
                format!("expected text, a number or a boolean, found {v}"),
            )),
        }
    }

    fn bool(&self, field: &str) -> Result<bool> {
        let v = self.field(field)?;
        v.as_bool()
            .ok_or_else(|| self.error(field, format!("expected true or false, found {v}")))
    }

    /// A whole number below `n`.
    fn index(&self, field: &str, n: usize) -> Result<usize> {
        let v = self.field(field)?;
        v.as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < n)
            .ok_or_else(|| {
                let allowed: Vec<String> = (0..n).map(|i| i.to_string()).collect();
                self.error(
                    field,
                    format!("expected one of {}, found {v}", allowed.join(", ")),
                )
            })
    }

    /// The position of a string among `names`.
    fn class(&self, field: &str, names: &[&str]) -> Result<usize> {
        let v = self.str(field)?;
        names.iter().position(|n| *n == v).ok_or_else(|| {
            self.error(
                field,
                format!("expected one of {}, found \"{v}\"", names.join(", ")),
            )
        })
    }
}

/// BoolQ's question as MeZO writes it: a `?` added when missing, the first letter upper-cased.
fn question_mark_capitalised(question: &str) -> String {
    let mut chars = question.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with('?') {
        out.push('?');
    }
    out
}

/// A COPA choice continuing the premise: its first word lower-cased unless it is "I".
fn copa_choice(choice: &str) -> String {
    let (first, rest) = match choice.split_once(' ') {
        Some((first, rest)) => (first, Some(rest)),
        None => (choice, None),
    };
    let first = if first == "I" {
        first.to_string()
    } else {
        first.to_lowercase()
    };
    match rest {
        Some(rest) => format!("{first} {rest}"),
        None => first,
    }
}

/// An `idx` as text: a string as it is (no JSON quotes), anything else as JSON writes it.
fn idx_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// MultiRC: one example per answer of each question of the passage.
fn multirc_examples(row: &Row) -> Result<Vec<PromptedExample>> {
    let passage_idx = row.field("idx")?;
    let passage = row.field("passage")?;
    let passage = row.nested(passage, "passage.");
    let paragraph = passage.str("text")?;
    let questions = passage
        .field("questions")?
        .as_array()
        .ok_or_else(|| passage.error("questions", "expected a list"))?;
    let mut out = Vec::new();
    for q in questions {
        let q = row.nested(q, "passage.questions[].");
        let question = q.str("question")?;
        let group = format!("{}-{}", idx_text(passage_idx), idx_text(q.field("idx")?));
        let answers = q
            .field("answers")?
            .as_array()
            .ok_or_else(|| q.error("answers", "expected a list"))?;
        for (position, a) in answers.iter().enumerate() {
            let a = row.nested(a, "passage.questions[].answers[].");
            // An answer's own idx names it in predictions; its position where it has none.
            let answer = a
                .value
                .get("idx")
                .map_or_else(|| position.to_string(), idx_text);
            out.push(PromptedExample {
                prompt: format!(
                    "{paragraph}\nQuestion: {question}\nI found this answer \"{}\". Is that \
                     correct? Yes or No?\n",
                    a.str("text")?
                ),
                candidates: vec!["No".into(), "Yes".into()],
                gold: a.index("label", 2)?,
                id: format!("{group}-{answer}"),
                group: Some(group.clone()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(task: PromptedTask, line: &str) -> Result<Vec<PromptedExample>> {
        let value: Value = serde_json::from_str(line).unwrap();
        task.examples(&Row {
            value: &value,
            path: Path::new("x.jsonl"),
            line: 3,
            prefix: "",
        })
    }

    /// The first example of a task's fixture (the first lines of the official validation
    /// file), and the file's example count.
    fn first(task: PromptedTask) -> (PromptedExample, usize) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/superglue")
            .join(task.folder())
            .join("val.jsonl");
        let all = read_prompted(task, &path).unwrap();
        (all[0].clone(), all.len())
    }

    fn assert_example(task: PromptedTask, prompt: &str, candidates: &[&str], gold: usize) {
        let (e, _) = first(task);
        assert_eq!(e.prompt, prompt, "{task}");
        assert_eq!(e.candidates, candidates, "{task}");
        assert_eq!(e.gold, gold, "{task}");
    }

    /// Rows without labels (SuperGLUE's test files) read for prediction, every task (MultiRC's
    /// labels sit on its answers); the same rows are an error for the labelled reader.
    #[test]
    fn unlabeled_rows_read_for_prediction_with_the_same_prompts() {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.remove("label");
                    m.values_mut().for_each(strip);
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let tmp = crate::io::fs::TempDir::new("prompted-unlabeled");
        for task in PromptedTask::ALL {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/superglue");
            let path = task
                .split_file("val", &[dir.parent().unwrap().to_path_buf()])
                .unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let stripped: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    strip(&mut v);
                    v.to_string()
                })
                .collect();
            let bare = tmp.join(format!("{}.jsonl", task.name()));
            std::fs::write(&bare, stripped.join("\n")).unwrap();
            let labelled = read_prompted(*task, &path).unwrap();
            let unlabeled = read_prompted_unlabeled(*task, &bare).unwrap();
            let prompts = |v: &[PromptedExample]| -> Vec<(String, Vec<String>)> {
                v.iter()
                    .map(|e| (e.prompt.clone(), e.candidates.clone()))
                    .collect()
            };
            assert_eq!(prompts(&labelled), prompts(&unlabeled), "{task}");
            let err = read_prompted(*task, &bare).unwrap_err().to_string();
            assert!(
                err.contains("label") && err.contains("missing"),
                "{task}: {err}"
            );
        }
        // HF `datasets` exports mark unknown labels null or -1.
        for label in ["null", "-1"] {
            let row = format!(
                "{{\"passage\": \"p\", \"question\": \"q\", \"idx\": 0, \"label\": {label}}}"
            );
            let path = tmp.join("boolq-hf.jsonl");
            std::fs::write(&path, row).unwrap();
            let got = read_prompted_unlabeled(PromptedTask::BoolQ, &path).unwrap();
            assert_eq!(got[0].candidates, ["No", "Yes"], "{label}");
        }
    }

    /// The first row of a task's validation fixture as parsed JSON.
    fn first_row(task: PromptedTask) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/superglue")
            .join(task.folder())
            .join("val.jsonl");
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    #[test]
    fn cb_renders_its_first_real_example_as_mezo_does() {
        assert_example(
            PromptedTask::Cb,
            "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger \
             choose his own portion of titanic anatomy to shaft? Did he think he was helping? Can \
             we infer that \"Valence was helping\"? Yes, No, or Maybe?\n",
            &["Yes", "No", "Maybe"],
            1,
        );
        assert_eq!(first(PromptedTask::Cb).0.id, "0");
        assert_eq!(first(PromptedTask::Cb).1, 20);
    }

    #[test]
    fn copa_renders_its_first_real_example_as_mezo_does() {
        assert_example(
            PromptedTask::Copa,
            "The man turned on the faucet so ",
            &[
                "the toilet filled with water.",
                "water flowed from the spout.",
            ],
            1,
        );
        assert_eq!(first(PromptedTask::Copa).1, 20);
    }

    #[test]
    fn rte_renders_its_first_real_example_as_mezo_does() {
        assert_example(
            PromptedTask::Rte,
            "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age \
             44, according to the Christopher Reeve Foundation.\nDoes this mean that \
             \"Christopher Reeve had an accident.\" is true? Yes or No?\n",
            &["Yes", "No"],
            1,
        );
        assert_eq!(first(PromptedTask::Rte).1, 20);
    }

    #[test]
    fn wic_renders_its_first_real_example_as_mezo_does() {
        assert_example(
            PromptedTask::Wic,
            "Does the word \"class\" have the same meaning in these two sentences? Yes, No?\n\
             An emerging professional class.\nApologizing for losing your temper, even though \
             you were badly provoked, showed real class.\n",
            &["No", "Yes"],
            0,
        );
        assert_eq!(first(PromptedTask::Wic).1, 20);
    }

    #[test]
    fn wsc_renders_its_first_real_example_as_mezo_does() {
        assert_example(
            PromptedTask::Wsc,
            "Bernard , who had not told the government official that he was less than 21 when he \
             filed for a homestead claim, did not consider that he had done anything dishonest. \
             Still, anyone who knew that he was 19 years old could take his claim away from him \
             .\nIn the previous sentence, does the pronoun \"him\" refer to anyone? Yes or No?\n",
            &["No", "Yes"],
            0,
        );
        assert_eq!(first(PromptedTask::Wsc).1, 20);
    }

    /// BoolQ's passages are long: the whole prompt is the row's passage, a space, its
    /// question with a capital and a question mark.
    #[test]
    fn boolq_renders_its_first_real_example_as_mezo_does() {
        let row = first_row(PromptedTask::BoolQ);
        let passage = row["passage"].as_str().unwrap();
        assert!(passage.starts_with("Ethanol fuel -- All biomass goes through"));
        assert_eq!(
            row["question"],
            "does ethanol take more energy make that produces"
        );
        assert_example(
            PromptedTask::BoolQ,
            &format!("{passage} Does ethanol take more energy make that produces?\n"),
            &["No", "Yes"],
            0,
        );
        assert_eq!(first(PromptedTask::BoolQ).1, 10);
    }

    /// MultiRC: one example per answer option, the whole prompt the passage, the question
    /// and the answer in MeZO's frame.
    #[test]
    fn multirc_renders_its_first_real_example_as_mezo_does() {
        let row = first_row(PromptedTask::MultiRc);
        let passage = row["passage"]["text"].as_str().unwrap();
        assert!(passage.starts_with("What causes a change in motion? The application"));
        assert_example(
            PromptedTask::MultiRc,
            &format!(
                "{passage}\nQuestion: Would the mass of a baseball affect how much force you \
                 have to use to pick it up?\nI found this answer \"No\". Is that correct? Yes \
                 or No?\n"
            ),
            &["No", "Yes"],
            0,
        );
        let (multirc, n) = first(PromptedTask::MultiRc);
        assert_eq!(n, 87, "one example per answer option of the two passages");
        assert_eq!(multirc.group.as_deref(), Some("0-0"));
        // Predictions name their rows: SuperGLUE's idx, MultiRC's passage-question-answer.
        assert_eq!(multirc.id, "0-0-0");
        // Without an answer idx (or with string ones), the answer's position; no JSON quotes.
        let line = r#"{"idx": "p7", "passage": {"text": "t", "questions": [{"idx": 2,
            "question": "q", "answers": [{"text": "a", "label": 0}, {"text": "b", "label": 1}]}]}}"#;
        let ids: Vec<String> = parse(PromptedTask::MultiRc, &line.replace('\n', " "))
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["p7-2-0", "p7-2-1"]);
    }

    #[test]
    fn a_custom_template_fills_fields_and_maps_labels() {
        let t = CustomTemplate::new(
            "{premise}\nQuestion: {hypothesis} {{yes/no}}?\n",
            vec!["Yes".into(), "No".into()],
            "label",
            Some(vec!["entailment".into(), "not_entailment".into()]),
        )
        .unwrap();
        let value: Value = serde_json::from_str(
            r#"{"premise": "It rains.", "hypothesis": "It is wet", "label": "not_entailment"}"#,
        )
        .unwrap();
        let row = Row {
            value: &value,
            path: Path::new("mine.jsonl"),
            line: 7,
            prefix: "",
        };
        let e = t.example(&row).unwrap();
        assert_eq!(e.prompt, "It rains.\nQuestion: It is wet {yes/no}?\n");
        assert_eq!((e.candidates.len(), e.gold), (2, 1));
        // Default label values are the candidates' indices; numbers and booleans read as text.
        let t = CustomTemplate::new("{n} is", vec!["odd".into(), "even".into()], "label", None)
            .unwrap();
        let value: Value = serde_json::from_str(r#"{"n": 4, "label": 1}"#).unwrap();
        let row = Row {
            value: &value,
            ..row
        };
        assert_eq!(t.example(&row).unwrap().prompt, "4 is");
        // A file's rows are named by their idx where they have one, else by their line.
        let tmp = crate::io::fs::TempDir::new("prompted-custom-ids");
        let file = tmp.join("mine.jsonl");
        std::fs::write(
            &file,
            "{\"n\": 1, \"label\": 0, \"idx\": \"a7\"}\n\n{\"n\": 2, \"label\": 1}\n",
        )
        .unwrap();
        let ids: Vec<String> = read_custom_prompted(&t, &file)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["a7", "3"]);
        // A field the row lacks, a label outside the values: errors naming line and field.
        let lacks =
            CustomTemplate::new("{text}", vec!["a".into(), "b".into()], "label", None).unwrap();
        let err = lacks.example(&row).unwrap_err().to_string();
        assert!(
            err.contains("mine.jsonl:7") && err.contains("`text`: missing"),
            "{err}"
        );
        let value: Value = serde_json::from_str(r#"{"n": 4, "label": 5}"#).unwrap();
        let err = t
            .example(&Row {
                value: &value,
                ..row
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"5\" is not one of the label values 0, 1"),
            "{err}"
        );
    }

    #[test]
    fn bad_custom_templates_are_refused_at_the_door() {
        let two = || vec!["a".to_string(), "b".into()];
        for (template, needle) in [
            ("{premise", "a placeholder is a field name"),
            ("{} x", "a placeholder is a field name"),
            ("x } y", "without its `{`"),
            ("no fields", "names no field"),
        ] {
            let err = CustomTemplate::new(template, two(), "label", None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{template}: {err}");
        }
        let err = CustomTemplate::new("{x}", vec!["a".into()], "label", None).unwrap_err();
        assert!(err.to_string().contains("at least two"), "{err}");
        let err = CustomTemplate::new("{x}", two(), "label", Some(vec!["p".into(), "p".into()]))
            .unwrap_err();
        assert!(err.to_string().contains("one per candidate"), "{err}");
    }

    /// COPA's "cause" questions take " because "; WSC's pronoun is lower-cased.
    #[test]
    fn copa_causes_and_wsc_pronouns_follow_mezo() {
        let copa = parse(
            PromptedTask::Copa,
            r#"{"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.", "choice2": "I mowed it.", "question": "cause", "label": 0}"#,
        )
        .unwrap();
        assert_eq!(
            copa[0].prompt,
            "My body cast a shadow over the grass because "
        );
        assert_eq!(copa[0].candidates, ["the sun was rising.", "I mowed it."]);
        let wsc = parse(
            PromptedTask::Wsc,
            r#"{"text": "Mark told Pete he was late.", "target": {"span1_text": "Pete", "span2_text": "He"}, "label": true}"#,
        )
        .unwrap();
        assert_eq!(
            wsc[0].prompt,
            "Mark told Pete he was late.\nIn the previous sentence, does the pronoun \"he\" \
             refer to Pete? Yes or No?\n"
        );
        assert_eq!(wsc[0].gold, 1);
    }

    #[test]
    fn copa_choices_and_boolq_questions_follow_mezo() {
        assert_eq!(copa_choice("The sun was rising."), "the sun was rising.");
        assert_eq!(copa_choice("I ate."), "I ate.");
        assert_eq!(copa_choice("Ice"), "ice");
        assert_eq!(question_mark_capitalised("is it"), "Is it?");
        assert_eq!(question_mark_capitalised("Is it?"), "Is it?");
    }

    #[test]
    fn bad_rows_name_the_line_and_field() {
        let err = parse(
            PromptedTask::Cb,
            r#"{"premise":"a","hypothesis":"b","label":"maybe"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.jsonl") && err.contains('3'), "{err}");
        assert!(err.contains("`label`") && err.contains("entailment, contradiction, neutral"));
        let err = parse(PromptedTask::Rte, r#"{"premise":"a","label":"entailment"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hypothesis`: missing"), "{err}");
        let err = parse(
            PromptedTask::Wsc,
            r#"{"text":"a","target":{},"label":true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`target.span2_text`: missing"), "{err}");
        let err = parse(
            PromptedTask::Copa,
            r#"{"premise":"a","choice1":"b","choice2":"c","question":"effect","label":2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected one of 0, 1, found 2"), "{err}");
        assert!("squad".parse::<PromptedTask>().is_err());
        assert_eq!("WiC".parse::<PromptedTask>().unwrap(), PromptedTask::Wic);
    }
}
