//! BERT's layers, with Hugging Face's field names, and the encoder's forward pass.

use burn::module::Module;
use burn::nn::{Dropout, Embedding, LayerNorm};
use burn::tensor::{Bool, Int, Tensor};

use crate::model::{attend, dropout, embed, gelu, positions};

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
        attend(q, k, v, bias, &self.dropout)
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
        let positions = positions(batch, seq, &device);
        let types = Tensor::<2, Int>::zeros([batch, seq], &device);
        let e = &self.embeddings;
        let x = embed(&e.word_embeddings, tokens)
            + embed(&e.position_embeddings, positions)
            + embed(&e.token_type_embeddings, types);
        let mut x = dropout(&e.dropout, e.layer_norm.forward(x));
        // -inf at padding keys (see `model::attention_bias` for why not -1e9). Every text
        // has a first token ([CLS]), so no row is all -inf.
        let blocked = padding.reshape([batch, 1, 1, seq]);
        let bias = Tensor::zeros([batch, 1, 1, seq], &device).mask_fill(blocked, f32::NEG_INFINITY);
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
}
