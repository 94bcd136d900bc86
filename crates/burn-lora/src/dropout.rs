//! Dropout with a fast mask on CPU devices, and Burn's own on every other device.
//!
//! The adapters' dropout, public on purpose: any Burn model can use it in place of
//! `Dropout::forward` (the demonstration's models use it for all their dropout).
//!
//! Burn's `Dropout::forward` draws its mask with `random_like(Bernoulli)`. On a CPU backend
//! that is one ChaCha sample and one distribution call per element: a LoRA step on every
//! linear of a small BERT draws about 12 million of them, and a profile put about a fifth of
//! the step there. On a CPU device (Burn's `flex` and `ndarray` backends, where the host is
//! the device) [`dropout`] instead takes two numbers from Burn's generator (so
//! `device.seed` still decides every mask) to seed a `StdRng`, fills 32-bit words in bulk,
//! and multiplies by the scaled mask: the same distribution, the same rule for when it
//! applies. On any other device (a GPU) it is Burn's `Dropout::forward`, whose mask is made
//! on the device: no host round trip.
//!
//! A training thread can take its seeds from a stream of its own ([`with_dropout_seed`]):
//! data-parallel training runs parts of a batch on several threads, and the order in which
//! threads would reach the shared generator is not reproducible.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

thread_local! {
    /// This thread's seed stream, while [`with_dropout_seed`] runs.
    static SEED_STREAM: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's dropout masks seeded from `seed` alone (not from the device's
/// generator): the same `seed` and the same sequence of [`dropout`] calls give the same
/// masks on any thread, whatever other threads do meanwhile.
pub fn with_dropout_seed<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    let _scope = crate::sites::Scoped::set(&SEED_STREAM, StdRng::seed_from_u64(seed));
    f()
}

/// Whether no seed stream is set on this thread.
#[cfg(test)]
pub(crate) fn seed_stream_is_clear() -> bool {
    SEED_STREAM.with_borrow(Option::is_none)
}

/// `n` 64-bit seeds, each from two draws of `device`'s generator, so that `device.seed`
/// decides them.
pub fn device_seeds(device: &Device, n: usize) -> Vec<u64> {
    let draws = Tensor::<1>::random([2 * n], Distribution::Uniform(0.0, 1.0), device)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let mut seeds: Vec<u64> = draws
        .chunks(2)
        .map(|pair| {
            pair.iter()
                .fold(0u64, |acc, d| (acc << 32) | u64::from(d.to_bits()))
        })
        .collect();
    seeds.resize(n, 0);
    seeds
}

/// The next seed of this thread's stream while [`with_dropout_seed`] runs, else one drawn
/// from `device`'s generator: where [`dropout`] takes each mask's seed. Code that runs a
/// forward pass twice and needs the same masks both times (recomputing activations in the
/// backward pass) takes one here and runs each pass under `with_dropout_seed(seed, ..)`.
pub fn next_seed(device: &Device) -> u64 {
    SEED_STREAM
        .with_borrow_mut(|stream| stream.as_mut().map(|rng| rng.next_u64()))
        .unwrap_or_else(|| device_seeds(device, 1)[0])
}

/// Whether `device` is one of Burn's CPU backends (`flex`, `ndarray`), where a mask built on
/// the host costs no transfer. The backend features are the application's choice, not this
/// library's, so the device is recognised by its name.
pub fn is_cpu_device(device: &Device) -> bool {
    let name = format!("{device:?}");
    name.contains("Flex") || name.contains("NdArray")
}

/// Whether [`dropout`] changes `x`: in training, on an autodiff device, with a non-zero
/// probability.
pub fn drops<const D: usize>(module: &Dropout, x: &Tensor<D>) -> bool {
    module.training.is_enabled() && x.device().is_autodiff() && module.prob > 0.0
}

/// Applies `module`'s dropout to `x` exactly when `Dropout::forward` would: in training (on
/// an autodiff device, in a layer that takes part in the backward pass) with a non-zero
/// probability. Each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`, else zeroed. The mask is built on the host on a CPU device and by
/// `Dropout::forward` on the device anywhere else.
pub fn dropout<const D: usize>(module: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !drops(module, &x) {
        return x;
    }
    let device = x.device();
    if !is_cpu_device(&device) {
        return module.forward(x);
    }
    let keep = 1.0 - module.prob;
    // 2^32 · keep, compared with uniform 32-bit words: P(word < threshold) = keep.
    let threshold = (keep * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let mut rng = StdRng::seed_from_u64(next_seed(&device));
    let shape = x.shape();
    let n = shape.num_elements();
    let mut words = vec![0u8; 4 * n];
    rng.fill_bytes(&mut words);
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = words
        .chunks_exact(4)
        .map(|w| {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if word < threshold { scale } else { 0.0 }
        })
        .collect();
    // The mask in the input's dtype: its values (0 and 1/keep) are exact in f16 and bf16
    // for the usual probabilities, and the product stays in the model's dtype.
    let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &device);
    match x.dtype() == mask.dtype() {
        true => x * mask,
        false => {
            let dtype = x.dtype();
            x * mask.cast(dtype)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backends_are_recognised_by_name() {
        assert!(is_cpu_device(&Device::flex()));
        assert!(is_cpu_device(&Device::flex().autodiff()));
    }

    #[test]
    fn host_masks_keep_the_expected_fraction_and_scale() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let module = burn::nn::DropoutConfig::new(0.25).init();
        let x = Tensor::<2>::ones([200, 100], &device);
        let values = dropout(&module, x).into_data().convert::<f32>();
        let values = values.try_to_vec::<f32>().unwrap();
        let kept = values.iter().filter(|v| **v != 0.0).count() as f64 / values.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(
            values
                .iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6)
        );
    }
}
