//! A BERT encoder that loads Hugging Face checkpoints (`config.json` + `model.safetensors`),
//! such as `sentence-transformers/all-MiniLM-L6-v2` or `bert-base-uncased`, with every linear
//! LoRA-capable.
//!
//! Field names follow Hugging Face's `BertModel`, so PEFT's keys and target names work
//! unchanged: `encoder.layer.0.attention.self.query`, `...attention.output.dense`,
//! `...intermediate.dense`, `...output.dense`, `pooler.dense`, and `classifier` on
//! [`BertClassifier`]. (`self` is a Rust keyword, so that field is `self_`; `LayerNorm` is
//! `layer_norm`. Checkpoints and adapter files are renamed at the border: see [`Bert::load`]
//! and [`peft_options`].)
//!
//! One concept per file: [`BertConfig`] (the `config.json` and a fresh model), the layers
//! (`layers.rs`), loading checkpoints (`load.rs`) and [`BertClassifier`] (`classifier.rs`).

mod classifier;
mod config;
mod layers;
mod load;

pub use classifier::{BertClassifier, BertHead};
pub use config::{BERT_ARCHITECTURES, BertConfig};
pub use layers::{
    Bert, BertAddNorm, BertAttention, BertEmbeddings, BertEncoder, BertIntermediate, BertLayer,
    BertPooler, BertSelfAttention,
};
pub use load::peft_options;
