//! Writing an adapter directory: the model's factors and trainable parameters, and a
//! config read from the model itself.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::{Dtype, tensor::TensorView};

use super::config_json::PeftConfigJson;
use super::{Border, CONFIG_FILE, PeftOptions, WEIGHTS_FILE, bias_key, file_key, layers_by_path};
use crate::Error;
use crate::adapter::DEFAULT_ADAPTER;
use crate::apply::LayerSite;
use crate::apply::adaptable;
use crate::config::{LoraConfig, name_matches, within_any};
use crate::io::{fresh_temp_dir, replace_dir};
use crate::lora::Lora;
use crate::lora_linear::all_finite;
use crate::manage::TrainedBiases;
use crate::manage::list_adapters;
use crate::path::{OnParam, PathStack, visit_params};
use crate::sites::{AdapterSite, adapters};

/// Writes `model`'s adapters in PEFT's format into `dir` (created if needed), with Burn's
/// module paths as names. See [`save_adapter_with`].
///
/// # Errors
///
/// As [`save_adapter_with`].
pub fn save_adapter<M: Module>(model: &M, dir: impl AsRef<Path>) -> Result<(), Error> {
    save_adapter_with(model, dir, &PeftOptions::default())
}

/// Writes `model`'s adapters in PEFT's format into `dir` (created if needed): per adapter,
/// every LoRA factor and DoRA magnitude, and every other trainable parameter (PEFT's
/// `modules_to_save`, such as a classification head), in `adapter_model.safetensors`, each
/// in its own dtype; and `adapter_config.json`. Rank, alpha, rsLoRA, DoRA, dropout, targets
/// and modules to save are read from the model itself, so the config can never disagree
/// with the weights beside it.
///
/// With several adapters the layout is PEFT's `save_pretrained`: `default` in `dir`, each
/// other adapter in `dir/<name>/`. Everything is written into a temporary directory that is
/// renamed into place.
///
/// # Errors
///
/// [`Error::NoAdapter`]; [`Error::Unsupported`] for adapters of one name with and without
/// rsLoRA or DoRA (adapters of different ranks and alphas are written with PEFT's
/// `rank_pattern` and `alpha_pattern`); [`Error::NonFinite`] if any saved tensor holds NaN
/// or infinity (a non-finite adapter is never written); I/O failures.
pub fn save_adapter_with<M: Module>(
    model: &M,
    dir: impl AsRef<Path>,
    options: &PeftOptions,
) -> Result<(), Error> {
    let dir = dir.as_ref();
    let names = list_adapters(model);
    if names.is_empty() {
        return Err(Error::NoAdapter);
    }
    let tmp = fresh_temp_dir(dir)?;
    for name in &names {
        let out = match name == DEFAULT_ADAPTER {
            true => tmp.clone(),
            false => {
                let sub = tmp.join(name);
                fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
                sub
            }
        };
        write_one(model, name, &out, dir, options)?;
    }
    replace_dir(&tmp, dir)
}

/// Writes the adapter `name` of `model` into `out`; `dir` names the destination in errors.
fn write_one<M: Module>(
    model: &M,
    name: &str,
    out: &Path,
    dir: &Path,
    options: &PeftOptions,
) -> Result<(), Error> {
    let found: Vec<(AdapterSite, Lora)> = adapters(model)
        .into_iter()
        .filter_map(|(site, adapter)| adapter.get(name).cloned().map(|l| (site, l)))
        .collect();
    let first = &found[0].1;
    if let Some((site, _)) = found
        .iter()
        .find(|(_, a)| a.use_rslora() != first.use_rslora() || a.use_dora() != first.use_dora())
    {
        return Err(Error::Unsupported {
            path: dir.to_path_buf(),
            what: format!(
                "adapters of one name with and without rsLoRA or DoRA (`{}` differs from the first)",
                site.path
            ),
        });
    }
    // The most common rank and alpha are the config's; any other adapter's goes into
    // PEFT's `rank_pattern` / `alpha_pattern` under its full module name.
    let rank = most_common(found.iter().map(|(_, a)| a.rank()));
    let alpha = most_common(found.iter().map(|(_, a)| a.alpha()));
    let mut rank_pattern = Vec::new();
    let mut alpha_pattern = Vec::new();
    for (site, adapter) in &found {
        let name = options.rename(&site.path);
        if adapter.rank() != rank {
            rank_pattern.push((name.clone(), adapter.rank()));
        }
        if adapter.alpha() != alpha {
            alpha_pattern.push((name, adapter.alpha()));
        }
    }
    let settings = LoraConfig::new()
        .with_rank(rank)
        .with_alpha(alpha)
        .with_dropout(first.dropout_prob())
        .with_use_rslora(first.use_rslora())
        .with_use_dora(first.use_dora())
        .with_init(first.init())
        .with_bias(first.bias())
        .with_rank_pattern(rank_pattern)
        .with_alpha_pattern(alpha_pattern);
    let adapted: Vec<String> = found.iter().map(|(s, _)| options.rename(&s.path)).collect();
    let all: Vec<String> = adaptable(model)
        .iter()
        .map(|s| options.rename(&s.path))
        .collect();
    let tensors = adapter_tensors(model, options, name, &first.modules_to_save)?;
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
    let weights_path = out.join(WEIGHTS_FILE);
    let weights = serialize(&tensors).map_err(|message| Error::Safetensors {
        path: weights_path.clone(),
        message,
    })?;
    fs::write(&weights_path, &weights).map_err(|e| Error::io(&weights_path, e))?;
    let json = serde_json::to_string_pretty(&json).expect("the adapter config always serializes");
    let config_path = out.join(CONFIG_FILE);
    fs::write(&config_path, json.as_bytes()).map_err(|e| Error::io(&config_path, e))
}

/// The most frequent of `values` (the first of equally frequent ones).
fn most_common<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> T {
    let values: Vec<T> = values.collect();
    let count = |v: &T| values.iter().filter(|w| *w == v).count();
    let mut best = values[0];
    for v in &values {
        if count(v) > count(&best) {
            best = *v;
        }
    }
    best
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

/// The tensors of `model`'s adapter `adapter`, keyed as PEFT keys them, in PyTorch layout:
/// its factors and magnitudes, and every parameter of the configured `modules_to_save`
/// (matched as configured: on Burn's module path or on its renamed form).
fn adapter_tensors<M: Module>(
    model: &M,
    options: &PeftOptions,
    adapter: &str,
    modules_to_save: &[String],
) -> Result<BTreeMap<String, FileTensor>, Error> {
    struct Collect<'a> {
        options: &'a PeftOptions,
        adapter: &'a str,
        modules_to_save: &'a [String],
        layers: HashMap<String, LayerSite>,
        biases: TrainedBiases,
        out: BTreeMap<String, FileTensor>,
        non_finite: Option<String>,
    }
    impl OnParam for Collect<'_> {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let shape = param.lazy_shape().to_vec();
            let Some(found) = file_key(path, &shape, self.options, self.adapter, &self.layers)
            else {
                return;
            };
            let mut found = found;
            if let Some(renamed) = &found.module {
                let (module, name) = path.split_last();
                if !within_any(&module, self.modules_to_save)
                    && !within_any(renamed, self.modules_to_save)
                {
                    // Not a module to save: kept only as a bias the adapter trains.
                    let Some(key) = bias_key(&self.biases, &module, renamed, &name) else {
                        return;
                    };
                    found.key = key;
                    found.module = None;
                }
            }
            let tensor = param.val();
            if !all_finite(&tensor) {
                self.non_finite.get_or_insert(found.key.clone());
            }
            let data = match &found.border {
                Border::AsIs => tensor.into_data(),
                Border::Transpose => tensor.transpose().into_data(),
                Border::Reshape(torch) => {
                    let data = tensor.into_data();
                    TensorData::from_bytes_vec(
                        data.as_bytes().to_vec(),
                        torch.clone(),
                        data.dtype(),
                    )
                }
            };
            let saved_module = found.module;
            self.out
                .insert(found.key, FileTensor { data, saved_module });
        }
    }
    let mut collect = Collect {
        options,
        adapter,
        modules_to_save,
        layers: layers_by_path(model),
        biases: TrainedBiases::of(model, |name| name == adapter),
        out: BTreeMap::new(),
        non_finite: None,
    };
    // Gradient flags take effect on an autodiff device; `train` reads them as configured.
    visit_params(&model.clone().train(), &mut collect);
    match collect.non_finite {
        Some(layer) => Err(Error::NonFinite { layer }),
        None => Ok(collect.out),
    }
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
