//! Adapter files in Hugging Face PEFT's format, for any model: `adapter_config.json` plus
//! `adapter_model.safetensors`, readable by `PeftModel.from_pretrained` and written by
//! PEFT's `save_pretrained`.
//!
//! **Keys.** `base_model.model.<path>.lora_A.weight` `[r, d_in]` and `...lora_B.weight`
//! `[d_out, r]`, with `<path>` the layer's Burn module path, DoRA's
//! `base_model.model.<path>.lora_magnitude_vector` `[d_out]`, and
//! `base_model.model.<path>.<param>` for the parameters of modules to save. A model whose
//! Burn paths differ from the Hugging Face names passes a [`KeyRemapper`] in
//! [`PeftOptions`]; it renames Burn paths to PEFT names, on saving (keys, targets, modules
//! to save) and on loading (to find the file's names in the model).
//!
//! **Several adapters.** As PEFT's `save_pretrained`, the adapter named `default` is written
//! in the directory itself and each other adapter in a subdirectory of its name; each file
//! holds one adapter's keys, without its name.
//!
//! **Layout at the border.** Burn stores a linear weight as `[d_in, d_out]`; PyTorch and
//! PEFT store `[d_out, d_in]`. Every linear weight that crosses the border here (`lora_A`,
//! `lora_B`, and the weights of linears among the modules to save) is transposed, and only
//! here. Biases, embeddings and norms are written as they are.

mod config_json;
mod load;
mod save;

pub use load::{load_adapter, load_adapter_weights, load_adapter_weights_with, load_adapter_with};
pub use save::{save_adapter, save_adapter_with};

use std::fs;
use std::path::Path;

use burn::store::KeyRemapper;

use std::collections::HashMap;

use crate::Error;
use crate::apply::{LayerKind, LayerSite, adaptable};
use crate::config::LoraConfig;
use crate::manage::{TrainedBiases, is_factor};
use crate::path::{PathStack, join_path};
use config_json::PeftConfigJson;

/// The adapter's config file name, as PEFT names it.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file name, as PEFT names it.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before every module path (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// How adapter files name a model's modules, and what they record besides the weights.
///
/// ```
/// use burn_lora::PeftOptions;
///
/// // Our BERT names Hugging Face's `attention.self` `attention.self_` (`self` is a keyword).
/// let options = PeftOptions::new().with_rename(r"\.self_\.", ".self.").unwrap();
/// assert_eq!(options.rename("bert.encoder.layer.0.attention.self_.query"),
///            "bert.encoder.layer.0.attention.self.query");
/// ```
#[derive(Debug, Clone, Default)]
pub struct PeftOptions {
    /// Renames Burn module paths to PEFT's (Hugging Face's) names; empty keeps Burn's.
    pub names: KeyRemapper,
    /// PEFT's `task_type` to write (`"SEQ_CLS"`, ...). Default none.
    pub task_type: Option<String>,
    /// PEFT's `base_model_name_or_path` to write. Default none.
    pub base_model_name_or_path: Option<String>,
    /// The name an adapter is loaded under (PEFT's `adapter_name`). Default `default`.
    pub adapter_name: Option<String>,
}

impl PeftOptions {
    /// Burn's names, no task type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rename rule: every match of the regex `from` in a Burn path is replaced by
    /// `to` (`$1` refers to a group), as in `burn::store`'s key remapping.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTargetRegex`] when `from` does not compile.
    pub fn with_rename(mut self, from: &str, to: &str) -> Result<Self, Error> {
        self.names = self
            .names
            .add_pattern(from, to)
            .map_err(|e| Error::InvalidTargetRegex {
                pattern: from.to_string(),
                message: e.to_string(),
            })?;
        Ok(self)
    }

    /// Sets the name [`load_adapter_with`] loads the adapter under.
    pub fn with_adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }

    /// The name an adapter is loaded under: `adapter_name`, or `default`.
    pub fn adapter_name(&self) -> &str {
        self.adapter_name
            .as_deref()
            .unwrap_or(crate::adapter::DEFAULT_ADAPTER)
    }

    /// Sets `base_model_name_or_path`.
    pub fn with_base_model_name_or_path(mut self, name: impl Into<String>) -> Self {
        self.base_model_name_or_path = Some(name.into());
        self
    }

    /// Sets `task_type`.
    pub fn with_task_type(mut self, task_type: impl Into<String>) -> Self {
        self.task_type = Some(task_type.into());
        self
    }

    /// The PEFT name of the Burn path `path`.
    pub fn rename(&self, path: &str) -> String {
        let mut name = path.to_string();
        for (pattern, replacement) in &self.names.patterns {
            name = pattern
                .replace_all(&name, replacement.as_str())
                .into_owned();
        }
        name
    }
}

/// Reads a PEFT `adapter_config.json` from `dir` into a [`LoraConfig`] (its names are
/// PEFT's).
///
/// # Errors
///
/// A missing or unreadable file, invalid JSON, a missing key, a `peft_type` other than
/// `LORA`, an option burn-lora does not implement (named), or invalid values.
pub fn read_adapter_config(dir: impl AsRef<Path>) -> Result<LoraConfig, Error> {
    let path = dir.as_ref().join(CONFIG_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    parse_adapter_config(&bytes, &path)
}

/// Parses the bytes of an `adapter_config.json`; `path` names the file in errors.
///
/// # Errors
///
/// As [`read_adapter_config`], less the I/O.
pub fn parse_adapter_config(bytes: &[u8], path: &Path) -> Result<LoraConfig, Error> {
    let json: PeftConfigJson = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    json.into_config(path)
}

/// Where a parameter goes in the file of the adapter named `adapter`.
struct FileKey {
    /// `base_model.model.<path>...`.
    key: String,
    /// How its values cross the border.
    border: Border,
    /// For a parameter outside an adapter: its module's PEFT name.
    module: Option<String>,
}

/// How a tensor's values cross between Burn's layout and PyTorch's.
#[derive(Debug, Clone, PartialEq)]
enum Border {
    /// As they are: biases, norms, embeddings, convolution weights, magnitudes.
    AsIs,
    /// Transposed: linear weights and the factors of linears and embeddings.
    Transpose,
    /// The same values in PyTorch's shape (given): the factors of a convolution.
    Reshape(Vec<usize>),
}

impl Border {
    /// The PyTorch shape of a tensor of Burn shape `shape`.
    fn torch_shape(&self, shape: &[usize]) -> Vec<usize> {
        match self {
            Border::AsIs => shape.to_vec(),
            Border::Transpose => shape.iter().rev().copied().collect(),
            Border::Reshape(torch) => torch.clone(),
        }
    }
}

/// The adaptable layers of `model` by Burn path: what [`file_key`] reads a factor's layer
/// kind and weight shape from.
fn layers_by_path<M: burn::module::Module>(model: &M) -> HashMap<String, LayerSite> {
    adaptable(model)
        .into_iter()
        .map(|site| (site.path.clone(), site))
        .collect()
}

/// The file key of the parameter at `path`: a factor's, or a plain parameter's (which the
/// caller keeps if it is a module to save); `None` for anything else inside an adapter.
/// `shape` is the parameter's; `layers` are the model's adaptable layers (see
/// [`layers_by_path`]).
fn file_key(
    path: &PathStack,
    shape: &[usize],
    options: &PeftOptions,
    adapter: &str,
    layers: &HashMap<String, LayerSite>,
) -> Option<FileKey> {
    let (module, name) = path.split_last();
    match path.adapter_owner() {
        Some((layer, _)) if is_factor(&name) && path.adapter_name() == Some(adapter) => {
            let site = layers.get(&layer)?;
            let (part, border) = match (site.kind, name.as_str()) {
                (LayerKind::Embedding, "lora_a") => ("lora_embedding_A", Border::Transpose),
                (LayerKind::Embedding, "lora_b") => ("lora_embedding_B", Border::Transpose),
                // PEFT's `lora_B`, a 1×1 convolution `[out, r, 1, ...]`, is our `A` `[out, r]`;
                // its `lora_A` `[r, in, kernel...]` is our `B` `[r, in · kernel]`.
                (LayerKind::Conv, "lora_a") => {
                    let mut torch = vec![site.shape[0], shape[1]];
                    torch.resize(site.shape.len(), 1);
                    ("lora_B.weight", Border::Reshape(torch))
                }
                (LayerKind::Conv, "lora_b") => {
                    let mut torch = site.shape.clone();
                    torch[0] = shape[0];
                    ("lora_A.weight", Border::Reshape(torch))
                }
                (_, "lora_a") => ("lora_A.weight", Border::Transpose),
                (_, "lora_b") => ("lora_B.weight", Border::Transpose),
                _ => ("lora_magnitude_vector", Border::AsIs),
            };
            Some(FileKey {
                key: format!("{KEY_PREFIX}{}.{part}", options.rename(&layer)),
                border,
                module: None,
            })
        }
        Some(_) => None,
        None => {
            let module = options.rename(&module);
            let border = match is_linear_weight(path, shape.len()) {
                true => Border::Transpose,
                false => Border::AsIs,
            };
            Some(FileKey {
                key: format!("{KEY_PREFIX}{}", join_path(&module, &name)),
                border,
                module: Some(module),
            })
        }
    }
}

/// The file key of the parameter `name` of the module at Burn path `module` (PEFT name
/// `renamed`), if it is a bias `biases` (one adapter's) trains: PEFT keys the bias of an
/// adapted layer `<path>.base_layer.bias` and any other `<path>.bias`.
fn bias_key(biases: &TrainedBiases, module: &str, renamed: &str, name: &str) -> Option<String> {
    biases
        .contains(module, name)
        .then(|| match biases.adapted.contains(module) {
            true => format!("{KEY_PREFIX}{renamed}.base_layer.bias"),
            false => format!("{KEY_PREFIX}{renamed}.bias"),
        })
}

/// Whether the parameter at `path` is the `weight` of a linear layer (stored transposed).
fn is_linear_weight(path: &PathStack, rank: usize) -> bool {
    rank == 2 && path.split_last().1 == "weight" && path.parent_type() == "Struct:Linear"
}
