//! Data: labelled text files (TSV, CSV, JSON Lines) and their classes, unlabelled
//! pre-training text, instruction data for generative SFT, and batches of tokens.

mod batch;
mod corpus;
mod formats;
mod labels;
mod sentiment;
mod sft;
mod sft_batch;

pub use batch::{ClassBatch, LmBatch, class_batch, lm_batches};
pub use corpus::{Corpus, build_corpus, split_validation};
pub use labels::{HeadRecord, LabelSet};
pub use sentiment::{Example, Format, ReadOptions, SentimentDataset};
pub use sft::{SftDataset, SftRecord};
pub use sft_batch::{SftBatch, SftTokens, completion_mask, sft_batch};
