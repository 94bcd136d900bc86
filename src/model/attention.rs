//! Multi-head causal self-attention.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use burn_lora::nn::{Linear, LinearConfig};

use crate::model::{KvCache, dropout, softmax_last};

/// Self-attention in which each position attends only to itself, earlier positions, and
/// non-padding tokens; `query`, `key`, `value` and `out` are separate projections, as in
/// the LoRA paper.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Query projection, `[d_model] -> [d_model]`.
    pub query: Linear,
    /// Key projection, `[d_model] -> [d_model]`.
    pub key: Linear,
    /// Value projection, `[d_model] -> [d_model]`.
    pub value: Linear,
    /// Output projection, `[d_model] -> [d_model]`.
    pub out: Linear,
    /// Dropout on the attention weights.
    pub dropout: Dropout,
    /// Number of heads; `d_model` must be a multiple of it.
    pub n_heads: usize,
}

impl CausalSelfAttention {
    /// A new layer with random projections.
    pub fn new(d_model: usize, n_heads: usize, dropout: f64, device: &Device) -> Self {
        let linear = || LinearConfig::new(d_model, d_model).init(device);
        Self {
            query: linear(),
            key: linear(),
            value: linear(),
            out: linear(),
            dropout: DropoutConfig::new(dropout).init(),
            n_heads,
        }
    }

    /// Attends over `x`, adding `bias` (0 where attending is allowed, a large negative number
    /// where it is not; see [`attention_bias`](crate::model::attention_bias)) to the scores.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, seq, d_model]`
    /// - bias: `[batch, 1, seq, seq]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        self.forward_cached(x, bias, &mut KvCache::disabled(1), 0)
    }

    /// As [`forward`](Self::forward), for `x` following the positions in `cache`, whose
    /// entry `layer` gets this layer's keys and values.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, seq, d_model]`
    /// - bias: `[batch, 1, seq, cached + seq]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward_cached(
        &self,
        x: Tensor<3>,
        bias: Tensor<4>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let [batch, seq, d_model] = x.dims();
        let head_dim = d_model / self.n_heads;
        let heads = |t: Tensor<3>| {
            t.reshape([batch, seq, self.n_heads, head_dim])
                .swap_dims(1, 2) // [batch, heads, seq, head_dim]
        };
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x));
        let (k, v) = cache.append(layer, k, v); // [batch, heads, cached + seq, head_dim]
        let y = attend(q, k, v, bias, &self.dropout) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, seq, d_model]);
        self.out.forward(y)
    }
}

/// Scaled dot-product attention, `dropout(softmax(q·kᵀ/√d + bias))·v`, per head.
///
/// Without autodiff (evaluation and prediction, where dropout is off) on a CPU device it
/// is Burn's fused attention op: one pass per (example, head) that never materialises the
/// scaled scores, the biased scores and the softmax as separate tensors, and that burn-flex
/// spreads over its cores (measured in `docs/BENCHMARKS.md`). On other devices, where we
/// have not measured it, it stays the separate ops. With autodiff it is the same arithmetic
/// as separate ops, so that dropout applies to the attention weights and every op has its
/// backward pass (Burn's autodiff would decompose the fused op the same way, without the
/// dropout).
///
/// # Shapes
///
/// - q, k, v: `[batch, heads, seq, head_dim]`
/// - bias: `[batch, 1, seq or 1, seq]`, added to the scores: 0, or `-inf` where attention
///   is masked (no row may be all `-inf`)
/// - output: `[batch, heads, seq, head_dim]`
pub fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Tensor<4>,
    drop: &Dropout,
) -> Tensor<4> {
    let head_dim = q.dims()[3];
    let device = q.device();
    if !device.is_autodiff() && crate::device::is_cpu(&device) {
        // The bias is 0 or -inf: the fused op takes it as a mask.
        let mask = bias.lower_elem(-0.5);
        return attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
    }
    let scores = q.matmul(k.transpose()).div_scalar((head_dim as f64).sqrt()); // [batch, heads, seq, seq]
    let weights = dropout(drop, softmax_last(scores + bias));
    weights.matmul(v)
}
