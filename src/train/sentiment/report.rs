//! The job's results: `metrics.json` ([`Metrics`]), `details.json`, the loss and accuracy
//! curves, and the table the job prints.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use burn_lora::ParamReport;

use crate::Error;
use crate::data::{LabelSet, SentimentDataset};
use crate::io::{to_json, write_atomic};
use crate::train::baseline::NaiveBayes;
use crate::train::metrics::{ClassMetrics, Classification};
use crate::train::{Encoded, FinetuneMode, History, svg_line_plot};

use super::artifacts::MergeCheck;
use super::options::SentimentOptions;

/// One row of `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    /// `full`, `lora` or `head`.
    pub mode: String,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// Parameters that stayed frozen.
    pub frozen_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Accuracy on the test file.
    pub test_accuracy: f64,
    /// The class names, in class order.
    pub labels: Vec<String>,
    /// The unweighted mean of the classes' F1 on the test file.
    pub macro_f1: f64,
    /// Precision, recall, F1 and support of each class on the test file.
    pub per_class: Vec<ClassMetrics>,
    /// Test-file counts: rows are the true classes, columns the predicted ones, both in
    /// the order of `labels`.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Accuracy on each `--eval-file`, by file name.
    pub eval: BTreeMap<String, f64>,
    /// Training wall time.
    pub train_seconds: f64,
    /// Median seconds per optimizer step.
    pub median_step_seconds: f64,
    /// Peak resident memory during this mode (see [`peak_rss`](crate::memory::peak_rss)).
    pub peak_rss_bytes: u64,
    /// Bytes of what this mode must store: adapter + head, head, or the full model.
    pub artifact_bytes: u64,
    /// The epoch (from 1) whose weights were kept: the best on validation, or the last
    /// with `--keep last`.
    pub kept_epoch: usize,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// The dataset.
    pub dataset: String,
    /// The base directory, or `random`.
    pub base: String,
    /// How the frozen base was quantized (`q8`, `q4`), or `None` for float.
    #[serde(default)]
    pub quantize: Option<crate::train::quantize::BaseQuant>,
    /// The backend trained on (`Flex`, `NdArray`, `Cube`, ...).
    pub backend: String,
    /// The devices trained on, as Burn names them.
    pub devices: Vec<String>,
    /// The class names, in class order (the training file's labels).
    pub labels: Vec<String>,
    /// One entry per mode.
    pub runs: Vec<RunMetrics>,
}

pub(super) fn mode_details(
    mode: &FinetuneMode,
    report: &ParamReport,
    history: &History,
    merge: Option<MergeCheck>,
    lr: f64,
) -> serde_json::Value {
    let lora = match mode {
        FinetuneMode::Lora(c) => serde_json::json!({
            "rank": c.rank, "alpha": c.alpha, "dropout": c.dropout, "target_modules": c.target_modules,
        }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "mode": mode.name(),
        "lr": lr,
        "lora": lora,
        "reduction_vs_full": report.reduction,
        "adam_state_bytes": report.adam_state_bytes,
        "epoch_train_accuracy": history.epoch_train_accuracy,
        "epoch_validation_accuracy": history.epoch_val_accuracy,
        "train_examples_per_second": history.examples_per_second(),
        "merge_check": merge,
    })
}

fn write_curves(out: &Path, curves: &[(&str, History)]) -> Result<(), Error> {
    let mut csv = String::from("mode,step,loss\n");
    let mut acc = String::from("mode,epoch,train_accuracy,validation_accuracy\n");
    let mut series = Vec::new();
    for (mode, history) in curves {
        for (i, loss) in history.step_loss.iter().enumerate() {
            csv.push_str(&format!("{mode},{},{loss}\n", i + 1));
        }
        for (i, (t, v)) in history
            .epoch_train_accuracy
            .iter()
            .zip(&history.epoch_val_accuracy)
            .enumerate()
        {
            acc.push_str(&format!("{mode},{},{t},{v}\n", i + 1));
        }
        // A moving average of 20 steps, so the plot shows the trend rather than the noise.
        let smooth: Vec<(f64, f64)> = history
            .step_loss
            .windows(20.min(history.step_loss.len()).max(1))
            .enumerate()
            .map(|(i, w)| ((i + w.len()) as f64, w.iter().sum::<f64>() / w.len() as f64))
            .collect();
        series.push((*mode, smooth));
    }
    write_atomic(&out.join("loss.csv"), csv.as_bytes())?;
    write_atomic(&out.join("accuracy.csv"), acc.as_bytes())?;
    let svg = svg_line_plot(
        "Fine-tuning loss (20-step mean)",
        "step",
        "cross-entropy",
        &series,
    );
    write_atomic(&out.join("loss.svg"), svg.as_bytes())
}

fn table(metrics: &Metrics, baseline: &Classification) -> String {
    let mut s = format!(
        "{:<9} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12}\n",
        "mode",
        "trainable",
        "frozen",
        "total",
        "train%",
        "test acc",
        "macro F1",
        "train s",
        "s/step",
        "peak MB",
        "artifact"
    );
    for r in &metrics.runs {
        s.push_str(&format!(
            "{:<9} {:>10} {:>10} {:>10} {:>7.2}% {:>9.4} {:>9.4} {:>9.1} {:>10.4} {:>9.0} {:>12}\n",
            r.mode,
            r.trainable_params,
            r.frozen_params,
            r.total_params,
            100.0 * r.trainable_params as f64 / r.total_params as f64,
            r.test_accuracy,
            r.macro_f1,
            r.train_seconds,
            r.median_step_seconds,
            r.peak_rss_bytes as f64 / 1e6,
            format!("{} B", r.artifact_bytes),
        ));
    }
    s.push_str(&format!(
        "{:<9} {:>54.4} {:>9.4}   (multinomial naive Bayes, unigrams + bigrams)\n",
        "baseline", baseline.accuracy, baseline.macro_f1
    ));
    // Head-only trailing is expected; the transformer's best mode trailing is the lesson.
    let best = metrics
        .runs
        .iter()
        .filter(|r| r.mode != "head")
        .map(|r| r.test_accuracy)
        .fold(f64::NAN, f64::max);
    if best < baseline.accuracy {
        s.push_str(&format!(
            "note: the transformer ({:.2} % at best) trails the bag-of-words baseline ({:.2} %): a base not pre-trained on text like this data cannot beat it (docs/RESULTS.md, \"Chinese reviews\")\n",
            100.0 * best,
            100.0 * baseline.accuracy
        ));
    }
    if metrics.labels.len() > 2 {
        for r in &metrics.runs {
            let scores = Classification {
                labels: r.labels.clone(),
                accuracy: r.test_accuracy,
                macro_f1: r.macro_f1,
                per_class: r.per_class.clone(),
                confusion_matrix: r.confusion_matrix.clone(),
            };
            s.push_str(&format!(
                "\n{} confusion matrix (test):\n{}",
                r.mode,
                scores.matrix_table()
            ));
        }
    }
    s
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// What the modes of one job produced, and the data they were measured on, for
/// [`write_report`].
pub(super) struct JobReport<'a> {
    /// The training file, for the baseline.
    pub train: &'a SentimentDataset,
    /// The test file, for the baseline.
    pub test: &'a SentimentDataset,
    /// The test file, encoded: its labels.
    pub test_enc: &'a Encoded,
    /// The classes.
    pub labels: &'a LabelSet,
    /// Texts truncated to `max_len`, over every split.
    pub truncated: usize,
    /// The input length the job used.
    pub max_len: usize,
    /// Each mode's `metrics.json` entry.
    pub runs: Vec<RunMetrics>,
    /// Each mode's `details.json` entry.
    pub details: Vec<serde_json::Value>,
    /// Each mode's loss and accuracy history.
    pub curves: Vec<(&'a str, History)>,
}

/// Fits the naive Bayes baseline, writes `metrics.json`, `details.json` and the curves, and
/// returns the metrics and the table the job prints.
pub(super) fn write_report(
    options: &SentimentOptions,
    devices: &[Device],
    report: JobReport,
) -> Result<(Metrics, String), Error> {
    let JobReport {
        train,
        test,
        test_enc,
        labels,
        truncated,
        max_len,
        runs,
        details,
        curves,
    } = report;
    let device = &devices[0];
    let train_classes = labels.classes(train)?;
    let nb = NaiveBayes::fit(
        train.texts().zip(train_classes.iter().copied()),
        labels.len(),
    );
    let nb_predicted: Vec<usize> = test.texts().map(|t| nb.predict(t)).collect();
    let baseline = Classification::new(labels.names(), &nb_predicted, &test_enc.labels);
    let metrics = Metrics {
        dataset: options.dataset.clone(),
        base: options.base.describe(),
        quantize: options.quantize,
        backend: crate::device::backend(device),
        devices: devices.iter().map(crate::device::describe).collect(),
        labels: labels.names().to_vec(),
        runs,
    };
    write_atomic(
        &options.out.join("metrics.json"),
        to_json(&metrics).as_bytes(),
    )?;
    let details = serde_json::json!({
        "baseline_naive_bayes_test_accuracy": baseline.accuracy,
        "baseline_naive_bayes_test_macro_f1": baseline.macro_f1,
        "baseline_naive_bayes_confusion_matrix": baseline.confusion_matrix,
        "truncated_texts": truncated,
        "pooling": format!("{:?}", options.pooling),
        "max_len": max_len,
        "bert_head": options.base.bert_head(),
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "replicas": options.replicas,
        "devices": metrics.devices,
        "backend": metrics.backend,
        "modes": details,
    });
    write_atomic(
        &options.out.join("details.json"),
        to_json(&details).as_bytes(),
    )?;
    write_curves(&options.out, &curves)?;
    Ok((metrics.clone(), table(&metrics, &baseline)))
}
