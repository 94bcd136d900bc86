//! [`GptConfig`] and [`Gpt`]: embeddings, pre-norm blocks, a final norm, and a language-model
//! head of its own (not tied to the token embedding: see [`Gpt`]).

use std::fs;
use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::Error;
use crate::io::{load_module, save_module};
use crate::model::dropout;
use crate::model::{Block, CausalLm, KvCache, LinearHead, decoder_bias, embed};

/// The size of a [`Gpt`].
#[derive(Config, Debug)]
pub struct GptConfig {
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream. Default 128.
    #[config(default = 128)]
    pub d_model: usize,
    /// Number of blocks. Default 4.
    #[config(default = 4)]
    pub n_layers: usize,
    /// Attention heads per block; must divide `d_model`. Default 4.
    #[config(default = 4)]
    pub n_heads: usize,
    /// Hidden width of each MLP. Default 512.
    #[config(default = 512)]
    pub d_ff: usize,
    /// Longest sequence the position embedding covers. Default 128.
    #[config(default = 128)]
    pub max_seq_len: usize,
    /// Dropout probability. Default 0.1.
    #[config(default = 0.1)]
    pub dropout: f64,
}

/// A GPT-style decoder-only Transformer.
///
/// The language-model head is its own `[d_model, vocab_size]` matrix, not tied to the token
/// embedding. Tying would save `vocab_size · d_model` parameters, but on Burn 0.22's CPU
/// backends the backward pass through a tied head measured about 10× slower per step
/// (11 s against 1 s for a batch of 32 × 64 tokens), so the head is separate.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `E`, `[vocab_size, d_model]`.
    pub token_embedding: Embedding,
    /// Learned position embedding, `[max_seq_len, d_model]`.
    pub position_embedding: Embedding,
    /// Dropout on the summed embeddings.
    pub dropout: Dropout,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The final norm.
    pub norm: LayerNorm,
    /// Next-token projection, `[d_model] -> [vocab_size]`, no bias.
    pub lm_head: Linear,
}

impl GptConfig {
    /// Checks the sizes: all non-zero, heads divide `d_model`, dropout in `[0, 1)`.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(format!(
                "d_model {} is not a multiple of n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        // A size typo (an extra zero or two) should be an error, not an allocation abort.
        let params = self.estimated_params();
        if params > MAX_PARAMS {
            return Err(format!(
                "about {params} parameters is more than the {MAX_PARAMS} this CPU crate supports; check the sizes"
            ));
        }
        Ok(())
    }

    /// Roughly how many parameters the model has (embeddings, blocks, head), saturating
    /// instead of overflowing for absurd sizes.
    pub fn estimated_params(&self) -> u64 {
        let [v, d, l, f, t] = [
            self.vocab_size,
            self.d_model,
            self.n_layers,
            self.d_ff,
            self.max_seq_len,
        ]
        .map(|x| x as u64);
        let block = (4 * d)
            .saturating_mul(d)
            .saturating_add((2 * d).saturating_mul(f));
        (2 * v)
            .saturating_mul(d)
            .saturating_add(t.saturating_mul(d))
            .saturating_add(l.saturating_mul(block))
    }

    /// A model with random weights. Call [`validate`](Self::validate) first for sizes that
    /// come from outside the program.
    pub fn init(&self, device: &Device) -> Gpt {
        Gpt {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            position_embedding: EmbeddingConfig::new(self.max_seq_len, self.d_model).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            blocks: (0..self.n_layers)
                .map(|_| Block::new(self.d_model, self.n_heads, self.d_ff, self.dropout, device))
                .collect(),
            norm: LayerNormConfig::new(self.d_model).init(device),
            lm_head: LinearConfig::new(self.d_model, self.vocab_size)
                .with_bias(false)
                .init(device),
        }
    }
}

impl Gpt {
    /// The hidden states after the final norm.
    ///
    /// # Shapes
    ///
    /// - tokens: `[batch, seq]`, `seq ≤ max_seq_len`
    /// - padding: `[batch, seq]`, true at padding tokens, which no position attends to
    /// - output: `[batch, seq, d_model]`
    pub fn hidden(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        CausalLm::hidden(self, tokens, padding)
    }

    /// Next-token logits at every position.
    ///
    /// # Shapes
    ///
    /// - tokens, padding: `[batch, seq]`
    /// - output: `[batch, seq, vocab_size]`
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        self.lm_head.forward(self.hidden(tokens, padding))
    }

    /// The longest sequence the model takes.
    pub fn max_seq_len(&self) -> usize {
        self.position_embedding.weight.dims()[0]
    }

    /// Writes the weights (Burn's burnpack format) to `path`, through a temporary file.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        save_module(self.clone(), path)
    }

    /// Reads `config.json` and the weights file `weights` from `dir` into a new model.
    ///
    /// # Errors
    ///
    /// A missing or malformed `config.json`, invalid sizes, or a weights file that is
    /// missing, corrupt, or does not fit the config, each naming the file.
    pub fn load(dir: &Path, weights: &str, device: &Device) -> Result<(GptConfig, Gpt), Error> {
        let config = load_config(&dir.join("config.json"))?;
        let model = load_module(config.init(device), &dir.join(weights))?;
        Ok((config, model))
    }
}

/// The largest model [`GptConfig::validate`] accepts: 2^31 parameters, 8 GiB of f32.
pub const MAX_PARAMS: u64 = 1 << 31;

/// Reads and validates a [`GptConfig`] from a JSON file.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::Json`] naming the file.
pub fn load_config(path: &Path) -> Result<GptConfig, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_config(&bytes, path)
}

/// Parses and validates the bytes of a [`GptConfig`] JSON file; `path` names it in errors.
///
/// # Errors
///
/// [`Error::Json`] naming the file: malformed JSON, a missing field, or invalid sizes.
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<GptConfig, Error> {
    let config: GptConfig = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    config.validate().map_err(|message| Error::Json {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// The additive attention bias for a causal model over a padded batch: 0 where position `i`
/// may attend to position `j`, `-inf` elsewhere. Position `i` attends to `j ≤ i` where `j`
/// is not padding, and always to itself: so no row is ever all `-inf` (whose softmax would
/// be NaN), even for a padding position or a left-padded text, and no real position ever
/// attends to padding. `-inf` rather than a large finite number: its exponential is a
/// plain 0, where a finite `-1e9` sends every masked score down the C library's slow
/// underflow path (3 % of a training step by `perf`).
///
/// # Shapes
///
/// - padding: `[batch, seq]`, true at padding
/// - output: `[batch, 1, seq, seq]`
pub fn attention_bias(padding: Tensor<2, Bool>) -> Tensor<4> {
    let seq = padding.dims()[1];
    decoder_bias(padding, seq)
}

impl CausalLm for Gpt {
    fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        bias: Tensor<4>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let x = embed(&self.token_embedding, tokens) + embed(&self.position_embedding, positions);
        let x = self
            .blocks
            .iter()
            .enumerate()
            .fold(dropout(&self.dropout, x), |x, (layer, block)| {
                block.forward_cached(x, bias.clone(), cache, layer)
            });
        self.norm.forward(x)
    }

    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden)
    }

    fn linear_head(&self) -> LinearHead {
        LinearHead {
            weight: self.lm_head.weight.val(), // [d_model, vocab_size]
            out_in: false,
            bias: self.lm_head.bias.as_ref().map(|b| b.val()),
        }
    }

    fn context_len(&self) -> Option<usize> {
        Some(self.max_seq_len())
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn device(&self) -> Device {
        self.token_embedding.weight.device()
    }
}
