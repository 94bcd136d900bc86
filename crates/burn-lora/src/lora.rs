//! [`Lora`]: one named adapter of one weight. Its factors `A` `[d_in, r]` and `B`
//! `[r, d_out]` (and DoRA's magnitude), its scaling and dropout, and the maths: the delta
//! `s·A·B`, the factored branch `s·(dropout(x)·A)·B`, DoRA's norm, merge and unmerge.
//! [`Adapter`](crate::Adapter) holds the [`Lora`]s of a weight.
//!
//! Size: about 400 lines. The forward branch, DoRA's scale, merge and unmerge are one set
//! of formulas, each kept beside its inverse so that they stay consistent.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use crate::apply::LayerKind;
use crate::config::{LoraBias, LoraConfig, LoraInit, scaling};
use crate::dropout::{dropout, drops};

/// The trainable part of one adapter: `A`, `B`, DoRA's magnitude, and the dropout on the
/// adapter's input.
#[derive(Module, Debug)]
pub struct LoraFactors {
    /// Down-projection `A`, `[d_in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// Up-projection `B`, `[r, d_out]`; zero at initialisation.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's magnitude `m`, `[d_out]` (PEFT: `lora_magnitude_vector`); `None` for LoRA.
    pub lora_magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter's input only; active only while training.
    pub dropout: Dropout,
}

/// One named adapter on one weight: `s·A·B` with `s = alpha / r` (or `alpha / sqrt(r)` with
/// rsLoRA), and with DoRA a magnitude per output.
#[derive(Clone, Debug)]
pub struct Lora {
    pub(crate) name: String,
    pub(crate) factors: LoraFactors,
    pub(crate) alpha: f64,
    pub(crate) use_rslora: bool,
    pub(crate) init: LoraInit,
    /// The config's `modules_to_save`, as configured: what `save_adapter` writes beside the
    /// factors (never inferred from which parameters train).
    pub(crate) modules_to_save: Vec<String>,
    /// The config's `bias`: which biases train and are saved with this adapter.
    pub(crate) bias: LoraBias,
    /// DoRA, while merged: the weight norm the merge divided by, which unmerge needs
    /// (PEFT caches it the same way).
    pub(crate) merged_norm: Option<TensorData>,
    /// `[1]`: 1 while this adapter is merged into its weight, else 0. An int parameter, so
    /// Burn's records keep it beside the (merged) weight and a loaded record comes back
    /// merged; it is no float parameter, so no count or optimizer sees it.
    pub(crate) merged_mark: Param<Tensor<1, Int>>,
}

impl Lora {
    /// A fresh adapter named `name` for the weight `base` `[d_in, d_out]` (read rows first,
    /// see [`LayerKind`]) of a layer of kind `kind`: on a linear, `A` initialised per
    /// `config.init` and `B = 0`; on an embedding or a convolution, as PEFT initialises
    /// them, `A = 0` and `B` random. With `config.use_dora`, the magnitude `‖W‖` per output.
    /// The adapted weight starts equal to the base.
    ///
    /// The factors take `config.adapter_dtype` (f32 by default, whatever the base), and
    /// DoRA's magnitude is taken on the base's dequantized value.
    pub(crate) fn new(name: &str, base: &Tensor<2>, config: &LoraConfig, kind: LayerKind) -> Self {
        let dtype = config.adapter_dtype.resolve(base.dtype());
        let base = &base.clone().dequantize();
        let (a, b) = init_factors(base.dims(), dtype, &base.device(), config, kind);
        let magnitude = config.use_dora.then(|| {
            let magnitude = column_norm(base.clone().cast(a.dtype())).detach();
            Param::from_tensor(magnitude)
        });
        Self::from_factors(
            name,
            Param::from_tensor(a),
            Param::from_tensor(b),
            magnitude,
            config,
        )
    }

    /// An adapter with the given factors and the scaling, dropout and init of `config`.
    pub(crate) fn from_factors(
        name: &str,
        lora_a: Param<Tensor<2>>,
        lora_b: Param<Tensor<2>>,
        lora_magnitude: Option<Param<Tensor<1>>>,
        config: &LoraConfig,
    ) -> Self {
        let device = lora_a.lazy_device();
        Self {
            merged_mark: mark(false, &device),
            name: name.to_string(),
            factors: LoraFactors {
                lora_a,
                lora_b,
                lora_magnitude,
                dropout: DropoutConfig::new(config.dropout).init(),
            },
            alpha: config.alpha,
            use_rslora: config.use_rslora,
            init: config.init,
            modules_to_save: config.modules_to_save.clone(),
            bias: config.bias,
            merged_norm: None,
        }
    }

    /// The adapter's name (`default` unless given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `A`, `[d_in, r]`.
    pub fn lora_a(&self) -> &Param<Tensor<2>> {
        &self.factors.lora_a
    }

    /// `B`, `[r, d_out]`.
    pub fn lora_b(&self) -> &Param<Tensor<2>> {
        &self.factors.lora_b
    }

    /// DoRA's magnitude `m`, `[d_out]`; `None` for LoRA.
    pub fn magnitude(&self) -> Option<&Param<Tensor<1>>> {
        self.factors.lora_magnitude.as_ref()
    }

    /// Whether this is a DoRA adapter (PEFT: `use_dora`).
    pub fn use_dora(&self) -> bool {
        self.factors.lora_magnitude.is_some()
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.factors.lora_a.lazy_shape().dims::<2>()[1]
    }

    /// `alpha` (PEFT: `lora_alpha`).
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Whether the scale is `alpha / sqrt(r)` (PEFT: `use_rslora`).
    pub fn use_rslora(&self) -> bool {
        self.use_rslora
    }

    /// The dropout probability on the adapter's input (PEFT: `lora_dropout`).
    pub fn dropout_prob(&self) -> f64 {
        self.factors.dropout.prob
    }

    /// Which biases train and are saved with this adapter (PEFT: `bias`).
    pub fn bias(&self) -> LoraBias {
        self.bias
    }

    /// How `A` was initialised.
    pub fn init(&self) -> LoraInit {
        self.init
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank(), self.use_rslora)
    }

    /// The low-rank update `s·A·B`, `[d_in, d_out]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.factors
            .lora_a
            .val()
            .matmul(self.factors.lora_b.val())
            .mul_scalar(self.scaling())
    }

    /// DoRA's per-output factor `m / ‖W + s·A·B‖` for the base weight `weight`, the norm
    /// over each output's column and detached from the graph, as PEFT computes it.
    pub(crate) fn dora_scale(&self, weight: Tensor<2>, magnitude: &Param<Tensor<1>>) -> Tensor<1> {
        let norm = column_norm(weight.dequantize() + self.delta_weight().detach()).detach();
        magnitude.val() / norm
    }

    /// `current`, the stored weight, with this adapter folded in: `current + s·A·B`, or
    /// for DoRA `m / ‖W + s·A·B‖ · (current + s·A·B)`, the norm taken on the unmerged base
    /// `base` as PEFT takes it; with that norm, for DoRA.
    ///
    /// Computed in f32 whatever the weight's dtype, and returned in f32: the caller casts
    /// once, when it stores the weight, so a half-precision merge rounds once.
    pub(crate) fn merged_weight(
        &self,
        base: &Tensor<2>,
        current: Tensor<2>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let delta = self.delta_weight_f32();
        let current = current.cast(DType::F32);
        match &self.factors.lora_magnitude {
            None => (current + delta, None),
            Some(magnitude) => {
                let norm = column_norm(base.clone().cast(DType::F32) + delta.clone());
                let factor = magnitude.val().detach().cast(DType::F32) / norm.clone();
                ((current + delta) * factor.unsqueeze_dim(0), Some(norm))
            }
        }
    }

    /// Undoes [`merged_weight`](Self::merged_weight) on `weight`, in f32 as it does.
    pub(crate) fn unmerged_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        let delta = self.delta_weight_f32();
        let weight = weight.cast(DType::F32);
        match (&self.factors.lora_magnitude, &self.merged_norm) {
            (Some(magnitude), Some(norm)) => {
                let norm = Tensor::<1>::from_data(norm.clone(), &weight.device()).cast(DType::F32);
                let factor = magnitude.val().detach().cast(DType::F32) / norm;
                weight / factor.unsqueeze_dim(0) - delta
            }
            _ => weight - delta,
        }
    }

    /// `s·A·B` in f32, detached: what a merge adds.
    fn delta_weight_f32(&self) -> Tensor<2> {
        let a = self.factors.lora_a.val().detach().cast(DType::F32);
        let b = self.factors.lora_b.val().detach().cast(DType::F32);
        a.matmul(b).mul_scalar(self.scaling())
    }

    /// What this adapter adds to the output of the base layer.
    ///
    /// `base` is `x·W` without the bias, computed on the undropped `x`; `weight` is `W`.
    /// LoRA adds `s·(dropout(x)·A)·B`; DoRA adds, as PEFT's `DoraLinearLayer.forward`,
    /// `(g - 1)·x·W + g·s·(dropout(x)·A)·B` with `g = m / ‖W + s·A·B‖` (the `x·W` on the
    /// dropped `x` when dropout is active).
    ///
    /// # Shapes
    ///
    /// - x, base: `[..., d_in]`, `[..., d_out]`
    /// - output: `[..., d_out]`
    pub fn forward_delta<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        weight: &Tensor<2>,
    ) -> Tensor<D> {
        // The branch computes in the factors' dtype and answers in the input's, as PEFT's
        // `_cast_input_dtype` and `result.to(torch_result_dtype)` do.
        let out_dtype = x.dtype();
        let dtype = self.factors.lora_a.val().dtype();
        let dora = self.factors.lora_magnitude.is_some();
        let (x, base, weight) = match out_dtype == dtype || !dora {
            // LoRA alone reads neither `base` nor `weight`.
            true => (in_dtype(x, dtype), base.clone(), weight.clone()),
            false => (
                in_dtype(x, dtype),
                in_dtype(base.clone(), dtype),
                in_dtype(weight.clone().dequantize(), dtype),
            ),
        };
        in_dtype(self.forward_delta_in(x, base, weight), out_dtype)
    }

    /// [`forward_delta`](Self::forward_delta) with `x`, `base` and `weight` in the factors'
    /// dtype.
    fn forward_delta_in<const D: usize>(
        &self,
        x: Tensor<D>,
        base: Tensor<D>,
        weight: Tensor<2>,
    ) -> Tensor<D> {
        let dropping = drops(&self.factors.dropout, &x);
        let x = dropout(&self.factors.dropout, x);
        let lora = lora_branch(
            x.clone(),
            self.factors.lora_a.val(),
            self.factors.lora_b.val(),
            self.scaling(),
        );
        let Some(magnitude) = &self.factors.lora_magnitude else {
            return lora;
        };
        let scale = self.dora_scale(weight.clone(), magnitude);
        let base = match dropping {
            true => burn::tensor::module::linear(x, weight, None),
            false => base,
        };
        let scale = unsqueeze_to::<D>(scale);
        base * (scale.clone() - 1.0) + lora * scale
    }

    pub(crate) fn valid(&self) -> Self {
        Self {
            factors: self.factors.valid(),
            ..self.clone()
        }
    }
}

/// A merged mark (see [`Lora`]): `[1]`, 1 for merged.
pub(crate) fn mark(merged: bool, device: &Device) -> Param<Tensor<1, Int>> {
    Param::initialized(
        burn::module::ParamId::new(),
        Tensor::from_data(TensorData::new(vec![i64::from(merged)], [1]), device),
    )
}

/// `[d_out]` reshaped to `[1, ..., 1, d_out]` for broadcasting over `[..., d_out]`.
fn unsqueeze_to<const D: usize>(v: Tensor<1>) -> Tensor<D> {
    let mut dims = [1usize; D];
    dims[D - 1] = v.dims()[0];
    v.reshape(dims)
}

/// The L2 norm of each column of `w` `[d_in, d_out]`: `[d_out]`, one per output, which is
/// PEFT's `torch.linalg.norm(weight, dim=1)` over its `[d_out, d_in]` layout.
pub(crate) fn column_norm(w: Tensor<2>) -> Tensor<1> {
    w.powi_scalar(2).sum_dim(0).sqrt().squeeze_dim(0)
}

impl Lora {
    /// This adapter with its factors (and magnitude) trainable or frozen.
    pub(crate) fn with_trainable(mut self, trainable: bool) -> Self {
        let f = &mut self.factors;
        f.lora_a = f.lora_a.clone().set_require_grad(trainable);
        f.lora_b = f.lora_b.clone().set_require_grad(trainable);
        f.lora_magnitude = f
            .lora_magnitude
            .take()
            .map(|m| m.set_require_grad(trainable));
        self
    }

    pub(crate) fn set_merged_norm(&mut self, norm: Option<TensorData>) {
        self.merged_norm = norm;
    }
}

/// Fresh factors of `dtype` for a `[d_in, d_out]` weight on `device`: `A` `[d_in, r]`
/// initialised per `config.init`, `B` `[r, d_out]` zero. On an embedding, `A` is zero and
/// `B ~ N(0, 1)` (PEFT's `lora_embedding_A` zero, `lora_embedding_B` normal, whatever
/// `init_lora_weights`); on a convolution, `A` (PEFT's `lora_B`) is zero and `B` (PEFT's
/// `lora_A`, fan-in `channels_in · kernel`) initialised per `config.init`.
pub(crate) fn init_factors(
    [d_in, d_out]: [usize; 2],
    dtype: DType,
    device: &Device,
    config: &LoraConfig,
    kind: LayerKind,
) -> (Tensor<2>, Tensor<2>) {
    let rank = config.rank;
    let (a, b) = match kind {
        LayerKind::Linear => linear_factors([d_in, d_out], rank, device, config.init),
        LayerKind::Embedding => (
            Tensor::<2>::zeros([d_in, rank], device),
            Tensor::<2>::random([rank, d_out], Distribution::Normal(0.0, 1.0), device),
        ),
        LayerKind::Conv => {
            // PEFT's `lora_A` is `[r, fan_in]`: our `B`, drawn as its transpose would be.
            let (b_t, a_t) = linear_factors([d_out, d_in], rank, device, config.init);
            (a_t.transpose(), b_t.transpose())
        }
    };
    match dtype {
        DType::F32 => (a, b),
        dtype => (a.cast(dtype), b.cast(dtype)),
    }
}

/// `A` `[d_in, r]` per `init` and `B` `[r, d_out]` zero, in f32.
fn linear_factors(
    [d_in, d_out]: [usize; 2],
    rank: usize,
    device: &Device,
    init: LoraInit,
) -> (Tensor<2>, Tensor<2>) {
    let distribution = match init {
        // kaiming_uniform(a = sqrt(5)) has bound gain·sqrt(3 / fan_in) with
        // gain = sqrt(2 / (1 + 5)), which is 1 / sqrt(fan_in).
        LoraInit::KaimingUniform => {
            let bound = 1.0 / (d_in as f64).sqrt();
            Distribution::Uniform(-bound, bound)
        }
        LoraInit::Gaussian => Distribution::Normal(0.0, 1.0 / rank as f64),
    };
    let a = Tensor::<2>::random([d_in, rank], distribution, device);
    let b = Tensor::<2>::zeros([rank, d_out], device);
    (a, b)
}

/// `tensor` in `dtype`: itself when it already is.
pub(crate) fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: DType) -> Tensor<D> {
    match tensor.dtype() == dtype {
        true => tensor,
        false => tensor.cast(dtype),
    }
}

/// `s·(x·A)·B`. Scaling the rank-r intermediate rather than the output touches r values per
/// token instead of d_out; the product is the same.
pub(crate) fn lora_branch<const D: usize>(
    x: Tensor<D>,
    a: Tensor<2>,
    b: Tensor<2>,
    scaling: f64,
) -> Tensor<D> {
    let down = burn::tensor::module::linear(x, a, None); // [..., r]
    burn::tensor::module::linear(down.mul_scalar(scaling), b, None) // [..., d_out]
}
