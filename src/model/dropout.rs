//! Dropout with a fast mask.
//!
//! Burn's `Dropout::forward` draws its mask with `random_like(Bernoulli)`, one ChaCha sample
//! and one distribution call per element. A LoRA step on every linear of the default base
//! draws about 12 million of them (the hidden dropouts plus one LoRA dropout per adapted
//! layer), and a profile (`perf record` on the sentiment job) put about a fifth of the step
//! in that sampling. [`dropout`] takes two numbers from Burn's generator (so `device.seed`
//! still decides every mask) to seed a `StdRng`, fills 32-bit words in bulk, and multiplies
//! by the scaled mask: the same distribution, the same rule for when it applies.
//!
//! A training thread can instead take its seeds from a stream of its own
//! ([`with_dropout_seed`]): data-parallel training runs parts of a batch on several threads,
//! and the order in which threads would reach the shared generator is not reproducible.

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
    let previous = SEED_STREAM.replace(Some(StdRng::seed_from_u64(seed)));
    let out = f();
    SEED_STREAM.set(previous);
    out
}

/// `n` 64-bit seeds, each from two draws of `device`'s generator, so that `device.seed`
/// decides them.
pub(crate) fn device_seeds(device: &Device, n: usize) -> Vec<u64> {
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

/// Applies `module`'s dropout to `x` exactly when `Dropout::forward` would: in training (on
/// an autodiff device, in a layer that takes part in the backward pass) with a non-zero
/// probability. Each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`, else zeroed.
pub fn dropout<const D: usize>(module: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !module.training.is_enabled() || !x.device().is_autodiff() || module.prob == 0.0 {
        return x;
    }
    let device = x.device();
    let keep = 1.0 - module.prob;
    // 2^32 · keep, compared with uniform 32-bit words: P(word < threshold) = keep.
    let threshold = (keep * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let seed = SEED_STREAM
        .with_borrow_mut(|stream| stream.as_mut().map(|rng| rng.next_u64()))
        .unwrap_or_else(|| device_seeds(&device, 1)[0]);
    let mut rng = StdRng::seed_from_u64(seed);
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
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}
