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
//!
//! Two tokenizers, one file each: [`BpeTokenizer`] (ours, trained by [`train_tokenizer`],
//! for the GPT) and [`HfTokenizer`] (a Hugging Face `tokenizer.json`, for BERT bases). Both
//! are [`TextEncoder`]s: what the classifiers read.

mod bpe;
mod chat;
mod hf;

pub use bpe::{BpeTokenizer, SPECIAL_TOKENS, train_tokenizer};
pub use chat::{ChatMessage, ChatTemplate};
pub use hf::HfTokenizer;

use tokenizers::Tokenizer;

use crate::Error;

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

/// Parses a `tokenizer.json`. The bytes are first decoded as JSON, strings included:
/// `tokenizers` 0.22 panics instead of erroring on some malformed files (a `decoder` object
/// with a syntax error or an invalid `\u` escape, found by
/// `fuzz/fuzz_targets/tokenizer_json.rs`), and a fully decoded JSON document never reaches
/// that panic. Any other panic inside `tokenizers` is caught and reported as an error too.
pub(crate) fn parse_tokenizer(bytes: &[u8]) -> Result<Tokenizer, String> {
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("malformed (the tokenizers crate could not parse it)".into()),
    }
}
