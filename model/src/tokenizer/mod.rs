//! Tokenizer: a thin layer over the `tokenizers` crate, built either from a
//! Hugging Face `tokenizer.json` or from the `tokenizer.ggml.*` metadata of a
//! GGUF file (gpt2-style byte-level BPE), plus an incremental decoder that
//! streams valid UTF-8 text deltas token by token.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::gguf::{GgufFile, GgufValue};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The llama-3 ("llama-bpe") pre-tokenizer regex, as in Hugging Face's
/// tokenizer.json for those models.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("failed to load tokenizer from {path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("GGUF metadata key {0} is missing or has the wrong type")]
    MissingMetadata(&'static str),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
    #[error("failed to build tokenizer: {0}")]
    Build(String),
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("token id {id} is not in the vocabulary (size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name llama.cpp uses.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token; may be empty (all tokens normal).
    pub token_types: Vec<i32>,
    /// "left right" pairs, by rank.
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos: bool,
}

impl GgufTokenizerData {
    /// Reads the tokenizer metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        use TokenizerError::MissingMetadata as Missing;
        let strings = |key: &'static str| -> Result<Vec<String>, TokenizerError> {
            let list = file.get_str_array(key).ok_or(Missing(key))?;
            Ok(list.into_iter().map(str::to_owned).collect())
        };
        // Optional keys: absent is fine, present with the wrong type is not.
        let has = |key| file.get(key).is_some();
        let token_types = match has("tokenizer.ggml.token_type") {
            false => Vec::new(),
            true => file
                .get_i32_array("tokenizer.ggml.token_type")
                .ok_or(Missing("tokenizer.ggml.token_type"))?,
        };
        let merges = match has("tokenizer.ggml.merges") {
            false => Vec::new(),
            true => strings("tokenizer.ggml.merges")?,
        };
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(GgufValue::Bool(b)) => *b,
            Some(_) => return Err(Missing("tokenizer.ggml.add_bos_token")),
        };
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or(Missing("tokenizer.ggml.model"))?;
        Ok(Self {
            model: model.to_owned(),
            pre: file.get_str("tokenizer.ggml.pre").map(str::to_owned),
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types,
            merges,
            bos_token_id: file.get_u32("tokenizer.ggml.bos_token_id"),
            eos_token_id: file.get_u32("tokenizer.ggml.eos_token_id"),
            add_bos,
        })
    }
}

/// Which pre-tokenizer a GGUF `tokenizer.ggml.pre` name selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreKind {
    /// The gpt2 regex.
    Gpt2,
    /// Every `\p{N}` isolated, then the gpt2 regex (smollm, starcoder, refact).
    DigitsGpt2,
    /// The llama-3 regex (digits in groups of up to three), merges ignored
    /// for words already in the vocabulary.
    Llama3,
}

fn pre_kind(pre: Option<&str>) -> PreKind {
    match pre {
        None | Some("default" | "gpt2" | "gpt-2" | "mpt" | "olmo") => PreKind::Gpt2,
        Some("smollm" | "starcoder" | "refact") => PreKind::DigitsGpt2,
        Some("llama-bpe" | "llama3" | "llama-v3") => PreKind::Llama3,
        Some(other) => {
            tracing::warn!(
                pre = other,
                "unknown tokenizer.ggml.pre; using the gpt2 pre-tokenizer"
            );
            PreKind::Gpt2
        }
    }
}

/// A text tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended by `encode(.., add_special_tokens = true)` (GGUF only; a
    /// tokenizer.json carries its own post-processor).
    bos_to_add: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        Ok(Self {
            inner,
            bos_to_add: None,
            bos_token_id: None,
            eos_token_id: None,
        })
    }

    /// Builds a byte-level BPE tokenizer from GGUF tokenizer metadata.
    pub fn from_gguf_data(data: GgufTokenizerData) -> Result<Self, TokenizerError> {
        if data.model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model = {:?}: only gpt2-style byte-level BPE is supported \
                 (sentencepiece / \"llama\" vocabularies are not supported yet)",
                data.model
            )));
        }
        if data.tokens.is_empty() {
            return Err(TokenizerError::Invalid("empty vocabulary".into()));
        }
        let n = data.tokens.len();
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::Invalid(format!(
                "vocabulary too large: {n}"
            )));
        }
        if !data.token_types.is_empty() && data.token_types.len() != n {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {n} tokens",
                data.token_types.len()
            )));
        }
        for (name, id) in [("bos", data.bos_token_id), ("eos", data.eos_token_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::Invalid(format!(
                    "{name} token id {id} out of range (vocab size {n})"
                )));
            }
        }

        let mut vocab = Vocab::default();
        let mut duplicates = 0usize;
        for (id, tok) in (0u32..).zip(&data.tokens) {
            if vocab.contains_key(tok) {
                duplicates += 1;
            } else {
                vocab.insert(tok.clone(), id);
            }
        }
        if duplicates > 0 {
            tracing::warn!(
                duplicates,
                "GGUF vocabulary has duplicate token strings; keeping the first"
            );
        }
        let merges = data
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| TokenizerError::Invalid(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let kind = pre_kind(data.pre.as_deref());
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(kind == PreKind::Llama3)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex);
        let pre_tokenizer: PreTokenizerWrapper = match kind {
            PreKind::Gpt2 => byte_level(true).into(),
            PreKind::DigitsGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
            }
            PreKind::Llama3 => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_PATTERN.to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| TokenizerError::Build(e.to_string()))?;
                Sequence::new(vec![split.into(), byte_level(false).into()]).into()
            }
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let added = |ty: i32, special: bool| {
            data.tokens
                .iter()
                .zip(&data.token_types)
                .filter(|(_, &t)| t == ty)
                .map(|(tok, _)| AddedToken::from(tok.clone(), special).normalized(false))
                .collect::<Vec<_>>()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

        Ok(Self {
            inner,
            bos_to_add: if data.add_bos {
                data.bos_token_id
            } else {
                None
            },
            bos_token_id: data.bos_token_id,
            eos_token_id: data.eos_token_id,
        })
    }

    /// Loads the tokenizer of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_data(GgufTokenizerData::from_gguf(file)?)
    }

    /// Encodes `text`. Special tokens written in the text (e.g.
    /// `<|im_start|>`) become single tokens either way; `add_special_tokens`
    /// adds BOS where the model asks for it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let ids = enc.get_ids();
        match self.bos_to_add.filter(|_| add_special_tokens) {
            Some(bos) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            None => Ok(ids.to_vec()),
        }
    }

    /// Decodes `ids` (special tokens included) into text; invalid UTF-8 is
    /// replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of the added tokens (special and user-defined: `<|im_start|>`
    /// and the like), which ordinary text never tokenizes into. Sorted.
    pub fn added_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.get_added_tokens_decoder().into_keys().collect();
        ids.sort_unstable();
        ids
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }
}

/// Streams text: each `push` returns the new text delta, always valid UTF-8;
/// bytes of an incomplete multi-byte character are held back until complete.
///
/// It decodes the tail window `tokens[prefix_offset..]` and emits only the
/// part after what the window had already produced (`tokens[prefix_offset..
/// read_offset]`), and only when it does not end in U+FFFD.
///
/// Works over any handle to the tokenizer: `&Tokenizer` or `Arc<Tokenizer>`.
pub struct IncrementalDecoder<T: std::ops::Deref<Target = Tokenizer>> {
    tok: T,
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<T: std::ops::Deref<Target = Tokenizer>> IncrementalDecoder<T> {
    pub fn new(tok: T) -> Self {
        Self {
            tok,
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.tokens.push(id);
        let delta = self.delta().inspect_err(|_| {
            // Leave the state as it was: an unknown id is not kept.
            self.tokens.pop();
        })?;
        match delta {
            Some(d) if !d.ends_with('\u{FFFD}') => {
                self.advance();
                Ok(d)
            }
            _ => Ok(String::new()),
        }
    }

    /// Flushes whatever is held back (incomplete bytes become U+FFFD).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let delta = self.delta()?.unwrap_or_default();
        self.advance();
        Ok(delta)
    }

    /// The text after what was emitted, or None when there is none yet.
    fn delta(&self) -> Result<Option<String>, TokenizerError> {
        let window = &self.tokens[self.prefix_offset..];
        let emitted = self
            .tok
            .decode(&window[..self.read_offset - self.prefix_offset])?;
        let full = self.tok.decode(window)?;
        if full.len() <= emitted.len() {
            return Ok(None);
        }
        Ok(Some(match full.strip_prefix(emitted.as_str()) {
            Some(rest) => rest.to_owned(),
            // The window's decode does not extend the emitted text (a decoder
            // that rewrites earlier text): emit the part past the emitted
            // length, at a char boundary.
            None => {
                let mut cut = emitted.len();
                while !full.is_char_boundary(cut) {
                    cut += 1;
                }
                full[cut..].to_owned()
            }
        }))
    }

    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
    }
}

#[cfg(test)]
mod tests;
