//! Generative SFT, as an LLM is fine-tuned: next-token training on (prompt, completion)
//! pairs or conversations, with the loss on the completion only, on burn-train's
//! `SupervisedTraining` and `Learner`.
//!
//! - `encode.rs`: records to tokens, marking the learnt ones.
//! - `step.rs`: [`SftModel`], burn-train's `TrainStep` and `InferenceStep`.
//! - `engine.rs`: burn-train's batcher, a stop-after-epoch strategy, the latest checkpoint.
//! - `progress.rs`: the renderer, with progress bars and the loss curve.
//! - `job.rs`: the job, [`run_sft`]; `outputs.rs`: what it measures and writes at the end.

mod encode;
mod engine;
mod job;
mod outputs;
mod progress;
mod step;

pub use encode::{EncodedSft, encode_sft};
pub use job::{SftMode, SftOptions, SftReport, Truncated, run_sft};
pub use progress::{Curve, SftProgress};
pub use step::{SftModel, loss_value};
