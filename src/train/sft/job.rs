//! The generative SFT job: one base, fine-tuned with LoRA or fully on instruction data
//! through burn-train's `SupervisedTraining` and `Learner`, then measured on a test file
//! (loss, perplexity, and exact match of greedy generations).

use std::path::PathBuf;
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use burn::train::metric::{LearningRateMetric, LossMetric, PerplexityMetric};
use burn::train::{
    ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining, TrainingStrategy,
};
use burn_lora::{LoraConfig, apply_lora, param_report};
use serde::Serialize;

use crate::Error;
use crate::data::SftDataset;
use crate::model::{CausalLm, DecoderBase};
use crate::train::quantize::BaseQuant;
use crate::train::recompute::check_per_block;
use crate::train::sft::encode::encode_sft;
use crate::train::sft::engine::{SftBatcher, StopAfter, check_options, latest_checkpoint};
use crate::train::sft::outputs::{evaluate, save, write_curve};
use crate::train::sft::progress::{Curve, SftProgress};
use crate::train::sft::step::SftModel;

/// LoRA on the adapters only, or every weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SftMode {
    /// Low-rank adapters on the chosen linears; the base frozen.
    Lora,
    /// Every weight trains.
    Full,
}

impl SftMode {
    /// `lora` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            SftMode::Lora => "lora",
            SftMode::Full => "full",
        }
    }
}

/// Everything one SFT run needs.
#[derive(Debug, Clone)]
pub struct SftOptions {
    /// The base, as [`DecoderBase::load`] takes it.
    pub base: String,
    /// Training examples.
    pub train: SftDataset,
    /// Validation examples (burn-train's valid split, each epoch).
    pub valid: SftDataset,
    /// Test examples (loss, perplexity and exact match at the end).
    pub test: SftDataset,
    /// Where the outputs go: `OUT/<mode>/...`.
    pub out: PathBuf,
    /// LoRA or full.
    pub mode: SftMode,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per optimizer step; on several devices, each takes its share.
    pub batch_size: usize,
    /// The peak learning rate, decayed linearly to zero.
    pub lr: f64,
    /// AdamW's weight decay.
    pub weight_decay: f64,
    /// The LoRA configuration (with `--modes lora`).
    pub lora: LoraConfig,
    /// The most tokens an example keeps (prompt + completion).
    pub max_len: usize,
    /// Seed for the factors' initialisation, dropout and the data order.
    pub seed: u64,
    /// One device, or several for burn-train's multi-device strategy.
    pub devices: Vec<Device>,
    /// Continue from burn-train's latest epoch checkpoint in `OUT/<mode>/train`.
    pub resume: bool,
    /// Replace `OUT/<mode>` when it exists (else that is an error, unless resuming).
    pub overwrite: bool,
    /// The most test examples whose greedy generation is compared (all when `None`).
    pub max_exact: Option<usize>,
    /// Stop after this epoch, its checkpoint written, as an interrupted run would; `resume`
    /// continues it. burn-train's early-stopping hook does the stopping.
    pub stop_after: Option<usize>,
    /// Quantize the base's linears before LoRA (QLoRA); refused with full fine-tuning.
    pub quantize: Option<BaseQuant>,
    /// Gradient checkpointing per decoder block, as transformers'
    /// `gradient_checkpointing_enable` does it
    /// ([`backward_per_block`](crate::train::recompute::backward_per_block)): the forward
    /// pass keeps each block's input only, and the backward pass recomputes one block at a
    /// time. Same gradients, less memory, one more forward pass of time.
    pub gradient_checkpointing: bool,
}

/// What a run measured (`metrics.json`, one entry per mode).
#[derive(Debug, Clone, Serialize)]
pub struct SftReport {
    /// `lora` or `full`.
    pub mode: SftMode,
    /// How the frozen base was quantized, if it was.
    pub quantize: Option<BaseQuant>,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters.
    pub total: usize,
    /// The last epoch's mean training loss (completion tokens).
    pub train_loss: f64,
    /// Each epoch's validation loss.
    pub valid_loss: Vec<f64>,
    /// Each epoch's validation perplexity, burn-train's `PerplexityMetric` (over the
    /// completion tokens).
    pub valid_perplexity: Vec<f64>,
    /// The test loss per completion token.
    pub eval_loss: f64,
    /// `exp(eval_loss)`.
    pub eval_perplexity: f64,
    /// Greedy generations equal to the completion, whitespace-trimmed, when the test
    /// completions are short labels (at most 8 tokens); else `None`.
    pub exact_match: Option<f64>,
    /// Examples whose prompt lost tokens to `max_len`, per split.
    pub truncated: Truncated,
    /// Wall time of training (burn-train's fit), seconds.
    pub train_seconds: f64,
    /// Where the adapter (LoRA) or the weights (full) were saved.
    pub artifact: PathBuf,
}

/// Examples cut to the length limit, per split.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Truncated {
    /// Training.
    pub train: usize,
    /// Validation.
    pub valid: usize,
    /// Test.
    pub test: usize,
}

/// Runs one mode: loads the base, trains it with burn-train, measures it on the test
/// examples and saves what it made. Returns its report.
///
/// # Errors
///
/// A base, dataset or output that cannot be read or written; an existing output without
/// `overwrite` or `resume`; a training that burn-train ended with an error; `resume`
/// with no checkpoint.
pub fn run_sft(options: &SftOptions) -> Result<SftReport, Error> {
    check_options(options)?;
    let dir = options.out.join(options.mode.name());
    let train_dir = dir.join("train");
    if dir.exists() && !options.resume {
        match options.overwrite {
            true => std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?,
            false => return Err(Error::OutputExists { path: dir }),
        }
    }
    let device = options.devices[0].clone();
    let base = DecoderBase::load(&options.base, &device)?;
    let limit = base.model.context_len().unwrap_or(usize::MAX);
    let max_len = options.max_len.min(limit);
    let train = encode_sft(&options.train, &base, max_len)?;
    let valid = encode_sft(&options.valid, &base, max_len)?;
    let test = encode_sft(&options.test, &base, max_len)?;
    let truncated = Truncated {
        train: train.truncated,
        valid: valid.truncated,
        test: test.truncated,
    };
    println!(
        "  {} examples: {} train, {} valid, {} test; cut to {max_len} tokens: {} / {} / {}",
        options.mode.name(),
        train.rows.len(),
        valid.rows.len(),
        test.rows.len(),
        truncated.train,
        truncated.valid,
        truncated.test
    );
    device.seed(options.seed);
    let decoder = match options.mode {
        SftMode::Lora => {
            let model = match options.quantize {
                Some(quant) => quant.quantize(base.model.clone(), &options.lora.modules_to_save)?,
                None => base.model.clone(),
            };
            apply_lora(model, &options.lora)?
        }
        SftMode::Full => base.model.clone(),
    };
    // On several devices each takes its share of a step's batch (burn-train's
    // `split_dataloader` gives each a contiguous part of the data), and the summed
    // gradients are the step's mean.
    let parts = options.devices.len().max(1);
    let per_device = options.batch_size.div_ceil(parts);
    let model = SftModel {
        decoder,
        share: 1.0 / parts as f64,
        per_block: options.gradient_checkpointing,
    }
    .train();
    if options.gradient_checkpointing {
        check_per_block(&model.decoder, &device)?;
    }
    let report = param_report(&model);
    let longest = train.rows.len() - (parts - 1) * (train.rows.len() / parts);
    let steps_per_epoch = longest.div_ceil(per_device);
    let total_steps = (steps_per_epoch * options.epochs).max(1);
    let optim = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let scheduler = LinearLrSchedulerConfig::new(options.lr, 0.0, total_steps)
        .init()
        .map_err(|e| Error::Usage(format!("--lr {}: {e}", options.lr)))?;
    let learner = Learner::new(model, optim, scheduler);
    let batcher = SftBatcher { pad: base.pad };
    let loader_train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(per_device)
        .shuffle(options.seed)
        .set_device(device.clone().autodiff())
        .build(InMemDataset::new(train.rows.clone()));
    let loader_valid = DataLoaderBuilder::new(batcher)
        .batch_size(options.batch_size)
        .set_device(device.clone())
        .build(InMemDataset::new(valid.rows.clone()));
    let strategy = match options.devices.len() {
        1 => ExecutionStrategy::SingleDevice(device.clone()),
        _ => ExecutionStrategy::MultiDevice(
            options.devices.clone(),
            MultiDeviceOptim::OptimMainDevice,
        ),
    };
    let (renderer, curve) = SftProgress::new(options.mode.name());
    let mut training = SupervisedTraining::new(&train_dir, loader_train, loader_valid)
        .metrics((LossMetric::new(), PerplexityMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_default_checkpointers()
        .num_epochs(options.epochs)
        .renderer(Box::new(renderer))
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Default(strategy));
    if let Some(epoch) = options.stop_after {
        training = training.early_stopping(StopAfter(epoch));
    }
    if options.resume {
        let epoch = latest_checkpoint(&train_dir).ok_or_else(|| {
            Error::Usage(format!(
                "--resume: no checkpoint in {}",
                train_dir.join("checkpoint").display()
            ))
        })?;
        println!("  {}: resuming after epoch {epoch}", options.mode.name());
        training = training.checkpoint(epoch);
    }
    let start = Instant::now();
    let result = training.launch(learner);
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(error) = result.error {
        return Err(Error::Usage(format!("training failed: {error}")));
    }
    let model = result.model.valid();
    let curve: Curve = curve.lock().unwrap().clone();
    if let Some(step) = curve.train_loss.iter().position(|l| !l.is_finite()) {
        return Err(Error::NonFiniteLoss {
            step: step + 1,
            loss: curve.train_loss[step],
            lr: options.lr,
        });
    }
    let (eval_loss, exact_match) = evaluate(&model, &base, &test.rows, options)?;
    let artifact = save(&model, &base, &dir, options.mode)?;
    write_curve(&dir, &curve)?;
    Ok(SftReport {
        mode: options.mode,
        quantize: options.quantize,
        trainable: report.trainable,
        total: report.total,
        train_loss: curve.train_epoch_loss.last().copied().unwrap_or(f64::NAN),
        valid_loss: curve.valid_loss.clone(),
        valid_perplexity: curve.valid_perplexity.clone(),
        eval_loss,
        eval_perplexity: eval_loss.exp(),
        exact_match,
        truncated,
        train_seconds,
        artifact,
    })
}
