//! Pre-trains the base model from scratch: byte-level BPE, then next-token prediction.
//!
//! ```sh
//! cargo run --release --example pretrain -- --overwrite      # rebuilds fixtures/base/
//! cargo run --release --example pretrain -- --out runs/base --epochs 1
//! cargo run --release --example pretrain -- --init fixtures/base --datasets fixtures/data/zh/train.tsv --out runs/base_zh --epochs 1   # continued PT
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn_lora_demo::device::parse_one_device;
use burn_lora_demo::train::{PretrainOptions, pretrain};
use clap::Parser;

#[path = "common/allocator.rs"]
mod allocator;

/// Self-supervised pre-training of a small GPT on the unlabelled text of the training splits.
#[derive(Parser, Debug)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output directory for config.json, model.bpk, tokenizer.json and metrics.
    #[arg(long, default_value = "fixtures/base")]
    out: PathBuf,
    /// Continue pre-training this base directory (its tokenizer and sizes are kept; the size
    /// flags are ignored) instead of starting from scratch.
    #[arg(long)]
    init: Option<PathBuf>,
    /// The labelled files whose texts (labels dropped) make the corpus (default: the
    /// English and Chinese training splits).
    #[arg(long, num_args = 1..)]
    datasets: Vec<PathBuf>,
    /// Extra UTF-8 text files (one document per line) to add to the corpus.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    /// Passes over the corpus.
    #[arg(long, default_value_t = PretrainOptions::default().epochs)]
    epochs: usize,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// BPE vocabulary size.
    #[arg(long, default_value_t = PretrainOptions::default().vocab_size)]
    vocab_size: usize,
    /// Model width.
    #[arg(long, default_value_t = PretrainOptions::default().d_model)]
    d_model: usize,
    /// Number of blocks.
    #[arg(long, default_value_t = PretrainOptions::default().n_layers)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = PretrainOptions::default().n_heads)]
    heads: usize,
    /// MLP width.
    #[arg(long, default_value_t = PretrainOptions::default().d_ff)]
    d_ff: usize,
    /// Context length.
    #[arg(long, default_value_t = PretrainOptions::default().seq_len)]
    seq_len: usize,
    /// Windows per batch.
    #[arg(long, default_value_t = PretrainOptions::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = PretrainOptions::default().lr)]
    lr: f64,
    /// Random seed.
    #[arg(long, default_value_t = PretrainOptions::default().seed)]
    seed: u64,
    /// Replace the files of an existing output directory (needed to rebuild fixtures/base).
    #[arg(long)]
    overwrite: bool,
}

fn main() -> ExitCode {
    allocator::retain_freed_memory(); // buffers reused, not re-mapped: faster steps
    let args = Args::parse();
    if args.batch_size == 0 || args.seq_len == 0 {
        eprintln!("error: --batch-size and --seq-len must be at least 1");
        return ExitCode::FAILURE;
    }
    let device = match parse_one_device(&args.device, "pretrain") {
        Ok(device) => device,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = PretrainOptions {
        out: args.out,
        corpus: args.corpus,
        epochs: args.epochs,
        max_steps: args.max_steps,
        vocab_size: args.vocab_size,
        d_model: args.d_model,
        n_layers: args.layers,
        n_heads: args.heads,
        d_ff: args.d_ff,
        seq_len: args.seq_len,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        overwrite: args.overwrite,
        init: args.init,
        datasets: match args.datasets.is_empty() {
            true => PretrainOptions::default().datasets,
            false => args.datasets,
        },
        ..PretrainOptions::default()
    };
    match pretrain(&options, &device) {
        Ok(report) => {
            println!("\nsamples before -> after pre-training (greedy):");
            for ((prompt, before), (_, after)) in
                report.samples_before.iter().zip(&report.samples_after)
            {
                println!("  {prompt:?}\n    before: {before:?}\n    after:  {after:?}");
            }
            println!(
                "\n{} steps, {} tokens, {:.0} s; validation perplexity {:.1} vs unigram {:.1}; {} parameters",
                report.steps,
                report.tokens_seen,
                report.wall_seconds,
                report.val_perplexity,
                report.unigram_perplexity,
                report.parameters
            );
            println!("wrote {}", options.out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
