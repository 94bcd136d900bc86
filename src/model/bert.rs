//! A BERT encoder that loads Hugging Face checkpoints (`config.json` + `model.safetensors`),
//! such as `sentence-transformers/all-MiniLM-L6-v2` or `bert-base-uncased`, with every linear
//! LoRA-capable.
//!
//! Field names follow Hugging Face's `BertModel`, so PEFT's keys and target names work
//! unchanged: `encoder.layer.0.attention.self.query`, `...attention.output.dense`,
//! `...intermediate.dense`, `...output.dense`, `pooler.dense`, and `classifier` on
//! [`BertClassifier`]. (`self` is a Rust keyword, so that field is `self_`; `LayerNorm` is
//! `layer_norm`. Checkpoints and adapter files are renamed at the border: see [`Bert::load`]
//! and [`peft_options`].)

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use burn_lora::PeftOptions;

use crate::Error;
use crate::model::{dropout, gelu};

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

/// Casts every float parameter to `float32`: a checkpoint stored in `float16` (ours is, to
/// stay small) loads with its own dtype, and the model computes in `float32`.
struct ToF32;

impl burn::module::ModuleMapper for ToF32 {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        match param.val().dtype() {
            DType::F32 => param,
            // On an autodiff device the cast is a recorded op, and a parameter must be a
            // leaf of the graph that still asks for gradients if the original did.
            _ => param.map(|t| {
                let grad = t.is_require_grad();
                t.cast(DType::F32).detach().set_require_grad(grad)
            }),
        }
    }
}

/// Word, position and token-type embeddings, summed, normalised, dropped out.
#[derive(Module, Debug)]

pub struct BertEmbeddings {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Embedding,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding,
    /// `[type_vocab_size, hidden]`.
    pub token_type_embeddings: Embedding,
    /// Hugging Face's `LayerNorm` (renamed when loading).
    pub layer_norm: LayerNorm,
    /// Dropout.
    pub dropout: Dropout,
}

/// Bidirectional multi-head self-attention (`query`, `key`, `value`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// Query projection.
    pub query: burn_lora::nn::Linear,
    /// Key projection.
    pub key: burn_lora::nn::Linear,
    /// Value projection.
    pub value: burn_lora::nn::Linear,
    /// Dropout on the attention weights.
    pub dropout: Dropout,
    /// Number of heads.
    pub n_heads: usize,
}

/// `LayerNorm(x + dropout(dense(h)))`: the output of an attention or feed-forward sub-layer.
#[derive(Module, Debug)]

pub struct BertAddNorm {
    /// The projection.
    pub dense: burn_lora::nn::Linear,
    /// Hugging Face's `LayerNorm` (renamed when loading).
    pub layer_norm: LayerNorm,
    /// Dropout.
    pub dropout: Dropout,
}

/// Self-attention and its output projection.
#[derive(Module, Debug)]
pub struct BertAttention {
    /// Hugging Face's `attention.self`.
    pub self_: BertSelfAttention,
    /// Hugging Face's `attention.output`.
    pub output: BertAddNorm,
}

/// The first feed-forward linear.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    /// `[hidden] -> [intermediate]`, followed by GELU.
    pub dense: burn_lora::nn::Linear,
}

/// One post-norm encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Attention sub-layer.
    pub attention: BertAttention,
    /// Feed-forward, first half.
    pub intermediate: BertIntermediate,
    /// Feed-forward, second half, with the residual and norm.
    pub output: BertAddNorm,
}

/// The stack of layers.
#[derive(Module, Debug)]
pub struct BertEncoder {
    /// Hugging Face's `encoder.layer.N`.
    pub layer: Vec<BertLayer>,
}

/// `tanh(dense(h[CLS]))`.
#[derive(Module, Debug)]
pub struct BertPooler {
    /// `[hidden] -> [hidden]`.
    pub dense: burn_lora::nn::Linear,
}

/// Hugging Face's `BertModel`: embeddings, encoder, pooler.
#[derive(Module, Debug)]
pub struct Bert {
    /// Input embeddings.
    pub embeddings: BertEmbeddings,
    /// The layers.
    pub encoder: BertEncoder,
    /// The `[CLS]` pooler.
    pub pooler: BertPooler,
}

impl BertAddNorm {
    fn forward(&self, h: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(dropout(&self.dropout, self.dense.forward(h)) + residual)
    }
}

impl BertSelfAttention {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.n_heads;
        let heads = |t: Tensor<3>| {
            t.reshape([batch, seq, self.n_heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x));
        let scores = q.matmul(k.transpose()).div_scalar((head_dim as f64).sqrt());
        let weights = dropout(&self.dropout, softmax(scores + bias, 3));
        weights
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden])
    }
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let attended = self.attention.self_.forward(x.clone(), bias);
        let x = self.attention.output.forward(attended, x);
        let inner = gelu(self.intermediate.dense.forward(x.clone()));
        self.output.forward(inner, x)
    }
}

impl Bert {
    /// The last hidden states, `[batch, seq, hidden]`, for `tokens` `[batch, seq]` with
    /// `padding` `[batch, seq]` true at padding (which no position attends to). Token types
    /// are all 0.
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let types = Tensor::<2, Int>::zeros([batch, seq], &device);
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(tokens)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        let mut x = dropout(&e.dropout, e.layer_norm.forward(x));
        let bias = padding.float().reshape([batch, 1, 1, seq]).mul_scalar(-1e9);
        for layer in &self.encoder.layer {
            x = layer.forward(x, bias.clone());
        }
        x
    }

    /// The pooler: `tanh(dense(h[:, 0]))`, `[batch, hidden]`.
    pub fn pool(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, width] = hidden.dims();
        let cls = hidden.slice([0..batch, 0..1]).reshape([batch, width]);
        self.pooler.dense.forward(cls).tanh()
    }

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

/// How [`BertClassifier`] turns hidden states into one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BertHead {
    /// Hugging Face's `BertForSequenceClassification`: the pooler (`tanh(dense(h[CLS]))`),
    /// dropout, `classifier`. PEFT adapters trained with `task_type="SEQ_CLS"` use this.
    #[default]
    Pooler,
    /// The mean of the non-padding hidden states, dropout, `classifier`: the pooling
    /// sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained for.
    Mean,
}

/// A BERT encoder with a classification head.
#[derive(Module, Debug)]
pub struct BertClassifier {
    /// The encoder (Hugging Face's `bert`).
    pub bert: Bert,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[hidden] -> [classes]`.
    pub classifier: burn_lora::nn::Linear,
    /// How hidden states become one vector.
    #[module(skip)]
    pub head: BertHead,
}

impl BertClassifier {
    /// Puts a new classifier (initialised as Hugging Face does) on `bert`.
    pub fn new(
        bert: Bert,
        config: &BertConfig,
        classes: usize,
        head: BertHead,
        device: &Device,
    ) -> Self {
        Self {
            bert,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier: config.linear(config.hidden_size, classes, device).into(),
            head,
        }
    }

    /// Logits `[batch, classes]` for `tokens` with `padding` (true at padding), with the
    /// mean head averaging over the non-padding tokens.
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<2> {
        let [batch, seq] = padding.dims();
        let keep = padding.clone().bool_not().float();
        let count = keep.clone().sum_dim(1).clamp_min(1.0); // [batch, 1]
        let pool = keep.div(count.expand([batch, seq]));
        self.forward_pooled(tokens, padding, pool)
    }

    /// Logits, with the mean head weighting positions by `pool` `[batch, seq]` (`1/len` over
    /// the text: see [`pool_weights`](crate::data::pool_weights)). The pooler head ignores
    /// `pool`.
    pub fn forward_pooled(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2> {
        let hidden = self.bert.forward(tokens, padding);
        let pooled = match self.head {
            BertHead::Pooler => self.bert.pool(hidden),
            BertHead::Mean => crate::model::classifier::weighted_pool(hidden, pool),
        };
        self.classifier.forward(dropout(&self.dropout, pooled))
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
