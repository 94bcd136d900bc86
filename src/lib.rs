//! # burn-lora
//!
//! LoRA (low-rank adaptation) for [Burn](https://burn.dev), and a runnable walk through how
//! LLM fine-tuning works, from tokens to a fine-tuned classifier.
//!
//! A LoRA layer keeps a pre-trained linear layer frozen and adds a trainable low-rank branch
//! inside it: `h = x·W + b + (alpha/r)·dropout(x)·A·B`, with `A` `[d_in, r]`, `B`
//! `[r, d_out]` and `B = 0` at the start, so training starts from the base model exactly.
//! A frozen model with a new classifier on top is *head-only* training, not LoRA.
//!
//! ## Concept map
//!
//! | term | where |
//! |---|---|
//! | byte-level BPE tokens | [`tokenizer`] |
//! | Transformer, autoregressive model | [`model::Gpt`], [`model::generate`] |
//! | pre-training (PT), self-supervised | [`train::pretrain`] (targets are the inputs shifted by one: [`data::lm_batches`]) |
//! | supervised fine-tuning (SFT) | [`train::finetune`] with [`train::FinetuneMode`] |
//! | LoRA | [`LoraLinear`], [`apply_lora`], [`save_adapter`] |
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

pub mod bench;
pub mod data;
mod error;
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod train;

pub use error::Error;
pub use lora::adaptable::{
    AdaptableLinear, LinearFn, MapLinears, apply_lora, join_path, linear_paths, merge_lora,
    set_adapters_enabled, set_lora_trainable,
};
pub use lora::config::{LoraConfig, LoraInit};
pub use lora::linear::LoraLinear;
pub use lora::peft::{
    load_adapter, load_adapter_weights, parse_adapter_config, read_adapter_config, save_adapter,
};
pub use lora::report::{ParamReport, ParamRow, param_report};
