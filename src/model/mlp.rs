//! The position-wise feed-forward network.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use burn_lora::nn::{Linear, LinearConfig};

use crate::model::{dropout, gelu};

/// `fc_out(gelu(fc_in(x)))`, then dropout.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion, `[d_model] -> [d_ff]`.
    pub fc_in: Linear,
    /// Projection back, `[d_ff] -> [d_model]`.
    pub fc_out: Linear,
    /// Residual dropout.
    pub dropout: Dropout,
}

impl Mlp {
    /// A new MLP with random weights.
    pub fn new(d_model: usize, d_ff: usize, dropout: f64, device: &Device) -> Self {
        Self {
            fc_in: LinearConfig::new(d_model, d_ff).init(device),
            fc_out: LinearConfig::new(d_ff, d_model).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, seq, d_model]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = gelu(self.fc_in.forward(x)); // [batch, seq, d_ff]
        dropout(&self.dropout, self.fc_out.forward(h))
    }
}
