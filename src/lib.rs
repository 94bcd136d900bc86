//! # burn-lora
//!
//! LoRA (low-rank adaptation) for [Burn](https://burn.dev).
#![warn(missing_docs)]

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
pub use lora::peft::{load_adapter, read_adapter_config, save_adapter};
pub use lora::report::{ParamReport, ParamRow, param_report};
