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
mod batch_generate;
pub mod bert;
mod block;
mod causal_lm;
mod decoder;
mod fused;
mod gelu;
mod generate;
mod gpt;
mod gpt_classifier;
pub mod llama;
mod mlp;
mod pooling;
mod to_f32;

pub use attention::{CausalSelfAttention, attend};
pub use batch_generate::{Finish, GenerateOptions, Generation, generate_batch};
pub use block::Block;
pub use burn_lora::dropout::{dropout, with_dropout_seed};
pub use causal_lm::{CausalLm, KvCache, LinearHead, decoder_bias, positions};
pub use decoder::{Decoder, DecoderBase, LmTokenizer};
pub use fused::{softmax_last, swiglu};
pub use gelu::{gelu, normal_cdf_pdf};
pub use generate::{Sampling, continuation_nll, generate, top_next};
pub use gpt::{Gpt, GptConfig, MAX_PARAMS, attention_bias, load_config, parse_config};
pub use gpt_classifier::GptClassifier;
pub use mlp::Mlp;
pub use pooling::{Pooling, pool_weights, weighted_pool};
pub use to_f32::ToF32;

/// `embedding`'s rows for `tokens`, `[batch, seq, d]`: [`burn::nn::Embedding::forward`],
/// except that a quantized table (a QLoRA base quantized with its embeddings) has only the
/// rows looked up dequantized ([`burn_lora::embedding`]).
pub fn embed(
    embedding: &burn::nn::Embedding,
    tokens: burn::tensor::Tensor<2, burn::tensor::Int>,
) -> burn::tensor::Tensor<3> {
    burn_lora::embedding(embedding.weight.val(), tokens)
}
