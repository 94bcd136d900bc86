//! Hugging Face decoder LLMs: Llama 2/3, Qwen2 and Qwen3 in one family, as transformers
//! computes them (RMS norm, rotary positions with Llama 3's scaling, grouped-query
//! attention, SwiGLU, a tied or untied head), loaded from a checkpoint directory.
//!
//! Written here rather than taken from a crate: `bunsen` 0.41 (on Burn 0.22) has a Qwen3,
//! but neither Llama nor Qwen2, its projections are stock `burn::nn::Linear` under names of
//! its own (`c_q`, `c_k`, ...), and its default features bring a training stack and
//! download code. Ours are [`burn_lora::nn::Linear`] (LoRA's factored path and mixed
//! batches) under transformers' names, so PEFT's adapter files apply with no renaming.
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! use burn_lora_demo::model::llama::Llama;
//!
//! let device = Device::default();
//! let (config, model) = Llama::load(Path::new("Qwen2.5-0.5B-Instruct"), &device)?;
//! let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![9707i64, 11], [1, 2]), &device);
//! let logits = model.forward(tokens); // [1, 2, vocab_size]
//! assert_eq!(logits.dims()[2], config.vocab_size);
//! # Ok::<(), burn_lora_demo::Error>(())
//! ```

mod config;
mod layers;
mod load;
mod model;
mod rope;

pub use config::{Family, Llama3Scaling, LlamaConfig};
pub use layers::{Attention, DecoderLayer, INITIALIZER_RANGE, LmHead, Mlp, project_out};
pub use load::{INDEX_FILE, WEIGHTS_FILE};
pub use model::{Llama, LlamaModel};
pub use rope::{Rope, inv_freq};
