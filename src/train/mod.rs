//! Training: self-supervised pre-training and supervised fine-tuning, each one spelled-out
//! loop, plus the small pieces they share.

pub mod baseline;
mod finetune;
mod plot;
mod pretrain;
mod schedule;
pub mod sentiment;

pub use finetune::{
    Encoded, FinetuneMode, FinetuneOptions, History, accuracy, encode_dataset, finetune, predict,
};
pub use plot::svg_line_plot;
pub use pretrain::{PretrainOptions, PretrainReport, pretrain, unigram_perplexity};
pub use schedule::lr_at;

use indicatif::{ProgressBar, ProgressStyle};

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
