//! PEFT's `adapter_config.json`: the keys burn-lora reads and writes, and the options it
//! refuses by name.
//!
//! `rank_pattern` and `alpha_pattern` are read into key order (serde_json's map), where
//! PEFT tries them in file order: the two differ only when two patterns match one module.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::{LoraBias, LoraConfig, LoraInit};

/// PEFT's `target_modules` (and `exclude_modules`): a list of names, or one full-match
/// regex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Names {
    List(Vec<String>),
    Regex(String),
}

/// The keys of PEFT's `adapter_config.json` that burn-lora reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeftConfigJson {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Names,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_pattern: Option<serde_json::Value>,
    #[serde(default)]
    pub exclude_modules: Option<Names>,
}

/// A `rank_pattern` or `alpha_pattern` object as `(key, value)` pairs, each value read by
/// `read`; a value it refuses is an error naming the file, the field, the key and what the
/// value must be (`want`).
fn read_pattern<T>(
    map: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    want: &str,
    path: &Path,
    read: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<(String, T)>, Error> {
    map.iter()
        .map(|(key, value)| {
            let parsed = read(value).ok_or_else(|| Error::Json {
                path: path.to_path_buf(),
                message: format!("{field}[\"{key}\"] must be {want}, got {value}"),
            })?;
            Ok((key.clone(), parsed))
        })
        .collect()
}

fn bias_none() -> String {
    "none".to_string()
}

/// Init methods that change the base weights: an adapter trained with one only reproduces
/// its model on the base it modified, which is not the base a user loads it onto.
const BASE_CHANGING_INITS: [&str; 5] = ["pissa", "olora", "loftq", "eva", "corda"];

impl PeftConfigJson {
    /// The JSON for adapters with these settings, targets and modules to save.
    pub(crate) fn new(
        settings: &LoraConfig,
        target_modules: Vec<String>,
        modules_to_save: Vec<String>,
        task_type: Option<String>,
        base_model_name_or_path: Option<String>,
    ) -> Self {
        let init = match settings.init {
            LoraInit::KaimingUniform => serde_json::Value::Bool(true),
            LoraInit::Gaussian => serde_json::Value::String("gaussian".into()),
        };
        Self {
            peft_type: "LORA".into(),
            task_type,
            base_model_name_or_path,
            r: settings.rank,
            lora_alpha: settings.alpha,
            lora_dropout: settings.dropout,
            target_modules: Names::List(target_modules),
            use_rslora: settings.use_rslora,
            bias: settings.bias.peft_name().to_string(),
            modules_to_save: (!modules_to_save.is_empty()).then_some(modules_to_save),
            fan_in_fan_out: false,
            use_dora: settings.use_dora,
            init_lora_weights: init,
            inference_mode: true,
            rank_pattern: settings
                .rank_pattern
                .iter()
                .map(|(k, r)| (k.clone(), serde_json::Value::from(*r)))
                .collect(),
            alpha_pattern: settings
                .alpha_pattern
                .iter()
                .map(|(k, a)| (k.clone(), serde_json::Value::from(*a)))
                .collect(),
            layers_to_transform: (!settings.layers_to_transform.is_empty())
                .then(|| serde_json::Value::from(settings.layers_to_transform.clone())),
            layers_pattern: (!settings.layers_pattern.is_empty())
                .then(|| serde_json::Value::from(settings.layers_pattern.clone())),
            exclude_modules: None,
        }
    }

    /// The [`LoraConfig`] this file describes, its names in PEFT's namespace.
    pub(crate) fn into_config(self, path: &Path) -> Result<LoraConfig, Error> {
        let unsupported = |what: String| Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        if self.peft_type != "LORA" {
            return Err(Error::WrongPeftType {
                path: path.to_path_buf(),
                found: self.peft_type,
            });
        }
        let bias = LoraBias::from_peft_name(&self.bias).ok_or_else(|| Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "bias must be \"none\", \"all\" or \"lora_only\", got \"{}\"",
                self.bias
            ),
        })?;
        // `fan_in_fan_out` only says that the base stores its weights `[d_in, d_out]`
        // (GPT-2's `Conv1D`); `lora_A` and `lora_B` keep their shapes either way, and every
        // Burn linear stores `[d_in, d_out]`. Nothing to do, and PEFT itself resets the
        // flag to match the layer it finds.
        let rank_pattern = read_pattern(
            &self.rank_pattern,
            "rank_pattern",
            "a whole number",
            path,
            |v| v.as_u64().map(|r| r as usize),
        )?;
        let alpha_pattern = read_pattern(
            &self.alpha_pattern,
            "alpha_pattern",
            "a number",
            path,
            |v| v.as_f64(),
        )?;
        let json_error = |message: String| Error::Json {
            path: path.to_path_buf(),
            message,
        };
        // PEFT takes an int or a list for `layers_to_transform`, a string or a list for
        // `layers_pattern`.
        let layers_to_transform: Vec<usize> = match &self.layers_to_transform {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Number(n)) => vec![n.as_u64().ok_or_else(|| {
                json_error(format!(
                    "layers_to_transform must be a layer index, got {n}"
                ))
            })? as usize],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|i| i as usize).ok_or_else(|| {
                        json_error(format!("layers_to_transform holds {v}, not a layer index"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(json_error(format!(
                    "layers_to_transform must be an index or a list of indexes, got {other}"
                )));
            }
        };
        let layers_pattern: Vec<String> = match &self.layers_pattern {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(p)) => vec![p.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| json_error(format!("layers_pattern holds {v}, not a name")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(json_error(format!(
                    "layers_pattern must be a name or a list of names, got {other}"
                )));
            }
        };
        let init = match &self.init_lora_weights {
            serde_json::Value::String(s) if s == "gaussian" => LoraInit::Gaussian,
            serde_json::Value::String(s)
                if BASE_CHANGING_INITS.iter().any(|m| s.starts_with(m)) =>
            {
                return Err(unsupported(format!(
                    "init_lora_weights = \"{s}\" (it changes the base weights, so the adapter does not fit an unmodified base)"
                )));
            }
            _ => LoraInit::KaimingUniform,
        };
        let exclude_modules = match self.exclude_modules {
            None => Vec::new(),
            Some(Names::List(names)) => names,
            Some(Names::Regex(pattern)) => {
                return Err(unsupported(format!(
                    "exclude_modules as a regex (`{pattern}`)"
                )));
            }
        };
        let config = LoraConfig::new()
            .with_rank(self.r)
            .with_alpha(self.lora_alpha)
            .with_dropout(self.lora_dropout)
            .with_use_rslora(self.use_rslora)
            .with_use_dora(self.use_dora)
            .with_init(init)
            .with_modules_to_save(self.modules_to_save.unwrap_or_default())
            .with_exclude_modules(exclude_modules)
            .with_rank_pattern(rank_pattern)
            .with_alpha_pattern(alpha_pattern)
            .with_layers_to_transform(layers_to_transform)
            .with_layers_pattern(layers_pattern)
            .with_bias(bias);
        let config = match self.target_modules {
            Names::List(names) => config.with_target_modules(names),
            Names::Regex(pattern) => config.with_target_regex(Some(pattern)),
        };
        // Invalid values (rank 0, dropout 5) are errors that name the file too.
        config.validate().map_err(|e| Error::AdapterConfig {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(config)
    }
}
