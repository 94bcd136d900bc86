//! A Hugging Face BERT `config.json`: reading and checking it, and a freshly initialised
//! model of its sizes.
//!
//! Size: about 310 lines, most of them Hugging Face's fields, each documented, and their
//! checks.

use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::nn::{
    DropoutConfig, EmbeddingConfig, Initializer, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{
    Bert, BertAddNorm, BertAttention, BertEmbeddings, BertEncoder, BertIntermediate, BertLayer,
    BertPooler, BertSelfAttention,
};
use crate::Error;

/// Architectures whose weights hold a `BertModel` this module can load.
pub const BERT_ARCHITECTURES: [&str; 4] = [
    "BertModel",
    "BertForSequenceClassification",
    "BertForMaskedLM",
    "BertForPreTraining",
];

fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}

/// A Hugging Face BERT `config.json`, with Hugging Face's field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only `gelu` (the exact, erf form) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention weights.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the normal initialisation of new weights (the pooler, the
    /// classifier).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// `model_type`; must be `bert` when present.
    #[serde(default)]
    pub model_type: Option<String>,
    /// `architectures`; each must be one of [`BERT_ARCHITECTURES`] when present.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: usize,
    /// Class names by id (`{"0": "NEGATIVE", ...}`), for a sequence-classification
    /// checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    /// The number of classes, when `id2label` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
}

impl BertConfig {
    /// Reads and checks a Hugging Face `config.json`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`], [`Error::Json`] for malformed JSON or invalid sizes, and
    /// [`Error::UnsupportedArchitecture`] for a model that is not BERT.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parses and checks the bytes of a `config.json`; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`BertConfig::load`], less the I/O.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let json_error = |message: String| Error::Json {
            path: path.to_path_buf(),
            message,
        };
        let config: Self = serde_json::from_slice(bytes).map_err(|e| json_error(e.to_string()))?;
        let unsupported = |found: String| Error::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found,
        };
        if let Some(kind) = &config.model_type
            && kind != "bert"
        {
            return Err(unsupported(format!("model_type `{kind}`")));
        }
        if let Some(arch) = config
            .architectures
            .iter()
            .find(|a| !BERT_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(unsupported(format!("architecture `{arch}`")));
        }
        if config.hidden_act != "gelu" {
            return Err(unsupported(format!(
                "hidden_act `{}` (only `gelu`)",
                config.hidden_act
            )));
        }
        let sizes = [
            ("vocab_size", config.vocab_size),
            ("hidden_size", config.hidden_size),
            ("num_hidden_layers", config.num_hidden_layers),
            ("num_attention_heads", config.num_attention_heads),
            ("intermediate_size", config.intermediate_size),
            ("max_position_embeddings", config.max_position_embeddings),
            ("type_vocab_size", config.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return Err(json_error(format!("{name} must be at least 1")));
        }
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size > 1 << 20) {
            return Err(json_error(format!("{name} is implausibly large")));
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(json_error(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", config.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                config.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(json_error(format!("{name} {p} is not in [0, 1)")));
            }
        }
        config.class_names().map_err(json_error)?;
        Ok(config)
    }

    /// Whether the checkpoint is a `BertForSequenceClassification`: its head is the pooler
    /// and its `classifier`.
    pub fn is_sequence_classifier(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "BertForSequenceClassification")
    }

    /// The class names `id2label` gives, in id order, or `0, 1, ...` for `num_labels`;
    /// `None` when the file names neither.
    ///
    /// # Errors
    ///
    /// Ids that are not `0..n` each once, or an `id2label` that disagrees with `num_labels`.
    pub fn class_names(&self) -> Result<Option<Vec<String>>, String> {
        let Some(map) = &self.id2label else {
            return Ok(self
                .num_labels
                .map(|n| (0..n).map(|i| i.to_string()).collect()));
        };
        let mut names = vec![None; map.len()];
        for (id, name) in map {
            let slot = id
                .parse::<usize>()
                .ok()
                .and_then(|i| names.get_mut(i))
                .ok_or_else(|| format!("id2label: id `{id}` is not one of 0..{}", map.len()))?;
            *slot = Some(name.clone());
        }
        if let Some(n) = self.num_labels
            && n != map.len()
        {
            return Err(format!(
                "num_labels is {n} but id2label names {} classes",
                map.len()
            ));
        }
        Ok(Some(names.into_iter().flatten().collect()))
    }

    /// A model with freshly initialised weights (Hugging Face's scheme: normal with
    /// `initializer_range`, zero biases, unit LayerNorms).
    pub fn init(&self, device: &Device) -> Bert {
        let linear = |d_in, d_out| self.linear(d_in, d_out, device).into();
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let embedding = |n| {
            EmbeddingConfig::new(n, self.hidden_size)
                .with_initializer(self.initializer())
                .init(device)
        };
        let (h, ff) = (self.hidden_size, self.intermediate_size);
        let layer = || BertLayer {
            attention: BertAttention {
                self_: BertSelfAttention {
                    query: linear(h, h),
                    key: linear(h, h),
                    value: linear(h, h),
                    dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    n_heads: self.num_attention_heads,
                },
                output: BertAddNorm {
                    dense: linear(h, h),
                    layer_norm: norm(),
                    dropout: dropout(),
                },
            },
            intermediate: BertIntermediate {
                dense: linear(h, ff),
            },
            output: BertAddNorm {
                dense: linear(ff, h),
                layer_norm: norm(),
                dropout: dropout(),
            },
        };
        Bert {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                layer_norm: norm(),
                dropout: dropout(),
            },
            encoder: BertEncoder {
                layer: (0..self.num_hidden_layers).map(|_| layer()).collect(),
            },
            pooler: BertPooler {
                dense: linear(h, h),
            },
        }
    }

    fn initializer(&self) -> Initializer {
        Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        }
    }

    /// A new linear initialised as Hugging Face does: normal weights, zero bias.
    pub fn linear(&self, d_in: usize, d_out: usize, device: &Device) -> Linear {
        LinearConfig::new(d_in, d_out)
            .with_initializer(self.initializer())
            .init(device)
            .map(&mut ZeroBias)
    }
}

/// Sets every bias to zero (Burn's `Linear` initialises biases with the weight initializer).
struct ZeroBias;

impl burn::module::ModuleMapper for ZeroBias {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        match D {
            1 => param.map(|t| t.zeros_like()),
            _ => param,
        }
    }
}
