//! Putting LoRA into a whole model: [`AdaptableLinear`], the [`MapLinears`] walk, and the
//! functions built on it ([`apply_lora`], [`merge_lora`], [`set_adapters_enabled`]).
//!
//! A Burn model's field types are fixed at compile time, so a layer that may become a
//! [`LoraLinear`] is declared as an [`AdaptableLinear`]; a model says where its adaptable
//! layers are by implementing [`MapLinears`]. Everything else (targets, freezing, merging)
//! is done here once.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::Error;
use crate::lora::config::{ALL_LINEAR, LoraConfig, TargetMatcher, name_matches};
use crate::lora::linear::LoraLinear;
use crate::lora::path::PathStack;

/// A linear layer that is either plain or carries a LoRA adapter.
// The variants differ in size, but there are only a few per block and `derive(Module)`
// does not see through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AdaptableLinear {
    /// A plain layer (base model, or a merged adapter).
    Base(Linear),
    /// A layer with a LoRA adapter inside it.
    Lora(LoraLinear),
}

impl AdaptableLinear {
    /// A new plain layer, `[d_in] -> [d_out]`, with bias.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        AdaptableLinear::Base(LinearConfig::new(d_in, d_out).init(device))
    }

    /// Applies the layer.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_in]`
    /// - output: `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            AdaptableLinear::Base(linear) => linear.forward(x),
            AdaptableLinear::Lora(lora) => lora.forward(x),
        }
    }

    /// The adapter, when there is one.
    pub fn lora(&self) -> Option<&LoraLinear> {
        match self {
            AdaptableLinear::Base(_) => None,
            AdaptableLinear::Lora(lora) => Some(lora),
        }
    }
}

/// A function applied to each adaptable linear of a model, given its module path.
pub type LinearFn<'a> = dyn FnMut(&str, AdaptableLinear) -> Result<AdaptableLinear, Error> + 'a;

/// A model that can hand each of its [`AdaptableLinear`]s, with its module path, to a
/// function and rebuild itself from the results.
///
/// Implement it by calling `map_linears` on each field that holds adaptable linears, with
/// the field's path from [`join_path`]:
///
/// ```
/// use burn::module::Module;
/// use burn_lora::{AdaptableLinear, LinearFn, Error, MapLinears, join_path};
///
/// #[derive(Module, Debug)]
/// struct Attention {
///     query: AdaptableLinear,
///     value: AdaptableLinear,
/// }
///
/// impl MapLinears for Attention {
///     fn map_linears(self, path: &str, f: &mut LinearFn<'_>) -> Result<Self, Error> {
///         Ok(Self {
///             query: self.query.map_linears(&join_path(path, "query"), f)?,
///             value: self.value.map_linears(&join_path(path, "value"), f)?,
///         })
///     }
/// }
/// ```
pub trait MapLinears: Sized {
    /// Passes each adaptable linear below `path` through `f`.
    fn map_linears(self, path: &str, f: &mut LinearFn<'_>) -> Result<Self, Error>;
}

impl MapLinears for AdaptableLinear {
    fn map_linears(self, path: &str, f: &mut LinearFn<'_>) -> Result<Self, Error> {
        f(path, self)
    }
}

impl<T: MapLinears> MapLinears for Vec<T> {
    fn map_linears(self, path: &str, f: &mut LinearFn<'_>) -> Result<Self, Error> {
        self.into_iter()
            .enumerate()
            .map(|(i, item)| item.map_linears(&join_path(path, &i.to_string()), f))
            .collect()
    }
}

/// `parent.name`, or `name` at the root.
pub fn join_path(parent: &str, name: &str) -> String {
    match parent.is_empty() {
        true => name.to_string(),
        false => format!("{parent}.{name}"),
    }
}

/// The module paths of every adaptable linear in `model`, in order.
pub fn linear_paths<M: MapLinears + Clone>(model: &M) -> Vec<String> {
    let mut paths = Vec::new();
    let _ = model.clone().map_linears("", &mut |path, layer| {
        paths.push(path.to_string());
        Ok(layer)
    });
    paths
}

/// Puts LoRA adapters into the linears `config` targets and switches the model to LoRA
/// training: every base parameter frozen, the factors and `config.modules_to_save`
/// trainable (PEFT's `get_peft_model`).
///
/// A layer that already carries an adapter is left as it is.
///
/// # Errors
///
/// An invalid config, a target name or module to save that matches nothing (the error lists
/// the available linears), or a rank too large for a targeted layer.
pub fn apply_lora<M: Module + MapLinears>(model: M, config: &LoraConfig) -> Result<M, Error> {
    config.validate()?;
    let matcher = config.target_matcher()?;
    check_targets_exist(&model, config, &matcher)?;
    let model = model.map_linears("", &mut |path, layer| match layer {
        AdaptableLinear::Base(linear) if matcher.matches(path) => Ok(AdaptableLinear::Lora(
            LoraLinear::from_linear_at(linear, config, path)?,
        )),
        layer => Ok(layer),
    })?;
    set_lora_trainable(model, &config.modules_to_save)
}

/// Errors unless every named target matches at least one adaptable linear.
fn check_targets_exist<M: Module + MapLinears>(
    model: &M,
    config: &LoraConfig,
    matcher: &TargetMatcher,
) -> Result<(), Error> {
    let available = linear_paths(model);
    let unknown = match matcher {
        TargetMatcher::Names(names) => names.iter().find(|name| {
            *name != ALL_LINEAR && !available.iter().any(|path| name_matches(path, name))
        }),
        TargetMatcher::Regex(_) => None,
    };
    let unmatched_regex = !available.iter().any(|path| matcher.matches(path));
    match (unknown, unmatched_regex, &config.target_regex) {
        (Some(name), _, _) => Err(unknown_target(name, available)),
        (None, true, Some(pattern)) => Err(unknown_target(pattern, available)),
        (None, true, None) => Err(unknown_target(&config.target_modules.join(","), available)),
        _ => Ok(()),
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
    let trainable = trainable_ids(&model, |module_path, param_name| {
        matches!(param_name, "lora_a" | "lora_b")
            || modules_to_save
                .iter()
                .any(|name| module_path_within(module_path, name))
    });
    // PEFT lists candidates (`["classifier", "score"]` for sequence classification) and
    // keeps those that exist; a list none of whose names exists is a mistake.
    let unknown: Vec<&String> = modules_to_save
        .iter()
        .filter(|name| {
            trainable_ids(&model, |module_path, _| {
                module_path_within(module_path, name)
            })
            .is_empty()
        })
        .collect();
    if !modules_to_save.is_empty() && unknown.len() == modules_to_save.len() {
        return Err(Error::UnknownModuleToSave {
            name: unknown[0].clone(),
        });
    }
    Ok(model
        .set_require_grad(false)
        .set_require_grad_group(ParamGroup::from_ids(trainable), true))
}

/// Whether a module at `module_path` is `name` or lies inside it, `name` matched as PEFT
/// matches module names (whole path or dotted suffix).
fn module_path_within(module_path: &str, name: &str) -> bool {
    let mut prefix = String::new();
    for part in module_path.split('.') {
        prefix = join_path(&prefix, part);
        if name_matches(&prefix, name) {
            return true;
        }
    }
    false
}

/// The ids of the float parameters for which `select(module_path, param_name)` holds.
fn trainable_ids<M: Module>(model: &M, select: impl Fn(&str, &str) -> bool) -> Vec<ParamId> {
    struct Collect<F> {
        path: PathStack,
        select: F,
        ids: Vec<ParamId>,
    }
    impl<F: Fn(&str, &str) -> bool> ModuleVisitor for Collect<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, name: &str, container_type: &str) {
            self.path.exit(name, container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (module_path, name) = self.path.split_last();
            if (self.select)(&module_path, &name) {
                self.ids.push(param.id);
            }
        }
    }
    let mut collect = Collect {
        path: PathStack::default(),
        select,
        ids: Vec::new(),
    };
    model.visit(&mut collect);
    collect.ids
}

/// Merges every adapter into its layer, turning each [`AdaptableLinear::Lora`] into a plain
/// [`AdaptableLinear::Base`] that computes the same outputs.
///
/// # Errors
///
/// [`Error::NonFinite`], naming the first layer whose factors hold NaN or infinity; the
/// check runs on every layer before any is merged.
pub fn merge_lora<M: MapLinears + Clone>(model: M) -> Result<M, Error> {
    model.clone().map_linears("", &mut |path, layer| {
        if let AdaptableLinear::Lora(lora) = &layer {
            lora.check_finite(path)?;
        }
        Ok(layer)
    })?;
    model.map_linears("", &mut |_, layer| match layer {
        AdaptableLinear::Lora(lora) => Ok(AdaptableLinear::Base(lora.merge())),
        layer => Ok(layer),
    })
}

/// Switches every adapter in `model` on or off; off, the model computes its base outputs.
pub fn set_adapters_enabled<M: MapLinears>(model: M, enabled: bool) -> M {
    model
        .map_linears("", &mut |_, layer| match layer {
            AdaptableLinear::Lora(lora) => {
                Ok(AdaptableLinear::Lora(lora.with_adapter_enabled(enabled)))
            }
            layer => Ok(layer),
        })
        .expect("enabling adapters cannot fail")
}
