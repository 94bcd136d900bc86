//! What `--resume` needs: `job.json` (the settings that change what a run computes) and
//! each finished mode's `done.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::io::read_json;
use crate::train::History;

use super::base::pooling_name;
use super::options::SentimentOptions;
use super::report::RunMetrics;

/// The file in `out` that records a run's configuration, for `--resume`.
pub const JOB_FILE: &str = "job.json";

/// The file in `out/checkpoints/<mode>/` that holds a finished mode's results.
pub(super) const DONE_FILE: &str = "done.json";

/// A finished mode, as a resumed run reads it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ModeResult {
    /// The mode's `metrics.json` entry.
    pub run: RunMetrics,
    /// The mode's `details.json` entry.
    pub details: serde_json::Value,
    /// The mode's loss and accuracy history.
    pub history: History,
}

/// Every setting that changes what a run computes, as `job.json` records it. Output
/// settings (`out`, `overwrite`, `resume`) are not among them.
pub(super) fn job_record(
    options: &SentimentOptions,
    devices: &[Device],
) -> BTreeMap<&'static str, String> {
    let paths = |p: &[PathBuf]| {
        p.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let modes: Vec<String> = options.modes.iter().map(|m| format!("{m:?}")).collect();
    BTreeMap::from([
        ("dataset", options.dataset.clone()),
        ("train_file", options.train_file.display().to_string()),
        ("test_file", options.test_file.display().to_string()),
        ("eval_files", paths(&options.eval_files)),
        ("base", options.base.describe()),
        ("max_len", format!("{:?}", options.max_len)),
        ("modes", modes.join("; ")),
        ("lr", format!("{:?}", options.lr)),
        ("epochs", options.epochs.to_string()),
        ("batch_size", options.batch_size.to_string()),
        ("seed", options.seed.to_string()),
        ("max_train", format!("{:?}", options.max_train)),
        (
            "pooling",
            pooling_name(options.pooling, options.base.bert_head()).into(),
        ),
        ("replicas", options.replicas.to_string()),
        ("read", format!("{:?}", options.read)),
        (
            "checkpoint_every",
            format!("{:?}", options.checkpoint_every),
        ),
        ("init_adapter", format!("{:?}", options.init_adapter)),
        ("keep", format!("{:?}", options.keep)),
        ("quantize", format!("{:?}", options.quantize)),
        (
            "devices",
            devices
                .iter()
                .map(crate::device::describe)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ])
}

/// `--resume`: `out` must hold a run started with checkpoints, and this command's
/// configuration must be the one it records.
pub(super) fn check_resumable(options: &SentimentOptions, devices: &[Device]) -> Result<(), Error> {
    let path = options.out.join(JOB_FILE);
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "--resume {}: there is no {JOB_FILE} there, so no run to continue",
            options.out.display()
        )));
    }
    let recorded: BTreeMap<String, String> = read_json(&path)?;
    if recorded.get("checkpoint_every").is_none_or(|v| v == "None") {
        return Err(Error::Usage(format!(
            "--resume {}: that run was started without --checkpoint-every, so it has no checkpoints",
            options.out.display()
        )));
    }
    for (field, value) in job_record(options, devices) {
        let before = recorded.get(field).map_or("(not recorded)", String::as_str);
        if before != value {
            return Err(Error::Usage(format!(
                "--resume {}: `{field}` differs: the run was started with {before}, this command gives {value}",
                options.out.display()
            )));
        }
    }
    Ok(())
}
