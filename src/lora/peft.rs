//! Adapter files in Hugging Face PEFT's format: `adapter_config.json` plus
//! `adapter_model.safetensors`, readable by `PeftModel.from_pretrained` and written by
//! PEFT's `save_pretrained`.
//!
//! **Layout at the border.** Burn stores a linear weight as `[d_in, d_out]`; PyTorch and
//! PEFT store `[d_out, d_in]`. Every linear weight that crosses the border here (`lora_A`,
//! `lora_B`, and the weights of linear layers in `modules_to_save`) is transposed, and only
//! here: `A [d_in, r]` is written as `lora_A.weight [r, d_in]`, `B [r, d_out]` as
//! `lora_B.weight [d_out, r]`. Biases, embeddings and norms are written as they are.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::lora::adaptable::{MapLinears, apply_lora};
use crate::lora::config::{LoraConfig, LoraInit, name_matches};
use crate::lora::path::PathStack;

/// The adapter's config file name, as PEFT names it.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file name, as PEFT names it.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before every module path (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// PEFT's `target_modules`: a list of names, or one full-match regex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

/// The keys of PEFT's `adapter_config.json` that burn-lora reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfigJson {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: TargetModules,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default = "bias_none")]
    bias: String,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    init_lora_weights: serde_json::Value,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    exclude_modules: Option<serde_json::Value>,
}

fn bias_none() -> String {
    "none".to_string()
}

impl PeftConfigJson {
    fn from_config(config: &LoraConfig) -> Self {
        let target_modules = match &config.target_regex {
            Some(pattern) => TargetModules::Regex(pattern.clone()),
            None => TargetModules::List(config.target_modules.clone()),
        };
        let init = match config.init {
            LoraInit::KaimingUniform => serde_json::Value::Bool(true),
            LoraInit::Gaussian => serde_json::Value::String("gaussian".into()),
        };
        Self {
            peft_type: "LORA".into(),
            task_type: None,
            base_model_name_or_path: None,
            r: config.rank,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules,
            use_rslora: config.use_rslora,
            bias: bias_none(),
            modules_to_save: (!config.modules_to_save.is_empty())
                .then(|| config.modules_to_save.clone()),
            fan_in_fan_out: false,
            use_dora: false,
            init_lora_weights: init,
            inference_mode: true,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            layers_to_transform: None,
            exclude_modules: None,
        }
    }

    fn into_config(self, path: &Path) -> Result<LoraConfig, Error> {
        let unsupported = |what: &str| Error::Json {
            path: path.to_path_buf(),
            message: format!("{what} is not supported by burn-lora"),
        };
        if self.peft_type != "LORA" {
            return Err(Error::WrongPeftType {
                path: path.to_path_buf(),
                found: self.peft_type,
            });
        }
        if self.bias != "none" {
            return Err(unsupported(&format!("bias = \"{}\"", self.bias)));
        }
        if self.use_dora {
            return Err(unsupported("use_dora = true"));
        }
        if self.fan_in_fan_out {
            return Err(unsupported("fan_in_fan_out = true"));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err(unsupported("a per-layer rank_pattern or alpha_pattern"));
        }
        if self.layers_to_transform.is_some() || self.exclude_modules.is_some() {
            return Err(unsupported("layers_to_transform or exclude_modules"));
        }
        let init = match self.init_lora_weights.as_str() {
            Some("gaussian") => LoraInit::Gaussian,
            _ => LoraInit::KaimingUniform,
        };
        let config = LoraConfig::new()
            .with_rank(self.r)
            .with_alpha(self.lora_alpha)
            .with_dropout(self.lora_dropout)
            .with_use_rslora(self.use_rslora)
            .with_init(init)
            .with_modules_to_save(self.modules_to_save.unwrap_or_default());
        let config = match self.target_modules {
            TargetModules::List(names) => config.with_target_modules(names),
            TargetModules::Regex(pattern) => config.with_target_regex(Some(pattern)),
        };
        // Invalid values (rank 0, dropout 5) are errors that name the file too.
        config.validate().map_err(|e| Error::AdapterConfig {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(config)
    }
}

/// Reads a PEFT `adapter_config.json` from `dir` into a [`LoraConfig`].
///
/// # Errors
///
/// A missing or unreadable file, invalid JSON, a missing key, a `peft_type` other than
/// `LORA`, an option burn-lora does not implement, or invalid values.
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

/// Writes `model`'s adapter in PEFT's format into `dir` (created if needed): the LoRA factors
/// and the parameters of `config.modules_to_save` in `adapter_model.safetensors`, and
/// `adapter_config.json`. Each file is written to a temporary name and renamed into place.
///
/// # Errors
///
/// I/O failures, or [`Error::NonFinite`] if any saved tensor holds NaN or infinity (a
/// non-finite adapter is never written).
pub fn save_adapter<M: Module>(
    model: &M,
    config: &LoraConfig,
    dir: impl AsRef<Path>,
) -> Result<(), Error> {
    let dir = dir.as_ref();
    let tensors = adapter_tensors(model, &config.modules_to_save);
    for (key, tensor) in &tensors {
        if tensor.values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { layer: key.clone() });
        }
    }
    // Both files go into a fresh temporary directory that is renamed into place, so an
    // interrupted save never leaves the new weights beside an old config (or the reverse).
    let tmp_dir = temp_path(dir);
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
    let bytes: BTreeMap<&String, Vec<u8>> = tensors
        .iter()
        .map(|(key, t)| (key, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = tensors
        .iter()
        .map(|(key, t)| {
            let view = TensorView::new(Dtype::F32, t.torch_shape.clone(), &bytes[key])
                .expect("shape and byte length agree by construction");
            (key.clone(), view)
        })
        .collect::<Vec<_>>();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights_path = tmp_dir.join(WEIGHTS_FILE);
    let weights =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Safetensors {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
    fs::write(&weights_path, &weights).map_err(|e| Error::io(&weights_path, e))?;
    let json = serde_json::to_string_pretty(&PeftConfigJson::from_config(config))
        .expect("the adapter config always serializes");
    let config_path = tmp_dir.join(CONFIG_FILE);
    fs::write(&config_path, json.as_bytes()).map_err(|e| Error::io(&config_path, e))?;
    replace_dir(&tmp_dir, dir)
}

/// Moves the finished directory `tmp` to `dir`. A directory cannot be renamed over a
/// non-empty one, so an existing `dir` is first moved aside and removed afterwards: at every
/// moment `dir` is the whole old adapter, the whole new one, or absent.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        let mut old = dir.as_os_str().to_owned();
        old.push(".old");
        let old = PathBuf::from(old);
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
    } else {
        fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so `path` is either the old file or the whole new one, never a half-written one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The temporary name `path` is written under before it is renamed into place: the same
/// directory, so the rename is atomic.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Loads a PEFT-format adapter from `dir` into a copy of `model`: reads the config, puts
/// adapters into the linears it targets ([`apply_lora`]), then sets every factor and saved
/// module from the weights file. `model` itself is never modified.
///
/// # Errors
///
/// Everything [`read_adapter_config`] reports; a missing, corrupt or truncated weights
/// file; a tensor the model needs that the file lacks; a tensor the model does not have
/// (an adapter trained for another base); a shape or rank that does not match the model.
pub fn load_adapter<M: Module + MapLinears>(model: &M, dir: impl AsRef<Path>) -> Result<M, Error> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    load_adapter_weights(model, &config, &bytes, &path)
}

/// The second half of [`load_adapter`]: puts the adapter described by `config`, with the
/// weights in `bytes` (an `adapter_model.safetensors`), into a copy of `model`. `path` names
/// the weights file in errors. This is also the entry point the fuzz targets use.
///
/// # Errors
///
/// As [`load_adapter`], less reading the files.
pub fn load_adapter_weights<M: Module + MapLinears>(
    model: &M,
    config: &LoraConfig,
    bytes: &[u8],
    path: &Path,
) -> Result<M, Error> {
    let path = path.to_path_buf();
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let model = apply_lora(model.clone(), config)?;
    let expected = adapter_slots(&model, &config.modules_to_save);
    let mut values: HashMap<ParamId, (Vec<usize>, Vec<f32>, bool)> = HashMap::new();
    for (key, slot) in &expected {
        let view = file.tensor(key).map_err(|_| Error::MissingKey {
            path: path.clone(),
            key: key.clone(),
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::UnsupportedDtype {
                path: path.clone(),
                key: key.clone(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != slot.torch_shape.as_slice() {
            return Err(Error::AdapterShape {
                path: path.clone(),
                key: key.clone(),
                expected: slot.torch_shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let floats = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        values.insert(slot.id, (slot.torch_shape.clone(), floats, slot.transposed));
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

/// One tensor of an adapter file, in PyTorch layout.
struct AdapterTensor {
    torch_shape: Vec<usize>,
    values: Vec<f32>,
}

/// Where one key of an adapter file goes in the model.
struct Slot {
    id: ParamId,
    torch_shape: Vec<usize>,
    transposed: bool,
}

/// The PEFT key of a parameter, and whether it crosses the border transposed; `None` for
/// parameters that are not part of an adapter.
fn peft_key(path: &PathStack, ndims: usize, modules_to_save: &[String]) -> Option<(String, bool)> {
    let (module, name) = path.split_last();
    let is_linear = matches!(path.parent_type(), "Struct:Linear" | "Struct:LoraLinear");
    match name.as_str() {
        "lora_a" => Some((format!("{KEY_PREFIX}{module}.lora_A.weight"), true)),
        "lora_b" => Some((format!("{KEY_PREFIX}{module}.lora_B.weight"), true)),
        _ if saved_module(&module, modules_to_save) => Some((
            format!("{KEY_PREFIX}{}", path.path()),
            is_linear && name == "weight" && ndims == 2,
        )),
        _ => None,
    }
}

/// Whether `module` is, or lies inside, one of `modules_to_save`.
fn saved_module(module: &str, modules_to_save: &[String]) -> bool {
    let parts: Vec<&str> = module.split('.').collect();
    (1..=parts.len()).any(|n| {
        let prefix = parts[..n].join(".");
        modules_to_save
            .iter()
            .any(|name| name_matches(&prefix, name))
    })
}

/// The adapter tensors of `model`, keyed as PEFT keys them, in PyTorch layout.
fn adapter_tensors<M: Module>(
    model: &M,
    modules_to_save: &[String],
) -> BTreeMap<String, AdapterTensor> {
    struct Collect<'a> {
        path: PathStack,
        modules_to_save: &'a [String],
        out: BTreeMap<String, AdapterTensor>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, name: &str, container_type: &str) {
            self.path.exit(name, container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some((key, transposed)) = peft_key(&self.path, D, self.modules_to_save) else {
                return;
            };
            let tensor = match transposed {
                true => param.val().transpose(),
                false => param.val(),
            };
            let data = tensor.into_data().convert::<f32>();
            let torch_shape = data.shape().to_vec();
            let values = data.try_to_vec::<f32>().expect("converted to f32 above");
            self.out.insert(
                key,
                AdapterTensor {
                    torch_shape,
                    values,
                },
            );
        }
    }
    let mut collect = Collect {
        path: PathStack::default(),
        modules_to_save,
        out: BTreeMap::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// Where each key of an adapter file for `model` goes, with the PyTorch shape it must have.
fn adapter_slots<M: Module>(model: &M, modules_to_save: &[String]) -> BTreeMap<String, Slot> {
    struct Collect<'a> {
        path: PathStack,
        modules_to_save: &'a [String],
        out: BTreeMap<String, Slot>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, name: &str, container_type: &str) {
            self.path.exit(name, container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some((key, transposed)) = peft_key(&self.path, D, self.modules_to_save) else {
                return;
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
        out: BTreeMap::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// Replaces the parameters named by id with the given PyTorch-layout values.
struct SetValues {
    values: HashMap<ParamId, (Vec<usize>, Vec<f32>, bool)>,
}

impl ModuleMapper for SetValues {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((shape, values, transposed)) = self.values.remove(&param.id) else {
            return param;
        };
        // Transposed here, in the data, rather than as a tensor view: the loaded weight then
        // has the same memory layout as one that was never saved, and computes bit for bit
        // the same outputs.
        let data = match transposed {
            true => transpose_2d(&values, shape[0], shape[1]),
            false => TensorData::new(values, shape),
        };
        let tensor = Tensor::<D>::from_data(data, &param.lazy_device());
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// A row-major `[rows, cols]` matrix as row-major `[cols, rows]` data.
fn transpose_2d(values: &[f32], rows: usize, cols: usize) -> TensorData {
    let transposed = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect::<Vec<_>>();
    TensorData::new(transposed, [cols, rows])
}
