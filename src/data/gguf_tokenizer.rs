//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), as a HF
//! `tokenizers` tokenizer: GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) from the
//! token list and merges, control tokens (type 3) as special tokens, and the pre-tokenizer
//! `tokenizer.ggml.pre` names where ttlora knows it (`smollm`: digits one by one, then GPT-2's
//! byte-level split; others: GPT-2's split alone).

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::io::{GgufSource, MetaValue, TensorSource};

/// llama.cpp's token type of a control token (`<|im_start|>`).
const CONTROL: u64 = 3;

/// llama.cpp's token type of a user-defined token, which it splits out of any text.
const USER_DEFINED: u64 = 4;

/// The tokenizer in `g`'s metadata.
///
/// # Errors
/// [`Error::Tokenizer`] naming the file: a tokenizer model other than `gpt2`, a missing or
/// malformed token list or merge list, merges naming unknown tokens.
pub fn tokenizer_from_gguf(g: &GgufSource) -> Result<Tokenizer> {
    let path = g.location().to_path_buf();
    let bad = |reason: String| Error::Tokenizer {
        path: path.clone(),
        reason,
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        g.meta(key)
            .and_then(MetaValue::as_array)
            .ok_or_else(|| bad(format!("no `{key}` array in the metadata")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
            })
            .collect()
    };
    let model = g.meta("tokenizer.ggml.model").and_then(MetaValue::as_str);
    if model != Some("gpt2") {
        return Err(bad(format!(
            "`tokenizer.ggml.model` is {model:?}; ttlora reads byte-level BPE (`gpt2`) so far"
        )));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(format!("building the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = g.meta("tokenizer.ggml.pre").and_then(MetaValue::as_str);
    if !matches!(pre, None | Some("gpt2" | "default" | "smollm")) {
        return Err(bad(format!(
            "`tokenizer.ggml.pre` is {pre:?}; ttlora splits text as gpt2, default and smollm do \
             so far, and another split would give other token ids silently"
        )));
    }
    if pre == Some("smollm") {
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ])));
    } else {
        tokenizer.with_pre_tokenizer(Some(byte_level));
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let types = g
        .meta("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array);
    let of_type = |kind: u64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                types.and_then(|t| t.get(*i)).and_then(MetaValue::as_u64) == Some(kind)
            })
            .map(|(_, t)| AddedToken::from(t.clone(), special))
            .collect()
    };
    tokenizer
        .add_special_tokens(of_type(CONTROL, true))
        .map_err(|e| bad(format!("adding the control tokens: {e}")))?;
    tokenizer
        .add_tokens(of_type(USER_DEFINED, false))
        .map_err(|e| bad(format!("adding the user-defined tokens: {e}")))?;
    Ok(tokenizer)
}
