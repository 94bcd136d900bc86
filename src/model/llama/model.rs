//! [`Llama`]: the decoder (`LlamaModel`) and its output head, as transformers'
//! `LlamaForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM` compute them.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor};

use super::config::LlamaConfig;
use super::layers::{DecoderLayer, LmHead, init, project_out};
use super::rope::{Rope, inv_freq};
use crate::model::{CausalLm, KvCache, LinearHead, embed};

/// The decoder without its head (transformers' `model.` prefix).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding, `[vocab_size, hidden_size]`.
    pub embed_tokens: Embedding,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// The final RMS norm.
    pub norm: RmsNorm,
}

/// A Llama-family causal language model: Llama 2/3, Qwen2, Qwen3.
///
/// Module paths are Hugging Face's (`model.layers.0.self_attn.q_proj`, `lm_head`), so a
/// PEFT adapter's keys and `target_modules` apply as they are. The output head is the
/// token embedding when the config ties them, else an [`LmHead`]; neither is a `Linear`,
/// so `all-linear` adapts q, k, v, o, gate, up and down, as PEFT does for a causal LM.
#[derive(Module, Debug)]
pub struct Llama {
    /// The decoder.
    pub model: LlamaModel,
    /// The untied output head; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<LmHead>,
    /// RoPE's inverse frequencies, from the config (not a parameter).
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

impl LlamaConfig {
    /// A model with random weights, drawn as transformers draws them
    /// ([`INITIALIZER_RANGE`](super::INITIALIZER_RANGE)).
    pub fn init(&self, device: &Device) -> Llama {
        Llama {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                    .with_initializer(init())
                    .init(device),
                layers: (0..self.num_hidden_layers)
                    .map(|_| DecoderLayer::new(self, device))
                    .collect(),
                norm: RmsNormConfig::new(self.hidden_size)
                    .with_epsilon(self.rms_norm_eps)
                    .init(device),
            },
            lm_head: (!self.tie_word_embeddings).then(|| LmHead::new(self, device)),
            inv_freq: inv_freq(self),
        }
    }
}

impl Llama {
    /// Next-token logits at every position of an unpadded batch, no cache.
    ///
    /// # Shapes
    ///
    /// - tokens: `[batch, seq]`
    /// - output: `[batch, seq, vocab_size]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let padding = Tensor::<2, Int>::zeros([batch, seq], &tokens.device()).equal_elem(1);
        self.logits(tokens, padding)
    }
}

impl CausalLm for Llama {
    fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        bias: Tensor<4>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let device = tokens.device();
        let rope = Rope::new(positions, &self.inv_freq, &device);
        let x = embed(&self.model.embed_tokens, tokens); // [batch, seq, hidden_size]
        let x = self
            .model
            .layers
            .iter()
            .enumerate()
            .fold(x, |x, (layer, decoder)| {
                decoder.forward(x, &rope, bias.clone(), cache, layer)
            });
        self.model.norm.forward(x)
    }

    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        project_out(hidden, self.linear_head().weight)
    }

    fn linear_head(&self) -> LinearHead {
        let weight = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val(),
        };
        LinearHead {
            weight,
            out_in: true,
            bias: None,
        }
    }

    fn context_len(&self) -> Option<usize> {
        None
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.device()
    }
}
