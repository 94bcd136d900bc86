//! What each mode leaves on disk (the adapter, the full model or the head) and the merge
//! check of a LoRA run.

use std::fs;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use burn_lora::{merge_lora, save_adapter_with};

use crate::Error;
use crate::data::HeadRecord;
use crate::train::Classifier;
use crate::train::metrics::argmax;
use crate::train::{Encoded, FinetuneMode, FinetuneOptions, predict};

/// Saves what the mode must keep and returns its size in bytes.
/// Saves what the mode must keep, with the labels and pooling it was trained with
/// (`labels.json` in the adapter directory, or beside the `.bpk`), and returns the size of
/// the artefact in bytes.
pub(super) fn save_artifact<C: Classifier>(
    mode: &FinetuneMode,
    model: &C,
    out: &Path,
    record: &HeadRecord,
) -> Result<u64, Error> {
    match mode {
        FinetuneMode::Lora(_) => {
            let dir = out.join("lora_adapter");
            save_adapter_with(model, &dir, &C::peft_options())?;
            record.save(&dir)?;
            dir_bytes(&dir)
        }
        FinetuneMode::HeadOnly => {
            let path = out.join("head.bpk");
            crate::io::save_module(model.head_layer().clone(), &path)?;
            file_bytes(&path)
        }
        FinetuneMode::Full => {
            let path = out.join("full_model.bpk");
            crate::io::save_module(model.clone(), &path)?;
            file_bytes(&path)
        }
    }
}

fn file_bytes(path: &Path) -> Result<u64, Error> {
    Ok(fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

fn dir_bytes(dir: &Path) -> Result<u64, Error> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        total += file_bytes(&entry.map_err(|e| Error::io(dir, e))?.path())?;
    }
    Ok(total)
}

/// What merging the adapter changed: prediction agreement and inference times.
#[derive(Debug, Clone, Serialize)]
pub struct MergeCheck {
    /// Test predictions that differ between the merged and unmerged model.
    pub differing_predictions: usize,
    /// Largest difference in any class probability.
    pub max_probability_difference: f32,
    /// Seconds to classify the test set with the adapter unmerged.
    pub unmerged_seconds: f64,
    /// Seconds with the adapter merged.
    pub merged_seconds: f64,
}

pub(super) fn merge_check<C: Classifier>(
    model: &C,
    test: &Encoded,
    options: &FinetuneOptions,
) -> Result<MergeCheck, Error> {
    let start = Instant::now();
    let unmerged = predict(model, &test.tokens, options.pooling, options.pad_id);
    let unmerged_seconds = start.elapsed().as_secs_f64();
    let merged_model = merge_lora(model.clone())?;
    let start = Instant::now();
    let merged = predict(&merged_model, &test.tokens, options.pooling, options.pad_id);
    let merged_seconds = start.elapsed().as_secs_f64();
    let check = MergeCheck {
        differing_predictions: unmerged
            .iter()
            .zip(&merged)
            .filter(|(a, b)| argmax(a) != argmax(b))
            .count(),
        max_probability_difference: unmerged
            .iter()
            .zip(&merged)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max),
        unmerged_seconds,
        merged_seconds,
    };
    println!(
        "  merged adapter: {} of {} test predictions differ (max |Δp| {:.2e}); inference {:.2} s unmerged, {:.2} s merged",
        check.differing_predictions,
        test.labels.len(),
        check.max_probability_difference,
        unmerged_seconds,
        merged_seconds
    );
    Ok(check)
}
