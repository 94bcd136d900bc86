//! The main job: fine-tune one base on sentiment three ways (full fine-tuning, LoRA,
//! head-only) and compare what each costs and achieves. `examples/sentiment.rs` is its
//! command line.
//!
//! One concept per file: the settings ([`SentimentOptions`], [`JobDefaults`]), the base
//! ([`BaseModel`], the input length), the job ([`run_sentiment`]), what `--resume` reads,
//! the artefacts each mode saves, and the report ([`Metrics`], the table).

mod artifacts;
mod base;
mod job;
mod mode;
mod options;
mod report;
mod resume;

pub use crate::train::trained::{Loaded, LoadedModel, Trained, load_classifier, zero_head};
pub use artifacts::MergeCheck;
pub(crate) use base::check_vocab;
pub use base::{
    BERT_MAX_LEN, BERT_MAX_LEN_CAP, BaseModel, DEFAULT_BASE, choose_max_len, parse_pooling,
    pooling_name,
};
pub use job::run_sentiment;
pub use options::{JobDefaults, SentimentOptions};
pub use report::{Metrics, RunMetrics};
pub use resume::JOB_FILE;
