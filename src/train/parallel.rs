//! Data parallelism on one CPU: a batch is cut into parts, each part runs forward and
//! backward on its own thread through its own copy of the model, and the parts' gradients
//! are summed before one optimizer step.
//!
//! Burn's CPU backends do most element-wise work (softmax, GELU, layer norm, dropout,
//! autodiff bookkeeping) on the calling thread; only large kernels fan out. A profile of
//! the sentiment job measured 1.24 busy cores of 2. Two replicas keep both cores busy.
//!
//! Burn's autodiff merges the graphs of tensors that share a node, and a parameter is a
//! node. So each replica gets fresh leaves for its trainable parameters (same values, same
//! [`ParamId`](burn::module::ParamId), new graph node): the two graphs stay apart and run
//! backward concurrently. Gradients are matched back to parameters by `ParamId`.
//!
//! The result does not depend on thread timing: each part's dropout masks come from a seed
//! drawn on the calling thread (see [`with_dropout_seed`]), each part's loss is weighted by
//! its share of the batch so the parts' losses sum to the batch mean, and gradients are
//! summed in part order.
//!
//! Size: half of it is its tests (replicas against one thread, thread timing, devices).

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use crate::model::with_dropout_seed;
use burn_lora::dropout::device_seeds;

/// Gives every trainable parameter a fresh autodiff leaf: same value, same id.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| match t.is_require_grad() {
            true => t.detach().require_grad(),
            false => t,
        })
    }
}

/// One part of a batch: its loss, already weighted by the part's share of the batch, and
/// anything else the caller wants back from the forward pass (e.g. correct predictions).
pub struct PartOutput<T> {
    /// The part's loss, weighted by its share of the batch.
    pub loss: Tensor<1>,
    /// What else the caller keeps from the part's forward pass.
    pub extra: T,
}

/// Runs `forward(&replica, part, device)` for each part, one part per entry of `devices`,
/// each on its own thread with its own replica of `model` on that device and its own
/// dropout seed, and returns the summed gradients (on the model's device), the summed loss
/// value and each part's `extra`, in part order. A part on the model's own device gets a
/// replica with fresh leaves; a part on another device gets the model forked there, and its
/// gradients come back with `GradientsParams::to_device`. With one part on the model's
/// device nothing is spawned.
pub fn parallel_grads<M, T, F>(
    model: &M,
    devices: &[Device],
    forward: F,
) -> (GradientsParams, f64, Vec<T>)
where
    M: Module + Send,
    T: Send,
    F: Fn(&M, usize, &Device) -> PartOutput<T> + Sync,
{
    parallel_part_grads(model, devices, |replica: &M, part, device| {
        let out = forward(replica, part, device);
        PartGrads {
            loss: out.loss.clone().into_scalar::<f64>(),
            grads: GradientsParams::from_grads(out.loss.backward(), replica),
            extra: out.extra,
        }
    })
}

/// What one part computed for itself, backward pass included (for a part whose backward
/// is not one `loss.backward()`, such as
/// [`backward_per_block`](crate::train::recompute::backward_per_block)).
pub struct PartGrads<T> {
    /// The part's gradients, for the replica's parameters.
    pub grads: GradientsParams,
    /// The part's loss value, weighted by its share of the batch.
    pub loss: f64,
    /// What else the caller keeps from the part.
    pub extra: T,
}

/// [`parallel_grads`] for parts that run their own backward pass: `part(&replica, part,
/// device)` returns the part's gradients, which are summed as `parallel_grads` sums them.
pub fn parallel_part_grads<M, T, F>(
    model: &M,
    devices: &[Device],
    part: F,
) -> (GradientsParams, f64, Vec<T>)
where
    M: Module + Send,
    T: Send,
    F: Fn(&M, usize, &Device) -> PartGrads<T> + Sync,
{
    let device = first_device(model);
    let parts = devices.len();
    // Seeds are drawn here, in order, from the device's generator, so that `device.seed`
    // still decides every mask whatever order the threads run in. Only CPU devices build
    // masks from them (see `burn_lora::dropout`); a GPU draws its own on the device, and
    // reading two numbers back every step would be a host round trip for nothing.
    let seeds = match crate::device::is_cpu(&device) {
        true => device_seeds(&device, parts),
        false => vec![0; parts],
    };
    let run = |index: usize, replica: M| {
        with_dropout_seed(seeds[index], || {
            let part_device = first_device(&replica);
            let out = part(&replica, index, &part_device);
            let grads = match part_device == device {
                true => out.grads,
                false => out.grads.to_device(&device, &replica),
            };
            (grads, out.loss, out.extra)
        })
    };
    let replica = |part_device: &Device| match *part_device == device {
        true => model.clone().map(&mut FreshLeaves),
        false => model.clone().fork(&part_device.clone().autodiff()),
    };
    let results: Vec<(GradientsParams, f64, T)> = match (parts, devices.first()) {
        (1, Some(only)) if *only == device => vec![run(0, model.clone())],
        _ => on_threads(devices.iter().map(replica).collect(), run),
    };
    let mut sum = GradientsAccumulator::<M>::new();
    let mut loss = 0.0;
    let mut extras = Vec::with_capacity(parts);
    for (grads, value, extra) in results {
        sum.accumulate(model, grads);
        loss += value;
        extras.push(extra);
    }
    (sum.grads(), loss, extras)
}

/// Runs `f(i, input)` for each of `inputs` on a thread of its own; the results in order.
pub fn on_threads<I: Send, R: Send>(inputs: Vec<I>, f: impl Fn(usize, I) -> R + Sync) -> Vec<R> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| {
                let f = &f;
                scope.spawn(move || f(i, input))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    })
}

/// The device of the first float parameter.
pub(crate) fn first_device<M: Module>(model: &M) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .expect("a model with parameters")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLoss;
    use burn::tensor::{Bool, Device, Int, TensorData};

    use crate::model::{GptClassifier, GptConfig};
    use burn_lora::{LoraConfig, apply_lora, param_report};

    /// Per-parameter gradients as flat vectors, keyed by parameter id.
    struct Collect<'a>(&'a GradientsParams, Vec<(String, Vec<f32>)>);

    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.0.get::<D>(param.id) {
                let values = grad
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap();
                self.1.push((param.id.to_string(), values));
            }
        }
    }

    fn grads_of(model: &GptClassifier, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
        let mut collect = Collect(grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    /// Two replicas on two halves of a batch, with each half's loss weighted by its share,
    /// give the gradients of one pass over the whole batch: same parameters, same values,
    /// whether both halves run on the model's device or one runs on another device.
    #[test]
    fn two_replicas_or_two_devices_give_the_whole_batch_gradients() {
        let device = Device::default().autodiff();
        device.seed(3);
        let config = GptConfig::new(40)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2)
            .with_d_ff(32)
            .with_max_seq_len(8)
            .with_dropout(0.0);
        let model = GptClassifier::new(config.init(&device), 2, &device);
        let lora = LoraConfig::new()
            .with_rank(2)
            .with_alpha(4.0)
            .with_modules_to_save(vec!["head".into()]);
        let model = apply_lora(model, &lora).unwrap();
        // Non-zero B, so that A gets a gradient too.
        let model = model.map(&mut Shift);
        let (rows, seq) = (6, 5);
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(
                (0..rows * seq).map(|i| (i * 7 % 37 + 3) as i64).collect(),
                [rows, seq],
            ),
            &device,
        );
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; rows * seq], [rows, seq]),
            &device,
        );
        let pool = Tensor::<2>::ones([rows, seq], &device).div_scalar(seq as f64);
        let labels = Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 1, 0, 1, 0], [rows]),
            &device,
        );
        let loss_fn = CrossEntropyLoss::new(None, &device);
        let part = |p: usize, parts: usize| {
            let n = rows / parts;
            let range = p * n..(p + 1) * n;
            (
                tokens.clone().slice(range.clone()),
                padding.clone().slice(range.clone()),
                pool.clone().slice(range.clone()),
                labels.clone().slice(range),
            )
        };
        let run = |devices: &[Device]| {
            let parts = devices.len();
            parallel_grads(
                &model,
                devices,
                |replica: &GptClassifier, p, on: &Device| {
                    let (tokens, padding, pool, labels) = part(p, parts);
                    let (tokens, padding) = (tokens.to_device(on), padding.to_device(on));
                    let (pool, labels) = (pool.to_device(on), labels.to_device(on));
                    let logits = replica.forward(tokens, padding, pool);
                    PartOutput {
                        loss: loss_fn.forward(logits, labels).div_scalar(parts as f64),
                        extra: p,
                    }
                },
            )
        };
        let (whole, whole_loss, _) = run(std::slice::from_ref(&device));
        let (whole, whole_loss, _) = (grads_of(&model, &whole), whole_loss, ());
        let counted: usize = whole.iter().map(|(_, g)| g.len()).sum();
        assert_eq!(
            counted,
            param_report(&model).trainable,
            "every trainable weight"
        );
        // Two replicas on this device, and one part on another device (ndarray): the
        // second part's replica is forked there and its gradients come back.
        // A second CPU backend gives a second device on a machine with one CPU; Burn 0.22
        // deprecates ndarray in favour of flex, which has only one device.
        #[allow(deprecated)]
        let ndarray = Device::ndarray().autodiff();
        for devices in [[device.clone(), device.clone()], [device.clone(), ndarray]] {
            let (split, split_loss, extras) = run(&devices);
            assert_eq!(extras, vec![0, 1], "parts come back in order");
            assert!(
                (whole_loss - split_loss).abs() < 1e-5,
                "{whole_loss} vs {split_loss}"
            );
            let split = grads_of(&model, &split);
            assert_eq!(
                whole.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                split.iter().map(|(id, _)| id).collect::<Vec<_>>()
            );
            for ((id, a), (_, b)) in whole.iter().zip(&split) {
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{id} got a zero gradient");
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-5 * scale.max(1.0), "{id}: {x} vs {y}");
                }
            }
        }
    }

    /// Adds 0.1 to every LoRA B (initialised to zero).
    struct Shift;

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                match t.is_require_grad()
                    && t.clone().detach().abs().max().into_scalar::<f32>() == 0.0
                {
                    true => t.add_scalar(0.1).detach().require_grad(),
                    false => t,
                }
            })
        }
    }
}
