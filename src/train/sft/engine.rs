//! The pieces of burn-train the SFT job plugs in: its batcher, an early-stopping strategy
//! that ends a run after a given epoch (with that epoch's checkpoint written), the latest
//! epoch checkpoint on disk, the training device, and the checks of the options.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;
use burn::train::EarlyStoppingStrategy;
use burn::train::metric::store::EventStoreClient;

use super::job::{SftMode, SftOptions};
use crate::Error;
use crate::data::{SftBatch, SftTokens, sft_batch};

/// burn-train's early stopping, used to end a run after a given epoch.
#[derive(Clone)]
pub(crate) struct StopAfter(pub(crate) usize);

impl EarlyStoppingStrategy for StopAfter {
    fn should_stop(&mut self, epoch: usize, _store: &EventStoreClient) -> bool {
        epoch >= self.0
    }
}

#[derive(Clone)]
pub(crate) struct SftBatcher {
    pub(crate) pad: u32,
}

impl Batcher<SftTokens, SftBatch> for SftBatcher {
    fn batch(&self, items: Vec<SftTokens>, device: &Device) -> SftBatch {
        let rows: Vec<&SftTokens> = items.iter().collect();
        sft_batch(&rows, self.pad, device)
    }
}

/// The newest epoch burn-train checkpointed in `dir` (`model-N.bpk`).
pub(crate) fn latest_checkpoint(dir: &Path) -> Option<usize> {
    std::fs::read_dir(dir.join("checkpoint"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .max()
}

/// The options' usage errors, before anything is loaded.
pub(crate) fn check_options(options: &SftOptions) -> Result<(), Error> {
    for (flag, value, least) in [
        ("--epochs", options.epochs, 1),
        ("--batch-size", options.batch_size, 1),
        ("--max-len", options.max_len, 2),
    ] {
        if value < least {
            return Err(Error::Usage(format!(
                "{flag} {value}: must be at least {least}"
            )));
        }
    }
    if let (Some(quant), SftMode::Full) = (options.quantize, options.mode) {
        return Err(Error::Usage(format!(
            "--quantize {}: full fine-tuning trains every weight, and a quantized weight cannot train; use --modes lora",
            quant.name()
        )));
    }
    Ok(())
}
