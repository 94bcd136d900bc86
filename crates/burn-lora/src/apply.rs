//! LoRA on a whole model, whatever its types: [`apply_lora`] and [`add_adapter`] find the
//! layers (linears, embeddings, convolutions) by Burn's own traversal and attach a named
//! adapter to each target's weight. What changes adapters after that (training flags,
//! merging, the active set, deleting) is in `manage.rs`.
//!
//! Size: about 325 lines: the layer kinds, target selection with its errors, and the
//! reparameterizer that attaches, which all read the same sites.

use std::collections::HashMap;

use burn::module::{Module, Param, ParamGroup, ParamId, Reparameterizer};
use burn::tensor::Tensor;

use crate::Error;
use crate::adapter::{Adapter, DEFAULT_ADAPTER};
use crate::config::{ALL_LINEAR, LoraConfig, TargetMatcher, name_matches, within_any};
use crate::lora::Lora;
use crate::manage::list_adapters;
use crate::manage::{param_ids, set_trainable_renamed};
use crate::path::{OnParam, PathStack, visit_params};
use crate::sites::{adapters, replace_adapters};

/// The kind of layer an adapter sits on. Its weight is read rows first: a linear's
/// `[d_in, d_out]`, an embedding's `[n_embeddings, d_model]`, a convolution's
/// `[channels_out, channels_in / groups · kernel]`; `A` is `[rows, r]` and `B` `[r, cols]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerKind {
    /// `burn::nn::Linear` (or [`burn_lora::nn::Linear`](crate::nn::Linear)).
    Linear,
    /// `burn::nn::Embedding`: PEFT's `lora_embedding_A` / `lora_embedding_B`.
    Embedding,
    /// `burn::nn::Conv1d` or `Conv2d`: PEFT's `lora_A` is a convolution of the layer's kernel
    /// into `r` channels (our `B`), its `lora_B` a 1×1 convolution back (our `A`).
    Conv,
}

impl LayerKind {
    /// The kind of a weight of rank `rank` inside a module of Burn container type
    /// `container_type` (`Struct:Linear`, ...), if it can carry an adapter.
    pub(crate) fn of(container_type: &str, rank: usize) -> Option<Self> {
        match (container_type, rank) {
            ("Struct:Linear", 2) => Some(LayerKind::Linear),
            ("Struct:Embedding", 2) => Some(LayerKind::Embedding),
            ("Struct:Conv1d", 3) | ("Struct:Conv2d", 4) => Some(LayerKind::Conv),
            _ => None,
        }
    }

    /// The layer's name in errors: `linear`, `embedding`, `convolution`.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            LayerKind::Linear => "linear",
            LayerKind::Embedding => "embedding",
            LayerKind::Conv => "convolution",
        }
    }
}

/// A weight of shape `shape` read rows first, `[shape[0], the rest]`, as adapters read it
/// (see [`LayerKind`]); a 1-D or empty shape as one row.
pub(crate) fn rows_first(shape: &[usize]) -> [usize; 2] {
    let n = shape.iter().product::<usize>();
    let rows = match shape.len() {
        0 | 1 => 1,
        _ => shape[0],
    };
    [rows, n / rows.max(1)]
}

/// One layer of a model that can carry an adapter, as Burn's traversal finds it.
#[derive(Debug, Clone)]
pub(crate) struct LayerSite {
    pub path: String,
    pub weight_id: ParamId,
    /// The weight's own shape.
    pub shape: Vec<usize>,
    pub kind: LayerKind,
}

impl LayerSite {
    /// The weight read rows first (see [`rows_first`]).
    pub(crate) fn dims(&self) -> [usize; 2] {
        rows_first(&self.shape)
    }
}

/// The layers of `model` that can carry an adapter: every `weight` directly inside a
/// `Linear`, `Embedding`, `Conv1d` or `Conv2d` (outside any adapter), in traversal order.
pub(crate) fn adaptable<M: Module>(model: &M) -> Vec<LayerSite> {
    struct Find(Vec<LayerSite>);
    impl OnParam for Find {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            let (module, name) = path.split_last();
            let Some(kind) = LayerKind::of(path.parent_type(), D) else {
                return;
            };
            if name == "weight" && path.adapter_owner().is_none() {
                self.0.push(LayerSite {
                    path: module,
                    weight_id: param.id,
                    shape: param.lazy_shape().to_vec(),
                    kind,
                });
            }
        }
    }
    let mut find = Find(Vec::new());
    visit_params(model, &mut find);
    find.0
}

/// The linears of `model`: every `weight` of rank 2 directly inside a module named `Linear`
/// (outside any adapter), in traversal order.
pub(crate) fn linears<M: Module>(model: &M) -> Vec<LayerSite> {
    adaptable(model)
        .into_iter()
        .filter(|site| site.kind == LayerKind::Linear)
        .collect()
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
    if let Some((site, _)) = adapters(&model).into_iter().next() {
        return Err(Error::AlreadyAdapted { path: site.path });
    }
    add_adapter_renamed(model, DEFAULT_ADAPTER, config, &|path| path.to_string())
}

/// Adds a new adapter named `name` on the linears `config` targets (PEFT's `add_adapter`),
/// beside any adapters the model already has; a linear may carry several.
///
/// The first adapter of a model becomes active and trainable, as with [`apply_lora`]. A later
/// one is added inactive and frozen, as PEFT adds it: [`set_active_adapters`](crate::set_active_adapters) switches to
/// it. Every base parameter is frozen; `config.modules_to_save` becomes trainable. Modules
/// to save are shared by all adapters of a model (PEFT keeps a copy per adapter).
///
/// # Errors
///
/// An empty name, `__base__`, or a name the model already has; everything [`apply_lora`]
/// reports.
pub fn add_adapter<M: Module>(model: M, name: &str, config: &LoraConfig) -> Result<M, Error> {
    add_adapter_renamed(model, name, config, &|path| path.to_string())
}

/// [`add_adapter`] with `config`'s names matched against `rename(path)` of each Burn path:
/// how a PEFT file's Hugging Face names find a model's layers.
pub(crate) fn add_adapter_renamed<M: Module>(
    model: M,
    name: &str,
    config: &LoraConfig,
    rename: &dyn Fn(&str) -> String,
) -> Result<M, Error> {
    config.validate()?;
    check_new_name(&model, name)?;
    let matcher = config.target_matcher()?;
    let linears: Vec<LayerSite> = adaptable(&model)
        .into_iter()
        .map(|site| LayerSite {
            path: rename(&site.path),
            ..site
        })
        .collect();
    check_targets_exist(&linears, config, &matcher)?;
    let first = adapters(&model)
        .first()
        .map(|(_, a)| a.active_names().to_vec());
    let active = first.clone().unwrap_or_else(|| vec![name.to_string()]);
    let trainable = first.is_none();
    let mut targets = HashMap::new();
    for site in &linears {
        if !matcher.matches(&site.path, site.kind)
            || config.excludes(&site.path)
            || !config.in_transformed_layers(&site.path)
        {
            continue;
        }
        let [d_in, d_out] = site.dims();
        let site_config = config.for_module(&site.path);
        site_config.validate_for_layer(d_in, d_out, &site.path)?;
        if site.kind != LayerKind::Linear && site_config.use_dora {
            return Err(Error::NotOffered(format!(
                "DoRA on the {} `{}`: burn-lora offers DoRA on linear layers only",
                site.kind.noun(),
                site.path
            )));
        }
        targets.insert(site.weight_id, (site.kind, site_config));
    }
    // Weights that already carry adapters get the new one beside them; the others get a
    // fresh holder.
    let model = replace_adapters(model, |site, weight, adapter| {
        match targets.remove(&site.weight_id) {
            Some((kind, config)) => {
                let lora = Lora::new(name, &weight(), &config, kind).with_trainable(trainable);
                (adapter.push(lora), None)
            }
            None => (adapter, None),
        }
    });
    // The fresh targets must be float weights with no reparameterization of their own.
    let fresh: Vec<(ParamId, String)> = linears
        .iter()
        .filter(|site| targets.contains_key(&site.weight_id))
        .map(|site| (site.weight_id, site.path.clone()))
        .collect();
    crate::preflight::check_targets(&model, &fresh)?;
    let model = model.apply_reparameterization(Attach {
        name: name.to_string(),
        active,
        trainable,
        targets,
    });
    if trainable {
        let model = set_trainable_renamed(model, &config.modules_to_save, rename)?;
        if crate::param_report(&model).trainable == 0 {
            return Err(Error::NothingTrainable {
                targets: config.target_modules.join(","),
            });
        }
        return Ok(model);
    }
    // A later adapter leaves what trains as it was, and adds its modules to save.
    let saved = param_ids(&model, |module, _| {
        within_any(&rename(module), &config.modules_to_save)
    });
    Ok(model.set_require_grad_group(ParamGroup::from_ids(saved), true))
}

/// Errors unless `name` can name a new adapter of `model`.
pub(crate) fn check_new_name<M: Module>(model: &M, name: &str) -> Result<(), Error> {
    if name.is_empty() || name == crate::adapter::BASE_ADAPTER || name.contains('.') {
        return Err(Error::InvalidAdapterName {
            name: name.to_string(),
        });
    }
    if list_adapters(model).iter().any(|n| n == name) {
        return Err(Error::AdapterExists {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Attaches a fresh [`Adapter`] holding one adapter named `name` to each weight whose id is
/// a target, with that target's config (its rank and alpha after the patterns).
struct Attach {
    name: String,
    active: Vec<String>,
    trainable: bool,
    targets: HashMap<ParamId, (LayerKind, LoraConfig)>,
}

impl Reparameterizer for Attach {
    type Reparam = Adapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Adapter>) {
        match self.targets.get(&param.id) {
            Some((kind, config)) => {
                // The value's own shape: a lazy `Col`-layout weight reports `[d_out, d_in]`
                // until its initialiser transposes it to `[d_in, d_out]`.
                let base = param.base();
                let base = base.clone().reshape(rows_first(&base.shape()));
                let lora =
                    Lora::new(&self.name, &base, config, *kind).with_trainable(self.trainable);
                (param, Some(Adapter::with_lora(lora, self.active.clone())))
            }
            None => (param, None),
        }
    }
}

/// Errors unless every named target matches at least one linear, and the selection as a
/// whole matches one.
fn check_targets_exist(
    linears: &[LayerSite],
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
    let matched =
        |site: &&LayerSite| matcher.matches(&site.path, site.kind) && !config.excludes(&site.path);
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
