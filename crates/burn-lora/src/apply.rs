//! LoRA on a whole model, whatever its types: [`apply_lora`] finds the linears by Burn's own
//! traversal and attaches an [`Adapter`] to each target's weight; [`merge_lora`],
//! [`merge_adapters`], [`unmerge_adapters`] and [`set_adapters_enabled`] change them after.

use std::collections::HashMap;

use burn::module::{Module, Param, ParamGroup, ParamId, Reparameterizer};
use burn::tensor::Tensor;

use crate::Error;
use crate::adapter::Adapter;
use crate::config::{ALL_LINEAR, LoraConfig, TargetMatcher, name_matches, within_any};
use crate::lora_linear::all_finite;
use crate::path::{OnParam, PathStack, visit_params};
use crate::sites::{adapters, replace_adapters};

/// The container type of a `burn::nn::Linear` (and of the drop-in
/// [`burn_lora::nn::Linear`](crate::nn::Linear)) as Burn's traversal reports it.
const LINEAR: &str = "Struct:Linear";

/// One linear layer of a model, as Burn's traversal finds it.
#[derive(Debug, Clone)]
pub(crate) struct LinearSite {
    pub path: String,
    pub weight_id: ParamId,
    pub dims: [usize; 2],
}

/// The linears of `model`: every `weight` of rank 2 directly inside a module named `Linear`
/// (outside any adapter), in traversal order.
pub(crate) fn linears<M: Module>(model: &M) -> Vec<LinearSite> {
    struct Find(Vec<LinearSite>);
    impl OnParam for Find {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let (module, name) = path.split_last();
            if D == 2
                && name == "weight"
                && path.parent_type() == LINEAR
                && path.adapter_owner().is_none()
            {
                self.0.push(LinearSite {
                    path: module,
                    weight_id: param.id,
                    dims: param.lazy_shape().dims::<2>(),
                });
            }
        }
    }
    let mut find = Find(Vec::new());
    visit_params(model, &mut find);
    find.0
}

/// The module paths of every linear layer in `model` (`burn::nn::Linear` or
/// [`burn_lora::nn::Linear`](crate::nn::Linear)), in traversal order: what
/// `target_modules` can name.
pub fn linear_paths<M: Module>(model: &M) -> Vec<String> {
    linears(model).into_iter().map(|site| site.path).collect()
}

/// Puts LoRA adapters on the linears `config` targets and switches the model to LoRA
/// training: every base parameter frozen, the factors and `config.modules_to_save`
/// trainable (PEFT's `get_peft_model`). Works on any [`Module`]: targets are matched against
/// Burn's own module paths (`layers.0.mha.query`) with PEFT's rules (an exact path, a suffix
/// after a `.`, a regex, or `all-linear`).
///
/// A stock `burn::nn::Linear` then computes its adapter densely; a
/// [`burn_lora::nn::Linear`](crate::nn::Linear) computes it factored (see [`crate::nn`]).
///
/// # Errors
///
/// An invalid config; a target name, regex or module to save that matches nothing (the
/// error lists the model's linears); a rank too large for a target; a target that already
/// carries an adapter.
pub fn apply_lora<M: Module>(model: M, config: &LoraConfig) -> Result<M, Error> {
    apply_lora_renamed(model, config, &|path| path.to_string())
}

/// [`apply_lora`] with `config`'s names matched against `rename(path)` of each Burn path:
/// how a PEFT file's Hugging Face names find a model's layers.
pub(crate) fn apply_lora_renamed<M: Module>(
    model: M,
    config: &LoraConfig,
    rename: &dyn Fn(&str) -> String,
) -> Result<M, Error> {
    config.validate()?;
    let matcher = config.target_matcher()?;
    let linears: Vec<LinearSite> = linears(&model)
        .into_iter()
        .map(|site| LinearSite {
            path: rename(&site.path),
            ..site
        })
        .collect();
    check_targets_exist(&linears, config, &matcher)?;
    let adapted: Vec<ParamId> = adapters(&model)
        .into_iter()
        .map(|(site, _)| site.weight_id)
        .collect();
    let mut targets = HashMap::new();
    for site in &linears {
        if !matcher.matches(&site.path)
            || config.excludes(&site.path)
            || !config.in_transformed_layers(&site.path)
        {
            continue;
        }
        let [d_in, d_out] = site.dims;
        let site_config = config.for_module(&site.path);
        site_config.validate_for_layer(d_in, d_out, &site.path)?;
        if adapted.contains(&site.weight_id) {
            return Err(Error::AlreadyAdapted {
                path: site.path.clone(),
            });
        }
        targets.insert(site.weight_id, (site.dims, site_config));
    }
    let model = model.apply_reparameterization(Attach { targets });
    set_trainable_renamed(model, &config.modules_to_save, rename)
}

/// Attaches a fresh [`Adapter`] to each weight whose id is a target, with that target's
/// config (its rank and alpha after the patterns).
struct Attach {
    targets: HashMap<ParamId, ([usize; 2], LoraConfig)>,
}

impl Reparameterizer for Attach {
    type Reparam = Adapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Adapter>) {
        match self.targets.get(&param.id) {
            Some((dims, config)) => {
                let base = param.base();
                let adapter = Adapter::new(*dims, base.dtype(), &base.device(), config);
                (param, Some(adapter))
            }
            None => (param, None),
        }
    }
}

/// Errors unless every named target matches at least one linear, and the selection as a
/// whole matches one.
fn check_targets_exist(
    linears: &[LinearSite],
    config: &LoraConfig,
    matcher: &TargetMatcher,
) -> Result<(), Error> {
    let available = || linears.iter().map(|site| site.path.clone()).collect();
    if let TargetMatcher::Names(names) = matcher
        && let Some(name) = names.iter().find(|name| {
            *name != ALL_LINEAR && !linears.iter().any(|site| name_matches(&site.path, name))
        })
    {
        return Err(unknown_target(name, available()));
    }
    let matched = |site: &&LinearSite| matcher.matches(&site.path) && !config.excludes(&site.path);
    let selected = linears
        .iter()
        .filter(matched)
        .any(|site| config.in_transformed_layers(&site.path));
    match (selected, &config.target_regex) {
        (true, _) => Ok(()),
        (false, _) if linears.iter().any(|site| matched(&site)) => Err(unknown_target(
            &format!(
                "{} in layers {:?}",
                config.target_modules.join(","),
                config.layers_to_transform
            ),
            available(),
        )),
        (false, Some(pattern)) => Err(unknown_target(pattern, available())),
        (false, None) => Err(unknown_target(
            &config.target_modules.join(","),
            available(),
        )),
    }
}

fn unknown_target(name: &str, available: Vec<String>) -> Error {
    Error::UnknownTarget {
        name: name.to_string(),
        available,
    }
}

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
    let trainable = param_ids(&model, |module, name| {
        is_factor(name) || within_any(&rename(module), modules_to_save)
    });
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
    Ok(model
        .set_require_grad(false)
        .set_require_grad_group(ParamGroup::from_ids(trainable), true))
}

/// Whether a parameter's name is a LoRA factor's (in an [`Adapter`] or a
/// [`LoraLinear`](crate::LoraLinear)).
pub(crate) fn is_factor(name: &str) -> bool {
    matches!(name, "lora_a" | "lora_b")
}

/// The ids of the float parameters for which `select(owning_module, param_name)` holds.
fn param_ids<M: Module>(model: &M, select: impl Fn(&str, &str) -> bool) -> Vec<ParamId> {
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
        if !all_finite(&adapter.lora_a().val()) || !all_finite(&adapter.lora_b().val()) {
            return Err(Error::NonFinite { layer: site.path });
        }
    }
    Ok(())
}

/// Merges every adapter into its weight and removes it (PEFT's `merge_and_unload`): the
/// result holds no adapter and computes the same outputs. Merged weights keep their ids and
/// stay frozen.
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
/// [`unmerge_adapters`] restores the base weights.
///
/// # Errors
///
/// [`Error::NonFinite`] as for [`merge_lora`].
pub fn merge_adapters<M: Module>(model: M) -> Result<M, Error> {
    check_adapters_finite(&model)?;
    Ok(replace_adapters(model, |_, adapter| {
        match adapter.is_active() {
            true => {
                let delta = adapter.delta_weight().detach();
                (adapter.with_merged(true), Some(delta))
            }
            false => (adapter, None),
        }
    }))
}

/// Undoes [`merge_adapters`]: subtracts each merged adapter's update from its weight.
pub fn unmerge_adapters<M: Module>(model: M) -> M {
    replace_adapters(model, |_, adapter| match adapter.is_merged() {
        true => {
            let delta = adapter.delta_weight().detach().neg();
            (adapter.with_merged(false), Some(delta))
        }
        false => (adapter, None),
    })
}

/// Switches every adapter in `model` on or off; off, the model computes its base outputs.
/// The factors are kept, and nothing else is rebuilt.
pub fn set_adapters_enabled<M: Module>(model: M, enabled: bool) -> M {
    replace_adapters(model, |_, adapter| (adapter.with_enabled(enabled), None))
}
