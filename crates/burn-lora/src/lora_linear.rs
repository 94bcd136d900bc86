//! [`LoraLinear`]: a frozen [`Linear`] plus a trainable low-rank branch.
//!
//! `h = x·W + b + s·dropout(x)·A·B`, with `W` `[d_in, d_out]` and `b` frozen, `A` `[d_in, r]`,
//! `B` `[r, d_out]`, and `s = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). `B` starts at zero,
//! so at initialisation the layer computes exactly what the base layer computes.
//!
//! This is the one-layer API: a layer of its own type, with `A` and `B` as fields. To adapt
//! linears inside a whole model without changing its types, use
//! [`apply_lora`](crate::apply_lora), which attaches an [`Adapter`](crate::Adapter) to each
//! target's weight instead.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::module::linear;
use burn::tensor::{DType, Tensor};

use crate::Error;
use crate::apply::LayerKind;
use crate::config::{LoraConfig, scaling};
use crate::dropout::dropout;
use crate::lora::{in_dtype, init_factors, lora_branch};

/// A linear layer with a LoRA adapter inside it.
///
/// Read and set the factors through the public fields: `lora_a` is `A` `[d_in, r]` and
/// `lora_b` is `B` `[r, d_out]` (Burn's `[d_in, d_out]` layout; PEFT stores their
/// transposes), e.g. `layer.lora_b = Param::from_tensor(b)`.
///
/// `weight` and `bias` have the names and layout of [`burn::nn::Linear`], so a record saved
/// from a model built with plain `Linear` loads into the same model built with `LoraLinear`
/// (load it partially: the record holds no `lora_a` / `lora_b`).
///
/// The forward pass computes `(dropout(x)·A)·B` and never builds the `[d_in, d_out]` update
/// `A·B`: for `r ≪ d` that is both cheaper and lighter, which is the point of LoRA. Only
/// [`delta_weight`](Self::delta_weight), used by merge and unmerge, builds it.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Frozen base weight, `[d_in, d_out]`.
    pub weight: Param<Tensor<2>>,
    /// Frozen base bias, `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Trainable down-projection `A`, `[d_in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// Trainable up-projection `B`, `[r, d_out]`; zero at initialisation.
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the adapter's input only; active only while training.
    pub lora_dropout: Dropout,
    /// Scaling numerator (PEFT: `lora_alpha`).
    pub alpha: f64,
    /// Whether the scale is `alpha / sqrt(r)` (PEFT: `use_rslora`).
    pub use_rslora: bool,
    /// When false, the layer computes exactly its base output.
    pub adapter_enabled: bool,
}

impl LoraLinear {
    /// Wraps `linear` in a LoRA adapter: freezes its weight and bias and adds fresh factors
    /// on the weight's device (`A` initialised per `config.init`, `B = 0`).
    ///
    /// # Errors
    ///
    /// Any invalid field of `config`, including a rank above `min(d_in, d_out)`.
    pub fn from_linear(linear: Linear, config: &LoraConfig) -> Result<Self, Error> {
        Self::from_linear_at(linear, config, "")
    }

    /// [`from_linear`](Self::from_linear), naming the layer's module path in errors.
    pub(crate) fn from_linear_at(
        linear: Linear,
        config: &LoraConfig,
        path: &str,
    ) -> Result<Self, Error> {
        let [d_in, d_out] = linear.weight.dims();
        config.validate_for_layer(d_in, d_out, path)?;
        if config.use_dora {
            return Err(Error::NotOffered(
                "LoraLinear is plain LoRA: for DoRA, use apply_lora on a model with burn_lora::nn::Linear".into(),
            ));
        }
        let device = linear.weight.device();
        let dtype = config.adapter_dtype.resolve(linear.weight.val().dtype());
        let (lora_a, lora_b) =
            init_factors([d_in, d_out], dtype, &device, config, LayerKind::Linear);
        Ok(Self {
            weight: linear.weight.set_require_grad(false),
            bias: linear.bias.map(|bias| bias.set_require_grad(false)),
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            lora_dropout: DropoutConfig::new(config.dropout).init(),
            alpha: config.alpha,
            use_rslora: config.use_rslora,
            adapter_enabled: true,
        })
    }

    /// Rebuilds the adapter from a merged layer and the factors it was merged with:
    /// `W = W_merged - s·A·B`. This is how a merge is undone.
    ///
    /// # Errors
    ///
    /// A factor whose shape does not fit the layer or `config.rank`, or an invalid config.
    pub fn from_merged(
        merged: Linear,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        config: &LoraConfig,
    ) -> Result<Self, Error> {
        let [d_in, d_out] = merged.weight.dims();
        config.validate_for_layer(d_in, d_out, "")?;
        check_shape("lora_a", &[d_in, config.rank], &lora_a.dims())?;
        check_shape("lora_b", &[config.rank, d_out], &lora_b.dims())?;
        let mut layer = Self::from_linear(merged, config)?;
        layer.lora_a = Param::from_tensor(lora_a);
        layer.lora_b = Param::from_tensor(lora_b);
        let delta = layer.delta_weight().detach();
        layer.weight = layer.weight.map(|weight| add_in_f32(weight, delta.neg()));
        Ok(layer)
    }

    /// Applies the layer.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_in]`
    /// - output: `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|bias| bias.val());
        let base = linear(x.clone(), self.weight.val(), bias); // [..., d_out]
        if !self.adapter_enabled {
            return base;
        }
        // In the factors' dtype, answered in the input's (PEFT's autocast).
        let out_dtype = x.dtype();
        let x = in_dtype(dropout(&self.lora_dropout, x), self.lora_a.val().dtype());
        let branch = lora_branch(x, self.lora_a.val(), self.lora_b.val(), self.scaling());
        base + in_dtype(branch, out_dtype)
    }

    /// The factor the branch is multiplied by: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank(), self.use_rslora)
    }

    /// The adapter's rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// The low-rank update `s·A·B`, `[d_in, d_out]`: the one place it is built, used by
    /// merge and unmerge.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.scaling())
    }

    /// Returns the layer with its adapter switched on or off. Switched off, the layer
    /// computes exactly its base output; the factors are kept.
    pub fn with_adapter_enabled(mut self, enabled: bool) -> Self {
        self.adapter_enabled = enabled;
        self
    }

    /// Folds the update into the weight: a plain [`Linear`] with `W + s·A·B` (or `W` alone
    /// when the adapter is disabled), which computes what this layer computes. The merged
    /// weight keeps the base weight's id and stays frozen.
    ///
    /// Use [`try_merge`](Self::try_merge) to refuse non-finite factors.
    pub fn merge(self) -> Linear {
        let weight = match self.adapter_enabled {
            true => {
                let delta = self.delta_weight().detach();
                self.weight
                    .map(|weight| add_in_f32(weight, delta).detach())
                    .set_require_grad(false)
            }
            false => self.weight,
        };
        Linear {
            weight,
            bias: self.bias,
        }
    }

    /// [`merge`](Self::merge), but refuses factors that hold NaN or infinity (PEFT's
    /// `safe_merge`), naming the layer.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] when `A` or `B` is not finite.
    pub fn try_merge(self) -> Result<Linear, Error> {
        self.check_finite("")?;
        Ok(self.merge())
    }

    /// Errors when either factor holds NaN or infinity.
    pub(crate) fn check_finite(&self, layer: &str) -> Result<(), Error> {
        if all_finite(&self.lora_a.val()) && all_finite(&self.lora_b.val()) {
            Ok(())
        } else {
            Err(Error::NonFinite {
                layer: layer.to_string(),
            })
        }
    }
}

/// `weight + delta` computed in f32 and stored in `weight`'s dtype: one rounding on a
/// half-precision weight, whatever the factors' dtype.
fn add_in_f32(weight: Tensor<2>, delta: Tensor<2>) -> Tensor<2> {
    let dtype = weight.dtype();
    in_dtype(
        in_dtype(weight, DType::F32) + in_dtype(delta, DType::F32),
        dtype,
    )
}

/// Whether every value of `tensor` is finite, checked on the tensor's device (one boolean
/// comes back to the host).
pub(crate) fn all_finite<const D: usize>(tensor: &Tensor<D>) -> bool {
    let bad = tensor.clone().is_nan().any().into_scalar::<bool>()
        || tensor.clone().is_inf().any().into_scalar::<bool>();
    !bad
}

/// Errors with [`Error::ShapeMismatch`] unless `found == expected`.
pub(crate) fn check_shape(key: &str, expected: &[usize], found: &[usize]) -> Result<(), Error> {
    if expected == found {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        key: key.to_string(),
        expected: expected.to_vec(),
        found: found.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, TensorData, Tolerance};

    #[test]
    fn forward_adds_scaled_low_rank_branch() {
        let device = Device::flex();
        let linear = LinearConfig::new(2, 2)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init(&device);
        let config = LoraConfig::new().with_rank(1).with_alpha(2.0);
        let mut layer = LoraLinear::from_linear(linear, &config).unwrap();
        layer.lora_a = Param::from_data([[1.0], [2.0]], &device);
        layer.lora_b = Param::from_data([[3.0, 4.0]], &device);
        // x·A = 1·1 + 1·2 = 3; ·B = [9, 12]; ·(alpha / r = 2) = [18, 24].
        let out = layer.forward(Tensor::<2>::ones([1, 2], &device));
        out.into_data()
            .assert_approx_eq::<f32>(&TensorData::from([[18.0, 24.0]]), Tolerance::default());
    }
}
