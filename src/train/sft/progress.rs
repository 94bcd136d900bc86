//! [`SftProgress`]: burn-train's renderer for the SFT job (and the sentiment job on several
//! devices). It draws one progress bar per
//! split (burn-train's own CLI renderer prints a line per batch) and keeps the loss
//! curve: each training batch's loss and each epoch's validation loss, as burn-train's
//! `LossMetric` reports them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::train::LearnerSummary;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use indicatif::{ProgressBar, ProgressStyle};

/// What a run's metrics said, for `metrics.json` and the loss curve.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    /// Every training batch's loss, in order (over all epochs).
    pub train_loss: Vec<f64>,
    /// Each epoch's mean training loss (burn-train's epoch value: the mean of its batches).
    pub train_epoch_loss: Vec<f64>,
    /// Each epoch's mean validation loss.
    pub valid_loss: Vec<f64>,
    /// Each epoch's validation perplexity.
    pub valid_perplexity: Vec<f64>,
    /// Each epoch's training accuracy in percent, when an `AccuracyMetric` is registered.
    pub train_accuracy: Vec<f64>,
    /// Each epoch's validation accuracy in percent, when an `AccuracyMetric` is registered.
    pub valid_accuracy: Vec<f64>,
    /// Batches per epoch (the last epoch's count).
    pub batches_per_epoch: usize,
}

/// A renderer that shows progress bars and records a [`Curve`].
pub struct SftProgress {
    label: String,
    bar: Option<ProgressBar>,
    epoch: usize,
    epochs: usize,
    split: String,
    names: HashMap<MetricId, String>,
    curve: Arc<Mutex<Curve>>,
}

impl SftProgress {
    /// A renderer for the run called `label`, and the curve it fills.
    pub fn new(label: &str) -> (Self, Arc<Mutex<Curve>>) {
        let curve = Arc::new(Mutex::new(Curve::default()));
        let renderer = Self {
            label: label.to_string(),
            bar: None,
            epoch: 0,
            epochs: 0,
            split: String::new(),
            names: HashMap::new(),
            curve: curve.clone(),
        };
        (renderer, curve)
    }

    fn record(&mut self, valid: bool, state: MetricState) {
        let MetricState::Numeric(entry, Some(value)) = state else {
            return;
        };
        let Some(name) = self.names.get(&entry.metric_id) else {
            return;
        };
        let mut curve = self.curve.lock().unwrap();
        match (valid, name.as_str(), value) {
            (
                false,
                "Loss",
                NumericEntry::Aggregated {
                    aggregated_value: v,
                    ..
                },
            )
            | (false, "Loss", NumericEntry::Value(v)) => {
                curve.train_loss.push(v);
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("loss {v:.4}"));
                }
            }
            (false, "Loss", NumericEntry::Final(v)) => curve.train_epoch_loss.push(v),
            (true, "Loss", NumericEntry::Final(v)) => curve.valid_loss.push(v),
            (true, "Perplexity", NumericEntry::Final(v)) => curve.valid_perplexity.push(v),
            (false, "Accuracy", NumericEntry::Final(v)) => curve.train_accuracy.push(v),
            (true, "Accuracy", NumericEntry::Final(v)) => curve.valid_accuracy.push(v),
            _ => {}
        }
    }
}

impl MetricsRendererTraining for SftProgress {
    fn update_train(&mut self, state: MetricState) {
        self.record(false, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(true, state);
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for SftProgress {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn on_test_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for SftProgress {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        (self.epochs, self.epoch) = (total_epochs, starting_epoch);
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        let bar = ProgressBar::new(total_items as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches {elapsed} {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(format!(
            "  {} epoch {}/{} {}",
            self.label,
            self.epoch.max(1),
            self.epochs,
            self.split
        ));
        self.bar = Some(bar);
        if split.starts_with("train") {
            self.curve.lock().unwrap().batches_per_epoch = total_items;
        }
    }

    fn update_split(&mut self, items_processed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(items_processed as u64);
        }
    }

    fn end_split(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for SftProgress {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for SftProgress {
    fn manual_close(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
