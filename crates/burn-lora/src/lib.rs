//! # burn-lora
//!
//! LoRA (low-rank adaptation) for [Burn](https://burn.dev) 0.22, on any model and any
//! backend, with Hugging Face PEFT's names, files and numbers.
//!
//! A LoRA adapter keeps a pre-trained linear weight `W` `[d_in, d_out]` frozen and learns a
//! low-rank update inside it: `h = x·W + b + s·dropout(x)·A·B`, with `A` `[d_in, r]`, `B`
//! `[r, d_out]`, `s = alpha / r`, and `B = 0` at the start, so training starts from the base
//! model exactly. (A frozen model with a new classifier on top is *head-only* training, not
//! LoRA.)
//!
//! ## Any model, no code changes
//!
//! [`apply_lora`] works on any [`burn::module::Module`]. It finds every `burn::nn::Linear` by
//! Burn's own traversal, matches targets against Burn's module paths with PEFT's rules, and
//! attaches an [`Adapter`] to each target's weight through Burn's reparameterization hook,
//! so the model's types do not change. A stock `Linear` then computes `W + s·A·B` densely;
//! swap the import to [`nn::Linear`] for the factored form (see [`nn`] for what each costs).
//!
//! ```
//! use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_lora::{LoraConfig, apply_lora, merge_lora, param_report};
//!
//! let device = Device::default();
//! let encoder: TransformerEncoder = TransformerEncoderConfig::new(16, 32, 2, 2).init(&device);
//! let x = Tensor::<3>::random([2, 5, 16], Distribution::Default, &device);
//! let before = encoder.forward(TransformerEncoderInput::new(x.clone()));
//!
//! let config = LoraConfig::new().with_rank(4).with_alpha(8.0); // query and value, as PEFT
//! let encoder = apply_lora(encoder, &config).unwrap();
//! // Two layers, q and v each: 2 · 2 · r · (16 + 16) = 512 trainable parameters.
//! assert_eq!(param_report(&encoder).trainable, 512);
//! // B starts at zero: the adapted model computes what the base computed.
//! let after = encoder.forward(TransformerEncoderInput::new(x.clone()));
//! after.into_data().assert_approx_eq::<f32>(&before.into_data(), burn::tensor::Tolerance::default());
//!
//! let plain = merge_lora(encoder).unwrap(); // no adapters left, same outputs
//! assert_eq!(param_report(&plain).trainable, 0);
//! ```
//!
//! Then [`save_adapter`] writes PEFT's `adapter_config.json` and
//! `adapter_model.safetensors`, read from the model itself, and [`load_adapter`] attaches
//! and loads them onto a fresh base. [`LoraLinear`] is the same idea for one layer, as a type
//! of its own.
//!
//! ## Several adapters, mixed batches, DoRA
//!
//! A weight can carry several named adapters ([`add_adapter`], [`set_active_adapters`],
//! [`delete_adapter`], [`list_adapters`]); loading one rebuilds nothing of the base.
//! [`with_adapter_names`] gives each example of a batch its own adapter (PEFT's
//! `adapter_names=`), [`add_weighted_adapter`] combines adapters as PEFT's `linear` and
//! `cat` do, and `LoraConfig::with_use_dora(true)` makes DoRA adapters. Each matches PEFT
//! 0.21's numbers on golden files PEFT wrote.
//!
//! ## Embeddings, convolutions, biases, LoRA+
//!
//! Targets can also name a `burn::nn::Embedding` (PEFT's `lora_embedding_A`/`_B`) or a
//! `Conv1d`/`Conv2d` (PEFT's kernel-sized `lora_A` and 1×1 `lora_B`); they compute densely,
//! and `all-linear` never selects them. `LoraConfig::with_bias` trains and saves biases as
//! PEFT's `bias="all"`/`"lora_only"`; PEFT files with `fan_in_fan_out` (GPT-2's `Conv1D`)
//! load onto Burn linears as they are. [`loraplus_lr_scheduler`] gives `B` a learning rate
//! `loraplus_lr_ratio` times `A`'s through Burn's parameter groups (LoRA+). Each matches
//! PEFT 0.21 on golden files.
//!
//! ## QLoRA
//!
//! A base quantized with Burn's `Quantizer` ([`quantize_linears`] quantizes its linears and
//! leaves the rest float) takes adapters like a float one: f32 factors, the base quantized
//! at rest. On Burn's `flex` backend, turn on this crate's `flex` feature: the factored
//! [`nn::Linear`] then takes `x·W` for a quantized `W` as one operation whose backward pass
//! keeps `W` quantized (a Burn backend extension). Without it, Burn's autodiff keeps each
//! layer's dequantized f32 copy until the backward pass, and a quantized base trains in
//! more memory than a float one.
//!
//! A frozen embedding can be quantized too (`Embedding::quantize_weights`; at Qwen2's
//! vocabulary it is a quarter of a 0.5B model). Burn's own lookup does not take a
//! quantized table: look it up with [`embedding`], which dequantizes only the rows it
//! reads, and run an output head tied to it with [`quantized_matmul`], which dequantizes
//! a large weight a block of rows at a time, never whole, in both passes.
//!
//! The library selects no backend and never calls `Device::default()`: it computes on
//! whatever device the model's tensors live on, in their dtype.
#![warn(missing_docs)]

mod adapter;
mod apply;
mod combine;
mod config;
mod dequant;
pub mod dropout;
mod error;
pub mod few_rows;
mod frozen;
mod io;
mod lora;
mod lora_linear;
mod loraplus;
mod manage;
mod mixed;
pub mod nn;
mod path;
mod peft;
mod preflight;
mod qlora;
mod report;
mod sites;

pub use adapter::{Adapter, BASE_ADAPTER, DEFAULT_ADAPTER};
pub use apply::{add_adapter, apply_lora, linear_paths};
pub use combine::{Combination, add_weighted_adapter};
pub use config::{ALL_LINEAR, AdapterDtype, LoraBias, LoraConfig, LoraInit, name_matches};
pub use error::Error;
pub use lora::{Lora, LoraFactors};
pub use lora_linear::LoraLinear;
pub use loraplus::{LORAPLUS_LR_EMBEDDING, LoraPlusGroups, loraplus_groups, loraplus_lr_scheduler};
pub use manage::{
    active_adapters, delete_adapter, list_adapters, merge_adapters, merge_lora,
    set_active_adapters, set_adapters_enabled, set_lora_trainable, unmerge_adapters,
};
pub use mixed::{with_adapter_names, with_adapter_names_flat};
pub use path::join_path;
pub use peft::{
    CONFIG_FILE, KEY_PREFIX, PeftOptions, WEIGHTS_FILE, load_adapter, load_adapter_weights,
    load_adapter_weights_with, load_adapter_with, parse_adapter_config, read_adapter_config,
    save_adapter, save_adapter_with,
};
pub use qlora::{embedding, quantize_linears, quantized_matmul};
pub use report::{ADAM_BYTES_PER_PARAM, ParamReport, ParamRow, param_report};
pub use sites::{AdapterSite, adapters};
