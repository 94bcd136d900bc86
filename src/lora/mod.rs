//! The product: LoRA adapters for Burn models.

pub mod adaptable;
pub mod config;
pub mod linear;
mod path;
pub mod peft;
pub mod report;
