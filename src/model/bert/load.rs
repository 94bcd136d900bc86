//! Loading Hugging Face checkpoints into [`Bert`] and [`BertClassifier`], and the names
//! adapter files use for a BERT's modules.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;
use burn_lora::PeftOptions;

use super::{Bert, BertClassifier, BertConfig};
use crate::Error;
use crate::model::ToF32;

impl Bert {
    /// Loads a Hugging Face checkpoint directory: `config.json` and `model.safetensors`.
    /// Keys may carry the `bert.` prefix (task models) or not (`BertModel`); PyTorch's
    /// `[out, in]` linear weights are transposed by `burn::store`'s PyTorch adapter.
    /// Prediction heads in the file (`cls.*`, `classifier.*`) and the `position_ids` buffer
    /// are ignored. A checkpoint without pooler weights keeps a freshly initialised pooler,
    /// and the returned note says so.
    ///
    /// # Errors
    ///
    /// Everything [`BertConfig::load`] reports; a missing or corrupt weights file; a missing
    /// tensor, an unexpected tensor, or a shape that does not fit the config, each named.
    pub fn load(dir: &Path, device: &Device) -> Result<(BertConfig, Bert, Vec<String>), Error> {
        let config = BertConfig::load(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let checkpoint = |message: String| Error::Checkpoint {
            path: path.clone(),
            message,
        };
        let keys: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| checkpoint(format!("not a valid safetensors file: {e}")))?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let prefixed = keys.iter().any(|k| k.starts_with("bert."));
        let mut store = SafetensorsStore::from_bytes(Some(bytes))
            .with_from_adapter(PyTorchToBurnAdapter)
            .skip_enum_variants(true)
            .allow_partial(true)
            .validate(true)
            .with_key_remapping(r"\.attention\.self\.", ".attention.self_.")
            .with_key_remapping(r"LayerNorm\.", "layer_norm.");
        if prefixed {
            store = store.with_key_remapping(r"^bert\.", "");
        }
        let mut model = config.init(device);
        let result = model
            .load_from(&mut store)
            .map_err(|e| checkpoint(e.to_string()))?;
        if let Some(error) = result.errors.first() {
            return Err(match error {
                ApplyError::ShapeMismatch {
                    path: key,
                    expected,
                    found,
                } => checkpoint(format!(
                    "tensor `{key}` has shape {:?}, but config.json asks for {:?}",
                    found.to_vec(),
                    expected.to_vec()
                )),
                other => checkpoint(other.to_string()),
            });
        }
        let mut notes = Vec::new();
        let missing: BTreeSet<&str> = result.missing.iter().map(|(k, _)| k.as_str()).collect();
        let pooler = ["pooler.dense.weight", "pooler.dense.bias"];
        let no_pooler = pooler.iter().all(|k| missing.contains(k));
        if no_pooler {
            notes.push(
                "the checkpoint has no pooler weights; the pooler is freshly initialised (normal, std initializer_range), as Hugging Face does".into(),
            );
        }
        // A pooler is absent as a whole or loads whole: half of one is a broken file.
        if let Some(key) = missing.iter().find(|k| !no_pooler || !pooler.contains(k)) {
            return Err(checkpoint(format!(
                "missing tensor `{key}` ({} missing in all)",
                missing.len()
            )));
        }
        let ignored = |k: &str| {
            k.starts_with("cls.") || k.starts_with("classifier.") || k.ends_with("position_ids")
        };
        if let Some(key) = result.unused.iter().find(|k| !ignored(k)) {
            return Err(checkpoint(format!(
                "tensor `{key}` matches nothing in a BERT encoder"
            )));
        }
        Ok((config, model.map(&mut ToF32), notes))
    }
}

impl BertClassifier {
    /// Loads the checkpoint's `classifier` (a `BertForSequenceClassification`'s head) into
    /// this classifier. Returns whether the file had one; without one the head stays as
    /// it is.
    ///
    /// # Errors
    ///
    /// An unreadable weights file, or a classifier whose shape does not fit this one
    /// (another number of classes), naming the tensor and both shapes.
    pub fn load_head(mut self, dir: &Path) -> Result<(Self, bool), Error> {
        let path = dir.join("model.safetensors");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let checkpoint = |message: String| Error::Checkpoint {
            path: path.clone(),
            message,
        };
        let mut store = SafetensorsStore::from_bytes(Some(bytes))
            .with_from_adapter(PyTorchToBurnAdapter)
            .with_regex(r"^classifier\.")
            .allow_partial(true)
            .validate(true);
        let result = self
            .load_from(&mut store)
            .map_err(|e| checkpoint(e.to_string()))?;
        if let Some(error) = result.errors.first() {
            return Err(checkpoint(match error {
                ApplyError::ShapeMismatch {
                    path: key,
                    expected,
                    found,
                } => format!(
                    "tensor `{key}` has shape {:?}, but this classifier has {:?} (another number of classes)",
                    found.to_vec(),
                    expected.to_vec()
                ),
                other => other.to_string(),
            }));
        }
        let loaded = result.applied.iter().any(|k| k.starts_with("classifier."));
        self.classifier = self.classifier.map(&mut ToF32);
        Ok((self, loaded))
    }
}

/// How adapter files name a BERT's modules: Hugging Face's `attention.self` (our field is
/// `self_`, `self` being a Rust keyword) and `LayerNorm` (our `layer_norm`), so PEFT's files
/// and ours share keys.
pub fn peft_options() -> PeftOptions {
    PeftOptions::new()
        .with_rename(r"\.self_(\.|$)", ".self$1")
        .and_then(|o| o.with_rename(r"(^|\.)layer_norm(\.|$)", "${1}LayerNorm$2"))
        .expect("the patterns compile")
}
