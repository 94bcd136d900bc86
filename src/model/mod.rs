//! The models: a small GPT-style decoder (one concept per file, in the spirit of nanoGPT)
//! and a Hugging Face BERT encoder ([`bert`]), with the classifiers the sentiment job trains.
//!
//! Every projection is a [`burn_lora::nn::Linear`], Burn's `Linear` with LoRA's factored
//! path, so LoRA targets use the names of the LoRA paper and PEFT, and `apply_lora` needs
//! nothing from these types.

mod attention;
pub mod bert;
mod block;
mod classifier;
mod gelu;
mod generate;
mod gpt;
mod mlp;

pub use attention::CausalSelfAttention;
pub use block::Block;
pub use burn_lora::dropout::{dropout, with_dropout_seed};
pub use classifier::{Classifier, GptClassifier, Pooling};
pub use gelu::{gelu, normal_cdf_pdf};
pub use generate::{Sampling, continuation_nll, generate, top_next};
pub use gpt::{Gpt, GptConfig, MAX_PARAMS, attention_bias, load_config, parse_config};
pub(crate) use gpt::{load_module, save_module};
pub use mlp::Mlp;
