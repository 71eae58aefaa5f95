//! Tokenization with a Hugging Face `tokenizer.json` (the `tokenizers` crate, so ids match
//! Python's `tokenizers`/`transformers`).
//!
//! [`TextEncoder::from_file`] turns padding **off** (many packaged tokenizers, e.g.
//! all-MiniLM-L6-v2's, pad every text to 128; batches are padded dynamically by
//! [`crate::data::collate`] instead) and sets longest-first truncation at `max_len` tokens,
//! special tokens included.

use std::path::{Path, PathBuf};

use tokenizers::{
    EncodeInput, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::data::Example;
use crate::error::{Error, Result};

/// The token ids and segment (type) ids of one example, special tokens included, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids: 0 for `[CLS] a [SEP]`, 1 for `b [SEP]`.
    pub type_ids: Vec<u32>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl From<&Encoding> for Encoded {
    fn from(e: &Encoding) -> Self {
        Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        }
    }
}

/// How many tokenizer calls are running inside [`TextEncoder`]'s panic guard; the hook
/// [`quiet_guarded_panics`] installs stays silent while any is.
static GUARDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Installs a panic hook that prints nothing for a panic inside the tokenizers crate that
/// [`TextEncoder`] turns into an error (the error is reported instead), and defers to the
/// previous hook otherwise. For binaries; call once at start.
pub fn quiet_guarded_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if GUARDS.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            previous(info);
        }
    }));
}

/// Runs the tokenizers crate on `what`, turning an error or a panic inside it into an error
/// naming `path` (a last guard at this boundary: the crate's own checks of a file's
/// configuration are not complete).
fn guard<T>(path: &Path, what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    use std::sync::atomic::Ordering;
    let err = |reason: String| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    GUARDS.fetch_add(1, Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDS.fetch_sub(1, Ordering::SeqCst);
    match outcome {
        Ok(r) => r.map_err(|e| err(format!("{what}: {e}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(err(format!(
                "{what}: the tokenizer failed inside the tokenizers crate ({msg}); its \
                 configuration is inconsistent"
            )))
        }
    }
}

/// A HF `tokenizer.json` as the tokenizers crate loads it, with padding and truncation turned
/// off (packaged tokenizers often pad every text to 128): for generation, which needs the raw
/// tokenizer.
///
/// # Errors
/// [`Error::Tokenizer`] naming the file for a missing, irregular or invalid one (a panic
/// inside the crate included).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::Tokenizer {
            path: path.into(),
            reason: "no such file".into(),
        });
    }
    crate::io::fs::ensure_regular_file(path)?;
    let mut tokenizer = guard(path, "reading", || Tokenizer::from_file(path))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::Tokenizer {
            path: path.into(),
            reason: format!("turning truncation off: {e}"),
        })?;
    Ok(tokenizer)
}

/// A loaded tokenizer that turns [`Example`]s into [`Encoded`] token ids.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    max_len: usize,
    /// The model's embedding rows and its folder, once known: ids at or past it are refused.
    id_limit: Option<(usize, PathBuf)>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl TextEncoder {
    /// Loads `path` (a `tokenizer.json`), turns padding off and truncates longest-first to
    /// `max_len` tokens (special tokens included).
    ///
    /// The pad id is taken from the file's padding config, else the `[PAD]` or `<pad>` token,
    /// else 0.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the file is missing or not a valid tokenizer, or `max_len`
    /// leaves no room for one token of each text of a pair besides the special tokens.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |reason: String| Error::Tokenizer {
            path: path.into(),
            reason,
        };
        if !path.exists() {
            return Err(err("no such file".into()));
        }
        crate::io::fs::ensure_regular_file(path)?;
        let mut tokenizer = guard(path, "reading", || Tokenizer::from_file(path))?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .unwrap_or(0);
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if max_len < added + 2 {
            return Err(err(format!(
                "max_len {max_len} is too small: a text pair needs {added} special tokens \
                 plus at least one token per text, so max_len must be at least {}",
                added + 2
            )));
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(format!("setting truncation to {max_len}: {e}")))?;
        let encoder = TextEncoder {
            tokenizer,
            path: path.into(),
            pad_id,
            max_len,
            id_limit: None,
        };
        // A post-processor naming a special token the file does not define panics inside the
        // tokenizers crate on the first pair: find out now, with the file named.
        encoder.encode(&Example {
            text_a: "a".into(),
            text_b: Some("b".into()),
            label: None,
        })?;
        Ok(encoder)
    }

    /// Makes every later encoding refuse token ids at or past `rows`, the embedding rows of
    /// the model in `model_dir`: a tokenizer of another model would otherwise fail deep in
    /// the forward with an index error naming neither.
    pub fn limit_ids(&mut self, rows: usize, model_dir: &Path) {
        self.id_limit = Some((rows, model_dir.to_path_buf()));
    }

    /// [`guard`] naming this encoder's file.
    fn guarded<T>(&self, what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
        guard(&self.path, what, f)
    }

    /// Refuses ids past the model's embedding table (see [`limit_ids`](Self::limit_ids)).
    fn check_ids(&self, encoded: &Encoded) -> Result<()> {
        let Some((rows, model)) = &self.id_limit else {
            return Ok(());
        };
        match encoded.ids.iter().find(|&&id| id as usize >= *rows) {
            None => Ok(()),
            Some(id) => Err(self.error(format!(
                "gives token id {id}, but the model in {} has {rows} embedding rows: the \
                 tokenizer does not belong to this model",
                model.display()
            ))),
        }
    }

    /// Encodes one example: `[CLS] a [SEP]`, or `[CLS] a [SEP] b [SEP]` when `text_b` is
    /// set (the exact template is the tokenizer's).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails on the text.
    pub fn encode(&self, ex: &Example) -> Result<Encoded> {
        let what = format!("encoding `{}`", preview(&ex.text_a));
        let enc = self.guarded(&what, || self.tokenizer.encode_fast(input(ex), true))?;
        let encoded = Encoded::from(&enc);
        self.check_ids(&encoded)?;
        Ok(encoded)
    }

    /// Encodes many examples (in parallel), in order.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails on any text.
    pub fn encode_batch(&self, examples: &[Example]) -> Result<Vec<Encoded>> {
        let inputs: Vec<EncodeInput> = examples.iter().map(input).collect();
        let encs = self.guarded("encoding a batch", || {
            self.tokenizer.encode_batch_fast(inputs, true)
        })?;
        let encoded: Vec<Encoded> = encs.iter().map(Encoded::from).collect();
        encoded.iter().try_for_each(|e| self.check_ids(e))?;
        Ok(encoded)
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size, added tokens included (the model's embedding rows must cover it).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The truncation length, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The tokenizer file this encoder was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason,
        }
    }
}

fn input(ex: &Example) -> EncodeInput<'_> {
    match &ex.text_b {
        Some(b) => (ex.text_a.as_str(), b.as_str()).into(),
        None => ex.text_a.as_str().into(),
    }
}

/// The first 40 characters of a text, for messages.
fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(40).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(max_len: usize) -> TextEncoder {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer-tiny.json");
        TextEncoder::from_file(&path, max_len).unwrap()
    }

    fn single(a: &str) -> Example {
        Example {
            text_a: a.into(),
            text_b: None,
            label: None,
        }
    }

    fn pair(a: &str, b: &str) -> Example {
        Example {
            text_a: a.into(),
            text_b: Some(b.into()),
            label: None,
        }
    }

    #[test]
    fn tiny_tokenizer_loads_with_padding_off() {
        let enc = tiny(128);
        assert_eq!(enc.vocab_size(), 1000);
        assert_eq!(enc.pad_id(), 0);
        let (sep, unk) = (
            enc.token_to_id("[SEP]").unwrap(),
            enc.token_to_id("[UNK]").unwrap(),
        );
        // The SST-2 dev's first sentence; the file pads to 128, we must not.
        let e = enc
            .encode(&single("it 's a charming and often affecting journey . "))
            .unwrap();
        // [CLS] it ' s a charming and often af ##fe ##cting journey . [SEP]: not 128 long.
        assert!(e.ids.len() < 20, "padding must be off: {e:?}");
        let want: Vec<u32> = ["[CLS]", "it", "'", "s", "a", "charming", "and", "often"]
            .iter()
            .map(|t| enc.token_to_id(t).unwrap())
            .collect();
        assert_eq!(e.ids[..8], want[..]);
        assert_eq!(*e.ids.last().unwrap(), sep);
        assert!(
            !e.ids.contains(&unk),
            "common words must be in the vocab: {e:?}"
        );
        assert!(e.type_ids.iter().all(|&t| t == 0));
        // Lower-casing, and `##` pieces for an unseen word instead of [UNK].
        let e = enc.encode(&single("The Zyzzyva")).unwrap();
        assert!(!e.ids.contains(&unk), "{e:?}");
        assert_eq!(e.ids[1], enc.token_to_id("the").unwrap());
        assert_eq!(e.ids[2], enc.token_to_id("z").unwrap());
        assert_eq!(e.ids[3], enc.token_to_id("##y").unwrap());
    }

    #[test]
    fn pairs_get_segment_ids() {
        let enc = tiny(128);
        let e = enc.encode(&pair("a good film", "the story")).unwrap();
        // [CLS] a good film [SEP] the story [SEP]
        assert_eq!(e.type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1]);
        let sep = enc.token_to_id("[SEP]").unwrap();
        assert_eq!(e.ids[4], sep);
        assert_eq!(e.ids[7], sep);
    }

    #[test]
    fn truncation_is_longest_first_and_counts_special_tokens() {
        let enc = tiny(8);
        let long = "the film is good and the story is funny and the acting is great";
        let e = enc.encode(&single(long)).unwrap();
        assert_eq!(e.len(), 8);
        assert_eq!(*e.ids.last().unwrap(), enc.token_to_id("[SEP]").unwrap());
        // Pair: 3 special tokens leave 5; the longer text is cut first.
        let e = enc.encode(&pair("good", long)).unwrap();
        assert_eq!(e.len(), 8);
        assert_eq!(e.type_ids, vec![0, 0, 0, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn batch_matches_single_encoding() {
        let enc = tiny(16);
        let exs = vec![single("a charming journey"), pair("a", "b c"), single("")];
        let batch = enc.encode_batch(&exs).unwrap();
        for (ex, b) in exs.iter().zip(&batch) {
            assert_eq!(&enc.encode(ex).unwrap(), b);
        }
        assert_eq!(batch[2].len(), 2); // [CLS] [SEP]
    }

    #[test]
    fn bad_tokenizer_files_and_lengths_are_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let err = TextEncoder::from_file(&dir.join("nope.json"), 16).unwrap_err();
        assert!(
            err.to_string().ends_with("nope.json: no such file"),
            "{err}"
        );
        let err = TextEncoder::from_file(&dir.join("custom/scores.jsonl"), 16).unwrap_err();
        assert!(err.to_string().starts_with("tokenizer "), "{err}");
        let err = TextEncoder::from_file(&dir.join("tokenizer-tiny.json"), 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("max_len 4 is too small: a text pair needs 3 special tokens"),
            "{err}"
        );
    }
}
