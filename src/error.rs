//! The demonstration's error type: its own files (datasets, tokenizers, checkpoints,
//! configs), its command lines and its training, plus every [`burn_lora::Error`].
//!
//! Each variant names the file, line, field or shape that was wrong, so a user's bad input
//! never panics the program.

use std::path::PathBuf;

/// Everything that can go wrong in the demonstration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A LoRA error: a config, a model's targets, an adapter's files.
    #[error(transparent)]
    Lora(#[from] burn_lora::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed, or lacks a required key.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A tokenizer could not be trained, read or written.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The `tokenizer.json` (or the corpus) concerned; empty when in memory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A chat template did not compile, or raised an error while rendering.
    #[error("chat template {}: {message}", path.display())]
    ChatTemplate {
        /// The file it came from (`tokenizer_config.json` or `chat_template.jinja`).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A line of a dataset file was malformed.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What was wrong with it.
        message: String,
    },
    /// A dataset as a whole cannot be used (empty, one label only, ...).
    #[error("{}: {message}", path.display())]
    Dataset {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A model `config.json` describes an architecture this crate does not implement.
    #[error("{}: unsupported {found}; burn-lora loads BERT encoders (model_type `bert`) and the decoders LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM", path.display())]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What it declares.
        found: String,
    },
    /// A model checkpoint could not be read or written, or does not fit the model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The weights file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The output directory already holds files and overwriting was not asked for.
    #[error(
        "{} already exists and is not empty; pass --overwrite to replace its files, or choose another --out",
        path.display()
    )]
    OutputExists {
        /// The directory.
        path: PathBuf,
    },
    /// A command-line argument was invalid.
    #[error("{0}")]
    Usage(String),
    /// Training produced a non-finite loss.
    #[error(
        "the loss became {loss} at step {step}; the learning rate ({lr:e}) is probably too high"
    )]
    NonFiniteLoss {
        /// The optimizer step (1-based).
        step: usize,
        /// The loss value.
        loss: f64,
        /// The learning rate at that step.
        lr: f64,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
