//! Reading an adapter directory onto a base: attach what the config targets, then set
//! every factor and saved module from the weights file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::{
    Border, PeftOptions, WEIGHTS_FILE, bias_key, file_key, layers_by_path, read_adapter_config,
};
use crate::Error;
use crate::apply::LayerSite;
use crate::apply::add_adapter_renamed;
use crate::config::{LoraConfig, within_any};
use crate::manage::TrainedBiases;
use crate::path::{OnParam, PathStack, visit_params};

/// Loads a PEFT-format adapter from `dir` onto `model` as the adapter `default`, with Burn's
/// module paths as names. See [`load_adapter_with`].
///
/// # Errors
///
/// As [`load_adapter_with`].
pub fn load_adapter<M: Module>(model: M, dir: impl AsRef<Path>) -> Result<M, Error> {
    load_adapter_with(model, dir, &PeftOptions::default())
}

/// Loads a PEFT-format adapter from `dir` onto `model` under the name
/// `options.adapter_name()` (PEFT's `load_adapter(dir, adapter_name)`): reads the config,
/// attaches an adapter of that name to the linears it targets (matched against `options`'
/// PEFT names), then sets every factor, DoRA magnitude and saved module from the weights
/// file, cast to each parameter's dtype (the file may hold F32, F16 or BF16).
///
/// The model may already hold other adapters: the new one goes beside them, as
/// [`add_adapter`](crate::add_adapter) puts it (the first adapter of a model is active and
/// trainable, so training can continue; a later one is added inactive). Nothing of the
/// base is rebuilt.
///
/// # Errors
///
/// Everything [`read_adapter_config`] reports; a missing, corrupt or truncated weights
/// file; a tensor the model needs that the file lacks; a tensor the model does not have (an
/// adapter trained for another base); a shape or rank that does not match the model; a
/// name the model already has; an adapter with modules to save onto a model that already
/// holds adapters ([`Error::NotOffered`]: they would share one copy).
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
    let name = options.adapter_name();
    let others = crate::manage::list_adapters(&model);
    if !config.modules_to_save.is_empty() && !others.is_empty() {
        return Err(Error::NotOffered(format!(
            "{}: this adapter saves modules ({}) besides its factors, but the model already holds adapters ({}); \
             burn-lora keeps one copy of modules to save per model (PEFT keeps one per adapter), so loading it \
             would change what they compute: load it onto a base of its own",
            path.display(),
            config.modules_to_save.join(", "),
            others.join(", ")
        )));
    }
    if config.bias != crate::LoraBias::None && !others.is_empty() {
        return Err(Error::NotOffered(format!(
            "{}: this adapter trains biases (bias = \"{}\"), which the model's adapters ({}) share; \
             loading it would change what they compute: load it onto a base of its own",
            path.display(),
            config.bias.peft_name(),
            others.join(", ")
        )));
    }
    let model = add_adapter_renamed(model, name, config, &|p| options.rename(p))?;
    let expected = adapter_slots(&model, &config.modules_to_save, options, name);
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
        let shape = match slot.border {
            // A convolution's factor: the file's values in the factor's own shape.
            Border::Reshape(_) => slot.shape.clone(),
            _ => view.shape().to_vec(),
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), shape, dtype);
        values.insert(slot.id, (data, slot.border == Border::Transpose));
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
    /// The parameter's own (Burn) shape.
    shape: Vec<usize>,
    border: Border,
}

/// Where each key of an adapter file for `model` goes, with the PyTorch shape it must have:
/// every factor, and the parameters of `modules_to_save`.
fn adapter_slots<M: Module>(
    model: &M,
    modules_to_save: &[String],
    options: &PeftOptions,
    adapter: &str,
) -> BTreeMap<String, Slot> {
    struct Collect<'a> {
        modules_to_save: &'a [String],
        options: &'a PeftOptions,
        adapter: &'a str,
        layers: HashMap<String, LayerSite>,
        biases: TrainedBiases,
        out: BTreeMap<String, Slot>,
    }
    impl OnParam for Collect<'_> {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let shape = param.lazy_shape().to_vec();
            let Some(found) = file_key(path, &shape, self.options, self.adapter, &self.layers)
            else {
                return;
            };
            let mut found = found;
            if let Some(renamed) = &found.module
                && !within_any(renamed, self.modules_to_save)
            {
                // Not a module to save: read only as a bias the adapter trains.
                let (module, name) = path.split_last();
                let Some(key) = bias_key(&self.biases, &module, renamed, &name) else {
                    return;
                };
                found.key = key;
                found.module = None;
            }
            let slot = Slot {
                id: param.id,
                torch_shape: found.border.torch_shape(&shape),
                shape,
                border: found.border,
            };
            self.out.insert(found.key, slot);
        }
    }
    let mut collect = Collect {
        modules_to_save,
        options,
        adapter,
        layers: layers_by_path(model),
        biases: TrainedBiases::of(model, |name| name == adapter),
        out: BTreeMap::new(),
    };
    visit_params(model, &mut collect);
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
