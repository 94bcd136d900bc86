//! A small GPT-style decoder, one concept per file, in the spirit of nanoGPT.
//!
//! Every projection (`query`, `key`, `value`, `out`, `fc_in`, `fc_out`) is an
//! [`AdaptableLinear`](crate::AdaptableLinear), so LoRA targets use the names of the LoRA
//! paper and PEFT.

mod attention;
pub mod bert;
mod block;
mod classifier;
pub(crate) mod dropout;
mod gelu;
mod generate;
mod gpt;
mod mlp;

pub use attention::CausalSelfAttention;
pub use block::Block;
pub use classifier::{Classifier, GptClassifier, Pooling};
pub use dropout::{dropout, with_dropout_seed};
pub use gelu::{gelu, normal_cdf_pdf};
pub use generate::{Sampling, continuation_nll, generate, top_next};
pub use gpt::{Gpt, GptConfig, MAX_PARAMS, attention_bias, load_config, parse_config};
pub(crate) use gpt::{load_module, save_module};
pub use mlp::Mlp;
