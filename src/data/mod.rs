//! Data: labelled text files (TSV, CSV, JSON Lines) and their classes, unlabelled
//! pre-training text, and batches of tokens.

mod batch;
mod corpus;
mod formats;
mod labels;
mod sentiment;

pub use batch::{ClassBatch, LmBatch, class_batch, lm_batches};
pub use corpus::{Corpus, build_corpus, split_validation};
pub use labels::{HeadRecord, LabelSet};
pub use sentiment::{Example, Format, ReadOptions, SentimentDataset};
