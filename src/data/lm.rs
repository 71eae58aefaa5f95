//! Causal-LM training data: JSON Lines whose rows are plain text (`{"text": …}`), a prompt
//! and its completion (`{"prompt": …, "completion": …}`) or a chat (`{"messages": [{"role":
//! …, "content": …}, …]}`), as TRL's SFT trainer reads them. A row becomes text with the byte
//! spans the loss is taken on ([`Rendered`]: all of a text row, the completion, each
//! assistant turn), then tokens with a flag per token ([`LmTokens`]), then batches whose
//! scored positions are listed ([`lm_batch`]).

use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::data::ModelInput;
use crate::data::readers::{numbered_lines, read_text};
use crate::error::{Error, Result};

/// One turn of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or whatever roles the template knows).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// One training row, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmRow {
    /// Plain text: every token is trained.
    Text(String),
    /// A prompt and its completion: the completion's tokens are trained.
    Completion {
        /// The conditioning text.
        prompt: String,
        /// The text the model learns to produce.
        completion: String,
    },
    /// A conversation rendered by the model's chat template: the assistant turns are trained.
    Chat(Vec<ChatMessage>),
}

/// A row and the 1-based line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmRecord {
    /// 1-based line in the file.
    pub line: usize,
    /// The row.
    pub row: LmRow,
}

/// Reads a causal-LM JSONL file: each non-blank line one object with `text`, or `prompt`
/// and `completion`, or `messages` (other keys are left to the user's bookkeeping).
///
/// # Errors
/// [`Error::DataFile`] for a missing or empty file; [`Error::DataRow`] naming file and line
/// for a line that is not such an object.
pub fn read_lm_rows(path: &Path) -> Result<Vec<LmRecord>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (line, raw) in numbered_lines(&text) {
        let bad = |reason: String| Error::DataRow {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let value: Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let row = parse_row(&value).map_err(bad)?;
        out.push(LmRecord { line, row });
    }
    if out.is_empty() {
        return Err(Error::DataFile {
            path: path.to_path_buf(),
            reason: "no rows; expected JSON Lines with `text`, `prompt`/`completion` or \
                     `messages`"
                .into(),
        });
    }
    Ok(out)
}

/// One object as a row; the reason it is not one.
fn parse_row(value: &Value) -> std::result::Result<LmRow, String> {
    let Some(obj) = value.as_object() else {
        return Err(format!("expected a JSON object, got `{}`", short(value)));
    };
    let string = |key: &str| -> std::result::Result<String, String> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(format!("`{key}` is empty")),
            Some(v) => Err(format!("`{key}` must be a string, got `{}`", short(v))),
            None => Err(format!("no `{key}` key")),
        }
    };
    if let Some(messages) = obj.get("messages") {
        let Some(list) = messages.as_array() else {
            return Err(format!(
                "`messages` must be a list of {{\"role\", \"content\"}} objects, got `{}`",
                short(messages)
            ));
        };
        let mut turns = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let field = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                other => Err(format!(
                    "`messages[{i}].{key}` must be a string, got `{}`",
                    other.map_or_else(|| "nothing".to_string(), short)
                )),
            };
            turns.push(ChatMessage {
                role: field("role")?,
                content: field("content")?,
            });
        }
        if !turns.iter().any(|m| m.role == "assistant") {
            return Err("`messages` has no `assistant` turn, so nothing to train on".into());
        }
        return Ok(LmRow::Chat(turns));
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        return Ok(LmRow::Completion {
            prompt: string("prompt")?,
            completion: string("completion")?,
        });
    }
    if obj.contains_key("text") {
        return Ok(LmRow::Text(string("text")?));
    }
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    Err(format!(
        "expected a `text`, `prompt` + `completion` or `messages` key; the object has: {}",
        if keys.is_empty() {
            "no keys".to_string()
        } else {
            keys.join(", ")
        }
    ))
}

/// A value for a message, cut to a readable length.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// A row as text to tokenize, with the byte spans whose tokens are trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text.
    pub text: String,
    /// Byte ranges of `text` whose tokens the loss is taken on.
    pub trained: Vec<Range<usize>>,
    /// Whether the tokenizer adds its special tokens and the model's BOS is put in front
    /// (plain text and prompts, as generation encodes a prompt: yes; a rendered chat carries
    /// its own, as generation encodes a chat).
    pub add_special_tokens: bool,
    /// Whether an end-of-sequence token closes the row, trained, so the model learns to stop
    /// (a chat template closes each turn itself).
    pub append_eos: bool,
}

/// Renders a conversation with the model's chat template: `(messages,
/// add_generation_prompt)` → text.
pub type RenderChat<'a> = dyn Fn(&[ChatMessage], bool) -> Result<String> + 'a;

impl LmRow {
    /// The row as text with its trained spans. A chat is rendered once whole and, for each
    /// assistant turn, up to that turn with the generation prompt and up to its end: the turn
    /// is the difference, which must extend the whole as a prefix.
    ///
    /// # Errors
    /// The template's errors; a template that renders a conversation's beginning other than
    /// as a prefix of the whole (the turn's text cannot be found then).
    pub fn render(&self, chat: &RenderChat) -> std::result::Result<Rendered, String> {
        match self {
            LmRow::Text(text) => Ok(Rendered {
                text: text.clone(),
                trained: std::iter::once(0..text.len()).collect(),
                add_special_tokens: true,
                append_eos: true,
            }),
            LmRow::Completion { prompt, completion } => Ok(Rendered {
                text: format!("{prompt}{completion}"),
                trained: std::iter::once(prompt.len()..prompt.len() + completion.len()).collect(),
                add_special_tokens: true,
                append_eos: true,
            }),
            LmRow::Chat(messages) => {
                let render = |upto: usize, open: bool| {
                    chat(&messages[..upto], open).map_err(|e| e.to_string())
                };
                let whole = render(messages.len(), false)?;
                let mut trained = Vec::new();
                for (i, m) in messages.iter().enumerate() {
                    if m.role != "assistant" {
                        continue;
                    }
                    let before = render(i, true)?;
                    let through = render(i + 1, false)?;
                    if !through.starts_with(&before) || !whole.starts_with(&through) {
                        return Err(format!(
                            "the chat template renders turn {i} (assistant) so that the \
                             conversation up to it is not a prefix of the whole; its tokens \
                             cannot be told apart"
                        ));
                    }
                    trained.push(before.len()..through.len());
                }
                Ok(Rendered {
                    text: whole,
                    trained,
                    add_special_tokens: false,
                    append_eos: false,
                })
            }
        }
    }
}

/// A row's tokens and which of them are trained (predicted by the token before).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LmTokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token, whether the loss is taken on predicting it.
    pub trained: Vec<bool>,
}

impl LmTokens {
    /// `(position, next id)` for every position whose next token is trained.
    pub fn targets(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (1..self.ids.len())
            .filter(|&j| self.trained[j])
            .map(|j| (j - 1, self.ids[j]))
    }

    /// Keeps the first `max_len` tokens; returns whether any were cut.
    pub fn truncate(&mut self, max_len: usize) -> bool {
        let cut = self.ids.len() > max_len;
        self.ids.truncate(max_len);
        self.trained.truncate(max_len);
        cut
    }

    /// Number of trained next-token predictions.
    pub fn target_count(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&t| t).count()
    }
}

/// Turns [`Rendered`] rows (and generation prompts) into tokens with a model's tokenizer and
/// special tokens: the one place the BOS rule lives.
#[derive(Clone, Copy)]
pub struct LmEncoder<'a> {
    /// The tokenizer (padding and truncation off).
    pub tokenizer: &'a Tokenizer,
    /// Where it came from, for messages.
    pub path: &'a Path,
    /// Put in front of a plain row the tokenizer does not start with it (GGUF's
    /// `add_bos_token`).
    pub bos: Option<u32>,
    /// Closes rows whose [`Rendered::append_eos`] says so.
    pub eos: Option<u32>,
}

impl std::fmt::Debug for LmEncoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmEncoder")
            .field("path", &self.path)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl LmEncoder<'_> {
    /// The ids of a prompt to continue: a plain one (`specials`) with the tokenizer's special
    /// tokens and the model's BOS, a rendered chat as it is; as training encodes its rows.
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn prompt_ids(&self, text: &str, specials: bool) -> Result<Vec<u32>> {
        let rendered = Rendered {
            text: text.to_string(),
            trained: Vec::new(),
            add_special_tokens: specials,
            append_eos: false,
        };
        Ok(self.encode(&rendered)?.ids)
    }

    /// The tokens of `r`: a token is trained when its text overlaps a
    /// trained span (so a token that straddles a prompt's end counts as the completion's,
    /// as the first thing the model must produce).
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn encode(&self, r: &Rendered) -> Result<LmTokens> {
        let enc = self
            .tokenizer
            .encode(r.text.as_str(), r.add_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: self.path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let specials = enc.get_special_tokens_mask();
        let mut out = LmTokens::default();
        for (i, (&id, &(start, end))) in enc.get_ids().iter().zip(enc.get_offsets()).enumerate() {
            let added = specials.get(i).is_some_and(|&s| s == 1) && start == end;
            let trained = !added && r.trained.iter().any(|s| start < s.end && end > s.start);
            out.ids.push(id);
            out.trained.push(trained);
        }
        if r.add_special_tokens
            && let Some(bos) = self.bos
            && out.ids.first() != Some(&bos)
        {
            out.ids.insert(0, bos);
            out.trained.insert(0, false);
        }
        if r.append_eos
            && let Some(eos) = self.eos
        {
            out.ids.push(eos);
            out.trained.push(true);
        }
        Ok(out)
    }
}

/// A causal-LM batch: the padded input, the flat positions `b·t + j` whose next token is
/// trained, and those tokens.
///
/// # Errors
/// Tensor errors.
pub fn lm_batch(
    items: &[&LmTokens],
    pad_id: u32,
    device: &Device,
) -> Result<(ModelInput, Tensor, Tensor)> {
    let t = items.iter().map(|s| s.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(items.len() * t);
    let mut mask = Vec::with_capacity(items.len() * t);
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (b, s) in items.iter().enumerate() {
        ids.extend(&s.ids);
        ids.extend(std::iter::repeat_n(pad_id, t - s.ids.len()));
        mask.extend(std::iter::repeat_n(1u32, s.ids.len()));
        mask.extend(std::iter::repeat_n(0u32, t - s.ids.len()));
        for (j, next) in s.targets() {
            rows.push((b * t + j) as u32);
            labels.push(next);
        }
    }
    let shape = (items.len(), t);
    let input = ModelInput::new(
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    );
    Ok((
        input,
        Tensor::new(rows, device)?,
        Tensor::new(labels, device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<LmRecord>> {
        let tmp = crate::io::fs::TempDir::new("lm-rows");
        let path = tmp.join("train.jsonl");
        std::fs::write(&path, text).unwrap();
        read_lm_rows(&path)
    }

    #[test]
    fn the_three_row_kinds_are_read_and_bad_lines_are_named() {
        let got = rows(concat!(
            "{\"text\": \"hello\"}\n\n",
            "{\"prompt\": \"Q: \", \"completion\": \"A\", \"id\": 7}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, ",
            "{\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
        ))
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].row, LmRow::Text("hello".into()));
        assert_eq!(got[1].line, 3);
        assert!(matches!(got[2].row, LmRow::Chat(ref m) if m.len() == 2));

        for (line, want) in [
            ("{\"txt\": \"x\"}", "the object has: txt"),
            ("{\"prompt\": \"x\"}", "no `completion` key"),
            ("{\"text\": 3}", "`text` must be a string"),
            ("[1]", "expected a JSON object"),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
                "no `assistant`",
            ),
            (
                "{\"messages\": [{\"role\": \"user\"}]}",
                "`messages[0].content`",
            ),
            ("{oops", "not valid JSON"),
        ] {
            let err = rows(&format!("{{\"text\": \"ok\"}}\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("train.jsonl:2: "), "{err}");
            assert!(err.contains(want), "{line}: {err}");
        }
        assert!(rows("\n\n").unwrap_err().to_string().contains("no rows"));
    }

    /// A template that writes `<role>content</s>` per turn and `<assistant>` to open one.
    fn toy_chat(messages: &[ChatMessage], open: bool) -> Result<String> {
        let mut s: String = messages
            .iter()
            .map(|m| format!("<{}>{}</s>", m.role, m.content))
            .collect();
        if open {
            s.push_str("<assistant>");
        }
        Ok(s)
    }

    #[test]
    fn spans_cover_the_completion_and_each_assistant_turn_only() {
        let r = LmRow::Completion {
            prompt: "Q? ".into(),
            completion: "A.".into(),
        }
        .render(&toy_chat)
        .unwrap();
        assert_eq!(&r.text[r.trained[0].clone()], "A.");
        assert!(r.append_eos && r.add_special_tokens);

        let msg = |role: &str, content: &str| ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        let chat = LmRow::Chat(vec![
            msg("user", "hi"),
            msg("assistant", "yo"),
            msg("user", "more"),
            msg("assistant", "ok"),
        ]);
        let r = chat.render(&toy_chat).unwrap();
        let spans: Vec<&str> = r.trained.iter().map(|s| &r.text[s.clone()]).collect();
        assert_eq!(spans, ["yo</s>", "ok</s>"]);
        assert!(!r.append_eos && !r.add_special_tokens);

        // A template that rewrites earlier turns cannot be split into turns.
        let shifty = |m: &[ChatMessage], open: bool| -> Result<String> {
            Ok(format!("{}{}", m.len(), toy_chat(m, open)?))
        };
        let err = chat.render(&shifty).unwrap_err();
        assert!(err.contains("not a prefix"), "{err}");
    }

    #[test]
    fn targets_are_the_next_trained_tokens_and_batches_list_their_rows() {
        let a = LmTokens {
            ids: vec![1, 5, 6, 7],
            trained: vec![false, false, true, true],
        };
        let b = LmTokens {
            ids: vec![1, 9],
            trained: vec![false, true],
        };
        assert_eq!(a.targets().collect::<Vec<_>>(), [(1, 6), (2, 7)]);
        assert_eq!(a.target_count(), 2);
        let (input, rows, labels) = lm_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            input.input_ids.to_vec2::<u32>().unwrap(),
            [[1, 5, 6, 7], [1, 9, 0, 0]]
        );
        assert_eq!(
            input.attention_mask.to_vec2::<u32>().unwrap(),
            [[1, 1, 1, 1], [1, 1, 0, 0]]
        );
        assert_eq!(rows.to_vec1::<u32>().unwrap(), [1, 2, 4]);
        assert_eq!(labels.to_vec1::<u32>().unwrap(), [6, 7, 9]);
    }
}
