//! Byte-level BPE tokens, through Hugging Face's `tokenizers` crate.
//!
//! Text is first turned into UTF-8 bytes, each byte mapped to one of 256 base tokens, so
//! any string can be encoded and nothing is ever unknown. BPE training then learns merges:
//! the most frequent adjacent pair becomes a new token, again and again, until the vocabulary
//! is full. Frequent words end up as one token; a rare Chinese character (three UTF-8 bytes)
//! may stay as several byte tokens.
//!
//! ```
//! use burn_lora_demo::tokenizer::{train_tokenizer, SPECIAL_TOKENS};
//!
//! let corpus = ["the movie was good", "the movie was bad", "好电影"].map(String::from);
//! let tokenizer = train_tokenizer(&corpus, 300, &SPECIAL_TOKENS).unwrap();
//! let ids = tokenizer.encode("the movie 好").unwrap();
//! assert_eq!(tokenizer.decode(&ids).unwrap(), "the movie 好");
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::Error;

/// Padding, beginning-of-sequence and end-of-sequence tokens, in id order 0, 1, 2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "<bos>", "<eos>"];

/// A trained byte-level BPE tokenizer with `<pad>`, `<bos>` and `<eos>` special tokens.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    inner: Tokenizer,
    pad: u32,
    bos: u32,
    eos: u32,
}

/// Learns a byte-level BPE vocabulary of `vocab_size` tokens (the 256 byte tokens, the
/// `special` tokens, and learned merges) from `texts`, one sequence each.
///
/// `special` must hold `<pad>`, `<bos>` and `<eos>`, as [`SPECIAL_TOKENS`] does.
///
/// # Errors
///
/// [`Error::Tokenizer`] when training fails or a required special token is missing.
pub fn train_tokenizer(
    texts: &[String],
    vocab_size: usize,
    special: &[&str],
) -> Result<BpeTokenizer, Error> {
    let fail = |message: String| Error::Tokenizer {
        path: PathBuf::new(),
        message,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(special.iter().map(|s| AddedToken::from(*s, true)).collect())
        .build();
    // No prefix space: it would make decode(encode(s)) differ from s.
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(None::<PostProcessorWrapper>)
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| fail(e.to_string()))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| fail(e.to_string()))?;
    let inner = Tokenizer::from_str(&json).map_err(|e| fail(e.to_string()))?;
    BpeTokenizer::new(inner, Path::new(""))
}

impl BpeTokenizer {
    fn new(inner: Tokenizer, path: &Path) -> Result<Self, Error> {
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::Tokenizer {
                path: path.to_path_buf(),
                message: format!("has no `{token}` token"),
            })
        };
        Ok(Self {
            pad: id(SPECIAL_TOKENS[0])?,
            bos: id(SPECIAL_TOKENS[1])?,
            eos: id(SPECIAL_TOKENS[2])?,
            inner,
        })
    }

    /// Reads a `tokenizer.json` (the standard format; Python `tokenizers` reads it too).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] naming the file, when it is missing, malformed, or lacks a
    /// special token.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `tokenizer.json`; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`BpeTokenizer::load`], less the I/O.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let inner = parse_tokenizer(bytes).map_err(|message| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        })?;
        Self::new(inner, path)
    }

    /// Writes the tokenizer as `tokenizer.json`.
    ///
    /// # Errors
    ///
    /// I/O failures.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let json = self.inner.to_string(true).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::io::write_atomic(path, json.as_bytes())
    }

    /// The token ids of `text`, without special tokens.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the tokenizer fails (it does not for valid UTF-8).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; special tokens are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// The vocabulary entry of `id`, in the byte-level alphabet (`Ġ` stands for a space).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `<pad>`.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of `<bos>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id of `<eos>`.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
}

/// Parses a `tokenizer.json`. The bytes are first decoded as JSON, strings included:
/// `tokenizers` 0.22 panics instead of erroring on some malformed files (a `decoder` object
/// with a syntax error or an invalid `\u` escape, found by
/// `fuzz/fuzz_targets/tokenizer_json.rs`), and a fully decoded JSON document never reaches
/// that panic. Any other panic inside `tokenizers` is caught and reported as an error too.
fn parse_tokenizer(bytes: &[u8]) -> Result<Tokenizer, String> {
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("malformed (the tokenizers crate could not parse it)".into()),
    }
}

/// How a classifier's tokenizer turns one text into ids.
pub trait TextEncoder {
    /// The ids of `text` as the classifier reads it, at most `max_len` of them, and whether
    /// the text had to be truncated. The closing special token is kept when truncating.
    ///
    /// # Errors
    ///
    /// A tokenizer failure.
    fn encode_for_classifier(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, bool), Error>;

    /// The padding id.
    fn padding_id(&self) -> u32;
}

impl TextEncoder for BpeTokenizer {
    /// `text <eos>`: the last position is then always `<eos>`, whose hidden state in a
    /// causal model has read the whole text.
    fn encode_for_classifier(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, bool), Error> {
        let mut ids = self.encode(text)?;
        let keep = max_len.saturating_sub(1).max(1);
        let truncated = ids.len() > keep;
        ids.truncate(keep);
        ids.push(self.eos_id());
        Ok((ids, truncated))
    }

    fn padding_id(&self) -> u32 {
        self.pad_id()
    }
}

/// A Hugging Face `tokenizer.json` with its own special tokens and post-processor (BERT's
/// WordPiece with `[CLS] … [SEP]`, for example), as the checkpoint's authors made it.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    inner: Tokenizer,
    pad: u32,
}

impl HfTokenizer {
    /// Reads a `tokenizer.json`; `pad_token` (such as `[PAD]`) must be in its vocabulary.
    /// Padding and truncation settings in the file are switched off.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] naming the file, when it is missing, malformed, or has no
    /// `pad_token`.
    pub fn load(path: impl AsRef<Path>, pad_token: &str) -> Result<Self, Error> {
        let path = path.as_ref();
        let inner = Self::read(path)?;
        let pad = inner
            .token_to_id(pad_token)
            .ok_or_else(|| Error::Tokenizer {
                path: path.to_path_buf(),
                message: format!("has no `{pad_token}` token"),
            })?;
        Ok(Self { inner, pad })
    }

    /// Reads a `tokenizer.json` whose padding token has id `pad_id` (a checkpoint's
    /// `pad_token_id`). Padding and truncation settings in the file are switched off.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] naming the file, when it is missing, malformed, or has no token
    /// with id `pad_id`.
    pub fn load_with_pad_id(path: impl AsRef<Path>, pad_id: usize) -> Result<Self, Error> {
        let path = path.as_ref();
        let inner = Self::read(path)?;
        let pad = u32::try_from(pad_id)
            .ok()
            .filter(|&id| inner.id_to_token(id).is_some())
            .ok_or_else(|| Error::Tokenizer {
                path: path.to_path_buf(),
                message: format!("has no token with the pad_token_id {pad_id} of config.json"),
            })?;
        Ok(Self { inner, pad })
    }

    fn read(path: &Path) -> Result<Tokenizer, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let fail = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut inner = parse_tokenizer(&bytes).map_err(fail)?;
        // Checkpoints often ship fixed padding and truncation (sentence-transformers: pad to
        // 128). Batching pads with a mask and `encode_for_classifier` truncates and counts,
        // so both are switched off here: a pad token must never be read as text.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?;
        Ok(inner)
    }

    /// The number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids with the tokenizer's special tokens (`[CLS] … [SEP]` for BERT).
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: "tokenizer.json".into(),
                message: e.to_string(),
            })
    }
}

impl TextEncoder for HfTokenizer {
    fn encode_for_classifier(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, bool), Error> {
        let mut ids = self.encode(text)?;
        let truncated = ids.len() > max_len.max(2);
        if truncated {
            let last = ids[ids.len() - 1];
            ids.truncate(max_len.max(2) - 1);
            ids.push(last);
        }
        Ok((ids, truncated))
    }

    fn padding_id(&self) -> u32 {
        self.pad
    }
}
