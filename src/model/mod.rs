//! The models, one concept per file in the spirit of nanoGPT: a small GPT-style decoder
//! ([`Gpt`], built from [`Block`], [`CausalSelfAttention`] and [`Mlp`]), a Hugging Face BERT
//! encoder ([`bert`]), pooling ([`Pooling`]) and the two classifiers the sentiment job
//! trains ([`GptClassifier`], [`bert::BertClassifier`]). Nothing here knows of training:
//! the training loop's contract, [`Classifier`](crate::train::Classifier), lives in
//! [`train`](crate::train).
//!
//! Every projection is a [`burn_lora::nn::Linear`], Burn's `Linear` with LoRA's factored
//! path, so LoRA targets use the names of the LoRA paper and PEFT, and `apply_lora` needs
//! nothing from these types.

mod attention;
pub mod bert;
mod block;
mod gelu;
mod generate;
mod gpt;
mod gpt_classifier;
mod mlp;
mod pooling;

pub use attention::{CausalSelfAttention, attend};
pub use block::Block;
pub use burn_lora::dropout::{dropout, with_dropout_seed};
pub use gelu::{gelu, normal_cdf_pdf};
pub use generate::{Sampling, continuation_nll, generate, top_next};
pub use gpt::{Gpt, GptConfig, MAX_PARAMS, attention_bias, load_config, parse_config};
pub use gpt_classifier::GptClassifier;
pub use mlp::Mlp;
pub use pooling::{Pooling, pool_weights, weighted_pool};
