//! The main job: fine-tune a pre-trained base (by default `fixtures/minilm`) on sentiment
//! three ways (full fine-tuning, LoRA, head-only) and compare what each costs and achieves.
//!
//! ```sh
//! cargo run --release --example sentiment
//! cargo run --release --example sentiment -- --dataset zh --modes lora --rank 16
//! cargo run --release --example sentiment -- --dataset en3   # negative / neutral / positive
//! cargo run --release --example sentiment -- --modes lora --dora   # DoRA instead of LoRA
//! cargo run --release --example sentiment -- --data-file my.csv --test-file my_test.csv --text-column review --label-column stars
//! cargo run --release --example sentiment -- --base fixtures/base   # our own pre-trained GPT
//! cargo run --release --example sentiment -- --base random      # what pre-training is worth
//! cargo run --release --example sentiment -- --base hf:PATH/all-MiniLM-L6-v2 --modes lora --targets query,value --lr 5e-4
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Device;
use burn_lora::LoraConfig;
use burn_lora_demo::Error;
use burn_lora_demo::data::{Format, ReadOptions};
use burn_lora_demo::device::parse_devices;
use burn_lora_demo::model::bert::BertHead;
use burn_lora_demo::train::checkpoint::Keep;
use burn_lora_demo::train::quantize::BaseQuant;
use burn_lora_demo::train::sentiment::{
    BaseModel, DEFAULT_BASE, JobDefaults, SentimentOptions, parse_pooling, run_sentiment,
};
use burn_lora_demo::train::{FinetuneMode, replicas_for};

/// The default base for `--dataset zh`: our GPT after continued pre-training on the
/// Chinese training texts (`fixtures/base_zh/README.md` has the command), with LoRA on
/// every linear unless `--targets` says otherwise.
const ZH_BASE: &str = "fixtures/base_zh";

/// Where a run writes unless told.
const DEFAULT_OUT: &str = "runs/sentiment";
use clap::Parser;

#[path = "common/allocator.rs"]
mod allocator;

/// Full fine-tuning vs LoRA vs head-only on real sentiment data.
#[derive(Parser, Debug)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N], or several separated by commas to train on them through burn-train's MultiDevice strategy
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Built-in dataset: `en` (movie-review snippets, negative / positive), `en3` (the same
    /// snippets, negative / neutral / positive) or `zh` (product reviews).
    #[arg(long, default_value = "en")]
    dataset: String,
    /// Train on this file instead of the dataset's training split: TSV (`label<TAB>text`),
    /// CSV with a header, or JSON Lines, by its extension (see --format). Its labels are
    /// the classes.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Also evaluate on this file (repeatable; any of the three formats).
    #[arg(long)]
    eval_file: Vec<PathBuf>,
    /// The format of every data file: tsv, csv or jsonl (default: each file's extension;
    /// TSV for any other).
    #[arg(long)]
    format: Option<String>,
    /// The text column of a CSV file, or field of a JSON Lines one.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// The label column of a CSV file, or field of a JSON Lines one.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Comma-separated modes: full, lora, head.
    #[arg(long, default_value = "full,lora,head")]
    modes: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0, allow_negative_numbers = true)]
    alpha: f64,
    /// LoRA dropout (default: 0.1 for a BERT base, 0.05 for our GPT).
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f64>,
    /// DoRA instead of plain LoRA in the `lora` mode (PEFT's `use_dora=True`): each adapted
    /// linear also learns a magnitude per output.
    #[arg(long)]
    dora: bool,
    /// LoRA targets: comma-separated names, or `all-linear` (default: `all-linear` for a
    /// BERT base and for `--dataset zh` on its default base, `query,value` for our GPT).
    #[arg(long)]
    targets: Option<String>,
    /// Passes over the training data (default: 1 for a BERT base, 3 for our GPT).
    #[arg(long)]
    epochs: Option<usize>,
    /// Learning rate for every mode (default: per mode and base, see `JobDefaults`).
    #[arg(long)]
    lr: Option<f64>,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Training threads, each running forward and backward on a part of every batch
    /// (default: one per core on a CPU device, 1 on a GPU).
    #[arg(long)]
    replicas: Option<usize>,
    /// Base model: a Hugging Face BERT checkpoint directory (the default for `en` and `en3`,
    /// a 3-layer encoder derived from all-MiniLM-L6-v2), a directory made by the pretrain
    /// example (`fixtures/base`; for `zh` the default is `fixtures/base_zh`, our GPT after
    /// continued pre-training on the Chinese reviews), `random` / `random:DIR` for that
    /// architecture with random weights, or `hf:DIR` to force BERT loading.
    #[arg(long)]
    base: Option<String>,
    /// Longest input in tokens (default: the GPT's context; 64 for a BERT base).
    #[arg(long)]
    max_len: Option<usize>,
    /// Train on at most this many examples (quick tries).
    #[arg(long)]
    max_train: Option<usize>,
    /// How hidden states become one vector: `last` token (GPT default), `mean` (BERT
    /// default), or `cls` (BERT's pooler, as Hugging Face's BertForSequenceClassification).
    #[arg(long)]
    pooling: Option<String>,
    /// Test file (default: the dataset's test split).
    #[arg(long)]
    test_file: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// Replace the files of an existing output directory.
    #[arg(long)]
    overwrite: bool,
    /// Write a training checkpoint every N optimizer steps into OUT/checkpoints/<mode>/
    /// (atomically; the last two are kept), so that --resume can continue the run.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue the run whose --out directory is OUT, from its latest checkpoint. Give the
    /// same flags as the run had; a setting that differs is an error naming it.
    #[arg(long, value_name = "OUT", conflicts_with = "overwrite")]
    resume: Option<PathBuf>,
    /// Start LoRA from this PEFT adapter directory (ours or PEFT's): its config, factors
    /// and modules to save, all trainable.
    #[arg(long, value_name = "DIR")]
    init_adapter: Option<PathBuf>,
    /// Which epoch each mode keeps: `best` on validation (the default) or `last`.
    #[arg(long, default_value = "best")]
    keep: String,
    /// Quantize the frozen base's linear weights before training (QLoRA): q8 or q4,
    /// symmetric, per block of 32. Not with --modes full.
    #[arg(long, value_name = "q8|q4")]
    quantize: Option<String>,
}

fn options(args: Args) -> Result<(SentimentOptions, Vec<Device>), Error> {
    let devices = parse_devices(&args.device, "sentiment")?;
    let usage = |m: String| Error::Usage(m);
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1".into()));
    }
    let data = PathBuf::from("fixtures/data").join(&args.dataset);
    let extension = match args.dataset.as_str() {
        "en" | "zh" => "tsv",
        "en3" => "csv",
        other => {
            return Err(usage(format!(
                "--dataset must be en, en3 or zh, got `{other}`"
            )));
        }
    };
    // Chinese text needs a base that read Chinese: the English MiniLM trails naive Bayes
    // there by ten points (docs/RESULTS.md, "Chinese reviews").
    let zh_default = args.base.is_none() && args.dataset == "zh" && args.data_file.is_none();
    let base_name = match (&args.base, zh_default) {
        (Some(base), _) => base.clone(),
        (None, true) => ZH_BASE.to_string(),
        (None, false) => DEFAULT_BASE.to_string(),
    };
    let bert = BaseModel::parse(&base_name, BertHead::Mean).is_bert();
    let (pooling, head) = parse_pooling(args.pooling.as_deref(), bert)?;
    let base = BaseModel::parse(&base_name, head);
    let defaults = JobDefaults::for_base(&base);
    let targets = match &args.targets {
        Some(targets) => targets.split(',').map(|s| s.trim().to_string()).collect(),
        // On the Chinese base, LoRA on every linear was chosen on validation (docs/RESULTS.md).
        None if zh_default => vec!["all-linear".to_string()],
        None => defaults.lora_targets.clone(),
    };
    let lora = LoraConfig::new()
        .with_rank(args.rank)
        .with_alpha(args.alpha)
        .with_dropout(args.dropout.unwrap_or(defaults.lora_dropout))
        .with_use_dora(args.dora)
        .with_target_modules(targets);
    lora.validate()?;
    let modes = args
        .modes
        .split(',')
        .map(|m| match m.trim() {
            "full" => Ok(FinetuneMode::Full),
            "lora" => Ok(FinetuneMode::Lora(lora.clone())),
            "head" => Ok(FinetuneMode::HeadOnly),
            other => Err(usage(format!(
                "unknown mode `{other}`; modes are full, lora, head"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if args.checkpoint_every == Some(0) {
        return Err(usage("--checkpoint-every must be at least 1".into()));
    }
    let out = match (&args.resume, args.out) {
        (Some(resume), out) if out != Path::new(DEFAULT_OUT) && out != *resume => {
            return Err(usage(format!(
                "--resume {} and --out {} name different directories",
                resume.display(),
                out.display()
            )));
        }
        (Some(resume), _) => resume.clone(),
        (None, out) => out,
    };
    if args.max_len == Some(0) {
        return Err(usage("--max-len must be at least 2".into()));
    }
    let options = SentimentOptions {
        // A run on the user's own file is named by it.
        dataset: match &args.data_file {
            Some(path) => path.display().to_string(),
            None => args.dataset,
        },
        train_file: args
            .data_file
            .unwrap_or_else(|| data.join(format!("train.{extension}"))),
        test_file: args
            .test_file
            .unwrap_or_else(|| data.join(format!("test.{extension}"))),
        eval_files: args.eval_file,
        epochs: args.epochs.unwrap_or(defaults.epochs),
        base,
        max_len: args.max_len,
        modes,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        max_train: args.max_train,
        out,
        pooling,
        overwrite: args.overwrite,
        replicas: args.replicas.unwrap_or_else(|| replicas_for(&devices[0])),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume.is_some(),
        init_adapter: args.init_adapter,
        keep: Keep::parse(&args.keep)?,
        quantize: args.quantize.as_deref().map(BaseQuant::parse).transpose()?,
        read: ReadOptions {
            format: args.format.as_deref().map(Format::parse).transpose()?,
            text_column: args.text_column,
            label_column: args.label_column,
        },
    };
    Ok((options, devices))
}

fn main() -> ExitCode {
    allocator::retain_freed_memory(); // buffers reused, not re-mapped: faster steps
    let result = options(Args::parse()).and_then(|(options, devices)| {
        let (metrics, table) = run_sentiment(&options, &devices)?;
        println!(
            "\ndataset {}, base {}, on {}\n{table}",
            metrics.dataset,
            metrics.base,
            metrics.devices.join(", ")
        );
        println!("wrote {}/metrics.json", options.out.display());
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
