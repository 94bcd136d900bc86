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
//! Without an adapter, or with a disabled or merged one, both are a plain `x·W + b`. DoRA
//! adapters build `A·B` on both paths, for the weight norm, as PEFT does.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LinearLayout};
use burn::tensor::{Device, IndexingUpdateOp, Tensor};

use crate::adapter::Adapter;
use crate::dequant::float_weight;
use crate::few_rows::matmul_weight;
use crate::lora::Lora;
use crate::sites;

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
    /// Applies the layer: `x·W + b`, plus what each active adapter adds (see
    /// [`Adapter::forward_delta`]). While [`with_adapter_names`](crate::with_adapter_names)
    /// serves a mixed batch, each example gets its own adapter instead.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        // A quantized base (QLoRA) is dequantized for this pass only.
        let Some(adapter) = self.adapter() else {
            return frozen_linear(x, self.weight.val(), bias);
        };
        if let Some((names, per)) = sites::routed_names() {
            let weight = float_weight(self.weight.base());
            return forward_mixed(x, weight, bias, adapter, &names, per);
        }
        sites::note_unrouted(self.weight.id);
        if !adapter.is_active() {
            return frozen_linear(x, self.weight.val(), bias);
        }
        let weight = self.weight.base();
        let result = frozen_linear(x.clone(), weight.clone(), bias.clone()); // [..., d_output]
        let dora = adapter.computing().any(Lora::use_dora);
        let base = without_bias(&result, bias, dora);
        // LoRA alone reads neither `base` nor the weight; DoRA's norm reads it in float.
        let weight = match dora {
            true => float_weight(weight),
            false => weight,
        };
        let delta = adapter.forward_delta(x, &base, &weight);
        result + delta.expect("an active adapter computes")
    }

    /// The attached adapters, if any are left.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.weight
            .reparameterization::<Adapter>()
            .filter(|adapter| !adapter.loras().is_empty())
    }
}

/// `x·W` from `x·W + b`, as PEFT's DoRA takes it (`result - bias`), when `needed`; else
/// `result` as it is (nothing reads it).
fn without_bias<const D: usize>(
    result: &Tensor<D>,
    bias: Option<Tensor<1>>,
    needed: bool,
) -> Tensor<D> {
    match (bias, needed) {
        (Some(bias), true) => result.clone() - bias.unsqueeze(),
        _ => result.clone(),
    }
}

/// A mixed batch: `x·W + b` for every example, plus for each example the update of the
/// adapter `names` gives it (none for `__base__`, or for an adapter this layer lacks), as
/// PEFT's `_mixed_batch_forward`: each adapter computes on its own rows only. The leading
/// dimension is the batch; a 2-D input may also hold `per` rows per example, flattened
/// batch-major, when the call said so.
fn forward_mixed<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    adapter: &Adapter,
    names: &[String],
    per: usize,
) -> Tensor<D> {
    sites::note_routed();
    let mut result = linear(x.clone(), weight.clone(), bias.clone());
    if !adapter.is_enabled() {
        return result;
    }
    let rows_in = x.dims()[0];
    let per = match rows_in {
        n if n == names.len() => 1,
        n if D == 2 && per > 1 && n == names.len() * per => per,
        n => {
            sites::note_wrong_batch(n, names.len());
            return result;
        }
    };
    let dora = adapter.loras().iter().any(Lora::use_dora);
    let base = without_bias(&result, bias, dora);
    let device = x.device();
    for lora in adapter.loras() {
        let Some(rows) = sites::routed_rows(lora.name(), per, &device) else {
            continue;
        };
        let delta = lora.forward_delta(
            x.clone().select(0, rows.clone()),
            &base.clone().select(0, rows.clone()),
            &weight,
        );
        result = result.select_assign(0, rows, delta, IndexingUpdateOp::Add);
    }
    result
}

/// `x·W + b` for a weight that may be quantized (a frozen QLoRA base): through
/// [`frozen::matmul`](crate::frozen::matmul) where it serves (its backward pass keeps the
/// weight quantized), else [`linear`] on the weight dequantized for this pass only.
fn frozen_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    // A few rows (a decode step) keep `linear`'s threaded product.
    if D >= 2
        && rows > 16
        && let Some(y) = crate::frozen::matmul(x.clone().reshape([rows, d_in]), &weight, false)
    {
        let y = match bias {
            Some(bias) => y + bias.unsqueeze(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        return y.reshape(out);
    }
    linear(x, float_weight(weight), bias)
}

/// `x·W + b`: Burn's [`linear`](burn::tensor::module::linear), except that a product of a few
/// rows (a decode step) runs on every core of flex on Intel CPUs (see [`matmul_weight`]).
fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    if D < 2 || rows > 16 {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let y = matmul_weight(x.reshape([rows, d_in]), weight, false);
    let y = match bias {
        Some(bias) => y + bias.unsqueeze(),
        None => y,
    };
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
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
