//! # burn-lora-demo
//!
//! A runnable walk through how LLM fine-tuning works, from tokens to a fine-tuned
//! classifier, built on the [`burn_lora`] library (LoRA for any Burn model).
//!
//! A LoRA layer keeps a pre-trained linear layer frozen and adds a trainable low-rank branch
//! inside it: `h = x·W + b + (alpha/r)·dropout(x)·A·B`, with `A` `[d_in, r]`, `B`
//! `[r, d_out]` and `B = 0` at the start, so training starts from the base model exactly.
//! A frozen model with a new classifier on top is *head-only* training, not LoRA.
//!
//! ## Concept map
//!
//! The full guide, with a command and real output for each term, is `docs/CONCEPTS.md`
//! (Chinese: `docs/CONCEPTS.zh.md`).
//!
//! | term | where |
//! |---|---|
//! | pre-training (PT) | [`train::pretrain`], `cargo run --release --example pretrain` |
//! | supervised fine-tuning (SFT) | with a classifier head: [`train::finetune`] with [`train::FinetuneMode`], `--example sentiment`; as an LLM, loss on the completion: [`train::sft::run_sft`], `--example sft` |
//! | self-supervised learning | the targets are the inputs shifted by one: [`data::lm_batches`] |
//! | autoregressive model | [`model::generate`], [`model::top_next`], [`model::generate_batch`] with a [`model::KvCache`], `--example generate` |
//! | token / byte-level BPE | [`tokenizer::BpeTokenizer`], `--example tokenize` |
//! | in-context learning, chain of thought | need billions of parameters; not shown. [`model::continuation_nll`] measures the ingredient a small model has: using its context |
//! | Transformer | [`model::Gpt`], [`model::Block`], [`model::CausalSelfAttention`] |
//! | LoRA | [`burn_lora::apply_lora`], [`burn_lora::nn::Linear`], [`burn_lora::save_adapter`], `--example custom_model`, `--example params` |
//!
//! LoRA is not "new layers on top of a frozen model": that is head-only training
//! ([`train::FinetuneMode::HeadOnly`]). LoRA adds `(alpha/r)·x·A·B` inside existing
//! linear layers.
//!
//! ## LoRA in one layer
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_lora::{LoraConfig, LoraLinear};
//!
//! let device = Device::default();
//! let linear = LinearConfig::new(64, 32).init(&device);
//! let x = Tensor::<2>::random([4, 64], Distribution::Normal(0.0, 1.0), &device);
//! let before = linear.forward(x.clone());
//!
//! let config = LoraConfig::new().with_rank(4).with_alpha(8.0);
//! let layer = LoraLinear::from_linear(linear, &config).unwrap();
//! // B starts at zero: the adapted layer computes exactly what the base computed.
//! assert_eq!(layer.forward(x).into_data(), before.into_data());
//!
//! // Only A [64, 4] and B [4, 32] train: 4 · (64 + 32) = 384 of 2,464 parameters.
//! let report = burn_lora::param_report(&layer);
//! assert_eq!(report.trainable, 384);
//! println!("{report}");
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod device;
mod error;
pub mod io;
pub mod memory;
pub mod model;
pub mod tokenizer;
pub mod train;

pub use error::Error;

/// The README's Rust code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
