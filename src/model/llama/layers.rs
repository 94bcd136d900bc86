//! The layers of a Llama-family decoder, named as transformers names them so that Burn's
//! module paths are Hugging Face's (`model.layers.0.self_attn.q_proj`) and PEFT's adapter
//! keys need no renaming.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Distribution, Tensor};

use burn_lora::nn::{Linear, LinearConfig};

use super::config::LlamaConfig;
use super::rope::Rope;
use crate::model::{KvCache, attend, swiglu};

/// Grouped-query self-attention with rotary positions (transformers' `LlamaAttention`,
/// `Qwen2Attention`, `Qwen3Attention`).
#[derive(Module, Debug)]
pub struct Attention {
    /// `[hidden_size] -> [heads · head_dim]`.
    pub q_proj: Linear,
    /// `[hidden_size] -> [kv_heads · head_dim]`.
    pub k_proj: Linear,
    /// `[hidden_size] -> [kv_heads · head_dim]`.
    pub v_proj: Linear,
    /// `[heads · head_dim] -> [hidden_size]`.
    pub o_proj: Linear,
    /// Qwen3's RMS norm on each query head, `[head_dim]`.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's RMS norm on each key head, `[head_dim]`.
    pub k_norm: Option<RmsNorm>,
    /// Dropout on the attention weights (0 in these families' checkpoints).
    pub dropout: Dropout,
    /// Query heads.
    pub heads: usize,
    /// Key and value heads; each serves `heads / kv_heads` query heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Attention {
    /// A new layer with random projections.
    pub fn new(c: &LlamaConfig, device: &Device) -> Self {
        let (d, hd) = (c.hidden_size, c.head_dim);
        let linear = |i, o, bias| {
            LinearConfig::new(i, o)
                .with_bias(bias)
                .with_initializer(init())
                .init(device)
        };
        let norm = || {
            RmsNormConfig::new(hd)
                .with_epsilon(c.rms_norm_eps)
                .init(device)
        };
        Self {
            q_proj: linear(d, c.num_attention_heads * hd, c.qkv_bias),
            k_proj: linear(d, c.num_key_value_heads * hd, c.qkv_bias),
            v_proj: linear(d, c.num_key_value_heads * hd, c.qkv_bias),
            o_proj: linear(c.num_attention_heads * hd, d, c.o_bias),
            q_norm: c.qk_norm.then(norm),
            k_norm: c.qk_norm.then(norm),
            dropout: DropoutConfig::new(0.0).init(),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, seq, hidden_size]`
    /// - bias: `[batch, 1, seq, cached + seq]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: Tensor<4>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let hd = self.head_dim;
        let split = |t: Tensor<3>, heads: usize, norm: &Option<RmsNorm>| {
            let t = t.reshape([batch, seq, heads, hd]);
            let t = match norm {
                Some(norm) => norm.forward(t),
                None => t,
            };
            t.swap_dims(1, 2) // [batch, heads, seq, head_dim]
        };
        let q = split(self.q_proj.forward(x.clone()), self.heads, &self.q_norm);
        let k = split(self.k_proj.forward(x.clone()), self.kv_heads, &self.k_norm);
        let v = split(self.v_proj.forward(x), self.kv_heads, &None);
        let (q, k) = (rope.apply(q), rope.apply(k));
        let (k, v) = cache.append(layer, k, v); // [batch, kv_heads, cached + seq, head_dim]
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v)); // [batch, heads, cached + seq, head_dim]
        let y = attend(q, k, v, bias, &self.dropout) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * hd]);
        self.o_proj.forward(y)
    }

    /// Each key/value head repeated for the query heads it serves (transformers'
    /// `repeat_kv`): head `h` of the output is head `h / (heads / kv_heads)` of the input.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return x;
        }
        let [batch, kv, seq, hd] = x.dims();
        x.reshape([batch, kv, 1, seq, hd])
            .expand([batch, kv, rep, seq, hd])
            .reshape([batch, kv * rep, seq, hd])
    }
}

/// The SwiGLU feed-forward network: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[hidden_size] -> [intermediate_size]`, through SiLU.
    pub gate_proj: Linear,
    /// `[hidden_size] -> [intermediate_size]`.
    pub up_proj: Linear,
    /// `[intermediate_size] -> [hidden_size]`.
    pub down_proj: Linear,
}

impl Mlp {
    /// A new MLP with random weights.
    pub fn new(c: &LlamaConfig, device: &Device) -> Self {
        let (d, f, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        let linear = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(bias)
                .with_initializer(init())
                .init(device)
        };
        Self {
            gate_proj: linear(d, f),
            up_proj: linear(d, f),
            down_proj: linear(f, d),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, seq, hidden_size]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)); // [batch, seq, intermediate_size]
        self.down_proj.forward(h)
    }
}

/// `h = x + attn(norm(x))`, then `h + mlp(norm(h))`: one pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Self-attention.
    pub self_attn: Attention,
    /// Feed-forward network.
    pub mlp: Mlp,
    /// RMS norm before attention.
    pub input_layernorm: RmsNorm,
    /// RMS norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    /// A new layer with random weights.
    pub fn new(c: &LlamaConfig, device: &Device) -> Self {
        let norm = || {
            RmsNormConfig::new(c.hidden_size)
                .with_epsilon(c.rms_norm_eps)
                .init(device)
        };
        Self {
            self_attn: Attention::new(c, device),
            mlp: Mlp::new(c, device),
            input_layernorm: norm(),
            post_attention_layernorm: norm(),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, seq, hidden_size]`
    /// - bias: `[batch, 1, seq, cached + seq]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: Tensor<4>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            rope,
            bias,
            cache,
            layer,
        );
        let h = x + attn;
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// An untied output head, `[vocab_size, hidden_size]` in PyTorch's layout, as the token
/// embedding is: logits are `h·Wᵀ` either way. Not a `Linear`, so that LoRA's
/// `all-linear` leaves it out, as PEFT leaves out a causal LM's output layer.
#[derive(Module, Debug)]
pub struct LmHead {
    /// `[vocab_size, hidden_size]`.
    pub weight: Param<Tensor<2>>,
}

impl LmHead {
    /// A new head with small random weights.
    pub fn new(c: &LlamaConfig, device: &Device) -> Self {
        let weight = Tensor::random(
            [c.vocab_size, c.hidden_size],
            Distribution::Normal(0.0, INITIALIZER_RANGE),
            device,
        );
        Self {
            weight: Param::from_tensor(weight),
        }
    }
}

/// The standard deviation of a new model's random weights: transformers' default
/// `initializer_range` for Llama and Qwen2, whose `_init_weights` draws every linear and
/// embedding weight from `N(0, 0.02)`. (Burn's defaults differ: Kaiming-uniform linears,
/// `N(0, 1)` embeddings, whose logits through a tied head are then 50 times larger.)
pub const INITIALIZER_RANGE: f64 = 0.02;

/// Random weights as transformers draws them, [`INITIALIZER_RANGE`]; biases too (where
/// transformers zeroes them).
pub(crate) fn init() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: INITIALIZER_RANGE,
    }
}

/// Logits `h·Wᵀ` for a `[vocab_size, hidden_size]` matrix (the token embedding, or an
/// [`LmHead`]).
///
/// # Shapes
///
/// - hidden: `[batch, seq, hidden_size]`
/// - weight: `[vocab_size, hidden_size]`
/// - output: `[batch, seq, vocab_size]`
pub fn project_out(hidden: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    let [batch, seq, d] = hidden.dims();
    let vocab = weight.dims()[0];
    // A decode step's few rows run on every core of flex on Intel CPUs (`matmul_weight`).
    // A quantized (tied) head is dequantized a block of its rows at a time.
    burn_lora::quantized_matmul(hidden.reshape([batch * seq, d]), &weight, true)
        .reshape([batch, seq, vocab])
}
