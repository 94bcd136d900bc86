//! Finding and replacing the [`Adapter`]s of a whole model.
//!
//! Burn reaches a reparameterization only through [`Module::visit`] and [`Module::map`],
//! and hands it a visitor or mapper of its own private type. So an adapter reports itself
//! through thread-local state: a site tracker walking beside Burn's traversal notes the id
//! of the weight whose reparameterization is being entered (Burn visits the weight just
//! before it), and while [`adapters`] visits a model each adapter's `visit` files a copy of
//! itself under that id; while [`replace_adapters`] maps one, each adapter's `map` takes
//! the replacement filed under its weight's id. Keyed by [`ParamId`], an adapter is never
//! paired with another weight, whatever else the traversal meets (Burn's own LoRA, a
//! weight norm). Every piece of state is set by a guard that puts the previous value back
//! when it is dropped, so a panic caught inside a traversal or a forward pass leaves
//! nothing behind.
//!
//! Size: about 620 lines, 220 of them unit tests (they read the thread-locals, which only
//! this file can); the rest is the traversal state and the mixed-batch routing.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::LocalKey;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId, Reparameterization};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::adapter::Adapter;
use crate::path::PathStack;

thread_local! {
    /// While [`adapters`] visits a model: every adapter met, by its weight's id.
    static COLLECTED: RefCell<Option<HashMap<ParamId, Adapter>>> = const { RefCell::new(None) };
    /// While [`replace_adapters`] maps a model: what each adapter becomes, by its weight's id.
    static REPLACEMENTS: RefCell<Option<HashMap<ParamId, Adapter>>> = const { RefCell::new(None) };
    /// While the site tracker is inside one of our reparameterizations: its weight's id.
    static CURRENT: Cell<Option<ParamId>> = const { Cell::new(None) };
    /// While [`with_adapter_names`](crate::with_adapter_names) runs: the adapter of each
    /// example of the batch, and whether an adapter was computed densely meanwhile.
    static ROUTING: RefCell<Option<Routing>> = const { RefCell::new(None) };
}

/// Sets a thread-local for as long as it lives, and puts the previous value back when it is
/// dropped: at the end of the scope, or while a panic unwinds through it.
pub(crate) struct Scoped<T: 'static> {
    key: &'static LocalKey<RefCell<Option<T>>>,
    previous: Option<Option<T>>,
}

impl<T: 'static> Scoped<T> {
    pub(crate) fn set(key: &'static LocalKey<RefCell<Option<T>>>, value: T) -> Self {
        Self {
            key,
            previous: Some(key.replace(Some(value))),
        }
    }

    /// The value now set, taken out (the previous one goes back on drop).
    pub(crate) fn take(&self) -> Option<T> {
        self.key.take()
    }
}

impl<T: 'static> Drop for Scoped<T> {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            self.key.set(previous);
        }
    }
}

/// Whether no traversal, mixed batch or seed stream of this library is under way on this
/// thread: what a caught panic must leave.
#[cfg(test)]
pub(crate) fn state_is_clear() -> bool {
    COLLECTED.with_borrow(Option::is_none)
        && REPLACEMENTS.with_borrow(Option::is_none)
        && CURRENT.get().is_none()
        && ROUTING.with_borrow(Option::is_none)
        && crate::dropout::seed_stream_is_clear()
}

/// A mixed batch's adapter per example, and what went wrong while serving it.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// One adapter name per example (`__base__` for none).
    pub names: Vec<String>,
    /// Rows each example has in a 2-D input that flattens `[batch, seq, d]` batch-major
    /// (1: a 2-D input has one row per example).
    pub rows_per_example: usize,
    /// The row indices of each adapter's examples, uploaded once per call: by name, rows
    /// per example and device.
    pub rows: Vec<(String, usize, Device, Tensor<1, Int>)>,
    /// How many index tensors were uploaded (each name once per input shape and device).
    pub uploads: usize,
    /// Set when a stock `Linear` computed an adapter densely, which cannot route.
    pub dense_used: bool,
    /// Set when an input's leading dimension was not the batch: `(found, expected)`.
    pub wrong_batch: Option<(usize, usize)>,
    /// Layers that served the batch by the names, on this thread.
    pub routed: usize,
}

/// Runs `f` with `names` routing each example of a batch, each example having
/// `rows_per_example` rows in a flattened 2-D input; returns what went wrong.
pub(crate) fn with_routing<T>(
    names: Vec<String>,
    rows_per_example: usize,
    f: impl FnOnce() -> T,
) -> (T, Routing) {
    let routing = Routing {
        names,
        rows_per_example: rows_per_example.max(1),
        ..Routing::default()
    };
    let scope = Scoped::set(&ROUTING, routing);
    let out = f();
    let routing = scope.take().unwrap_or_default();
    (out, routing)
}

/// The adapter of each example and the rows per example of a flattened input, while a
/// mixed batch is served; `None` otherwise.
pub(crate) fn routed_names() -> Option<(Vec<String>, usize)> {
    ROUTING.with_borrow(|r| r.as_ref().map(|r| (r.names.clone(), r.rows_per_example)))
}

/// The rows of the examples named `name` in an input with `per` rows per example, on
/// `device`: uploaded the first time a layer asks, then reused by every layer of the call.
pub(crate) fn routed_rows(name: &str, per: usize, device: &Device) -> Option<Tensor<1, Int>> {
    ROUTING.with_borrow_mut(|r| {
        let r = r.as_mut()?;
        if let Some((.., rows)) = r
            .rows
            .iter()
            .find(|(n, p, d, _)| n == name && *p == per && d == device)
        {
            return Some(rows.clone());
        }
        let rows: Vec<i64> = (0..r.names.len())
            .filter(|&i| r.names[i] == name)
            .flat_map(|i| (i * per..(i + 1) * per).map(|row| row as i64))
            .collect();
        if rows.is_empty() {
            return None;
        }
        let n = rows.len();
        let tensor = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), device);
        r.uploads += 1;
        r.rows
            .push((name.to_string(), per, device.clone(), tensor.clone()));
        Some(tensor)
    })
}

/// A mixed batch in flight: the ids of the weights its model adapts, and how many of those
/// weights computed their adapters meanwhile without its names (on another thread).
struct InFlight {
    call: u64,
    weights: HashSet<ParamId>,
    strays: Arc<AtomicUsize>,
}

/// Every mixed batch in flight in this process. The names are thread-local, so a layer
/// that runs on another thread cannot read them; it reports itself here instead.
static IN_FLIGHT: Mutex<Vec<InFlight>> = Mutex::new(Vec::new());
/// `IN_FLIGHT`'s length, read without the lock on every adapted forward.
static ANY_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static NEXT_CALL: AtomicU64 = AtomicU64::new(0);

/// Registers a mixed batch over the weights `weights` for as long as it lives.
pub(crate) struct FlightGuard {
    call: u64,
    strays: Arc<AtomicUsize>,
}

impl FlightGuard {
    pub(crate) fn register(weights: HashSet<ParamId>) -> Self {
        let call = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
        let strays = Arc::new(AtomicUsize::new(0));
        let mut flights = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
        flights.push(InFlight {
            call,
            weights,
            strays: strays.clone(),
        });
        ANY_IN_FLIGHT.store(flights.len(), Ordering::SeqCst);
        Self { call, strays }
    }

    /// Adapted layers of this call's model that ran without its names so far.
    pub(crate) fn strays(&self) -> usize {
        self.strays.load(Ordering::SeqCst)
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
        flights.retain(|f| f.call != self.call);
        ANY_IN_FLIGHT.store(flights.len(), Ordering::SeqCst);
    }
}

/// Called by an adapted [`Linear`](crate::nn::Linear) that computes without routing: if a
/// mixed batch over its weight is in flight (on another thread), that batch is told.
pub(crate) fn note_unrouted(weight: ParamId) {
    if ANY_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        return;
    }
    let flights = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    for flight in flights.iter().filter(|f| f.weights.contains(&weight)) {
        flight.strays.fetch_add(1, Ordering::SeqCst);
    }
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
    /// `CURRENT` as it was before entering one of our reparameterizations.
    outer: Option<Option<ParamId>>,
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
            self.outer = Some(CURRENT.replace(Some(id)));
        }
    }

    fn exit(&mut self, container_type: &str) {
        self.path.exit();
        if container_type == "Reparameterization"
            && let Some(outer) = self.outer.take()
        {
            CURRENT.set(outer);
        }
    }

    fn note<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.adapter_owner().is_some() {
            return; // a factor, not an adapted weight
        }
        let container = self.path.parent_type().to_string();
        let dims = param.lazy_shape().to_vec();
        let param_id = param.id;
        // Read rows first, as adapters read their weights (a convolution's
        // `[out, in · kernel]`).
        let view = crate::apply::rows_first(&dims);
        let param = param.clone();
        // A quantized weight is read dequantized: merges and new adapters compute in float.
        let weight: BaseWeight = Box::new(move || param.base().dequantize().reshape(view));
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
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.exit(container_type);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.weights.contains_key(&param.id) {
            self.note(&param);
            return param;
        }
        let weight = self.weights.remove(&param.id).expect("checked above");
        let param = param.map(|old| {
            let grad = old.is_require_grad();
            let weight = weight.reshape(old.shape()).detach();
            match old.dtype() {
                // A quantized weight is quantized again with its own scheme (a merge into a
                // quantized base rounds to that scheme, as PEFT's bitsandbytes merge does).
                // Last: Burn's `detach` and `set_require_grad` would dequantize it.
                DType::QFloat(scheme) => weight.quantize_dynamic(&scheme),
                dtype => weight.cast(dtype).set_require_grad(grad),
            }
        });
        self.note(&param);
        param
    }
}

/// Called by [`Adapter`]'s `visit`: filed under its weight's id while [`adapters`] collects.
pub(crate) fn visited(adapter: &Adapter) {
    let Some(id) = CURRENT.get() else {
        return;
    };
    COLLECTED.with_borrow_mut(|collected| {
        if let Some(collected) = collected {
            collected.insert(id, adapter.clone());
        }
    });
}

/// Called by [`Adapter`]'s `map`: what it becomes while [`replace_adapters`] maps.
pub(crate) fn replacement() -> Option<Adapter> {
    let id = CURRENT.get()?;
    REPLACEMENTS.with_borrow(|replacements| replacements.as_ref()?.get(&id).cloned())
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

/// Every adapter holder in `model`, empty ones too, with its site and a reader of the
/// adapted weight's base value as `[d_in, d_out]`, in traversal order. The reader
/// dequantizes a quantized base each time it is called, so that a caller reading the
/// weights one site at a time holds one in float at a time, not a whole QLoRA model's.
pub(crate) fn all_adapters<M: Module>(model: &M) -> Vec<(AdapterSite, Adapter, BaseWeight)> {
    let mut tracker = SiteTracker::default();
    let scope = Scoped::set(&COLLECTED, HashMap::new());
    model.visit(&mut tracker);
    let collected = scope.take().unwrap_or_default();
    drop(scope);
    tracker
        .sites
        .into_iter()
        .filter_map(|(site, weight)| {
            let adapter = collected.get(&site.weight_id)?.clone();
            Some((site, adapter, weight))
        })
        .collect()
}

/// `model` with each adapter holder replaced by `f(site, base weight, adapter)` and, where
/// `f` also returns one, the adapted weight given a new value (same id, same
/// trainability). Nothing else is rebuilt: every other tensor is the same allocation as
/// before.
pub(crate) fn replace_adapters<M: Module>(
    model: M,
    mut f: impl FnMut(&AdapterSite, &dyn Fn() -> Tensor<2>, Adapter) -> (Adapter, Option<Tensor<2>>),
) -> M {
    let mut tracker = SiteTracker::default();
    let mut replacements = HashMap::new();
    for (site, adapter, weight) in all_adapters(&model) {
        let (adapter, new_weight) = f(&site, &weight, adapter);
        replacements.insert(site.weight_id, adapter);
        if let Some(new_weight) = new_weight {
            tracker.weights.insert(site.weight_id, new_weight);
        }
    }
    let _scope = Scoped::set(&REPLACEMENTS, replacements);
    model.map(&mut tracker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoraConfig, apply_lora, merge_adapters, with_adapter_names};
    use burn::module::{ModuleDisplay, ModuleDisplayDefault};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    /// A module whose traversal panics: in `visit` (`on_visit`) or in `map`.
    #[derive(Clone, Debug)]
    struct Bomb {
        on_visit: bool,
    }

    impl ModuleDisplayDefault for Bomb {
        fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
            Some(content)
        }
    }
    impl ModuleDisplay for Bomb {}

    impl Module for Bomb {
        fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
            devices
        }
        fn fork(self, _: &Device) -> Self {
            self
        }
        fn to_device(self, _: &Device) -> Self {
            self
        }
        fn train(self) -> Self {
            self
        }
        fn valid(&self) -> Self {
            self.clone()
        }
        fn materialize(self) -> Self {
            self
        }
        fn visit<V: ModuleVisitor>(&self, _: &mut V) {
            assert!(!self.on_visit, "a visit that panics");
        }
        fn map<M: ModuleMapper>(self, _: &mut M) -> Self {
            panic!("a map that panics")
        }
    }

    fn adapted(device: &Device) -> Linear {
        let linear = LinearConfig::new(4, 3).init(device);
        let config = LoraConfig::new()
            .with_rank(2)
            .with_target_regex(Some(".*".into()));
        apply_lora(linear, &config).unwrap()
    }

    /// A panic caught inside `adapters`' visit, inside `merge_adapters`' map, inside
    /// `with_adapter_names`' forward or inside `with_dropout_seed` leaves no state on the
    /// thread: the adapters of a model are found again, and the next traversal is clean.
    #[test]
    fn a_caught_panic_leaves_no_state_behind() {
        let device = Device::flex();
        let layer = adapted(&device);
        let visit = (layer.clone(), Bomb { on_visit: true });
        assert!(panics(|| adapters(&visit)));
        assert!(state_is_clear(), "after a panic in a visit");
        let map = (layer.clone(), Bomb { on_visit: false });
        assert!(panics(|| merge_adapters(map.clone())));
        assert!(state_is_clear(), "after a panic in a map");
        assert!(panics(|| {
            with_adapter_names(&layer, &["default"], || panic!("a forward that panics"))
        }));
        assert!(state_is_clear(), "after a panic in a mixed batch");
        assert!(panics(|| crate::dropout::with_dropout_seed(1, || panic!(
            "panics"
        ))));
        assert!(state_is_clear(), "after a panic under a seed stream");
        assert_eq!(adapters(&layer).len(), 1);
        assert!(state_is_clear());
    }

    /// Whether `f` panics (its message not printed).
    fn panics<R>(f: impl FnOnce() -> R) -> bool {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = catch_unwind(AssertUnwindSafe(f));
        std::panic::set_hook(hook);
        result.is_err()
    }

    /// Adapters are filed by their weight's id: with the traversal's order reversed between
    /// the visit and the map (a model whose `map` walks its parts the other way), each
    /// weight still gets its own adapter back.
    #[test]
    fn replacement_is_keyed_by_the_weights_id() {
        let device = Device::flex();
        let (a, b) = (adapted(&device), adapted(&device));
        let (a_id, b_id) = (a.weight.id, b.weight.id);
        let model = Swapped(a, b);
        let found: Vec<ParamId> = adapters(&model).iter().map(|(s, _)| s.weight_id).collect();
        assert_eq!(found, [a_id, b_id]);
        // Tag each adapter with its weight's id through `replace_adapters`, then map back.
        let tagged = replace_adapters(model, |site, _, adapter| {
            let name = format!("w{}", site.weight_id);
            let adapter = adapter.with_active(vec![name]);
            (adapter, None)
        });
        for (site, adapter) in adapters(&tagged) {
            assert_eq!(
                adapter.active_names(),
                [format!("w{}", site.weight_id)],
                "the adapter of {} went to another weight",
                site.weight_id
            );
        }
        assert!(state_is_clear());
    }

    /// A mixed batch uploads each adapter's row indices once per call, not once per layer.
    #[test]
    fn a_mixed_batch_uploads_each_adapters_rows_once() {
        let device = Device::flex();
        let config = LoraConfig::new()
            .with_rank(2)
            .with_target_regex(Some(".*".into()));
        let layer = || {
            let layer = crate::nn::LinearConfig::new(4, 4).init(&device);
            let layer = crate::add_adapter(layer, "a", &config).unwrap();
            crate::add_adapter(layer, "b", &config).unwrap()
        };
        let (first, second) = (layer(), layer());
        let x = Tensor::<2>::ones([3, 4], &device);
        let names = vec!["a".into(), "b".into(), "a".into()];
        let (_, routing) = with_routing(names, 1, || {
            second.forward(first.forward(x.clone()) + second.forward(x.clone()))
        });
        assert_eq!(routing.routed, 3);
        assert_eq!(
            routing.uploads, 2,
            "once per adapter, not per adapter and layer"
        );
        assert!(state_is_clear());
    }

    /// Two linears that `visit` in order and `map` in reverse order.
    #[derive(Clone, Debug)]
    struct Swapped(Linear, Linear);

    impl ModuleDisplayDefault for Swapped {
        fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
            Some(content)
        }
    }
    impl ModuleDisplay for Swapped {}

    impl Module for Swapped {
        fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
            self.1.collect_devices(self.0.collect_devices(devices))
        }
        fn fork(self, d: &Device) -> Self {
            Self(self.0.fork(d), self.1.fork(d))
        }
        fn to_device(self, d: &Device) -> Self {
            Self(self.0.to_device(d), self.1.to_device(d))
        }
        fn train(self) -> Self {
            Self(self.0.train(), self.1.train())
        }
        fn valid(&self) -> Self {
            Self(self.0.valid(), self.1.valid())
        }
        fn materialize(self) -> Self {
            Self(self.0.materialize(), self.1.materialize())
        }
        fn visit<V: ModuleVisitor>(&self, v: &mut V) {
            v.enter_module("0", "Struct:Linear");
            self.0.visit(v);
            v.exit_module("0", "Struct:Linear");
            v.enter_module("1", "Struct:Linear");
            self.1.visit(v);
            v.exit_module("1", "Struct:Linear");
        }
        fn map<M: ModuleMapper>(self, m: &mut M) -> Self {
            m.enter_module("1", "Struct:Linear");
            let second = self.1.map(m);
            m.exit_module("1", "Struct:Linear");
            m.enter_module("0", "Struct:Linear");
            let first = self.0.map(m);
            m.exit_module("0", "Struct:Linear");
            Self(first, second)
        }
    }
}
