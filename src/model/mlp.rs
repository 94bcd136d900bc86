//! The position-wise feed-forward network.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use crate::Error;
use crate::lora::adaptable::{AdaptableLinear, LinearFn, MapLinears, join_path};
use crate::model::{dropout, gelu};

/// `fc_out(gelu(fc_in(x)))`, then dropout.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion, `[d_model] -> [d_ff]`.
    pub fc_in: AdaptableLinear,
    /// Projection back, `[d_ff] -> [d_model]`.
    pub fc_out: AdaptableLinear,
    /// Residual dropout.
    pub dropout: Dropout,
}

impl Mlp {
    /// A new MLP with random weights.
    pub fn new(d_model: usize, d_ff: usize, dropout: f64, device: &Device) -> Self {
        Self {
            fc_in: AdaptableLinear::new(d_model, d_ff, device),
            fc_out: AdaptableLinear::new(d_ff, d_model, device),
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

impl MapLinears for Mlp {
    fn map_linears(self, path: &str, f: &mut LinearFn<'_>) -> Result<Self, Error> {
        Ok(Self {
            fc_in: self.fc_in.map_linears(&join_path(path, "fc_in"), f)?,
            fc_out: self.fc_out.map_linears(&join_path(path, "fc_out"), f)?,
            ..self
        })
    }
}
