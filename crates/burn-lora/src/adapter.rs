//! [`Adapter`]: a LoRA adapter attached to one weight through Burn's reparameterization
//! hook, so that any module holding a [`burn::nn::Linear`] can carry one without a change
//! to its type.
//!
//! Burn 0.22 lets a parameter carry a [`Reparameterization`]: `Param::val()` then returns
//! `apply(base)`, and the reparameterization's own parameters (here `A` and `B`) take part
//! in every traversal: optimizer, records, devices, autodiff. Two paths compute with it:
//!
//! - **dense**: a stock `Linear` calls `weight.val()`, which is `W + s·A·B`: correct, but it
//!   builds the `[d_in, d_out]` update on every forward (and its gradient on every backward),
//!   and it cannot apply dropout to the adapter's input.
//! - **factored**: [`crate::nn::Linear`] reads the adapter with
//!   `weight.reparameterization::<Adapter>()` and computes `x·W + s·(dropout(x)·A)·B`, never
//!   building `A·B`.
//!
//! An adapter's settings (enabled, merged) are plain fields. Burn traverses a
//! reparameterization only through [`Module::visit`] and [`Module::map`], so this module
//! reads and replaces adapters in whole models by hooking those two calls (see
//! [`adapters`](crate::adapters)).

use burn::module::{Devices, Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Distribution, Tensor};

use crate::config::{LoraConfig, LoraInit, scaling};
use crate::dropout::dropout;
use crate::sites;

/// The trainable part of an adapter: `A`, `B`, and the dropout on the adapter's input.
#[derive(Module, Debug)]
pub struct LoraFactors {
    /// Down-projection `A`, `[d_in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// Up-projection `B`, `[r, d_out]`; zero at initialisation.
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the adapter's input only; active only while training.
    pub dropout: Dropout,
}

/// A LoRA adapter on one `[d_in, d_out]` weight: `W' = W + s·A·B`, with `s = alpha / r` (or
/// `alpha / sqrt(r)` with rsLoRA).
///
/// Attached by [`apply_lora`](crate::apply_lora) or [`load_adapter`](crate::load_adapter);
/// read with `linear.weight.reparameterization::<Adapter>()`.
#[derive(Clone, Debug)]
pub struct Adapter {
    factors: LoraFactors,
    alpha: f64,
    use_rslora: bool,
    init: LoraInit,
    enabled: bool,
    merged: bool,
}

impl Adapter {
    /// A fresh adapter for a `[d_in, d_out]` weight of `dtype` on `device`: `A` initialised
    /// per `config.init`, `B = 0`, so the adapted weight starts equal to the base.
    pub fn new(dims: [usize; 2], dtype: DType, device: &Device, config: &LoraConfig) -> Self {
        let (a, b) = init_factors(dims, dtype, device, config);
        Self::from_factors(Param::from_tensor(a), Param::from_tensor(b), config)
    }

    /// An adapter with the given factors, `A` `[d_in, r]` and `B` `[r, d_out]`, and the
    /// scaling, dropout and init of `config` (its rank is read from `A`).
    fn from_factors(
        lora_a: Param<Tensor<2>>,
        lora_b: Param<Tensor<2>>,
        config: &LoraConfig,
    ) -> Self {
        Self {
            factors: LoraFactors {
                lora_a,
                lora_b,
                dropout: DropoutConfig::new(config.dropout).init(),
            },
            alpha: config.alpha,
            use_rslora: config.use_rslora,
            init: config.init,
            enabled: true,
            merged: false,
        }
    }

    /// `A`, `[d_in, r]`.
    pub fn lora_a(&self) -> &Param<Tensor<2>> {
        &self.factors.lora_a
    }

    /// `B`, `[r, d_out]`.
    pub fn lora_b(&self) -> &Param<Tensor<2>> {
        &self.factors.lora_b
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

    /// How `A` was initialised.
    pub fn init(&self) -> LoraInit {
        self.init
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank(), self.use_rslora)
    }

    /// Whether the adapter contributes (see [`set_adapters_enabled`](crate::set_adapters_enabled)).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the update is folded into the stored weight (see
    /// [`merge_adapters`](crate::merge_adapters)).
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Whether a forward pass must add the branch: enabled and not merged.
    pub fn is_active(&self) -> bool {
        self.enabled && !self.merged
    }

    pub(crate) fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    pub(crate) fn with_merged(mut self, merged: bool) -> Self {
        self.merged = merged;
        self
    }

    /// The low-rank update `s·A·B`, `[d_in, d_out]`: the one place it is built, used by the
    /// dense path, merge and unmerge.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.factors
            .lora_a
            .val()
            .matmul(self.factors.lora_b.val())
            .mul_scalar(self.scaling())
    }

    /// The factored branch `s·(dropout(x)·A)·B`, without building `A·B`.
    ///
    /// # Shapes
    ///
    /// - x: `[..., d_in]`
    /// - output: `[..., d_out]`
    pub fn branch<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        lora_branch(
            dropout(&self.factors.dropout, x),
            self.factors.lora_a.val(),
            self.factors.lora_b.val(),
            self.scaling(),
        )
    }
}

/// Fresh factors for a `[d_in, d_out]` weight of `dtype` on `device`: `A` `[d_in, r]`
/// initialised per `config.init`, `B` `[r, d_out]` zero.
pub(crate) fn init_factors(
    [d_in, d_out]: [usize; 2],
    dtype: DType,
    device: &Device,
    config: &LoraConfig,
) -> (Tensor<2>, Tensor<2>) {
    let rank = config.rank;
    let distribution = match config.init {
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
    // The factors meet the base in `W + s·A·B` and the activations in `x·A`: an f16 or bf16
    // base gets factors of its own precision.
    match dtype {
        DType::F32 => (a, b),
        dtype => (a.cast(dtype), b.cast(dtype)),
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

impl Reparameterization for Adapter {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        if !self.is_active() {
            return base;
        }
        let delta = self.delta_weight().reshape(base.shape());
        let base = match base.dtype() == delta.dtype() {
            true => base,
            false => base.cast(delta.dtype()),
        };
        base + delta
    }
}

impl Module for Adapter {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.factors.collect_devices(devices)
    }

    fn fork(self, device: &Device) -> Self {
        let factors = self.factors.clone().fork(device);
        Self { factors, ..self }
    }

    fn to_device(self, device: &Device) -> Self {
        let factors = self.factors.clone().to_device(device);
        Self { factors, ..self }
    }

    fn train(self) -> Self {
        let factors = self.factors.clone().train();
        Self { factors, ..self }
    }

    fn valid(&self) -> Self {
        Self {
            factors: self.factors.valid(),
            ..self.clone()
        }
    }

    fn materialize(self) -> Self {
        let factors = self.factors.clone().materialize();
        Self { factors, ..self }
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        sites::visited(self);
        self.factors.visit(visitor);
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let factors = self.factors.clone().map(mapper);
        sites::replacement().unwrap_or(Self { factors, ..self })
    }
}
