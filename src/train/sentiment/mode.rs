//! One mode of the job: train it, score it on the test and evaluation files, save its
//! artefact, and check that a LoRA adapter merges to the same answers.

use std::path::Path;

use burn::tensor::Device;
use burn_lora::param_report;

use super::artifacts::{merge_check, save_artifact};
use super::options::{JobDefaults, SentimentOptions};
use super::report::{RunMetrics, file_name, median, mode_details};
use super::resume::ModeResult;
use crate::Error;
use crate::data::{HeadRecord, LabelSet};
use crate::memory::peak_rss;
use crate::train::checkpoint::CheckpointOptions;
use crate::train::metrics::{Classification, argmax};
use crate::train::multi::finetune_on_devices;
use crate::train::{
    Classifier, Encoded, FinetuneMode, FinetuneOptions, accuracy, finetune, predict,
};

/// What every mode of a job shares.
pub(super) struct ModeInputs<'a> {
    /// The job's settings.
    pub options: &'a SentimentOptions,
    /// The devices to train on; the first holds the model.
    pub devices: &'a [Device],
    /// The training split, encoded.
    pub fit: &'a Encoded,
    /// The validation split, encoded.
    pub val: &'a Encoded,
    /// The test file, encoded.
    pub test: &'a Encoded,
    /// The `--eval-file`s, encoded.
    pub evals: &'a [Encoded],
    /// The classes.
    pub labels: &'a LabelSet,
    /// The classes and head, saved beside each artefact.
    pub record: &'a HeadRecord,
    /// The tokenizer's padding id.
    pub pad_id: u32,
}

/// Trains `model` (built and prepared for `mode` on an autodiff device), evaluates it and
/// saves its artefact in the job's output directory. `checkpoints` is the mode's
/// checkpoint directory.
pub(super) fn train_mode<C: Classifier>(
    inputs: &ModeInputs,
    mode: &FinetuneMode,
    model: C,
    checkpoints: &Path,
) -> Result<ModeResult, Error> {
    let ModeInputs {
        options,
        devices,
        test,
        evals,
        labels,
        record,
        ..
    } = *inputs;
    let report = param_report(&model);
    let finetune_options = FinetuneOptions {
        epochs: options.epochs,
        batch_size: options.batch_size,
        lr: options
            .lr
            .unwrap_or_else(|| JobDefaults::for_base(&options.base).lr(mode)),
        weight_decay: 0.01,
        warmup_ratio: 0.06,
        seed: options.seed,
        pooling: options.pooling,
        pad_id: inputs.pad_id,
        replicas: options.replicas,
        devices: match devices.len() {
            1 => Vec::new(),
            _ => devices.iter().map(|d| d.clone().autodiff()).collect(),
        },
        checkpoint: options.checkpoint_every.map(|every| CheckpointOptions {
            dir: checkpoints.to_path_buf(),
            every,
        }),
        resume: options.resume,
        keep: options.keep,
    };
    println!(
        "\n== {} ({} trainable of {} parameters, lr {:e}) ==",
        mode.name(),
        report.trainable,
        report.total,
        finetune_options.lr
    );
    let (model, history) = match finetune_options.devices.len() > 1 {
        // burn-train's files (its epoch checkpoints, its metric logs) beside ours.
        true => finetune_on_devices(
            model,
            inputs.fit,
            inputs.val,
            &finetune_options,
            &checkpoints.join("burn-train"),
            mode.name(),
        )?,
        false => finetune(
            model,
            inputs.fit,
            inputs.val,
            &finetune_options,
            mode.name(),
        )?,
    };
    println!(
        "  {}: {:.1} training examples/s ({})",
        mode.name(),
        history.examples_per_second(),
        match devices.len() {
            1 => format!("{} replicas", finetune_options.replicas.max(1)),
            n => format!("{n} devices"),
        }
    );
    let model = model.valid();
    let score = |enc: &Encoded| {
        accuracy(
            &predict(
                &model,
                &enc.tokens,
                finetune_options.pooling,
                finetune_options.pad_id,
            ),
            &enc.labels,
        )
    };
    let test_probs = predict(
        &model,
        &test.tokens,
        finetune_options.pooling,
        finetune_options.pad_id,
    );
    let predicted: Vec<usize> = test_probs.iter().map(|p| argmax(p)).collect();
    let scores = Classification::new(labels.names(), &predicted, &test.labels);
    let eval = options
        .eval_files
        .iter()
        .zip(evals)
        .map(|(path, enc)| (file_name(path), score(enc)))
        .collect();
    let artifact_bytes = save_artifact(mode, &model, &options.out, record)?;
    let merge = match mode {
        FinetuneMode::Lora(_) => Some(merge_check(&model, test, &finetune_options)?),
        _ => None,
    };
    let peak_rss_bytes = peak_rss().unwrap_or(0);
    let run = RunMetrics {
        mode: mode.name().into(),
        trainable_params: report.trainable,
        frozen_params: report.frozen,
        total_params: report.total,
        test_accuracy: scores.accuracy,
        labels: scores.labels,
        macro_f1: scores.macro_f1,
        per_class: scores.per_class,
        confusion_matrix: scores.confusion_matrix,
        eval,
        train_seconds: history.train_seconds,
        median_step_seconds: median(&history.step_seconds),
        peak_rss_bytes,
        artifact_bytes,
        kept_epoch: history.kept_epoch,
    };
    let details = mode_details(mode, &report, &history, merge, finetune_options.lr);
    Ok(ModeResult {
        run,
        details,
        history,
    })
}
