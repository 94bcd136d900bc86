//! Finding and replacing the [`Adapter`]s of a whole model.
//!
//! Burn reaches a reparameterization only through [`Module::visit`] and [`Module::map`],
//! and hands it a visitor or mapper of its own private type. So an adapter reports itself:
//! while [`adapters`] visits a model, each adapter's `visit` pushes a copy of itself onto a
//! thread-local list, and while [`replace_adapters`] maps one, each adapter's `map` takes
//! its replacement from a thread-local queue. Burn's traversal is a plain recursion on the
//! calling thread, so the order is the traversal order, and a site tracker walking beside
//! it names where each adapter sits.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId, Reparameterization};
use burn::tensor::Tensor;

use crate::adapter::Adapter;
use crate::path::PathStack;

thread_local! {
    /// While [`adapters`] visits a model: every adapter met, in traversal order.
    static COLLECTED: RefCell<Option<Vec<Adapter>>> = const { RefCell::new(None) };
    /// While [`replace_adapters`] maps a model: what each adapter met becomes, in order.
    static REPLACEMENTS: RefCell<Option<VecDeque<Adapter>>> = const { RefCell::new(None) };
}

/// Where an adapter sits in a model.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSite {
    /// The module path of the adapted layer, e.g. `layers.0.mha.query`.
    pub path: String,
    /// The adapted parameter's name within it, e.g. `weight`.
    pub param: String,
    /// The adapted parameter's id.
    pub weight_id: ParamId,
    /// The adapted parameter's shape, `[d_in, d_out]` for a linear weight.
    pub dims: Vec<usize>,
    /// The container type of the adapted layer, e.g. `Struct:Linear`.
    pub container: String,
}

/// Follows Burn's traversal and notes the site of each reparameterization it enters.
#[derive(Default)]
struct SiteTracker {
    path: PathStack,
    last: Option<(ParamId, Vec<usize>, String)>,
    sites: Vec<AdapterSite>,
    /// Updates added to adapted weights, by id, while mapping.
    deltas: HashMap<ParamId, Tensor<2>>,
}

impl SiteTracker {
    fn enter(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
        if container_type != "Reparameterization" || name != Adapter::NAME {
            return;
        }
        if let (Some((path, param)), Some((id, dims, container))) =
            (self.path.adapter_owner(), self.last.take())
        {
            self.sites.push(AdapterSite {
                path,
                param,
                weight_id: id,
                dims,
                container,
            });
        }
    }

    fn note<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let container = self.path.parent_type().to_string();
        self.last = Some((param.id, param.lazy_shape().to_vec(), container));
    }
}

impl ModuleVisitor for SiteTracker {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.note(param);
    }
}

impl ModuleMapper for SiteTracker {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.note(&param);
        match self.deltas.remove(&param.id) {
            Some(delta) => param.map(|old| {
                let grad = old.is_require_grad();
                let delta = delta.reshape(old.shape()).cast(old.dtype());
                (old + delta).detach().set_require_grad(grad)
            }),
            None => param,
        }
    }
}

/// Called by [`Adapter`]'s `visit`: noted while [`adapters`] collects.
pub(crate) fn visited(adapter: &Adapter) {
    COLLECTED.with_borrow_mut(|collected| {
        if let Some(collected) = collected {
            collected.push(adapter.clone());
        }
    });
}

/// Called by [`Adapter`]'s `map`: what it becomes while [`replace_adapters`] maps.
pub(crate) fn replacement() -> Option<Adapter> {
    REPLACEMENTS.with_borrow_mut(|queue| queue.as_mut().and_then(VecDeque::pop_front))
}

/// Every adapter in `model` with its site, in traversal order.
pub fn adapters<M: Module>(model: &M) -> Vec<(AdapterSite, Adapter)> {
    let mut tracker = SiteTracker::default();
    let previous = COLLECTED.replace(Some(Vec::new()));
    model.visit(&mut tracker);
    let collected = COLLECTED.replace(previous).unwrap_or_default();
    tracker.sites.into_iter().zip(collected).collect()
}

/// `model` with each adapter replaced by `f(site, adapter)` and, where `f` also returns an
/// update for the adapted weight, that update added to it (same id, same trainability).
/// Nothing else is rebuilt: every other tensor is the same allocation as before.
pub(crate) fn replace_adapters<M: Module>(
    model: M,
    mut f: impl FnMut(&AdapterSite, Adapter) -> (Adapter, Option<Tensor<2>>),
) -> M {
    let mut tracker = SiteTracker::default();
    let mut queue = VecDeque::new();
    for (site, adapter) in adapters(&model) {
        let (adapter, base) = f(&site, adapter);
        queue.push_back(adapter);
        if let Some(delta) = base {
            tracker.deltas.insert(site.weight_id, delta);
        }
    }
    let previous = REPLACEMENTS.replace(Some(queue));
    let model = model.map(&mut tracker);
    REPLACEMENTS.set(previous);
    model
}
