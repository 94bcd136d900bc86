//! Adapters after they are attached: which parameters train ([`set_lora_trainable`]),
//! merging ([`merge_lora`], [`merge_adapters`], [`unmerge_adapters`]), switching them off
//! ([`set_adapters_enabled`]), and the named set ([`list_adapters`], [`active_adapters`],
//! [`set_active_adapters`], [`delete_adapter`]).
//!
//! Size: about 370 lines: each public function is short, and they share the traversals
//! that find trainable and quantized parameters, kept here beside their callers.

use std::collections::HashSet;

use burn::module::{Module, Param, ParamGroup, ParamId};
use burn::tensor::Tensor;

use crate::Error;
use crate::config::{LoraBias, within_any};
use crate::lora_linear::all_finite;
use crate::path::{OnParam, PathStack, join_path, visit_params};
use crate::sites::{adapters, replace_adapters};

/// Freezes every parameter except the LoRA factors and the parameters of
/// `modules_to_save`, using Burn's own gradient flags ([`Module::set_require_grad`] and
/// [`ParamGroup`]). On a model without adapters this is head-only training: only
/// `modules_to_save` learns.
///
/// # Errors
///
/// `modules_to_save` is not empty and none of its names matches a parameter (names that
/// match nothing are skipped when another matches, as PEFT does).
pub fn set_lora_trainable<M: Module>(model: M, modules_to_save: &[String]) -> Result<M, Error> {
    set_trainable_renamed(model, modules_to_save, &|path| path.to_string())
}

/// [`set_lora_trainable`] with `modules_to_save` matched against renamed module paths.
pub(crate) fn set_trainable_renamed<M: Module>(
    model: M,
    modules_to_save: &[String],
    rename: &dyn Fn(&str) -> String,
) -> Result<M, Error> {
    // Without an `Adapter` (LoraLinear, or an adapter wrapped in a reparameterization of
    // another name) every factor trains.
    let active: Option<Vec<String>> = adapters(&model)
        .first()
        .map(|(_, a)| a.active_names().to_vec());
    let mut trainable = active_factor_ids(&model, active.as_deref());
    let biases = TrainedBiases::of(&model, |name| {
        active.as_ref().is_none_or(|a| a.iter().any(|n| n == name))
    });
    trainable.extend(param_ids(&model, |module, name| {
        biases.contains(module, name)
    }));
    trainable.extend(param_ids(&model, |module, _| {
        within_any(&rename(module), modules_to_save)
    }));
    // PEFT lists candidates (`["classifier", "score"]` for sequence classification) and
    // keeps those that exist; a list none of whose names exists is a mistake.
    let found = |name: &String| {
        !param_ids(&model, |module, _| {
            within_any(&rename(module), std::slice::from_ref(name))
        })
        .is_empty()
    };
    if let Some(name) = modules_to_save.first()
        && !modules_to_save.iter().any(found)
    {
        return Err(Error::UnknownModuleToSave { name: name.clone() });
    }
    // A module to save trains in full; a quantized weight cannot (QLoRA keeps the head in
    // float, as PEFT's bitsandbytes models do).
    if let Some(path) = quantized_param(&model, &|module| {
        within_any(&rename(module), modules_to_save)
    }) {
        return Err(Error::QuantizedModuleToSave { path });
    }
    Ok(model
        .set_require_grad(false)
        .set_require_grad_group(ParamGroup::from_ids(trainable), true))
}

/// The path of the first quantized parameter in a module `select` accepts.
fn quantized_param<M: Module>(model: &M, select: &dyn Fn(&str) -> bool) -> Option<String> {
    struct Find<'a>(&'a dyn Fn(&str) -> bool, Option<String>);
    impl OnParam for Find<'_> {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let (module, name) = path.split_last();
            if self.1.is_none()
                && path.adapter_owner().is_none()
                && (self.0)(&module)
                && param.is_initialized()
                && matches!(param.val().dtype(), burn::tensor::DType::QFloat(_))
            {
                self.1 = Some(join_path(&module, &name));
            }
        }
    }
    let mut find = Find(select, None);
    visit_params(model, &mut find);
    find.1
}

/// Whether a parameter's name is a LoRA factor's (in an [`Adapter`] or a
/// [`LoraLinear`](crate::LoraLinear)), DoRA's magnitude included.
pub(crate) fn is_factor(name: &str) -> bool {
    matches!(name, "lora_a" | "lora_b" | "lora_magnitude")
}

/// The ids of the factors of the adapters named in `active`, or with `None` of every
/// adapter (and always of every [`LoraLinear`](crate::LoraLinear)'s, which has no name).
fn active_factor_ids<M: Module>(model: &M, active: Option<&[String]>) -> Vec<ParamId> {
    struct Collect<'a>(Option<&'a [String]>, Vec<ParamId>);
    impl OnParam for Collect<'_> {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let in_active = match (path.adapter_name(), self.0) {
                (Some(name), Some(active)) => active.iter().any(|a| a == name),
                _ => true,
            };
            if is_factor(&path.split_last().1) && in_active {
                self.1.push(param.id);
            }
        }
    }
    let mut collect = Collect(active, Vec::new());
    visit_params(model, &mut collect);
    collect.1
}

/// The biases some of a model's adapters train by their `bias` setting, as PEFT's `bias`:
/// every bias of the model with `all`, the biases of the layers an adapter sits on with
/// `lora_only`. Read for the training flags and for adapter files alike.
pub(crate) struct TrainedBiases {
    /// An adapter with `all` is among them.
    every: bool,
    /// The layers a `lora_only` adapter among them sits on.
    lora_only: HashSet<String>,
    /// The layers any of them sits on (PEFT keys their biases `base_layer.bias`).
    pub(crate) adapted: HashSet<String>,
}

impl TrainedBiases {
    /// The biases trained by `model`'s adapters whose name `select` accepts.
    pub(crate) fn of<M: Module>(model: &M, select: impl Fn(&str) -> bool) -> Self {
        let mut biases = TrainedBiases {
            every: false,
            lora_only: HashSet::new(),
            adapted: HashSet::new(),
        };
        for (site, adapter) in adapters(model) {
            for lora in adapter.loras().iter().filter(|l| select(l.name())) {
                biases.adapted.insert(site.path.clone());
                match lora.bias() {
                    LoraBias::All => biases.every = true,
                    LoraBias::LoraOnly => {
                        biases.lora_only.insert(site.path.clone());
                    }
                    LoraBias::None => {}
                }
            }
        }
        biases
    }

    /// Whether the parameter `name` of the module at Burn path `module` is one of them.
    pub(crate) fn contains(&self, module: &str, name: &str) -> bool {
        name == "bias" && (self.every || self.lora_only.contains(module))
    }
}

/// The ids of the float parameters for which `select(owning_module, param_name)` holds.
pub(crate) fn param_ids<M: Module>(model: &M, select: impl Fn(&str, &str) -> bool) -> Vec<ParamId> {
    struct Collect<F>(F, Vec<ParamId>);
    impl<F: Fn(&str, &str) -> bool> OnParam for Collect<F> {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            if (self.0)(&path.owning_module(), &path.split_last().1) {
                self.1.push(param.id);
            }
        }
    }
    let mut collect = Collect(select, Vec::new());
    visit_params(model, &mut collect);
    collect.1
}

/// Errors with [`Error::NonFinite`], naming the first adapted layer whose factors hold NaN
/// or infinity.
fn check_adapters_finite<M: Module>(model: &M) -> Result<(), Error> {
    for (site, adapter) in adapters(model) {
        for lora in adapter.computing() {
            let magnitude_finite = lora.magnitude().is_none_or(|m| all_finite(&m.val()));
            if !all_finite(&lora.lora_a().val())
                || !all_finite(&lora.lora_b().val())
                || !magnitude_finite
            {
                return Err(Error::NonFinite { layer: site.path });
            }
        }
    }
    Ok(())
}

/// Merges every active adapter into its weight and removes every adapter (PEFT's
/// `merge_and_unload`): the result holds no adapter and computes the same outputs. Merged
/// weights keep their ids and stay frozen.
///
/// Only burn-lora's adapters are folded. A weight carrying another reparameterization
/// (Burn's own `apply_lora` or `apply_qlora`, a weight norm) keeps it, unmerged: fold those
/// with Burn's `Module::materialize`.
///
/// On a quantized base (QLoRA) the merged weights are float: the base dequantized plus
/// `s·A·B`, in the factors' dtype (f32). Quantize the result again with Burn's
/// `Module::quantize_weights` for a quantized merged model, or use [`merge_adapters`],
/// which folds each adapter in place and quantizes the sum with the weight's own scheme.
///
/// # Errors
///
/// [`Error::NonFinite`], naming the first layer whose factors hold NaN or infinity; the
/// check runs on every layer before any is merged.
pub fn merge_lora<M: Module>(model: M) -> Result<M, Error> {
    check_adapters_finite(&model)?;
    Ok(model.materialize())
}

/// Folds every active adapter into its weight but keeps it, marked merged (PEFT's
/// `merge_adapter`): the model computes the same outputs at the cost of a plain linear, and
/// [`unmerge_adapters`] restores the base weights. DoRA adapters merge as PEFT merges them,
/// `m / ‖W + s·A·B‖ · (W + s·A·B)`, keeping the norm for the unmerge.
///
/// A quantized weight is dequantized, the update added in f32, and the sum quantized again
/// with the weight's scheme, so the merged model stays quantized at rest; unmerging then
/// subtracts from the rounded sum, so it returns the base only to within one step of the
/// scheme.
///
/// # Errors
///
/// [`Error::NonFinite`] as for [`merge_lora`].
pub fn merge_adapters<M: Module>(model: M) -> Result<M, Error> {
    check_adapters_finite(&model)?;
    Ok(replace_adapters(model, |_, weight, mut adapter| {
        let names: Vec<String> = adapter.computing().map(|l| l.name().to_string()).collect();
        if names.is_empty() {
            return (adapter, None);
        }
        let weight = &weight();
        let mut merged = weight.clone();
        let mut done = adapter.merged_names().to_vec();
        for lora in adapter.loras_mut() {
            if !names.contains(&lora.name().to_string()) {
                continue;
            }
            let (new_weight, norm) = lora.merged_weight(weight, merged);
            merged = new_weight;
            lora.set_merged_norm(norm.map(|n| n.into_data()));
            done.push(lora.name().to_string());
        }
        (adapter.with_merged(done), Some(merged))
    }))
}

/// Undoes [`merge_adapters`]: takes each merged adapter's update back out of its weight, in
/// the reverse order of the merge.
pub fn unmerge_adapters<M: Module>(model: M) -> M {
    replace_adapters(model, |_, weight, mut adapter| {
        let merged = adapter.merged_names().to_vec();
        if merged.is_empty() {
            return (adapter, None);
        }
        let mut weight = weight();
        for name in merged.iter().rev() {
            if let Some(lora) = adapter.loras_mut().iter_mut().find(|l| l.name() == name) {
                weight = lora.unmerged_weight(weight);
                lora.set_merged_norm(None);
            }
        }
        (adapter.with_merged(Vec::new()), Some(weight))
    })
}

/// Switches every adapter in `model` on or off (PEFT's `disable_adapter` /
/// `enable_adapters`); off, the model computes its base outputs. The factors are kept, and
/// nothing else is rebuilt.
pub fn set_adapters_enabled<M: Module>(model: M, enabled: bool) -> M {
    replace_adapters(model, |_, _, adapter| (adapter.with_enabled(enabled), None))
}

/// The names of the adapters in `model`, in the order they were added (PEFT's
/// `peft_config.keys()`).
pub fn list_adapters<M: Module>(model: &M) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, adapter) in adapters(model) {
        for name in adapter.names() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The names of the active adapters of `model` (PEFT's `active_adapters`).
pub fn active_adapters<M: Module>(model: &M) -> Vec<String> {
    adapters(model)
        .first()
        .map(|(_, a)| a.active_names().to_vec())
        .unwrap_or_default()
}

/// Makes `names` the active adapters (PEFT's `set_adapter`): a forward pass adds the
/// updates of all of them, only their factors are trainable, and every other adapter is
/// kept, frozen. Nothing of the base is rebuilt, and what else trains (modules to save)
/// is left as it was.
///
/// # Errors
///
/// [`Error::UnknownAdapter`] for a name the model lacks; [`Error::MergedAdapters`] while
/// adapters are merged (unmerge first).
pub fn set_active_adapters<M: Module>(model: M, names: &[&str]) -> Result<M, Error> {
    let known = list_adapters(&model);
    if let Some(name) = names.iter().find(|n| !known.iter().any(|k| k == *n)) {
        return Err(Error::UnknownAdapter {
            name: name.to_string(),
            available: known,
        });
    }
    if adapters(&model).iter().any(|(_, a)| a.is_merged()) {
        return Err(Error::MergedAdapters);
    }
    let active: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let model = replace_adapters(model, |_, _, adapter| {
        (adapter.with_active(active.clone()), None)
    });
    let all = list_adapters(&model);
    let on = active_factor_ids(&model, Some(&active));
    let off: Vec<ParamId> = active_factor_ids(&model, Some(&all))
        .into_iter()
        .filter(|id| !on.contains(id))
        .collect();
    Ok(model
        .set_require_grad_group(ParamGroup::from_ids(off), false)
        .set_require_grad_group(ParamGroup::from_ids(on), true))
}

/// Deletes the adapter `name` from every layer (PEFT's `delete_adapter`): its factors are
/// dropped, so their memory is freed once nothing else holds them, and nothing of the base
/// is rebuilt. It leaves the active set too. When it was the model's last adapter, the
/// model is plain again (no reparameterization left); otherwise a weight that held only it
/// keeps an empty holder, which computes the base and which [`adapters`] and
/// [`crate::nn::Linear::adapter`] skip.
///
/// # Errors
///
/// [`Error::UnknownAdapter`]; [`Error::MergedAdapters`] when it is merged.
pub fn delete_adapter<M: Module>(model: M, name: &str) -> Result<M, Error> {
    let known = list_adapters(&model);
    if !known.iter().any(|k| k == name) {
        return Err(Error::UnknownAdapter {
            name: name.to_string(),
            available: known,
        });
    }
    if adapters(&model)
        .iter()
        .any(|(_, a)| a.merged_names().iter().any(|n| n == name))
    {
        return Err(Error::MergedAdapters);
    }
    let model = replace_adapters(model, |_, _, adapter| (adapter.without(name), None));
    // With no adapter left anywhere the model is a plain one again: materializing folds
    // nothing (empty holders compute their base) and takes the holders off.
    Ok(match list_adapters(&model).is_empty() {
        true => model.materialize(),
        false => model,
    })
}
