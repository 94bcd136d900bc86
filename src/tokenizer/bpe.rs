//! [`BpeTokenizer`]: our byte-level BPE, trained on the corpus by [`train_tokenizer`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::Error;

use super::{TextEncoder, parse_tokenizer};

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
