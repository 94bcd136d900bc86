//! Adapter files in Hugging Face PEFT's format, for any model: `adapter_config.json` plus
//! `adapter_model.safetensors`, readable by `PeftModel.from_pretrained` and written by
//! PEFT's `save_pretrained`.
//!
//! **Keys.** `base_model.model.<path>.lora_A.weight` `[r, d_in]` and `...lora_B.weight`
//! `[d_out, r]`, with `<path>` the layer's Burn module path, and
//! `base_model.model.<path>.<param>` for the parameters of modules to save. A model whose
//! Burn paths differ from the Hugging Face names passes a [`KeyRemapper`] in
//! [`PeftOptions`]; it renames Burn paths to PEFT names, on saving (keys, targets, modules
//! to save) and on loading (to find the file's names in the model).
//!
//! **Layout at the border.** Burn stores a linear weight as `[d_in, d_out]`; PyTorch and
//! PEFT store `[d_out, d_in]`. Every linear weight that crosses the border here (`lora_A`,
//! `lora_B`, and the weights of linears among the modules to save) is transposed, and only
//! here. Biases, embeddings and norms are written as they are.

mod config_json;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::store::KeyRemapper;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::Error;
use crate::adapter::adapters;
use crate::apply::{apply_lora_renamed, is_factor, linears};
use crate::config::{LoraConfig, name_matches, within_any};
use crate::io::{fresh_temp_dir, replace_dir};
use crate::lora_linear::all_finite;
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

/// Writes `model`'s adapters in PEFT's format into `dir` (created if needed), with Burn's
/// module paths as names. See [`save_adapter_with`].
///
/// # Errors
///
/// As [`save_adapter_with`].
pub fn save_adapter<M: Module>(model: &M, dir: impl AsRef<Path>) -> Result<(), Error> {
    save_adapter_with(model, dir, &PeftOptions::default())
}

/// Writes `model`'s adapters in PEFT's format into `dir` (created if needed): every LoRA
/// factor, and every other trainable parameter (PEFT's `modules_to_save`, such as a
/// classification head), in `adapter_model.safetensors`, each in its own dtype; and
/// `adapter_config.json`. Rank, alpha, rsLoRA, dropout, targets and modules to save are
/// read from the model itself, so the config can never disagree with the weights beside it.
/// Both files are written into a temporary directory that is renamed into place.
///
/// # Errors
///
/// [`Error::NoAdapter`]; [`Error::Unsupported`] for adapters whose ranks or scalings
/// differ; [`Error::NonFinite`] if any saved tensor holds NaN or infinity (a non-finite
/// adapter is never written); I/O failures.
pub fn save_adapter_with<M: Module>(
    model: &M,
    dir: impl AsRef<Path>,
    options: &PeftOptions,
) -> Result<(), Error> {
    let dir = dir.as_ref();
    let found = adapters(model);
    let Some((_, first)) = found.first() else {
        return Err(Error::NoAdapter);
    };
    let settings = LoraConfig::new()
        .with_rank(first.rank())
        .with_alpha(first.alpha())
        .with_dropout(first.dropout_prob())
        .with_use_rslora(first.use_rslora())
        .with_init(first.init());
    if let Some((site, _)) = found.iter().find(|(_, a)| {
        a.rank() != first.rank()
            || a.alpha() != first.alpha()
            || a.use_rslora() != first.use_rslora()
    }) {
        return Err(Error::Unsupported {
            path: dir.to_path_buf(),
            what: format!(
                "adapters of different ranks or scalings (`{}` differs from the first)",
                site.path
            ),
        });
    }
    let adapted: Vec<String> = found.iter().map(|(s, _)| options.rename(&s.path)).collect();
    let all: Vec<String> = linears(model)
        .iter()
        .map(|s| options.rename(&s.path))
        .collect();
    let tensors = adapter_tensors(model, options)?;
    let mut modules_to_save: Vec<String> = Vec::new();
    for module in tensors.values().filter_map(|t| t.saved_module.clone()) {
        if !modules_to_save.contains(&module) {
            modules_to_save.push(module);
        }
    }
    let json = PeftConfigJson::new(
        &settings,
        compact_names(&adapted, &all),
        modules_to_save,
        options.task_type.clone(),
        options.base_model_name_or_path.clone(),
    );
    let tmp = fresh_temp_dir(dir)?;
    let weights_path = tmp.join(WEIGHTS_FILE);
    let weights = serialize(&tensors).map_err(|message| Error::Safetensors {
        path: weights_path.clone(),
        message,
    })?;
    fs::write(&weights_path, &weights).map_err(|e| Error::io(&weights_path, e))?;
    let json = serde_json::to_string_pretty(&json).expect("the adapter config always serializes");
    let config_path = tmp.join(CONFIG_FILE);
    fs::write(&config_path, json.as_bytes()).map_err(|e| Error::io(&config_path, e))?;
    replace_dir(&tmp, dir)
}

/// The shortest names that select exactly `adapted` among `all` (PEFT's suffix rule): for
/// each adapted path, its last segment if that matches no unadapted linear, else the last
/// two, and so on.
fn compact_names(adapted: &[String], all: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for path in adapted {
        let parts: Vec<&str> = path.split('.').collect();
        let name = (1..=parts.len())
            .map(|k| parts[parts.len() - k..].join("."))
            .find(|suffix| {
                all.iter()
                    .filter(|q| name_matches(q, suffix))
                    .all(|q| adapted.contains(q))
            })
            .unwrap_or_else(|| path.clone());
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One tensor of an adapter file, in PyTorch layout.
struct FileTensor {
    data: TensorData,
    /// For a parameter of a module to save: that module's PEFT name.
    saved_module: Option<String>,
}

/// The adapter tensors of `model`, keyed as PEFT keys them, in PyTorch layout: every
/// factor and every other trainable parameter.
fn adapter_tensors<M: Module>(
    model: &M,
    options: &PeftOptions,
) -> Result<BTreeMap<String, FileTensor>, Error> {
    struct Collect<'a> {
        path: PathStack,
        options: &'a PeftOptions,
        out: BTreeMap<String, FileTensor>,
        non_finite: Option<String>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (module, name) = self.path.split_last();
            let factor = self.path.adapter_owner().filter(|_| is_factor(&name));
            let (key, transposed, saved_module) = match factor {
                Some((layer, _)) => {
                    let part = if name == "lora_a" { "lora_A" } else { "lora_B" };
                    let layer = self.options.rename(&layer);
                    (format!("{KEY_PREFIX}{layer}.{part}.weight"), true, None)
                }
                None if param.is_require_grad() && self.path.adapter_owner().is_none() => {
                    let module = self.options.rename(&module);
                    let key = format!("{KEY_PREFIX}{}", join_path(&module, &name));
                    (key, is_linear_weight(&self.path, D), Some(module))
                }
                None => return,
            };
            let tensor = param.val();
            if !all_finite(&tensor) {
                self.non_finite.get_or_insert(key.clone());
            }
            let data = match transposed {
                true => tensor.transpose().into_data(),
                false => tensor.into_data(),
            };
            self.out.insert(key, FileTensor { data, saved_module });
        }
    }
    let mut collect = Collect {
        path: PathStack::default(),
        options,
        out: BTreeMap::new(),
        non_finite: None,
    };
    // Gradient flags take effect on an autodiff device; `train` reads them as configured.
    model.clone().train().visit(&mut collect);
    match collect.non_finite {
        Some(layer) => Err(Error::NonFinite { layer }),
        None => Ok(collect.out),
    }
}

/// Whether the parameter at `path` is the `weight` of a linear layer (stored transposed).
fn is_linear_weight(path: &PathStack, rank: usize) -> bool {
    rank == 2 && path.split_last().1 == "weight" && path.parent_type() == "Struct:Linear"
}

/// The safetensors bytes of `tensors`: F32, F16 and BF16 as they are, any other float dtype
/// as F32.
fn serialize(tensors: &BTreeMap<String, FileTensor>) -> Result<Vec<u8>, String> {
    let data: BTreeMap<&String, (Dtype, TensorData)> = tensors
        .iter()
        .map(|(key, t)| {
            let (dtype, data) = match t.data.dtype() {
                DType::F16 => (Dtype::F16, t.data.clone()),
                DType::BF16 => (Dtype::BF16, t.data.clone()),
                _ => (Dtype::F32, t.data.clone().convert::<f32>()),
            };
            (key, (dtype, data))
        })
        .collect();
    let views = data
        .iter()
        .map(|(key, (dtype, data))| {
            TensorView::new(*dtype, data.shape().to_vec(), data.as_bytes())
                .map(|view| ((*key).clone(), view))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Loads a PEFT-format adapter from `dir` onto `model`, an un-adapted base, with Burn's
/// module paths as names. See [`load_adapter_with`].
///
/// # Errors
///
/// As [`load_adapter_with`].
pub fn load_adapter<M: Module>(model: M, dir: impl AsRef<Path>) -> Result<M, Error> {
    load_adapter_with(model, dir, &PeftOptions::default())
}

/// Loads a PEFT-format adapter from `dir` onto `model`: reads the config, attaches adapters
/// to the linears it targets (matched against `options`' PEFT names), then sets every
/// factor and saved module from the weights file, cast to each parameter's dtype (the file
/// may hold F32, F16 or BF16). The factors and modules to save come back trainable, as
/// after [`apply_lora`](crate::apply_lora), so training can continue.
///
/// # Errors
///
/// Everything [`read_adapter_config`] reports; a missing, corrupt or truncated weights
/// file; a tensor the model needs that the file lacks; a tensor the model does not have (an
/// adapter trained for another base); a shape or rank that does not match the model.
pub fn load_adapter_with<M: Module>(
    model: M,
    dir: impl AsRef<Path>,
    options: &PeftOptions,
) -> Result<M, Error> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    load_adapter_weights_with(model, &config, &bytes, &path, options)
}

/// The second half of [`load_adapter`]: puts the adapter described by `config`, with the
/// weights in `bytes` (an `adapter_model.safetensors`), onto `model`. `path` names the
/// weights file in errors. This is also the entry point the fuzz targets use.
///
/// # Errors
///
/// As [`load_adapter`], less reading the files.
pub fn load_adapter_weights<M: Module>(
    model: M,
    config: &LoraConfig,
    bytes: &[u8],
    path: &Path,
) -> Result<M, Error> {
    load_adapter_weights_with(model, config, bytes, path, &PeftOptions::default())
}

/// [`load_adapter_weights`] with `options`' names.
///
/// # Errors
///
/// As [`load_adapter`], less reading the files.
pub fn load_adapter_weights_with<M: Module>(
    model: M,
    config: &LoraConfig,
    bytes: &[u8],
    path: &Path,
    options: &PeftOptions,
) -> Result<M, Error> {
    let path = path.to_path_buf();
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let model = apply_lora_renamed(model, config, &|p| options.rename(p))?;
    let expected = adapter_slots(&model, &config.modules_to_save, options);
    let mut values: HashMap<ParamId, (TensorData, bool)> = HashMap::new();
    for (key, slot) in &expected {
        let view = file.tensor(key).map_err(|_| Error::MissingKey {
            path: path.clone(),
            key: key.clone(),
        })?;
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::UnsupportedDtype {
                    path: path.clone(),
                    key: key.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if view.shape() != slot.torch_shape.as_slice() {
            return Err(Error::AdapterShape {
                path: path.clone(),
                key: key.clone(),
                expected: slot.torch_shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        values.insert(slot.id, (data, slot.transposed));
    }
    if let Some(key) = file
        .names()
        .into_iter()
        .find(|key| !expected.contains_key(*key))
    {
        return Err(Error::UnexpectedKey {
            path,
            key: key.to_string(),
        });
    }
    Ok(model.map(&mut SetValues { values }))
}

/// Where one key of an adapter file goes in the model.
struct Slot {
    id: ParamId,
    torch_shape: Vec<usize>,
    transposed: bool,
}

/// Where each key of an adapter file for `model` goes, with the PyTorch shape it must have.
fn adapter_slots<M: Module>(
    model: &M,
    modules_to_save: &[String],
    options: &PeftOptions,
) -> BTreeMap<String, Slot> {
    struct Collect<'a> {
        path: PathStack,
        modules_to_save: &'a [String],
        options: &'a PeftOptions,
        out: BTreeMap<String, Slot>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (module, name) = self.path.split_last();
            let (key, transposed) = match self.path.adapter_owner() {
                Some((layer, _)) if is_factor(&name) => {
                    let part = if name == "lora_a" { "lora_A" } else { "lora_B" };
                    let layer = self.options.rename(&layer);
                    (format!("{KEY_PREFIX}{layer}.{part}.weight"), true)
                }
                Some(_) => return,
                None => {
                    let module = self.options.rename(&module);
                    if !within_any(&module, self.modules_to_save) {
                        return;
                    }
                    let key = format!("{KEY_PREFIX}{}", join_path(&module, &name));
                    (key, is_linear_weight(&self.path, D))
                }
            };
            let mut torch_shape = param.lazy_shape().to_vec();
            if transposed {
                torch_shape.reverse();
            }
            let slot = Slot {
                id: param.id,
                torch_shape,
                transposed,
            };
            self.out.insert(key, slot);
        }
    }
    let mut collect = Collect {
        path: PathStack::default(),
        modules_to_save,
        options,
        out: BTreeMap::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// Replaces the parameters named by id with the given PyTorch-layout values.
struct SetValues {
    values: HashMap<ParamId, (TensorData, bool)>,
}

impl ModuleMapper for SetValues {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((data, transposed)) = self.values.remove(&param.id) else {
            return param;
        };
        let dtype = param.val().dtype();
        // Transposed here, in the data, rather than as a tensor view: the loaded weight then
        // has the same memory layout as one that was never saved, and computes bit for bit
        // the same outputs.
        let data = match transposed {
            true => transpose_2d(data.convert::<f32>()),
            false => data,
        };
        let tensor = Tensor::<D>::from_data(data, &param.lazy_device());
        let tensor = match tensor.dtype() == dtype {
            true => tensor,
            false => tensor.cast(dtype),
        };
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// A row-major `[rows, cols]` f32 matrix as row-major `[cols, rows]` data.
fn transpose_2d(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape()[0], data.shape()[1]);
    let values = data.try_to_vec::<f32>().unwrap_or_default();
    let values = &values;
    let transposed = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect::<Vec<_>>();
    TensorData::new(transposed, [cols, rows])
}
