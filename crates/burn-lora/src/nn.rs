//! [`Linear`]: a drop-in for [`burn::nn::Linear`] that computes an attached LoRA adapter in
//! factored form.
//!
//! Swap `use burn::nn::{Linear, LinearConfig}` for `use burn_lora::nn::{Linear, LinearConfig}`:
//! the config, the field names (`weight`, `bias`) and the record keys are Burn's, so
//! checkpoints load either way, and [`apply_lora`](crate::apply_lora) finds it exactly as it
//! finds Burn's.
//!
//! What each layer costs with an adapter on its weight, per forward and backward:
//!
//! | layer | forward | backward | dropout on the adapter's input |
//! |---|---|---|---|
//! | `burn::nn::Linear` (dense path) | builds `W + s·A·B` `[d_in, d_out]`, then `x·W'` | the `[d_in, d_out]` gradient of `W'`, then `dA`, `dB` from it | not applied |
//! | `burn_lora::nn::Linear` (factored path) | `x·W + s·(x·A)·B` | `dA`, `dB` from `[tokens, r]` products | applied |
//!
//! Without an adapter, or with a disabled or merged one, both are a plain `x·W + b`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LinearLayout};
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor};

use crate::adapter::Adapter;

/// Configuration of a [`Linear`]: the fields and defaults of [`burn::nn::LinearConfig`].
#[derive(Config, Debug)]
pub struct LinearConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// Whether to add a bias. Default true.
    #[config(default = true)]
    pub bias: bool,
    /// How the parameters are initialised. Default Burn's:
    /// `KaimingUniform { gain: 1/sqrt(3), fan_out_only: false }`.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
    /// The layout the weight is stored in. Default row-major.
    #[config(default = "LinearLayout::Row")]
    pub layout: LinearLayout,
}

impl LinearConfig {
    /// A new layer, initialised exactly as [`burn::nn::LinearConfig::init`] would.
    pub fn init(&self, device: &Device) -> Linear {
        burn::nn::LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .with_layout(self.layout)
            .init(device)
            .into()
    }
}

/// `y = x·W + b`, plus `s·(dropout(x)·A)·B` when a LoRA [`Adapter`] is attached to `W`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_input, d_output]`; frozen when adapted.
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Applies the layer.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        match self.weight.reparameterization::<Adapter>() {
            Some(adapter) if adapter.is_active() => {
                let base = linear(x.clone(), self.weight.base(), bias); // [..., d_output]
                base + adapter.branch(x)
            }
            _ => linear(x, self.weight.val(), bias),
        }
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.weight.reparameterization::<Adapter>()
    }
}

impl From<burn::nn::Linear> for Linear {
    fn from(linear: burn::nn::Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
        }
    }
}

impl From<Linear> for burn::nn::Linear {
    fn from(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
        }
    }
}
