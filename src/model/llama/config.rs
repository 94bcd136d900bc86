//! [`LlamaConfig`]: one config for Llama 2/3, Qwen2 and Qwen3, read from a Hugging Face
//! `config.json` with transformers' field names.

use std::path::Path;

use serde_json::Value;

use crate::Error;

/// The decoder families [`LlamaConfig`] covers, by `config.json`'s `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM`: Llama 2 and 3 (biases per `attention_bias` and `mlp_bias`).
    Llama,
    /// `Qwen2ForCausalLM`: biases on q, k and v, none on o.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMS norm on each head of q and k, an explicit `head_dim`.
    Qwen3,
}

impl Family {
    /// The architectures this crate loads, as transformers names them.
    pub const ARCHITECTURES: [&str; 3] =
        ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    /// The family of a transformers architecture name (or `model_type`).
    pub fn from_architecture(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Family::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Some(Family::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`: how much longer the context became.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: f64,
}

/// The size and shape of a Llama-family decoder, with transformers' names.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which family, from `architectures`.
    pub family: Family,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`: the residual stream's width.
    pub hidden_size: usize,
    /// `intermediate_size`: the SwiGLU MLP's width.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`: query heads.
    pub num_attention_heads: usize,
    /// `num_key_value_heads`: key and value heads (grouped-query attention when fewer than
    /// the query heads). Default `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// `head_dim`. Default `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// `rms_norm_eps`. Default 1e-6.
    pub rms_norm_eps: f64,
    /// `rope_theta` (or `rope_parameters.rope_theta`). Default 10000.
    pub rope_theta: f64,
    /// `rope_scaling` of type `llama3`; `None` for the default RoPE.
    pub rope_scaling: Option<Llama3Scaling>,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `tie_word_embeddings`: the output head is the token embedding. Default false.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2 always; Llama and Qwen3 by
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the o projection (Llama and Qwen3 by `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP's projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMS norm on each query and key head (Qwen3).
    pub qk_norm: bool,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`: one id or several.
    pub eos_token_ids: Vec<u32>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Parses a `config.json`; `path` names the file in errors.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] for malformed JSON, a missing or mistyped field (named), sizes that
    /// do not fit together, or a setting this crate does not implement (a RoPE type other
    /// than `llama3`, sliding-window attention, an activation other than SiLU);
    /// [`Error::UnsupportedArchitecture`] for an architecture other than those in
    /// [`Family::ARCHITECTURES`].
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let fail = |message: String| Error::Json {
            path: path.to_path_buf(),
            message,
        };
        let json: Value = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        let architecture = json["architectures"][0]
            .as_str()
            .or(json["model_type"].as_str())
            .unwrap_or("(no `architectures`)");
        let family = Family::from_architecture(architecture).ok_or_else(|| {
            Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: format!("architecture `{architecture}`"),
            }
        })?;
        let size = |key: &str| -> Result<Option<usize>, Error> {
            match &json[key] {
                Value::Null => Ok(None),
                v => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| fail(format!("`{key}` must be a positive integer, got {v}"))),
            }
        };
        let need = |key: &str| size(key)?.ok_or_else(|| fail(format!("missing field `{key}`")));
        let float = |value: &Value, key: &str, default: f64| -> Result<f64, Error> {
            match value {
                Value::Null => Ok(default),
                v => v
                    .as_f64()
                    .ok_or_else(|| fail(format!("`{key}` must be a number, got {v}"))),
            }
        };
        let flag = |key: &str| json[key].as_bool().unwrap_or(false);
        let id = |key: &str| json[key].as_u64().map(|n| n as u32);

        let hidden_size = need("hidden_size")?;
        let num_attention_heads = need("num_attention_heads")?;
        let num_key_value_heads = size("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match size("head_dim")? {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_attention_heads) => {
                hidden_size / num_attention_heads
            }
            None => {
                return Err(fail(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}, and there is no head_dim"
                )));
            }
        };
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(fail(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(fail(format!(
                "head_dim {head_dim} is odd; RoPE needs pairs"
            )));
        }
        if let Some(act) = json["hidden_act"].as_str().filter(|a| *a != "silu") {
            return Err(fail(format!(
                "hidden_act `{act}` is not supported (only silu)"
            )));
        }
        if flag("use_sliding_window") {
            return Err(fail(
                "use_sliding_window: sliding-window attention is not supported".into(),
            ));
        }
        // transformers 5 moved rope_theta and rope_scaling into rope_parameters.
        let rope = match &json["rope_parameters"] {
            Value::Null => &json["rope_scaling"],
            p => p,
        };
        let rope_theta = float(
            match &json["rope_theta"] {
                Value::Null => &rope["rope_theta"],
                v => v,
            },
            "rope_theta",
            10_000.0,
        )?;
        let rope_type = rope["rope_type"].as_str().or(rope["type"].as_str());
        let rope_scaling = match rope_type {
            None | Some("default") => None,
            Some("llama3") => Some(Llama3Scaling {
                factor: float(&rope["factor"], "rope_scaling.factor", 8.0)?,
                low_freq_factor: float(
                    &rope["low_freq_factor"],
                    "rope_scaling.low_freq_factor",
                    1.0,
                )?,
                high_freq_factor: float(
                    &rope["high_freq_factor"],
                    "rope_scaling.high_freq_factor",
                    4.0,
                )?,
                original_max_position_embeddings: float(
                    &rope["original_max_position_embeddings"],
                    "rope_scaling.original_max_position_embeddings",
                    8192.0,
                )?,
            }),
            Some(other) => {
                return Err(fail(format!(
                    "rope type `{other}` is not supported (default and llama3 are)"
                )));
            }
        };
        let eos_token_ids = match &json["eos_token_id"] {
            Value::Array(ids) => ids
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect(),
            v => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        };
        let attention_bias = flag("attention_bias");
        Ok(LlamaConfig {
            family,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: float(&json["rms_norm_eps"], "rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: size("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: flag("tie_word_embeddings"),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family != Family::Qwen2 && attention_bias,
            mlp_bias: family == Family::Llama && flag("mlp_bias"),
            qk_norm: family == Family::Qwen3,
            bos_token_id: id("bos_token_id"),
            eos_token_ids,
            pad_token_id: id("pad_token_id"),
        })
    }

    /// Reads and parses a `config.json`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file, or what [`parse`](Self::parse) reports.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// The number of parameters of the model this config describes.
    pub fn num_params(&self) -> u64 {
        let [v, d, f, l, h, kv, hd] = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        ]
        .map(|x| x as u64);
        let attention = d * h * hd * 2
            + d * kv * hd * 2
            + u64::from(self.qkv_bias) * (h + 2 * kv) * hd
            + u64::from(self.o_bias) * d
            + u64::from(self.qk_norm) * 2 * hd;
        let mlp = 3 * d * f + u64::from(self.mlp_bias) * (2 * f + d);
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + l * (attention + mlp + 2 * d) + d + head
    }
}
