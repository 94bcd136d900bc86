//! Training: self-supervised pre-training and supervised fine-tuning, each one spelled-out
//! loop, plus the small pieces they share.

pub mod baseline;
mod batches;
pub mod checkpoint;
mod classifier;
mod finetune;
pub mod head_loss;
pub mod metrics;
pub mod multi;
pub mod parallel;
mod plot;
mod predict;
mod pretrain;
pub mod quantize;
pub mod recompute;
mod schedule;
pub mod sentiment;
pub mod sft;
mod trained;

pub use batches::{Encoded, encode_dataset, encode_texts, length_grouped_batches};
pub use classifier::Classifier;
pub use finetune::{
    FinetuneMode, FinetuneOptions, History, default_replicas, finetune, replicas_for,
};
pub use plot::svg_line_plot;
pub use predict::{accuracy, predict};
pub use pretrain::{PretrainOptions, PretrainReport, pretrain, unigram_perplexity};
pub use schedule::lr_at;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Error;

/// One optimizer step on `loss`, shared by pre-training and fine-tuning. A NaN or infinite
/// loss stops training with [`Error::NonFiniteLoss`] naming the step and learning rate,
/// before it can reach the weights. Returns the updated model and the loss value.
pub(crate) fn optimizer_step<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    loss: Tensor<1>,
    step: usize,
    lr: f64,
    bar: &ProgressBar,
) -> Result<(M, f64), Error> {
    let value = loss.clone().into_scalar::<f64>();
    check_finite(value, step, lr, bar)?;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    Ok((optim.step(lr, model, grads), value))
}

/// [`Error::NonFiniteLoss`] when `loss` is NaN or infinite (`step` counts from 0).
pub(crate) fn check_finite(
    loss: f64,
    step: usize,
    lr: f64,
    bar: &ProgressBar,
) -> Result<(), Error> {
    if loss.is_finite() {
        return Ok(());
    }
    bar.abandon();
    Err(Error::NonFiniteLoss {
        step: step + 1,
        loss,
        lr,
    })
}

/// A progress bar for `len` steps, drawn on stderr when it is a terminal.
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
    ))
    .expect("the template is valid");
    bar.set_style(style);
    bar
}

/// Refuses to write into `out` when it is a file, or a directory that already holds
/// something, unless `overwrite` is set: a second run must not silently replace the first.
///
/// # Errors
///
/// [`Error::OutputExists`], or [`Error::Io`] when `out` cannot be read.
pub fn check_output_dir(out: &std::path::Path, overwrite: bool) -> Result<(), Error> {
    if overwrite || !out.exists() {
        return Ok(());
    }
    let empty = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
    match empty {
        true => Ok(()),
        false => Err(Error::OutputExists {
            path: out.to_path_buf(),
        }),
    }
}
