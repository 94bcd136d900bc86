//! Data: labelled sentiment files, unlabelled pre-training text, and batches of tokens.

mod batch;
mod corpus;
mod sentiment;

pub use batch::{ClassBatch, LmBatch, class_batch, lm_batches, pool_weights};
pub use corpus::{Corpus, build_corpus, split_validation};
pub use sentiment::{Example, SentimentDataset};
