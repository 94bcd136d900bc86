//! One pre-norm Transformer block.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use crate::model::dropout;
use crate::model::{CausalSelfAttention, KvCache, Mlp};

/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`: the pre-norm block of GPT-2.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Causal self-attention.
    pub attn: CausalSelfAttention,
    /// Dropout on the attention output.
    pub dropout: Dropout,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// Feed-forward network.
    pub mlp: Mlp,
}

impl Block {
    /// A new block with random weights.
    pub fn new(d_model: usize, n_heads: usize, d_ff: usize, dropout: f64, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(d_model).init(device),
            attn: CausalSelfAttention::new(d_model, n_heads, dropout, device),
            dropout: DropoutConfig::new(dropout).init(),
            norm2: LayerNormConfig::new(d_model).init(device),
            mlp: Mlp::new(d_model, d_ff, dropout, device),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, seq, d_model]`
    /// - bias: `[batch, 1, seq, seq]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        self.forward_cached(x, bias, &mut KvCache::disabled(1), 0)
    }

    /// As [`forward`](Self::forward), for `x` following the positions in `cache`, whose
    /// entry `layer` is this block's.
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
        let attn = self
            .attn
            .forward_cached(self.norm1.forward(x.clone()), bias, cache, layer);
        let x = x + dropout(&self.dropout, attn);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}
