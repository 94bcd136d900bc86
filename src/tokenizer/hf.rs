//! [`HfTokenizer`]: a Hugging Face `tokenizer.json` as a checkpoint's authors made it.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::Error;

use super::{TextEncoder, parse_tokenizer};

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

impl HfTokenizer {
    /// Ids of `text`, with the tokenizer's special tokens (Llama's BOS) only when
    /// `add_special_tokens`: transformers adds them to a plain prompt, not to a rendered
    /// chat template, which writes its own.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: "tokenizer.json".into(),
                message: e.to_string(),
            })
    }

    /// The text of `ids`, without special tokens when `skip_special_tokens`.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if an id is out of the vocabulary or decoding fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, Error> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                path: "tokenizer.json".into(),
                message: e.to_string(),
            })
    }

    /// The id of a token's text (`<|im_end|>`), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
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
