//! Generative SFT, as an LLM is fine-tuned: next-token training on (prompt, completion)
//! pairs with the loss on the completion only, on burn-train's `SupervisedTraining` and
//! `Learner`, with LoRA (default) or every weight.
//!
//! The shipped task is sentiment as generation: the prompt `评论：{text}\n情感：` and the
//! completion `正面` or `负面` on `fixtures/base_zh` (`--dataset zh`), or
//! `Review: {text}\nSentiment:` and ` positive` / ` negative` on `fixtures/base`
//! (`--dataset en`). Your own data is JSON Lines in TRL's formats (`--data-file`,
//! `--test-file`): `{"prompt": ..., "completion": ...}` or `{"messages": [...]}`.
//!
//! ```sh
//! cargo run --release --example sft -- --dataset zh
//! cargo run --release --example sft -- --dataset en --modes lora,full
//! cargo run --release --example sft -- --base hf:PATH/Qwen2.5-0.5B-Instruct --data-file train.jsonl --test-file test.jsonl --out runs/qwen-sft
//! cargo run --release --example generate -- --base fixtures/base_zh --adapter runs/sft/lora/adapter --prompt "评论：质量很好\n情感："
//! ```
//!
//! Writes `OUT/<mode>/adapter/` (PEFT files, `task_type: CAUSAL_LM`) or `OUT/full/model.bpk`,
//! `OUT/<mode>/loss_curve.svg`, burn-train's logs and checkpoints under `OUT/<mode>/train/`,
//! and `OUT/metrics.json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn_lora::LoraConfig;
use burn_lora_demo::Error;
use burn_lora_demo::data::{SentimentDataset, SftDataset};
use burn_lora_demo::device::parse_devices;
use burn_lora_demo::train::quantize::BaseQuant;
use burn_lora_demo::train::sft::{SftMode, SftOptions, SftReport, run_sft};
use clap::Parser;

#[path = "common/allocator.rs"]
mod allocator;

/// Generative SFT with LoRA or full fine-tuning, on burn-train.
#[derive(Parser, Debug)]
struct Args {
    /// The shipped task: `zh` (Chinese reviews on fixtures/base_zh) or `en` (English movie
    /// reviews on fixtures/base), sentiment as generation.
    #[arg(long, default_value = "zh")]
    dataset: String,
    /// The base: a directory made by the pretrain example, or `hf:DIR`, a Hugging Face
    /// Llama, Qwen2 or Qwen3 checkpoint (default: the dataset's).
    #[arg(long)]
    base: Option<String>,
    /// Training data, JSON Lines: `{"prompt", "completion"}` or `{"messages"}` per line
    /// (instead of --dataset).
    #[arg(long, requires = "test_file")]
    data_file: Option<PathBuf>,
    /// Test data in the same format (with --data-file).
    #[arg(long)]
    test_file: Option<PathBuf>,
    /// Where to write.
    #[arg(long, default_value = "runs/sft")]
    out: PathBuf,
    /// Comma-separated: lora, full.
    #[arg(long, default_value = "lora")]
    modes: String,
    /// Passes over the training data.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Use at most N training examples (a quick try).
    #[arg(long)]
    max_train: Option<usize>,
    /// Compare at most N test generations for exact match (all by default).
    #[arg(long)]
    max_test: Option<usize>,
    /// Examples per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate, decayed linearly to zero (default: 2e-3 for LoRA, 3e-4 for full).
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA alpha (scaling alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// LoRA targets, comma-separated module names, or `all-linear`.
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// DoRA: LoRA with a learnt magnitude per output.
    #[arg(long)]
    dora: bool,
    /// The most tokens of an example (prompt + completion); longer prompts lose their
    /// first tokens, and the job reports how many (default: the base's context, else 512).
    #[arg(long)]
    max_len: Option<usize>,
    /// Seed for initialisation, dropout and data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N];
    /// several, comma-separated, train through burn-train's multi-device strategy.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Continue each mode from burn-train's latest epoch checkpoint in OUT/<mode>/train.
    #[arg(long)]
    resume: bool,
    /// Replace OUT/<mode> when it exists.
    #[arg(long)]
    overwrite: bool,
    /// Stop after epoch N, its checkpoint written, as an interrupted run would (continue
    /// it with --resume).
    #[arg(long)]
    stop_after_epoch: Option<usize>,
    /// Quantize the base's linear weights before LoRA (QLoRA): q8 or q4, symmetric, per
    /// block of 32. Not with --modes full.
    #[arg(long, value_name = "q8|q4")]
    quantize: Option<String>,
    /// Gradient checkpointing per decoder block, as transformers does it: the forward pass
    /// keeps each block's input, the backward pass recomputes one block at a time (same
    /// gradients, less memory, one more forward pass of time).
    #[arg(long)]
    gradient_checkpointing: bool,
}

/// Sentiment as generation: (prompt, completion) per review.
fn sentiment_pairs(dataset: &str, file: &str) -> Result<SftDataset, Error> {
    let path = format!("fixtures/data/{dataset}/{file}.tsv");
    let data = SentimentDataset::load(&path)?;
    let pairs = data.examples.into_iter().map(|e| {
        let positive = e.label == "positive" || e.label == "1";
        match dataset {
            "zh" => (
                format!("评论：{}\n情感：", e.text),
                if positive { "正面" } else { "负面" }.to_string(),
            ),
            _ => (
                format!("Review: {}\nSentiment:", e.text),
                if positive { " positive" } else { " negative" }.to_string(),
            ),
        }
    });
    Ok(SftDataset::from_pairs(pairs, path))
}

/// Training, validation (every tenth training example, at most 500) and test data.
fn datasets(args: &Args) -> Result<(SftDataset, SftDataset, SftDataset, String), Error> {
    let (all, test, base) = match (&args.data_file, &args.test_file) {
        (Some(train), Some(test)) => (
            SftDataset::load(train)?,
            SftDataset::load(test)?,
            args.base.clone().ok_or_else(|| {
                Error::Usage("--data-file needs --base (the model to fine-tune)".into())
            })?,
        ),
        _ => {
            let base = match args.dataset.as_str() {
                "zh" => "fixtures/base_zh",
                "en" => "fixtures/base",
                other => {
                    return Err(Error::Usage(format!(
                        "--dataset {other}: expected zh or en (or --data-file)"
                    )));
                }
            };
            (
                sentiment_pairs(&args.dataset, "train")?,
                sentiment_pairs(&args.dataset, "test")?,
                args.base.clone().unwrap_or_else(|| base.to_string()),
            )
        }
    };
    let mut train = all.clone();
    let mut valid = all;
    let (kept, held): (Vec<_>, Vec<_>) = train
        .records
        .drain(..)
        .enumerate()
        .partition(|(i, _)| i % 10 != 0 || *i / 10 >= 500);
    train.records = kept.into_iter().map(|(_, r)| r).collect();
    valid.records = held.into_iter().map(|(_, r)| r).collect();
    if let Some(n) = args.max_train {
        train.records.truncate(n);
    }
    if train.is_empty() || valid.is_empty() {
        return Err(Error::Usage(format!(
            "{}: too few examples to hold out a validation tenth",
            train.path.display()
        )));
    }
    Ok((train, valid, test, base))
}

fn run(args: &Args) -> Result<(), Error> {
    let start = Instant::now();
    let devices = parse_devices(&args.device, "sft")?;
    let (train, valid, test, base) = datasets(args)?;
    let modes = args
        .modes
        .split(',')
        .map(|m| match m.trim() {
            "lora" => Ok(SftMode::Lora),
            "full" => Ok(SftMode::Full),
            other => Err(Error::Usage(format!(
                "--modes: unknown mode {other:?}; expected lora or full"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let targets: Vec<String> = args
        .targets
        .split(',')
        .map(|t| t.trim().to_string())
        .collect();
    let lora = LoraConfig::new()
        .with_rank(args.rank)
        .with_alpha(args.alpha)
        .with_dropout(args.lora_dropout)
        .with_use_dora(args.dora)
        .with_target_modules(targets);
    println!(
        "SFT on {base}: {} train, {} validation, {} test examples",
        train.len(),
        valid.len(),
        test.len()
    );
    let quantize = args.quantize.as_deref().map(BaseQuant::parse).transpose()?;
    let mut reports: Vec<SftReport> = Vec::new();
    for mode in modes {
        let lr = args.lr.unwrap_or(match mode {
            SftMode::Lora => 2e-3,
            SftMode::Full => 3e-4,
        });
        let options = SftOptions {
            base: base.clone(),
            train: train.clone(),
            valid: valid.clone(),
            test: test.clone(),
            out: args.out.clone(),
            mode,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr,
            weight_decay: 0.0,
            lora: lora.clone(),
            max_len: args.max_len.unwrap_or(512),
            seed: args.seed,
            devices: devices.clone(),
            resume: args.resume,
            overwrite: args.overwrite,
            max_exact: args.max_test,
            stop_after: args.stop_after_epoch,
            quantize,
            gradient_checkpointing: args.gradient_checkpointing,
        };
        println!("== {} (lr {lr:e}) ==", mode.name());
        let report = run_sft(&options)?;
        println!(
            "  {}: {} trainable of {}; train loss {:.4}, test loss {:.4} (perplexity {:.3}){}; {:.1} s",
            mode.name(),
            report.trainable,
            report.total,
            report.train_loss,
            report.eval_loss,
            report.eval_perplexity,
            report
                .exact_match
                .map(|m| format!(", exact match {:.2} %", 100.0 * m))
                .unwrap_or_default(),
            report.train_seconds
        );
        println!("  saved {}", report.artifact.display());
        reports.push(report);
    }
    // The first mode's figures at the top level; every mode's under `modes`.
    let first = &reports[0];
    let modes: serde_json::Map<String, serde_json::Value> = reports
        .iter()
        .map(|r| (r.mode.name().to_string(), serde_json::to_value(r).unwrap()))
        .collect();
    let metrics = serde_json::json!({
        "base": base,
        "mode": first.mode.name(),
        "train_loss": first.train_loss,
        "eval_loss": first.eval_loss,
        "eval_perplexity": first.eval_perplexity,
        "exact_match": first.exact_match,
        "train_examples": train.len(),
        "valid_examples": valid.len(),
        "test_examples": test.len(),
        "wall_seconds": start.elapsed().as_secs_f64(),
        "modes": modes,
    });
    let path = args.out.join("metrics.json");
    burn_lora_demo::io::write_atomic(
        &path,
        serde_json::to_string_pretty(&metrics).unwrap().as_bytes(),
    )?;
    println!(
        "wrote {} in {:.0} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let _ = allocator::retain_freed_memory();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
