//! Mixed batches: one forward pass in which each example uses its own adapter (PEFT's
//! `adapter_names=`).

use burn::module::Module;

use crate::Error;
use crate::adapter::BASE_ADAPTER;
use crate::manage::list_adapters;
use crate::sites::{FlightGuard, adapters, with_routing};

/// Runs `forward` (a closure that calls `model`'s forward pass) with example `i` of the
/// batch using the adapter `names[i]`, or none for `"__base__"`, whatever the active
/// adapters are (PEFT's `adapter_names=`). Each example's output equals what running its
/// adapter alone gives. Layers without that adapter compute their base output for it.
///
/// The leading dimension of each layer's input is the batch, one example per name. A model
/// that flattens `[batch, seq, d]` to `[batch·seq, d]` before its linears says so with
/// [`with_adapter_names_flat`].
///
/// The names are this thread's: `forward` must run the model's layers on the calling
/// thread. An adapted layer of this model that runs on another thread meanwhile (a worker
/// pool, burn-train's device threads) makes the call an error, since it served every
/// example with the active adapters; so does a forward pass of the same model on another
/// thread at the same time. Routing needs the factored path: the model's linears must be
/// [`burn_lora::nn::Linear`](crate::nn::Linear), which read the names; a stock
/// `burn::nn::Linear` cannot route and makes this an error rather than a wrong answer.
///
/// ```
/// use burn::module::Module;
/// use burn::tensor::{Device, Distribution, Tensor};
/// use burn_lora::nn::LinearConfig;
/// use burn_lora::{LoraConfig, add_adapter, with_adapter_names};
///
/// let device = Device::default();
/// let layer = LinearConfig::new(8, 4).init(&device);
/// // One layer on its own: its path is the root, which the regex `.*` matches.
/// let config = LoraConfig::new().with_rank(2).with_target_regex(Some(".*".into()));
/// let layer = add_adapter(layer, "a", &config).unwrap();
/// let layer = add_adapter(layer, "b", &config).unwrap();
/// let x = Tensor::<2>::random([3, 8], Distribution::Default, &device);
/// let y = with_adapter_names(&layer, &["a", "__base__", "b"], || layer.forward(x.clone())).unwrap();
/// assert_eq!(y.dims(), [3, 4]);
/// ```
///
/// # Errors
///
/// [`Error::UnknownAdapter`] for a name the model lacks; [`Error::MergedAdapters`] while
/// adapters are merged; [`Error::MixedBatchSize`] when a layer's input does not have one
/// example per name; [`Error::MixedBatchDense`] when a stock `Linear` computed an adapter;
/// [`Error::MixedBatchUnrouted`] when no adapted layer ran on this thread;
/// [`Error::MixedBatchOffThread`] when adapted layers of the model ran on another thread.
pub fn with_adapter_names<M: Module, T>(
    model: &M,
    names: &[&str],
    forward: impl FnOnce() -> T,
) -> Result<T, Error> {
    route(model, names, 1, forward)
}

/// [`with_adapter_names`] for a model whose linears see 2-D inputs flattened batch-major
/// from `[batch, seq, d]`: such an input has `rows_per_example` rows for each name, rows
/// `i·rows_per_example..(i+1)·rows_per_example` being example `i`'s. Inputs whose leading
/// dimension is the batch route as in [`with_adapter_names`]. The count is explicit
/// because it cannot be read off the input: a `[6, d]` input for 2 names could be 2
/// examples of 3 tokens, or a mistake.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use burn_lora::nn::LinearConfig;
/// use burn_lora::{LoraConfig, add_adapter, with_adapter_names_flat};
///
/// let device = Device::default();
/// let layer = LinearConfig::new(8, 4).init(&device);
/// let config = LoraConfig::new().with_rank(2).with_target_regex(Some(".*".into()));
/// let layer = add_adapter(layer, "a", &config).unwrap();
/// // 2 examples of 3 tokens, flattened to [6, 8].
/// let x = Tensor::<2>::random([6, 8], Distribution::Default, &device);
/// let y = with_adapter_names_flat(&layer, &["a", "__base__"], 3, || layer.forward(x.clone())).unwrap();
/// assert_eq!(y.dims(), [6, 4]);
/// ```
///
/// # Errors
///
/// Those of [`with_adapter_names`].
pub fn with_adapter_names_flat<M: Module, T>(
    model: &M,
    names: &[&str],
    rows_per_example: usize,
    forward: impl FnOnce() -> T,
) -> Result<T, Error> {
    route(model, names, rows_per_example, forward)
}

fn route<M: Module, T>(
    model: &M,
    names: &[&str],
    rows_per_example: usize,
    forward: impl FnOnce() -> T,
) -> Result<T, Error> {
    let known = list_adapters(model);
    if let Some(name) = names
        .iter()
        .find(|n| **n != BASE_ADAPTER && !known.iter().any(|k| k == *n))
    {
        return Err(Error::UnknownAdapter {
            name: name.to_string(),
            available: known,
        });
    }
    let sites = adapters(model);
    if sites.iter().any(|(_, a)| a.is_merged()) {
        return Err(Error::MergedAdapters);
    }
    let names = names.iter().map(|n| n.to_string()).collect();
    let flight = FlightGuard::register(sites.iter().map(|(s, _)| s.weight_id).collect());
    let (out, routing) = with_routing(names, rows_per_example, forward);
    let strays = flight.strays();
    drop(flight);
    if routing.dense_used {
        return Err(Error::MixedBatchDense);
    }
    if let Some((found, expected)) = routing.wrong_batch {
        return Err(Error::MixedBatchSize { found, expected });
    }
    // The names live on this thread: a forward pass that ran its layers on other threads
    // would have computed the active adapters for every example.
    if routing.routed == 0 && !sites.is_empty() {
        return Err(Error::MixedBatchUnrouted);
    }
    if strays > 0 {
        return Err(Error::MixedBatchOffThread { layers: strays });
    }
    Ok(out)
}
