//! Supervised fine-tuning for classification: one loop for full fine-tuning, LoRA and
//! head-only training.
//!
//! Size: about 330 lines: the training loop is one function, kept whole so that one epoch
//! reads top to bottom.

use std::collections::HashMap;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLoss;
use burn::optim::AdamWConfig;
use burn::tensor::{Device, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use burn_lora::{LoraConfig, apply_lora, set_lora_trainable};

use crate::Error;
use crate::data::class_batch;
use crate::model::Pooling;
use crate::train::Classifier;
use crate::train::checkpoint::{
    self, BestEpoch, CheckpointOptions, Keep, TrainState, epoch_seed, step_seed,
};
use crate::train::parallel::{PartOutput, parallel_grads};
use crate::train::{
    Encoded, accuracy, check_finite, length_grouped_batches, lr_at, predict, progress,
};

/// What fine-tuning trains.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a few per job, made once
pub enum FinetuneMode {
    /// Every parameter.
    Full,
    /// LoRA adapters inside the targeted linears, plus the head; the base is frozen.
    Lora(LoraConfig),
    /// The head alone on a frozen base (linear probing). This, not LoRA, is "a frozen model
    /// with a new layer on top".
    HeadOnly,
}

impl FinetuneMode {
    /// `full`, `lora` or `head`, as in `metrics.json`.
    pub fn name(&self) -> &'static str {
        match self {
            FinetuneMode::Full => "full",
            FinetuneMode::Lora(_) => "lora",
            FinetuneMode::HeadOnly => "head",
        }
    }

    /// Sets up `model` for this mode: adapters in and the base frozen for LoRA, everything
    /// but the head frozen for head-only, nothing changed for full fine-tuning.
    ///
    /// # Errors
    ///
    /// An invalid LoRA config or unknown target names.
    pub fn prepare<C: Classifier>(&self, model: C) -> Result<C, Error> {
        match self {
            FinetuneMode::Full => Ok(model),
            FinetuneMode::Lora(config) => {
                let mut config = config.clone();
                config.exclude_modules.extend(model.lora_excludes());
                Ok(apply_lora(model, &config)?)
            }
            FinetuneMode::HeadOnly => Ok(set_lora_trainable(model, &[C::HEAD.to_string()])?),
        }
    }
}

/// Training settings shared by all modes.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of steps spent warming up.
    pub warmup_ratio: f64,
    /// Seed for shuffling and dropout.
    pub seed: u64,
    /// How hidden states are pooled.
    pub pooling: Pooling,
    /// The `<pad>` id.
    pub pad_id: u32,
    /// Threads that each run forward and backward on a part of every batch, with summed
    /// gradients (data parallelism on one machine; see [`default_replicas`]). The result
    /// is the same function of the seed for any thread timing, but not the same numbers
    /// for different counts: parts are padded separately and draw their own dropout masks.
    pub replicas: usize,
    /// Devices to train data-parallel on. Several: [`finetune_on_devices`](crate::train::multi::finetune_on_devices)
    /// trains on them through burn-train's `MultiDevice` strategy ([`finetune`] refuses
    /// them). Empty or one: the model's device, with `replicas` threads.
    pub devices: Vec<Device>,
    /// Write a checkpoint every so many steps; `None`: none.
    pub checkpoint: Option<CheckpointOptions>,
    /// Continue from the latest checkpoint in `checkpoint.dir`, when there is one.
    pub resume: bool,
    /// Which epoch's weights to return: the best on validation, or the last.
    pub keep: Keep,
}

/// One replica per available core (2 on the machine the README's figures come from).
pub fn default_replicas() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default replica count on `device`: one per core on a CPU backend, where replicas
/// keep every core busy; one on a GPU, which is busy with one.
pub fn replicas_for(device: &Device) -> usize {
    match crate::device::is_cpu(device) {
        true => default_replicas(),
        false => 1,
    }
}

/// What happened during training.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// Loss of every step.
    pub step_loss: Vec<f64>,
    /// Wall time of every step.
    pub step_seconds: Vec<f64>,
    /// Training accuracy of each epoch (on the batches as they were trained).
    pub epoch_train_accuracy: Vec<f64>,
    /// Validation accuracy after each epoch.
    pub epoch_val_accuracy: Vec<f64>,
    /// Total training wall time (steps plus the validation passes).
    pub train_seconds: f64,
    /// Training examples processed (every epoch's).
    pub examples: usize,
    /// The epoch (from 1) whose weights were returned: the best on validation, or the
    /// last (see [`Keep`]).
    pub kept_epoch: usize,
}

impl History {
    /// Training examples per second of step time (validation passes not counted).
    pub fn examples_per_second(&self) -> f64 {
        self.examples as f64 / self.step_seconds.iter().sum::<f64>().max(f64::MIN_POSITIVE)
    }
}

/// Trains `model` (already [prepared](FinetuneMode::prepare), on an autodiff device) on
/// `train`, evaluating on `val` after each epoch. Frozen parameters get no gradient and so
/// no update: one loop serves every mode.
///
/// The data order of each epoch and the dropout masks of each step are drawn from
/// generators seeded by the seed and the epoch or step (see [`checkpoint`]), and every
/// `options.checkpoint.every` steps the whole training state is written: with
/// `options.resume`, a run continues from its latest checkpoint and ends exactly as the run
/// that was never stopped.
///
/// # Errors
///
/// [`Error::NonFiniteLoss`] naming the step, when the loss becomes NaN or infinite; a
/// checkpoint that cannot be written or read.
pub fn finetune<C: Classifier>(
    mut model: C,
    train: &Encoded,
    val: &Encoded,
    options: &FinetuneOptions,
    label: &str,
) -> Result<(C, History), Error> {
    if options.devices.len() > 1 {
        return Err(Error::Usage(format!(
            "finetune trains on one device; {} devices train through burn-train (train::multi::finetune_on_devices)",
            options.devices.len()
        )));
    }
    let device = model.head_layer().weight.device();
    let steps_per_epoch = train.tokens.len().div_ceil(options.batch_size.max(1));
    let total = options.epochs * steps_per_epoch;
    let warmup = (options.warmup_ratio * total as f64).round() as usize;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .with_epsilon(ADAM_EPSILON)
        .init();
    let loss_fn = CrossEntropyLoss::new(None, &device);
    // `replicas` parts of each batch on the model's own device, one thread each (see
    // `parallel`).
    let part_devices = vec![device.clone(); options.replicas.max(1)];
    let track_best = options.keep == Keep::Best && options.epochs > 1;
    let mut history = History::default();
    let (mut step, mut correct, mut seen) = (0, 0, 0);
    let mut best: Option<BestEpoch> = None;
    let mut best_values: Option<HashMap<u64, TensorData>> = None;
    let latest = match (&options.checkpoint, options.resume) {
        (Some(ck), true) => checkpoint::checkpoints(&ck.dir)?.pop(),
        _ => None,
    };
    if let Some(dir) = latest {
        let restored = checkpoint::load(&dir, model, optim)?;
        (model, optim) = (restored.model, restored.optim);
        let state = restored.state;
        (step, correct, seen) = (state.step, state.epoch_correct, state.epoch_seen);
        (history, best, best_values) = (state.history, state.best, restored.best_values);
        println!(
            "  {label}: resumed from {} at step {step} of {total}",
            dir.display()
        );
    }
    let param_ids = checkpoint::param_ids(&model);
    let prior_seconds = history.train_seconds;
    let bar = progress(total as u64, label);
    bar.set_position(step as u64);
    let start = Instant::now();
    for epoch in step / steps_per_epoch.max(1)..options.epochs {
        let mut rng = StdRng::seed_from_u64(epoch_seed(options.seed, epoch));
        let batches = length_grouped_batches(&train.tokens, options.batch_size, &mut rng);
        let done = step - epoch * steps_per_epoch; // > 0 only in the epoch a resume lands in
        if done == 0 {
            (correct, seen) = (0, 0);
        }
        for chunk in batches.iter().skip(done) {
            let step_start = Instant::now();
            device.seed(step_seed(options.seed, step));
            let lr = lr_at(step, total, warmup, options.lr, 0.0);
            // Each part's mean loss is weighted by its share, so they sum to the batch mean.
            let parts: Vec<&[usize]> = chunk
                .chunks(chunk.len().div_ceil(part_devices.len()))
                .collect();
            let devices = &part_devices[..parts.len()];
            let (grads, value, part_correct) = parallel_grads(&model, devices, |replica, p, on| {
                let part = parts[p];
                let seqs: Vec<&[u32]> = part.iter().map(|&i| train.tokens[i].as_slice()).collect();
                let labels: Vec<usize> = part.iter().map(|&i| train.labels[i]).collect();
                let batch = class_batch(&seqs, &labels, options.pad_id, on);
                let pool = options.pooling.weights(&batch);
                let logits = replica.classify(batch.tokens, batch.padding, pool);
                let predicted = logits.clone().argmax(1).reshape([part.len()]);
                let correct = predicted
                    .equal(batch.labels.clone())
                    .int()
                    .sum()
                    .into_scalar::<i64>() as usize;
                let share = part.len() as f64 / chunk.len() as f64;
                PartOutput {
                    loss: loss_fn.forward(logits, batch.labels).mul_scalar(share),
                    extra: correct,
                }
            });
            correct += part_correct.iter().sum::<usize>();
            seen += chunk.len();
            history.examples += chunk.len();
            check_finite(value, step, lr, &bar)?;
            model = optim.step(lr, model, grads);
            step += 1;
            history.step_loss.push(value);
            history
                .step_seconds
                .push(step_start.elapsed().as_secs_f64());
            let rate = seen as f64
                / history
                    .step_seconds
                    .iter()
                    .rev()
                    .take(steps_per_epoch)
                    .sum::<f64>();
            bar.set_message(format!(
                "loss {value:.3} | acc {:.3} | {rate:.0} ex/s",
                correct as f64 / seen as f64
            ));
            bar.inc(1);
            if step % steps_per_epoch == 0 {
                let val_accuracy = accuracy(
                    &predict(&model.valid(), &val.tokens, options.pooling, options.pad_id),
                    &val.labels,
                );
                history
                    .epoch_train_accuracy
                    .push(correct as f64 / seen as f64);
                history.epoch_val_accuracy.push(val_accuracy);
                if best.is_none_or(|b| val_accuracy > b.val_accuracy) {
                    best = Some(BestEpoch {
                        epoch: epoch + 1,
                        val_accuracy,
                    });
                    if track_best {
                        best_values = Some(checkpoint::trainable_values(&model));
                    }
                }
                bar.suspend(|| {
                    println!(
                        "  {label} epoch {}: train accuracy {:.4}, validation accuracy {val_accuracy:.4}",
                        epoch + 1,
                        correct as f64 / seen as f64
                    )
                });
            }
            if let Some(ck) = &options.checkpoint
                && step % ck.every.max(1) == 0
            {
                history.train_seconds = prior_seconds + start.elapsed().as_secs_f64();
                let state = TrainState {
                    step,
                    epoch_correct: correct,
                    epoch_seen: seen,
                    history: history.clone(),
                    best,
                    param_ids: param_ids.clone(),
                };
                let saved = checkpoint::save(ck, &model, &optim, &state, best_values.as_ref())?;
                bar.suspend(|| println!("  {label}: checkpoint {}", saved.display()));
            }
        }
    }
    bar.finish_and_clear();
    history.train_seconds = prior_seconds + start.elapsed().as_secs_f64();
    history.kept_epoch = options.epochs;
    if let (true, Some(b), Some(values)) = (track_best, best, &best_values)
        && b.epoch != options.epochs
    {
        let dir = options
            .checkpoint
            .as_ref()
            .map_or(Default::default(), |c| c.dir.clone());
        model = checkpoint::restore_values(model, None, values, &dir)?;
        history.kept_epoch = b.epoch;
        println!(
            "  {label}: keeping epoch {} (validation accuracy {:.4}), the best",
            b.epoch, b.val_accuracy
        );
    }
    Ok((model, history))
}

/// AdamW's epsilon: PyTorch's default (Burn's is 1e-5). LoRA's gradients start small (B is
/// zero, so A's gradient is zero and B's is scaled by A's small values), and an epsilon of
/// 1e-5 damps exactly those first updates.
pub const ADAM_EPSILON: f32 = 1e-8;
