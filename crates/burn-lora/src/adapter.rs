//! [`Adapter`]: the LoRA adapters attached to one weight through Burn's reparameterization
//! hook, so that any module holding a [`burn::nn::Linear`] can carry them without a change
//! to its type.
//!
//! Burn 0.22 lets a parameter carry one [`Reparameterization`]: `Param::val()` then returns
//! `apply(base)`, and the reparameterization's own parameters take part in every traversal:
//! optimizer, records, devices, autodiff. Burn allows one per parameter, so an [`Adapter`]
//! holds every named adapter of its weight ([`Lora`]s: `default`, `pos`, ...) and which of
//! them are active. Two paths compute with it:
//!
//! - **dense**: a stock `Linear` calls `weight.val()`, which is `W + Σ s·A·B` over the active
//!   adapters (for DoRA, `m / ‖W + s·A·B‖ · (W + s·A·B)`): correct, but it builds the
//!   `[d_in, d_out]` update on every forward (and its gradient on every backward), and it
//!   cannot apply dropout to the adapter's input.
//! - **factored**: [`crate::nn::Linear`] reads the adapter with
//!   `weight.reparameterization::<Adapter>()` and computes `x·W + Σ s·(dropout(x)·A)·B`, never
//!   building `A·B` for LoRA; it is also the path that serves mixed batches
//!   ([`with_adapter_names`](crate::with_adapter_names)).
//!
//! An adapter's settings (names, active set, enabled, merged) are plain fields. Burn
//! traverses a reparameterization only through [`Module::visit`] and [`Module::map`], so
//! this crate reads and replaces adapters in whole models by hooking those two calls (see
//! [`adapters`](crate::adapters)).

use burn::module::{Devices, Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};

use crate::config::{LoraConfig, LoraInit, scaling};
use crate::dropout::{dropout, drops};
use crate::sites;

/// The name an adapter gets when none is given, as in PEFT.
pub const DEFAULT_ADAPTER: &str = "default";

/// The name that selects no adapter in a mixed batch, as in PEFT's `adapter_names`.
pub const BASE_ADAPTER: &str = "__base__";

/// The container type an [`Adapter`] enters each named adapter with.
pub(crate) const NAMED: &str = "Adapters";

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
    name: String,
    factors: LoraFactors,
    alpha: f64,
    use_rslora: bool,
    init: LoraInit,
    /// DoRA, while merged: the weight norm the merge divided by, which unmerge needs
    /// (PEFT caches it the same way).
    merged_norm: Option<TensorData>,
}

impl Lora {
    /// A fresh adapter named `name` for the weight `base` `[d_in, d_out]`: `A` initialised
    /// per `config.init`, `B = 0`, and with `config.use_dora` the magnitude `‖W‖` per output,
    /// so the adapted weight starts equal to the base.
    pub(crate) fn new(name: &str, base: &Tensor<2>, config: &LoraConfig) -> Self {
        let (a, b) = init_factors(base.dims(), base.dtype(), &base.device(), config);
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
        Self {
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
    fn dora_scale(&self, weight: Tensor<2>, magnitude: &Param<Tensor<1>>) -> Tensor<1> {
        let norm = column_norm(weight + self.delta_weight().detach()).detach();
        magnitude.val() / norm
    }

    /// `current`, the stored weight, with this adapter folded in: `current + s·A·B`, or
    /// for DoRA `m / ‖W + s·A·B‖ · (current + s·A·B)`, the norm taken on the unmerged base
    /// `base` as PEFT takes it; with that norm, for DoRA.
    pub(crate) fn merged_weight(
        &self,
        base: &Tensor<2>,
        current: Tensor<2>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let delta = self.delta_weight().detach().cast(current.dtype());
        match &self.factors.lora_magnitude {
            None => (current + delta, None),
            Some(magnitude) => {
                let norm = column_norm(base.clone().cast(current.dtype()) + delta.clone());
                let factor = magnitude.val().detach().cast(current.dtype()) / norm.clone();
                ((current + delta) * factor.unsqueeze_dim(0), Some(norm))
            }
        }
    }

    /// Undoes [`merged_weight`](Self::merged_weight) on `weight`.
    pub(crate) fn unmerged_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        let delta = self.delta_weight().detach().cast(weight.dtype());
        match (&self.factors.lora_magnitude, &self.merged_norm) {
            (Some(magnitude), Some(norm)) => {
                let norm =
                    Tensor::<1>::from_data(norm.clone(), &weight.device()).cast(weight.dtype());
                let factor = magnitude.val().detach().cast(weight.dtype()) / norm;
                weight / factor.unsqueeze_dim(0) - delta
            }
            _ => weight - delta,
        }
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
            true => burn::tensor::module::linear(x, weight.clone(), None),
            false => base.clone(),
        };
        let scale = unsqueeze_to::<D>(scale);
        base * (scale.clone() - 1.0) + lora * scale
    }

    fn valid(&self) -> Self {
        Self {
            factors: self.factors.valid(),
            ..self.clone()
        }
    }
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

/// The adapters on one weight: every named [`Lora`], which of them are active, and whether
/// they are enabled or merged.
///
/// Attached by [`apply_lora`](crate::apply_lora), [`add_adapter`](crate::add_adapter) or
/// [`load_adapter`](crate::load_adapter); read with
/// `linear.weight.reparameterization::<Adapter>()`. With one adapter, the usual case, the
/// accessors `lora_a`, `rank`, `alpha`, ... read it; with several, they read the first
/// active one (see [`get`](Self::get) for the others).
///
/// A holder whose adapters were all deleted while the model keeps others is empty: it
/// computes the base, [`adapters`](crate::adapters) and `nn::Linear::adapter` skip it, and
/// its single-adapter accessors panic (check [`loras`](Self::loras) first when reading
/// `reparameterization::<Adapter>()` directly).
#[derive(Clone, Debug)]
pub struct Adapter {
    loras: Vec<Lora>,
    active: Vec<String>,
    enabled: bool,
    merged: Vec<String>,
}

impl Adapter {
    /// A holder with one fresh, active adapter named `default` for the weight `base`
    /// `[d_in, d_out]` (see [`LoraConfig`]): what [`apply_lora`](crate::apply_lora) attaches
    /// to each target, for building a reparameterization of one's own.
    pub fn new(base: &Tensor<2>, config: &LoraConfig) -> Self {
        let lora = Lora::new(DEFAULT_ADAPTER, base, config);
        Self::with_lora(lora, vec![DEFAULT_ADAPTER.to_string()])
    }

    /// An adapter holding `lora`, with `active` the model's active adapters.
    pub(crate) fn with_lora(lora: Lora, active: Vec<String>) -> Self {
        Self {
            loras: vec![lora],
            active,
            enabled: true,
            merged: Vec::new(),
        }
    }

    /// Every named adapter on this weight, in the order they were added.
    pub fn loras(&self) -> &[Lora] {
        &self.loras
    }

    /// The adapter named `name`, if this weight has one.
    pub fn get(&self, name: &str) -> Option<&Lora> {
        self.loras.iter().find(|l| l.name == name)
    }

    /// The names of the adapters on this weight.
    pub fn names(&self) -> Vec<String> {
        self.loras.iter().map(|l| l.name.clone()).collect()
    }

    /// The model's active adapters (PEFT: `active_adapters`): their updates add.
    pub fn active_names(&self) -> &[String] {
        &self.active
    }

    /// The adapter the single-adapter accessors read: the first active one on this weight,
    /// or the first one when none is active.
    pub fn primary(&self) -> &Lora {
        self.loras
            .iter()
            .find(|l| self.active.contains(&l.name))
            .unwrap_or(&self.loras[0])
    }

    /// `A` of [`primary`](Self::primary), `[d_in, r]`.
    pub fn lora_a(&self) -> &Param<Tensor<2>> {
        self.primary().lora_a()
    }

    /// `B` of [`primary`](Self::primary), `[r, d_out]`.
    pub fn lora_b(&self) -> &Param<Tensor<2>> {
        self.primary().lora_b()
    }

    /// The rank of [`primary`](Self::primary).
    pub fn rank(&self) -> usize {
        self.primary().rank()
    }

    /// The alpha of [`primary`](Self::primary).
    pub fn alpha(&self) -> f64 {
        self.primary().alpha()
    }

    /// Whether [`primary`](Self::primary) uses rsLoRA.
    pub fn use_rslora(&self) -> bool {
        self.primary().use_rslora()
    }

    /// The dropout of [`primary`](Self::primary).
    pub fn dropout_prob(&self) -> f64 {
        self.primary().dropout_prob()
    }

    /// The init of [`primary`](Self::primary).
    pub fn init(&self) -> LoraInit {
        self.primary().init()
    }

    /// The scaling of [`primary`](Self::primary).
    pub fn scaling(&self) -> f64 {
        self.primary().scaling()
    }

    /// The update `s·A·B` of [`primary`](Self::primary), `[d_in, d_out]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.primary().delta_weight()
    }

    /// Whether the adapters contribute (see [`set_adapters_enabled`](crate::set_adapters_enabled)).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether an update is folded into the stored weight (see
    /// [`merge_adapters`](crate::merge_adapters)).
    pub fn is_merged(&self) -> bool {
        !self.merged.is_empty()
    }

    /// The names of the adapters folded into the stored weight, in merge order.
    pub fn merged_names(&self) -> &[String] {
        &self.merged
    }

    /// Whether a forward pass must add a branch: enabled, and an active adapter on this
    /// weight is not merged.
    pub fn is_active(&self) -> bool {
        self.enabled && self.computing().next().is_some()
    }

    /// The adapters a forward pass adds: active and not merged (none when disabled).
    pub fn computing(&self) -> impl Iterator<Item = &Lora> {
        self.loras.iter().filter(move |l| {
            self.enabled && self.active.contains(&l.name) && !self.merged.contains(&l.name)
        })
    }

    /// What the active adapters add to the base output `base` (`x·W`, no bias) of `x`; see
    /// [`Lora::forward_delta`]. `None` when none computes.
    pub fn forward_delta<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        weight: &Tensor<2>,
    ) -> Option<Tensor<D>> {
        self.computing()
            .map(|lora| lora.forward_delta(x.clone(), base, weight))
            .reduce(|a, b| a + b)
    }

    pub(crate) fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    pub(crate) fn with_active(mut self, active: Vec<String>) -> Self {
        self.active = active;
        self
    }

    pub(crate) fn with_merged(mut self, merged: Vec<String>) -> Self {
        self.merged = merged;
        self
    }

    pub(crate) fn push(mut self, lora: Lora) -> Self {
        self.loras.push(lora);
        self
    }

    /// This holder without the adapter named `name` (left empty when it was the last:
    /// it then computes nothing, and [`adapters`](crate::adapters) skips it).
    pub(crate) fn without(mut self, name: &str) -> Self {
        self.loras.retain(|l| l.name != name);
        self.active.retain(|n| n != name);
        self
    }

    pub(crate) fn loras_mut(&mut self) -> &mut Vec<Lora> {
        &mut self.loras
    }
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
        sites::note_dense_use();
        let mut loras = self.computing().peekable();
        let Some(first) = loras.peek() else {
            return base;
        };
        let shape = base.shape();
        let [d_in, _] = first.factors.lora_a.lazy_shape().dims::<2>();
        let d_out = first.factors.lora_b.lazy_shape().dims::<2>()[1];
        let dtype = first.factors.lora_a.val().dtype();
        let weight = match base.dtype() == dtype {
            true => base,
            false => base.cast(dtype),
        }
        .reshape([d_in, d_out]);
        let mut out = weight.clone();
        for lora in loras {
            let delta = lora.delta_weight();
            out = match &lora.factors.lora_magnitude {
                None => out + delta,
                Some(magnitude) => {
                    let scale = lora.dora_scale(weight.clone(), magnitude);
                    out + (weight.clone() + delta) * scale.unsqueeze_dim(0) - weight.clone()
                }
            };
        }
        out.reshape(shape)
    }
}

impl Module for Adapter {
    fn collect_devices(&self, mut devices: Devices) -> Devices {
        for lora in &self.loras {
            devices = lora.factors.collect_devices(devices);
        }
        devices
    }

    fn fork(mut self, device: &Device) -> Self {
        for lora in &mut self.loras {
            lora.factors = lora.factors.clone().fork(device);
        }
        self
    }

    fn to_device(mut self, device: &Device) -> Self {
        for lora in &mut self.loras {
            lora.factors = lora.factors.clone().to_device(device);
        }
        self
    }

    fn train(mut self) -> Self {
        for lora in &mut self.loras {
            lora.factors = lora.factors.clone().train();
        }
        self
    }

    fn valid(&self) -> Self {
        Self {
            loras: self.loras.iter().map(Lora::valid).collect(),
            ..self.clone()
        }
    }

    fn materialize(mut self) -> Self {
        for lora in &mut self.loras {
            lora.factors = lora.factors.clone().materialize();
        }
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        sites::visited(self);
        for lora in &self.loras {
            visitor.enter_module(&lora.name, NAMED);
            lora.factors.visit(visitor);
            visitor.exit_module(&lora.name, NAMED);
        }
    }

    fn map<M: ModuleMapper>(mut self, mapper: &mut M) -> Self {
        for lora in &mut self.loras {
            mapper.enter_module(&lora.name, NAMED);
            lora.factors = lora.factors.clone().map(mapper);
            mapper.exit_module(&lora.name, NAMED);
        }
        sites::replacement().unwrap_or(self)
    }
}
