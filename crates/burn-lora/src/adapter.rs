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
//! An adapter's settings (names, active set, enabled, merged) are plain fields, which Burn's
//! records do not keep; the merged state is also kept as an int parameter per adapter
//! (`<name>.merged`, `[1]`), so that a merged model saved with `save_file`/`into_record`
//! and loaded onto a freshly adapted model comes back merged instead of adding its update
//! a second time. (A DoRA adapter loaded merged cannot unmerge exactly: the weight norm it
//! merged with is not in the record.) Burn
//! traverses a reparameterization only through [`Module::visit`] and [`Module::map`], so
//! this crate reads and replaces adapters in whole models by hooking those two calls (see
//! [`adapters`](crate::adapters)).
//!
//! Size: about 370 lines: the holder, and the two Burn traits it implements, which must
//! agree field by field.

use burn::module::{Devices, Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::tensor::{Device, Tensor};

use crate::config::{LoraConfig, LoraInit};
use crate::lora::Lora;
use crate::sites;

/// The name an adapter gets when none is given, as in PEFT.
pub const DEFAULT_ADAPTER: &str = "default";

/// The name that selects no adapter in a mixed batch, as in PEFT's `adapter_names`.
pub const BASE_ADAPTER: &str = "__base__";

/// The container type an [`Adapter`] enters each named adapter with.
pub(crate) const NAMED: &str = "Adapters";
/// The field under which each named adapter's merged mark is recorded.
const MERGED: &str = "merged";
/// Its container type.
const MERGED_TYPE: &str = "Struct:MergedMark";

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
        let lora = Lora::new(
            DEFAULT_ADAPTER,
            base,
            config,
            crate::apply::LayerKind::Linear,
        );
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
        for lora in &mut self.loras {
            let device = lora.merged_mark.lazy_device();
            lora.merged_mark = crate::lora::mark(merged.contains(&lora.name), &device);
        }
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

impl Reparameterization for Adapter {
    /// Our own name, not Burn's LoRA's `lora`: the two can meet in one model.
    const NAME: &'static str = "burn_lora";

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
        // A quantized base is dequantized for this pass only: at rest it stays quantized.
        let base = crate::dequant::float_weight(base);
        // The adapted weight is computed in the factors' dtype and handed on in the base's.
        let out_dtype = base.dtype();
        let weight = crate::lora::in_dtype(base, dtype).reshape([d_in, d_out]);
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
        crate::lora::in_dtype(out.reshape(shape), out_dtype)
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
            lora.merged_mark = lora.merged_mark.clone().fork(device);
        }
        self
    }

    fn to_device(mut self, device: &Device) -> Self {
        for lora in &mut self.loras {
            lora.factors = lora.factors.clone().to_device(device);
            lora.merged_mark = lora.merged_mark.clone().to_device(device);
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
            visitor.enter_module(MERGED, MERGED_TYPE);
            visitor.visit_int(&lora.merged_mark);
            visitor.exit_module(MERGED, MERGED_TYPE);
            visitor.exit_module(&lora.name, NAMED);
        }
    }

    fn map<M: ModuleMapper>(mut self, mapper: &mut M) -> Self {
        let mut marks_changed = false;
        for lora in &mut self.loras {
            mapper.enter_module(&lora.name, NAMED);
            lora.factors = lora.factors.clone().map(mapper);
            mapper.enter_module(MERGED, MERGED_TYPE);
            let mark = mapper.map_int(lora.merged_mark.clone());
            // A mapper that only moves or steps keeps the mark's id; loading a record gives
            // it the recorded one. Comparing ids costs no read from the device.
            marks_changed |= mark.id != lora.merged_mark.id;
            lora.merged_mark = mark;
            mapper.exit_module(MERGED, MERGED_TYPE);
            mapper.exit_module(&lora.name, NAMED);
        }
        if let Some(replacement) = sites::replacement() {
            return replacement;
        }
        if marks_changed {
            // A record was loaded: the merged state is the record's.
            self.merged = self
                .loras
                .iter()
                .filter(|l| l.merged_mark.val().into_data().iter::<i64>().next() == Some(1))
                .map(|l| l.name.clone())
                .collect();
        }
        self
    }
}
