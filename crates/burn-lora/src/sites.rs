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
    /// While [`with_adapter_names`](crate::with_adapter_names) runs: the adapter of each
    /// example of the batch, and whether an adapter was computed densely meanwhile.
    static ROUTING: RefCell<Option<Routing>> = const { RefCell::new(None) };
}

/// A mixed batch's adapter per example, and what went wrong while serving it.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// One adapter name per example (`__base__` for none).
    pub names: Vec<String>,
    /// Set when a stock `Linear` computed an adapter densely, which cannot route.
    pub dense_used: bool,
    /// Set when an input's leading dimension was not the batch: `(found, expected)`.
    pub wrong_batch: Option<(usize, usize)>,
    /// Layers that served the batch by the names, on this thread.
    pub routed: usize,
}

/// Runs `f` with `names` routing each example of a batch; returns what went wrong.
pub(crate) fn with_routing<T>(names: Vec<String>, f: impl FnOnce() -> T) -> (T, Routing) {
    /// Puts the previous routing back, also when `f` panics.
    struct Restore(Option<Option<Routing>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                ROUTING.set(previous);
            }
        }
    }
    let routing = Routing {
        names,
        ..Routing::default()
    };
    let restore = Restore(Some(ROUTING.replace(Some(routing))));
    let out = f();
    let routing = ROUTING.take().unwrap_or_default();
    drop(restore);
    (out, routing)
}

/// The adapter of each example while a mixed batch is served; `None` otherwise.
pub(crate) fn routed_names() -> Option<Vec<String>> {
    ROUTING.with_borrow(|r| r.as_ref().map(|r| r.names.clone()))
}

/// Notes that a layer served a mixed batch by the names.
pub(crate) fn note_routed() {
    ROUTING.with_borrow_mut(|r| {
        if let Some(r) = r {
            r.routed += 1;
        }
    });
}

/// Notes that an input of a routed forward had `found` rows where the batch has `expected`.
pub(crate) fn note_wrong_batch(found: usize, expected: usize) {
    ROUTING.with_borrow_mut(|r| {
        if let Some(r) = r {
            r.wrong_batch.get_or_insert((found, expected));
        }
    });
}

/// Called by [`Adapter`]'s dense `apply`: notes it while a mixed batch is served.
pub(crate) fn note_dense_use() {
    ROUTING.with_borrow_mut(|r| {
        if let Some(r) = r {
            r.dense_used = true;
        }
    });
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
/// The base value of a visited weight as `[d_in, d_out]`, read only for the weights that
/// carry adapters (reading a lazily initialised parameter initialises it).
type BaseWeight = Box<dyn Fn() -> Tensor<2>>;

#[derive(Default)]
struct SiteTracker {
    path: PathStack,
    last: Option<(ParamId, Vec<usize>, String, BaseWeight)>,
    sites: Vec<(AdapterSite, BaseWeight)>,
    /// While visiting a reparameterization named like ours: how many adapters had been
    /// collected before it. Burn's own LoRA has the same name but reports nothing, so a
    /// site is kept only when the list grew (see [`SiteTracker::exit`]).
    collected_before: Option<usize>,
    /// New values of adapted weights, by id, while mapping.
    weights: HashMap<ParamId, Tensor<2>>,
}

impl SiteTracker {
    fn enter(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
        if container_type != "Reparameterization" || name != Adapter::NAME {
            return;
        }
        if let (Some((path, param)), Some((id, dims, container, weight))) =
            (self.path.adapter_owner(), self.last.take())
        {
            let site = AdapterSite {
                path,
                param,
                weight_id: id,
                dims,
                container,
            };
            self.sites.push((site, weight));
            self.collected_before = collected_len();
        }
    }

    /// Leaving a reparameterization while collecting: its site stays only if it was one of
    /// ours, which pushed itself onto the collected list.
    fn exit(&mut self, container_type: &str) {
        self.path.exit();
        if container_type != "Reparameterization" {
            return;
        }
        if let Some(before) = self.collected_before.take()
            && collected_len() == Some(before)
        {
            self.sites.pop();
        }
    }

    fn note<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.adapter_owner().is_some() {
            return; // a factor, not an adapted weight
        }
        let container = self.path.parent_type().to_string();
        let dims = param.lazy_shape().to_vec();
        let param_id = param.id;
        // Adapters sit on linear weights; a weight of another rank is seen as one row.
        let n = dims.iter().product::<usize>();
        let rows = if D == 2 { dims[0] } else { 1 };
        let param = param.clone();
        let weight: BaseWeight = Box::new(move || param.base().reshape([rows, n / rows.max(1)]));
        self.last = Some((param_id, dims, container, weight));
    }
}

impl ModuleVisitor for SiteTracker {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.exit(container_type);
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
        if !self.weights.contains_key(&param.id) {
            self.note(&param);
            return param;
        }
        let weight = self.weights.remove(&param.id).expect("checked above");
        let param = param.map(|old| {
            let grad = old.is_require_grad();
            weight
                .reshape(old.shape())
                .cast(old.dtype())
                .detach()
                .set_require_grad(grad)
        });
        self.note(&param);
        param
    }
}

/// How many adapters [`adapters`] has collected so far; `None` when not collecting.
fn collected_len() -> Option<usize> {
    COLLECTED.with_borrow(|collected| collected.as_ref().map(Vec::len))
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

/// Every adapter in `model` with its site, in traversal order (a weight whose adapters
/// were all deleted is left out).
pub fn adapters<M: Module>(model: &M) -> Vec<(AdapterSite, Adapter)> {
    all_adapters(model)
        .into_iter()
        .filter(|(_, adapter, _)| !adapter.loras().is_empty())
        .map(|(site, adapter, _)| (site, adapter))
        .collect()
}

/// Every adapter holder in `model`, empty ones too, with its site and the adapted
/// weight's base value as `[d_in, d_out]`, in traversal order.
pub(crate) fn all_adapters<M: Module>(model: &M) -> Vec<(AdapterSite, Adapter, Tensor<2>)> {
    let mut tracker = SiteTracker::default();
    let previous = COLLECTED.replace(Some(Vec::new()));
    model.visit(&mut tracker);
    let collected = COLLECTED.replace(previous).unwrap_or_default();
    tracker
        .sites
        .into_iter()
        .zip(collected)
        .map(|((site, weight), adapter)| (site, adapter, weight()))
        .collect()
}

/// `model` with each adapter holder replaced by `f(site, base weight, adapter)` and, where
/// `f` also returns one, the adapted weight given a new value (same id, same
/// trainability). Nothing else is rebuilt: every other tensor is the same allocation as
/// before.
pub(crate) fn replace_adapters<M: Module>(
    model: M,
    mut f: impl FnMut(&AdapterSite, &Tensor<2>, Adapter) -> (Adapter, Option<Tensor<2>>),
) -> M {
    let mut tracker = SiteTracker::default();
    let mut queue = VecDeque::new();
    for (site, adapter, weight) in all_adapters(&model) {
        let (adapter, new_weight) = f(&site, &weight, adapter);
        queue.push_back(adapter);
        if let Some(new_weight) = new_weight {
            tracker.weights.insert(site.weight_id, new_weight);
        }
    }
    let previous = REPLACEMENTS.replace(Some(queue));
    let model = model.map(&mut tracker);
    REPLACEMENTS.set(previous);
    model
}
