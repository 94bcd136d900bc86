//! The classifier on several devices, through burn-train's `MultiDevice` strategy.
//!
//! With `--device a,b`, the sentiment job hands its model to burn-train: `SupervisedTraining`
//! splits the training set between the devices, each runs forward and backward on its
//! batches through its own copy of the model, and the gradients are summed on the first
//! device before one optimizer step (`MultiDeviceOptim::OptimMainDevice`). This is the
//! engine Burn users train with, the one that scales past one device on Burn's code. The
//! per-core replicas on one CPU device stay ours ([`parallel`](crate::train::parallel)):
//! Burn has nothing like them.
//!
//! What is kept from the one-device loop: the learning-rate shape (linear warm-up, then
//! cosine to zero, as [`lr_at`](crate::train::lr_at)), AdamW with the same settings, one
//! step per `batch_size` examples (each device takes its share of the batch, and its loss
//! is weighted by that share, so the summed gradient is the whole batch's mean), and
//! `--keep best` (burn-train checkpoints the epoch with the best validation accuracy; that
//! epoch's weights are loaded back). What differs: batches are not grouped by length,
//! burn-train shuffles, and `--checkpoint-every`/`--resume` are the one-device loop's.

use std::path::Path;
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamWConfig;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep, TrainingStrategy,
};

use crate::Error;
use crate::data::{ClassBatch, class_batch};
use crate::model::Pooling;
use crate::train::finetune::ADAM_EPSILON;
use crate::train::sft::SftProgress;
use crate::train::{Classifier, Encoded, FinetuneOptions, History};

/// A classifier as burn-train's `Learner` trains it: cross-entropy on the class logits,
/// the loss's gradient weighted by `share` (the device's part of a step's batch).
#[derive(Module, Debug)]
pub struct ClassifierStep<C: Classifier> {
    /// The classifier, with or without LoRA.
    pub classifier: C,
    /// How hidden states are pooled.
    #[module(skip)]
    pub pooling: Pooling,
    /// The weight of each device's loss in the summed gradient: `1 / devices`.
    #[module(skip)]
    pub share: f64,
}

impl<C: Classifier> ClassifierStep<C> {
    fn output(&self, batch: ClassBatch) -> ClassificationOutput {
        let pool = self.pooling.weights(&batch);
        let logits = self.classifier.classify(batch.tokens, batch.padding, pool);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl<C: Classifier> TrainStep for ClassifierStep<C> {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.output(batch);
        let grads = output.loss.clone().mul_scalar(self.share).backward();
        TrainOutput::new(self, grads, output)
    }
}

impl<C: Classifier> InferenceStep for ClassifierStep<C> {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> ClassificationOutput {
        self.output(batch)
    }
}

/// One example: its tokens and its class.
#[derive(Clone, Debug)]
pub(crate) struct Example(Vec<u32>, usize);

#[derive(Clone)]
struct ClassBatcher {
    pad: u32,
}

impl Batcher<Example, ClassBatch> for ClassBatcher {
    fn batch(&self, items: Vec<Example>, device: &Device) -> ClassBatch {
        let seqs: Vec<&[u32]> = items.iter().map(|e| e.0.as_slice()).collect();
        let labels: Vec<usize> = items.iter().map(|e| e.1).collect();
        class_batch(&seqs, &labels, self.pad, device)
    }
}

fn examples(data: &Encoded) -> Vec<Example> {
    data.tokens
        .iter()
        .zip(&data.labels)
        .map(|(t, &l)| Example(t.clone(), l))
        .collect()
}

/// Linear warm-up over `warmup` steps, then cosine annealing to zero over the rest: the
/// shape of [`lr_at`](crate::train::lr_at), from burn-train's schedulers.
fn schedule(peak: f64, total: usize, warmup: usize) -> Result<ModuleLrScheduler, Error> {
    let bad = |e: String| Error::Usage(format!("--lr {peak}: {e}"));
    let cosine = CosineAnnealingLrSchedulerConfig::new(peak, total.saturating_sub(warmup).max(1));
    if warmup < 2 {
        return cosine.init().map_err(bad);
    }
    let warm = LinearLrSchedulerConfig::new(peak / warmup as f64, peak, warmup - 1);
    SequentialLrSchedulerConfig::new(
        vec![
            LrSchedulerConfig::Linear(warm),
            LrSchedulerConfig::Cosine(cosine),
        ],
        vec![warmup],
    )
    .init()
    .map_err(bad)
}

/// Trains `model` (prepared, on the first device's autodiff device) on `train` across
/// `options.devices` with burn-train's `MultiDevice` strategy, validating on `val` after
/// each epoch. burn-train's files (its checkpoints, its metric logs) go to `dir`. Returns
/// the kept epoch's model and the run's history (per-batch losses as each device reported
/// them, each epoch's accuracies from burn-train's `AccuracyMetric`).
///
/// # Errors
///
/// A training burn-train ended with an error, a non-finite loss, or a best-epoch checkpoint
/// that cannot be read back.
pub fn finetune_on_devices<C: Classifier>(
    model: C,
    train: &Encoded,
    val: &Encoded,
    options: &FinetuneOptions,
    dir: &Path,
    label: &str,
) -> Result<(C, History), Error> {
    let devices = options.devices.clone();
    let parts = devices.len();
    let device = devices[0].clone();
    // Each device takes its share of a step's batch; `split_dataloader` gives each device
    // a contiguous `1/parts` of the data, and the step ends when the longest is done.
    let per_device = options.batch_size.div_ceil(parts).max(1);
    let longest = train.tokens.len() - (parts - 1) * (train.tokens.len() / parts);
    let steps_per_epoch = longest.div_ceil(per_device);
    let total = (options.epochs * steps_per_epoch).max(1);
    let warmup = (options.warmup_ratio * total as f64).round() as usize;
    let scheduler = schedule(options.lr, total, warmup)?;
    let optim = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .with_epsilon(ADAM_EPSILON)
        .init();
    let step = ClassifierStep {
        classifier: model,
        pooling: options.pooling,
        share: 1.0 / parts as f64,
    };
    let learner = Learner::new(step, optim, scheduler);
    let batcher = ClassBatcher {
        pad: options.pad_id,
    };
    let loader_train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(per_device)
        .shuffle(options.seed)
        .set_device(device.clone())
        .build(InMemDataset::new(examples(train)));
    let loader_valid = DataLoaderBuilder::new(batcher)
        .batch_size(options.batch_size)
        .set_device(device.clone())
        .build(InMemDataset::new(examples(val)));
    let (renderer, curve) = SftProgress::new(label);
    // The last epoch and the best on validation accuracy are kept on disk.
    let keep = ComposedCheckpointingStrategy::builder()
        .add(KeepLastNCheckpoints::new(1))
        .add(MetricCheckpointingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            Direction::Highest,
            Split::Valid,
        ))
        .build();
    let training = SupervisedTraining::new(dir, loader_train, loader_valid)
        .metrics((LossMetric::new(), AccuracyMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_default_checkpointers()
        .with_checkpointing_strategy(keep)
        .num_epochs(options.epochs)
        .renderer(Box::new(renderer))
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Default(ExecutionStrategy::MultiDevice(
            devices,
            MultiDeviceOptim::OptimMainDevice,
        )));
    let start = Instant::now();
    let result = training.launch(learner);
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(error) = result.error {
        return Err(Error::Usage(format!("training failed: {error}")));
    }
    let curve = curve.lock().unwrap().clone();
    if let Some(at) = curve.train_loss.iter().position(|l| !l.is_finite()) {
        return Err(Error::NonFiniteLoss {
            step: at / parts + 1,
            loss: curve.train_loss[at],
            lr: options.lr,
        });
    }
    let mut model = result.model.classifier;
    let mut history = History {
        step_loss: curve
            .train_loss
            .chunks(parts)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect(),
        epoch_train_accuracy: curve.train_accuracy.iter().map(|a| a / 100.0).collect(),
        epoch_val_accuracy: curve.valid_accuracy.iter().map(|a| a / 100.0).collect(),
        train_seconds,
        examples: train.tokens.len() * options.epochs,
        kept_epoch: options.epochs,
        ..History::default()
    };
    let steps = history.step_loss.len().max(1);
    history.step_seconds = vec![train_seconds / steps as f64; steps];
    if options.keep == crate::train::checkpoint::Keep::Best
        && let Some(best) = best_epoch(&history.epoch_val_accuracy)
        && best != options.epochs
    {
        let path = dir.join("checkpoint").join(format!("model-{best}.bpk"));
        let record = ModuleRecord::load(&path).map_err(|e| {
            Error::Usage(format!(
                "{}: burn-train's checkpoint of the best epoch cannot be read: {e}",
                path.display()
            ))
        })?;
        let step = ClassifierStep {
            classifier: model,
            pooling: options.pooling,
            share: 1.0,
        };
        model = step.load_record(record).classifier;
        history.kept_epoch = best;
        println!(
            "  {label}: keeping epoch {best} (validation accuracy {:.4}), the best",
            history.epoch_val_accuracy[best - 1]
        );
    }
    Ok((model, history))
}

/// The epoch (from 1) with the highest accuracy, the earliest of equals.
fn best_epoch(accuracy: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &a) in accuracy.iter().enumerate() {
        if best.is_none_or(|(_, b)| a > b) {
            best = Some((i + 1, a));
        }
    }
    best.map(|(epoch, _)| epoch)
}
