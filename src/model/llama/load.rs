//! Loading a Hugging Face decoder checkpoint: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, stored in bf16, f16 or f32.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;

use super::config::LlamaConfig;
use super::model::Llama;
use crate::Error;
use crate::model::ToF32;

/// The single weights file of a checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl Llama {
    /// Loads `config.json` and the weights of a Hugging Face checkpoint directory into a
    /// model that computes in float32, whatever the file's dtype.
    ///
    /// # Errors
    ///
    /// Everything [`LlamaConfig::load`] reports; a missing `model.safetensors` (with no
    /// index either); a corrupt file; a tensor whose shape disagrees with the config, a
    /// tensor the model lacks, or one the file lacks, each named with its file.
    pub fn load(dir: &Path, device: &Device) -> Result<(LlamaConfig, Llama), Error> {
        let config = LlamaConfig::load(&dir.join("config.json"))?;
        let mut model = config.init(device);
        let files = weight_files(dir)?;
        let mut applied = BTreeSet::new();
        let mut missing: Option<BTreeSet<String>> = None;
        for path in &files {
            let result = load_file(&mut model, path)?;
            let ignored = |k: &str| {
                k.ends_with("rotary_emb.inv_freq")
                    || (config.tie_word_embeddings && k == "lm_head.weight")
            };
            if let Some(key) = result.unused.iter().find(|k| !ignored(k)) {
                return Err(checkpoint(
                    path,
                    format!(
                        "tensor `{key}` matches nothing in a {:?} decoder",
                        config.family
                    ),
                ));
            }
            applied.extend(result.applied);
            let here: BTreeSet<String> = result.missing.into_iter().map(|(k, _)| k).collect();
            missing = Some(match missing {
                None => here,
                Some(before) => before.intersection(&here).cloned().collect(),
            });
        }
        if let Some(key) = missing
            .unwrap_or_default()
            .iter()
            .find(|k| !applied.contains(*k))
        {
            let named = files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>();
            return Err(checkpoint(
                &files[0],
                format!("missing tensor `{key}` (looked in {})", named.join(", ")),
            ));
        }
        Ok((config, model.map(&mut ToF32)))
    }
}

fn checkpoint(path: &Path, message: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}

/// The weights files of `dir`: `model.safetensors`, or each shard the index names once,
/// in the index's order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Err(Error::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such file, and no {INDEX_FILE} beside it"),
            ),
        ));
    }
    let bytes = fs::read(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map: BTreeMap<String, String> = serde_json::from_value(json["weight_map"].clone())
        .map_err(|e| Error::Json {
            path: index.clone(),
            message: format!("`weight_map`: {e}"),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for name in map.values() {
        if name.contains('/') || name.contains('\\') {
            return Err(Error::Json {
                path: index.clone(),
                message: format!("shard `{name}` is not a file name in the checkpoint directory"),
            });
        }
        let path = dir.join(name);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::Json {
            path: index,
            message: "`weight_map` names no shard".into(),
        });
    }
    Ok(files)
}

/// Applies one weights file to `model`, transposing PyTorch's `[out, in]` linear weights
/// and renaming norms' `weight` to Burn's `gamma`.
fn load_file(model: &mut Llama, path: &Path) -> Result<burn::store::ApplyResult, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| checkpoint(path, e.to_string()))?;
    if let Some(error) = result.errors.first() {
        return Err(checkpoint(
            path,
            match error {
                ApplyError::ShapeMismatch {
                    path: key,
                    expected,
                    found,
                } => format!(
                    "tensor `{key}` has shape {:?}, but config.json asks for {:?}",
                    found.to_vec(),
                    expected.to_vec()
                ),
                other => other.to_string(),
            },
        ));
    }
    Ok(result)
}
